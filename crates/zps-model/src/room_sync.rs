//! The ordering rule, written once: one room's way from "events arrive
//! somehow" (live, duplicated, reordered, lost, from history pages) to "each
//! sequence is handed out once, in order, or a [`Notice`] says why not".
//!
//! [`RoomSync`] is a state machine in the style of `quinn-proto`: no I/O, no
//! clock, no async runtime. Its driver — the engine's subscription, the
//! gateway's connection, the client's room — feeds it inputs (`on_live`,
//! `on_page`, `on_lagged`, `on_discontinuity`, `handle_timeout(now)`) and then
//! polls it: [`RoomSync::poll_deliver`] for what to hand out, in order;
//! [`RoomSync::poll_fetch`] for the history read to make next;
//! [`RoomSync::poll_timeout`] for when to wake it again. Time is passed in,
//! never read, so every rule here runs in tests on a virtual clock.
//!
//! The rule:
//! - a live item that is exactly the next one is handed out at once; anything
//!   else waits in a bounded buffer (a full buffer drops it and marks the room
//!   for a re-read);
//! - a hole in front of the buffer is given the reorder window to fill itself,
//!   then read from history as a bounded fetch; a lost live stream (`lagged`),
//!   an overflow or an explicit catch-up reads history open-ended from the
//!   delivery point, page by page, until a page says nothing more exists;
//! - a history page is authoritative up to its `scanned_to`: sequences it does
//!   not contain up to there never existed or expired, and are stepped over;
//! - a hole that three reads in a row do not shrink, or any hole of a room
//!   without history, is given up with a [`Notice`] placed exactly where the
//!   jump happens;
//! - a history reset (new epoch) drops what is buffered and restarts delivery
//!   with a [`Notice`] first.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use zps_model::room_sync::{Delivery, Page, RoomSync, SyncConfig};
//!
//! let mut sync = RoomSync::<u64>::new(0, SyncConfig::default());
//! let now = Instant::now();
//! assert_eq!(sync.on_live(1), Some(1)); // in order: straight through
//! assert_eq!(sync.on_live(3), None); // 2 is missing: held
//! assert!(sync.poll_fetch(now).is_none(), "the reorder window first");
//! let later = now + SyncConfig::default().reorder_window;
//! let fetch = sync.poll_fetch(later).expect("the hole is read");
//! assert_eq!((fetch.after, fetch.through), (1, Some(2)));
//! sync.on_page(fetch.id, Page { items: vec![2], scanned_to: 2, has_more: false });
//! let out: Vec<u64> = std::iter::from_fn(|| sync.poll_deliver())
//!     .filter_map(|d| match d { Delivery::Event(e, _) => Some(e), Delivery::Notice(_) => None })
//!     .collect();
//! assert_eq!(out, vec![2, 3]);
//! ```

use std::collections::VecDeque;
use std::time::Instant;

use crate::envelope::Sequenced;
use crate::sequence::{Offer, SequenceTracker};

mod config;
mod continuity;
mod messages;

pub use config::SyncConfig;
pub use continuity::{DiscontinuityReason, RoomInfo, check_continuity};
pub use messages::{Delivery, Fetch, FetchId, Notice, Page, Source, Tally};

/// Reads in a row that leave the same hole before it is given up as lost.
pub const STALLED_READS_LIMIT: u8 = 3;

#[derive(Debug)]
struct Entry<T> {
    item: T,
    source: Source,
}

impl<T: Sequenced> Sequenced for Entry<T> {
    fn sequence(&self) -> u64 {
        self.item.sequence()
    }
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    id: FetchId,
    after: u64,
    bounded: bool,
    sent: Instant,
    /// [`RoomSync::catch_up`] calls before this read was sent.
    catch_ups: u64,
}

