//! The [`Transport`] trait: the one contract between the engine and a storage /
//! fanout provider (memory, PostgreSQL, MongoDB, Redis, hybrid).
//!
//! Transports are deliberately thin: they store, number and fan out events.
//! Ordering repair, catch-up/live switching, retries, flow control and
//! middleware live in the engine so every provider gets them for free.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::Serialize;

use crate::envelope::{DlqEntry, Envelope, EphemeralEvent, NewDlqEntry, NewEvent, PresenceMember, Snapshot};
use crate::error::Result;
use crate::room::{Room, RoomPattern};

/// Largest page a single replay call may return.
pub const MAX_REPLAY_LIMIT: usize = 10_000;
/// Page size when none is given.
pub const DEFAULT_REPLAY_LIMIT: usize = 100;

/// The result of storing an event.
#[derive(Debug, Clone)]
pub struct PublishOutcome {
    /// The stored envelope (for a duplicate id: the original one).
    pub envelope: Arc<Envelope>,
    /// True when the id already existed and nothing new was stored or delivered.
    pub duplicate: bool,
}

/// Which page of a room's history to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayQuery {
    /// The room to read.
    pub room: Room,
    /// Exclusive lower bound: events with `sequence > from_sequence`.
    pub from_sequence: u64,
    /// Inclusive upper bound.
    pub to_sequence: Option<u64>,
    /// Only these event types (all when `None`).
    pub event_types: Option<Vec<String>>,
    /// Maximum events in the page (clamped to [`MAX_REPLAY_LIMIT`]).
    pub limit: usize,
}

impl ReplayQuery {
    /// A query for `room` after `from_sequence`, default limit.
    pub fn new(room: Room, from_sequence: u64) -> Self {
        Self {
            room,
            from_sequence,
            to_sequence: None,
            event_types: None,
            limit: DEFAULT_REPLAY_LIMIT,
        }
    }

    /// Sets the inclusive upper bound.
    pub fn to(mut self, to_sequence: u64) -> Self {
        self.to_sequence = Some(to_sequence);
        self
    }

    /// Sets the page size.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Keeps only these event types.
    pub fn types<I: IntoIterator<Item = S>, S: Into<String>>(mut self, types: I) -> Self {
        self.event_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// Whether an event of this type passes the type filter.
    pub fn accepts_type(&self, event_type: &str) -> bool {
        self.event_types
            .as_ref()
            .is_none_or(|types| types.iter().any(|t| t == event_type))
    }

    /// The limit clamped to `1..=MAX_REPLAY_LIMIT`.
    pub fn effective_limit(&self) -> usize {
        self.limit.clamp(1, MAX_REPLAY_LIMIT)
    }
}

/// One page of replayed events.
#[derive(Debug, Clone, Default)]
pub struct ReplayPage {
    /// Matching, unexpired events in sequence order.
    pub events: Vec<Arc<Envelope>>,
    /// Highest sequence this page examined (matching or not); the next page starts after
    /// it, so a rarely-matching type filter never stalls a cursor. Every sequence up to
    /// it is final: in the page, filtered out, expired, or never going to exist.
    pub scanned_to: u64,
    /// No event after `scanned_to` (within the bounds) exists right now.
    pub exhausted: bool,
}

pub use zps_model::room_sync::RoomInfo;

/// A room whose dead-letter queue is not empty: one row of the operator's index
/// of dead letters across every room (`GET /api/v1/dlq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DlqRoom {
    /// The room.
    pub room: Room,
    /// How many dead letters it holds.
    pub len: u64,
}

/// What a provider can do, so the engine and gateway adapt instead of guessing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// History survives a process restart.
    pub durable: bool,
    /// History is kept and can be replayed at all.
    pub history: bool,
    /// Live events reach subscribers in other processes.
    pub cross_process: bool,
    /// How long the engine waits for an out-of-order gap to fill by itself before it
    /// fetches the missing range from history (zero for in-order live paths).
    pub reorder_window: Duration,
}

