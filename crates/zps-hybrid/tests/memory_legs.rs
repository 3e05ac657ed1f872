//! The hybrid composition over two in-process legs: the shared conformance
//! suite, and delivery when fan-out messages are lost or reordered. The
//! PostgreSQL + Redis deployment is tested in `tests/postgres_redis.rs`.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use zps_conformance::{Factory, Fixture, seqs, take_events, unique_room};
use zps_core::transport::{EphemeralStream, LiveStream};
use zps_core::*;
use zps_hybrid::{HybridConfig, HybridTransport};

/// Two "nodes" share one storage and one fan-out bus, like PostgreSQL + Redis.
struct Shared {
    storage: MemoryTransport,
    realtime: MemoryTransport,
}

#[async_trait]
impl Fixture for Shared {
    async fn connect(&self) -> Arc<dyn Transport> {
        Arc::new(HybridTransport::new(
            Arc::new(self.storage.clone()),
            Arc::new(self.realtime.clone()),
            HybridConfig::default(),
        ))
    }
}

struct Memory;

#[async_trait]
impl Factory for Memory {
    async fn fixture(&self) -> std::result::Result<Arc<dyn Fixture>, String> {
        Ok(Arc::new(Shared {
            storage: MemoryTransport::default(),
            realtime: MemoryTransport::default(),
        }))
    }
}

zps_conformance::conformance_suite!(Memory);

/// A fan-out leg that loses every 5th message and swaps neighbours.
struct Lossy {
    inner: MemoryTransport,
    sent: AtomicU64,
    held: parking_lot::Mutex<Option<Arc<Envelope>>>,
}

