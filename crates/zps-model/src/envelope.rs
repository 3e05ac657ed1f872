//! What is published, stored and delivered: publish requests, envelopes,
//! snapshots, dead letters, ephemeral events and presence members.
//!
//! Payloads are kept as raw JSON text ([`Payload`]): the engine routes and
//! stores them without parsing, and an event is serialized once per fan-out.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::Error;
use crate::room::Room;
use crate::time::Timestamp;

/// Opaque JSON payload (kept as text so it is never re-parsed on the hot path).
pub type Payload = Box<RawValue>;

/// Free-form event metadata (`provider`, `producer`, `correlationId`, `traceId`, `tenantId`, ...).
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// Longest accepted event id or event type, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// Serializes any value into a [`Payload`].
pub fn to_payload<T: Serialize + ?Sized>(value: &T) -> Result<Payload, Error> {
    serde_json::value::to_raw_value(value)
        .map_err(|e| Error::InvalidEvent(format!("payload is not serializable: {e}")))
}

/// The JSON literal `null`, for events without a payload.
pub fn null_payload() -> Payload {
    // A fixed valid literal: this cannot fail, but stay panic-free anyway.
    RawValue::from_string("null".to_owned()).unwrap_or_else(|_| Box::<RawValue>::default())
}

fn clone_payload(p: &RawValue) -> Payload {
    p.to_owned()
}

/// A stored event, as delivered to subscribers and written on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// The caller's idempotency key, or a generated id.
    pub id: String,
    /// Application event type, e.g. `message.created`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The room it was published to.
    pub room: Room,
    /// Position in the room's history: 1, 2, 3, ... with no gaps.
    pub sequence: u64,
    /// When the engine accepted it.
    pub emitted_at: Timestamp,
    /// After this instant it is no longer replayed and may be pruned.
    pub expires_at: Timestamp,
    /// Application JSON, untouched.
    pub payload: Payload,
    /// Optional metadata object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Marks an end-to-end encrypted payload the engine must not interpret.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
}

impl Envelope {
    /// Decodes the payload into an application type.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.payload.get())
    }

    /// Whether the event is past its `expiresAt` at `now`.
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at <= now
    }

    /// Serialized JSON, for providers that store or ship the whole envelope.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(self.json_len_hint());
        self.write_json(&mut out);
        out
    }

    /// A capacity that fits the JSON of most envelopes in one allocation.
    pub fn json_len_hint(&self) -> usize {
        140 + self.id.len() + self.event_type.len() + self.room.as_str().len() + self.payload.get().len()
    }

    /// Appends the JSON form to `out` — the same bytes as serializing with
    /// serde, written directly: a room's fan-out serializes every event.
    pub fn write_json(&self, out: &mut String) {
        out.push_str("{\"id\":");
        push_json_str(out, &self.id);
        out.push_str(",\"type\":");
        push_json_str(out, &self.event_type);
        out.push_str(",\"room\":");
        push_json_str(out, self.room.as_str());
        out.push_str(",\"sequence\":");
        out.push_str(itoa::Buffer::new().format(self.sequence));
        out.push_str(",\"emittedAt\":\"");
        self.emitted_at.write_rfc3339(out);
        out.push_str("\",\"expiresAt\":\"");
        self.expires_at.write_rfc3339(out);
        out.push_str("\",\"payload\":");
        out.push_str(self.payload.get());
        if let Some(m) = &self.metadata {
            out.push_str(",\"metadata\":");
            // String-keyed JSON values serialize infallibly.
            out.push_str(&serde_json::to_string(m).unwrap_or_else(|_| "{}".into()));
        }
        if self.encrypted {
            out.push_str(",\"encrypted\":true");
        }
        out.push('}');
    }
}

/// Appends `s` as a JSON string literal (serde's escaping, without its
/// machinery for the common case of nothing to escape).
pub fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// Anything that carries a room sequence, so ordering logic can be tested without envelopes.
pub trait Sequenced {
    /// The item's sequence in its room.
    fn sequence(&self) -> u64;
}

impl Sequenced for Envelope {
    fn sequence(&self) -> u64 {
        self.sequence
    }
}

/// A bare sequence number orders as itself (tests and simulations).
impl Sequenced for u64 {
    fn sequence(&self) -> u64 {
        *self
    }
}

impl<T: Sequenced + ?Sized> Sequenced for Arc<T> {
    fn sequence(&self) -> u64 {
        (**self).sequence()
    }
}

/// What an application asks to publish. The room is a checked [`Room`]; a
/// client that leaves the check to the server builds one over a `String`
/// (`PublishRequest<String>`), with the same builder.
#[derive(Debug, Clone)]
pub struct PublishRequest<R = Room> {
    /// Idempotency key: publishing the same id twice returns the first envelope.
    pub id: Option<String>,
    /// Application event type.
    pub event_type: String,
    /// Target room (never a wildcard).
    pub room: R,
    /// Payload JSON.
    pub payload: Payload,
    /// Time to live; the engine default (24 h) when `None`.
    pub ttl: Option<Duration>,
    /// Marks the payload as ciphertext.
    pub encrypted: bool,
    /// Optional metadata object.
    pub metadata: Option<Metadata>,
}

