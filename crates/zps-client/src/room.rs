//! One room's delivery state: where the application stands (last delivered
//! sequence and epoch), the out-of-order buffer ([`SequenceTracker`]), gap
//! repair by `replay_request`, discontinuities, and the hand-off to the
//! subscription's bounded channel.
//!
//! No I/O and no clock of its own: the connection task feeds it frames and
//! the current time and sends the replay requests it asks for. Delivery never
//! waits: when the consumer's channel is full the room is "blocked", events
//! stay in the bounded buffer, and whatever overflows is re-read from history
//! once the consumer catches up.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
use zps_core::sequence::{Offer, SequenceTracker};
use zps_core::{DiscontinuityReason, Envelope};
use zps_protocol::{DiscontinuityNotice, Replay, ReplayRequest, Subscribed};

use crate::options::StartAt;
use crate::types::{ClientEvent, RoomPosition};

/// Identifies one subscription (one consumer channel).
pub(crate) type SinkId = u64;

/// The consumer side of a subscription, as seen by the rooms it covers.
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    pub(crate) id: SinkId,
    pub(crate) tx: mpsc::Sender<ClientEvent>,
    pub(crate) types: Option<Arc<[String]>>,
}

impl Sink {
    fn accepts(&self, event_type: &str) -> bool {
        self.types
            .as_ref()
            .is_none_or(|t| t.iter().any(|x| x == event_type))
    }
}

/// The settings rooms need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    pub(crate) throttle: Duration,
    pub(crate) page_size: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) max_buffer: usize,
}

/// Wait after a refused replay before asking again.
const REPLAY_ERROR_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Outstanding {
    id: String,
    to: Option<u64>,
    sent: Instant,
}

/// Delivery state of one room.
pub(crate) struct RoomTrack {
    pub(crate) room: Arc<str>,
    pub(crate) sink: Sink,
    /// Tracked because a `scope:*` subscription saw it (no `subscribed` per room).
    pub(crate) via_wildcard: bool,
    tracker: SequenceTracker<Arc<Envelope>>,
    /// Whether the start point is known (false: a cursor resume or a wildcard room
    /// that has not shown an event yet; the first event anchors it).
    anchored: bool,
    epoch: Option<String>,
    /// `subscribed` arrived on the current connection (events before it are stale).
    pub(crate) confirmed: bool,
    /// The position sent in the pending `subscribe` of this connection.
    pub(crate) sent_position: Option<u64>,
    /// Wildcard rooms after a reconnect: a first event at or below the last delivered
    /// sequence means the history was reset.
    verify_reset: bool,
    notices: VecDeque<ClientEvent>,
    /// Behind the server by an unknown amount: page from the last delivered event until
    /// a page says nothing more exists.
    catch_up: bool,
    /// Events were dropped (buffer full) since the last request was sent.
    overflowed: bool,
    outstanding: Option<Outstanding>,
    due: Option<Instant>,
    last_request: Option<Instant>,
    /// The consumer's channel is full; delivery resumes when it takes something.
    pub(crate) blocked: bool,
    /// The consumer is gone.
    pub(crate) closed: bool,
    pub(crate) last_seen: Instant,
}

impl RoomTrack {
    /// An exact-room subscription starting at `start`.
    pub(crate) fn exact(room: Arc<str>, sink: Sink, start: &StartAt, tune: &Tuning, now: Instant) -> Self {
        let (anchored, last, epoch) = match start {
            StartAt::Default => (false, 0, None),
            StartAt::After { sequence, epoch } => (true, *sequence, epoch.clone()),
        };
        let mut t = Self::new(room, sink, false, tune, now);
        t.tracker = SequenceTracker::new(last, tune.max_buffer);
        t.anchored = anchored;
        t.epoch = epoch;
        t
    }

    /// A room first seen through a `scope:*` subscription: tracking starts at this event.
    pub(crate) fn wildcard(room: Arc<str>, sink: Sink, tune: &Tuning, now: Instant) -> Self {
        Self::new(room, sink, true, tune, now)
    }

