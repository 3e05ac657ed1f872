//! NATS transport benchmarks, each beside a raw JetStream baseline measured in
//! the same run against the same server:
//!
//! * publish throughput with 1, 16 and 64 concurrent publishers (one room
//!   each), versus the same number of raw `publish` + ack loops on the same
//!   stream layout: the cost of the id claim, the sequence checks and the id
//!   record;
//! * `publish_batch` of 64 events of one room, versus 64 raw publishes sent
//!   before awaiting their acks (the events themselves go one round trip
//!   each: their sequence checks chain);
//! * two processes (transports) publishing to one room with 8 publishers each:
//!   throughput and the sequence conflicts it costs (the price of optimistic
//!   sequencing under contention);
//! * publish → deliver latency from one transport to a subscriber on another
//!   at a fixed 2 000 events/s, versus raw publish → an ordered consumer.
//!
//! `cargo bench -p zps-nats --bench publish` (NATS from `ZPS_TEST_NATS_URL`,
//! default `nats://127.0.0.1:4222`). Streams live under a random prefix,
//! deleted at the end. `ZPS_BENCH_SECS` sets each throughput run (default 2).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use zps_core::{LiveSignal, NewEvent, PublishRequest, Room, RoomPattern, Timestamp, Transport};
use zps_nats::{NatsConfig, NatsTransport, async_nats};

const RATE_PER_SEC: u64 = 2_000;
const LATENCY_SECS: u64 = 3;

