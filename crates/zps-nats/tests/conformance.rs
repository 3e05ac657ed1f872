//! The shared conformance suite against a real NATS JetStream: every case gets
//! its own prefix (streams and buckets), and every `connect()` is a new
//! transport with its own connection.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use zps_conformance::{Factory, Fixture};
use zps_core::Transport;
use zps_nats::NatsConfig;

struct NatsFixture {
    // Dropping the fixture deletes its streams, whether the case passed or not.
    _prefix: support::Prefix,
    config: NatsConfig,
}

#[async_trait::async_trait]
impl Fixture for NatsFixture {
    async fn connect(&self) -> Arc<dyn Transport> {
        Arc::new(support::connect(self.config.clone()).await)
    }
}

struct Nats;

#[async_trait::async_trait]
impl Factory for Nats {
    async fn fixture(&self) -> Result<Arc<dyn Fixture>, String> {
        let (prefix, config) = support::config();
        Ok(Arc::new(NatsFixture {
            _prefix: prefix,
            config,
        }))
    }
}

zps_conformance::conformance_suite!(Nats);
