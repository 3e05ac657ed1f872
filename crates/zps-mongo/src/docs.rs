//! The exact BSON documents the provider stores and sends: keys, event and skip
//! records, filters, sorts, update documents and index specifications. Everything
//! here is pure, so the shapes are unit-tested without a server.

use std::time::Duration;

use mongodb::bson::{Bson, DateTime, Document, doc};
use serde_json::value::RawValue;
use zps_core::{DlqEntry, Envelope, PresenceMember, ReplayQuery, Room, Snapshot, Timestamp};

/// `_id` of the database-wide meta document (in the counters collection).
pub const META_ID: &str = "meta";

/// `_id` of a stored event: the room and the caller's id, so idempotency is per room.
/// Neither part can contain NUL (rooms and ids refuse control characters).
pub fn event_key(room: &Room, id: &str) -> String {
    format!("{room}\u{0}{id}")
}

/// `_id` of a skip record for a consumed sequence (two NULs: never an event key, since
/// event ids cannot start with a control character).
pub fn skip_key(room: &Room, sequence: u64) -> String {
    format!("{room}\u{0}\u{0}{sequence}")
}

/// `_id` of a room's sequence counter.
pub fn counter_key(room: &Room) -> String {
    format!("seq:{room}")
}

/// `_id` of a room's dead-letter entry counter.
pub fn dlq_counter_key(room: &Room) -> String {
    format!("dlq:{room}")
}

/// A sequence or count as BSON (Int64; values past `i64::MAX` saturate — unreachable in practice).
pub fn int(v: u64) -> Bson {
    Bson::Int64(i64::try_from(v).unwrap_or(i64::MAX))
}

/// A timestamp as a BSON date (millisecond precision, like [`Timestamp`]).
pub fn date(t: Timestamp) -> Bson {
    Bson::DateTime(DateTime::from_millis(t.as_millis()))
}

/// Reads an integer field whatever its BSON width (servers return small values as Int32).
pub fn get_i64(doc: &Document, key: &str) -> Option<i64> {
    match doc.get(key)? {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        // Integral doubles only (some tools write numbers as doubles).
        Bson::Double(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => Some(*v as i64),
        _ => None,
    }
}

/// Reads a non-negative integer field.
pub fn get_u64(doc: &Document, key: &str) -> Option<u64> {
    get_i64(doc, key).and_then(|v| u64::try_from(v).ok())
}

/// Reads a date field (BSON date, or milliseconds as an integer).
pub fn get_timestamp(doc: &Document, key: &str) -> Option<Timestamp> {
    match doc.get(key)? {
        Bson::DateTime(d) => Some(Timestamp::from_millis(d.timestamp_millis())),
        Bson::String(s) => Timestamp::parse(s).ok(),
        _ => get_i64(doc, key).map(Timestamp::from_millis),
    }
}

/// JSON → BSON for metadata (integers stay integers; integers past `i64` become doubles).
pub fn json_to_bson(v: &serde_json::Value) -> Bson {
    use serde_json::Value;
    match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Bson::Int64(i)
            } else {
                Bson::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(a) => Bson::Array(a.iter().map(json_to_bson).collect()),
        Value::Object(o) => Bson::Document(map_to_document(o)),
    }
}

/// A JSON object as a BSON document.
pub fn map_to_document(map: &serde_json::Map<String, serde_json::Value>) -> Document {
    map.iter().map(|(k, v)| (k.clone(), json_to_bson(v))).collect()
}

/// BSON → JSON (dates as RFC 3339 strings, binary and other exotic types as their
/// relaxed extended JSON).
pub fn bson_to_json(v: &Bson) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Boolean(b) => Value::Bool(*b),
        Bson::Int32(i) => Value::from(*i),
        Bson::Int64(i) => Value::from(*i),
        Bson::Double(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Bson::String(s) => Value::String(s.clone()),
        Bson::Array(a) => Value::Array(a.iter().map(bson_to_json).collect()),
        Bson::Document(d) => Value::Object(document_to_map(d)),
        Bson::DateTime(d) => Value::String(Timestamp::from_millis(d.timestamp_millis()).to_string()),
        other => other.clone().into_relaxed_extjson(),
    }
}

/// A BSON document as a JSON object.
pub fn document_to_map(d: &Document) -> serde_json::Map<String, serde_json::Value> {
    d.iter().map(|(k, v)| (k.clone(), bson_to_json(v))).collect()
}

