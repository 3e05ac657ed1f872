//! Test helpers: an isolated schema per fixture on the real PostgreSQL server.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use zps_postgres::{PgPool, PostgresConfig, PostgresTransport};

/// The server under test (`ZPS_TEST_POSTGRES_URL`).
pub fn url() -> String {
    std::env::var("ZPS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A schema name unique to this run.
pub fn unique_schema(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("zps_{prefix}_{}", &id[..16])
}

/// A small admin pool for setup and teardown.
pub async fn admin_pool() -> Result<PgPool, String> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url())
        .await
        .map_err(|e| format!("PostgreSQL not reachable at {}: {e}", url()))
}

/// One isolated schema: its config and an admin pool that drops it.
pub struct Schema {
    pub name: String,
    pub admin: PgPool,
}

impl Schema {
    pub async fn new(prefix: &str) -> Result<Self, String> {
        Ok(Self {
            name: unique_schema(prefix),
            admin: admin_pool().await?,
        })
    }

    /// A config for this schema with its own NOTIFY channels.
    pub fn config(&self) -> PostgresConfig {
        PostgresConfig {
            schema: Some(self.name.clone()),
            notify_channel: format!("{}_ev", self.name),
            ephemeral_channel: format!("{}_eph", self.name),
            auto_migrate: Some(true),
            max_connections: 8,
            connect_timeout: Duration::from_secs(10),
            ..PostgresConfig::default()
        }
    }

    /// A new transport (own pool and LISTEN connection) over this schema.
    pub async fn transport(&self) -> PostgresTransport {
        PostgresTransport::connect(&url(), self.config()).await.unwrap()
    }

    /// Same, with a recognisable `application_name`.
    pub async fn transport_named(&self, app: &str) -> PostgresTransport {
        let config = PostgresConfig {
            application_name: app.into(),
            ..self.config()
        };
        PostgresTransport::connect(&url(), config).await.unwrap()
    }

    pub async fn drop_schema(&self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        if let Err(e) = sqlx::query(&sql).execute(&self.admin).await {
            eprintln!("cannot drop schema {}: {e}", self.name);
        }
        self.admin.close().await;
    }
}

/// Drops the schema even when a test fails.
pub struct Cleanup(pub Arc<Schema>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        run_admin_sql(format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.0.name));
    }
}

/// Drops a test database even when the test fails.
pub struct DropDatabase(pub String);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        run_admin_sql(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.0));
    }
}

/// Runs one statement from a Drop impl (inside or outside a runtime).
fn run_admin_sql(sql: String) {
    // A fresh runtime on a plain thread: Drop may run inside (or outside) a tokio runtime.
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async move {
            if let Ok(pool) = admin_pool().await {
                let _ = sqlx::query(&sql).execute(&pool).await;
                pool.close().await;
            }
        });
    })
    .join();
}
