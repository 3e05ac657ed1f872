//! Redis transport benchmarks, each compared with a raw baseline measured in the same run
//! against the same server:
//!
//! * publish throughput with 1, 16 and 64 concurrent publishers (one room each, and 64 on
//!   one shared room, where the transport coalesces concurrent publishes) versus a
//!   raw EVALSHA of a minimal INCR + XADD + PUBLISH script and a raw PUBLISH, all through
//!   identically configured fred clients (which pipeline concurrent commands);
//! * publish → deliver latency between two transports (publisher on one, subscriber on the
//!   other) at a fixed 10 000 events/s, versus raw PUBLISH → SUBSCRIBE on two plain clients.
//!
//! `cargo bench -p zps-redis --bench publish` (Redis from `ZPS_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`). Keys live under a random `zpsbench:` prefix, removed at the end.
//! `ZPS_BENCH_SECS` sets the length of each throughput run (default 2).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use zps_core::{LiveSignal, NewEvent, PublishRequest, Room, Timestamp, Transport};
use zps_redis::fred::prelude::*;
use zps_redis::{RedisConfig, RedisTransport, fred};

const RAW_SCRIPT: &str = r#"
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '100000', seq .. '-0', 'd', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return seq
"#;

const RATE_PER_SEC: u64 = 10_000;
const LATENCY_SECS: u64 = 3;