/// The envelope fields shared by stored events and dead letters (no `_id`).
fn envelope_fields(e: &Envelope) -> Document {
    let mut d = doc! {
        "room": e.room.as_str(),
        "sequence": int(e.sequence),
        "type": e.event_type.as_str(),
        "emittedAt": date(e.emitted_at),
        "expiresAt": date(e.expires_at),
        // Stored as the JSON text: exact round trip (number formats, key order), never parsed.
        "payload": e.payload.get(),
    };
    if let Some(m) = &e.metadata {
        d.insert("metadata", map_to_document(m));
    }
    if e.encrypted {
        d.insert("encrypted", true);
    }
    d
}

/// The stored form of an event. `prev_at_ms` is when the room's previous sequence was
/// allocated (an upper bound used to age holes before it).
pub fn event_document(e: &Envelope, prev_at_ms: i64) -> Document {
    let mut d = doc! { "_id": event_key(&e.room, &e.id) };
    d.extend(envelope_fields(e));
    d.insert("prevAt", Bson::Int64(prev_at_ms));
    d
}

/// A skip record: `sequence` was consumed but holds no event (duplicate race, crashed
/// publish). Born expired, so replays never return it; it is purged after the purge delay.
pub fn skip_document(room: &Room, sequence: u64, prev_at_ms: i64, now: Timestamp) -> Document {
    doc! {
        "_id": skip_key(room, sequence),
        "room": room.as_str(),
        "sequence": int(sequence),
        "skip": true,
        "prevAt": Bson::Int64(prev_at_ms),
        "expiresAt": date(now),
    }
}

/// Decodes a stored event; `Ok(None)` for skip records.
pub fn decode_event(d: &Document) -> Result<Option<Envelope>, String> {
    if d.get_bool("skip").unwrap_or(false) {
        return Ok(None);
    }
    let key = d.get_str("_id").map_err(|e| format!("_id: {e}"))?;
    let room = d.get_str("room").map_err(|e| format!("room: {e}"))?;
    let id = key
        .strip_prefix(room)
        .and_then(|rest| rest.strip_prefix('\u{0}'))
        .ok_or_else(|| format!("_id {key:?} does not start with its room"))?;
    decode_envelope(d, id.to_owned()).map(Some)
}

/// Decodes the envelope fields of an event or dead-letter document.
pub fn decode_envelope(d: &Document, id: String) -> Result<Envelope, String> {
    let room =
        Room::parse(d.get_str("room").map_err(|e| format!("room: {e}"))?).map_err(|e| e.to_string())?;
    let payload = match d.get("payload") {
        Some(Bson::String(s)) => RawValue::from_string(s.clone()).map_err(|e| format!("payload: {e}"))?,
        Some(Bson::Null) | None => zps_core::envelope::null_payload(),
        Some(other) => {
            serde_json::value::to_raw_value(&bson_to_json(other)).map_err(|e| format!("payload: {e}"))?
        }
    };
    let metadata = match d.get("metadata") {
        Some(Bson::Document(m)) => Some(document_to_map(m)),
        _ => None,
    };
    Ok(Envelope {
        id,
        event_type: d.get_str("type").map_err(|e| format!("type: {e}"))?.to_owned(),
        room,
        sequence: get_u64(d, "sequence").ok_or("sequence missing or negative")?,
        emitted_at: get_timestamp(d, "emittedAt").ok_or("emittedAt missing")?,
        expires_at: get_timestamp(d, "expiresAt").ok_or("expiresAt missing")?,
        payload,
        metadata,
        encrypted: d.get_bool("encrypted").unwrap_or(false),
    })
}

/// The server-side expiry condition: `{$gte: <now, rounded down to the second>}`.
///
/// A coarse prefilter; the provider checks `expiresAt > now` exactly on what comes back.
/// Rounding keeps it correct on servers that compare dates at one-second granularity
/// (the nx-27017 stand-in does: a `$gt: now` there drops events expiring later within the
/// same second); on MongoDB it costs at most one second of already expired documents.
pub fn not_expired(now: Timestamp) -> Document {
    let ms = now.as_millis();
    doc! { "$gte": date(Timestamp::from_millis(ms - ms.rem_euclid(1_000))) }
}

