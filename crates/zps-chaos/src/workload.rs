//! The recording workload every scenario runs around its fault: subscribers
//! that log every event and discontinuity their application receives (and how
//! late each event arrived), publishers that retry an unanswered publish with
//! the same id and log every acknowledgement.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::StreamExt;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;
use zps_client::{Backoff, Client, ClientEvent, ClientOptions, OutgoingEvent, SubscribeOptions};

use crate::checker::{History, Seen};

/// How big a run is.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Subscribing clients (each on every room).
    pub subscribers: usize,
    /// Publishing clients.
    pub publishers: usize,
    /// Rooms.
    pub rooms: usize,
    /// Load before the fault, and again after it.
    pub phase: Duration,
    /// Clients of the reconnect storm.
    pub storm_clients: usize,
}

impl Size {
    /// CI-sized.
    pub fn quick() -> Self {
        Self {
            subscribers: 4,
            publishers: 2,
            rooms: 4,
            phase: Duration::from_millis(1500),
            storm_clients: 1_000,
        }
    }

    /// The full run.
    pub fn full() -> Self {
        Self {
            subscribers: 20,
            publishers: 4,
            rooms: 8,
            phase: Duration::from_secs(5),
            storm_clients: 10_000,
        }
    }
}

/// Client options of the workload: quick reconnects, bounded waits.
pub fn options(id: String) -> ClientOptions {
    let mut o = ClientOptions::default();
    o.subscriber_id = id;
    o.reconnect = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(500),
        max_attempts: None,
    };
    o.request_timeout = Duration::from_secs(5);
    o.connect_timeout = Duration::from_secs(2);
    o
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What one subscriber's application received, in order.
pub type Log = Arc<Mutex<Vec<Seen>>>;

/// Delivery latency (publish call → subscriber's application), microseconds.
pub type Latency = Arc<Mutex<Histogram<u64>>>;

fn latency() -> Latency {
    // 1 µs .. 10 min, 3 significant digits: `new_with_bounds` only fails on bad bounds.
    Arc::new(Mutex::new(
        Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant, valid bounds"),
    ))
}

/// Delivery latency by when the event was published: before the fault, during
/// it (from [`Workload::fault_started`] to [`Workload::fault_ended`]), after it.
#[derive(Default)]
pub struct Phases {
    start: AtomicU64,
    end: AtomicU64,
    by_phase: Mutex<Option<[Histogram<u64>; 3]>>,
}

impl Phases {
    fn record(&self, published: u64, latency: u64) {
        let (start, end) = (
            self.start.load(Ordering::Relaxed),
            self.end.load(Ordering::Relaxed),
        );
        let i = match (start, end) {
            (0, _) => 0,
            (s, _) if published < s => 0,
            (_, 0) => 1,
            (_, e) if published < e => 1,
            _ => 2,
        };
        let mut h = self.by_phase.lock();
        let h = h.get_or_insert_with(|| {
            std::array::from_fn(|_| Histogram::new(3).expect("constant, valid precision"))
        });
        let _ = h[i].record(latency);
    }

    /// p99 (ms) of events published before, during and after the fault.
    pub fn p99s(&self) -> [Option<f64>; 3] {
        match &*self.by_phase.lock() {
            Some(h) => std::array::from_fn(|i| p99_ms(&h[i])),
            None => [None; 3],
        }
    }
}

/// A group of recording subscribers, each on every room from its start.
pub struct Subscribers {
    /// What each one's application received, in order.
    pub seen: Vec<Log>,
    /// Delivery latency over the group.
    pub latency: Latency,
    /// The clients, to watch their connection state.
    pub clients: Vec<Client>,
    /// Each one's rooms, when not every room.
    rooms: Vec<Option<Vec<String>>>,
}

/// Recording clients: subscribers from the start of every room, publishers in a loop.
pub struct Workload {
    rooms: Vec<String>,
    tag: String,
    history: Arc<Mutex<History>>,
    groups: Vec<Subscribers>,
    publishers: Vec<(Client, tokio::task::JoinHandle<u64>)>,
    stop: Arc<AtomicBool>,
    /// When each acknowledgement arrived.
    pub ack_times: Arc<Mutex<Vec<Instant>>>,
    phases: Arc<Phases>,
}

impl Workload {
    /// `size.subscribers` subscribers and `size.publishers` publishers on `url`.
    pub async fn start(url: &str, size: Size, tag: &str) -> anyhow::Result<Self> {
        let mut w = Self::new(size.rooms, tag);
        w.subscribe(url, size.subscribers).await?;
        w.publish(url, size.publishers)?;
        Ok(w)
    }

