//! In-process load test of the engine: publishers → transport → ordered
//! subscriptions, no network. Knobs (environment, as in the seed):
//! `REALTIME_LOAD_ROOMS` (10), `REALTIME_LOAD_SUBSCRIBERS_PER_ROOM` (1),
//! `REALTIME_LOAD_EVENTS_PER_ROOM` (1000), `REALTIME_LOAD_TARGET_EVENTS`
//! (overrides events per room = target / rooms), `REALTIME_LOAD_PUBLISHERS`
//! (concurrent publisher tasks, default = rooms up to 8).
//!
//! Every subscriber checks it received each room's 1..=N exactly once in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use zps_bench::{Percentiles, latency_histogram, mib, peak_rss_bytes, rate};
use zps_core::{PublishRequest, Realtime, Room, SubscribeOptions, SubscriptionItem};

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    provider: &'static str,
    rooms: usize,
    subscribers_per_room: usize,
    events_per_room: u64,
    published: u64,
    delivered: u64,
    publish_per_sec: f64,
    deliver_per_sec: f64,
    lag: Percentiles,
    lost: u64,
    duplicates_or_out_of_order: u64,
    peak_rss_bytes: Option<u64>,
    elapsed_ms: u128,
}

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rooms = env_usize("REALTIME_LOAD_ROOMS", 10)?.max(1);
    let subs_per_room = env_usize("REALTIME_LOAD_SUBSCRIBERS_PER_ROOM", 1)?;
    let mut per_room = env_usize("REALTIME_LOAD_EVENTS_PER_ROOM", 1000)? as u64;
    if let Ok(target) = std::env::var("REALTIME_LOAD_TARGET_EVENTS") {
        let target: u64 = target
            .parse()
            .context("REALTIME_LOAD_TARGET_EVENTS is not a number")?;
        per_room = target.div_ceil(rooms as u64);
    }
    let publishers = env_usize("REALTIME_LOAD_PUBLISHERS", rooms.min(8))?.clamp(1, rooms);
    // History must hold every event so late subscribers could still catch up.
    let transport = zps_core::MemoryTransport::new(zps_core::MemoryConfig {
        max_events_per_room: per_room.max(10_000) as usize,
        channel_capacity: 4096,
        ..Default::default()
    });
    let rt = Realtime::new(Arc::new(transport));
    let room_names: Vec<Room> = (0..rooms)
        .map(|i| Room::new("load", &format!("room-{i}")))
        .collect::<Result<_, _>>()?;
    let epoch = Instant::now();

    let mut subscribers = Vec::new();
    for room in &room_names {
        for _ in 0..subs_per_room {
            let mut sub = rt
                .subscribe_stream(SubscribeOptions::room(room.clone()).live_only())
                .await?;
            subscribers.push(tokio::spawn(async move {
                let mut hist = latency_histogram();
                let (mut next, mut bad) = (1u64, 0u64);
                while next <= per_room {
                    match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
                        Ok(Some(SubscriptionItem::Event(e))) => {
                            if e.sequence != next {
                                bad += 1;
                            }
                            next = e.sequence + 1;
                            if let Ok(sent) = e.payload.get().parse::<u64>() {
                                let now = epoch.elapsed().as_micros() as u64;
                                let _ = hist.record(now.saturating_sub(sent).max(1));
                            }
                        }
                        Ok(Some(SubscriptionItem::Discontinuity(_))) => bad += 1,
                        Ok(None) | Err(_) => break,
                    }
                }
                (next - 1, bad, hist)
            }));
        }
    }

    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let rt = rt.clone();
        let mine: Vec<Room> = room_names.iter().skip(p).step_by(publishers).cloned().collect();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_room {
                for room in &mine {
                    let sent = epoch.elapsed().as_micros() as u64;
                    let payload = serde_json::value::RawValue::from_string(sent.to_string())?;
                    rt.publish(PublishRequest::raw(room.clone(), "load.tick", payload))
                        .await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let publish_elapsed = started.elapsed();
    let published = per_room * rooms as u64;

    let mut hist = latency_histogram();
    let (mut delivered, mut bad, mut lost) = (0u64, 0u64, 0u64);
    for s in subscribers {
        let (got, b, h) = s.await?;
        delivered += got;
        lost += per_room - got;
        bad += b;
        hist.add(&h)?;
    }
    let elapsed = started.elapsed();
    let report = Report {
        scenario: "load-test",
        provider: "memory",
        rooms,
        subscribers_per_room: subs_per_room,
        events_per_room: per_room,
        published,
        delivered,
        publish_per_sec: rate(published, publish_elapsed),
        deliver_per_sec: rate(delivered, elapsed),
        lag: Percentiles::of(&hist),
        lost,
        duplicates_or_out_of_order: bad,
        peak_rss_bytes: peak_rss_bytes(),
        elapsed_ms: elapsed.as_millis(),
    };
    println!(
        "rooms={} subscribers/room={} events/room={} publishers={publishers}",
        rooms, subs_per_room, per_room
    );
    println!(
        "published      {:>12} events  {:>12.0} events/s",
        report.published, report.publish_per_sec
    );
    println!(
        "delivered      {:>12} events  {:>12.0} events/s",
        report.delivered, report.deliver_per_sec
    );
    println!(
        "delivery lag   p50 {} µs  p90 {} µs  p99 {} µs  p99.9 {} µs  max {} µs",
        report.lag.p50_us, report.lag.p90_us, report.lag.p99_us, report.lag.p999_us, report.lag.max_us
    );
    println!(
        "lost {}  duplicates/out-of-order {}",
        report.lost, report.duplicates_or_out_of_order
    );
    if let Some(peak) = report.peak_rss_bytes {
        println!("peak memory    {}", mib(peak));
    }
    println!("{}", serde_json::to_string(&report)?);
    rt.close().await?;
    if lost > 0 || bad > 0 {
        bail!("delivery check failed: {lost} lost, {bad} duplicate/out-of-order");
    }
    Ok(())
}
