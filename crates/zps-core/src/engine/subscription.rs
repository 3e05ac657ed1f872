//! Ordered, gap-free subscriptions over any transport.
//!
//! The live stream is opened *first*; history is then read page by page from
//! each room's start position while live events queue up behind it. Both feed
//! one [`SequenceTracker`] per room, so the switch from history to live has no
//! gap and no duplicate. The same mechanism repairs later holes: a live event
//! that skips ahead parks behind the hole, and after the transport's reorder
//! window the missing range is read from history. Lost live messages
//! (`Lagged`) trigger the same re-read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use tokio::time::Instant;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::room::{Room, RoomPattern};
use crate::sequence::{Offer, SequenceTracker};
use crate::time::Timestamp;
use crate::transport::{LiveSignal, LiveStream, ReplayQuery, RoomInfo, Transport};

use super::options::{CatchUp, DefaultStart, SubscribeOptions, clamp_batch};

/// Out-of-order events buffered per room before the engine falls back to history.
pub(crate) const MAX_PENDING_PER_ROOM: usize = 10_000;
/// History reads that fail are retried after these delays (the doubling ceiling).
const READ_RETRY: crate::Backoff = crate::Backoff {
    base: Duration::from_millis(50),
    cap: Duration::from_secs(5),
    max_attempts: None,
};

/// Why a room's history is not continuous with the caller's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscontinuityReason {
    /// The history was lost or reset (new epoch); old sequences mean nothing now.
    StreamReset,
    /// The position is older than the oldest retained event (expired, pruned, trimmed).
    PositionExpired,
}

impl DiscontinuityReason {
    /// The wire spelling (`stream_reset`, `position_expired`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StreamReset => "stream_reset",
            Self::PositionExpired => "position_expired",
        }
    }
}

/// An explicit "you missed something that cannot be replayed" notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Discontinuity {
    /// The room concerned.
    pub room: Room,
    /// Why.
    pub reason: DiscontinuityReason,
    /// The room's current epoch.
    pub epoch: String,
    /// The oldest sequence still available; delivery resumes from it.
    pub earliest_sequence: u64,
    /// The position the caller asked to resume from.
    pub requested_from: u64,
}

/// Where a subscription started in one exact room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomStart {
    /// The room.
    pub room: Room,
    /// Its epoch at subscribe time.
    pub epoch: String,
    /// Its newest sequence at subscribe time.
    pub last_sequence: u64,
    /// Delivery starts after this sequence.
    pub start_after: u64,
    /// For resumes (a `from_sequence` or a cursor): whether the position was intact.
    pub recovered: Option<bool>,
    /// When not recovered: why.
    pub reason: Option<DiscontinuityReason>,
}

/// What a subscription yields.
#[derive(Debug, Clone)]
pub enum SubscriptionItem {
    /// The next event of a room, in order.
    Event(Arc<Envelope>),
    /// Events before `earliest_sequence` cannot be delivered (see [`Discontinuity`]).
    Discontinuity(Discontinuity),
}

struct Ready {
    item: SubscriptionItem,
    from_history: bool,
}

struct RoomState {
    tracker: SequenceTracker<Arc<Envelope>>,
    catching_up: bool,
    gap_deadline: Option<Instant>,
    gap_open: bool,
    batches_left: Option<u32>,
    stalled_reads: u8,
}

impl RoomState {
    fn new(last_delivered: u64) -> Self {
        Self {
            tracker: SequenceTracker::new(last_delivered, MAX_PENDING_PER_ROOM),
            catching_up: false,
            gap_deadline: None,
            gap_open: false,
            batches_left: None,
            stalled_reads: 0,
        }
    }
}

/// Resolves where a resume from `requested_from` (in `known_epoch`, if the caller
/// knows it) may start given the room's state: the start position and, when the
/// position did not survive, why. Shared by the engine and the gateway.
pub fn check_continuity(
    requested_from: u64,
    known_epoch: Option<&str>,
    info: &RoomInfo,
) -> (u64, Option<DiscontinuityReason>) {
    let restart = info.earliest_sequence.saturating_sub(1);
    if known_epoch.is_some_and(|e| e != info.epoch) || requested_from > info.last_sequence {
        return (restart, Some(DiscontinuityReason::StreamReset));
    }
    if requested_from < restart {
        return (restart, Some(DiscontinuityReason::PositionExpired));
    }
    (requested_from, None)
}

