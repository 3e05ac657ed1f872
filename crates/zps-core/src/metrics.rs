//! Engine counters: a cheap in-process snapshot (`Realtime::metrics()`) and the
//! same figures through the `metrics` facade, so any exporter (the gateway's
//! Prometheus endpoint) sees them as `zps_*` series with bounded labels.
//!
//! The per-event counters (published, delivered, replayed) are
//! [`ShardedCounter`]s: every event touches them, and one atomic shared by all
//! cores costs a cache-line transfer per event. Once [`export_on_scrape`] is
//! on (the gateway turns it on with its Prometheus recorder), they reach the
//! facade when [`Metrics::export`] runs before a scrape, instead of per event,
//! and the delivery-lag histogram is a sharded [`LagHistogram`] written out
//! by [`render_deferred`].

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;

mod lag_histogram;
pub use lag_histogram::{LagHistogram, SECONDS_BUCKETS};

/// Counters shared by the engine and its subscriptions.
#[derive(Debug, Default)]
pub struct Metrics {
    published: ShardedCounter,
    received: ShardedCounter,
    replayed: ShardedCounter,
    acked: AtomicU64,
    duplicates_dropped: AtomicU64,
    gaps_detected: AtomicU64,
    gaps_filled: AtomicU64,
    errors: AtomicU64,
    retry_count: AtomicU64,
    dlq_size: AtomicI64,
    snapshot_usage: AtomicU64,
    flow_dropped: AtomicU64,
    discontinuities: AtomicU64,
    replay_calls: AtomicU64,
    replay_micros: AtomicU64,
    lag_samples: ShardedCounter,
    lag_millis_total: ShardedCounter,
    active_listeners: AtomicI64,
    ephemeral_published: AtomicU64,
    /// What [`Metrics::export`] already handed to the facade (it adds deltas,
    /// so several engines in one process sum up as before).
    exported: [AtomicU64; 3],
}

const SHARDS: usize = 16;

/// One cache line (two, against adjacent-line prefetch) per shard.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// A counter that many threads add to without sharing a cache line: each
/// thread adds to its own shard; reading sums the shards.
#[derive(Debug)]
pub struct ShardedCounter {
    shards: [Padded; SHARDS],
}

impl Default for ShardedCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl ShardedCounter {
    /// A zero counter (usable in a `static`).
    pub const fn new() -> Self {
        Self {
            shards: [const { Padded(AtomicU64::new(0)) }; SHARDS],
        }
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.shards[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The total.
    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .fold(0u64, |a, s| a.wrapping_add(s.0.load(Ordering::Relaxed)))
    }
}

/// This thread's shard.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// Every engine's delivery lags in this process (one series, as the facade's would be).
static DELIVERY_LAG: LagHistogram = LagHistogram::new();
const DELIVERY_LAG_NAME: &str = "zps_delivery_lag_seconds";

/// Appends what export-on-scrape keeps outside the facade (the delivery-lag
/// histogram) in Prometheus text; nothing unless [`export_on_scrape`] is on.
pub fn render_deferred(out: &mut String) {
    if deferred() {
        DELIVERY_LAG.render(DELIVERY_LAG_NAME, out);
    }
}

static EXPORT_ON_SCRAPE: AtomicBool = AtomicBool::new(false);

/// Switches the per-event counters to export-on-scrape (see the module docs):
/// whoever renders the metrics calls [`Metrics::export`] (through
/// `Realtime::export_metrics`) first. The gateway does this when it installs
/// its Prometheus recorder. Without it, every event updates the facade.
pub fn export_on_scrape() {
    EXPORT_ON_SCRAPE.store(true, Ordering::Release);
}

/// Whether [`export_on_scrape`] is on.
pub fn deferred() -> bool {
    EXPORT_ON_SCRAPE.load(Ordering::Relaxed)
}

/// A point-in-time copy of [`Metrics`], serialized camelCase like the seed's `snapshotMetrics()`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSnapshot {
    /// Events stored (duplicates excluded).
    pub published: u64,
    /// Events delivered to subscriptions.
    pub received: u64,
    /// Events delivered from history (catch-up, replay, gap fill).
    pub replayed: u64,
    /// Ack calls.
    pub acked: u64,
    /// Events dropped because they were already delivered (or duplicate publishes).
    pub duplicates_dropped: u64,
    /// Out-of-order arrivals that left a hole.
    pub gaps_detected: u64,
    /// Holes filled by reading history.
    pub gaps_filled: u64,
    /// Failed operations and handler failures.
    pub errors: u64,
    /// Handler retries.
    pub retry_count: u64,
    /// Dead letters written minus removed by this process.
    pub dlq_size: i64,
    /// Snapshot reads and writes.
    pub snapshot_usage: u64,
    /// Events dropped by flow control (`drop`, full `buffer`).
    pub flow_control_dropped: u64,
    /// Reported history discontinuities (reset or expired positions).
    pub discontinuities: u64,
    /// Mean duration of a history read, in milliseconds.
    pub replay_latency_ms: f64,
    /// Rooms with at least one local listener.
    pub active_rooms: u64,
    /// Local listeners (subscriptions and gateway room subscriptions).
    pub active_listeners: i64,
    /// Mean time from `emittedAt` to live delivery, in milliseconds.
    pub average_delivery_lag_ms: f64,
    /// Ephemeral events fanned out.
    pub ephemeral_published: u64,
}

macro_rules! bump {
    ($self:ident . $field:ident, $name:literal, $n:expr) => {{
        let n = $n;
        $self.$field.fetch_add(n, Ordering::Relaxed);
        ::metrics::counter!($name).increment(n);
    }};
}

