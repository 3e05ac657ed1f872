//! What the gateway sends: one enum of messages, their bodies, the parser the
//! clients use, and the event frame written once and shared by every subscriber.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use zps_model::{Envelope, EphemeralEvent, Metadata, PresenceMember, Snapshot};

use crate::*;

use crate::client::{Tag, parse_as};

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
        published_json(
            self.request_id.as_deref(),
            &self.id,
            &self.room,
            self.sequence,
            self.duplicate,
        )
    }
}

/// The `published` answer from borrowed parts: every publish is answered, so
/// the gateway writes it without building a [`Published`] (no copies of the id
/// and room). The same bytes as serde's.
pub fn published_json(
    request_id: Option<&str>,
    id: &str,
    room: &str,
    sequence: u64,
    duplicate: bool,
) -> String {
    use zps_model::envelope::push_json_str;
    let mut out = String::with_capacity(96 + id.len() + room.len() + request_id.map_or(0, str::len));
    out.push_str(r#"{"type":"published""#);
    if let Some(r) = request_id {
        out.push_str(r#","requestId":"#);
        push_json_str(&mut out, r);
    }
    out.push_str(r#","id":"#);
    push_json_str(&mut out, id);
    out.push_str(r#","room":"#);
    push_json_str(&mut out, room);
    out.push_str(r#","sequence":"#);
    out.push_str(itoa::Buffer::new().format(sequence));
    out.push_str(if duplicate {
        r#","duplicate":true}"#
    } else {
        r#","duplicate":false}"#
    });
    out
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
    pub emitted_at: zps_model::Timestamp,
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