/// The state machine behind [`Subscription`].
pub(crate) struct Driver {
    transport: Arc<dyn Transport>,
    metrics: Arc<Metrics>,
    live: Option<LiveStream>,
    rooms: HashMap<Room, RoomState>,
    wildcards: Vec<RoomPattern>,
    types: Option<Arc<[String]>>,
    batch_size: usize,
    reorder_window: Duration,
    /// False for fan-out-only providers: holes cannot be read back, only reported.
    history: bool,
    ready: VecDeque<Ready>,
    catchup: VecDeque<Room>,
    gap_rooms: HashSet<Room>,
    /// History reads failed in a row.
    read_failures: u32,
}

impl Driver {
    /// Opens the live stream, resolves every room's start, and queues catch-up.
    pub(crate) async fn start(
        transport: Arc<dyn Transport>,
        metrics: Arc<Metrics>,
        opts: &SubscribeOptions,
    ) -> Result<(Self, Vec<RoomStart>)> {
        let live = transport.subscribe(&opts.rooms).await?;
        let (batch_size, max_batches, catch_up) = match opts.catch_up {
            CatchUp::Enabled {
                batch_size,
                max_batches,
            } => (clamp_batch(batch_size), max_batches, true),
            // Live-only subscriptions still read history to repair gaps.
            CatchUp::Disabled => (super::options::DEFAULT_BATCH_SIZE, None, false),
        };
        let capabilities = transport.capabilities();
        // Without history, a subscription is live only: positions are still checked
        // (and reported), but nothing can be read back.
        let mut driver = Self {
            reorder_window: capabilities.reorder_window,
            history: capabilities.history,
            transport,
            metrics,
            live: Some(live),
            rooms: HashMap::new(),
            wildcards: opts.rooms.iter().filter(|p| p.is_wildcard()).cloned().collect(),
            types: opts.event_types.clone().map(Arc::from),
            batch_size,
            ready: VecDeque::new(),
            catchup: VecDeque::new(),
            gap_rooms: HashSet::new(),
            read_failures: 0,
        };
        let mut starts = Vec::new();
        for room in opts.rooms.iter().filter_map(RoomPattern::as_room) {
            if driver.rooms.contains_key(room) {
                continue;
            }
            let mut info = driver.transport.room_info(room).await?;
            if !driver.history {
                // Nothing before the head can be delivered by a provider without history.
                info.earliest_sequence = info.last_sequence + 1;
            }
            let cursor = match (&opts.from_sequence, &opts.subscriber_id) {
                (Some(from), _) => Some(*from),
                (None, Some(id)) => driver.transport.cursor(room, id).await?,
                (None, None) => None,
            };
            let mut start = RoomStart {
                room: room.clone(),
                epoch: info.epoch.clone(),
                last_sequence: info.last_sequence,
                start_after: 0,
                recovered: None,
                reason: None,
            };
            // The caller wants history: check the requested position (and report it)
            // even where the provider cannot read history back.
            let wants_history = catch_up
                && match cursor {
                    Some(from) => {
                        let (after, reason) = check_continuity(from, opts.epoch.as_deref(), &info);
                        start.start_after = after;
                        start.recovered = Some(reason.is_none());
                        start.reason = reason;
                        if let Some(reason) = reason {
                            driver.metrics.discontinuity();
                            driver.ready.push_back(Ready {
                                item: SubscriptionItem::Discontinuity(Discontinuity {
                                    room: room.clone(),
                                    reason,
                                    epoch: info.epoch.clone(),
                                    earliest_sequence: info.earliest_sequence,
                                    requested_from: from,
                                }),
                                from_history: true,
                            });
                        }
                        true
                    }
                    None if opts.default_start == DefaultStart::Beginning => true,
                    None => {
                        start.start_after = info.last_sequence;
                        false
                    }
                };
            if !catch_up || !driver.history {
                start.start_after = info.last_sequence;
            }
            let should_catch_up = wants_history && driver.history;
            let mut state = RoomState::new(start.start_after);
            if should_catch_up {
                state.catching_up = true;
                state.batches_left = max_batches;
                driver.catchup.push_back(room.clone());
            }
            driver.rooms.insert(room.clone(), state);
            starts.push(start);
        }
        Ok((driver, starts))
    }

