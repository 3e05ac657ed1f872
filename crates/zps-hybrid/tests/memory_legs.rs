//! The hybrid composition over two in-process legs: the shared conformance
//! suite, and delivery when fan-out messages are lost or reordered. The
//! PostgreSQL + Redis deployment is tested in `tests/postgres_redis.rs`.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use zps_conformance::fault::FaultyTransport;
use zps_conformance::{Factory, Fixture, seqs, take_events, unique_room};
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
fn lossy_bus() -> Arc<dyn Transport> {
    let mut n = 0u64;
    let mut held: Option<Arc<Envelope>> = None;
    // Room for the whole burst: lag recovery must not hide the gap-repair path.
    let memory = MemoryTransport::new(MemoryConfig {
        channel_capacity: 4096,
        ..MemoryConfig::default()
    });
    let bus = FaultyTransport::new(Arc::new(memory))
        .cross_process(true)
        .rewrite_fanout(move |e| {
            n += 1;
            if n.is_multiple_of(5) {
                return vec![];
            }
            match held.take() {
                None if n.is_multiple_of(3) => {
                    held = Some(e);
                    vec![]
                }
                None => vec![e],
                Some(earlier) => vec![e, earlier],
            }
        });
    Arc::new(bus)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_and_reordered_fanout_is_repaired_from_storage() {
    let storage = MemoryTransport::default();
    let bus = lossy_bus();
    let config = HybridConfig {
        reorder_window: Duration::from_millis(20),
        resync_interval: Some(Duration::from_millis(200)),
        ..HybridConfig::default()
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
        ..HybridConfig::default()
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

/// A fan-out leg that hangs (Redis failing over, partitioned away) does not stop
/// publishing: the publish is answered after `fanout_timeout`, the event is
/// stored, and the failure is counted (found by the fault suite's Redis Cluster
/// failover on hybrid: publishing stalled for the whole failover).
#[tokio::test(start_paused = true)]
async fn a_hanging_fanout_leg_delays_a_publish_by_the_fanout_timeout_at_most() {
    let storage = MemoryTransport::default();
    let bus = Arc::new(FaultyTransport::new(Arc::new(MemoryTransport::default())).cross_process(true));
    let config = HybridConfig {
        fanout_timeout: Duration::from_millis(250),
        ..HybridConfig::default()
    };
    let hybrid = Arc::new(HybridTransport::new(
        Arc::new(storage.clone()),
        bus.clone(),
        config,
    ));
    let rt = Realtime::new(hybrid.clone());
    let chat = unique_room("chat");
    bus.stall_fanout(true);
    let started = tokio::time::Instant::now();
    let publish = rt.publish(PublishRequest::new(chat.clone(), "t", &json!({})).unwrap());
    let e = tokio::time::timeout(Duration::from_secs(5), publish)
        .await
        .expect("the publish waited for the hanging fan-out")
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(e.sequence, 1);
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(300),
        "answered after {waited:?}"
    );
    assert_eq!(hybrid.fanout_failures(), 1);
    let page = rt.replay(ReplayQuery::new(chat.clone(), 0)).await.unwrap();
    assert_eq!(seqs(&page.events), vec![1]);
    // A healthy leg answers at once and counts nothing.
    bus.stall_fanout(false);
    let started = tokio::time::Instant::now();
    rt.publish(PublishRequest::new(chat, "t", &json!({})).unwrap())
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(250));
    assert_eq!(hybrid.fanout_failures(), 1);
}