impl Metrics {
    /// Counts a stored event.
    pub fn published(&self) {
        self.published.add(1);
        if !deferred() {
            ::metrics::counter!("zps_events_published_total").increment(1);
        }
    }
    /// Counts a delivered event, with its publish→deliver lag when it came live.
    pub fn received(&self, live_lag_ms: Option<u64>) {
        self.received.add(1);
        if !deferred() {
            ::metrics::counter!("zps_events_delivered_total").increment(1);
        }
        if let Some(lag) = live_lag_ms {
            self.lag_samples.add(1);
            self.lag_millis_total.add(lag);
            if deferred() {
                DELIVERY_LAG.record(lag);
            } else {
                ::metrics::histogram!(DELIVERY_LAG_NAME).record(lag as f64 / 1000.0);
            }
        }
    }
    /// Counts events read from history.
    pub fn replayed(&self, n: u64) {
        self.replayed.add(n);
        if !deferred() {
            ::metrics::counter!("zps_events_replayed_total").increment(n);
        }
    }

    /// Hands the per-event counters' growth since the last call to the
    /// `metrics` facade (a no-op unless [`export_on_scrape`] is on).
    pub fn export(&self) {
        if !deferred() {
            return;
        }
        let series = [
            ("zps_events_published_total", self.published.get()),
            ("zps_events_delivered_total", self.received.get()),
            ("zps_events_replayed_total", self.replayed.get()),
        ];
        for ((name, now), exported) in series.into_iter().zip(&self.exported) {
            let before = exported.swap(now, Ordering::AcqRel);
            ::metrics::counter!(name).increment(now.saturating_sub(before));
        }
    }
    /// Counts an ack.
    pub fn acked(&self) {
        bump!(self.acked, "zps_acks_total", 1);
    }
    /// Counts dropped duplicates.
    pub fn duplicates_dropped(&self, n: u64) {
        bump!(self.duplicates_dropped, "zps_duplicates_dropped_total", n);
    }
    /// Counts a detected hole.
    pub fn gap_detected(&self) {
        bump!(self.gaps_detected, "zps_gaps_detected_total", 1);
    }
    /// Counts a hole filled from history.
    pub fn gap_filled(&self) {
        bump!(self.gaps_filled, "zps_gaps_filled_total", 1);
    }
    /// Counts an error.
    pub fn error(&self) {
        bump!(self.errors, "zps_errors_total", 1);
    }
    /// Counts a handler retry.
    pub fn retry(&self) {
        bump!(self.retry_count, "zps_handler_retries_total", 1);
    }
    /// Tracks dead letters written (+) or removed (-).
    pub fn dlq_delta(&self, delta: i64) {
        self.dlq_size.fetch_add(delta, Ordering::Relaxed);
        if delta > 0 {
            ::metrics::counter!("zps_dlq_written_total").increment(delta as u64);
        }
    }
    /// Counts a snapshot read or write.
    pub fn snapshot_used(&self) {
        bump!(self.snapshot_usage, "zps_snapshot_ops_total", 1);
    }
    /// Counts events dropped by flow control.
    pub fn flow_dropped(&self) {
        bump!(self.flow_dropped, "zps_flow_control_dropped_total", 1);
    }
    /// Counts a reported discontinuity.
    pub fn discontinuity(&self) {
        bump!(self.discontinuities, "zps_discontinuities_total", 1);
    }
    /// Counts an ephemeral fan-out.
    pub fn ephemeral_published(&self) {
        bump!(self.ephemeral_published, "zps_ephemeral_published_total", 1);
    }
    /// Records a history read's duration.
    pub fn replay_latency(&self, elapsed: std::time::Duration) {
        self.replay_calls.fetch_add(1, Ordering::Relaxed);
        self.replay_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        ::metrics::histogram!("zps_replay_duration_seconds").record(elapsed.as_secs_f64());
    }
    /// Tracks listeners coming (+1) and going (-1).
    pub fn listeners_delta(&self, delta: i64) {
        let now = self.active_listeners.fetch_add(delta, Ordering::Relaxed) + delta;
        ::metrics::gauge!("zps_active_listeners").set(now as f64);
    }

    /// Copies the counters; `active_rooms` is supplied by the listener registry.
    pub fn snapshot(&self, active_rooms: u64) -> MetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let replay_calls = get(&self.replay_calls);
        let lag_samples = self.lag_samples.get();
        MetricsSnapshot {
            published: self.published.get(),
            received: self.received.get(),
            replayed: self.replayed.get(),
            acked: get(&self.acked),
            duplicates_dropped: get(&self.duplicates_dropped),
            gaps_detected: get(&self.gaps_detected),
            gaps_filled: get(&self.gaps_filled),
            errors: get(&self.errors),
            retry_count: get(&self.retry_count),
            dlq_size: self.dlq_size.load(Ordering::Relaxed).max(0),
            snapshot_usage: get(&self.snapshot_usage),
            flow_control_dropped: get(&self.flow_dropped),
            discontinuities: get(&self.discontinuities),
            replay_latency_ms: if replay_calls == 0 {
                0.0
            } else {
                get(&self.replay_micros) as f64 / replay_calls as f64 / 1000.0
            },
            active_rooms,
            active_listeners: self.active_listeners.load(Ordering::Relaxed),
            average_delivery_lag_ms: if lag_samples == 0 {
                0.0
            } else {
                self.lag_millis_total.get() as f64 / lag_samples as f64
            },
            ephemeral_published: get(&self.ephemeral_published),
        }
    }
}
