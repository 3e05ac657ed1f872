//! zero-pub-sub's shared model, with no I/O and no async runtime: the types
//! every part speaks (rooms, envelopes, timestamps), the per-room ordering
//! rule ([`RoomSync`]) that the engine, the gateway and the client each drive,
//! and the retry backoff they share.
//!
//! The engine (`zps-core`), the wire protocol (`zps-protocol`) and the client
//! (`zps-client`) all depend on this crate, so a client never pulls in the
//! engine and the ordering rule exists once.

pub mod backoff;
pub mod envelope;
pub mod error;
pub mod room;
pub mod room_sync;
pub mod sequence;
pub mod time;

pub use backoff::Backoff;
pub use envelope::{
    DlqEntry, Envelope, EphemeralEvent, Metadata, NewDlqEntry, NewEvent, Payload, PresenceMember,
    PublishRequest, Sequenced, Snapshot,
};
pub use error::Error;
pub use room::{Room, RoomError, RoomPattern, room};
pub use room_sync::{DiscontinuityReason, RoomSync};
pub use time::Timestamp;