    fn new(room: Arc<str>, sink: Sink, via_wildcard: bool, tune: &Tuning, now: Instant) -> Self {
        Self {
            room,
            sink,
            via_wildcard,
            tracker: SequenceTracker::new(0, tune.max_buffer),
            anchored: false,
            epoch: None,
            confirmed: via_wildcard,
            sent_position: None,
            verify_reset: false,
            notices: VecDeque::new(),
            catch_up: false,
            overflowed: false,
            outstanding: None,
            due: None,
            last_request: None,
            blocked: false,
            closed: false,
            last_seen: now,
        }
    }

    /// What to send in a resubscribe: the last delivered sequence and its epoch,
    /// or nothing while the start point is unknown.
    pub(crate) fn resume_position(&self) -> Option<(u64, Option<&str>)> {
        self.anchored
            .then(|| (self.tracker.last_delivered(), self.epoch.as_deref()))
    }

    /// Where the application stands.
    pub(crate) fn position(&self) -> RoomPosition {
        RoomPosition {
            sequence: if self.anchored {
                self.tracker.last_delivered()
            } else {
                0
            },
            epoch: self.epoch.clone(),
        }
    }

    /// The connection dropped: requests in flight are lost; the resubscribe's catch-up
    /// covers everything after the last delivered event. Buffered events stay (same epoch).
    pub(crate) fn on_disconnect(&mut self) {
        self.confirmed = self.via_wildcard;
        self.sent_position = None;
        self.outstanding = None;
        self.due = None;
        self.catch_up = false;
        self.overflowed = false;
        if self.via_wildcard && self.anchored {
            self.verify_reset = true;
        }
    }

    /// The answer to this connection's `subscribe`.
    pub(crate) fn on_subscribed(&mut self, s: &Subscribed, now: Instant, tune: &Tuning) {
        self.confirmed = true;
        let sent = self.sent_position.take();
        match s.recovered {
            Some(false) => {
                let earliest = s.earliest_sequence.unwrap_or(1).max(1);
                self.push_discontinuity(parse_reason(s.reason.as_deref()), s.epoch.clone(), earliest);
                self.tracker.reset(earliest - 1);
                self.anchored = true;
            }
            Some(true) => {
                if sent.is_none() {
                    // Resumed from this subscriber's stored cursor, whose value the answer does
                    // not carry: the first event (the gateway sends history in order) anchors.
                    self.anchored = false;
                }
            }
            None => {
                if sent.is_none() {
                    // Live only: the room's newest sequence is the starting point, so a later
                    // resume works even if nothing was received yet.
                    self.tracker.reset(s.last_sequence.unwrap_or(0));
                    self.anchored = true;
                }
            }
        }
        if s.epoch.is_some() {
            self.epoch = s.epoch.clone();
        }
        self.drain(now, tune);
    }

    /// A live or catch-up `event` frame.
    pub(crate) fn on_event(&mut self, env: Arc<Envelope>, now: Instant, tune: &Tuning) {
        self.last_seen = now;
        let seq = env.sequence;
        if !self.anchored {
            self.tracker.reset(seq.saturating_sub(1));
            self.anchored = true;
        }
        if self.verify_reset {
            self.verify_reset = false;
            if seq <= self.tracker.last_delivered() {
                // A wildcard resubscribe is live-only, so an old sequence means a new history.
                self.push_discontinuity(DiscontinuityReason::StreamReset, None, 1);
                self.tracker.reset(0);
                self.epoch = None;
            }
        }
        match self.tracker.offer(env) {
            Offer::Accepted | Offer::Duplicate => {}
            Offer::Gap { .. } => self.schedule(now + tune.throttle, tune),
            Offer::Overflow => {
                self.overflowed = true;
                self.catch_up = true;
                self.schedule(now, tune);
            }
        }
        self.drain(now, tune);
    }

