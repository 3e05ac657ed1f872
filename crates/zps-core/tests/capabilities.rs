//! A provider that implements only the core `Transport` (publish, replay,
//! subscribe, cursors) and opts into none of the capabilities: the whole
//! conformance suite still runs against it — the core cases pass, and each
//! capability case checks that the engine refuses what is not offered as
//! `Unsupported` (pruning is a no-op) instead of failing some other way.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use async_trait::async_trait;
use zps_conformance::{Factory, Fixture};
use zps_core::transport::LiveStream;
use zps_core::{
    Capabilities, Envelope, MemoryTransport, NewEvent, PublishOutcome, ReplayPage, ReplayQuery, Result, Room,
    RoomInfo, RoomPattern, Transport, TransportHealth,
};

/// The memory transport behind the core trait only.
#[derive(Clone, Default)]
struct CoreOnly(MemoryTransport);

#[async_trait]
impl Transport for CoreOnly {
    fn name(&self) -> &'static str {
        "core-only"
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn publish(&self, event: NewEvent) -> Result<PublishOutcome> {
        self.0.publish(event).await
    }
    async fn fanout(&self, envelope: Arc<Envelope>) -> Result<()> {
        self.0.fanout(envelope).await
    }
    async fn subscribe(&self, patterns: &[RoomPattern]) -> Result<LiveStream> {
        self.0.subscribe(patterns).await
    }
    async fn replay(&self, query: &ReplayQuery) -> Result<ReplayPage> {
        self.0.replay(query).await
    }
    async fn room_info(&self, room: &Room) -> Result<RoomInfo> {
        self.0.room_info(room).await
    }
    async fn ack(&self, room: &Room, subscriber_id: &str, sequence: u64) -> Result<u64> {
        self.0.ack(room, subscriber_id, sequence).await
    }
    async fn cursor(&self, room: &Room, subscriber_id: &str) -> Result<Option<u64>> {
        self.0.cursor(room, subscriber_id).await
    }
    async fn health(&self) -> TransportHealth {
        self.0.health().await
    }
    async fn close(&self) -> Result<()> {
        self.0.close().await
    }
}

struct CoreOnlyFixture(CoreOnly);

#[async_trait]
impl Fixture for CoreOnlyFixture {
    async fn connect(&self) -> Arc<dyn Transport> {
        Arc::new(self.0.clone())
    }
}

struct CoreOnlyFactory;

#[async_trait]
impl Factory for CoreOnlyFactory {
    async fn fixture(&self) -> std::result::Result<Arc<dyn Fixture>, String> {
        Ok(Arc::new(CoreOnlyFixture(CoreOnly::default())))
    }
}

zps_conformance::conformance_suite!(CoreOnlyFactory);

/// The refusal names the provider and what it lacks; pruning has nothing to do.
#[tokio::test]
async fn capabilities_not_offered_are_refused_by_name() {
    let rt = zps_core::Realtime::new(Arc::new(CoreOnly::default()));
    let room = Room::parse("chat:1").unwrap();
    let err = rt.presence(room.clone()).members().await.unwrap_err();
    assert!(
        matches!(&err, zps_core::Error::Unsupported { provider: "core-only", what } if what == "presence"),
        "{err:?}"
    );
    assert!(matches!(
        rt.get_snapshot(&room).await,
        Err(zps_core::Error::Unsupported { .. })
    ));
    assert_eq!(rt.prune_expired().await.unwrap(), 0);
}