/// Filter of a replay page: `{room, sequence: {$gt, $lte}, type: {$in}, expiresAt:
/// {$gte: <now to the second>}}` (see [`not_expired`]).
pub fn replay_filter(query: &ReplayQuery, upper: u64, now: Timestamp) -> Document {
    let mut f = doc! {
        "room": query.room.as_str(),
        "sequence": { "$gt": int(query.from_sequence), "$lte": int(upper) },
    };
    if let Some(types) = &query.event_types {
        f.insert("type", doc! { "$in": types.clone() });
    }
    f.insert("expiresAt", not_expired(now));
    f
}

/// Sort of every history read: by sequence, ascending.
pub fn by_sequence() -> Document {
    doc! { "sequence": 1 }
}

/// Every stored document (events, expired events, skip records) of `room` in `(from, to]`:
/// what the hole check counts.
pub fn range_filter(room: &Room, from: u64, to: u64) -> Document {
    doc! { "room": room.as_str(), "sequence": { "$gt": int(from), "$lte": int(to) } }
}

/// Projection of the hole check: the sequence, the previous-allocation bound, and what
/// tells whether the page should have returned the document (type, expiry, skip marker).
pub fn slot_projection() -> Document {
    doc! { "_id": 0, "sequence": 1, "prevAt": 1, "type": 1, "expiresAt": 1, "skip": 1 }
}

/// The room's unexpired documents (events; skip records are born expired), to the
/// second (see [`not_expired`]): the first one is where retained history starts.
pub fn unexpired_filter(room: &Room, now: Timestamp) -> Document {
    doc! { "room": room.as_str(), "sequence": { "$gt": 0_i64 }, "expiresAt": not_expired(now) }
}

/// The sequence allocation: `findOneAndUpdate({_id: "seq:<room>"}, <this>, {upsert: true,
/// returnDocument: "before"})`. `at` keeps the latest allocation time (ms, an integer so
/// every server stores it alike).
pub fn allocation_update(count: u64, now_ms: i64) -> Document {
    doc! { "$inc": { "seq": int(count) }, "$max": { "at": Bson::Int64(now_ms) } }
}

/// Raises a counter that fell behind the stored history (it was deleted or restored).
pub fn counter_repair_update(max_stored: u64) -> Document {
    doc! { "$max": { "seq": int(max_stored) } }
}

/// The ack: `findOneAndUpdate({room, subscriberId}, <this>, {upsert: true, returnDocument: "after"})`.
pub fn ack_update(sequence: u64, now: Timestamp) -> Document {
    doc! { "$max": { "sequence": int(sequence) }, "$set": { "updatedAt": date(now) } }
}

/// Filter of one ack cursor.
pub fn cursor_filter(room: &Room, subscriber_id: &str) -> Document {
    doc! { "room": room.as_str(), "subscriberId": subscriber_id }
}

/// The stored snapshot (`replaceOne({_id: room}, <this>, {upsert: true})`).
pub fn snapshot_document(s: &Snapshot) -> Document {
    doc! {
        "_id": s.room.as_str(),
        "room": s.room.as_str(),
        "lastSequence": int(s.last_sequence),
        "state": s.state.get(),
        "createdAt": date(s.created_at),
    }
}

/// Decodes a stored snapshot.
pub fn decode_snapshot(d: &Document) -> Result<Snapshot, String> {
    let room =
        Room::parse(d.get_str("room").map_err(|e| format!("room: {e}"))?).map_err(|e| e.to_string())?;
    let state = match d.get("state") {
        Some(Bson::String(s)) => RawValue::from_string(s.clone()).map_err(|e| format!("state: {e}"))?,
        Some(other) => {
            serde_json::value::to_raw_value(&bson_to_json(other)).map_err(|e| format!("state: {e}"))?
        }
        None => zps_core::envelope::null_payload(),
    };
    Ok(Snapshot {
        room,
        last_sequence: get_u64(d, "lastSequence").ok_or("lastSequence missing")?,
        state,
        created_at: get_timestamp(d, "createdAt").ok_or("createdAt missing")?,
    })
}

/// A dead letter (the failed envelope is embedded with its `id`).
pub fn dlq_document(entry: &DlqEntry) -> Document {
    let e = &entry.event;
    let mut event = doc! { "id": e.id.as_str() };
    event.extend(envelope_fields(e));
    let mut d = doc! {
        "room": entry.room.as_str(),
        "entryId": int(entry.entry_id),
        "event": event,
        "error": entry.error.as_str(),
        "attempts": Bson::Int64(i64::from(entry.attempts)),
        "failedAt": date(entry.failed_at),
    };
    if let Some(s) = &entry.subscriber_id {
        d.insert("subscriberId", s.as_str());
    }
    d
}