/// One room's ordering state (see the module documentation for the rule).
#[derive(Debug)]
pub struct RoomSync<T> {
    cfg: SyncConfig,
    tracker: SequenceTracker<Entry<T>>,
    /// Notices with the sequence before which each is handed out.
    notices: VecDeque<(u64, Notice)>,
    /// Read history open-ended until a page says nothing more exists.
    catching_up: bool,
    /// Items were dropped from a full buffer: re-read from the delivery point.
    overflowed: bool,
    /// The hole in front waited out its reorder window: read it.
    repair_due: bool,
    gap_deadline: Option<Instant>,
    gap_open: bool,
    /// Sequences up to here are known to exist (a catch-up is not done before).
    known_head: u64,
    outstanding: Option<Outstanding>,
    last_sent: Option<Instant>,
    /// The next read continues a paged one: no spacing.
    continue_now: bool,
    /// The previous read reached the end without finishing: read past caches.
    reread: bool,
    failures: u32,
    retry_at: Option<Instant>,
    stalled_reads: u8,
    next_id: u64,
    /// Catch-ups asked for so far: one asked while a read is in flight is not
    /// answered by that read.
    catch_ups: u64,
    /// False until [`RoomSync::start_after`]: live items are held, nothing is
    /// handed out or read.
    positioned: bool,
    tally: Tally,
}

impl<T: Sequenced> RoomSync<T> {
    /// A room that has delivered everything up to `last_delivered` and goes on live.
    pub fn new(last_delivered: u64, cfg: SyncConfig) -> Self {
        Self {
            cfg,
            tracker: SequenceTracker::new(last_delivered, cfg.max_buffer),
            notices: VecDeque::new(),
            catching_up: false,
            overflowed: false,
            repair_due: false,
            gap_deadline: None,
            gap_open: false,
            known_head: 0,
            outstanding: None,
            last_sent: None,
            continue_now: false,
            reread: false,
            failures: 0,
            retry_at: None,
            stalled_reads: 0,
            next_id: 0,
            catch_ups: 0,
            positioned: true,
            tally: Tally::default(),
        }
    }

    /// A room that must first read its history after `last_delivered`; live items
    /// wait behind it.
    pub fn catching_up(last_delivered: u64, cfg: SyncConfig) -> Self {
        let mut sync = Self::new(last_delivered, cfg);
        sync.catch_up();
        sync
    }

    /// A room whose start point is still being worked out (the driver joined the
    /// live stream first, so nothing published meanwhile is missed): live items
    /// are held until [`RoomSync::start_after`].
    pub fn unpositioned(cfg: SyncConfig) -> Self {
        let mut sync = Self::new(0, cfg);
        sync.positioned = false;
        sync
    }

    /// Sets the start point of an [`RoomSync::unpositioned`] room: held items
    /// after `sequence` stay, the rest are dropped, delivery may begin.
    /// A discontinuity that arrived first positioned it already (at the new
    /// history's start): then this does nothing.
    pub fn start_after(&mut self, sequence: u64) {
        if self.positioned {
            return;
        }
        self.tracker.skip_through(sequence);
        self.positioned = true;
    }

    /// The last sequence handed out (or stepped over as nonexistent).
    pub fn last_delivered(&self) -> u64 {
        self.tracker.last_delivered()
    }

    /// Whether an open-ended history read is still under way.
    pub fn is_catching_up(&self) -> bool {
        self.catching_up
    }

    /// Items held, waiting for their turn.
    pub fn buffered(&self) -> usize {
        self.tracker.pending_len()
    }

    /// Whether history must be read: a catch-up, an overflow, or a hole in front.
    /// For drivers whose reads are made elsewhere (the gateway's connection task).
    pub fn needs_fetch(&self) -> bool {
        self.positioned
            && self.outstanding.is_none()
            && (self.catching_up || self.overflowed || self.repair_due || self.tracker.missing().is_some())
    }

