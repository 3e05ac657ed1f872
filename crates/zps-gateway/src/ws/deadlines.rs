//! A connection's deadlines — heartbeat, init timeout, token expiry, presence
//! refresh — driven by one timer. Four timers per connection would cost an
//! idle connection four timer entries and every loop turn four polls; here the
//! connection sleeps until the earliest deadline and asks which ones are due.
//! No clock is read inside: times are passed in.

use tokio::time::Instant;

/// What fell due.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Due {
    pub(super) init: bool,
    pub(super) expiry: bool,
    pub(super) heartbeat: bool,
    pub(super) presence: bool,
}

/// The deadlines of one connection.
#[derive(Debug, Clone)]
pub(super) struct Deadlines {
    /// Next ping (and check that the peer was heard from).
    pub(super) heartbeat: Instant,
    /// Close unless `init` arrived by then.
    pub(super) init: Option<Instant>,
    /// Token notice or expiry.
    pub(super) expiry: Option<Instant>,
    /// Next presence refresh, while the connection is present somewhere.
    pub(super) presence: Option<Instant>,
}

impl Deadlines {
    /// The earliest deadline.
    pub(super) fn next(&self) -> Instant {
        [self.init, self.expiry, self.presence]
            .into_iter()
            .flatten()
            .fold(self.heartbeat, Instant::min)
    }

    /// Which deadlines are due at `now`; due ones are cleared (heartbeat and
    /// presence are re-armed by the caller once handled).
    pub(super) fn take_due(&mut self, now: Instant) -> Due {
        let due = |d: &mut Option<Instant>| {
            if d.is_some_and(|d| d <= now) {
                *d = None;
                true
            } else {
                false
            }
        };
        Due {
            init: due(&mut self.init),
            expiry: due(&mut self.expiry),
            heartbeat: self.heartbeat <= now,
            presence: due(&mut self.presence),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_earliest_deadline_wins_and_only_due_ones_fire() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut d = Deadlines {
            heartbeat: t0 + s(30),
            init: Some(t0 + s(10)),
            expiry: None,
            presence: Some(t0 + s(20)),
        };
        assert_eq!(d.next(), t0 + s(10));
        assert_eq!(d.take_due(t0 + s(5)), Due::default());
        let due = d.take_due(t0 + s(20));
        assert_eq!(
            due,
            Due {
                init: true,
                presence: true,
                ..Due::default()
            }
        );
        assert_eq!((d.init, d.presence), (None, None));
        assert_eq!(d.next(), t0 + s(30));
        d.expiry = Some(t0 + s(25));
        assert_eq!(d.next(), t0 + s(25));
        assert!(d.take_due(t0 + s(31)).heartbeat);
    }
}
