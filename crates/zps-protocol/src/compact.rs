//! The compact encoding of event frames, negotiated per connection as the
//! WebSocket subprotocol [`COMPACT_SUBPROTOCOL`]. Events — the frames a busy
//! room sends by the thousand — travel as one MessagePack array in a binary
//! frame, about half the bytes of the JSON frame; every other message stays
//! the JSON text frame of the default protocol, so a client adds one decoder,
//! not a second protocol. The payload is carried as its JSON text (a
//! MessagePack `bin`), as Centrifugo's protobuf protocol carries it: the server
//! never re-encodes what the publisher sent.
//!
//! Layout (a 10-element array):
//!
//! | # | field | MessagePack type |
//! |---|---|---|
//! | 0 | kind, `1` = event | positive int |
//! | 1 | room | str |
//! | 2 | sequence | positive int |
//! | 3 | id | str |
//! | 4 | type | str |
//! | 5 | emittedAt, ms since the Unix epoch | int |
//! | 6 | expiresAt, ms since the Unix epoch | int |
//! | 7 | payload, JSON text | bin |
//! | 8 | metadata, JSON object text, or nil | bin / nil |
//! | 9 | encrypted | bool |
//!
//! ```
//! use zps_model::{NewEvent, PublishRequest, Timestamp, room};
//! use zps_protocol::compact::{EventView, encode_event};
//!
//! let req = PublishRequest::new(room("chat", "1").unwrap(), "msg", &serde_json::json!({"t": 1})).unwrap();
//! let envelope = NewEvent::from_request(req, std::time::Duration::from_secs(60), Timestamp::now())
//!     .unwrap()
//!     .into_envelope(7);
//! let bytes = encode_event(&envelope);
//! let view = EventView::decode(&bytes).unwrap();
//! assert_eq!((view.room, view.sequence, view.payload), ("chat:1", 7, &br#"{"t":1}"#[..]));
//! assert_eq!(view.to_envelope().unwrap().to_json(), envelope.to_json());
//! ```

use rmp::Marker;
use zps_model::{Envelope, Room, Timestamp};

/// The subprotocol a client offers (`Sec-WebSocket-Protocol`) to receive compact events.
pub const COMPACT_SUBPROTOCOL: &str = "zps.compact.v1";
/// The subprotocol name of the default JSON protocol (offering it is optional).
pub const JSON_SUBPROTOCOL: &str = "zps.json.v1";

/// The first element of an event array.
pub const KIND_EVENT: u8 = 1;
const FIELDS: u32 = 10;

/// Why a compact frame could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed compact frame: {0}")]
pub struct CompactError(String);

fn bad(what: impl std::fmt::Display) -> CompactError {
    CompactError(what.to_string())
}

/// Encodes an event as a compact frame body.
pub fn encode_event(e: &Envelope) -> Vec<u8> {
    let payload = e.payload.get().as_bytes();
    let metadata = e
        .metadata
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_default());
    let mut out =
        Vec::with_capacity(48 + e.id.len() + e.event_type.len() + e.room.as_str().len() + payload.len());
    // Writing into a Vec cannot fail.
    let _ = write_all(&mut out, e, payload, metadata.as_deref());
    out
}

fn write_all(
    out: &mut Vec<u8>,
    e: &Envelope,
    payload: &[u8],
    metadata: Option<&str>,
) -> Result<(), rmp::encode::ValueWriteError> {
    rmp::encode::write_array_len(out, FIELDS)?;
    rmp::encode::write_uint(out, u64::from(KIND_EVENT))?;
    rmp::encode::write_str(out, e.room.as_str())?;
    rmp::encode::write_uint(out, e.sequence)?;
    rmp::encode::write_str(out, &e.id)?;
    rmp::encode::write_str(out, &e.event_type)?;
    rmp::encode::write_sint(out, e.emitted_at.as_millis())?;
    rmp::encode::write_sint(out, e.expires_at.as_millis())?;
    rmp::encode::write_bin(out, payload)?;
    match metadata {
        Some(m) => rmp::encode::write_bin(out, m.as_bytes())?,
        None => rmp::encode::write_nil(out).map_err(rmp::encode::ValueWriteError::InvalidMarkerWrite)?,
    }
    rmp::encode::write_bool(out, e.encrypted).map_err(rmp::encode::ValueWriteError::InvalidMarkerWrite)?;
    Ok(())
}

/// A decoded event frame borrowing from the frame's bytes (no allocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventView<'a> {
    /// The room.
    pub room: &'a str,
    /// The room sequence.
    pub sequence: u64,
    /// The event id.
    pub id: &'a str,
    /// The event type.
    pub event_type: &'a str,
    /// `emittedAt` in ms since the Unix epoch.
    pub emitted_at_ms: i64,
    /// `expiresAt` in ms since the Unix epoch.
    pub expires_at_ms: i64,
    /// The payload's JSON text.
    pub payload: &'a [u8],
    /// The metadata object's JSON text.
    pub metadata: Option<&'a [u8]>,
    /// Payload is ciphertext the server never looked into.
    pub encrypted: bool,
}

