//! The statements, as plain functions over a connection: the writer thread and
//! the read pool call them; nothing here knows about tasks or channels.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use serde_json::value::RawValue;
use zps_core::envelope::{DlqEntry, Envelope, NewDlqEntry, NewEvent, Snapshot};
use zps_core::transport::{DlqRoom, ReplayPage, ReplayQuery, RoomInfo};
use zps_core::{Room, Timestamp};

use crate::error::{SqlResult, SqliteError};

const EVENT_COLUMNS: &str = "room, sequence, id, type, emitted_at, expires_at, payload, metadata, encrypted";

fn corrupt(what: &'static str, detail: impl ToString) -> SqliteError {
    SqliteError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

fn seq(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn db_seq(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The raw columns of an event row, decoded outside the row callback.
struct EventRow {
    room: String,
    sequence: i64,
    id: String,
    event_type: String,
    emitted_at: i64,
    expires_at: i64,
    payload: String,
    metadata: Option<String>,
    encrypted: bool,
}

impl EventRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            room: r.get(0)?,
            sequence: r.get(1)?,
            id: r.get(2)?,
            event_type: r.get(3)?,
            emitted_at: r.get(4)?,
            expires_at: r.get(5)?,
            payload: r.get(6)?,
            metadata: r.get(7)?,
            encrypted: r.get(8)?,
        })
    }

    fn envelope(self) -> SqlResult<Envelope> {
        Ok(Envelope {
            id: self.id,
            event_type: self.event_type,
            room: Room::parse(&self.room).map_err(|e| corrupt("event room", e))?,
            sequence: seq(self.sequence),
            emitted_at: Timestamp::from_millis(self.emitted_at),
            expires_at: Timestamp::from_millis(self.expires_at),
            payload: RawValue::from_string(self.payload).map_err(|e| corrupt("event payload", e))?,
            metadata: self
                .metadata
                .map(|m| serde_json::from_str(&m))
                .transpose()
                .map_err(|e| corrupt("event metadata", e))?,
            encrypted: self.encrypted,
        })
    }
}

/// Stores `event` under its room's next sequence, or returns the stored event with
/// the same id (`true` = duplicate). Runs inside the writer's transaction.
pub(crate) fn publish(conn: &Connection, event: NewEvent) -> SqlResult<(Envelope, bool)> {
    let existing = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM zps_events WHERE room = ?1 AND id = ?2"
        ))?
        .query_row(params![event.room.as_str(), event.id], EventRow::read)
        .optional()?;
    if let Some(row) = existing {
        return Ok((row.envelope()?, true));
    }
    let next: i64 = conn
        .prepare_cached(
            "INSERT INTO zps_rooms (room, last_sequence) VALUES (?1, 1)
             ON CONFLICT (room) DO UPDATE SET last_sequence = last_sequence + 1
             RETURNING last_sequence",
        )?
        .query_row(params![event.room.as_str()], |r| r.get(0))?;
    let envelope = event.into_envelope(seq(next));
    let metadata = envelope
        .metadata
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| corrupt("event metadata", e))?;
    conn.prepare_cached(&format!(
        "INSERT INTO zps_events ({EVENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ))?
    .execute(params![
        envelope.room.as_str(),
        next,
        envelope.id,
        envelope.event_type,
        envelope.emitted_at.as_millis(),
        envelope.expires_at.as_millis(),
        envelope.payload.get(),
        metadata,
        envelope.encrypted,
    ])?;
    Ok((envelope, false))
}

fn last_sequence(conn: &Connection, room: &Room) -> SqlResult<u64> {
    Ok(conn
        .prepare_cached("SELECT last_sequence FROM zps_rooms WHERE room = ?1")?
        .query_row(params![room.as_str()], |r| r.get::<_, i64>(0))
        .optional()?
        .map_or(0, seq))
}

/// One page of history, read on one snapshot.
pub(crate) fn replay(conn: &Connection, q: &ReplayQuery, now: Timestamp) -> SqlResult<ReplayPage> {
    let tx = conn.unchecked_transaction()?;
    let last = last_sequence(&tx, &q.room)?;
    let limit = q.effective_limit();
    let upper = q.to_sequence.map_or(i64::MAX, db_seq);
    let mut sql = format!(
        "SELECT {EVENT_COLUMNS} FROM zps_events WHERE room = ?1 AND sequence > ?2 AND sequence <= ?3 AND expires_at > ?4"
    );
    let mut args: Vec<rusqlite::types::Value> = vec![
        q.room.as_str().to_owned().into(),
        db_seq(q.from_sequence).into(),
        upper.into(),
        now.as_millis().into(),
    ];
    if let Some(types) = &q.event_types {
        if types.is_empty() {
            sql.push_str(" AND 0");
        } else {
            let marks = (0..types.len())
                .map(|i| format!("?{}", i + 5))
                .collect::<Vec<_>>()
                .join(", ");
            sql.push_str(&format!(" AND type IN ({marks})"));
            args.extend(types.iter().map(|t| rusqlite::types::Value::from(t.clone())));
        }
    }
    sql.push_str(&format!(" ORDER BY sequence LIMIT {limit}"));
    let rows = tx
        .prepare_cached(&sql)?
        .query_map(params_from_iter(args), EventRow::read)?
        .collect::<Result<Vec<_>, _>>()?;
    tx.finish()?;
    let exhausted = rows.len() < limit;
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        events.push(Arc::new(row.envelope()?));
    }
    let scanned_to = if exhausted {
        // Everything up to the room's head (within bounds) has been looked at.
        last.min(q.to_sequence.unwrap_or(u64::MAX)).max(q.from_sequence)
    } else {
        events.last().map_or(q.from_sequence, |e| e.sequence)
    };
    Ok(ReplayPage {
        events,
        scanned_to,
        exhausted,
    })
}

