//! The tables, as numbered migrations applied in order at open.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{SqlResult, SqliteError};

/// Each entry moves the schema one version up; never edit a shipped one.
const MIGRATIONS: &[&str] = &[
    // 1: events, rooms (sequence counters), cursors, snapshots, dead letters, facts.
    "CREATE TABLE zps_events (
        room TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        id TEXT NOT NULL,
        type TEXT NOT NULL,
        emitted_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        payload TEXT NOT NULL,
        metadata TEXT,
        encrypted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (room, sequence)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX zps_events_id ON zps_events (room, id);
    CREATE INDEX zps_events_expiry ON zps_events (expires_at);
    CREATE TABLE zps_rooms (room TEXT PRIMARY KEY, last_sequence INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE zps_cursors (
        room TEXT NOT NULL, subscriber TEXT NOT NULL, sequence INTEGER NOT NULL,
        PRIMARY KEY (room, subscriber)
    ) WITHOUT ROWID;
    CREATE TABLE zps_snapshots (room TEXT PRIMARY KEY, snapshot TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE zps_dlq (entry_id INTEGER PRIMARY KEY AUTOINCREMENT, room TEXT NOT NULL, entry TEXT NOT NULL);
    CREATE INDEX zps_dlq_room ON zps_dlq (room, entry_id);
    CREATE TABLE zps_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;",
];

/// Applies missing migrations and returns the database epoch (created once, with the file).
pub(crate) fn migrate(conn: &mut Connection) -> SqlResult<String> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS zps_schema (version INTEGER NOT NULL)")?;
    let version: i64 = tx
        .query_row("SELECT version FROM zps_schema", [], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(SqliteError::SchemaTooNew {
            found: version,
            known,
        });
    }
    for sql in &MIGRATIONS[version as usize..] {
        tx.execute_batch(sql)?;
    }
    if version == 0 {
        tx.execute("INSERT INTO zps_schema (version) VALUES (?1)", params![known])?;
    } else if version < known {
        tx.execute("UPDATE zps_schema SET version = ?1", params![known])?;
    }
    let epoch = match tx
        .query_row("SELECT value FROM zps_meta WHERE key = 'epoch'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
    {
        Some(e) => e,
        None => {
            let e = uuid::Uuid::now_v7().to_string();
            tx.execute(
                "INSERT INTO zps_meta (key, value) VALUES ('epoch', ?1)",
                params![e],
            )?;
            e
        }
    };
    tx.commit()?;
    Ok(epoch)
}

/// The schema version this build writes.
pub(crate) fn current_version() -> i64 {
    MIGRATIONS.len() as i64
}
