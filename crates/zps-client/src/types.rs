//! What the client hands to the application: delivered items, connection
//! states, publish receipts, presence and ephemeral messages.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use zps_model::{DiscontinuityReason, Envelope, Metadata, PresenceMember, PublishRequest};

use crate::error::ClientError;

/// One item of a subscription, in the order the application must see it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A stored event: each room's events arrive exactly once, in sequence order.
    Event(Arc<Envelope>),
    /// Events between `last_delivered` and `earliest_sequence` can never be delivered
    /// (history reset or expired); delivery continues at `earliest_sequence`.
    Discontinuity {
        /// The room concerned.
        room: String,
        /// `StreamReset` (new epoch: old sequences mean nothing) or `PositionExpired`.
        reason: DiscontinuityReason,
        /// The room's new epoch (`None` when only inferred, for wildcard rooms).
        epoch: Option<String>,
        /// The first sequence that will be delivered next (or later, if it expired too).
        earliest_sequence: u64,
        /// The last sequence this client had delivered before (0 when none).
        last_delivered: u64,
    },
    /// The server refused to (re)subscribe this room; nothing more will arrive for it.
    Refused {
        /// The room or pattern.
        room: String,
        /// The server's answer.
        error: ClientError,
    },
}

impl ClientEvent {
    /// The envelope, when this is an event.
    pub fn envelope(&self) -> Option<&Arc<Envelope>> {
        match self {
            Self::Event(e) => Some(e),
            _ => None,
        }
    }

    /// The room this item concerns.
    pub fn room(&self) -> &str {
        match self {
            Self::Event(e) => e.room.as_str(),
            Self::Discontinuity { room, .. } | Self::Refused { room, .. } => room,
        }
    }
}

/// The connection's lifecycle, observable through [`crate::Client::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// A connection attempt (TCP, WebSocket handshake, `init`) is in progress.
    Connecting,
    /// `ready` was received; subscriptions are (being) restored.
    Connected,
    /// Waiting `delay` before attempt number `attempt` (1-based).
    Reconnecting {
        /// The attempt that will follow the delay.
        attempt: u32,
        /// The jittered delay being waited.
        delay: Duration,
    },
    /// Stopped for good: `reason` is `None` after [`crate::Client::close`].
    Closed {
        /// Why the client stopped on its own.
        reason: Option<ClientError>,
    },
}

/// The server's receipt for a durable publish.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Published {
    /// The stored event's id (the idempotency key).
    pub id: String,
    /// The room.
    pub room: String,
    /// The stored event's sequence.
    pub sequence: u64,
    /// True when an event with this id already existed (nothing new was stored).
    pub duplicate: bool,
}

/// A durable event to publish (client publishing must be enabled on the gateway).
/// The room is checked when it is published (the gateway has the last word).
#[derive(Debug, Clone)]
pub struct OutgoingEvent {
    pub(crate) request: PublishRequest<String>,
    pub(crate) exclude_self: bool,
}

impl OutgoingEvent {
    /// An event with a JSON-serializable payload.
    pub fn new<T: serde::Serialize + ?Sized>(
        room: impl Into<String>,
        event_type: impl Into<String>,
        payload: &T,
    ) -> Result<Self, ClientError> {
        let payload =
            serde_json::value::to_raw_value(payload).map_err(|e| ClientError::Payload(e.to_string()))?;
        Ok(Self::raw(room, event_type, payload))
    }

    /// An event with already-serialized JSON.
    pub fn raw(room: impl Into<String>, event_type: impl Into<String>, payload: Box<RawValue>) -> Self {
        Self {
            request: PublishRequest::raw(room.into(), event_type, payload),
            exclude_self: false,
        }
    }

    /// Sets the idempotency key (otherwise the client generates one, so a publish
    /// re-sent after a reconnect is stored once).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.request = self.request.with_id(id);
        self
    }

    /// Sets the time to live.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.request = self.request.with_ttl(ttl);
        self
    }

    /// Marks the payload as ciphertext the server never inspects.
    pub fn encrypted(mut self) -> Self {
        self.request = self.request.encrypted();
        self
    }

    /// Adds one metadata key.
    pub fn with_metadata(mut self, key: impl Into<String>, value: serde_json::Value) -> Self {
        self.request = self.request.with_metadata(key, value);
        self
    }

    /// Does not deliver the event back to this connection.
    pub fn exclude_self(mut self) -> Self {
        self.exclude_self = true;
        self
    }
}

/// One ephemeral (not stored, not replayed) event.
#[derive(Debug, Clone)]
pub struct EphemeralMessage {
    /// Event type (`typing`, `cursor`, ...).
    pub event_type: String,
    /// The room.
    pub room: String,
    /// Payload JSON.
    pub payload: Box<RawValue>,
    /// When the server accepted it.
    pub emitted_at: zps_model::Timestamp,
    /// Metadata, when any.
    pub metadata: Option<Metadata>,
}

/// A presence change of a watched room.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PresenceEvent {
    /// The full member list (on watch, on enter/leave answers, after a reconnect).
    Members {
        /// The room.
        room: String,
        /// Members sorted by user id.
        members: Vec<PresenceMember>,
    },
    /// A user joined.
    Joined {
        /// The room.
        room: String,
        /// The user.
        user_id: String,
        /// The member record, when the server sent it.
        member: Option<PresenceMember>,
    },
    /// A user left (last connection gone or timed out).
    Left {
        /// The room.
        room: String,
        /// The user.
        user_id: String,
    },
}

/// Where the client stands in one room (for persisting and resuming elsewhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPosition {
    /// Last sequence handed to the subscription (0 when none yet known).
    pub sequence: u64,
    /// The epoch it belongs to, when the server reported one.
    pub epoch: Option<String>,
}