/// The room's epoch (the database's) and retained range.
pub(crate) fn room_info(conn: &Connection, room: &Room, epoch: &str, now: Timestamp) -> SqlResult<RoomInfo> {
    let tx = conn.unchecked_transaction()?;
    let last = last_sequence(&tx, room)?;
    let earliest: Option<i64> = tx
        .prepare_cached("SELECT MIN(sequence) FROM zps_events WHERE room = ?1 AND expires_at > ?2")?
        .query_row(params![room.as_str(), now.as_millis()], |r| r.get(0))?;
    tx.finish()?;
    Ok(RoomInfo {
        epoch: epoch.to_owned(),
        last_sequence: last,
        earliest_sequence: earliest.map_or(last + 1, seq),
    })
}

/// Moves the cursor forward only; returns the stored one.
pub(crate) fn ack(conn: &Connection, room: &Room, subscriber: &str, sequence: u64) -> SqlResult<u64> {
    let stored: i64 = conn
        .prepare_cached(
            "INSERT INTO zps_cursors (room, subscriber, sequence) VALUES (?1, ?2, ?3)
             ON CONFLICT (room, subscriber) DO UPDATE SET sequence = MAX(sequence, excluded.sequence)
             RETURNING sequence",
        )?
        .query_row(params![room.as_str(), subscriber, db_seq(sequence)], |r| r.get(0))?;
    Ok(seq(stored))
}

/// The subscriber's cursor.
pub(crate) fn cursor(conn: &Connection, room: &Room, subscriber: &str) -> SqlResult<Option<u64>> {
    Ok(conn
        .prepare_cached("SELECT sequence FROM zps_cursors WHERE room = ?1 AND subscriber = ?2")?
        .query_row(params![room.as_str(), subscriber], |r| r.get::<_, i64>(0))
        .optional()?
        .map(seq))
}

/// Replaces the room's snapshot.
pub(crate) fn put_snapshot(conn: &Connection, snapshot: &Snapshot) -> SqlResult<()> {
    let json = serde_json::to_string(snapshot).map_err(|e| corrupt("snapshot", e))?;
    conn.prepare_cached(
        "INSERT INTO zps_snapshots (room, snapshot) VALUES (?1, ?2)
         ON CONFLICT (room) DO UPDATE SET snapshot = excluded.snapshot",
    )?
    .execute(params![snapshot.room.as_str(), json])?;
    Ok(())
}

/// The room's snapshot.
pub(crate) fn get_snapshot(conn: &Connection, room: &Room) -> SqlResult<Option<Snapshot>> {
    conn.prepare_cached("SELECT snapshot FROM zps_snapshots WHERE room = ?1")?
        .query_row(params![room.as_str()], |r| r.get::<_, String>(0))
        .optional()?
        .map(|s| serde_json::from_str(&s).map_err(|e| corrupt("snapshot", e)))
        .transpose()
}

