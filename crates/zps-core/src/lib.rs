//! zero-pub-sub core: rooms, envelopes, sequences, the [`Transport`] trait, the
//! [`Realtime`] engine that wraps a transport, and the embedded in-memory
//! transport (the default provider).
//!
//! An application publishes an event once; the transport gives it the next
//! gap-free sequence of its room and stores it; the engine delivers it to every
//! subscription in order, after first replaying whatever the subscriber missed.
//!
//! ```
//! use zps_core::{Realtime, PublishRequest, CatchUpOptions, room};
//! use futures::TryStreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), zps_core::Error> {
//! let realtime = Realtime::memory();
//! let orders = room("order", "42")?;
//! for status in ["created", "paid", "shipped"] {
//!     let e = realtime
//!         .publish(PublishRequest::new(orders.clone(), "order.status", &serde_json::json!({"status": status}))?)
//!         .await?;
//!     println!("stored #{} in {}", e.sequence, e.room);
//! }
//! // A worker drains what it has not acked yet, page by page.
//! let events: Vec<_> = realtime
//!     .catch_up(CatchUpOptions::new(orders.clone()).subscriber("billing"))
//!     .try_collect()
//!     .await?;
//! assert_eq!(events.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![1, 2, 3]);
//! realtime.ack(&orders, 3, "billing").await?;
//! # Ok(()) }
//! ```

pub mod engine;
pub mod error;
pub mod fanout;
pub mod fast_hash;
pub mod memory;
pub mod metrics;
pub mod middleware;
pub mod transport;

// The shared model lives in `zps-model` (no async runtime, so clients use it
// without the engine); its modules keep their paths here.
pub use zps_model::room::{self};
pub use zps_model::{backoff, envelope, room_sync, sequence, time};

pub use backoff::Backoff;
pub use engine::{
    BackoffStrategy, CatchUp, CatchUpOptions, CatchUpStream, DefaultStart, Discontinuity,
    DiscontinuityReason, Dlq, EngineConfig, EphemeralRequest, FlowControl, FlowStrategy, HandlerError,
    Health, ListenerGuard, PRESENCE_JOINED, PRESENCE_LEFT, Presence, PresenceChange, Realtime,
    RealtimeBuilder, RetryPolicy, RoomStart, SubscribeOptions, Subscription, SubscriptionHandle,
    SubscriptionItem, check_continuity,
};
pub use envelope::{
    DlqEntry, Envelope, EphemeralEvent, Metadata, NewDlqEntry, NewEvent, Payload, PresenceMember,
    PublishRequest, Snapshot,
};
pub use error::{Error, ErrorCode, Result, TransportError, TransportErrorKind};
pub use fanout::TapGuard;
pub use memory::{MemoryConfig, MemoryTransport};
pub use metrics::MetricsSnapshot;
pub use room::{Room, RoomError, RoomPattern, room};
pub use time::Timestamp;
pub use transport::{
    Capabilities, DeadLetterStore, DlqRoom, EphemeralBus, HealthStatus, LiveSignal, LiveTap, PresenceStore,
    PublishOutcome, ReplayPage, ReplayQuery, Retention, RoomInfo, SnapshotStore, Transport, TransportHealth,
};

/// The README's examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
