//! Engine counters: a cheap in-process snapshot (`Realtime::metrics()`) and the
//! same figures through the `metrics` facade, so any exporter (the gateway's
//! Prometheus endpoint) sees them as `zps_*` series with bounded labels.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::Serialize;

/// Counters shared by the engine and its subscriptions.
#[derive(Debug, Default)]
pub struct Metrics {
    published: AtomicU64,
    received: AtomicU64,
    replayed: AtomicU64,
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
    lag_samples: AtomicU64,
    lag_millis_total: AtomicU64,
    active_listeners: AtomicI64,
    ephemeral_published: AtomicU64,
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
        bump!(self.published, "zps_events_published_total", 1);
    }
    /// Counts a delivered event, with its publish→deliver lag when it came live.
    pub fn received(&self, live_lag_ms: Option<u64>) {
        bump!(self.received, "zps_events_delivered_total", 1);
        if let Some(lag) = live_lag_ms {
            self.lag_samples.fetch_add(1, Ordering::Relaxed);
            self.lag_millis_total.fetch_add(lag, Ordering::Relaxed);
            ::metrics::histogram!("zps_delivery_lag_seconds").record(lag as f64 / 1000.0);
        }
    }
    /// Counts events read from history.
    pub fn replayed(&self, n: u64) {
        bump!(self.replayed, "zps_events_replayed_total", n);
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
        let lag_samples = get(&self.lag_samples);
        MetricsSnapshot {
            published: get(&self.published),
            received: get(&self.received),
            replayed: get(&self.replayed),
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
                get(&self.lag_millis_total) as f64 / lag_samples as f64
            },
            ephemeral_published: get(&self.ephemeral_published),
        }
    }
}
