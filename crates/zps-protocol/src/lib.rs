//! The zero-pub-sub wire protocol: one JSON object per WebSocket text frame,
//! discriminated by `type`. The seed subset (`init`, `subscribe`,
//! `unsubscribe`, `publish`, `ack`, `replay_request` → `ready`, `subscribed`,
//! `event`, `replay`, `ack`, `unsubscribed`, `error`) is fixed; everything
//! else is an extension in the same style. `docs/protocol.md` documents every
//! message with an example.
//!
//! ```
//! use zps_protocol::{ClientMessage, parse_client};
//! let msg = parse_client(r#"{"type":"subscribe","room":"chat:1","fromSequence":0}"#).unwrap();
//! assert!(matches!(msg, ClientMessage::Subscribe(s) if s.from_sequence == Some(0)));
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use zps_core::{Envelope, EphemeralEvent, Metadata, PresenceMember, Snapshot};

mod codes;
pub mod compact;

pub use codes::{CloseCode, ErrorCode};

/// Longest error `message` text sent to a client (keeps echoes of bad input bounded).
pub const MAX_ERROR_TEXT: usize = 300;

/// Messages a client sends (parse with [`parse_client`]).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Must be the first message: identifies the connection and authenticates it.
    Init(Init),
    /// Subscribe to one or more rooms / `scope:*` patterns.
    Subscribe(Subscribe),
    /// Stop receiving a room or pattern.
    Unsubscribe(Unsubscribe),
    /// Publish a durable event (when the gateway allows client publishing).
    Publish(Publish),
    /// Move this subscriber's cursor.
    Ack(Ack),
    /// One page of history.
    ReplayRequest(ReplayRequest),
    /// Fan out an ephemeral (not stored) event.
    PublishEphemeral(PublishEphemeral),
    /// Receive ephemeral events of rooms.
    SubscribeEphemeral(SubscribeEphemeral),
    /// Stop receiving ephemeral events of rooms.
    UnsubscribeEphemeral(Unsubscribe),
    /// Become present in a room (and receive its presence changes).
    PresenceEnter(PresenceEnter),
    /// Leave a room's presence.
    PresenceLeave(RoomRef),
    /// Receive a room's member list and changes without entering.
    PresenceSubscribe(RoomRef),
    /// Stop receiving a room's presence changes.
    PresenceUnsubscribe(RoomRef),
    /// The room's latest snapshot.
    SnapshotRequest(RoomRef),
    /// Replace the connection's token before it expires.
    RefreshToken(RefreshToken),
    /// Application-level ping (for clients that cannot see WebSocket pings).
    Ping(Ping),
}

impl ClientMessage {
    /// The id the client will match the answer by (`requestId`, or a ping's string `id`):
    /// a refusal must carry it, or the caller only learns of it from its own timeout.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Publish(p) => p.request_id.as_deref(),
            Self::Subscribe(s) => s.request_id.as_deref(),
            Self::ReplayRequest(r) => r.request_id.as_deref(),
            Self::PublishEphemeral(e) => e.request_id.as_deref(),
            Self::SnapshotRequest(r)
            | Self::PresenceLeave(r)
            | Self::PresenceSubscribe(r)
            | Self::PresenceUnsubscribe(r) => r.request_id.as_deref(),
            Self::Ping(p) => p.id.as_ref().and_then(serde_json::Value::as_str),
            _ => None,
        }
    }
}

/// `init`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Init {
    /// Durable id of this device/consumer: ack cursors are kept per subscriber id.
    pub subscriber_id: String,
    /// JWT, required when the gateway verifies tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `subscribe`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscribe {
    /// One room or pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Several rooms or patterns (one `subscribed` answer each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// Deliver only these event types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_types: Option<Vec<String>>,
    /// Deliver events with `sequence > fromSequence` first, then live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_sequence: Option<u64>,
    /// The epoch `fromSequence` belongs to (resume check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// Per-room positions for multi-room resumes (`{"chat:1": 10}`); overrides `fromSequence`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<HashMap<String, u64>>,
    /// Per-room epochs for multi-room resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<HashMap<String, String>>,
    /// Echoed in each `subscribed` and in errors about this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// A room token (signed by the application's backend) opening this one
    /// room, beyond what the connection's token grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_token: Option<String>,
}

/// `unsubscribe` / `unsubscribe_ephemeral`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unsubscribe {
    /// One room or pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Several rooms or patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
}

