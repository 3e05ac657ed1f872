//! The shared conformance suite against the embedded memory transport.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use zps_conformance::{Factory, Fixture};
use zps_core::{MemoryTransport, Transport};

struct MemoryFixture(MemoryTransport);

#[async_trait::async_trait]
impl Fixture for MemoryFixture {
    async fn connect(&self) -> Arc<dyn Transport> {
        // One process: every "connection" shares the same in-memory state.
        Arc::new(self.0.clone())
    }
}

struct Memory;

#[async_trait::async_trait]
impl Factory for Memory {
    async fn fixture(&self) -> Result<Arc<dyn Fixture>, String> {
        Ok(Arc::new(MemoryFixture(MemoryTransport::default())))
    }
}

zps_conformance::conformance_suite!(Memory);