impl PublishRequest {
    /// A request with a serializable payload.
    ///
    /// ```
    /// use zps_model::{room, PublishRequest};
    /// let req = PublishRequest::new(room("chat", "1")?, "message.created", &serde_json::json!({"text": "hi"}))?
    ///     .with_id("msg-1");
    /// assert_eq!(req.payload.get(), r#"{"text":"hi"}"#);
    /// # Ok::<(), zps_model::Error>(())
    /// ```
    pub fn new<T: Serialize + ?Sized>(
        room: Room,
        event_type: impl Into<String>,
        payload: &T,
    ) -> Result<Self, Error> {
        Ok(Self::raw(room, event_type, to_payload(payload)?))
    }
}

impl<R> PublishRequest<R> {
    /// A request whose payload is already JSON text.
    pub fn raw(room: R, event_type: impl Into<String>, payload: Payload) -> Self {
        Self {
            id: None,
            event_type: event_type.into(),
            room,
            payload,
            ttl: None,
            encrypted: false,
            metadata: None,
        }
    }

    /// Sets the idempotency key.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the time to live.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Marks the payload as end-to-end encrypted.
    pub fn encrypted(mut self) -> Self {
        self.encrypted = true;
        self
    }

    /// Adds one metadata key.
    pub fn with_metadata(mut self, key: impl Into<String>, value: serde_json::Value) -> Self {
        self.metadata
            .get_or_insert_with(Metadata::new)
            .insert(key.into(), value);
        self
    }
}

/// A publish after the engine resolved id, times and validation; the transport adds the sequence.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Resolved id (caller-given or generated).
    pub id: String,
    /// Application event type.
    pub event_type: String,
    /// Target room.
    pub room: Room,
    /// Acceptance time.
    pub emitted_at: Timestamp,
    /// Expiry time.
    pub expires_at: Timestamp,
    /// Payload JSON.
    pub payload: Payload,
    /// Metadata object.
    pub metadata: Option<Metadata>,
    /// Ciphertext marker.
    pub encrypted: bool,
}

impl NewEvent {
    /// Validates a request and resolves its id and timestamps.
    pub fn from_request(req: PublishRequest, default_ttl: Duration, now: Timestamp) -> Result<Self, Error> {
        let id = match req.id {
            Some(id) => {
                validate_token("event id", &id)?;
                id
            }
            None => generate_id(),
        };
        validate_token("event type", &req.event_type)?;
        let ttl = req.ttl.unwrap_or(default_ttl);
        if ttl.is_zero() {
            return Err(Error::InvalidEvent("ttl must be greater than zero".into()));
        }
        Ok(Self {
            id,
            event_type: req.event_type,
            room: req.room,
            emitted_at: now,
            expires_at: now.saturating_add(ttl),
            payload: req.payload,
            metadata: req.metadata,
            encrypted: req.encrypted,
        })
    }

    /// The stored form, once the transport picked the sequence.
    pub fn into_envelope(self, sequence: u64) -> Envelope {
        Envelope {
            id: self.id,
            event_type: self.event_type,
            room: self.room,
            sequence,
            emitted_at: self.emitted_at,
            expires_at: self.expires_at,
            payload: self.payload,
            metadata: self.metadata,
            encrypted: self.encrypted,
        }
    }

    /// Like [`NewEvent::into_envelope`] without consuming (for providers that keep the draft).
    pub fn to_envelope(&self, sequence: u64) -> Envelope {
        Envelope {
            id: self.id.clone(),
            event_type: self.event_type.clone(),
            room: self.room.clone(),
            sequence,
            emitted_at: self.emitted_at,
            expires_at: self.expires_at,
            payload: clone_payload(&self.payload),
            metadata: self.metadata.clone(),
            encrypted: self.encrypted,
        }
    }
}

/// Generates a time-ordered unique event id (UUIDv7), so ids sort roughly by creation.
pub fn generate_id() -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_owned()
}

/// Checks ids and type names: non-empty, bounded, no control characters.
pub fn validate_token(what: &str, s: &str) -> Result<(), Error> {
    if s.is_empty() {
        return Err(Error::InvalidEvent(format!("{what} is empty")));
    }
    if s.len() > MAX_ID_LEN {
        return Err(Error::InvalidEvent(format!(
            "{what} is longer than {MAX_ID_LEN} bytes"
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::InvalidEvent(format!("{what} contains control characters")));
    }
    Ok(())
}

/// Consolidated room state, so clients can start from it instead of sequence 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// The room it summarizes.
    pub room: Room,
    /// The last event folded into `state`; replay continues after it.
    pub last_sequence: u64,
    /// Application state JSON.
    pub state: Payload,
    /// When it was stored.
    pub created_at: Timestamp,
}

/// An event whose handler failed every retry, parked for inspection and repair.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DlqEntry {
    /// Position in the room's dead-letter queue (increasing; used for paging and removal).
    pub entry_id: u64,
    /// The room whose queue holds it.
    pub room: Room,
    /// The event that failed.
    pub event: Envelope,
    /// The last error text.
    pub error: String,
    /// How many times the handler ran.
    pub attempts: u32,
    /// The subscription that failed, when it had an id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber_id: Option<String>,
    /// When it was parked.
    pub failed_at: Timestamp,
}