/// Parks a dead letter; drops the room's oldest past `max`.
pub(crate) fn dlq_write(
    conn: &Connection,
    room: &Room,
    entry: NewDlqEntry,
    max: usize,
) -> SqlResult<DlqEntry> {
    let id: i64 = conn
        .prepare_cached("INSERT INTO zps_dlq (room, entry) VALUES (?1, '') RETURNING entry_id")?
        .query_row(params![room.as_str()], |r| r.get(0))?;
    let stored = DlqEntry {
        entry_id: seq(id),
        room: room.clone(),
        event: entry.event,
        error: entry.error,
        attempts: entry.attempts,
        subscriber_id: entry.subscriber_id,
        failed_at: entry.failed_at,
    };
    let json = serde_json::to_string(&stored).map_err(|e| corrupt("dead letter", e))?;
    conn.prepare_cached("UPDATE zps_dlq SET entry = ?1 WHERE entry_id = ?2")?
        .execute(params![json, id])?;
    conn.prepare_cached(
        "DELETE FROM zps_dlq WHERE room = ?1 AND entry_id <= (
            SELECT entry_id FROM zps_dlq WHERE room = ?1 ORDER BY entry_id DESC LIMIT 1 OFFSET ?2)",
    )?
    .execute(params![room.as_str(), i64::try_from(max).unwrap_or(i64::MAX)])?;
    Ok(stored)
}

/// Dead letters after `after`, oldest first.
pub(crate) fn dlq_list(conn: &Connection, room: &Room, after: u64, limit: usize) -> SqlResult<Vec<DlqEntry>> {
    let rows = conn
        .prepare_cached(
            "SELECT entry FROM zps_dlq WHERE room = ?1 AND entry_id > ?2 ORDER BY entry_id LIMIT ?3",
        )?
        .query_map(
            params![
                room.as_str(),
                db_seq(after),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| r.get::<_, String>(0),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    rows.iter()
        .map(|s| serde_json::from_str(s).map_err(|e| corrupt("dead letter", e)))
        .collect()
}

/// Removes dead letters; returns how many existed.
pub(crate) fn dlq_remove(conn: &Connection, room: &Room, ids: &[u64]) -> SqlResult<u64> {
    let mut removed = 0;
    let mut stmt = conn.prepare_cached("DELETE FROM zps_dlq WHERE room = ?1 AND entry_id = ?2")?;
    for id in ids {
        removed += stmt.execute(params![room.as_str(), db_seq(*id)])? as u64;
    }
    Ok(removed)
}

/// Rooms holding dead letters (SQLite compares text bytewise, as rooms compare).
pub(crate) fn dlq_rooms(
    conn: &Connection,
    prefix: &str,
    after: Option<&Room>,
    limit: usize,
) -> SqlResult<Vec<DlqRoom>> {
    let rows = conn
        .prepare_cached(
            "SELECT room, COUNT(*) FROM zps_dlq WHERE substr(room, 1, length(?1)) = ?1 AND room > ?2
             GROUP BY room ORDER BY room LIMIT ?3",
        )?
        .query_map(
            params![
                prefix,
                after.map_or("", Room::as_str),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(room, len)| {
            let room = Room::parse(&room).map_err(|e| corrupt("dead-letter room", e))?;
            Ok(DlqRoom {
                room,
                len: u64::try_from(len).unwrap_or(0),
            })
        })
        .collect()
}

/// How many dead letters the room holds.
pub(crate) fn dlq_len(conn: &Connection, room: &Room) -> SqlResult<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM zps_dlq WHERE room = ?1")?
        .query_row(params![room.as_str()], |r| r.get(0))?;
    Ok(seq(n))
}

/// Deletes expired events (room counters stay: sequences never restart).
pub(crate) fn prune(conn: &Connection, now: Timestamp) -> SqlResult<u64> {
    let n = conn
        .prepare_cached("DELETE FROM zps_events WHERE expires_at <= ?1")?
        .execute(params![now.as_millis()])?;
    Ok(n as u64)
}
