//! Ordered, gap-free subscriptions over any transport.
//!
//! The live stream is opened *first*; history is then read page by page from
//! each room's start position while live events queue up behind it. Both feed
//! one [`RoomSync`] per room — the ordering rule, shared with the gateway and
//! the client — so the switch from history to live has no gap and no
//! duplicate, later holes are read back after the transport's reorder window,
//! and lost live messages (`Lagged`) are re-read. This module only moves
//! events, reads and timers for it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use tokio::time::Instant;
use zps_model::room_sync::{Delivery, Fetch, Notice, Page, RoomSync, Source, SyncConfig};

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::room::{Room, RoomPattern};
use crate::time::Timestamp;
use crate::transport::{LiveSignal, LiveStream, ReplayQuery, Transport};

use super::options::{CatchUp, DefaultStart, SubscribeOptions, clamp_batch};

/// Out-of-order events buffered per room before the engine falls back to history.
pub(crate) const MAX_PENDING_PER_ROOM: usize = 10_000;
/// History reads that fail are retried after these delays (the doubling ceiling).
const READ_RETRY: crate::Backoff = crate::Backoff {
    base: Duration::from_millis(50),
    cap: Duration::from_secs(5),
    max_attempts: None,
};

pub use zps_model::room_sync::{DiscontinuityReason, check_continuity};

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
    sync: RoomSync<Arc<Envelope>>,
    /// Pages the initial catch-up may still read before it jumps to the head.
    batches_left: Option<u32>,
}

