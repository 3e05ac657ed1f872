//! Pre-serialized frames. An event is serialized once per fan-out and the
//! bytes are shared (reference-counted) by every receiving connection, in the
//! WebSocket encoding and, lazily, in the SSE encoding.

use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::Serialize;
use zps_core::{Envelope, EphemeralEvent, PRESENCE_JOINED, PresenceMember};
use zps_protocol::compact::encode_event;
use zps_protocol::{EVENT_FRAME_PREFIX, EphemeralData, PresenceNotice, ServerMessage, write_event_frame};

/// Which encoding a connection needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnKind {
    /// JSON messages in WebSocket text frames.
    Ws,
    /// Like `Ws`, but events as compact binary frames (`zps.compact.v1`).
    WsCompact,
    /// `text/event-stream` records.
    Sse,
}

/// One unit of outbound data.
#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    /// A WebSocket text frame.
    Ws(Utf8Bytes),
    /// A WebSocket binary frame (a compact event).
    WsBinary(Bytes),
    /// SSE bytes.
    Sse(Bytes),
    /// Close the connection with this code.
    Close(zps_protocol::CloseCode),
}

impl Outbound {
    /// Bytes this item adds to the connection's backlog.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Ws(t) => t.len(),
            Self::WsBinary(b) => b.len(),
            Self::Sse(b) => b.len(),
            Self::Close(_) => 0,
        }
    }
}

/// A stored event, serialized lazily once per encoding.
pub(crate) struct EventFrame {
    pub(crate) envelope: Arc<Envelope>,
    ws: OnceLock<Utf8Bytes>,
    compact: OnceLock<Bytes>,
    sse: OnceLock<Bytes>,
}

impl EventFrame {
    pub(crate) fn new(envelope: Arc<Envelope>) -> Self {
        Self {
            envelope,
            ws: OnceLock::new(),
            compact: OnceLock::new(),
            sse: OnceLock::new(),
        }
    }
}

impl zps_core::envelope::Sequenced for EventFrame {
    fn sequence(&self) -> u64 {
        self.envelope.sequence
    }
}

impl EventFrame {
    fn ws_text(&self) -> &Utf8Bytes {
        self.ws
            .get_or_init(|| Utf8Bytes::from(write_event_frame(&self.envelope)))
    }

    /// The envelope's JSON: the event frame without its wrapper.
    fn json(&self) -> &str {
        let frame = self.ws_text().as_str();
        frame
            .get(EVENT_FRAME_PREFIX.len()..frame.len().saturating_sub(1))
            .unwrap_or_default()
    }

    /// The frame in the connection's encoding (cheap clone of shared bytes).
    pub(crate) fn encoded(&self, kind: ConnKind) -> Outbound {
        match kind {
            ConnKind::Ws => Outbound::Ws(self.ws_text().clone()),
            ConnKind::WsCompact => Outbound::WsBinary(
                self.compact
                    .get_or_init(|| Bytes::from(encode_event(&self.envelope)))
                    .clone(),
            ),
            ConnKind::Sse => Outbound::Sse(
                self.sse
                    .get_or_init(|| {
                        let e = &self.envelope;
                        Bytes::from(format!(
                            "id: {}@{}\ndata: {}\n\n",
                            e.room,
                            e.sequence,
                            self.json()
                        ))
                    })
                    .clone(),
            ),
        }
    }
}

/// An ephemeral event or presence change, serialized once.
pub(crate) struct EphemeralFrame {
    pub(crate) event: Arc<EphemeralEvent>,
    ws: OnceLock<Utf8Bytes>,
    sse: OnceLock<Bytes>,
}

impl EphemeralFrame {
    pub(crate) fn new(event: Arc<EphemeralEvent>) -> Self {
        Self {
            event,
            ws: OnceLock::new(),
            sse: OnceLock::new(),
        }
    }

    fn message(&self) -> ServerMessage {
        ServerMessage::Ephemeral {
            data: Box::new(EphemeralData::from(&*self.event)),
        }
    }

    /// The presence notice this announcement stands for.
    pub(crate) fn presence_message(&self) -> ServerMessage {
        let e = &self.event;
        let joined = e.event_type == PRESENCE_JOINED;
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Left {
            user_id: String,
        }
        let (user_id, member) = if joined {
            let m: Option<PresenceMember> = serde_json::from_str(e.payload.get()).ok();
            (m.as_ref().map(|m| m.user_id.clone()).unwrap_or_default(), m)
        } else {
            let l: Option<Left> = serde_json::from_str(e.payload.get()).ok();
            (l.map(|l| l.user_id).unwrap_or_default(), None)
        };
        ServerMessage::Presence(PresenceNotice {
            room: e.room.to_string(),
            action: if joined { "member_added" } else { "member_removed" }.to_owned(),
            user_id,
            member,
        })
    }

    pub(crate) fn encoded(&self, kind: ConnKind, presence: bool) -> Outbound {
        let msg = || {
            if presence {
                self.presence_message()
            } else {
                self.message()
            }
        };
        match kind {
            ConnKind::Ws | ConnKind::WsCompact => {
                Outbound::Ws(self.ws.get_or_init(|| Utf8Bytes::from(msg().to_json())).clone())
            }
            ConnKind::Sse => Outbound::Sse(self.sse.get_or_init(|| sse_named(&msg())).clone()),
        }
    }
}

/// Encodes a protocol message for a connection.
pub(crate) fn control(kind: ConnKind, msg: &ServerMessage) -> Outbound {
    match kind {
        ConnKind::Ws | ConnKind::WsCompact => Outbound::Ws(Utf8Bytes::from(msg.to_json())),
        ConnKind::Sse => Outbound::Sse(sse_named(msg)),
    }
}

/// A control message already written as JSON text, of type `name` (the
/// `published` answer, written without building a `ServerMessage`).
pub(crate) fn control_json(kind: ConnKind, name: &str, json: String) -> Outbound {
    match kind {
        ConnKind::Ws | ConnKind::WsCompact => Outbound::Ws(Utf8Bytes::from(json)),
        ConnKind::Sse => Outbound::Sse(Bytes::from(format!("event: {name}\ndata: {json}\n\n"))),
    }
}

/// An SSE record named after the message type (`event: subscribed`).
fn sse_named(msg: &ServerMessage) -> Bytes {
    let json = msg.to_json();
    let name = serde_json::from_str::<serde_json::Value>(&json)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "message".to_owned());
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

/// A `replay` answer built from shared envelopes without cloning them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReplayOut<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) room: &'a str,
    pub(crate) events: Vec<&'a Envelope>,
    pub(crate) has_more: bool,
    pub(crate) scanned_to: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) request_id: Option<&'a str>,
}