    /// The next item, or `None` once the transport closed.
    pub(crate) async fn next(&mut self) -> Option<(SubscriptionItem, bool)> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some((r.item, r.from_history));
            }
            // Once the transport closed nothing more can be read.
            self.live.as_ref()?;
            if let Some(room) = self.catchup.front().cloned() {
                self.drain_live_nowait();
                match self.catch_up_page(&room).await {
                    Ok(true) => {
                        self.catchup.pop_front();
                        self.read_failures = 0;
                    }
                    Ok(false) => {}
                    Err(Error::Closed) => {
                        self.live = None;
                    }
                    Err(e) => {
                        self.metrics.error();
                        tracing::warn!(room = %room, error = %e, "history read failed; retrying");
                        tokio::time::sleep(READ_RETRY.ceiling(self.read_failures)).await;
                        self.read_failures = self.read_failures.saturating_add(1);
                    }
                }
                continue;
            }
            let deadline = self
                .gap_rooms
                .iter()
                .filter_map(|r| self.rooms.get(r).and_then(|s| s.gap_deadline))
                .min();
            let live = self.live.as_mut()?;
            tokio::select! {
                signal = live.next() => match signal {
                    Some(signal) => self.on_signal(signal),
                    None => self.live = None,
                },
                () = sleep_until_opt(deadline), if deadline.is_some() => self.on_deadlines(),
            }
        }
    }

    /// Moves already-arrived live signals into the trackers without waiting, so long
    /// catch-ups do not let the live channel overflow.
    fn drain_live_nowait(&mut self) {
        use futures::FutureExt;
        for _ in 0..1024 {
            let Some(live) = self.live.as_mut() else { return };
            match live.next().now_or_never() {
                Some(Some(signal)) => self.on_signal(signal),
                Some(None) => {
                    self.live = None;
                    return;
                }
                None => return,
            }
        }
    }

    fn on_signal(&mut self, signal: LiveSignal) {
        match signal {
            LiveSignal::Event(e) => self.on_event(e),
            LiveSignal::Lagged(pattern) => {
                let rooms: Vec<Room> = self
                    .rooms
                    .keys()
                    .filter(|r| pattern.as_ref().is_none_or(|p| p.matches(r)))
                    .cloned()
                    .collect();
                for room in rooms {
                    self.schedule_catch_up(&room);
                }
            }
            LiveSignal::Reset { room, epoch } => {
                let Some(state) = self.rooms.get_mut(&room) else {
                    return;
                };
                let requested_from = state.tracker.last_delivered();
                state.tracker.reset(0);
                state.gap_deadline = None;
                self.metrics.discontinuity();
                self.ready.push_back(Ready {
                    item: SubscriptionItem::Discontinuity(Discontinuity {
                        room: room.clone(),
                        reason: DiscontinuityReason::StreamReset,
                        epoch,
                        earliest_sequence: 1,
                        requested_from,
                    }),
                    from_history: false,
                });
                self.schedule_catch_up(&room);
            }
        }
    }

    fn on_event(&mut self, e: Arc<Envelope>) {
        let room = e.room.clone();
        if !self.rooms.contains_key(&room) {
            if !self.wildcards.iter().any(|p| p.matches(&room)) {
                return;
            }
            // A room discovered through a wildcard starts at its first live event.
            self.rooms
                .insert(room.clone(), RoomState::new(e.sequence.saturating_sub(1)));
        }
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        if !state.catching_up {
            // The common case: the next event, nothing buffered.
            match state.tracker.take_next(e) {
                Ok(e) => {
                    if self
                        .types
                        .as_deref()
                        .is_none_or(|t| t.iter().any(|t| *t == e.event_type))
                    {
                        self.ready.push_back(Ready {
                            item: SubscriptionItem::Event(e),
                            from_history: false,
                        });
                    }
                    return;
                }
                Err(e) => return self.offer_out_of_order(room, e),
            }
        }
        self.offer_out_of_order(room, e);
    }

    fn offer_out_of_order(&mut self, room: Room, e: Arc<Envelope>) {
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        match state.tracker.offer(e) {
            Offer::Duplicate => self.metrics.duplicates_dropped(1),
            Offer::Accepted => {}
            Offer::Gap { .. } if state.catching_up => {}
            Offer::Gap { .. } => {
                if !state.gap_open {
                    state.gap_open = true;
                    self.metrics.gap_detected();
                }
                if self.reorder_window.is_zero() {
                    self.schedule_catch_up(&room);
                } else if state.gap_deadline.is_none() {
                    state.gap_deadline = Some(Instant::now() + self.reorder_window);
                    self.gap_rooms.insert(room.clone());
                }
            }
            Offer::Overflow => self.schedule_catch_up(&room),
        }
        self.drain_room(&room, false);
    }

    fn on_deadlines(&mut self) {
        let now = Instant::now();
        let due: Vec<Room> = self
            .gap_rooms
            .iter()
            .filter(|r| {
                self.rooms
                    .get(*r)
                    .and_then(|s| s.gap_deadline)
                    .is_some_and(|d| d <= now)
            })
            .cloned()
            .collect();
        for room in due {
            self.schedule_catch_up(&room);
        }
    }

    fn schedule_catch_up(&mut self, room: &Room) {
        if !self.history {
            self.skip_unrecoverable(room);
            return;
        }
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        state.gap_deadline = None;
        self.gap_rooms.remove(room);
        if !state.catching_up {
            state.catching_up = true;
            self.catchup.push_back(room.clone());
        }
    }

    /// Without history a hole cannot be filled: report it and continue after it.
    fn skip_unrecoverable(&mut self, room: &Room) {
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        state.gap_deadline = None;
        self.gap_rooms.remove(room);
        let Some((from, to)) = state.tracker.missing() else {
            // A lag with nothing buffered: the next event shows whether anything was lost.
            return;
        };
        state.tracker.skip_through(to);
        state.gap_open = false;
        self.metrics.discontinuity();
        self.ready.push_back(Ready {
            item: SubscriptionItem::Discontinuity(Discontinuity {
                room: room.clone(),
                reason: DiscontinuityReason::PositionExpired,
                epoch: String::new(),
                earliest_sequence: to + 1,
                requested_from: from - 1,
            }),
            from_history: false,
        });
        self.drain_room(room, false);
    }

    /// Reads one history page for `room`; returns true when the room is caught up.
    async fn catch_up_page(&mut self, room: &Room) -> Result<bool> {
        let Some(from) = self.rooms.get(room).map(|s| s.tracker.last_delivered()) else {
            return Ok(true);
        };
        let query = ReplayQuery {
            room: room.clone(),
            from_sequence: from,
            to_sequence: None,
            event_types: self.types.as_ref().map(|t| t.to_vec()),
            limit: self.batch_size,
        };
        let started = std::time::Instant::now();
        let page = self.transport.replay(&query).await?;
        self.metrics.replay_latency(started.elapsed());
        let Some(state) = self.rooms.get_mut(room) else {
            return Ok(true);
        };
        let had_gap = state.gap_open;
        let progressed = page.scanned_to > from || !page.events.is_empty();
        for e in page.events {
            if e.sequence < state.tracker.next_expected() {
                continue;
            }
            // Holes inside a page are final (filtered or expired): step over them.
            state.tracker.skip_through(e.sequence - 1);
            state.tracker.offer(e);
            drain_into(
                &mut self.ready,
                &mut state.tracker,
                self.types.as_deref(),
                &self.metrics,
                true,
            );
        }
        state.tracker.skip_through(page.scanned_to);
        drain_into(
            &mut self.ready,
            &mut state.tracker,
            self.types.as_deref(),
            &self.metrics,
            false,
        );

        let mut done = page.exhausted;
        if let Some(left) = state.batches_left.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 && !done {
                // The caller capped the initial catch-up: jump to the head and go live.
                state.batches_left = None;
                let head = self.transport.room_info(room).await?.last_sequence;
                if let Some(state) = self.rooms.get_mut(room) {
                    state.tracker.skip_through(head);
                    drain_into(
                        &mut self.ready,
                        &mut state.tracker,
                        self.types.as_deref(),
                        &self.metrics,
                        false,
                    );
                }
                done = true;
            }
        }
        let Some(state) = self.rooms.get_mut(room) else {
            return Ok(true);
        };
        if done {
            if let Some((_, to)) = state.tracker.missing() {
                // Live events arrived beyond what this read saw: read again. A hole
                // that history keeps not showing is given up on after a few reads.
                state.stalled_reads = if progressed { 0 } else { state.stalled_reads + 1 };
                if state.stalled_reads < 3 {
                    return Ok(false);
                }
                tracing::warn!(room = %room, through = to, "history never filled a gap; skipping it");
                self.metrics.discontinuity();
                state.tracker.skip_through(to);
                drain_into(
                    &mut self.ready,
                    &mut state.tracker,
                    self.types.as_deref(),
                    &self.metrics,
                    false,
                );
            }
            state.catching_up = false;
            state.stalled_reads = 0;
            state.batches_left = None;
            if had_gap {
                state.gap_open = false;
                self.metrics.gap_filled();
            }
        }
        Ok(done)
    }

    fn drain_room(&mut self, room: &Room, from_history: bool) {
        if let Some(state) = self.rooms.get_mut(room) {
            drain_into(
                &mut self.ready,
                &mut state.tracker,
                self.types.as_deref(),
                &self.metrics,
                from_history,
            );
            if state.tracker.missing().is_none() && !state.catching_up {
                state.gap_deadline = None;
                if state.gap_open {
                    state.gap_open = false;
                }
                self.gap_rooms.remove(room);
            }
        }
    }
}

