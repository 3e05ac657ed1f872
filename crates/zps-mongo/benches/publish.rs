//! Publish and replay cost of the MongoDB provider against a raw-driver baseline in the
//! same run: `ZPS_TEST_MONGO_URL=mongodb://... cargo bench -p zps-mongo --bench publish`.
//!
//! Scenarios (each in its own database, dropped afterwards):
//! - `publish_serial`: one publisher, `transport.publish` (id check + `$inc` + insert)
//!   vs a raw `insert_one` of the same document;
//! - `publish_concurrent`: 8 publishers on one room vs 8 raw inserters;
//! - `replay_page`: `transport.replay` of 100-event pages vs a raw `find().sort().limit(100)`.
//!
//! Prints a table and one JSON line per scenario. `ZPS_BENCH_EVENTS` sets the events per
//! scenario (default 500).

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mongodb::bson::{Document, doc};
use zps_core::{NewEvent, PublishRequest, ReplayQuery, Room, Timestamp, Transport};
use zps_mongo::{MongoConfig, MongoTransport, docs};

struct Stats {
    ops: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

impl Stats {
    fn new() -> Self {
        Self {
            ops: 0,
            elapsed: Duration::ZERO,
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
        }
    }

    fn record(&mut self, d: Duration) {
        self.hist.saturating_record(d.as_micros() as u64);
        self.ops += 1;
    }

    fn merge(&mut self, other: &Stats) {
        self.hist.add(&other.hist).unwrap();
        self.ops += other.ops;
    }

    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

fn event(room: &Room, i: u64) -> NewEvent {
    let req = PublishRequest::new(
        room.clone(),
        "bench.tick",
        &serde_json::json!({"i": i, "text": "x".repeat(100)}),
    )
    .unwrap();
    NewEvent::from_request(req, Duration::from_secs(3600), Timestamp::now()).unwrap()
}

fn report(name: &str, provider: &Stats, raw: &Stats) {
    let ratio = provider.rate() / raw.rate().max(1e-9);
    println!(
        "{name:<20} {:>10.0} {:>9.2} {:>9.2} {:>9.2} | {:>10.0} {:>9.2} {:>9.2} | {:>6.2}",
        provider.rate(),
        provider.p(0.5),
        provider.p(0.99),
        provider.p(0.999),
        raw.rate(),
        raw.p(0.5),
        raw.p(0.99),
        ratio
    );
    println!(
        "{}",
        serde_json::json!({
            "scenario": name,
            "ops": provider.ops,
            "ops_per_sec": provider.rate(),
            "p50_ms": provider.p(0.5),
            "p99_ms": provider.p(0.99),
            "p999_ms": provider.p(0.999),
            "baseline_ops_per_sec": raw.rate(),
            "baseline_p50_ms": raw.p(0.5),
            "baseline_p99_ms": raw.p(0.99),
            "throughput_ratio": ratio,
        })
    );
}

async fn publish_serial(t: &MongoTransport, raw: &mongodb::Collection<Document>, n: u64) -> (Stats, Stats) {
    let room = Room::parse("bench:serial").unwrap();
    let mut p = Stats::new();
    let started = Instant::now();
    for i in 0..n {
        let e = event(&room, i);
        let s = Instant::now();
        t.publish(e).await.unwrap();
        p.record(s.elapsed());
    }
    p.elapsed = started.elapsed();
    let raw_room = Room::parse("bench:raw").unwrap();
    let mut r = Stats::new();
    let started = Instant::now();
    for i in 0..n {
        let d = docs::event_document(&event(&raw_room, i).into_envelope(i + 1), 0);
        let s = Instant::now();
        raw.insert_one(d).await.unwrap();
        r.record(s.elapsed());
    }
    r.elapsed = started.elapsed();
    (p, r)
}

async fn publish_concurrent(
    t: &MongoTransport,
    raw: &mongodb::Collection<Document>,
    n: u64,
) -> (Stats, Stats) {
    const WORKERS: u64 = 8;
    let room = Room::parse("bench:concurrent").unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (t, room) = (t.clone(), room.clone());
            tokio::spawn(async move {
                let mut st = Stats::new();
                for i in 0..n / WORKERS {
                    let e = event(&room, i);
                    let s = Instant::now();
                    t.publish(e).await.unwrap();
                    st.record(s.elapsed());
                }
                st
            })
        })
        .collect();
    let mut p = Stats::new();
    for task in tasks {
        p.merge(&task.await.unwrap());
    }
    p.elapsed = started.elapsed();
    let started = Instant::now();
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            let raw = raw.clone();
            tokio::spawn(async move {
                let room = Room::parse("bench:rawc").unwrap();
                let mut st = Stats::new();
                for i in 0..n / WORKERS {
                    let seq = w * 1_000_000 + i + 1;
                    let d = docs::event_document(&event(&room, seq).into_envelope(seq), 0);
                    let s = Instant::now();
                    raw.insert_one(d).await.unwrap();
                    st.record(s.elapsed());
                }
                st
            })
        })
        .collect();
    let mut r = Stats::new();
    for task in tasks {
        r.merge(&task.await.unwrap());
    }
    r.elapsed = started.elapsed();
    (p, r)
}