/// A message naming one room.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomRef {
    /// The room.
    pub room: String,
    /// Echoed back in the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `publish`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Publish {
    /// Echoed in `published` / `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The event.
    pub event: PublishEvent,
    /// Do not deliver the event back to this connection (default: delivered).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclude_self: bool,
}

/// The event of a `publish`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishEvent {
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Target room.
    pub room: String,
    /// Payload JSON (any value).
    #[serde(default = "null_raw")]
    pub payload: Box<RawValue>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Time to live in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Ciphertext marker.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    /// Metadata object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

fn null_raw() -> Box<RawValue> {
    zps_core::envelope::null_payload()
}

/// `ack`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    /// The room.
    pub room: String,
    /// Highest processed sequence.
    pub sequence: u64,
}

/// `replay_request`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayRequest {
    /// The room.
    pub room: String,
    /// Exclusive lower bound.
    #[serde(default)]
    pub from_sequence: u64,
    /// Inclusive upper bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_sequence: Option<u64>,
    /// Page size (default 100, max 10 000; the gateway may cap it lower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only these types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_types: Option<Vec<String>>,
    /// Echoed in the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `publish_ephemeral`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishEphemeral {
    /// Echoed in errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Target room.
    pub room: String,
    /// Event type (`typing`, ...).
    #[serde(rename = "eventType", alias = "event_type")]
    pub event_type: String,
    /// Payload JSON.
    #[serde(default = "null_raw")]
    pub payload: Box<RawValue>,
    /// Deliver back to this connection too (default: not).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub echo: bool,
}

/// `subscribe_ephemeral`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeEphemeral {
    /// One room or pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Several rooms or patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// Only these types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_types: Option<Vec<String>>,
}

/// `presence_enter`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceEnter {
    /// The room.
    pub room: String,
    /// Data shown to other members (name, avatar, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// `refresh_token`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RefreshToken {
    /// The new JWT.
    pub token: String,
}

/// `ping`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Ping {
    /// Echoed in `pong`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

// Payloads are kept as raw JSON, which serde cannot carry through an internally
// tagged enum; so the tag is read first and the frame parsed as that variant.
fn parse_as<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, serde_json::Error> {
    serde_json::from_str(text)
}

/// The `type` of a frame that starts with it, read without a JSON pass
/// (clients put it first; every publish would otherwise be parsed twice).
fn leading_type(text: &str) -> Option<&str> {
    let rest = text.strip_prefix(r#"{"type":""#)?;
    let kind = &rest[..rest.find('"')?];
    (!kind.contains('\\')).then_some(kind)
}

/// Parses one client frame; the error text is bounded and safe to send back.
pub fn parse_client(text: &str) -> Result<ClientMessage, String> {
    let tag: Tag<'_> = match leading_type(text) {
        Some(kind) => Tag { kind: kind.into() },
        None => serde_json::from_str(text).map_err(|e| bounded(&format!("malformed message: {e}")))?,
    };
    let parsed = match tag.kind.as_ref() {
        "init" => parse_as(text).map(ClientMessage::Init),
        "subscribe" => parse_as(text).map(ClientMessage::Subscribe),
        "unsubscribe" => parse_as(text).map(ClientMessage::Unsubscribe),
        "publish" => parse_as(text).map(ClientMessage::Publish),
        "ack" => parse_as(text).map(ClientMessage::Ack),
        "replay_request" => parse_as(text).map(ClientMessage::ReplayRequest),
        "publish_ephemeral" => parse_as(text).map(ClientMessage::PublishEphemeral),
        "subscribe_ephemeral" => parse_as(text).map(ClientMessage::SubscribeEphemeral),
        "unsubscribe_ephemeral" => parse_as(text).map(ClientMessage::UnsubscribeEphemeral),
        "presence_enter" => parse_as(text).map(ClientMessage::PresenceEnter),
        "presence_leave" => parse_as(text).map(ClientMessage::PresenceLeave),
        "presence_subscribe" => parse_as(text).map(ClientMessage::PresenceSubscribe),
        "presence_unsubscribe" => parse_as(text).map(ClientMessage::PresenceUnsubscribe),
        "snapshot_request" => parse_as(text).map(ClientMessage::SnapshotRequest),
        "refresh_token" => parse_as(text).map(ClientMessage::RefreshToken),
        "ping" => parse_as(text).map(ClientMessage::Ping),
        other => return Err(bounded(&format!("unknown message type `{other}`"))),
    };
    parsed.map_err(|e| bounded(&format!("invalid `{}` message: {e}", tag.kind)))
}