    /// A live item. Returns it when it is exactly the next one and nothing waits
    /// before it (hand it out now); otherwise it is held or dropped, and the
    /// driver polls [`RoomSync::poll_deliver`] and [`RoomSync::poll_fetch`].
    pub fn on_live(&mut self, item: T) -> Option<T> {
        if !self.notices.is_empty() || !self.positioned {
            self.offer(item, Source::Live);
            return None;
        }
        match self.tracker.take_next(Entry {
            item,
            source: Source::Live,
        }) {
            Ok(e) => Some(e.item),
            Err(e) => {
                self.offer(e.item, Source::Live);
                None
            }
        }
    }

    /// A live item the driver cannot hand out right now (its consumer is full):
    /// held in order like any other, never handed back.
    pub fn hold_live(&mut self, item: T) {
        self.offer(item, Source::Live);
    }

    fn offer(&mut self, item: T, source: Source) {
        let entry = Entry { item, source };
        // The bound is for live items piling up behind a hole; a page's size is
        // bounded by its reader.
        let offer = match source {
            Source::Live => self.tracker.offer(entry),
            Source::History => self.tracker.offer_unbounded(entry),
        };
        match offer {
            Offer::Accepted | Offer::Gap { .. } => {}
            Offer::Duplicate => self.tally.duplicates += 1,
            Offer::Overflow => self.overflowed = true,
        }
    }

    /// The live stream lost items (a lagged receiver): read history from the
    /// delivery point up to the head.
    pub fn on_lagged(&mut self) {
        self.catch_up();
    }

    /// Starts an open-ended read from the delivery point.
    pub fn catch_up(&mut self) {
        self.catch_ups += 1;
        self.catching_up = true;
        self.gap_deadline = None;
    }

    /// Sequences up to `head` are known to exist: a catch-up is not done before
    /// it has delivered (or stepped over) them.
    pub fn expect_through(&mut self, head: u64) {
        self.known_head = self.known_head.max(head);
    }

    /// The history restarted at `earliest_sequence` (a new epoch, or a position
    /// that expired): everything held is dropped, reads in flight are forgotten,
    /// and a [`Notice`] comes before whatever is delivered next.
    pub fn on_discontinuity(
        &mut self,
        reason: DiscontinuityReason,
        earliest_sequence: u64,
        epoch: Option<String>,
    ) {
        let last_delivered = self.last_delivered();
        let earliest = earliest_sequence.max(1);
        self.tracker.reset(earliest - 1);
        self.positioned = true;
        self.forget_fetches();
        self.known_head = 0;
        // Notices of the old history go out first, before this one.
        for (before, _) in &mut self.notices {
            *before = 0;
        }
        self.announce(Notice {
            reason,
            last_delivered,
            earliest_sequence: earliest,
            epoch,
        });
    }

    /// Queues `notice` to be handed out before sequence `earliest_sequence`.
    pub fn announce(&mut self, notice: Notice) {
        self.tally.notices += 1;
        self.notices.push_back((notice.earliest_sequence, notice));
    }

    /// Repositions silently: delivery continues after `last_delivered` (a start
    /// point learned late), dropping what is held.
    pub fn restart_after(&mut self, last_delivered: u64) {
        self.tracker.reset(last_delivered);
        self.known_head = 0;
    }

    /// Jumps over everything up to `sequence` on purpose (a capped catch-up goes
    /// live at the head): no notice, the catch-up ends.
    pub fn skip_to(&mut self, sequence: u64) {
        self.tracker.skip_through(sequence);
        self.catching_up = false;
        self.overflowed = false;
        self.reread = false;
        self.stalled_reads = 0;
    }

    /// The link carrying reads went away: reads in flight and planned are
    /// dropped; what is held stays (the driver resumes from the delivery point).
    pub fn forget_fetches(&mut self) {
        self.outstanding = None;
        self.catching_up = false;
        self.overflowed = false;
        self.repair_due = false;
        self.gap_deadline = None;
        self.continue_now = false;
        self.reread = false;
        self.retry_at = None;
        self.stalled_reads = 0;
    }

