//! Options for subscriptions, catch-up, retries and flow control.

use std::time::Duration;

use crate::room::{Room, RoomPattern};
use crate::transport::MAX_REPLAY_LIMIT;

/// Default catch-up page size.
pub const DEFAULT_BATCH_SIZE: usize = 500;

/// Where a subscription starts when neither `from_sequence` nor an ack cursor is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultStart {
    /// From sequence 0: the whole retained history first (backend default).
    #[default]
    Beginning,
    /// Live only (the gateway's default for browsers).
    Live,
}

/// Catch-up settings of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Live events only, whatever the cursor says.
    Disabled,
    /// Read history page by page before (and while) going live.
    Enabled {
        /// Page size (clamped to 1..=10 000).
        batch_size: usize,
        /// Stop the initial catch-up after this many pages and continue live.
        max_batches: Option<u32>,
    },
}

impl Default for CatchUp {
    fn default() -> Self {
        Self::Enabled {
            batch_size: DEFAULT_BATCH_SIZE,
            max_batches: None,
        }
    }
}

/// How long to wait between handler attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackoffStrategy {
    /// `base` every time.
    Fixed,
    /// `base × attempt`.
    Linear,
    /// `base × 2^(attempt-1)`.
    #[default]
    Exponential,
}

/// Retry policy of a handler subscription; after the last failure the event goes to the DLQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total handler runs per event (1 = no retry).
    pub attempts: u32,
    /// Delay growth.
    pub strategy: BackoffStrategy,
    /// First delay.
    pub base_delay: Duration,
    /// Upper bound of any delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 1,
            strategy: BackoffStrategy::Exponential,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`, after `attempt` failures (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let n = attempt.max(1);
        let d = match self.strategy {
            BackoffStrategy::Fixed => self.base_delay,
            BackoffStrategy::Linear => self.base_delay.saturating_mul(n),
            BackoffStrategy::Exponential => self.base_delay.saturating_mul(1u32 << (n - 1).min(20)),
        };
        d.min(self.max_delay)
    }
}

/// What a handler subscription does while `max_in_flight` handlers are busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlowStrategy {
    /// Stop reading: events wait in the transport/history and nothing is dropped.
    #[default]
    Pause,
    /// Drop events that arrive while saturated (counted in metrics).
    Drop,
    /// Queue up to `max_buffer_size` events, drop beyond that (counted).
    Buffer,
}

/// Flow control of a handler subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowControl {
    /// Handlers running at once (1 = strictly sequential, in order).
    pub max_in_flight: usize,
    /// Behaviour while saturated.
    pub strategy: FlowStrategy,
    /// Queue bound for [`FlowStrategy::Buffer`].
    pub max_buffer_size: usize,
}

impl Default for FlowControl {
    fn default() -> Self {
        Self {
            max_in_flight: 1,
            strategy: FlowStrategy::Pause,
            max_buffer_size: 1_000,
        }
    }
}

/// What to subscribe to and how.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Rooms and `scope:*` patterns.
    pub rooms: Vec<RoomPattern>,
    /// Durable consumer id: its ack cursor is the default start.
    pub subscriber_id: Option<String>,
    /// Start after this sequence (overrides the cursor) for every exact room.
    pub from_sequence: Option<u64>,
    /// The epoch the caller's position belongs to (resume check).
    pub epoch: Option<String>,
    /// Deliver only these event types.
    pub event_types: Option<Vec<String>>,
    /// History reading.
    pub catch_up: CatchUp,
    /// Start when there is neither `from_sequence` nor a cursor.
    pub default_start: DefaultStart,
    /// Handler retries (handler subscriptions only).
    pub retry: RetryPolicy,
    /// Handler concurrency (handler subscriptions only).
    pub flow_control: FlowControl,
    /// Ack each event after its handler succeeded or it was dead-lettered
    /// (handler subscriptions with a `subscriber_id` only).
    pub auto_ack: bool,
    /// Do not count this subscription in listener metrics (internal fan-out hubs).
    pub uncounted: bool,
}

impl SubscribeOptions {
    /// One room or pattern.
    pub fn room(pattern: impl Into<RoomPattern>) -> Self {
        Self {
            rooms: vec![pattern.into()],
            ..Self::default()
        }
    }

    /// Several rooms or patterns.
    pub fn rooms<I: IntoIterator<Item = RoomPattern>>(patterns: I) -> Self {
        Self {
            rooms: patterns.into_iter().collect(),
            ..Self::default()
        }
    }

    /// Sets the durable consumer id.
    pub fn subscriber(mut self, id: impl Into<String>) -> Self {
        self.subscriber_id = Some(id.into());
        self
    }

    /// Starts after `sequence`.
    pub fn from_sequence(mut self, sequence: u64) -> Self {
        self.from_sequence = Some(sequence);
        self
    }

    /// States the epoch of `from_sequence`.
    pub fn epoch(mut self, epoch: impl Into<String>) -> Self {
        self.epoch = Some(epoch.into());
        self
    }

    /// Filters event types.
    pub fn event_types<I: IntoIterator<Item = S>, S: Into<String>>(mut self, types: I) -> Self {
        self.event_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// Live events only.
    pub fn live_only(mut self) -> Self {
        self.catch_up = CatchUp::Disabled;
        self
    }

    /// Sets the catch-up page size.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        let max_batches = match self.catch_up {
            CatchUp::Enabled { max_batches, .. } => max_batches,
            CatchUp::Disabled => None,
        };
        self.catch_up = CatchUp::Enabled {
            batch_size,
            max_batches,
        };
        self
    }

    /// Caps the initial catch-up.
    pub fn max_batches(mut self, max: u32) -> Self {
        let batch_size = match self.catch_up {
            CatchUp::Enabled { batch_size, .. } => batch_size,
            CatchUp::Disabled => DEFAULT_BATCH_SIZE,
        };
        self.catch_up = CatchUp::Enabled {
            batch_size,
            max_batches: Some(max),
        };
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets flow control.
    pub fn flow_control(mut self, flow: FlowControl) -> Self {
        self.flow_control = flow;
        self
    }

    /// Acks automatically after each handled event.
    pub fn auto_ack(mut self) -> Self {
        self.auto_ack = true;
        self
    }
}

/// Options of a paged history drain (`catch_up` / `stream_replay`).
#[derive(Debug, Clone)]
pub struct CatchUpOptions {
    /// The room to drain.
    pub room: Room,
    /// Uses this subscriber's cursor when `from_sequence` is absent.
    pub subscriber_id: Option<String>,
    /// Start after this sequence.
    pub from_sequence: Option<u64>,
    /// Stop after this sequence.
    pub to_sequence: Option<u64>,
    /// Only these event types.
    pub event_types: Option<Vec<String>>,
    /// Page size (default 500, capped at 10 000).
    pub batch_size: usize,
    /// Stop after this many pages.
    pub max_batches: Option<u32>,
}

impl CatchUpOptions {
    /// Drains `room` from the beginning (or the subscriber's cursor).
    pub fn new(room: Room) -> Self {
        Self {
            room,
            subscriber_id: None,
            from_sequence: None,
            to_sequence: None,
            event_types: None,
            batch_size: DEFAULT_BATCH_SIZE,
            max_batches: None,
        }
    }

    /// Starts after `sequence`.
    pub fn from_sequence(mut self, sequence: u64) -> Self {
        self.from_sequence = Some(sequence);
        self
    }

    /// Stops after `sequence`.
    pub fn to_sequence(mut self, sequence: u64) -> Self {
        self.to_sequence = Some(sequence);
        self
    }

    /// Uses this subscriber's cursor.
    pub fn subscriber(mut self, id: impl Into<String>) -> Self {
        self.subscriber_id = Some(id.into());
        self
    }

    /// Filters event types.
    pub fn event_types<I: IntoIterator<Item = S>, S: Into<String>>(mut self, types: I) -> Self {
        self.event_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the page size.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// Caps the number of pages.
    pub fn max_batches(mut self, n: u32) -> Self {
        self.max_batches = Some(n);
        self
    }
}

/// Clamps a batch size to `1..=10 000`.
pub(crate) fn clamp_batch(n: usize) -> usize {
    n.clamp(1, MAX_REPLAY_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_delays() {
        let base = Duration::from_millis(100);
        let p = |strategy| RetryPolicy {
            attempts: 5,
            strategy,
            base_delay: base,
            max_delay: Duration::from_millis(350),
        };
        let fixed: Vec<_> = (1..=4)
            .map(|a| p(BackoffStrategy::Fixed).delay_after(a).as_millis())
            .collect();
        let linear: Vec<_> = (1..=4)
            .map(|a| p(BackoffStrategy::Linear).delay_after(a).as_millis())
            .collect();
        let exp: Vec<_> = (1..=4)
            .map(|a| p(BackoffStrategy::Exponential).delay_after(a).as_millis())
            .collect();
        assert_eq!(fixed, vec![100, 100, 100, 100]);
        assert_eq!(linear, vec![100, 200, 300, 350]);
        assert_eq!(exp, vec![100, 200, 350, 350]);
        // Huge attempt numbers never overflow.
        assert_eq!(
            p(BackoffStrategy::Exponential).delay_after(u32::MAX).as_millis(),
            350
        );
    }
}
