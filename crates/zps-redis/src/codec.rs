//! How envelopes travel through Redis: the split JSON handed to the publish
//! script, the message format on the pub/sub channels, and stream entries.
//!
//! The envelope is serialized once, in Rust, with `sequence` 0. serde writes the
//! fields in declaration order (`id`, `type`, `room`, `sequence`, ...), and the
//! three string fields before `sequence` can never contain the bytes
//! `"sequence":` unescaped (a `"` inside a JSON string is always written `\"`),
//! so the first `"sequence":0` is the field itself. The JSON is cut around that
//! `0` and the script splices the allocated sequence in: the stored, published
//! and returned envelopes are byte-for-byte what `serde_json` would write for
//! the final envelope.

use std::sync::Arc;

use fred::types::Value;
use serde::Deserialize;
use zps_core::{Envelope, EphemeralEvent};

const SEQUENCE_FIELD: &str = "\"sequence\":";

/// An envelope serialized with a hole where the sequence goes.
#[derive(Debug)]
pub(crate) struct SplitEnvelope {
    /// JSON up to and including `"sequence":`.
    pub(crate) head: String,
    /// JSON after the sequence number.
    pub(crate) tail: String,
}

/// Serializes `envelope` (whose sequence must be 0) and cuts it around the sequence.
pub(crate) fn split_envelope(envelope: &Envelope) -> Result<SplitEnvelope, String> {
    debug_assert_eq!(envelope.sequence, 0);
    let mut json =
        serde_json::to_string(envelope).map_err(|e| format!("envelope is not serializable: {e}"))?;
    let marker = format!("{SEQUENCE_FIELD}{}", envelope.sequence);
    let at = json
        .find(&marker)
        .ok_or_else(|| "serialized envelope has no sequence field".to_owned())?;
    let tail = json.split_off(at + marker.len());
    json.truncate(at + SEQUENCE_FIELD.len());
    Ok(SplitEnvelope { head: json, tail })
}

/// A live message: `{"v":1,"epoch":"...","event":{envelope}}` (`epoch` optional).
#[derive(Debug, Deserialize)]
pub(crate) struct WireEvent {
    /// Format version; 1 today.
    #[serde(rename = "v")]
    pub(crate) _version: u32,
    /// The room's epoch when the event was stored; absent for envelopes fanned out
    /// on behalf of another transport (`Transport::fanout`), which carry no epoch.
    #[serde(default)]
    pub(crate) epoch: Option<String>,
    /// The stored envelope.
    pub(crate) event: Envelope,
}

/// Builds the live message for an envelope (what the publish script builds in Lua);
/// without an epoch the field is left out.
pub(crate) fn wire_event(epoch: Option<&str>, envelope_json: &str) -> String {
    match epoch {
        Some(epoch) => {
            let epoch = serde_json::Value::String(epoch.to_owned());
            format!("{{\"v\":1,\"epoch\":{epoch},\"event\":{envelope_json}}}")
        }
        None => format!("{{\"v\":1,\"event\":{envelope_json}}}"),
    }
}

/// Decodes a live event message.
pub(crate) fn decode_wire_event(bytes: &[u8]) -> Result<WireEvent, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Decodes an ephemeral message (the bare [`EphemeralEvent`] JSON).
pub(crate) fn decode_ephemeral(bytes: &[u8]) -> Result<Arc<EphemeralEvent>, serde_json::Error> {
    serde_json::from_slice(bytes).map(Arc::new)
}

/// Parses a stream id `<sequence>-0` into its sequence.
pub(crate) fn parse_stream_id(id: &str) -> Option<u64> {
    let (ms, seq) = id.split_once('-')?;
    if seq != "0" {
        return None;
    }
    ms.parse().ok()
}

/// The stream id of a sequence.
pub(crate) fn stream_id(sequence: u64) -> String {
    format!("{sequence}-0")
}

/// One stream entry of a room's history.
#[derive(Debug)]
pub(crate) struct StreamEntry {
    /// The event's sequence (from the entry id).
    pub(crate) sequence: u64,
    /// `expiresAt` in epoch milliseconds.
    pub(crate) expires_at_ms: i64,
    /// The event type.
    pub(crate) event_type: Value,
    /// The envelope JSON.
    pub(crate) data: Value,
}

