//! One measured run: N subscribers over R rooms, P publishers, a warm-up, a
//! measured window, then a drain in which every subscriber must receive
//! exactly what was published to its room. CPU of the server and of the load
//! generator is read at the window's edges.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Semaphore, oneshot};

use crate::cpu::CpuMark;
use crate::load::{self, Finish, PubSpec, Target, Timeline};
use crate::servers::Server;
use crate::{Percentiles, latency_histogram};

/// The shape of a run.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Scenario name.
    pub name: String,
    /// Rooms.
    pub rooms: usize,
    /// Subscribers per room.
    pub subs_per_room: usize,
    /// Publisher connections (rooms are dealt out round-robin).
    pub publishers: usize,
    /// Total messages per second over all publishers; `None` = maximum.
    pub rate: Option<f64>,
    /// Unanswered publishes per publisher.
    pub window: usize,
}

/// Warm-up and measured window.
#[derive(Debug, Clone, Copy)]
pub struct Durations {
    /// Publishing before the window opens.
    pub warmup: Duration,
    /// The measured window.
    pub measure: Duration,
}

/// What one run of one target measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Scenario name.
    pub scenario: String,
    /// Server under test.
    pub target: Target,
    /// Rooms.
    pub rooms: usize,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Publisher connections.
    pub publishers: usize,
    /// Messages published in the whole run.
    pub published: u64,
    /// Publishes per second inside the window.
    pub publish_per_sec: f64,
    /// Deliveries counted in the whole run.
    pub delivered: u64,
    /// Deliveries per second inside the window.
    pub deliver_per_sec: f64,
    /// Publish→deliver latency inside the window.
    pub latency: Percentiles,
    /// Published but never delivered (summed over subscribers).
    pub lost: u64,
    /// Delivered out of order, twice, or unreadable.
    pub duplicates_or_out_of_order: u64,
    /// Error answers to publishes.
    pub publish_errors: u64,
    /// Server CPU inside the window (100 = one core).
    pub server_cpu_pct: f64,
    /// Load generator CPU inside the window (100 = one core).
    pub loadgen_cpu_pct: f64,
    /// CPU used by every other process inside the window (a database, say).
    pub others_cpu_pct: f64,
    /// Server CPU per delivery inside the window, in µs.
    pub server_us_per_delivery: f64,
    /// Server resident memory at the window's end.
    pub server_rss_bytes: u64,
}

/// Runs `shape` against `server` (a fresh process of `target`).
pub async fn run(target: Target, server: &Server, shape: &Shape, d: Durations) -> anyhow::Result<RunReport> {
    // Connect every subscriber first (at most 64 handshakes at a time).
    let limit = Arc::new(Semaphore::new(64));
    let mut opening = Vec::new();
    for r in 0..shape.rooms {
        for s in 0..shape.subs_per_room {
            let limit = limit.clone();
            let addr = server.addr;
            opening.push(tokio::spawn(async move {
                let _permit = limit.acquire_owned().await?;
                let ws = load::open_subscriber(
                    target,
                    addr,
                    &load::room_name(r),
                    r * 100_000 + s,
                    load::SUB_BUFFER,
                )
                .await?;
                anyhow::Ok((r, ws))
            }));
        }
    }
    let mut conns = Vec::with_capacity(opening.len());
    for o in opening {
        conns.push(o.await??);
    }
    let rooms_of_subs: Vec<usize> = conns.iter().map(|(r, _)| *r).collect();
    let timeline = Timeline::new(Duration::from_millis(200), d.warmup, d.measure);
    let mut finishers = Vec::with_capacity(conns.len());
    let subs: Vec<_> = conns
        .into_iter()
        .map(|(r, ws)| {
            let (tx, rx) = oneshot::channel();
            finishers.push((r, tx));
            tokio::spawn(load::run_subscriber(ws, target, timeline, rx))
        })
        .collect();
    let mut pubs = Vec::new();
    for p in 0..shape.publishers {
        let rooms: Vec<usize> = (p..shape.rooms).step_by(shape.publishers).collect();
        let spec = PubSpec {
            target,
            addr: server.addr,
            rooms,
            rate: shape.rate.map(|r| r / shape.publishers as f64),
            window: shape.window,
            id: p,
        };
        pubs.push(tokio::spawn(load::run_publisher(spec, timeline)));
    }
    tokio::time::sleep_until(timeline.at(timeline.window_start_us).into()).await;
    let (server_start, self_start, machine_start) = (
        CpuMark::now(Some(server.pid())),
        CpuMark::now(None),
        CpuMark::machine(),
    );
    tokio::time::sleep_until(timeline.at(timeline.window_end_us).into()).await;
    let (server_end, self_end, machine_end) = (
        CpuMark::now(Some(server.pid())),
        CpuMark::now(None),
        CpuMark::machine(),
    );
    let rss = server.rss();
    let mut expected = vec![0u64; shape.rooms];
    let mut publish_in_window = 0;
    let mut publish_errors = 0;
    for (p, handle) in pubs.into_iter().enumerate() {
        let stats = handle.await??;
        for (k, n) in stats.per_room.iter().enumerate() {
            expected[p + k * shape.publishers] = *n;
        }
        publish_in_window += stats.in_window;
        publish_errors += stats.errors;
    }
    // Whatever has not arrived 20 s after the last publish was answered is lost.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for (r, tx) in finishers {
        let _ = tx.send(Finish {
            expected: expected[r],
            deadline,
        });
    }
    let mut hist = latency_histogram();
    let (mut delivered, mut in_window, mut bad, mut lost) = (0, 0, 0, 0);
    for (s, r) in subs.into_iter().zip(rooms_of_subs) {
        let stats = s.await?;
        delivered += stats.received;
        in_window += stats.in_window;
        bad += stats.bad;
        lost += expected[r].saturating_sub(stats.received);
        hist.add(&stats.hist)?;
    }
    let published: u64 = expected.iter().sum();
    let window = d.measure.as_secs_f64();
    let server_cpu = server_start.seconds_until(&server_end);
    Ok(RunReport {
        scenario: shape.name.clone(),
        target,
        rooms: shape.rooms,
        subscribers: shape.rooms * shape.subs_per_room,
        publishers: shape.publishers,
        published,
        publish_per_sec: publish_in_window as f64 / window,
        delivered,
        deliver_per_sec: in_window as f64 / window,
        latency: Percentiles::of(&hist),
        lost,
        duplicates_or_out_of_order: bad,
        publish_errors,
        server_cpu_pct: server_start.percent_until(&server_end),
        loadgen_cpu_pct: self_start.percent_until(&self_end),
        others_cpu_pct: (machine_start.percent_until(&machine_end)
            - server_start.percent_until(&server_end)
            - self_start.percent_until(&self_end))
        .max(0.0),
        server_us_per_delivery: server_cpu * 1e6 / (in_window.max(1) as f64),
        server_rss_bytes: rss,
    })
}