impl<'a> EventView<'a> {
    /// Reads a compact event frame.
    pub fn decode(mut b: &'a [u8]) -> Result<Self, CompactError> {
        let rd = &mut b;
        let n = rmp::decode::read_array_len(rd).map_err(bad)?;
        if n < FIELDS {
            return Err(bad(format!("{n} fields, expected {FIELDS}")));
        }
        let kind: u8 = rmp::decode::read_int(rd).map_err(bad)?;
        if kind != KIND_EVENT {
            return Err(bad(format!("unknown kind {kind}")));
        }
        let room = read_str(rd)?;
        let sequence: u64 = rmp::decode::read_int(rd).map_err(bad)?;
        let id = read_str(rd)?;
        let event_type = read_str(rd)?;
        let emitted_at_ms: i64 = rmp::decode::read_int(rd).map_err(bad)?;
        let expires_at_ms: i64 = rmp::decode::read_int(rd).map_err(bad)?;
        let payload = read_bin(rd)?;
        let metadata = if rd.first() == Some(&Marker::Null.to_u8()) {
            *rd = &rd[1..];
            None
        } else {
            Some(read_bin(rd)?)
        };
        let encrypted = rmp::decode::read_bool(rd).map_err(bad)?;
        Ok(Self {
            room,
            sequence,
            id,
            event_type,
            emitted_at_ms,
            expires_at_ms,
            payload,
            metadata,
            encrypted,
        })
    }

    /// The owned envelope (validates the room, the payload and metadata JSON).
    pub fn to_envelope(&self) -> Result<Envelope, CompactError> {
        let payload = std::str::from_utf8(self.payload).map_err(bad)?;
        let metadata = match self.metadata {
            Some(m) => Some(serde_json::from_slice(m).map_err(bad)?),
            None => None,
        };
        Ok(Envelope {
            id: self.id.to_owned(),
            event_type: self.event_type.to_owned(),
            room: Room::parse(self.room).map_err(bad)?,
            sequence: self.sequence,
            emitted_at: Timestamp::from_millis(self.emitted_at_ms),
            expires_at: Timestamp::from_millis(self.expires_at_ms),
            payload: serde_json::value::RawValue::from_string(payload.to_owned()).map_err(bad)?,
            metadata,
            encrypted: self.encrypted,
        })
    }
}

fn read_str<'a>(rd: &mut &'a [u8]) -> Result<&'a str, CompactError> {
    let (s, rest) = rmp::decode::read_str_from_slice(*rd).map_err(|e| bad(format!("{e:?}")))?;
    *rd = rest;
    Ok(s)
}

fn read_bin<'a>(rd: &mut &'a [u8]) -> Result<&'a [u8], CompactError> {
    let len = rmp::decode::read_bin_len(rd).map_err(bad)? as usize;
    if rd.len() < len {
        return Err(bad("bin field runs past the frame"));
    }
    let (data, rest) = rd.split_at(len);
    *rd = rest;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zps_model::{NewEvent, PublishRequest, room};

    fn envelope(seq: u64) -> Envelope {
        let req = PublishRequest::new(
            room("chat", "42").unwrap(),
            "message.created",
            &serde_json::json!({"text": "héllo", "n": [1, 2]}),
        )
        .unwrap()
        .with_metadata("traceId", serde_json::json!("abc"));
        NewEvent::from_request(req, std::time::Duration::from_secs(3600), Timestamp::now())
            .unwrap()
            .into_envelope(seq)
    }

    #[test]
    fn round_trips_every_field() {
        for seq in [1, 127, 128, 65_536, u64::MAX] {
            let mut e = envelope(seq);
            e.encrypted = seq % 2 == 0;
            let bytes = encode_event(&e);
            assert_eq!(
                EventView::decode(&bytes)
                    .unwrap()
                    .to_envelope()
                    .unwrap()
                    .to_json(),
                e.to_json()
            );
        }
        let mut e = envelope(3);
        e.metadata = None;
        let bytes = encode_event(&e);
        let view = EventView::decode(&bytes).unwrap();
        assert_eq!(view.metadata, None);
        assert_eq!(view.to_envelope().unwrap().to_json(), e.to_json());
    }

    #[test]
    fn is_smaller_than_the_json_frame() {
        let e = envelope(12_345);
        let json = crate::event_frame(&e.to_json());
        let compact = encode_event(&e);
        assert!(
            compact.len() * 10 < json.len() * 7,
            "{} vs {}",
            compact.len(),
            json.len()
        );
    }

    #[test]
    fn refuses_truncated_and_foreign_frames() {
        let bytes = encode_event(&envelope(9));
        for cut in 0..bytes.len() {
            assert!(EventView::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(EventView::decode(&[0x92, 0x02, 0xc0]).is_err());
        assert!(EventView::decode(b"{\"type\":\"event\"}").is_err());
    }
}