/// Parses an XRANGE reply: `[[id, [field, value, ...]], ...]`.
pub(crate) fn parse_entries(reply: Value) -> Result<Vec<StreamEntry>, String> {
    let rows = match reply {
        Value::Null => return Ok(Vec::new()),
        Value::Array(rows) => rows,
        other => return Err(format!("XRANGE returned {:?}", other.kind())),
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut parts = row.into_array().into_iter();
        let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
            return Err("malformed stream entry".into());
        };
        let id = id.as_str().map(|s| s.into_owned()).unwrap_or_default();
        let sequence = parse_stream_id(&id).ok_or_else(|| format!("unexpected stream id `{id}`"))?;
        let mut expires_at_ms = None;
        let mut event_type = None;
        let mut data = None;
        let mut it = fields.into_array().into_iter();
        while let (Some(name), Some(value)) = (it.next(), it.next()) {
            match name.as_bytes() {
                Some(b"x") => expires_at_ms = value.as_i64(),
                Some(b"t") => event_type = Some(value),
                Some(b"d") => data = Some(value),
                _ => {}
            }
        }
        let (Some(expires_at_ms), Some(event_type), Some(data)) = (expires_at_ms, event_type, data) else {
            return Err(format!("stream entry {id} lacks its x/t/d fields"));
        };
        out.push(StreamEntry {
            sequence,
            expires_at_ms,
            event_type,
            data,
        });
    }
    Ok(out)
}

/// Decodes a stored envelope.
pub(crate) fn decode_envelope(bytes: &[u8]) -> Result<Envelope, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("stored envelope is not valid: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use zps_core::{NewEvent, PublishRequest, Room, Timestamp};

    use super::*;

    fn event(id: &str, payload: serde_json::Value) -> Envelope {
        let req = PublishRequest::new(Room::parse("chat:1").unwrap(), "t", &payload)
            .unwrap()
            .with_id(id)
            .with_metadata("sequence", json!(0));
        NewEvent::from_request(req, Duration::from_secs(60), Timestamp::from_millis(5))
            .unwrap()
            .into_envelope(0)
    }

    #[test]
    fn splicing_the_sequence_gives_serde_output() {
        // Ids and payloads that mention the marker must not confuse the cut.
        for (id, payload) in [
            ("plain", json!({"a": 1})),
            ("\"sequence\":0", json!({"sequence": 0})),
            ("x\\\"sequence\\\":0", json!("\"sequence\":0")),
        ] {
            let mut env = event(id, payload);
            let split = split_envelope(&env).unwrap();
            env.sequence = 18_446_744_073_709;
            let spliced = format!("{}{}{}", split.head, env.sequence, split.tail);
            assert_eq!(spliced, serde_json::to_string(&env).unwrap());
            let back: Envelope = serde_json::from_str(&spliced).unwrap();
            assert_eq!(back.sequence, env.sequence);
            assert_eq!(back.id, id);
        }
    }

    #[test]
    fn wire_messages_round_trip() {
        let mut env = event("e", json!([1, 2]));
        env.sequence = 3;
        let wire = wire_event(Some("ep\"och"), &env.to_json());
        let back = decode_wire_event(wire.as_bytes()).unwrap();
        assert_eq!(back.epoch.as_deref(), Some("ep\"och"));
        assert_eq!(back.event.sequence, 3);
        assert_eq!(back.event.payload.get(), "[1,2]");
        let bare = decode_wire_event(wire_event(None, &env.to_json()).as_bytes()).unwrap();
        assert_eq!(bare.epoch, None);
        assert_eq!(bare.event.sequence, 3);
    }

    #[test]
    fn stream_ids() {
        assert_eq!(parse_stream_id("42-0"), Some(42));
        assert_eq!(parse_stream_id("42-1"), None);
        assert_eq!(parse_stream_id("x-0"), None);
        assert_eq!(stream_id(7), "7-0");
    }

    #[test]
    fn entries_parse() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::from("5-0"),
            Value::Array(vec![
                Value::from("x"),
                Value::from("1000"),
                Value::from("t"),
                Value::from("a"),
                Value::from("d"),
                Value::from("{}"),
            ]),
        ])]);
        let e = parse_entries(reply).unwrap();
        assert_eq!(e[0].sequence, 5);
        assert_eq!(e[0].expires_at_ms, 1000);
        assert!(parse_entries(Value::Array(vec![Value::from("junk")])).is_err());
    }
}
