//! How a driver tunes the ordering rule (buffer, reorder window, read pacing).

use std::time::Duration;

use crate::backoff::Backoff;

/// How one driver wants the rule tuned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncConfig {
    /// Out-of-order items held per room before falling back to a re-read.
    pub max_buffer: usize,
    /// How long a hole in the live stream may stay open before it is read from
    /// history (zero: at once). Set it to the live path's reordering.
    pub reorder_window: Duration,
    /// The least time between two reads that start anew (continuation pages are
    /// asked at once).
    pub fetch_spacing: Duration,
    /// A read not answered within this is asked again (`None`: answers cannot be
    /// lost, as with a direct call).
    pub fetch_timeout: Option<Duration>,
    /// The wait after a failed read, by failures in a row (its ceiling is used).
    pub retry: Backoff,
    /// Whether history can be read at all; without it holes are given up at once.
    pub history: bool,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            max_buffer: 10_000,
            reorder_window: Duration::from_millis(50),
            fetch_spacing: Duration::ZERO,
            fetch_timeout: None,
            retry: Backoff {
                base: Duration::from_millis(50),
                cap: Duration::from_secs(5),
                max_attempts: None,
            },
            history: true,
        }
    }
}