    /// No clients yet: add them with [`Workload::subscribe`] and [`Workload::publish`].
    pub fn new(rooms: usize, tag: &str) -> Self {
        Self {
            rooms: (0..rooms).map(|i| format!("chaos:{tag}-{i}")).collect(),
            tag: tag.to_owned(),
            history: Arc::default(),
            groups: Vec::new(),
            publishers: Vec::new(),
            stop: Arc::default(),
            ack_times: Arc::default(),
            phases: Arc::default(),
        }
    }

    /// Marks the fault's start: events published from now on count as "during".
    pub fn fault_started(&self) {
        self.phases.start.store(unix_micros(), Ordering::Relaxed);
    }

    /// Marks the fault's end (the server back, the link healed): events
    /// published from now on count as "after".
    pub fn fault_ended(&self) {
        self.phases.end.store(unix_micros(), Ordering::Relaxed);
    }

    /// Adds a group of `n` subscribers on `url`, each on every room; returns the group's index.
    pub async fn subscribe(&mut self, url: &str, n: usize) -> anyhow::Result<usize> {
        self.subscribe_spread(url, n, false).await
    }

    /// Adds a group of `n` subscribers on `url`: each on every room, or with
    /// `one_room_each` subscriber `i` on room `i mod rooms` only. Connects up to
    /// 64 at a time. Returns the group's index.
    pub async fn subscribe_spread(
        &mut self,
        url: &str,
        n: usize,
        one_room_each: bool,
    ) -> anyhow::Result<usize> {
        let group = self.groups.len();
        let latency = latency();
        let rooms_of = |s: usize| -> Vec<String> {
            if one_room_each {
                vec![self.rooms[s % self.rooms.len()].clone()]
            } else {
                self.rooms.clone()
            }
        };
        let joined: Vec<anyhow::Result<(Client, Log)>> = futures::stream::iter((0..n).map(|s| {
            let rooms = rooms_of(s);
            let id = format!("sub-{}-{group}-{s}", self.tag);
            Self::subscriber(url, id, rooms, latency.clone(), self.phases.clone())
        }))
        .buffered(64)
        .collect()
        .await;
        let mut g = Subscribers {
            seen: Vec::new(),
            latency,
            clients: Vec::new(),
            rooms: Vec::new(),
        };
        for (s, j) in joined.into_iter().enumerate() {
            let (client, seen) = j?;
            g.seen.push(seen);
            g.clients.push(client);
            g.rooms.push(one_room_each.then(|| rooms_of(s)));
        }
        self.groups.push(g);
        Ok(group)
    }