    /// The answer to read `id`; returns false (and changes nothing) when `id` is
    /// not the read in flight (stale or foreign).
    pub fn on_page(&mut self, id: FetchId, page: Page<T>) -> bool {
        let Some(o) = self.outstanding.filter(|o| o.id == id) else {
            return false;
        };
        self.outstanding = None;
        self.failures = 0;
        let progressed = page.scanned_to > o.after || !page.items.is_empty();
        for item in page.items {
            self.offer(item, Source::History);
        }
        // Everything up to `scanned_to` is final: in the page, or never to come.
        self.tracker.settle_through(page.scanned_to);
        if page.has_more {
            self.catching_up |= !o.bounded;
            self.repair_due |= o.bounded;
            self.continue_now = true;
            self.reread = false;
            return true;
        }
        self.continue_now = false;
        if self.overflowed {
            self.catching_up = true;
            return true;
        }
        let (through, hole) = self.tracker.frontier();
        if o.catch_ups != self.catch_ups {
            // Asked to catch up after this read was sent (the live stream lagged
            // meanwhile): it cannot have covered that.
            self.catching_up = true;
            return true;
        }
        let short = hole.is_some() || through < self.known_head;
        if !short {
            self.finish_read();
            return true;
        }
        // Live items (or the known head) lie beyond what this read saw: read again,
        // past any cache, and give up a hole that reads keep not shrinking.
        self.stalled_reads = if progressed { 0 } else { self.stalled_reads + 1 };
        if self.stalled_reads < STALLED_READS_LIMIT {
            self.reread = true;
            if o.bounded {
                self.repair_due = true;
            } else {
                self.catching_up = true;
            }
            return true;
        }
        match hole {
            Some((from, to)) => self.give_up(from, to),
            None => self.known_head = 0,
        }
        self.finish_read();
        true
    }

    fn finish_read(&mut self) {
        self.catching_up = false;
        self.repair_due = false;
        self.reread = false;
        self.stalled_reads = 0;
        self.known_head = 0;
    }

    /// Read `id` failed: it is retried after the configured backoff. Returns false
    /// when `id` is not the read in flight.
    pub fn on_fetch_failed(&mut self, id: FetchId, now: Instant) -> bool {
        let Some(o) = self.outstanding.filter(|o| o.id == id) else {
            return false;
        };
        self.outstanding = None;
        self.retry_at = Some(now + self.cfg.retry.ceiling(self.failures));
        self.failures = self.failures.saturating_add(1);
        if o.bounded {
            self.repair_due = true;
        } else {
            self.catching_up = true;
        }
        true
    }

    /// Hands a hole up as lost: a notice where the jump happens, then delivery
    /// continues after it.
    fn give_up(&mut self, from: u64, to: u64) {
        self.announce(Notice {
            reason: DiscontinuityReason::PositionExpired,
            last_delivered: from - 1,
            earliest_sequence: to + 1,
            epoch: None,
        });
        self.tracker.settle_through(to);
        self.stalled_reads = 0;
    }

