//! The shared conformance suite against a real Redis: every case gets its own key
//! prefix, and every `connect()` is a new transport with its own two connections.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use zps_conformance::{Factory, Fixture};
use zps_core::Transport;
use zps_redis::RedisConfig;

struct RedisFixture {
    // Dropping the fixture deletes its keys, whether the case passed or not.
    _prefix: support::Prefix,
    config: RedisConfig,
}

#[async_trait::async_trait]
impl Fixture for RedisFixture {
    async fn connect(&self) -> Arc<dyn Transport> {
        Arc::new(support::connect(self.config.clone()).await)
    }
}

struct Redis;

#[async_trait::async_trait]
impl Factory for Redis {
    async fn fixture(&self) -> Result<Arc<dyn Fixture>, String> {
        let (prefix, config) = support::config();
        Ok(Arc::new(RedisFixture {
            _prefix: prefix,
            config,
        }))
    }
}

zps_conformance::conformance_suite!(Redis);