fn drain_into(
    ready: &mut VecDeque<Ready>,
    tracker: &mut SequenceTracker<Arc<Envelope>>,
    types: Option<&[String]>,
    metrics: &Metrics,
    from_history: bool,
) {
    while let Some(e) = tracker.pop_ready() {
        if types.is_some_and(|t| !t.iter().any(|t| *t == e.event_type)) {
            continue;
        }
        if from_history {
            metrics.replayed(1);
        }
        ready.push_back(Ready {
            item: SubscriptionItem::Event(e),
            from_history,
        });
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Publish→deliver lag of a live event, in milliseconds.
pub(crate) fn live_lag_ms(e: &Envelope) -> u64 {
    e.emitted_at.millis_until(Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(epoch: &str, last: u64, earliest: u64) -> RoomInfo {
        RoomInfo {
            epoch: epoch.into(),
            last_sequence: last,
            earliest_sequence: earliest,
        }
    }

    #[test]
    fn continuity_rules() {
        // Intact resume.
        assert_eq!(check_continuity(5, Some("e1"), &info("e1", 10, 1)), (5, None));
        assert_eq!(check_continuity(10, None, &info("e1", 10, 1)), (10, None));
        // Exactly at the retention edge is still intact.
        assert_eq!(check_continuity(4, None, &info("e1", 10, 5)), (4, None));
        // Older than retention.
        assert_eq!(
            check_continuity(3, None, &info("e1", 10, 5)),
            (4, Some(DiscontinuityReason::PositionExpired))
        );
        // Other epoch.
        assert_eq!(
            check_continuity(5, Some("e0"), &info("e1", 10, 1)),
            (0, Some(DiscontinuityReason::StreamReset))
        );
        // Ahead of the history: it must have been reset.
        assert_eq!(
            check_continuity(50, None, &info("e1", 10, 1)),
            (0, Some(DiscontinuityReason::StreamReset))
        );
        // Nothing retained at all, everything expired.
        assert_eq!(
            check_continuity(2, None, &info("e1", 10, 11)),
            (10, Some(DiscontinuityReason::PositionExpired))
        );
    }
}