#[async_trait]
impl Transport for Lossy {
    fn name(&self) -> &'static str {
        "lossy"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cross_process: true,
            ..self.inner.capabilities()
        }
    }
    async fn publish(&self, event: NewEvent) -> Result<PublishOutcome> {
        self.inner.publish(event).await
    }
    async fn fanout(&self, envelope: Arc<Envelope>) -> Result<()> {
        let n = self.sent.fetch_add(1, Ordering::SeqCst) + 1;
        if n.is_multiple_of(5) {
            return Ok(());
        }
        let held = self.held.lock().take();
        match held {
            None if n.is_multiple_of(3) => *self.held.lock() = Some(envelope),
            None => self.inner.fanout(envelope).await?,
            Some(earlier) => {
                self.inner.fanout(envelope).await?;
                self.inner.fanout(earlier).await?;
            }
        }
        Ok(())
    }
    async fn subscribe(&self, p: &[RoomPattern]) -> Result<LiveStream> {
        self.inner.subscribe(p).await
    }
    async fn replay(&self, q: &ReplayQuery) -> Result<ReplayPage> {
        self.inner.replay(q).await
    }
    async fn room_info(&self, r: &Room) -> Result<RoomInfo> {
        self.inner.room_info(r).await
    }
    async fn ack(&self, r: &Room, s: &str, q: u64) -> Result<u64> {
        self.inner.ack(r, s, q).await
    }
    async fn cursor(&self, r: &Room, s: &str) -> Result<Option<u64>> {
        self.inner.cursor(r, s).await
    }
    async fn put_snapshot(&self, s: Snapshot) -> Result<()> {
        self.inner.put_snapshot(s).await
    }
    async fn get_snapshot(&self, r: &Room) -> Result<Option<Snapshot>> {
        self.inner.get_snapshot(r).await
    }
    async fn dlq_write(&self, r: &Room, e: NewDlqEntry) -> Result<DlqEntry> {
        self.inner.dlq_write(r, e).await
    }
    async fn dlq_list(&self, r: &Room, a: u64, l: usize) -> Result<Vec<DlqEntry>> {
        self.inner.dlq_list(r, a, l).await
    }
    async fn dlq_remove(&self, r: &Room, i: &[u64]) -> Result<u64> {
        self.inner.dlq_remove(r, i).await
    }
    async fn dlq_len(&self, r: &Room) -> Result<u64> {
        self.inner.dlq_len(r).await
    }
    async fn publish_ephemeral(&self, e: Arc<EphemeralEvent>) -> Result<()> {
        self.inner.publish_ephemeral(e).await
    }
    async fn subscribe_ephemeral(&self, p: &[RoomPattern]) -> Result<EphemeralStream> {
        self.inner.subscribe_ephemeral(p).await
    }
    async fn presence_enter(&self, r: &Room, m: PresenceMember, c: &str, t: Duration) -> Result<bool> {
        self.inner.presence_enter(r, m, c, t).await
    }
    async fn presence_leave(&self, r: &Room, u: &str, c: &str) -> Result<bool> {
        self.inner.presence_leave(r, u, c).await
    }
    async fn presence_members(&self, r: &Room) -> Result<Vec<PresenceMember>> {
        self.inner.presence_members(r).await
    }
    async fn presence_sweep(&self) -> Result<Vec<(Room, String)>> {
        self.inner.presence_sweep().await
    }
    async fn prune_expired(&self) -> Result<u64> {
        self.inner.prune_expired().await
    }
    async fn health(&self) -> TransportHealth {
        self.inner.health().await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_and_reordered_fanout_is_repaired_from_storage() {
    let storage = MemoryTransport::default();
    let bus = Arc::new(Lossy {
        inner: MemoryTransport::default(),
        sent: AtomicU64::new(0),
        held: parking_lot::Mutex::new(None),
    });
    let config = HybridConfig {
        reorder_window: Duration::from_millis(20),
        resync_interval: Some(Duration::from_millis(200)),
    };
    let node_a = Realtime::new(Arc::new(HybridTransport::new(
        Arc::new(storage.clone()),
        bus.clone(),
        config.clone(),
    )));
    let node_b = Realtime::new(Arc::new(HybridTransport::new(
        Arc::new(storage.clone()),
        bus.clone(),
        config,
    )));
    let chat = unique_room("chat");
    let sub_a = node_a
        .subscribe_stream(SubscribeOptions::room(chat.clone()).live_only())
        .await
        .unwrap();
    let sub_b = node_b
        .subscribe_stream(SubscribeOptions::room(chat.clone()).live_only())
        .await
        .unwrap();
    let n = 400u64;
    let readers: Vec<_> = [sub_a, sub_b]
        .into_iter()
        .map(|mut sub| tokio::spawn(async move { seqs(&take_events(&mut sub, n as usize).await) }))
        .collect();
    let pubs: Vec<_> = [node_a.clone(), node_b.clone()]
        .into_iter()
        .map(|rt| {
            let chat = chat.clone();
            tokio::spawn(async move {
                for _ in 0..n / 2 {
                    rt.publish(PublishRequest::new(chat.clone(), "t", &json!({})).unwrap())
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for p in pubs {
        p.await.unwrap();
    }
    let expected: Vec<u64> = (1..=n).collect();
    for r in readers {
        assert_eq!(r.await.unwrap(), expected);
    }
    let (ma, mb) = (node_a.metrics(), node_b.metrics());
    assert!(ma.gaps_detected + mb.gaps_detected > 0, "{ma:?} {mb:?}");
    assert!(ma.gaps_filled + mb.gaps_filled > 0, "{ma:?} {mb:?}");
    // A fifth of the fan-out messages were lost: each node read at least those from storage.
    assert!(ma.replayed >= n / 5 && mb.replayed >= n / 5, "{ma:?} {mb:?}");
}

#[tokio::test(start_paused = true)]
async fn a_lost_last_event_is_delivered_by_the_periodic_resync() {
    let storage = MemoryTransport::default();
    let bus = MemoryTransport::default();
    let config = HybridConfig {
        reorder_window: Duration::from_millis(50),
        resync_interval: Some(Duration::from_secs(5)),
    };
    let hybrid = Arc::new(HybridTransport::new(
        Arc::new(storage.clone()),
        Arc::new(bus.clone()),
        config,
    ));
    let rt = Realtime::new(hybrid);
    let chat = unique_room("chat");
    let mut sub = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).live_only())
        .await
        .unwrap();
    // Stored without any fan-out: as if the publishing node died after commit.
    storage
        .publish(
            NewEvent::from_request(
                PublishRequest::new(chat.clone(), "t", &json!({})).unwrap(),
                engine::DEFAULT_TTL,
                Timestamp::now(),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    match e {
        SubscriptionItem::Event(e) => assert_eq!(e.sequence, 1),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn health_is_degraded_not_down_when_the_fanout_leg_fails() {
    let storage = MemoryTransport::default();
    let bus = MemoryTransport::default();
    let hybrid = Arc::new(HybridTransport::new(
        Arc::new(storage.clone()),
        Arc::new(bus.clone()),
        HybridConfig::default(),
    ));
    bus.close().await.unwrap();
    let rt = Realtime::new(hybrid.clone());
    let chat = unique_room("chat");
    // Publishing still commits.
    let e = rt
        .publish(PublishRequest::new(chat.clone(), "t", &json!({})).unwrap())
        .await
        .unwrap();
    assert_eq!(e.sequence, 1);
    assert_eq!(hybrid.fanout_failures(), 1);
    let h = rt.health().await;
    assert_eq!(h.transport.status, HealthStatus::Degraded);
    assert_eq!(h.transport.details["fanoutFailures"], 1);
    let page = rt.replay(ReplayQuery::new(chat, 0)).await.unwrap();
    assert_eq!(seqs(&page.events), vec![1]);
}
