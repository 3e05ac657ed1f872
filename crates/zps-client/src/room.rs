//! One room's delivery state on the client: where the application stands
//! (epoch, whether the start point is known), the protocol's handshake
//! (`subscribed`, resubscribes after a reconnect, wildcard rooms), replay
//! requests on the wire, and the hand-off to the subscription's bounded
//! channel. The ordering itself — the reorder buffer, gap repair, paging,
//! discontinuities — is [`RoomSync`], the rule the engine and the gateway
//! drive too.
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
use zps_model::room_sync::{Delivery, FetchId, Page, RoomSync, SyncConfig};
use zps_model::{Backoff, DiscontinuityReason, Envelope};
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

/// Wait after a refused replay before asking again (at least).
const REPLAY_ERROR_BACKOFF: Duration = Duration::from_secs(1);

impl Tuning {
    /// The ordering rule tuned for a client: a hole waits one throttle for late
    /// frames, reads are spaced by it, and an unanswered one is asked again.
    fn sync(&self) -> SyncConfig {
        let retry = self.throttle.max(REPLAY_ERROR_BACKOFF);
        SyncConfig {
            max_buffer: self.max_buffer,
            reorder_window: self.throttle,
            fetch_spacing: self.throttle,
            fetch_timeout: Some(self.request_timeout),
            retry: Backoff {
                base: retry,
                cap: retry,
                max_attempts: None,
            },
            history: true,
        }
    }
}

