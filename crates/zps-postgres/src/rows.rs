//! Row decoding and integer conversions between the engine's `u64` and PostgreSQL's `bigint`.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sqlx::Row;
use sqlx::postgres::PgRow;
use zps_core::{Envelope, Metadata, Payload, Room, Timestamp};

use crate::error::{PgResult, PostgresError};

/// `u64` → `bigint`, saturating (sequences never get near 2^63).
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `bigint` → `u64`, negative values (never written) read as 0.
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn corrupt(table: &'static str, detail: impl std::fmt::Display) -> PostgresError {
    PostgresError::Corrupt {
        table,
        detail: detail.to_string(),
    }
}

/// Stored JSON text → payload (the text is kept verbatim).
pub(crate) fn payload_from(table: &'static str, text: String) -> PgResult<Payload> {
    RawValue::from_string(text).map_err(|e| corrupt(table, format!("payload is not JSON: {e}")))
}

pub(crate) fn metadata_from(table: &'static str, text: Option<String>) -> PgResult<Option<Metadata>> {
    text.map(|t| serde_json::from_str::<Metadata>(&t))
        .transpose()
        .map_err(|e| corrupt(table, format!("metadata is not a JSON object: {e}")))
}

pub(crate) fn metadata_text(metadata: Option<&Metadata>) -> Option<String> {
    // A string-keyed map of JSON values always serializes.
    metadata.and_then(|m| serde_json::to_string(m).ok())
}

/// Decodes `sequence, id, type, payload, metadata, encrypted, emitted_at, expires_at` of an
/// event row (columns may be NULL for the outer-joined replay head row: then `None`).
pub(crate) fn event_from_row(row: &PgRow, room: &Room) -> PgResult<Option<Envelope>> {
    let Some(sequence) = row.try_get::<Option<i64>, _>("sequence")? else {
        return Ok(None);
    };
    let id: Option<String> = row.try_get("id")?;
    let event_type: Option<String> = row.try_get("type")?;
    let payload: Option<String> = row.try_get("payload")?;
    let metadata: Option<String> = row.try_get("metadata")?;
    let encrypted: Option<bool> = row.try_get("encrypted")?;
    let emitted_at: Option<DateTime<Utc>> = row.try_get("emitted_at")?;
    let expires_at: Option<DateTime<Utc>> = row.try_get("expires_at")?;
    let (Some(id), Some(event_type), Some(payload), Some(emitted_at), Some(expires_at)) =
        (id, event_type, payload, emitted_at, expires_at)
    else {
        return Err(corrupt(
            "events",
            format!("row {room}#{sequence} has NULL columns"),
        ));
    };
    Ok(Some(Envelope {
        id,
        event_type,
        room: room.clone(),
        sequence: to_u64(sequence),
        emitted_at: Timestamp::from(emitted_at),
        expires_at: Timestamp::from(expires_at),
        payload: payload_from("events", payload)?,
        metadata: metadata_from("events", metadata)?,
        encrypted: encrypted.unwrap_or(false),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_conversions_saturate() {
        assert_eq!(to_i64(u64::MAX), i64::MAX);
        assert_eq!(to_i64(7), 7);
        assert_eq!(to_u64(-1), 0);
        assert_eq!(to_u64(42), 42);
    }

    #[test]
    fn payload_text_is_kept_verbatim() {
        let p = payload_from("events", r#"{"b":1, "a":1.50}"#.into()).unwrap();
        assert_eq!(p.get(), r#"{"b":1, "a":1.50}"#);
        assert!(payload_from("events", "{".into()).is_err());
        assert!(metadata_from("events", Some("[1]".into())).is_err());
        assert_eq!(metadata_from("events", None).unwrap(), None);
    }
}
