//! Cross-node delivery latency of the hybrid provider: node A publishes
//! 10 000 events/s, a live subscriber on node B (its own PostgreSQL pool and
//! listener, its own Redis connections) timestamps each arrival. In the same
//! run: PostgreSQL alone (LISTEN/NOTIFY between the nodes) as the reference,
//! and hybrid with 1 % of A's fan-out messages dropped, to show what a lost
//! message costs (the reorder window, then a read from storage).
//!
//! `cargo bench -p zps-hybrid --bench cross_node` (needs ZPS_TEST_POSTGRES_URL
//! and ZPS_TEST_REDIS_URL, or the local defaults). Every delivery is checked:
//! sequences 1..=N exactly once, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use zps_conformance::fault::FaultyTransport;
use zps_core::{PublishRequest, Realtime, Room, SubscribeOptions, SubscriptionItem, Transport};
use zps_hybrid::{HybridConfig, HybridTransport};
use zps_redis::fred::prelude::*;

/// Events per second published on node A.
const RATE: u64 = 10_000;
/// Seconds measured (after one second of warm-up, not recorded).
const SECONDS: u64 = 3;
/// Sends per millisecond tick.
const PER_TICK: u64 = RATE / 1000;

fn pg_url() -> String {
    std::env::var("ZPS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn redis_url() -> String {
    std::env::var("ZPS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// One schema and key prefix for the whole run, removed at the end.
struct Area {
    schema: String,
    prefix: String,
}

impl Area {
    fn storage_config(&self) -> zps_postgres::PostgresConfig {
        zps_postgres::PostgresConfig {
            schema: Some(self.schema.clone()),
            ..Default::default()
        }
    }

    async fn postgres(&self) -> Arc<dyn Transport> {
        Arc::new(
            zps_postgres::PostgresTransport::connect(&pg_url(), self.storage_config())
                .await
                .unwrap(),
        )
    }

    async fn hybrid(&self, drop_one_in: Option<u64>) -> Arc<dyn Transport> {
        let config = zps_redis::RedisConfig::with_prefix(&self.prefix).fanout_only();
        let fanout: Arc<dyn Transport> = Arc::new(
            zps_redis::RedisTransport::connect(&redis_url(), config)
                .await
                .unwrap(),
        );
        let fanout = match drop_one_in {
            None => fanout,
            Some(k) => {
                let mut n = 0u64;
                Arc::new(FaultyTransport::new(fanout).rewrite_fanout(move |e| {
                    n += 1;
                    if n.is_multiple_of(k) { vec![] } else { vec![e] }
                }))
            }
        };
        Arc::new(HybridTransport::new(
            self.postgres().await,
            fanout,
            HybridConfig::default(),
        ))
    }
}

struct Outcome {
    hist: Histogram<u64>,
    received: u64,
    gaps_filled: u64,
}

/// Publishes on `a` at [`RATE`], receives on `b`; returns the latency of every
/// measured event and checks the sequence of all of them.
async fn measure(a: Arc<dyn Transport>, b: Arc<dyn Transport>, room: &str) -> Outcome {
    let (a, b) = (Realtime::new(a), Realtime::new(b));
    let room = Room::parse(room).unwrap();
    let mut live = b
        .subscribe_stream(SubscribeOptions::room(room.clone()).live_only())
        .await
        .unwrap()
        .into_stream();
    let warmup = RATE;
    let total = RATE * (SECONDS + 1);
    let epoch = Instant::now();
    let publisher = {
        let (a, room) = (a.clone(), room.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sent = 0;
            let mut inflight = Vec::with_capacity(PER_TICK as usize);
            while sent < total {
                tick.tick().await;
                for _ in 0..PER_TICK {
                    let t = epoch.elapsed().as_micros() as u64;
                    let request = PublishRequest::new(room.clone(), "bench", &json!({ "t": t })).unwrap();
                    let a = a.clone();
                    inflight.push(tokio::spawn(async move { a.publish(request).await.unwrap() }));
                    sent += 1;
                }
                // Keep at most a few ticks of publishes outstanding.
                if inflight.len() > 64 * PER_TICK as usize {
                    for p in inflight.drain(..) {
                        p.await.unwrap();
                    }
                }
            }
            for p in inflight {
                p.await.unwrap();
            }
        })
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut next = 1u64;
    while next <= total {
        let item = tokio::time::timeout(Duration::from_secs(60), live.next())
            .await
            .expect("no event within 60 s")
            .expect("subscription ended");
        let SubscriptionItem::Event(e) = item else {
            panic!("unexpected discontinuity: {item:?}");
        };
        assert_eq!(e.sequence, next, "exactly once, in order");
        next += 1;
        let now = epoch.elapsed().as_micros() as u64;
        let sent: serde_json::Value = serde_json::from_str(e.payload.get()).unwrap();
        if e.sequence > warmup {
            hist.record(now.saturating_sub(sent["t"].as_u64().unwrap()).max(1))
                .unwrap();
        }
    }
    publisher.await.unwrap();
    let outcome = Outcome {
        hist,
        received: next - 1,
        gaps_filled: b.metrics().gaps_filled,
    };
    a.close().await.unwrap();
    b.close().await.unwrap();
    outcome
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let id = zps_core::envelope::generate_id().replace('-', "");
    let area = Area {
        schema: format!("zps_bench_hybrid_{}", &id[id.len() - 12..]),
        prefix: format!("zps-bench-hybrid-{}:", &id[id.len() - 12..]),
    };
    let admin = zps_postgres::connect_pool(&pg_url(), &zps_postgres::PostgresConfig::default())
        .await
        .unwrap();
    sqlx::query(&format!("CREATE SCHEMA {}", area.schema))
        .execute(&admin)
        .await
        .unwrap();

    println!(
        "cross-node delivery at {RATE} events/s ({SECONDS} s measured after 1 s warm-up), {} / {}",
        pg_url(),
        redis_url()
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "path", "p50", "p90", "p99", "p99.9", "max", "delivered", "gaps filled"
    );
    let runs: [(&str, &str); 3] = [
        ("postgres A -> postgres B", "pg"),
        ("hybrid A -> hybrid B", "hybrid"),
        ("hybrid, 1 % of fan-out dropped", "lossy"),
    ];
    for (label, kind) in runs {
        let (a, b) = match kind {
            "pg" => (area.postgres().await, area.postgres().await),
            "hybrid" => (area.hybrid(None).await, area.hybrid(None).await),
            _ => (area.hybrid(Some(100)).await, area.hybrid(None).await),
        };
        let o = measure(a, b, &format!("bench:{kind}")).await;
        let h = &o.hist;
        println!(
            "{:<34} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
            label,
            ms(h.value_at_quantile(0.50)),
            ms(h.value_at_quantile(0.90)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
            o.received,
            o.gaps_filled
        );
        println!(
            "{}",
            json!({
                "bench": "hybrid_cross_node", "path": kind, "rate": RATE,
                "p50_us": h.value_at_quantile(0.50), "p90_us": h.value_at_quantile(0.90),
                "p99_us": h.value_at_quantile(0.99), "p999_us": h.value_at_quantile(0.999),
                "max_us": h.max(), "delivered": o.received, "gaps_filled": o.gaps_filled,
            })
        );
    }

    sqlx::query(&format!("DROP SCHEMA {} CASCADE", area.schema))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let redis = Builder::from_config(Config::from_url(&redis_url()).unwrap())
        .build()
        .unwrap();
    redis.init().await.unwrap();
    zps_redis::delete_prefix(&redis, &area.prefix).await.unwrap();
    redis.quit().await.unwrap();
}