/// A dead letter before the transport assigned its entry id.
#[derive(Debug, Clone)]
pub struct NewDlqEntry {
    /// The event that failed.
    pub event: Envelope,
    /// The last error text.
    pub error: String,
    /// How many times the handler ran.
    pub attempts: u32,
    /// The failing subscription's id.
    pub subscriber_id: Option<String>,
    /// When it was parked.
    pub failed_at: Timestamp,
}

/// A fan-out-only event (typing, cursors): no sequence, not stored, not replayed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EphemeralEvent {
    /// Application event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Target room.
    pub room: Room,
    /// Payload JSON.
    pub payload: Payload,
    /// Acceptance time.
    pub emitted_at: Timestamp,
    /// Optional metadata object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Who sent it (connection or subscriber id), so a fan-out can skip the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// One user present in a room; several connections of one user are one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceMember {
    /// Application user id.
    pub user_id: String,
    /// Optional application data (display name, avatar, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Last heartbeat or join.
    pub last_seen_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        NewEvent::from_request(
            PublishRequest::new(
                Room::parse("chat:1").unwrap(),
                "message.created",
                &serde_json::json!({"a": 1}),
            )
            .unwrap()
            .with_id("e1")
            .with_metadata("tenantId", "t1".into()),
            Duration::from_secs(60),
            Timestamp::from_millis(1_000),
        )
        .unwrap()
        .into_envelope(7)
    }

    #[test]
    fn envelope_json_is_camel_case_and_exact() {
        let json = serde_json::to_string(&sample()).unwrap();
        assert_eq!(
            json,
            r#"{"id":"e1","type":"message.created","room":"chat:1","sequence":7,"emittedAt":"1970-01-01T00:00:01.000Z","expiresAt":"1970-01-01T00:01:01.000Z","payload":{"a":1},"metadata":{"tenantId":"t1"}}"#
        );
        let back: Envelope = serde_json::from_str(&json).unwrap();
        assert_eq!(back.sequence, 7);
        assert_eq!(back.payload.get(), r#"{"a":1}"#);
        assert!(!back.encrypted);
    }

    #[test]
    fn the_direct_writer_matches_serde_byte_for_byte() {
        let mut cases = vec![sample()];
        let mut e = sample();
        e.metadata = None;
        e.encrypted = true;
        cases.push(e);
        let mut e = sample();
        e.id = "quote\" back\\slash \u{1} tab\t é ✓".into();
        e.event_type = "ünïcödé".into();
        e.sequence = u64::MAX;
        e.emitted_at = Timestamp::from_millis(-1);
        e.metadata = Some(serde_json::from_str(r#"{"b":[1,{"c":null}],"a":"x\"y"}"#).unwrap());
        cases.push(e);
        for e in cases {
            assert_eq!(e.to_json(), serde_json::to_string(&e).unwrap());
        }
    }

    #[test]
    fn encrypted_marker_round_trips() {
        let mut e = sample();
        e.encrypted = true;
        let json = e.to_json();
        assert!(json.ends_with(r#","encrypted":true}"#), "{json}");
        assert!(serde_json::from_str::<Envelope>(&json).unwrap().encrypted);
    }

    #[test]
    fn request_validation() {
        let r = Room::parse("chat:1").unwrap();
        let now = Timestamp::from_millis(0);
        let ttl = Duration::from_secs(1);
        let bad_id = PublishRequest::raw(r.clone(), "t", null_payload()).with_id("");
        assert!(matches!(
            NewEvent::from_request(bad_id, ttl, now),
            Err(Error::InvalidEvent(_))
        ));
        let bad_type = PublishRequest::raw(r.clone(), "x".repeat(MAX_ID_LEN + 1), null_payload());
        assert!(matches!(
            NewEvent::from_request(bad_type, ttl, now),
            Err(Error::InvalidEvent(_))
        ));
        let zero_ttl = PublishRequest::raw(r.clone(), "t", null_payload()).with_ttl(Duration::ZERO);
        assert!(matches!(
            NewEvent::from_request(zero_ttl, ttl, now),
            Err(Error::InvalidEvent(_))
        ));
        let ok = NewEvent::from_request(PublishRequest::raw(r, "t", null_payload()), ttl, now).unwrap();
        assert_eq!(ok.expires_at.as_millis(), 1_000);
        assert_eq!(ok.id.len(), 36);
    }

    #[test]
    fn generated_ids_are_unique() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| generate_id()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
