//! What goes into and comes out of a [`RoomSync`](super::RoomSync): reads to
//! make and their answers, deliveries, notices and counts.

use super::DiscontinuityReason;

/// Names one history read so its answer can be told from stale ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FetchId(pub(super) u64);

/// A history read the driver should make: events after `after`, through
/// `through` when bounded, in ascending order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    /// Pass it back with the answer.
    pub id: FetchId,
    /// Read events with a sequence above this.
    pub after: u64,
    /// The last sequence wanted (`None`: up to the head, page by page).
    pub through: Option<u64>,
    /// An earlier read of this stretch came back short: read past any cache.
    pub reread: bool,
}

/// The answer to a [`Fetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The events found, ascending.
    pub items: Vec<T>,
    /// Every sequence up to here that is not in `items` does not exist (any more).
    pub scanned_to: u64,
    /// More events exist after this page (within the bound, if the read had one).
    pub has_more: bool,
}

/// Where a delivered item came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The live stream.
    Live,
    /// A history read.
    History,
}

/// "What follows does not continue what came before": handed out in order,
/// exactly where delivery jumps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Why.
    pub reason: DiscontinuityReason,
    /// The last sequence delivered before the jump.
    pub last_delivered: u64,
    /// The sequence delivery continues from.
    pub earliest_sequence: u64,
    /// The room's epoch after the jump, when the input that caused it knew it.
    pub epoch: Option<String>,
}

/// What [`RoomSync::poll_deliver`] hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery<T> {
    /// The next item, in order.
    Event(T, Source),
    /// A discontinuity, in its place in the order.
    Notice(Notice),
}

/// Counts of what happened, for the driver's metrics ([`RoomSync::take_tally`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Items dropped because they were already delivered or buffered.
    pub duplicates: u64,
    /// Holes that opened in the live stream.
    pub gaps_opened: u64,
    /// Of those, holes closed again (filled or settled).
    pub gaps_closed: u64,
    /// Notices produced.
    pub notices: u64,
}