/// What a live subscription yields.
#[derive(Debug, Clone)]
pub enum LiveSignal {
    /// A stored event.
    Event(Arc<Envelope>),
    /// Live messages may have been lost (channel overflow, fanout connection
    /// reconnected); the engine re-reads history from its cursors. `None` = every room.
    Lagged(Option<RoomPattern>),
    /// The room's history was reset (new epoch); sequences restart.
    Reset {
        /// The affected room.
        room: Room,
        /// Its new epoch.
        epoch: String,
    },
}

/// A live event stream; ends when the transport closes.
pub type LiveStream = BoxStream<'static, LiveSignal>;
/// A synchronous receiver of stored events (see [`Transport::tap`]).
pub type LiveTap = crate::fanout::Tap<Arc<Envelope>>;
/// A live ephemeral stream; ends when the transport closes.
pub type EphemeralStream = BoxStream<'static, Arc<EphemeralEvent>>;

/// Overall health of a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Everything works.
    Healthy,
    /// Works with reduced guarantees (e.g. hybrid with its fanout leg down).
    Degraded,
    /// Cannot serve.
    Unhealthy,
}

/// A provider's health report.
#[derive(Debug, Clone, Serialize)]
pub struct TransportHealth {
    /// Provider name.
    pub provider: String,
    /// Overall status.
    pub status: HealthStatus,
    /// Provider-specific details (listener state, pool size, ...).
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl TransportHealth {
    /// A healthy report with no details.
    pub fn healthy(provider: &str) -> Self {
        Self {
            provider: provider.to_owned(),
            status: HealthStatus::Healthy,
            details: serde_json::Map::new(),
        }
    }

    /// Marks the report unhealthy, with the reason under `error` so every
    /// provider's report reads the same to operators.
    pub fn fail(&mut self, error: impl Into<String>) {
        self.status = HealthStatus::Unhealthy;
        self.details.insert("error".into(), error.into().into());
    }
}

/// Storage and fanout behind the engine. Object-safe: hold it as `Arc<dyn Transport>`.
///
/// Contract every implementation must honour (checked by `zps-conformance`):
/// sequences per room start at 1 and increase by exactly one per stored event,
/// with no gaps and no duplicates under concurrent publishers; a duplicate id
/// returns the original envelope and is not delivered again; live signals of one
/// room are delivered in sequence order unless [`Capabilities::reorder_window`]
/// is non-zero; replay never returns expired events.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Short provider name (`memory`, `postgres`, ...).
    fn name(&self) -> &'static str;

    /// What this provider offers.
    fn capabilities(&self) -> Capabilities;

    /// Stores the event under the room's next sequence and fans it out.
    async fn publish(&self, event: NewEvent) -> Result<PublishOutcome>;

    /// Whether [`Transport::publish_batch`] stores many events in one round trip
    /// (providers that override it say so). The engine then keeps a copy of a
    /// batch to retry it event by event if the batch fails; otherwise it stores
    /// event by event directly.
    fn batches_publishes(&self) -> bool {
        false
    }

