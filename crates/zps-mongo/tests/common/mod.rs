//! Shared helpers of the provider's integration tests: every test gets its own database
//! on the server named by `ZPS_TEST_MONGO_URL` and drops it afterwards.

#![allow(dead_code, unreachable_pub)]

use mongodb::bson::doc;
use zps_mongo::{Client, Database, MongoConfig, MongoTransport};

/// The test server's URI, if one is configured.
pub fn mongo_url() -> Option<String> {
    std::env::var("ZPS_TEST_MONGO_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
}

/// One isolated database.
pub struct TestDb {
    pub url: String,
    pub name: String,
    client: Client,
}

impl TestDb {
    /// A fresh database name on the test server, or `None` (after printing why) without one.
    pub async fn new(prefix: &str) -> Option<Self> {
        let Some(url) = mongo_url() else {
            zps_conformance::skip_or_fail(prefix, "no MongoDB (set ZPS_TEST_MONGO_URL)");
            return None;
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("zps_{prefix}_{}", &id[..12]);
        let client = Client::with_uri_str(&url).await.expect("test client");
        Some(Self { url, name, client })
    }

    /// The provider configuration for this database. No TTL indexes: the nx-27017
    /// stand-in purges TTL-indexed collections on every access with a full scan, which
    /// makes an 8 000-event case take minutes (TTL deletion only starts `purge_delay` =
    /// 5 min after expiry, so real servers behave the same either way during a test).
    /// `ttl_indexes_are_created` checks the TTL index itself.
    pub fn config(&self) -> MongoConfig {
        MongoConfig {
            database: Some(self.name.clone()),
            ttl_index: false,
            ..MongoConfig::default()
        }
    }

    /// A new transport (own client) over this database.
    pub async fn transport(&self) -> MongoTransport {
        self.transport_with(self.config()).await
    }

    /// A new transport with a custom configuration (the database is forced to this one).
    pub async fn transport_with(&self, mut config: MongoConfig) -> MongoTransport {
        config.database = Some(self.name.clone());
        MongoTransport::connect(&self.url, config).await.expect("connect")
    }

    /// A handle on the database for direct inspection.
    pub fn db(&self) -> Database {
        self.client.database(&self.name)
    }

    /// Drops the database.
    pub async fn drop_db(&self) {
        let _ = self
            .client
            .database(&self.name)
            .run_command(doc! { "dropDatabase": 1 })
            .await;
    }
}
