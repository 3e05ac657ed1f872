//! PostgreSQL provider benchmark: publish throughput against a raw-INSERT ceiling, and
//! catch-up replay of a large history.
//!
//! `cargo bench -p zps-postgres --bench publish`
//!
//! - publish: 1, 16 and 64 concurrent publishers through `PostgresTransport::publish`
//!   (each publisher in its own room, and all in one hot room), vs a raw single-row
//!   INSERT loop into a copy of the events table over the same pool with the same
//!   concurrency — the ceiling. Prints both and the ratio.
//! - replay: streams a 1 000 000-event room with `Realtime::catch_up` (batch 10 000);
//!   events/s and RSS growth.
//!
//! Env: `ZPS_TEST_POSTGRES_URL`, `ZPS_BENCH_SECONDS` (per scenario, default 3),
//! `ZPS_BENCH_REPLAY_EVENTS` (default 1000000). Uses its own schema, dropped afterwards.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use zps_core::{CatchUpOptions, NewEvent, PublishRequest, Realtime, Room, Timestamp, Transport};
use zps_postgres::{PgPool, PostgresConfig, PostgresTransport};

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

struct Run {
    ops: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `workers` loops of `op(worker, i)` for `duration`, recording latencies in µs.
async fn drive<F, Fut>(workers: usize, duration: Duration, op: F) -> Result<Run>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (op, stop) = (op.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                op(w, i).await?;
                hist.record(t.elapsed().as_micros().max(1) as u64)?;
                i += 1;
            }
            anyhow::Ok(hist)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    Ok(Run {
        ops: hist.len(),
        elapsed: started.elapsed(),
        hist,
    })
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

/// The ceiling: one plain INSERT per event (optionally with a `pg_notify` in the same
/// statement, to show what PostgreSQL's NOTIFY commit lock alone costs).
async fn raw_insert(pool: &PgPool, table: &str, room: &str, seq: i64, notify: Option<&str>) -> Result<()> {
    let e = event(&Room::parse(room)?, seq as u64);
    let sql = match notify {
        None => format!(
            "INSERT INTO {table} (room, sequence, id, type, payload, metadata, encrypted, emitted_at, expires_at)
             VALUES ($1, $2, $3, $4, $5::text::json, NULL, false, $6, $7)"
        ),
        Some(channel) => format!(
            "WITH i AS (INSERT INTO {table}
                 (room, sequence, id, type, payload, metadata, encrypted, emitted_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5::text::json, NULL, false, $6, $7) RETURNING sequence)
             SELECT pg_notify('{channel}', sequence::text) FROM i"
        ),
    };
    sqlx::query(&sql)
        .bind(room)
        .bind(seq)
        .bind(&e.id)
        .bind(&e.event_type)
        .bind(e.payload.get())
        .bind(e.emitted_at.to_datetime())
        .bind(e.expires_at.to_datetime())
        .execute(pool)
        .await?;
    Ok(())
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

async fn bench(url: &str, schema: &str, admin: &PgPool) -> Result<()> {
    let seconds: u64 = env_or("ZPS_BENCH_SECONDS", 3);
    let replay_events: u64 = env_or("ZPS_BENCH_REPLAY_EVENTS", 1_000_000);
    let duration = Duration::from_secs(seconds);
    let config = PostgresConfig {
        schema: Some(schema.to_owned()),
        notify_channel: format!("{schema}_ev"),
        ephemeral_channel: format!("{schema}_eph"),
        max_connections: 64,
        application_name: "zps-bench".into(),
        ..PostgresConfig::default()
    };
    let transport = PostgresTransport::connect(url, config).await?;
    let pool = transport.pool().clone();
    let raw_table = format!("\"{schema}\".raw_events");
    sqlx::query(&format!(
        "CREATE TABLE {raw_table} (LIKE \"{schema}\".realtime_events INCLUDING ALL)"
    ))
    .execute(admin)
    .await?;
    // Warm the pool so connection setup is not measured.
    drive(64, Duration::from_millis(300), {
        let pool = pool.clone();
        move |_, _| {
            let pool = pool.clone();
            async move {
                sqlx::query("SELECT 1").execute(&pool).await?;
                Ok(())
            }
        }
    })
    .await?;

    println!(
        "\n{:<24} {:>7} {:>10} {:>10} {:>7} {:>12} {:>7} {:>8} {:>8} {:>8}",
        "scenario",
        "workers",
        "publish/s",
        "raw/s",
        "ratio",
        "raw+notify/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "raw p99"
    );
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    for hot in [false, true] {
        for workers in [1usize, 16, 64] {
            let label = if hot {
                "publish_one_hot_room"
            } else {
                "publish_room_per_worker"
            };
            let prefix = format!("b{}{}{}", &run_id[..8], u8::from(hot), workers);
            let room_of = move |w: usize| {
                let w = if hot { 0 } else { w };
                Room::parse(&format!("bench:{prefix}-{w}")).unwrap()
            };
            let t = transport.clone();
            let published = drive(workers, duration, move |w, i| {
                let (t, room) = (t.clone(), room_of(w));
                async move {
                    t.publish(event(&room, i)).await?;
                    Ok(())
                }
            })
            .await?;
            let mut raws = Vec::new();
            for notify in [None, Some(format!("{schema}_raw"))] {
                let (pool2, table) = (pool.clone(), raw_table.clone());
                let prefix2 = format!("r{}{workers}{}", u8::from(hot), u8::from(notify.is_some()));
                raws.push(
                    drive(workers, duration, move |w, i| {
                        let (pool, table, notify) = (pool2.clone(), table.clone(), notify.clone());
                        // Raw rows never collide: each worker owns its room (or its sequence range).
                        let (room, seq) = if hot {
                            (format!("raw:{prefix2}"), (w as i64) << 40 | i as i64)
                        } else {
                            (format!("raw:{prefix2}-{w}"), i as i64 + 1)
                        };
                        async move { raw_insert(&pool, &table, &room, seq, notify.as_deref()).await }
                    })
                    .await?,
                );
            }
            let (raw, raw_notify) = (&raws[0], &raws[1]);
            let ratio = published.per_sec() / raw.per_sec();
            let ratio_notify = published.per_sec() / raw_notify.per_sec();
            println!(
                "{:<24} {:>7} {:>10.0} {:>10.0} {:>6.0}% {:>12.0} {:>6.0}% {:>8.2} {:>8.2} {:>8.2}",
                label,
                workers,
                published.per_sec(),
                raw.per_sec(),
                ratio * 100.0,
                raw_notify.per_sec(),
                ratio_notify * 100.0,
                ms(published.hist.value_at_quantile(0.5)),
                ms(published.hist.value_at_quantile(0.99)),
                ms(raw.hist.value_at_quantile(0.99)),
            );
            println!(
                "{}",
                json!({
                    "bench": "postgres_publish", "scenario": label, "workers": workers,
                    "publish_per_sec": published.per_sec().round(), "raw_insert_per_sec": raw.per_sec().round(),
                    "ratio": (ratio * 1000.0).round() / 1000.0,
                    "raw_insert_notify_per_sec": raw_notify.per_sec().round(),
                    "ratio_vs_raw_notify": (ratio_notify * 1000.0).round() / 1000.0,
                    "publish_p50_ms": ms(published.hist.value_at_quantile(0.5)),
                    "publish_p99_ms": ms(published.hist.value_at_quantile(0.99)),
                    "publish_max_ms": ms(published.hist.max()),
                    "raw_p50_ms": ms(raw.hist.value_at_quantile(0.5)),
                    "raw_p99_ms": ms(raw.hist.value_at_quantile(0.99)),
                    "seconds": seconds,
                })
            );
        }
    }

    // Replay: a large history loaded in bulk, then streamed page by page.
    let room = Room::parse(&format!("bench:replay-{}", &run_id[..8]))?;
    let load = Instant::now();
    let chunk = 100_000u64;
    let mut from = 1u64;
    while from <= replay_events {
        let to = (from + chunk - 1).min(replay_events);
        sqlx::query(&format!(
            "INSERT INTO \"{schema}\".realtime_events
                 (room, sequence, id, type, payload, encrypted, emitted_at, expires_at)
             SELECT $1, g, 'e-' || g, 'message.created',
                    ('{{\"i\":' || g || ',\"text\":\"hello from the benchmark\",\"n\":1.5}}')::json,
                    false, now(), now() + interval '1 day'
             FROM generate_series($2::bigint, $3::bigint) g"
        ))
        .bind(room.as_str())
        .bind(from as i64)
        .bind(to as i64)
        .execute(admin)
        .await?;
        from = to + 1;
    }
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".realtime_counters (room, last_sequence) VALUES ($1, $2)"
    ))
    .bind(room.as_str())
    .bind(replay_events as i64)
    .execute(admin)
    .await?;
    sqlx::query(&format!("ANALYZE \"{schema}\".realtime_events"))
        .execute(admin)
        .await?;
    let loaded_in = load.elapsed();

    let realtime = Realtime::new(Arc::new(transport.clone()));
    let rss_before = rss_kib("VmRSS:");
    let started = Instant::now();
    let mut stream = realtime.catch_up(CatchUpOptions::new(room.clone()).batch_size(10_000));
    let (mut count, mut expected, mut rss_peak) = (0u64, 1u64, rss_before);
    while let Some(e) = stream.try_next().await? {
        anyhow::ensure!(e.sequence == expected, "replay out of order at {}", e.sequence);
        expected += 1;
        count += 1;
        if count % 50_000 == 0 {
            rss_peak = rss_peak.max(rss_kib("VmRSS:"));
        }
    }
    let elapsed = started.elapsed();
    let rss_after = rss_kib("VmRSS:");
    anyhow::ensure!(count == replay_events, "replayed {count} of {replay_events}");
    let per_sec = count as f64 / elapsed.as_secs_f64();
    println!(
        "\nreplay: {count} events in {:.2} s = {:.0} events/s (batch 10 000; bulk load took {:.1} s)",
        elapsed.as_secs_f64(),
        per_sec,
        loaded_in.as_secs_f64()
    );
    println!(
        "RSS: before {} KiB, peak during {} KiB (+{} KiB), after {} KiB (+{} KiB)",
        rss_before,
        rss_peak,
        rss_peak.saturating_sub(rss_before),
        rss_after,
        rss_after.saturating_sub(rss_before)
    );
    println!(
        "{}",
        json!({
            "bench": "postgres_replay", "events": count, "batch": 10_000,
            "seconds": (elapsed.as_secs_f64() * 100.0).round() / 100.0, "events_per_sec": per_sec.round(),
            "rss_before_kib": rss_before, "rss_peak_kib": rss_peak, "rss_after_kib": rss_after,
            "rss_growth_kib": rss_peak.saturating_sub(rss_before),
        })
    );
    realtime.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; a test harness run (`cargo test --benches`) passes
    // nothing useful either way, so only run when invoked as a benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("run with `cargo bench -p zps-postgres --bench publish`");
        return Ok(());
    }
    let url = std::env::var("ZPS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .context("PostgreSQL not reachable")?;
    let schema = format!("zps_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let result = bench(&url, &schema, &admin).await;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&admin)
        .await?;
    admin.close().await;
    result
}
