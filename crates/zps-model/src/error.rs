//! The model's one error: an event that cannot be built as given.

use crate::room::RoomError;

/// Why an event, room or option was refused before anything was sent or stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A room, scope or pattern is malformed.
    #[error(transparent)]
    InvalidRoom(#[from] RoomError),
    /// An event field is malformed (empty id, zero TTL, unserializable payload, ...).
    #[error("invalid event: {0}")]
    InvalidEvent(String),
}