    async fn subscriber(
        url: &str,
        id: String,
        rooms: Vec<String>,
        lat: Latency,
        phases: Arc<Phases>,
    ) -> anyhow::Result<(Client, Log)> {
        let client = Client::connect(url, options(id))?;
        let mut sub = client
            .subscribe_with_options(rooms, SubscribeOptions::new().after(0))
            .await
            .context("subscribe")?;
        let seen: Log = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Some(item) = sub.next().await {
                let item = match item {
                    ClientEvent::Event(e) => {
                        if let Ok(p) = e.payload_as::<serde_json::Value>()
                            && let Some(t) = p["t"].as_u64()
                        {
                            let took = unix_micros().saturating_sub(t).max(1);
                            let _ = lat.lock().record(took);
                            phases.record(t, took);
                        }
                        Seen::Event {
                            room: e.room.as_str().to_owned(),
                            sequence: e.sequence,
                            id: e.id.clone(),
                        }
                    }
                    ClientEvent::Discontinuity {
                        room,
                        reason,
                        earliest_sequence,
                        last_delivered,
                        ..
                    } => Seen::Discontinuity {
                        room,
                        reason: reason.as_str().to_owned(),
                        last_delivered,
                        earliest: earliest_sequence,
                    },
                    _ => continue,
                };
                log.lock().push(item);
            }
        });
        Ok((client, seen))
    }

    /// Adds `n` publishers on `url`, each publishing round-robin over the rooms
    /// (one every ~2 ms) until [`Workload::finish`].
    pub fn publish(&mut self, url: &str, n: usize) -> anyhow::Result<()> {
        self.publish_every(url, n, Duration::from_millis(2))
    }

    /// The same, with `pause` between one publisher's publishes.
    pub fn publish_every(&mut self, url: &str, n: usize, pause: Duration) -> anyhow::Result<()> {
        for _ in 0..n {
            let p = self.publishers.len();
            let client = Client::connect(url, options(format!("pub-{}-{p}", self.tag)))?;
            let (history, stop, rooms, ack_times, c) = (
                self.history.clone(),
                self.stop.clone(),
                self.rooms.clone(),
                self.ack_times.clone(),
                client.clone(),
            );
            let task = tokio::spawn(async move {
                let mut attempts = 0u64;
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let room = &rooms[(p + n) % rooms.len()];
                    let id = format!("p{p}-{n}");
                    // Retry the same id until answered: the id makes it idempotent.
                    loop {
                        attempts += 1;
                        let body = json!({"n": n, "t": unix_micros()});
                        let Ok(event) = OutgoingEvent::new(room.clone(), "chaos", &body) else {
                            break;
                        };
                        match c.publish(event.with_id(id.clone())).await {
                            Ok(done) => {
                                history.lock().ack(room, done.sequence, &id);
                                ack_times.lock().push(Instant::now());
                                break;
                            }
                            Err(_) if stop.load(Ordering::Relaxed) => break,
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                    n += 1;
                    tokio::time::sleep(pause).await;
                }
                attempts
            });
            self.publishers.push((client, task));
        }
        Ok(())
    }

    /// The subscriber group `i`.
    pub fn group(&self, i: usize) -> &Subscribers {
        &self.groups[i]
    }

    /// The first acknowledgement after `t`, as milliseconds after it.
    pub fn first_ack_after(&self, t: Instant, skip: Duration) -> Option<u64> {
        self.ack_times
            .lock()
            .iter()
            .find(|a| a.saturating_duration_since(t) > skip)
            .map(|a| a.duration_since(t).as_millis() as u64)
    }

    /// The longest wait from `t` to an acknowledgement or between two after it
    /// (publishers stalled on a room whose shard was failing over, say), in milliseconds.
    pub fn longest_ack_gap_after(&self, t: Instant) -> u64 {
        let times = self.ack_times.lock();
        let mut after: Vec<Instant> = times.iter().copied().filter(|a| *a >= t).collect();
        after.push(t);
        after.sort();
        after
            .windows(2)
            .map(|w| w[1].duration_since(w[0]).as_millis() as u64)
            .max()
            .unwrap_or(0)
    }

    /// Stops publishing, waits until every subscriber has every acknowledged event
    /// (or `bound` passes), closes the clients and returns what was recorded.
    pub async fn finish(mut self, bound: Duration) -> Finished {
        self.stop.store(true, Ordering::Relaxed);
        let mut attempts = 0;
        for (_, p) in &mut self.publishers {
            attempts += p.await.unwrap_or(0);
        }
        let started = Instant::now();
        let heads: HashMap<String, u64> = self
            .history
            .lock()
            .acked
            .iter()
            .map(|(r, m)| (r.clone(), m.keys().next_back().copied().unwrap_or(0)))
            .collect();
        let all_seen: Vec<_> = self.groups.iter().flat_map(|g| g.seen.iter()).collect();
        let all_rooms: Vec<_> = self.groups.iter().flat_map(|g| g.rooms.iter()).collect();
        let mut converged = None;
        while started.elapsed() < bound {
            let done = all_seen.iter().zip(&all_rooms).all(|(seen, mine)| {
                let seen = seen.lock();
                heads.iter().filter(|(room, _)| mine.as_ref().is_none_or(|m| m.contains(room))).all(|(room, head)| {
                    seen.iter().any(|s| matches!(s, Seen::Event { room: r, sequence, .. } if r == room && sequence >= head))
                })
            });
            if done {
                converged = Some(started.elapsed().as_millis() as u64);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for c in self
            .groups
            .iter()
            .flat_map(|g| g.clients.iter())
            .chain(self.publishers.iter().map(|(c, _)| c))
        {
            c.close().await;
        }
        let mut history = self.history.lock().clone();
        history.subscribers = all_seen
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("sub-{i}"), s.lock().clone()))
            .collect();
        history.rooms_of = all_rooms
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((format!("sub-{i}"), r.as_ref()?.iter().cloned().collect())))
            .collect();
        let mut latency = Histogram::<u64>::new(3).expect("constant, valid precision");
        for g in &self.groups {
            let _ = latency.add(&*g.latency.lock());
        }
        Finished {
            history,
            attempts,
            converged_ms: converged,
            p99_ms: p99_ms(&latency),
            p99_by_phase_ms: self.phases.p99s(),
        }
    }
}

/// The 99th percentile of a latency histogram (µs) in milliseconds.
pub fn p99_ms(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(0.99) as f64 / 1000.0)
}

/// What a finished workload recorded.
pub struct Finished {
    /// Acknowledgements and deliveries, for the checker.
    pub history: History,
    /// Publish attempts (answered or not).
    pub attempts: u64,
    /// From the end of publishing until every subscriber had every acknowledged event.
    pub converged_ms: Option<u64>,
    /// Delivery latency p99 over every subscriber, publish call to application.
    pub p99_ms: Option<f64>,
    /// The same for events published before, during and after the fault.
    pub p99_by_phase_ms: [Option<f64>; 3],
}