fn url() -> String {
    std::env::var("ZPS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn run_secs() -> f64 {
    std::env::var("ZPS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0)
}

fn event(room: &Room, n: u64) -> NewEvent {
    let req = PublishRequest::new(
        room.clone(),
        "bench",
        &json!({"text": "hello from the benchmark", "user": "u-123", "n": n, "tags": ["a", "b"]}),
    )
    .unwrap();
    NewEvent::from_request(req, Duration::from_secs(3600), Timestamp::now()).unwrap()
}

/// Runs `workers` loops of `op` for the configured time; returns operations per second.
async fn throughput<F, Fut>(workers: usize, op: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (op, stop, done) = (op.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    op(w, n).await;
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(run_secs())).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn transport(prefix: &str) -> NatsTransport {
    let config = NatsConfig::default().with_prefix(prefix);
    NatsTransport::connect(&url(), config).await.unwrap()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let prefix = format!("zpsbench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let raw_prefix = format!("{prefix}_raw");
    let client = async_nats::connect(url())
        .await
        .expect("NATS with JetStream must be reachable");
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: format!("{raw_prefix}_events"),
        subjects: vec![format!("{raw_prefix}.ev.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let nats = Arc::new(transport(&prefix).await);
    println!(
        "# zps-nats publish benchmark ({} s per run, file storage, 1 replica)",
        run_secs()
    );
    println!(
        "{:<44} {:>12} {:>12} {:>7}",
        "shape", "zps-nats/s", "raw js/s", "ratio"
    );
    for workers in [1usize, 16, 64] {
        let t = nats.clone();
        let ours = throughput(workers, move |w, n| {
            let t = t.clone();
            async move {
                let room = Room::parse(&format!("bench:w{w}")).unwrap();
                t.publish(event(&room, n)).await.unwrap();
            }
        })
        .await;
        let js2 = js.clone();
        let raw_subject = raw_prefix.clone();
        let raw = throughput(workers, move |w, n| {
            let js = js2.clone();
            let subject = format!("{raw_subject}.ev.bench.w{w}");
            async move {
                let body = event(&Room::parse("bench:raw").unwrap(), n)
                    .to_envelope(n + 1)
                    .to_json();
                js.publish(subject, body.into()).await.unwrap().await.unwrap();
            }
        })
        .await;
        println!(
            "{:<44} {:>12.0} {:>12.0} {:>6.2}x",
            format!("publish, {workers} publisher(s), own rooms"),
            ours,
            raw,
            ours / raw
        );
    }

    // Batches: 64 events of one room per call (what the gateway sends for a
    // pipelining publisher) against 64 raw publishes sent before awaiting their acks.
    let t = nats.clone();
    let ours = 64.0
        * throughput(1, move |_, n| {
            let t = t.clone();
            async move {
                let room = Room::parse("bench:batch").unwrap();
                let events = (0..64).map(|k| event(&room, n * 64 + k)).collect();
                t.publish_batch(events).await.unwrap();
            }
        })
        .await;
    let js2 = js.clone();
    let raw_subject = format!("{raw_prefix}.ev.bench.batch");
    let raw = 64.0
        * throughput(1, move |_, n| {
            let (js, subject) = (js2.clone(), raw_subject.clone());
            async move {
                let mut acks = Vec::with_capacity(64);
                for k in 0..64 {
                    let body = event(&Room::parse("bench:raw").unwrap(), n * 64 + k)
                        .to_envelope(n * 64 + k + 1)
                        .to_json();
                    acks.push(js.publish(subject.clone(), body.into()).await.unwrap());
                }
                for ack in acks {
                    ack.await.unwrap();
                }
            }
        })
        .await;
    println!(
        "{:<44} {:>12.0} {:>12.0} {:>6.2}x",
        "publish_batch of 64, one room",
        ours,
        raw,
        ours / raw
    );

    // Contention: two transports, 8 publishers each, one room.
    let other = Arc::new(transport(&prefix).await);
    let before = nats.sequence_conflicts() + other.sequence_conflicts();
    let (a, b) = (nats.clone(), other.clone());
    let shared = throughput(16, move |w, n| {
        let t = if w % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            t.publish(event(&Room::parse("bench:shared").unwrap(), n))
                .await
                .unwrap();
        }
    })
    .await;
    let conflicts = nats.sequence_conflicts() + other.sequence_conflicts() - before;
    let published = shared * run_secs();
    println!(
        "{:<44} {:>12.0} {:>12} {:>7}  ({conflicts} conflicts, {:.2} per publish)",
        "publish, 2 processes x 8, one room",
        shared,
        "-",
        "-",
        conflicts as f64 / published.max(1.0)
    );

    // Latency: publisher on one transport, subscriber on the other.
    let room = Room::parse("bench:latency").unwrap();
    let live = other
        .subscribe(&[RoomPattern::Exact(room.clone())])
        .await
        .unwrap();
    let deliveries = live
        .filter_map(|signal| async move {
            match signal {
                LiveSignal::Event(e) => e.payload_as::<serde_json::Value>().ok()?["n"].as_u64(),
                _ => None,
            }
        })
        .boxed();
    let t = nats.clone();
    let ours = latency(
        move |n| {
            let (t, room) = (t.clone(), room.clone());
            async move {
                t.publish(event(&room, n)).await.unwrap();
            }
        },
        deliveries,
    )
    .await;
    let raw_stream = js.get_stream(format!("{raw_prefix}_events")).await.unwrap();
    let raw_subject = format!("{raw_prefix}.ev.bench.latency");
    let raw_consumer = raw_stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: raw_subject.clone(),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .unwrap();
    let raw_deliveries = raw_consumer
        .messages()
        .await
        .unwrap()
        .filter_map(|msg| async move {
            let msg = msg.ok()?;
            let env: zps_core::Envelope = serde_json::from_slice(&msg.payload).ok()?;
            env.payload_as::<serde_json::Value>().ok()?["n"].as_u64()
        })
        .boxed();
    let js2 = js.clone();
    let raw = latency(
        move |n| {
            let (js, subject) = (js2.clone(), raw_subject.clone());
            async move {
                let body = event(&Room::parse("bench:raw").unwrap(), n)
                    .to_envelope(n + 1)
                    .to_json();
                js.publish(subject, body.into()).await.unwrap().await.unwrap();
            }
        },
        raw_deliveries,
    )
    .await;
    for (name, h) in [
        ("zps-nats publish -> other transport", &ours),
        ("raw js publish -> ordered consumer", &raw),
    ] {
        println!(
            "{:<44} p50 {:>6.2} ms  p99 {:>6.2} ms  ({RATE_PER_SEC}/s for {LATENCY_SECS} s)",
            name,
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0
        );
    }
    nats.close().await.unwrap();
    other.close().await.unwrap();
    zps_nats::delete_prefix(&client, &prefix).await.unwrap();
    js.delete_stream(format!("{raw_prefix}_events")).await.unwrap();
}

/// Publishes event `n` every `1 / RATE_PER_SEC` (each publish its own task, so
/// a slow one does not delay the schedule) and records, per delivery, the
/// microseconds from just before its publish to its arrival.
async fn latency<P, PF>(
    publish: P,
    mut deliveries: futures::stream::BoxStream<'static, u64>,
) -> Histogram<u64>
where
    P: Fn(u64) -> PF,
    PF: std::future::Future<Output = ()> + Send + 'static,
{
    let total = RATE_PER_SEC * LATENCY_SECS;
    let sent: Arc<parking_lot::Mutex<std::collections::HashMap<u64, Instant>>> = Arc::default();
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    let receiver = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).unwrap();
            while h.len() < total {
                let Ok(Some(n)) = tokio::time::timeout(Duration::from_secs(10), deliveries.next()).await
                else {
                    break;
                };
                if let Some(at) = sent.lock().remove(&n) {
                    h.record(at.elapsed().as_micros() as u64).unwrap();
                }
            }
            h
        })
    };
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_SEC));
    for n in 0..total {
        tick.tick().await;
        sent.lock().insert(n, Instant::now());
        tokio::spawn(publish(n));
    }
    histogram.add(receiver.await.unwrap()).unwrap();
    histogram
}
