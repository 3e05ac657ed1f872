//! Counters on the per-frame path. Every frame would otherwise add to one
//! atomic shared by all cores (a cache-line transfer per frame); these are
//! sharded per thread and handed to the `metrics` facade before each scrape of
//! `/metrics` (see `zps_core::metrics::export_on_scrape`).

use std::sync::atomic::{AtomicU64, Ordering};

use zps_core::metrics::ShardedCounter;

pub(crate) struct Hot {
    pub(crate) frames_sent: ShardedCounter,
    pub(crate) fanouts: ShardedCounter,
    pub(crate) messages_received: ShardedCounter,
}

static HOT: Hot = Hot {
    frames_sent: ShardedCounter::new(),
    fanouts: ShardedCounter::new(),
    messages_received: ShardedCounter::new(),
};

/// What [`export`] already handed over, per series.
static EXPORTED: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

pub(crate) fn counters() -> &'static Hot {
    &HOT
}

impl Hot {
    /// Counts `n` frames written.
    pub(crate) fn sent(&self, n: u64) {
        self.frames_sent.add(n);
        if !zps_core::metrics::deferred() {
            metrics::counter!("zps_gateway_frames_sent_total").increment(n);
        }
    }

    /// Counts one event fanned out by a hub.
    pub(crate) fn fanout(&self) {
        self.fanouts.add(1);
        if !zps_core::metrics::deferred() {
            metrics::counter!("zps_gateway_fanouts_total").increment(1);
        }
    }

    /// Counts one client message.
    pub(crate) fn received(&self) {
        self.messages_received.add(1);
        if !zps_core::metrics::deferred() {
            metrics::counter!("zps_gateway_messages_received_total").increment(1);
        }
    }
}

/// Hands the counters' growth since the last call to the facade.
pub(crate) fn export() {
    if !zps_core::metrics::deferred() {
        return;
    }
    let series = [
        ("zps_gateway_frames_sent_total", HOT.frames_sent.get()),
        ("zps_gateway_fanouts_total", HOT.fanouts.get()),
        ("zps_gateway_messages_received_total", HOT.messages_received.get()),
    ];
    for ((name, now), exported) in series.into_iter().zip(&EXPORTED) {
        let before = exported.swap(now, Ordering::AcqRel);
        metrics::counter!(name).increment(now.saturating_sub(before));
    }
}
