//! The shared conformance suite against real PostgreSQL: every case gets a fresh
//! schema, and every `connect()` is a new transport with its own pool and LISTEN
//! connection (a separate "process").

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{Cleanup, Schema};
use zps_conformance::{Factory, Fixture};
use zps_core::Transport;

struct PgFixture {
    schema: Arc<Schema>,
    _cleanup: Cleanup,
}

#[async_trait::async_trait]
impl Fixture for PgFixture {
    async fn connect(&self) -> Arc<dyn Transport> {
        Arc::new(self.schema.transport().await)
    }

    async fn cleanup(&self) {
        self.schema.drop_schema().await;
    }
}

struct Postgres;

#[async_trait::async_trait]
impl Factory for Postgres {
    async fn fixture(&self) -> Result<Arc<dyn Fixture>, String> {
        let schema = Arc::new(Schema::new("conf").await?);
        Ok(Arc::new(PgFixture {
            _cleanup: Cleanup(schema.clone()),
            schema,
        }))
    }
}

zps_conformance::conformance_suite!(Postgres);