/// The state machine behind [`Subscription`]: the transport's live stream and
/// history reads on one side, one [`RoomSync`] per room on the other.
pub(crate) struct Driver {
    transport: Arc<dyn Transport>,
    metrics: Arc<Metrics>,
    live: Option<LiveStream>,
    rooms: HashMap<Room, RoomState>,
    wildcards: Vec<RoomPattern>,
    types: Option<Arc<[String]>>,
    batch_size: usize,
    sync: SyncConfig,
    ready: VecDeque<Ready>,
    /// Rooms whose sync may want a read or a timer; the rest are plain live.
    active: HashSet<Room>,
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
            sync: SyncConfig {
                max_buffer: MAX_PENDING_PER_ROOM,
                reorder_window: capabilities.reorder_window,
                fetch_spacing: Duration::ZERO,
                fetch_timeout: None,
                retry: READ_RETRY,
                history: capabilities.history,
            },
            transport,
            metrics,
            live: Some(live),
            rooms: HashMap::new(),
            wildcards: opts.rooms.iter().filter(|p| p.is_wildcard()).cloned().collect(),
            types: opts.event_types.clone().map(Arc::from),
            batch_size,
            ready: VecDeque::new(),
            active: HashSet::new(),
        };
        let history = driver.sync.history;
        let mut starts = Vec::new();
        for room in opts.rooms.iter().filter_map(RoomPattern::as_room) {
            if driver.rooms.contains_key(room) {
                continue;
            }
            let mut info = driver.transport.room_info(room).await?;
            if !history {
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
            if !catch_up || !history {
                start.start_after = info.last_sequence;
            }
            let state = if wants_history && history {
                driver.active.insert(room.clone());
                RoomState {
                    sync: RoomSync::catching_up(start.start_after, driver.sync),
                    batches_left: max_batches,
                }
            } else {
                RoomState {
                    sync: RoomSync::new(start.start_after, driver.sync),
                    batches_left: None,
                }
            };
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
            let now = Instant::now();
            if let Some((room, fetch)) = self.due_fetch(now) {
                // Long reads must not let the live channel overflow meanwhile.
                self.drain_live_nowait();
                self.read(&room, fetch).await;
                continue;
            }
            if !self.ready.is_empty() {
                continue;
            }
            let deadline = self
                .active
                .iter()
                .filter_map(|r| self.rooms.get(r).and_then(|s| s.sync.poll_timeout()))
                .min();
            let live = self.live.as_mut()?;
            tokio::select! {
                signal = live.next() => match signal {
                    Some(signal) => self.on_signal(signal),
                    None => self.live = None,
                },
                () = sleep_until_opt(deadline), if deadline.is_some() => {}
            }
        }
    }

    /// The first active room with a read to make now. Rooms with nothing left to
    /// do leave the active set; notices the sync produced meanwhile are delivered.
    fn due_fetch(&mut self, now: Instant) -> Option<(Room, Fetch)> {
        let now_std = now.into_std();
        let mut idle = Vec::new();
        let mut found = None;
        for room in &self.active {
            let Some(state) = self.rooms.get_mut(room) else {
                idle.push(room.clone());
                continue;
            };
            if let Some(fetch) = state.sync.poll_fetch(now_std) {
                found = Some((room.clone(), fetch));
                break;
            }
            if state.sync.poll_timeout().is_none() && !state.sync.is_catching_up() {
                idle.push(room.clone());
            }
        }
        for room in idle {
            self.active.remove(&room);
            // A room without history gives holes up in `poll_fetch`: hand the notice out.
            self.deliver(&room);
        }
        found
    }

    /// Makes one history read for `room` and feeds the answer to its sync.
    async fn read(&mut self, room: &Room, fetch: Fetch) {
        let query = ReplayQuery {
            room: room.clone(),
            from_sequence: fetch.after,
            to_sequence: fetch.through,
            event_types: self.types.as_ref().map(|t| t.to_vec()),
            limit: self.batch_size,
        };
        let started = std::time::Instant::now();
        let result = self.transport.replay(&query).await;
        self.metrics.replay_latency(started.elapsed());
        let page = match result {
            Ok(page) => page,
            Err(Error::Closed) => {
                self.live = None;
                return;
            }
            Err(e) => {
                self.metrics.error();
                tracing::warn!(room = %room, error = %e, "history read failed; retrying");
                if let Some(state) = self.rooms.get_mut(room) {
                    state.sync.on_fetch_failed(fetch.id, Instant::now().into_std());
                }
                return;
            }
        };
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        let has_more = !page.exhausted;
        state.sync.on_page(
            fetch.id,
            Page {
                items: page.events,
                scanned_to: page.scanned_to,
                has_more,
            },
        );
        let capped = match state.batches_left.as_mut() {
            Some(left) if fetch.through.is_none() => {
                *left = left.saturating_sub(1);
                *left == 0 && state.sync.is_catching_up()
            }
            _ => false,
        };
        if !state.sync.is_catching_up() {
            state.batches_left = None;
        }
        self.deliver(room);
        if capped {
            // The caller capped the initial catch-up: jump to the head and go live.
            match self.transport.room_info(room).await {
                Ok(info) => {
                    if let Some(state) = self.rooms.get_mut(room) {
                        state.batches_left = None;
                        state.sync.skip_to(info.last_sequence);
                    }
                    self.deliver(room);
                }
                Err(e) => tracing::warn!(room = %room, error = %e, "head read failed; reading on"),
            }
        }
    }

    /// Moves already-arrived live signals into the rooms without waiting, so long
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
                    if let Some(state) = self.rooms.get_mut(&room) {
                        state.sync.on_lagged();
                        self.active.insert(room);
                    }
                }
            }
            LiveSignal::Reset { room, epoch } => {
                let Some(state) = self.rooms.get_mut(&room) else {
                    return;
                };
                state
                    .sync
                    .on_discontinuity(DiscontinuityReason::StreamReset, 1, Some(epoch));
                state.sync.catch_up();
                self.active.insert(room.clone());
                self.deliver(&room);
            }
        }
    }

    fn on_event(&mut self, e: Arc<Envelope>) {
        let room = &e.room;
        if !self.rooms.contains_key(room) {
            if !self.wildcards.iter().any(|p| p.matches(room)) {
                return;
            }
            // A room discovered through a wildcard starts at its first live event.
            let state = RoomState {
                sync: RoomSync::new(e.sequence.saturating_sub(1), self.sync),
                batches_left: None,
            };
            self.rooms.insert(room.clone(), state);
        }
        let room = room.clone();
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        // The common case: the next event, nothing held before it.
        if let Some(e) = state.sync.on_live(e) {
            if passes(self.types.as_deref(), &e.event_type) {
                self.ready.push_back(Ready {
                    item: SubscriptionItem::Event(e),
                    from_history: false,
                });
            }
            if state.sync.buffered() == 0 {
                return;
            }
        }
        self.active.insert(room.clone());
        self.deliver(&room);
    }

    /// Hands out whatever `room`'s sync has ready, in order, and books its counts.
    fn deliver(&mut self, room: &Room) {
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        while let Some(d) = state.sync.poll_deliver() {
            let ready = match d {
                Delivery::Event(e, source) => {
                    if !passes(self.types.as_deref(), &e.event_type) {
                        continue;
                    }
                    let from_history = source == Source::History;
                    if from_history {
                        self.metrics.replayed(1);
                    }
                    Ready {
                        item: SubscriptionItem::Event(e),
                        from_history,
                    }
                }
                Delivery::Notice(n) => Ready {
                    item: SubscriptionItem::Discontinuity(discontinuity(room, n)),
                    from_history: false,
                },
            };
            self.ready.push_back(ready);
        }
        let tally = state.sync.take_tally();
        if tally.duplicates > 0 {
            self.metrics.duplicates_dropped(tally.duplicates);
        }
        for _ in 0..tally.gaps_opened {
            self.metrics.gap_detected();
        }
        for _ in 0..tally.gaps_closed {
            self.metrics.gap_filled();
        }
        for _ in 0..tally.notices {
            self.metrics.discontinuity();
        }
    }
}

/// Whether a subscription's type filter lets `event_type` through.
fn passes(types: Option<&[String]>, event_type: &str) -> bool {
    types.is_none_or(|t| t.iter().any(|t| t == event_type))
}

fn discontinuity(room: &Room, n: Notice) -> Discontinuity {
    Discontinuity {
        room: room.clone(),
        reason: n.reason,
        epoch: n.epoch.unwrap_or_default(),
        earliest_sequence: n.earliest_sequence,
        requested_from: n.last_delivered,
    }
}

async fn sleep_until_opt(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// Publish→deliver lag of a live event, in milliseconds.
pub(crate) fn live_lag_ms(e: &Envelope) -> u64 {
    e.emitted_at.millis_until(Timestamp::now())
}