    /// A mid-stream `discontinuity`: the history restarted at `earliestSequence`.
    pub(crate) fn on_discontinuity(&mut self, d: &DiscontinuityNotice, now: Instant, tune: &Tuning) {
        if !self.confirmed {
            return;
        }
        self.push_discontinuity(
            parse_reason(Some(&d.reason)),
            Some(d.epoch.clone()),
            d.earliest_sequence,
        );
        self.tracker.reset(d.earliest_sequence.saturating_sub(1));
        self.epoch = Some(d.epoch.clone());
        self.anchored = true;
        self.outstanding = None;
        self.due = None;
        self.catch_up = false;
        self.overflowed = false;
        self.drain(now, tune);
    }

    /// A `replay` page; returns false when it does not answer this room's request.
    pub(crate) fn on_replay(&mut self, page: Replay, now: Instant, tune: &Tuning) -> bool {
        let Some(o) = &self.outstanding else {
            return false;
        };
        if page.request_id.as_deref() != Some(o.id.as_str()) {
            return false;
        }
        let asked_to = o.to;
        self.outstanding = None;
        let mut overflow_at: Option<u64> = None;
        for e in page.events {
            let seq = e.sequence;
            if seq <= self.tracker.last_delivered() {
                continue;
            }
            if self.tracker.offer(Arc::new(e)) == Offer::Overflow {
                overflow_at.get_or_insert(seq);
                self.overflowed = true;
            }
            self.drain(now, tune);
            if self.closed {
                return true;
            }
        }
        // Every sequence up to `scannedTo` is final: in the page, expired, or never existing.
        let settled = overflow_at.map_or(page.scanned_to, |s| page.scanned_to.min(s - 1));
        self.settle(settled, now, tune);
        if page.has_more {
            if asked_to.is_none() {
                self.catch_up = true;
            }
            self.due = Some(now);
        } else if self.overflowed {
            self.catch_up = true;
            self.schedule(now, tune);
        } else {
            self.catch_up = false;
            if self.tracker.missing().is_some() {
                self.schedule(now + tune.throttle, tune);
            }
        }
        true
    }

    /// An `error` answering this room's replay request; returns false when it does not.
    pub(crate) fn on_replay_error(&mut self, request_id: &str, now: Instant, tune: &Tuning) -> bool {
        if self.outstanding.as_ref().is_none_or(|o| o.id != request_id) {
            return false;
        }
        self.outstanding = None;
        self.due = Some(now + tune.throttle.max(REPLAY_ERROR_BACKOFF));
        true
    }

    /// The next replay request, when one is due.
    pub(crate) fn poll_replay(
        &mut self,
        now: Instant,
        tune: &Tuning,
        next_id: impl FnOnce() -> String,
    ) -> Option<ReplayRequest> {
        if let Some(o) = &self.outstanding {
            if now < o.sent + tune.request_timeout {
                return None;
            }
            // No answer (dropped by a rate limit, say): ask again.
            self.outstanding = None;
            self.catch_up = true;
            self.due = Some(now);
        }
        let due = self.due?;
        if now < due || !self.can_request() {
            return None;
        }
        self.due = None;
        let to = if self.catch_up || self.overflowed {
            None
        } else {
            Some(self.tracker.missing()?.1)
        };
        let id = next_id();
        self.outstanding = Some(Outstanding {
            id: id.clone(),
            to,
            sent: now,
        });
        self.last_request = Some(now);
        self.overflowed = false;
        Some(ReplayRequest {
            room: self.room.to_string(),
            from_sequence: self.tracker.last_delivered(),
            to_sequence: to,
            limit: Some(tune.page_size),
            event_types: None,
            request_id: Some(id),
        })
    }

    /// When [`RoomTrack::poll_replay`] next has something to do (`None`: nothing, or
    /// waiting for the consumer / the `subscribed` answer).
    pub(crate) fn deadline(&self, tune: &Tuning) -> Option<Instant> {
        if let Some(o) = &self.outstanding {
            return Some(o.sent + tune.request_timeout);
        }
        if !self.can_request() {
            return None;
        }
        self.due
    }

    /// Whether this room still needs the replay timer.
    pub(crate) fn wants_timer(&self) -> bool {
        self.outstanding.is_some() || self.due.is_some()
    }