    /// Stores several events (possibly in different rooms). Providers that can batch override this.
    async fn publish_batch(&self, events: Vec<NewEvent>) -> Result<Vec<PublishOutcome>> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            out.push(self.publish(e).await?);
        }
        Ok(out)
    }

    /// Delivers an envelope that another transport numbered and stored to this
    /// transport's live subscribers (the hybrid provider's fan-out leg). Providers
    /// without a cross-process live path need not support it.
    async fn fanout(&self, envelope: Arc<Envelope>) -> Result<()> {
        let _ = envelope;
        Err(crate::error::Error::Unsupported {
            provider: self.name(),
            what: "fan-out of envelopes stored elsewhere".into(),
        })
    }

    /// Opens a live stream for these rooms/patterns. Events published after this
    /// returns are delivered; earlier ones are read with [`Transport::replay`].
    async fn subscribe(&self, patterns: &[RoomPattern]) -> Result<LiveStream>;

    /// Runs `tap` for every event of `pattern` stored from now on, on the
    /// storing path itself: synchronously, in sequence order, none missing, no
    /// task hop. Only transports whose local live path has those properties
    /// offer it (the embedded memory transport); the others return `None` and
    /// callers use [`Transport::subscribe`]. A tap must not block or call back
    /// into the transport.
    fn tap(&self, pattern: &RoomPattern, tap: LiveTap) -> Option<crate::fanout::TapGuard> {
        let _ = (pattern, tap);
        None
    }

    /// Reads one page of history.
    async fn replay(&self, query: &ReplayQuery) -> Result<ReplayPage>;

    /// The room's epoch and retained range.
    async fn room_info(&self, room: &Room) -> Result<RoomInfo>;

    /// Moves a subscriber's cursor forward (never back); returns the stored cursor.
    async fn ack(&self, room: &Room, subscriber_id: &str, sequence: u64) -> Result<u64>;

    /// The subscriber's cursor, if it ever acked.
    async fn cursor(&self, room: &Room, subscriber_id: &str) -> Result<Option<u64>>;

    /// Snapshots of folded room state, when offered.
    fn snapshots(&self) -> Option<&dyn SnapshotStore> {
        None
    }

    /// Dead-letter queues, when offered.
    fn dead_letters(&self) -> Option<&dyn DeadLetterStore> {
        None
    }

    /// Ephemeral (never stored) fan-out, when offered.
    fn ephemeral(&self) -> Option<&dyn EphemeralBus> {
        None
    }

    /// Presence of connections in rooms, when offered.
    fn presence(&self) -> Option<&dyn PresenceStore> {
        None
    }

    /// Deleting expired events on demand, when offered (providers whose store
    /// expires events itself need not).
    fn retention(&self) -> Option<&dyn Retention> {
        None
    }

    /// Reachability and details.
    async fn health(&self) -> TransportHealth;

    /// Releases owned resources; live streams end.
    async fn close(&self) -> Result<()>;
}

/// Writes, inside an `impl Transport`, every capability accessor as
/// `Some(self)`: for a provider that implements all five capability traits.
///
/// ```ignore
/// impl Transport for MyTransport {
///     zps_core::offer_every_capability!();
///     // … the core methods …
/// }
/// ```
#[macro_export]
macro_rules! offer_every_capability {
    () => {
        fn snapshots(&self) -> Option<&dyn $crate::transport::SnapshotStore> {
            Some(self)
        }
        fn dead_letters(&self) -> Option<&dyn $crate::transport::DeadLetterStore> {
            Some(self)
        }
        fn ephemeral(&self) -> Option<&dyn $crate::transport::EphemeralBus> {
            Some(self)
        }
        fn presence(&self) -> Option<&dyn $crate::transport::PresenceStore> {
            Some(self)
        }
        fn retention(&self) -> Option<&dyn $crate::transport::Retention> {
            Some(self)
        }
    };
}

impl dyn Transport {
    /// The snapshot store, or `Unsupported` naming the provider.
    pub fn require_snapshots(&self) -> Result<&dyn SnapshotStore> {
        self.snapshots()
            .ok_or_else(|| unsupported(self.name(), "snapshots"))
    }

    /// The dead-letter queues, or `Unsupported`.
    pub fn require_dead_letters(&self) -> Result<&dyn DeadLetterStore> {
        self.dead_letters()
            .ok_or_else(|| unsupported(self.name(), "dead-letter queues"))
    }

    /// The ephemeral fan-out, or `Unsupported`.
    pub fn require_ephemeral(&self) -> Result<&dyn EphemeralBus> {
        self.ephemeral()
            .ok_or_else(|| unsupported(self.name(), "ephemeral events"))
    }