/// Truncates client-facing text to [`MAX_ERROR_TEXT`] bytes on a char boundary.
pub fn bounded(text: &str) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Messages the server sends (parse with [`parse_server`]).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The answer to `init`.
    Ready(Ready),
    /// The answer to `subscribe`, one per room or pattern.
    Subscribed(Subscribed),
    /// One stored event.
    Event {
        /// The envelope.
        data: Box<Envelope>,
    },
    /// The answer to `replay_request`.
    Replay(Replay),
    /// The answer to `ack`.
    Ack(Ack),
    /// The answer to `unsubscribe`.
    Unsubscribed {
        /// The room or pattern.
        room: String,
    },
    /// The answer to `publish`.
    Published(Published),
    /// A room's history was reset or trimmed while subscribed.
    Discontinuity(DiscontinuityNotice),
    /// One ephemeral event.
    Ephemeral {
        /// The event (without its origin).
        data: Box<EphemeralData>,
    },
    /// Ephemeral subscription confirmed.
    SubscribedEphemeral {
        /// The room or pattern.
        room: String,
    },
    /// A room's current members.
    PresenceState {
        /// The room.
        room: String,
        /// Members, sorted by user id.
        members: Vec<PresenceMember>,
    },
    /// A member joined or left.
    Presence(PresenceNotice),
    /// The answer to `snapshot_request`.
    Snapshot {
        /// The room.
        room: String,
        /// The snapshot, when one exists.
        snapshot: Option<Box<Snapshot>>,
        /// Echo of the request id.
        #[serde(default, rename = "requestId", skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// The answer to `refresh_token`.
    TokenRefreshed {
        /// New expiry (Unix seconds), if the token has one.
        #[serde(default, rename = "expiresAt", skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
    /// The token will expire soon; send `refresh_token` or the connection closes.
    TokenExpiring {
        /// Expiry (Unix seconds).
        #[serde(rename = "expiresAt")]
        expires_at: u64,
    },
    /// The answer to `ping`.
    Pong(Ping),
    /// Something was refused; `code` is one of [`ErrorCode`].
    Error(ErrorMessage),
}

/// `ready`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    /// Echo of the init's subscriber id.
    pub subscriber_id: String,
    /// This connection's id (used for `excludeSelf` and presence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    /// How often the server pings (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Token expiry (Unix seconds), when the token has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<u64>,
}

/// `subscribed`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscribed {
    /// The room or pattern.
    pub room: String,
    /// The room's epoch (absent for wildcards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The room's newest sequence at subscribe time (absent for wildcards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sequence: Option<u64>,
    /// For resumes: whether every missed event will be delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// When not recovered: `stream_reset` or `position_expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When not recovered: the oldest sequence still available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_sequence: Option<u64>,
    /// Delivery starts after this sequence (exact rooms): the first event is `startAfter + 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_after: Option<u64>,
    /// Echo of the subscribe's request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `replay`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replay {
    /// The room.
    pub room: String,
    /// The page.
    pub events: Vec<Envelope>,
    /// More events may follow after `scannedTo`.
    #[serde(default)]
    pub has_more: bool,
    /// The next page starts after this sequence.
    #[serde(default)]
    pub scanned_to: u64,
    /// Echo of the request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `published`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    /// Echo of the request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The stored event's id.
    pub id: String,
    /// The room.
    pub room: String,
    /// The stored event's sequence.
    pub sequence: u64,
    /// True when the id already existed (nothing new was stored).
    #[serde(default)]
    pub duplicate: bool,
}