async fn replay_pages(t: &MongoTransport, n: u64) -> (Stats, Stats) {
    // The baseline reads the same documents with a bare find.
    let raw = t.database().collection::<Document>(&t.collection_names().events);
    let room = Room::parse("bench:serial").unwrap();
    let pages = (n / 100).max(1);
    let mut p = Stats::new();
    let started = Instant::now();
    for k in 0..pages {
        let s = Instant::now();
        let page = t
            .replay(&ReplayQuery::new(room.clone(), k * 100).limit(100))
            .await
            .unwrap();
        p.record(s.elapsed());
        assert!(!page.events.is_empty());
    }
    p.elapsed = started.elapsed();
    let mut r = Stats::new();
    let started = Instant::now();
    for k in 0..pages {
        let filter = doc! { "room": "bench:serial", "sequence": { "$gt": (k * 100) as i64 } };
        let s = Instant::now();
        let mut cursor = raw
            .find(filter)
            .sort(doc! { "sequence": 1 })
            .limit(100)
            .await
            .unwrap();
        let mut count = 0;
        while cursor.advance().await.unwrap() {
            count += 1;
        }
        r.record(s.elapsed());
        assert!(count > 0);
    }
    r.elapsed = started.elapsed();
    (p, r)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let Some(url) = std::env::var("ZPS_TEST_MONGO_URL").ok().filter(|u| !u.is_empty()) else {
        println!("skipped: no MongoDB (set ZPS_TEST_MONGO_URL)");
        return;
    };
    let n: u64 = std::env::var("ZPS_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let db_name = format!("zps_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let config = MongoConfig {
        database: Some(db_name.clone()),
        ..MongoConfig::default()
    };
    let t = MongoTransport::connect(&url, config).await.unwrap();
    let raw = t.database().collection::<Document>("raw_events");
    println!("MongoDB provider vs raw driver, {n} events per scenario, database {db_name}");
    println!(
        "{:<20} {:>10} {:>9} {:>9} {:>9} | {:>10} {:>9} {:>9} | {:>6}",
        "scenario", "ops/s", "p50 ms", "p99 ms", "p999 ms", "raw ops/s", "raw p50", "raw p99", "ratio"
    );
    let (p, r) = publish_serial(&t, &raw, n).await;
    report("publish_serial", &p, &r);
    let (p, r) = publish_concurrent(&t, &raw, n).await;
    report("publish_concurrent", &p, &r);
    let (p, r) = replay_pages(&t, n).await;
    report("replay_page", &p, &r);
    let db: Arc<mongodb::Database> = Arc::new(t.database().clone());
    let _ = db.run_command(doc! { "dropDatabase": 1 }).await;
    t.close().await.unwrap();
}