    /// Moves time-driven state on to `now`: a read that went unanswered is asked
    /// again, a hole whose reorder window passed is due for a read.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let (Some(o), Some(timeout)) = (self.outstanding, self.cfg.fetch_timeout)
            && now >= o.sent + timeout
        {
            // Lost (a dropped answer): ask again from wherever delivery stands.
            self.outstanding = None;
            self.catching_up = true;
            self.continue_now = true;
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
        }
        let (_, hole) = self.tracker.frontier();
        match hole {
            None => {
                self.gap_deadline = None;
                self.repair_due = false;
                if self.gap_open && !self.catching_up && !self.overflowed {
                    self.gap_open = false;
                    self.tally.gaps_closed += 1;
                }
            }
            Some(_)
                if self.catching_up || self.overflowed || self.repair_due || self.outstanding.is_some() => {}
            Some(_) => {
                if !self.gap_open {
                    self.gap_open = true;
                    self.tally.gaps_opened += 1;
                }
                let due = *self.gap_deadline.get_or_insert(now + self.cfg.reorder_window);
                if due <= now {
                    self.gap_deadline = None;
                    self.repair_due = true;
                }
            }
        }
    }

    /// The history read to make now, if any (call after [`RoomSync::handle_timeout`]
    /// has been given `now`; this does it too).
    pub fn poll_fetch(&mut self, now: Instant) -> Option<Fetch> {
        if !self.positioned {
            return None;
        }
        self.handle_timeout(now);
        if self.outstanding.is_some() || !(self.catching_up || self.overflowed || self.repair_due) {
            return None;
        }
        let (after, hole) = self.tracker.frontier();
        if !self.cfg.history {
            // Nothing can be read back: a hole is lost as soon as it is due.
            if let Some((from, to)) = hole {
                self.give_up(from, to);
            }
            self.finish_read();
            self.overflowed = false;
            return None;
        }
        if self.fetch_not_before().is_some_and(|t| now < t) {
            return None;
        }
        let through = if self.catching_up || self.overflowed {
            None
        } else {
            match hole {
                Some((_, to)) => Some(to),
                None => {
                    self.repair_due = false;
                    return None;
                }
            }
        };
        self.next_id += 1;
        let id = FetchId(self.next_id);
        self.outstanding = Some(Outstanding {
            id,
            after,
            bounded: through.is_some(),
            sent: now,
            catch_ups: self.catch_ups,
        });
        self.last_sent = Some(now);
        self.overflowed = false;
        self.continue_now = false;
        Some(Fetch {
            id,
            after,
            through,
            reread: self.reread,
        })
    }

    /// No read before this: spacing after the previous one, or a retry's wait.
    fn fetch_not_before(&self) -> Option<Instant> {
        let spaced = match self.last_sent {
            Some(t) if !self.continue_now && !self.cfg.fetch_spacing.is_zero() => {
                Some(t + self.cfg.fetch_spacing)
            }
            _ => None,
        };
        match (spaced, self.retry_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// When [`RoomSync::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if let Some(o) = self.outstanding {
            return self.cfg.fetch_timeout.map(|t| o.sent + t);
        }
        if self.catching_up || self.overflowed || self.repair_due {
            return self.fetch_not_before();
        }
        self.gap_deadline
    }

    /// Whether [`RoomSync::poll_deliver`] has something (so a driver with a bounded
    /// consumer reserves room only when needed).
    pub fn has_deliverable(&self) -> bool {
        self.positioned
            && self
                .notices
                .front()
                .is_some_and(|(before, _)| *before <= self.tracker.next_expected())
            || self.tracker.has_ready()
    }

    /// Whether a read is wanted and not in flight (it may still wait for its
    /// spacing or a retry: see [`RoomSync::poll_timeout`]).
    pub fn wants_fetch(&self) -> bool {
        self.outstanding.is_none() && (self.catching_up || self.overflowed || self.repair_due)
    }

    /// Whether a read is in flight.
    pub fn is_fetching(&self) -> bool {
        self.outstanding.is_some()
    }

    /// The next thing to hand out, in order (a notice exactly where delivery jumps).
    pub fn poll_deliver(&mut self) -> Option<Delivery<T>> {
        if !self.positioned {
            return None;
        }
        if let Some((before, _)) = self.notices.front()
            && *before <= self.tracker.next_expected()
        {
            return self.notices.pop_front().map(|(_, n)| Delivery::Notice(n));
        }
        let e = self.tracker.pop_ready()?;
        Some(Delivery::Event(e.item, e.source))
    }

    /// The counts gathered since the last call.
    pub fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }
}

#[cfg(test)]
mod tests;
