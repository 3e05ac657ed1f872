//! The shared conformance suite against MongoDB (`ZPS_TEST_MONGO_URL`): every case gets
//! its own database, and every `connect()` is a new transport with its own client (a
//! separate "process"). Without the variable every case prints one skip line.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::TestDb;
use zps_conformance::{Factory, Fixture};
use zps_core::Transport;

struct MongoFixture {
    db: TestDb,
}

#[async_trait::async_trait]
impl Fixture for MongoFixture {
    async fn connect(&self) -> Arc<dyn Transport> {
        Arc::new(self.db.transport().await)
    }

    async fn cleanup(&self) {
        self.db.drop_db().await;
    }
}

struct Mongo;

#[async_trait::async_trait]
impl Factory for Mongo {
    async fn fixture(&self) -> Result<Arc<dyn Fixture>, String> {
        if common::mongo_url().is_none() {
            return Err("no MongoDB (set ZPS_TEST_MONGO_URL)".into());
        }
        let db = TestDb::new("conf")
            .await
            .ok_or("no MongoDB (set ZPS_TEST_MONGO_URL)")?;
        Ok(Arc::new(MongoFixture { db }))
    }
}

zps_conformance::conformance_suite!(Mongo);