/// Decodes a dead letter.
pub fn decode_dlq(d: &Document) -> Result<DlqEntry, String> {
    let event = d.get_document("event").map_err(|e| format!("event: {e}"))?;
    let id = event
        .get_str("id")
        .map_err(|e| format!("event.id: {e}"))?
        .to_owned();
    Ok(DlqEntry {
        entry_id: get_u64(d, "entryId").ok_or("entryId missing")?,
        room: Room::parse(d.get_str("room").map_err(|e| format!("room: {e}"))?).map_err(|e| e.to_string())?,
        event: decode_envelope(event, id)?,
        error: d.get_str("error").unwrap_or_default().to_owned(),
        attempts: get_i64(d, "attempts")
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(0),
        subscriber_id: d.get_str("subscriberId").ok().map(str::to_owned),
        failed_at: get_timestamp(d, "failedAt").ok_or("failedAt missing")?,
    })
}

/// One presence connection (`replaceOne({room, userId, connection}, <this>, {upsert: true})`).
pub fn presence_document(
    room: &Room,
    member: &PresenceMember,
    connection: &str,
    expires_at: Timestamp,
) -> Document {
    let mut d = doc! {
        "room": room.as_str(),
        "userId": member.user_id.as_str(),
        "connection": connection,
        "lastSeenAt": date(member.last_seen_at),
        "expiresAt": date(expires_at),
    };
    if let Some(m) = &member.metadata {
        d.insert("metadata", map_to_document(m));
    }
    d
}

/// Decodes the member of a presence connection.
pub fn decode_member(d: &Document) -> Result<PresenceMember, String> {
    Ok(PresenceMember {
        user_id: d
            .get_str("userId")
            .map_err(|e| format!("userId: {e}"))?
            .to_owned(),
        metadata: match d.get("metadata") {
            Some(Bson::Document(m)) => Some(document_to_map(m)),
            _ => None,
        },
        last_seen_at: get_timestamp(d, "lastSeenAt").ok_or("lastSeenAt missing")?,
    })
}

/// Which collection an index belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexTarget {
    /// The history.
    Events,
    /// Ack cursors.
    Subscribers,
    /// Dead letters.
    Dlq,
    /// Presence connections.
    Presence,
}

/// The `createIndexes` entries per collection (`{key, name, unique?, expireAfterSeconds?}`);
/// `ttl` = the purge delay of the TTL indexes on `expiresAt`, `None` = no TTL indexes.
pub fn index_specs(ttl: Option<Duration>) -> Vec<(IndexTarget, Vec<Document>)> {
    let ttl_index = |ttl: Duration| {
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::from(i32::MAX));
        doc! { "key": { "expiresAt": 1 }, "name": "expiresAt_ttl", "expireAfterSeconds": secs }
    };
    let mut events =
        vec![doc! { "key": { "room": 1, "sequence": 1 }, "name": "room_sequence", "unique": true }];
    let mut presence = vec![doc! {
        "key": { "room": 1, "userId": 1, "connection": 1 },
        "name": "room_user_connection",
        "unique": true,
    }];
    if let Some(ttl) = ttl {
        events.push(ttl_index(ttl));
        presence.push(ttl_index(ttl));
    }
    vec![
        (IndexTarget::Events, events),
        (
            IndexTarget::Subscribers,
            vec![doc! { "key": { "room": 1, "subscriberId": 1 }, "name": "room_subscriber", "unique": true }],
        ),
        (
            IndexTarget::Dlq,
            vec![doc! { "key": { "room": 1, "entryId": 1 }, "name": "room_entry", "unique": true }],
        ),
        (IndexTarget::Presence, presence),
    ]
}

/// The change-stream pipeline: stored events only (skip records have no `type`).
pub fn change_stream_pipeline() -> Vec<Document> {
    vec![doc! { "$match": { "operationType": "insert", "fullDocument.type": { "$exists": true } } }]
}

/// Whether a `hello` reply describes a deployment with change streams (replica set
/// member or `mongos`).
pub fn supports_change_streams(hello: &Document) -> bool {
    hello.get_str("setName").is_ok() || hello.get_str("msg").is_ok_and(|m| m == "isdbgrid")
}

#[cfg(test)]
mod tests;
