//! What a client sends: one enum of messages, their bodies, and the parser that
//! reads the `type` first so a bad body gets an error naming its message.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use zps_model::Metadata;

use crate::*;

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

pub(crate) fn null_raw() -> Box<RawValue> {
    zps_model::envelope::null_payload()
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

/// The `type` of a frame, read before its body.
#[derive(Deserialize)]
pub(crate) struct Tag<'a> {
    #[serde(rename = "type", borrow)]
    pub(crate) kind: std::borrow::Cow<'a, str>,
}

// Payloads are kept as raw JSON, which serde cannot carry through an internally
// tagged enum; so the tag is read first and the frame parsed as that variant.
pub(crate) fn parse_as<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, serde_json::Error> {
    serde_json::from_str(text)
}

/// The `type` of a frame that starts with it, read without a JSON pass
/// (clients put it first; every publish would otherwise be parsed twice).
pub(crate) fn leading_type(text: &str) -> Option<&str> {
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