    /// The presence store, or `Unsupported`.
    pub fn require_presence(&self) -> Result<&dyn PresenceStore> {
        self.presence()
            .ok_or_else(|| unsupported(self.name(), "presence"))
    }
}

fn unsupported(provider: &'static str, what: &str) -> crate::error::Error {
    crate::error::Error::Unsupported {
        provider,
        what: what.into(),
    }
}

/// A provider's snapshots: one folded state per room, replaced on write.
#[async_trait]
pub trait SnapshotStore: Send + Sync {
    /// Stores (replaces) the room's snapshot.
    async fn put_snapshot(&self, snapshot: Snapshot) -> Result<()>;

    /// The room's latest snapshot.
    async fn get_snapshot(&self, room: &Room) -> Result<Option<Snapshot>>;
}

/// A provider's dead-letter queues: failed events parked per room for inspection
/// and repair, with an index of the rooms that hold some.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Parks a failed event in the room's dead-letter queue.
    async fn dlq_write(&self, room: &Room, entry: NewDlqEntry) -> Result<DlqEntry>;

    /// Dead letters with `entry_id > after`, oldest first.
    async fn dlq_list(&self, room: &Room, after: u64, limit: usize) -> Result<Vec<DlqEntry>>;

    /// Removes dead letters; returns how many existed.
    async fn dlq_remove(&self, room: &Room, entry_ids: &[u64]) -> Result<u64>;

    /// How many dead letters the room holds.
    async fn dlq_len(&self, room: &Room) -> Result<u64>;

    /// Rooms holding dead letters whose name starts with `prefix`, in name
    /// order after `after`, at most `limit`: where an operator finds them
    /// without knowing the rooms (the store's view, so cluster-wide).
    async fn dlq_rooms(&self, prefix: &str, after: Option<&Room>, limit: usize) -> Result<Vec<DlqRoom>>;
}

/// A provider's ephemeral fan-out: events delivered live and never stored.
#[async_trait]
pub trait EphemeralBus: Send + Sync {
    /// Fans out an ephemeral event (not stored).
    async fn publish_ephemeral(&self, event: Arc<EphemeralEvent>) -> Result<()>;

    /// Opens a live stream of ephemeral events.
    async fn subscribe_ephemeral(&self, patterns: &[RoomPattern]) -> Result<EphemeralStream>;
}

/// A provider's presence: which users are in a room, over their connections.
#[async_trait]
pub trait PresenceStore: Send + Sync {
    /// Records that `connection` of `member.user_id` is present for `ttl`; returns
    /// true when the user was not present before (a join to announce).
    ///
    /// Metadata belongs to the member (the user), not to a connection:
    /// `Some(metadata)` replaces it (the latest enter wins, for every connection
    /// of the user); `None` keeps whatever the member has, so a heartbeat or a
    /// second connection without metadata never erases it. The member keeps its
    /// metadata while any of its connections is live; when the last one leaves or
    /// expires, the member and its metadata are gone (a later enter starts afresh).
    async fn presence_enter(
        &self,
        room: &Room,
        member: PresenceMember,
        connection: &str,
        ttl: Duration,
    ) -> Result<bool>;

    /// Removes one connection of a user; returns true when the user has no
    /// connection left (a leave to announce).
    async fn presence_leave(&self, room: &Room, user_id: &str, connection: &str) -> Result<bool>;

    /// Current members of the room (expired connections excluded).
    async fn presence_members(&self, room: &Room) -> Result<Vec<PresenceMember>>;

    /// Drops connections whose TTL lapsed; returns `(room, user_id)` of users that left.
    async fn presence_sweep(&self) -> Result<Vec<(Room, String)>>;
}

/// Deleting expired events on demand.
#[async_trait]
pub trait Retention: Send + Sync {
    /// Deletes expired events; returns how many were removed.
    async fn prune_expired(&self) -> Result<u64>;
}
