//! SQLite provider benchmark: publish throughput against a raw one-row-per-commit
//! INSERT loop with the same durability (`synchronous=FULL`, WAL), and replay.
//!
//! `cargo bench -p zps-sqlite --bench publish` (or `cargo xtask bench --provider sqlite`)
//!
//! - publish: 1 and 16 concurrent publishers, each in its own room, through
//!   `SqliteTransport::publish` (group commit); the ceiling is 1 and 16 threads, each
//!   with its own connection, inserting one row per transaction into a table shaped
//!   like the events table. Prints both and the ratio (the provider / the raw loop).
//! - replay: reads a 100 000-event room with `Realtime::catch_up` (batch 10 000).
//!
//! Env: `ZPS_BENCH_SECONDS` (per scenario, default 3), `ZPS_BENCH_DIR` (where the
//! files go; default `target/zps-sqlite-bench`, on the same disk as the build).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use serde_json::json;
use zps_core::{CatchUpOptions, NewEvent, PublishRequest, Realtime, Room, Timestamp, Transport};
use zps_sqlite::{SqliteConfig, SqliteTransport};

fn seconds() -> Duration {
    Duration::from_secs(
        std::env::var("ZPS_BENCH_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3),
    )
}

fn event(room: &Room, i: u64) -> NewEvent {
    let req = PublishRequest::new(
        room.clone(),
        "message.created",
        &json!({"i": i, "text": "hello from the benchmark", "n": 1.5}),
    )
    .unwrap();
    NewEvent::from_request(req, Duration::from_secs(3600), Timestamp::now()).unwrap()
}

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    path
}

/// Publishes from `workers` tasks for the bench duration; events per second.
async fn provider(dir: &Path, workers: usize) -> f64 {
    let t = Arc::new(
        SqliteTransport::open(SqliteConfig::new(fresh(dir, "provider.db")))
            .await
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (t, stop, count) = (t.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                let room = Room::parse(&format!("bench:{w}")).unwrap();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    t.publish(event(&room, i)).await.unwrap();
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(seconds()).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let rate = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    t.close().await.unwrap();
    rate
}

/// The ceiling: `workers` threads, one connection each, one INSERT per commit.
fn raw(dir: &Path, workers: usize) -> f64 {
    let path = fresh(dir, "raw.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE raw_events (room TEXT NOT NULL, sequence INTEGER NOT NULL, id TEXT NOT NULL,
               type TEXT NOT NULL, emitted_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
               payload TEXT NOT NULL, metadata TEXT, encrypted INTEGER NOT NULL DEFAULT 0,
               PRIMARY KEY (room, sequence)) WITHOUT ROWID;
             CREATE UNIQUE INDEX raw_events_id ON raw_events (room, id);",
        )
        .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let (path, stop, count) = (path.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                let c = rusqlite::Connection::open(&path).unwrap();
                c.busy_timeout(Duration::from_secs(30)).unwrap();
                c.execute_batch("PRAGMA synchronous = FULL").unwrap();
                let room = Room::parse(&format!("bench:{w}")).unwrap();
                let mut stmt = c
                    .prepare("INSERT INTO raw_events VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, 0)")
                    .unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let e = event(&room, i);
                    stmt.execute(rusqlite::params![
                        room.as_str(),
                        i as i64,
                        e.id,
                        e.event_type,
                        e.emitted_at.as_millis(),
                        e.expires_at.as_millis(),
                        e.payload.get()
                    ])
                    .unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(seconds());
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn replay(dir: &Path, n: u64) -> f64 {
    let t = Arc::new(
        SqliteTransport::open(SqliteConfig::new(fresh(dir, "replay.db")))
            .await
            .unwrap(),
    );
    let room = Room::parse("bench:replay").unwrap();
    let engine = Realtime::new(t.clone());
    let batch = 1_000;
    for start in (0..n).step_by(batch) {
        let events: Vec<_> = (start..(start + batch as u64).min(n))
            .map(|i| event(&room, i))
            .collect();
        t.publish_batch(events).await.unwrap();
    }
    let started = Instant::now();
    let read: u64 = engine
        .catch_up(CatchUpOptions::new(room.clone()).batch_size(10_000))
        .map_ok(|_| 1u64)
        .try_fold(0u64, |a, b| async move { Ok(a + b) })
        .await
        .unwrap();
    assert_eq!(read, n);
    let rate = n as f64 / started.elapsed().as_secs_f64();
    engine.close().await.unwrap();
    rate
}

#[tokio::main]
async fn main() {
    let dir = std::env::var("ZPS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/zps-sqlite-bench"));
    std::fs::create_dir_all(&dir).unwrap();
    println!("SQLite publish (WAL, synchronous=FULL) in {}", dir.display());
    println!(
        "{:>11} | {:>14} | {:>14} | {:>6}",
        "publishers", "provider ev/s", "raw loop ev/s", "ratio"
    );
    for workers in [1, 16] {
        let p = provider(&dir, workers).await;
        let r = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || raw(&dir, workers)
        })
        .await
        .unwrap();
        println!("{workers:>11} | {p:>14.0} | {r:>14.0} | {:>5.2}×", p / r);
    }
    let n = 100_000;
    println!(
        "replay: {:.0} events/s ({n} events, catch_up batches of 10 000)",
        replay(&dir, n).await
    );
    let _ = std::fs::remove_dir_all(&dir);
}