impl Published {
    /// The `published` message, written directly (the same bytes as serde's).
    pub fn to_json(&self) -> String {
        use zps_core::envelope::push_json_str;
        let mut out = String::with_capacity(96 + self.id.len() + self.room.len());
        out.push_str(r#"{"type":"published""#);
        if let Some(r) = &self.request_id {
            out.push_str(r#","requestId":"#);
            push_json_str(&mut out, r);
        }
        out.push_str(r#","id":"#);
        push_json_str(&mut out, &self.id);
        out.push_str(r#","room":"#);
        push_json_str(&mut out, &self.room);
        out.push_str(r#","sequence":"#);
        out.push_str(itoa::Buffer::new().format(self.sequence));
        out.push_str(if self.duplicate {
            r#","duplicate":true}"#
        } else {
            r#","duplicate":false}"#
        });
        out
    }
}

/// `discontinuity`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscontinuityNotice {
    /// The room.
    pub room: String,
    /// `stream_reset` or `position_expired`.
    pub reason: String,
    /// The room's current epoch.
    pub epoch: String,
    /// Delivery continues from here.
    pub earliest_sequence: u64,
}

/// An ephemeral event as sent to clients (no origin).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EphemeralData {
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Room.
    pub room: String,
    /// Payload JSON.
    pub payload: Box<RawValue>,
    /// Acceptance time.
    pub emitted_at: zps_core::Timestamp,
    /// Metadata object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

impl From<&EphemeralEvent> for EphemeralData {
    fn from(e: &EphemeralEvent) -> Self {
        Self {
            event_type: e.event_type.clone(),
            room: e.room.to_string(),
            payload: e.payload.clone(),
            emitted_at: e.emitted_at,
            metadata: e.metadata.clone(),
        }
    }
}

/// `presence`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceNotice {
    /// The room.
    pub room: String,
    /// `member_added` or `member_removed`.
    pub action: String,
    /// The user.
    pub user_id: String,
    /// The member (for `member_added`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<PresenceMember>,
}

/// `error`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorMessage {
    /// Human-readable reason.
    pub message: String,
    /// One of [`ErrorCode`] as a string (`"4408"`).
    pub code: String,
    /// The request it answers, when it had an id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The room concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
}

impl ErrorMessage {
    /// An error with a code and a bounded message.
    pub fn new(code: ErrorCode, message: impl AsRef<str>) -> Self {
        Self {
            message: bounded(message.as_ref()),
            code: code.as_str().to_owned(),
            request_id: None,
            room: None,
        }
    }

    /// The code, parsed.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::parse(&self.code)
    }
}

impl ServerMessage {
    /// JSON text of this message.
    pub fn to_json(&self) -> String {
        if let Self::Published(p) = self {
            // Every publish is answered: written directly, same bytes as serde.
            return p.to_json();
        }
        // All variants contain only string-keyed maps and serializable values.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// An error message.
    pub fn error(code: ErrorCode, message: impl AsRef<str>) -> Self {
        Self::Error(ErrorMessage::new(code, message))
    }
}

/// Parses one server frame (for clients).
pub fn parse_server(text: &str) -> Result<ServerMessage, serde_json::Error> {
    #[derive(Deserialize)]
    struct Data<T> {
        data: T,
    }
    #[derive(Deserialize)]
    struct RoomOnly {
        room: String,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct PresenceStateMsg {
        room: String,
        members: Vec<PresenceMember>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct SnapshotMsg {
        room: String,
        snapshot: Option<Box<Snapshot>>,
        #[serde(default)]
        request_id: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Expiry {
        #[serde(default)]
        expires_at: Option<u64>,
    }
    let tag: Tag<'_> = serde_json::from_str(text)?;
    Ok(match tag.kind.as_ref() {
        "ready" => ServerMessage::Ready(parse_as(text)?),
        "subscribed" => ServerMessage::Subscribed(parse_as(text)?),
        "event" => ServerMessage::Event {
            data: parse_as::<Data<Box<Envelope>>>(text)?.data,
        },
        "replay" => ServerMessage::Replay(parse_as(text)?),
        "ack" => ServerMessage::Ack(parse_as(text)?),
        "unsubscribed" => ServerMessage::Unsubscribed {
            room: parse_as::<RoomOnly>(text)?.room,
        },
        "published" => ServerMessage::Published(parse_as(text)?),
        "discontinuity" => ServerMessage::Discontinuity(parse_as(text)?),
        "ephemeral" => ServerMessage::Ephemeral {
            data: parse_as::<Data<Box<EphemeralData>>>(text)?.data,
        },
        "subscribed_ephemeral" => ServerMessage::SubscribedEphemeral {
            room: parse_as::<RoomOnly>(text)?.room,
        },
        "presence_state" => {
            let m: PresenceStateMsg = parse_as(text)?;
            ServerMessage::PresenceState {
                room: m.room,
                members: m.members,
            }
        }
        "presence" => ServerMessage::Presence(parse_as(text)?),
        "snapshot" => {
            let m: SnapshotMsg = parse_as(text)?;
            ServerMessage::Snapshot {
                room: m.room,
                snapshot: m.snapshot,
                request_id: m.request_id,
            }
        }
        "token_refreshed" => ServerMessage::TokenRefreshed {
            expires_at: parse_as::<Expiry>(text)?.expires_at,
        },
        "token_expiring" => ServerMessage::TokenExpiring {
            expires_at: parse_as::<Expiry>(text)?.expires_at.unwrap_or(0),
        },
        "pong" => ServerMessage::Pong(parse_as(text)?),
        "error" => ServerMessage::Error(parse_as(text)?),
        other => {
            return Err(serde::de::Error::custom(format!(
                "unknown server message type `{other}`"
            )));
        }
    })
}

/// The `event` frame for an envelope, built by hand so the envelope JSON is
/// written once and shared by every receiver.
pub fn event_frame(envelope_json: &str) -> String {
    let mut s = String::with_capacity(envelope_json.len() + EVENT_FRAME_PREFIX.len() + 1);
    s.push_str(EVENT_FRAME_PREFIX);
    s.push_str(envelope_json);
    s.push('}');
    s
}

/// What an `event` frame starts with; the envelope JSON follows, then `}`.
pub const EVENT_FRAME_PREFIX: &str = r#"{"type":"event","data":"#;

/// The `event` frame of `envelope`, serialized in one pass (the fan-out's hot path).
pub fn write_event_frame(envelope: &Envelope) -> String {
    let mut s = String::with_capacity(envelope.json_len_hint() + EVENT_FRAME_PREFIX.len() + 1);
    s.push_str(EVENT_FRAME_PREFIX);
    envelope.write_json(&mut s);
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_messages_parse() {
        let cases = [
            r#"{"type":"init","subscriberId":"device-1","token":"jwt"}"#,
            r#"{"type":"subscribe","room":"chat:123","eventTypes":["message.created"],"fromSequence":0}"#,
            r#"{"type":"unsubscribe","room":"chat:123"}"#,
            r#"{"type":"publish","event":{"type":"message.created","room":"chat:123","payload":{"text":"Hello"}}}"#,
            r#"{"type":"ack","room":"chat:123","sequence":10}"#,
            r#"{"type":"replay_request","room":"chat:123","fromSequence":10,"limit":100}"#,
        ];
        for c in cases {
            parse_client(c).unwrap_or_else(|e| panic!("{c}: {e}"));
        }
        match parse_client(cases[3]).unwrap() {
            ClientMessage::Publish(p) => {
                assert_eq!(p.event.payload.get(), r#"{"text":"Hello"}"#);
                assert_eq!(p.event.room, "chat:123");
                assert!(!p.exclude_self);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        for bad in [
            "",
            "{",
            "[]",
            "null",
            r#"{"type":"nope"}"#,
            r#"{"type":"ack","room":"chat:1","sequence":"ten"}"#,
            r#"{"type":"ack","room":5,"sequence":1}"#,
            r#"{"type":"init"}"#,
            r#"{"room":"chat:1"}"#,
            r#"{"type":"ack","room":"chat:1","sequence":-1}"#,
        ] {
            assert!(parse_client(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_messages_have_seed_shapes() {
        let ready = ServerMessage::Ready(Ready {
            subscriber_id: "device-1".into(),
            connection_id: None,
            heartbeat_interval_ms: None,
            token_expires_at: None,
        });
        assert_eq!(ready.to_json(), r#"{"type":"ready","subscriberId":"device-1"}"#);
        let sub = ServerMessage::Subscribed(Subscribed {
            room: "chat:123".into(),
            ..Default::default()
        });
        assert_eq!(sub.to_json(), r#"{"type":"subscribed","room":"chat:123"}"#);
        let err = ServerMessage::error(ErrorCode::AccessDenied, "Access denied for room: chat:123");
        assert_eq!(
            err.to_json(),
            r#"{"type":"error","message":"Access denied for room: chat:123","code":"4408"}"#
        );
        let unsub = ServerMessage::Unsubscribed {
            room: "chat:1".into(),
        };
        assert_eq!(unsub.to_json(), r#"{"type":"unsubscribed","room":"chat:1"}"#);
        let ack = ServerMessage::Ack(Ack {
            room: "chat:123".into(),
            sequence: 1,
        });
        assert_eq!(ack.to_json(), r#"{"type":"ack","room":"chat:123","sequence":1}"#);
    }

    #[test]
    fn server_messages_round_trip_through_parse_server() {
        let env: Envelope = serde_json::from_str(
            r#"{"id":"e1","type":"t","room":"chat:1","sequence":3,"emittedAt":"2026-01-01T00:00:00.000Z","expiresAt":"2026-01-02T00:00:00.000Z","payload":{"a":[1,2]}}"#,
        )
        .unwrap();
        let frame = event_frame(&env.to_json());
        match parse_server(&frame).unwrap() {
            ServerMessage::Event { data } => {
                assert_eq!(data.sequence, 3);
                assert_eq!(data.payload.get(), r#"{"a":[1,2]}"#);
            }
            other => panic!("{other:?}"),
        }
        let msgs = [
            ServerMessage::error(ErrorCode::RateLimited, "slow down"),
            ServerMessage::Unsubscribed {
                room: "chat:1".into(),
            },
            ServerMessage::Replay(Replay {
                room: "chat:1".into(),
                events: vec![env],
                has_more: true,
                scanned_to: 3,
                request_id: Some("r".into()),
            }),
            ServerMessage::TokenExpiring { expires_at: 5 },
            ServerMessage::Pong(Ping { id: Some(7.into()) }),
        ];
        for m in msgs {
            let json = m.to_json();
            let back = parse_server(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(back.to_json(), json);
        }
        assert!(parse_server(r#"{"type":"bogus"}"#).is_err());
    }

    #[test]
    fn unknown_types_are_named_in_the_error() {
        let e = parse_client(r#"{"type":"bogus"}"#).unwrap_err();
        assert!(e.contains("unknown message type `bogus`"), "{e}");
        let e = parse_client(r#"{"type":"ack","room":"chat:1"}"#).unwrap_err();
        assert!(e.contains("invalid `ack` message"), "{e}");
    }

    #[test]
    fn the_leading_type_shortcut_agrees_with_a_full_parse() {
        assert_eq!(leading_type(r#"{"type":"publish","event":{}}"#), Some("publish"));
        assert_eq!(leading_type(r#"{ "type": "publish"}"#), None);
        assert_eq!(leading_type(r#"{"type":"pub\"lish"}"#), None);
        assert_eq!(leading_type(r#"{"room":"x","type":"ack"}"#), None);
        // Either way the same message and the same refusals.
        for text in [
            r#"{"type":"ack","room":"chat:1","sequence":3}"#,
            r#"{"room":"chat:1","sequence":3,"type":"ack"}"#,
        ] {
            assert!(matches!(parse_client(text), Ok(ClientMessage::Ack(a)) if a.sequence == 3));
        }
        assert!(
            parse_client(r#"{"type":"nope"}"#)
                .unwrap_err()
                .contains("unknown message type")
        );
        assert!(
            parse_client(r#"{"type":"ack","room":"chat:1"}"#)
                .unwrap_err()
                .contains("invalid `ack` message")
        );
        assert!(parse_client(r#"{"type":"ack","room":"chat:1","sequence":1"#).is_err());
    }

    #[test]
    fn published_is_written_as_serde_would() {
        for (request_id, id, duplicate) in [(Some("r\"1"), "m-1", false), (None, "0193-\u{7}-é", true)] {
            let p = Published {
                request_id: request_id.map(str::to_owned),
                id: id.to_owned(),
                room: "chat:1".into(),
                sequence: 42,
                duplicate,
            };
            let msg = ServerMessage::Published(p);
            assert_eq!(msg.to_json(), serde_json::to_string(&msg).unwrap());
        }
    }

    #[test]
    fn event_frame_wraps_the_envelope() {
        let frame = event_frame(r#"{"id":"e1","sequence":1}"#);
        assert_eq!(frame, r#"{"type":"event","data":{"id":"e1","sequence":1}}"#);
        assert!(serde_json::from_str::<serde_json::Value>(&frame).is_ok());
    }

    #[test]
    fn error_text_is_bounded() {
        let m = ErrorMessage::new(ErrorCode::Malformed, "é".repeat(1000));
        assert!(m.message.len() <= MAX_ERROR_TEXT + 3);
    }
}