fn url() -> String {
    std::env::var("ZPS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn run_secs() -> f64 {
    std::env::var("ZPS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0)
}

async fn plain_client() -> Client {
    let client = Builder::from_config(Config::from_url(&url()).unwrap())
        .with_performance_config(|p| p.broadcast_channel_capacity = 65_536)
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

fn payload() -> serde_json::Value {
    json!({"text": "hello from the benchmark", "user": "u-123", "n": 42, "tags": ["a", "b"]})
}

fn event(room: &Room, payload: &serde_json::Value) -> NewEvent {
    let req = PublishRequest::new(room.clone(), "message.created", payload).unwrap();
    NewEvent::from_request(req, Duration::from_secs(600), Timestamp::now()).unwrap()
}

/// An event with an already serialized payload (what the engine hands a transport).
fn raw_event(room: &Room, payload: &zps_core::Payload) -> NewEvent {
    let req = PublishRequest::raw(room.clone(), "message.created", payload.clone());
    NewEvent::from_request(req, Duration::from_secs(600), Timestamp::now()).unwrap()
}

/// CPU time (user + system) this process has used.
fn process_cpu() -> Duration {
    // Fields 14 and 15 of /proc/self/stat, in clock ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// CPU time the Redis server has used (`INFO cpu`).
async fn server_cpu(client: &Client) -> Duration {
    let info: String = client
        .custom(
            fred::types::CustomCommand::new_static("INFO", fred::types::ClusterHash::Random, false),
            vec!["cpu"],
        )
        .await
        .unwrap();
    let secs: f64 = info
        .lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_sys:")
                .or_else(|| l.strip_prefix("used_cpu_user:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum();
    Duration::from_secs_f64(secs)
}

/// One throughput measurement: rate, and CPU per operation on each side.
struct Rate {
    per_sec: f64,
    client_us_per_op: f64,
    server_us_per_op: f64,
}

/// Runs `workers` loops of `op` for the configured time.
async fn throughput<F, Fut>(admin: &Client, workers: usize, op: F) -> Rate
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (op, stop, counting, done) = (op.clone(), stop.clone(), counting.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    op(w, i).await;
                    i += 1;
                    if counting.load(Ordering::Relaxed) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (cpu0, server0) = (process_cpu(), server_cpu(admin).await);
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(run_secs())).await;
    let n = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu1, server1) = (process_cpu(), server_cpu(admin).await);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let ops = n.max(1) as f64;
    Rate {
        per_sec: n as f64 / elapsed,
        client_us_per_op: (cpu1 - cpu0).as_secs_f64() * 1e6 / ops,
        server_us_per_op: (server1.saturating_sub(server0)).as_secs_f64() * 1e6 / ops,
    }
}

struct Latency {
    hist: Histogram<u64>,
    sent: u64,
}

/// Publishes at `RATE_PER_SEC` for `LATENCY_SECS` with `send(i, start)`; `receive` yields the
/// send offsets (µs since start) of delivered messages.
async fn paced<S, SF>(
    send: S,
    mut receive: futures::stream::BoxStream<'static, u64>,
    start: Instant,
) -> Latency
where
    S: Fn(u64) -> SF + Send + Sync + 'static,
    SF: std::future::Future<Output = ()> + Send + 'static,
{
    let total = RATE_PER_SEC * LATENCY_SECS;
    let send = Arc::new(send);
    // Evenly spaced sends (one every 100 µs), paced by an OS thread: tokio timers tick in
    // whole milliseconds and would turn the rate into bursts of ten.
    let handle = tokio::runtime::Handle::current();
    let pacer = std::thread::spawn(move || {
        let gap = Duration::from_nanos(1_000_000_000 / RATE_PER_SEC);
        let begin = Instant::now();
        for i in 0..total {
            let due = begin + gap * i as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let send = send.clone();
            handle.spawn(async move { send(i).await });
        }
    });
    let mut hist = zps_bench_histogram();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(LATENCY_SECS + 10);
    let mut got = 0;
    while got < total {
        match tokio::time::timeout_at(deadline, receive.next()).await {
            Ok(Some(sent_us)) => {
                let now_us = start.elapsed().as_micros() as u64;
                hist.record(now_us.saturating_sub(sent_us).max(1)).unwrap();
                got += 1;
            }
            _ => break,
        }
    }
    pacer.join().unwrap();
    Latency { hist, sent: total }
}

fn zps_bench_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

fn us(v: u64) -> String {
    format!("{:.3} ms", v as f64 / 1000.0)
}

async fn cleanup(client: &Client, prefix: &str) {
    zps_redis::delete_prefix(client, prefix).await.unwrap();
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let prefix = format!("zpsbench:{}:", uuid::Uuid::new_v4().simple());
    let config = RedisConfig::with_prefix(&prefix);
    let publisher = Arc::new(RedisTransport::connect(&url(), config.clone()).await.unwrap());
    let raw = plain_client().await;
    let admin = plain_client().await;
    let sha: String = raw.script_load(RAW_SCRIPT).await.unwrap();
    let payload = Arc::new(payload());
    // The baselines move a message as large as a real envelope.
    let sample = {
        let mut e = event(&Room::new("bench", "sample").unwrap(), &payload).into_envelope(1);
        e.sequence = 123_456;
        e
    };
    let payload_json = Arc::new(sample.to_json());

    println!(
        "zps-redis publish benchmark ({} s per run, {}):",
        run_secs(),
        url()
    );
    println!(
        "{:<22} {:>5} {:>11} {:>11} {:>11} {:>7} {:>22} {:>22}",
        "scenario",
        "conc.",
        "publish/s",
        "evalsha/s",
        "publish/s",
        "ratio",
        "client µs/op (zps/raw)",
        "redis µs/op (zps/raw)"
    );
    let mut json_lines = Vec::new();
    // (publishers, whether they all share one room); otherwise one room each.
    for (conc, shared) in [(1usize, false), (16, false), (64, false), (64, true)] {
        let label = if shared { "one room" } else { "room each" };
        let room_of = move |w: usize| if shared { 0 } else { w };
        let rooms: Arc<Vec<Room>> = Arc::new(
            (0..conc)
                .map(|i| Room::new("bench", &format!("p{conc}-{shared}-{}", room_of(i))).unwrap())
                .collect(),
        );
        let transport_rate = {
            let (t, rooms) = (publisher.clone(), rooms.clone());
            let payload: Arc<zps_core::Payload> =
                Arc::new(zps_core::envelope::to_payload(&*payload).unwrap());
            throughput(&admin, conc, move |w, _| {
                let (t, room, payload) = (t.clone(), rooms[w].clone(), payload.clone());
                async move {
                    t.publish(raw_event(&room, &payload)).await.unwrap();
                }
            })
            .await
        };
        let evalsha_rate = {
            let (c, sha, p, prefix) = (raw.clone(), sha.clone(), payload_json.clone(), prefix.clone());
            throughput(&admin, conc, move |w, _| {
                let (c, sha, p) = (c.clone(), sha.clone(), p.clone());
                let keys = vec![
                    format!("{prefix}raw:seq:{{{conc}-{shared}-{}}}", room_of(w)),
                    format!("{prefix}raw:stream:{{{conc}-{shared}-{}}}", room_of(w)),
                ];
                let channel = format!("{prefix}raw:ch:{{{conc}-{shared}-{}}}", room_of(w));
                async move {
                    let _: i64 = c
                        .evalsha(sha.as_str(), keys, vec![p.as_str(), channel.as_str()])
                        .await
                        .unwrap();
                }
            })
            .await
        };
        let publish_rate = {
            let (c, p, prefix) = (raw.clone(), payload_json.clone(), prefix.clone());
            throughput(&admin, conc, move |w, _| {
                let (c, p) = (c.clone(), p.clone());
                let channel = format!("{prefix}raw:ch:{{{conc}-{shared}-{}}}", room_of(w));
                async move {
                    let _: i64 = c.publish(channel, p.as_str()).await.unwrap();
                }
            })
            .await
        };
        let ratio = transport_rate.per_sec / evalsha_rate.per_sec;
        println!(
            "{:<22} {:>5} {:>11.0} {:>11.0} {:>11.0} {:>6.1}% {:>22} {:>22}",
            label,
            conc,
            transport_rate.per_sec,
            evalsha_rate.per_sec,
            publish_rate.per_sec,
            ratio * 100.0,
            format!(
                "{:.1} / {:.1}",
                transport_rate.client_us_per_op, evalsha_rate.client_us_per_op
            ),
            format!(
                "{:.1} / {:.1}",
                transport_rate.server_us_per_op, evalsha_rate.server_us_per_op
            ),
        );
        let round = |v: f64| (v * 10.0).round() / 10.0;
        json_lines.push(json!({
            "scenario": "redis_publish_throughput",
            "concurrency": conc,
            "rooms": if shared { "one" } else { "one_per_publisher" },
            "publish_per_sec": transport_rate.per_sec.round(),
            "raw_evalsha_per_sec": evalsha_rate.per_sec.round(),
            "raw_publish_per_sec": publish_rate.per_sec.round(),
            "ratio_vs_raw_evalsha": (ratio * 1000.0).round() / 1000.0,
            "client_cpu_us_per_op": round(transport_rate.client_us_per_op),
            "raw_client_cpu_us_per_op": round(evalsha_rate.client_us_per_op),
            "redis_cpu_us_per_op": round(transport_rate.server_us_per_op),
            "raw_redis_cpu_us_per_op": round(evalsha_rate.server_us_per_op),
        }));
    }

    // Latency: transport A publishes, transport B delivers (its own subscriber connection).
    let receiver = RedisTransport::connect(&url(), config.clone()).await.unwrap();
    let room = Room::new("bench", "latency").unwrap();
    let start = Instant::now();
    let live = receiver.subscribe(&[room.clone().into()]).await.unwrap();
    let deliveries = live
        .filter_map(|s| async move {
            match s {
                LiveSignal::Event(e) => e.payload_as::<serde_json::Value>().ok()?["t"].as_u64(),
                other => {
                    eprintln!("unexpected live signal during the latency run: {other:?}");
                    None
                }
            }
        })
        .boxed();
    let transport_latency = {
        let publisher = publisher.clone();
        let room = room.clone();
        paced(
            move |_| {
                let (publisher, room) = (publisher.clone(), room.clone());
                async move {
                    let t = start.elapsed().as_micros() as u64;
                    publisher.publish(event(&room, &json!({"t": t}))).await.unwrap();
                }
            },
            deliveries,
            start,
        )
        .await
    };

    // Baseline: raw PUBLISH from one client to a raw SUBSCRIBE on another.
    let sub_client = plain_client().await;
    let raw_channel = format!("{prefix}raw:latency");
    let rx = sub_client.message_rx();
    sub_client.subscribe(raw_channel.clone()).await.unwrap();
    let _: Value = sub_client.ping(None).await.unwrap();
    let raw_deliveries = tokio_stream_from(rx)
        .filter_map(|m| async move { m.value.as_str()?.parse::<u64>().ok() })
        .boxed();
    let raw_latency = {
        let raw = raw.clone();
        paced(
            move |_| {
                let (raw, channel) = (raw.clone(), raw_channel.clone());
                async move {
                    let t = start.elapsed().as_micros() as u64;
                    let _: i64 = raw.publish(channel, t.to_string()).await.unwrap();
                }
            },
            raw_deliveries,
            start,
        )
        .await
    };
    println!();
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "latency @ 10k/s", "p50", "p90", "p99", "p99.9", "max", "delivered"
    );
    for (name, l) in [
        ("transport A -> transport B", &transport_latency),
        ("raw PUBLISH -> SUBSCRIBE", &raw_latency),
    ] {
        let h = &l.hist;
        println!(
            "{:<28} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}/{:<6}",
            name,
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.9)),
            us(h.value_at_quantile(0.99)),
            us(h.value_at_quantile(0.999)),
            us(h.max()),
            h.len(),
            l.sent
        );
    }
    let th = &transport_latency.hist;
    let rh = &raw_latency.hist;
    json_lines.push(json!({
        "scenario": "redis_publish_to_deliver_latency",
        "rate_per_sec": RATE_PER_SEC,
        "delivered": th.len(),
        "sent": transport_latency.sent,
        "p50_us": th.value_at_quantile(0.5),
        "p99_us": th.value_at_quantile(0.99),
        "p999_us": th.value_at_quantile(0.999),
        "max_us": th.max(),
        "raw_p50_us": rh.value_at_quantile(0.5),
        "raw_p99_us": rh.value_at_quantile(0.99),
        "p99_ratio_vs_raw": ((th.value_at_quantile(0.99) as f64 / rh.value_at_quantile(0.99).max(1) as f64) * 100.0).round() / 100.0,
    }));
    println!();
    for line in json_lines {
        println!("{line}");
    }

    receiver.close().await.unwrap();
    publisher.close().await.unwrap();
    sub_client.quit().await.unwrap();
    cleanup(&raw, &prefix).await;
    raw.quit().await.unwrap();
    admin.quit().await.unwrap();
}

fn tokio_stream_from(
    rx: tokio::sync::broadcast::Receiver<fred::types::Message>,
) -> impl futures::Stream<Item = fred::types::Message> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(m) => return Some((m, rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("raw subscriber lagged by {n}");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