/// Delivery state of one room.
pub(crate) struct RoomTrack {
    pub(crate) room: Arc<str>,
    pub(crate) sink: Sink,
    /// Tracked because a `scope:*` subscription saw it (no `subscribed` per room).
    pub(crate) via_wildcard: bool,
    sync: RoomSync<Arc<Envelope>>,
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
    /// Items for the consumer ahead of everything the sync hands out (a refused
    /// resubscribe).
    notices: VecDeque<ClientEvent>,
    /// The `replay_request` in flight: its wire id and the read it is for.
    request: Option<(String, FetchId)>,
    /// When the room last looked at the clock (a due read is due from then).
    checked_at: Instant,
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
        t.sync = RoomSync::new(last, tune.sync());
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
            sync: RoomSync::new(0, tune.sync()),
            anchored: false,
            epoch: None,
            confirmed: via_wildcard,
            sent_position: None,
            verify_reset: false,
            notices: VecDeque::new(),
            request: None,
            checked_at: now,
            blocked: false,
            closed: false,
            last_seen: now,
        }
    }

    /// What to send in a resubscribe: the last delivered sequence and its epoch,
    /// or nothing while the start point is unknown.
    pub(crate) fn resume_position(&self) -> Option<(u64, Option<&str>)> {
        self.anchored
            .then(|| (self.sync.last_delivered(), self.epoch.as_deref()))
    }

    /// Where the application stands.
    pub(crate) fn position(&self) -> RoomPosition {
        RoomPosition {
            sequence: if self.anchored {
                self.sync.last_delivered()
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
        self.request = None;
        self.sync.forget_fetches();
        if self.via_wildcard && self.anchored {
            self.verify_reset = true;
        }
    }

    /// The answer to this connection's `subscribe`.
    pub(crate) fn on_subscribed(&mut self, s: &Subscribed, now: Instant) {
        self.confirmed = true;
        let sent = self.sent_position.take();
        match s.recovered {
            Some(false) => {
                let earliest = s.earliest_sequence.unwrap_or(1);
                let reason = s
                    .reason
                    .as_deref()
                    .map_or(DiscontinuityReason::StreamReset, DiscontinuityReason::parse);
                if !self.anchored {
                    self.sync.restart_after(0);
                }
                self.sync.on_discontinuity(reason, earliest, s.epoch.clone());
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
                    self.sync.restart_after(s.last_sequence.unwrap_or(0));
                    self.anchored = true;
                }
            }
        }
        if s.epoch.is_some() {
            self.epoch = s.epoch.clone();
        }
        self.drain(now);
    }

    /// A live or catch-up `event` frame.
    pub(crate) fn on_event(&mut self, env: Arc<Envelope>, now: Instant) {
        self.last_seen = now;
        let seq = env.sequence;
        if !self.anchored {
            self.sync.restart_after(seq.saturating_sub(1));
            self.anchored = true;
        }
        if self.verify_reset {
            self.verify_reset = false;
            if seq <= self.sync.last_delivered() {
                // A wildcard resubscribe is live-only, so an old sequence means a new history.
                self.sync
                    .on_discontinuity(DiscontinuityReason::StreamReset, 1, None);
                self.epoch = None;
            }
        }
        // The common case goes straight to the consumer when it has room.
        let fast = self.notices.is_empty() && !self.blocked && !self.closed;
        let held = match fast.then(|| reserve(&self.sink.tx, &mut self.blocked, &mut self.closed)) {
            Some(Some(permit)) => {
                if let Some(env) = self.sync.on_live(env)
                    && self.sink.accepts(&env.event_type)
                {
                    permit.send(ClientEvent::Event(env));
                }
                None
            }
            _ => Some(env),
        };
        match held {
            Some(env) => self.sync.hold_live(env),
            None if self.sync.buffered() == 0 && !self.sync.wants_fetch() => return,
            None => {}
        }
        self.drain(now);
    }

    /// A mid-stream `discontinuity`: the history restarted at `earliestSequence`.
    pub(crate) fn on_discontinuity(&mut self, d: &DiscontinuityNotice, now: Instant) {
        if !self.confirmed {
            return;
        }
        if !self.anchored {
            self.sync.restart_after(0);
        }
        self.sync.on_discontinuity(
            DiscontinuityReason::parse(&d.reason),
            d.earliest_sequence,
            Some(d.epoch.clone()),
        );
        self.epoch = Some(d.epoch.clone());
        self.anchored = true;
        self.request = None;
        self.drain(now);
    }

    /// A `replay` page; returns false when it does not answer this room's request.
    pub(crate) fn on_replay(&mut self, page: Replay, now: Instant) -> bool {
        let Some((id, fetch)) = &self.request else {
            return false;
        };
        if page.request_id.as_deref() != Some(id.as_str()) {
            return false;
        }
        let fetch = *fetch;
        self.request = None;
        self.sync.on_page(
            fetch,
            Page {
                items: page.events.into_iter().map(Arc::new).collect(),
                scanned_to: page.scanned_to,
                has_more: page.has_more,
            },
        );
        self.drain(now);
        true
    }

    /// An `error` answering this room's replay request; returns false when it does not.
    pub(crate) fn on_replay_error(&mut self, request_id: &str, now: Instant) -> bool {
        let Some((id, fetch)) = &self.request else {
            return false;
        };
        if id != request_id {
            return false;
        }
        let fetch = *fetch;
        self.request = None;
        self.sync.on_fetch_failed(fetch, now.into_std());
        self.check_clock(now);
        true
    }

    /// The next replay request, when one is due.
    pub(crate) fn poll_replay(
        &mut self,
        now: Instant,
        tune: &Tuning,
        next_id: impl FnOnce() -> String,
    ) -> Option<ReplayRequest> {
        self.check_clock(now);
        if !self.sync.is_fetching() {
            // A request the sync gave up on (timed out) is no longer awaited.
            self.request = None;
        }
        if !self.can_request() {
            return None;
        }
        let fetch = self.sync.poll_fetch(now.into_std())?;
        let id = next_id();
        self.request = Some((id.clone(), fetch.id));
        Some(ReplayRequest {
            room: self.room.to_string(),
            from_sequence: fetch.after,
            to_sequence: fetch.through,
            limit: Some(tune.page_size),
            event_types: None,
            request_id: Some(id),
        })
    }

    /// When [`RoomTrack::poll_replay`] next has something to do (`None`: nothing, or
    /// waiting for the consumer / the `subscribed` answer).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        if !self.sync.is_fetching() && !self.can_request() {
            return None;
        }
        match self.sync.poll_timeout() {
            Some(t) => Some(Instant::from_std(t)),
            None => self.sync.wants_fetch().then_some(self.checked_at),
        }
    }

    /// Whether this room still needs the replay timer.
    pub(crate) fn wants_timer(&self) -> bool {
        self.sync.is_fetching() || self.sync.wants_fetch() || self.sync.poll_timeout().is_some()
    }

    fn can_request(&self) -> bool {
        self.confirmed && self.anchored && !self.blocked && !self.closed
    }

    /// Lets the sync see the time (a hole's reorder window starts, a read times out).
    /// Skipped while the consumer is full: nothing is read then anyway.
    fn check_clock(&mut self, now: Instant) {
        if !self.blocked {
            self.checked_at = now;
            self.sync.handle_timeout(now.into_std());
        }
    }

    /// Hands ready items to the consumer while its channel has room.
    pub(crate) fn drain(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.blocked = false;
        while !self.notices.is_empty() {
            let Some(permit) = reserve(&self.sink.tx, &mut self.blocked, &mut self.closed) else {
                return;
            };
            if let Some(n) = self.notices.pop_front() {
                permit.send(n);
            }
        }
        while self.sync.has_deliverable() {
            let Some(permit) = reserve(&self.sink.tx, &mut self.blocked, &mut self.closed) else {
                return;
            };
            match self.sync.poll_deliver() {
                Some(Delivery::Event(env, _)) => {
                    if self.sink.accepts(&env.event_type) {
                        permit.send(ClientEvent::Event(env));
                    }
                }
                Some(Delivery::Notice(n)) => permit.send(ClientEvent::Discontinuity {
                    room: self.room.to_string(),
                    reason: n.reason,
                    epoch: n.epoch,
                    earliest_sequence: n.earliest_sequence,
                    last_delivered: n.last_delivered,
                }),
                None => break,
            }
        }
        self.check_clock(now);
    }

    /// Queues an item ahead of everything not yet delivered (a refused resubscribe).
    pub(crate) fn push_notice(&mut self, item: ClientEvent, now: Instant) {
        self.notices.push_back(item);
        self.drain(now);
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