    fn can_request(&self) -> bool {
        self.confirmed && self.anchored && !self.blocked && !self.closed
    }

    /// Hands ready items to the consumer while its channel has room.
    pub(crate) fn drain(&mut self, now: Instant, tune: &Tuning) {
        if self.closed {
            return;
        }
        let was_blocked = self.blocked;
        self.blocked = false;
        while !self.notices.is_empty() {
            let Some(permit) = reserve(&self.sink.tx, &mut self.blocked, &mut self.closed) else {
                return;
            };
            if let Some(n) = self.notices.pop_front() {
                permit.send(n);
            }
        }
        while self.tracker.pending_len() > 0 && self.tracker.missing().is_none() {
            let Some(permit) = reserve(&self.sink.tx, &mut self.blocked, &mut self.closed) else {
                return;
            };
            let Some(env) = self.tracker.pop_ready() else {
                break;
            };
            if self.sink.accepts(&env.event_type) {
                permit.send(ClientEvent::Event(env));
            }
        }
        if was_blocked && (self.catch_up || self.overflowed || self.tracker.missing().is_some()) {
            self.schedule(now, tune);
        }
    }

    /// Queues an item ahead of everything not yet delivered (a refused resubscribe).
    pub(crate) fn push_notice(&mut self, item: ClientEvent, now: Instant, tune: &Tuning) {
        self.notices.push_back(item);
        self.drain(now, tune);
    }

    fn push_discontinuity(&mut self, reason: DiscontinuityReason, epoch: Option<String>, earliest: u64) {
        let last_delivered = if self.anchored {
            self.tracker.last_delivered()
        } else {
            0
        };
        self.notices.push_back(ClientEvent::Discontinuity {
            room: self.room.to_string(),
            reason,
            epoch,
            earliest_sequence: earliest,
            last_delivered,
        });
    }

    /// Skips holes up to `limit` that history says will never be filled (expired events),
    /// delivering what is buffered around them.
    fn settle(&mut self, limit: u64, now: Instant, tune: &Tuning) {
        loop {
            if self.closed {
                return;
            }
            if self.tracker.pending_len() == 0 {
                if self.tracker.next_expected() <= limit {
                    self.tracker.skip_through(limit);
                }
                return;
            }
            if self.blocked {
                return;
            }
            match self.tracker.missing() {
                Some((from, to)) if from <= limit => {
                    self.tracker.skip_through(to.min(limit));
                    self.drain(now, tune);
                }
                _ => return,
            }
        }
    }

    /// Asks for a replay no earlier than `earliest` and no sooner than `throttle` after the
    /// previous request.
    fn schedule(&mut self, earliest: Instant, tune: &Tuning) {
        if self.outstanding.is_some() {
            // The answer re-evaluates what is still missing.
            return;
        }
        let spaced = self
            .last_request
            .map_or(earliest, |t| earliest.max(t + tune.throttle));
        self.due = Some(self.due.map_or(spaced, |d| d.min(spaced)));
    }
}

fn parse_reason(reason: Option<&str>) -> DiscontinuityReason {
    match reason {
        Some("position_expired") => DiscontinuityReason::PositionExpired,
        // Unknown reasons are treated as the stronger statement.
        _ => DiscontinuityReason::StreamReset,
    }
}

/// A slot in the consumer's channel, or `None` with the reason recorded: a full
/// channel marks the room blocked (resumed when the consumer reads), a closed
/// one marks it closed.
fn reserve<'a>(
    tx: &'a mpsc::Sender<ClientEvent>,
    blocked: &mut bool,
    closed: &mut bool,
) -> Option<mpsc::Permit<'a, ClientEvent>> {
    match tx.try_reserve() {
        Ok(permit) => Some(permit),
        Err(TrySendError::Full(())) => {
            *blocked = true;
            None
        }
        Err(TrySendError::Closed(())) => {
            *closed = true;
            None
        }
    }
}

#[cfg(test)]
mod tests;
