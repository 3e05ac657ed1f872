//! Every statement the transport runs, built once from the validated names.
//! Values are always bound parameters; only validated, quoted identifiers are
//! interpolated.

use crate::config::{Names, index_name};

/// Columns of an event row, in the order [`crate::rows`] decodes them.
const EVENT_COLUMNS: &str = "id, type, payload::text AS payload, metadata::text AS metadata, encrypted, \
                             emitted_at, expires_at";
/// The same, qualified with the alias `e`.
const EVENT_COLUMNS_E: &str = "e.id, e.type, e.payload::text AS payload, e.metadata::text AS metadata, \
                               e.encrypted, e.emitted_at, e.expires_at";

pub(crate) struct Queries {
    pub(crate) publish: String,
    /// Name of the unique (room, id) index, to recognise a racing duplicate.
    pub(crate) room_id_index: String,
    pub(crate) publish_many: String,
    pub(crate) replay: String,
    pub(crate) fetch_event: String,
    pub(crate) room_info: String,
    pub(crate) ack: String,
    pub(crate) cursor: String,
    pub(crate) put_snapshot: String,
    pub(crate) get_snapshot: String,
    pub(crate) dlq_write: String,
    pub(crate) dlq_list: String,
    pub(crate) dlq_remove: String,
    pub(crate) dlq_len: String,
    pub(crate) dlq_rooms: String,
    pub(crate) presence_lock: String,
    pub(crate) presence_enter: String,
    pub(crate) presence_leave: String,
    pub(crate) presence_members: String,
    pub(crate) presence_sweep: String,
    pub(crate) prune: String,
    pub(crate) read_epoch: String,
    pub(crate) init_epoch: String,
    pub(crate) reset_counter: String,
    pub(crate) reset_events: String,
    pub(crate) reset_cursors: String,
    pub(crate) reset_snapshot: String,
}

impl Queries {
    pub(crate) fn new(n: &Names, events_table: &str) -> Self {
        let Names {
            events,
            counters,
            subscribers,
            snapshots,
            dlq,
            meta,
            presence,
            prune_function,
            ..
        } = n;
        Self {
            // One round trip. `existing` answers a duplicate id without touching the
            // counter; otherwise the counter row is bumped under its row lock (held to
            // commit, so commit order = sequence order in a room), the event inserted
            // and NOTIFY queued in the same transaction. A concurrent duplicate that
            // slipped past `existing` fails the unique (room, id) index, which rolls
            // the whole statement back, counter bump included; the caller retries and
            // then finds the stored event.
            publish: format!(
                "WITH existing AS (
                    SELECT sequence, {EVENT_COLUMNS} FROM {events} WHERE room = $1 AND id = $2
                ),
                counter AS (
                    INSERT INTO {counters} AS c (room, last_sequence)
                    SELECT $1, 1 WHERE NOT EXISTS (SELECT 1 FROM existing)
                    ON CONFLICT (room) DO UPDATE
                        SET last_sequence = c.last_sequence + 1, updated_at = now()
                    RETURNING c.last_sequence
                ),
                inserted AS (
                    INSERT INTO {events}
                        (room, sequence, id, type, payload, metadata, encrypted, emitted_at, expires_at)
                    SELECT $1, counter.last_sequence, $2, $3, $4::text::json, $5::text::json, $6, $7, $8
                    FROM counter
                    RETURNING sequence
                ),
                notified AS (
                    SELECT sequence, pg_notify($9, $10 || sequence::text || chr(10) || $11) AS sent
                    FROM inserted
                )
                SELECT false AS duplicate, sequence, NULL::text AS id, NULL::text AS type,
                       NULL::text AS payload, NULL::text AS metadata, NULL::boolean AS encrypted,
                       NULL::timestamptz AS emitted_at, NULL::timestamptz AS expires_at
                FROM notified
                UNION ALL
                SELECT true, sequence, {EVENT_COLUMNS} FROM existing"
            ),
            room_id_index: index_name(events_table, "room_id_key"),
            // The same for many events (any rooms) in one statement: counters are bumped
            // once per room (in room order, so concurrent batches never deadlock), each
            // new event numbered in input order; repeated ids within the batch resolve
            // to the first; NOTIFYs are queued in (room, sequence) order. One row per
            // input event, in input order.
            publish_many: format!(
                "WITH input AS (
                    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                         $6::boolean[], $7::timestamptz[], $8::timestamptz[],
                                         $10::text[], $11::text[])
                        WITH ORDINALITY AS t(room, id, type, payload, metadata, encrypted, emitted_at,
                                             expires_at, note_prefix, note_rest, ord)
                ),
                existing AS (
                    -- LATERAL + LIMIT keeps this a per-event lookup in the (room, id) index,
                    -- whatever the statistics said when the plan was cached (a plain join
                    -- planned while the table was small hashes the whole table every batch).
                    SELECT i.ord, e.sequence, {EVENT_COLUMNS_E}
                    FROM input i
                    JOIN LATERAL (
                        SELECT * FROM {events} e WHERE e.room = i.room AND e.id = i.id LIMIT 1
                    ) e ON true
                ),
                fresh AS (
                    SELECT DISTINCT ON (i.room, i.id) i.*
                    FROM input i
                    WHERE NOT EXISTS (SELECT 1 FROM existing x WHERE x.ord = i.ord)
                    ORDER BY i.room, i.id, i.ord
                ),
                counts AS (
                    SELECT room, count(*) AS n FROM fresh GROUP BY room
                ),
                counter AS (
                    INSERT INTO {counters} AS c (room, last_sequence)
                    SELECT room, n FROM counts ORDER BY room
                    ON CONFLICT (room) DO UPDATE
                        SET last_sequence = c.last_sequence + EXCLUDED.last_sequence, updated_at = now()
                    RETURNING c.room, c.last_sequence
                ),
                numbered AS (
                    SELECT f.*,
                           c.last_sequence - k.n + row_number() OVER (PARTITION BY f.room ORDER BY f.ord)
                               AS sequence
                    FROM fresh f JOIN counter c ON c.room = f.room JOIN counts k ON k.room = f.room
                ),
                inserted AS (
                    INSERT INTO {events}
                        (room, sequence, id, type, payload, metadata, encrypted, emitted_at, expires_at)
                    SELECT room, sequence, id, type, payload::json, metadata::json, encrypted, emitted_at,
                           expires_at
                    FROM numbered
                    RETURNING sequence
                ),
                notified AS MATERIALIZED (
                    SELECT n.*, pg_notify($9, n.note_prefix || n.sequence::text || chr(10) || n.note_rest) AS sent
                    FROM (SELECT * FROM numbered ORDER BY room, sequence OFFSET 0) n
                )
                SELECT i.ord,
                       (x.ord IS NOT NULL OR f.ord <> i.ord) AS duplicate,
                       COALESCE(x.sequence, f.sequence) AS sequence,
                       COALESCE(x.id, f.id) AS id,
                       COALESCE(x.type, f.type) AS type,
                       COALESCE(x.payload, f.payload) AS payload,
                       CASE WHEN x.ord IS NOT NULL THEN x.metadata ELSE f.metadata END AS metadata,
                       COALESCE(x.encrypted, f.encrypted) AS encrypted,
                       COALESCE(x.emitted_at, f.emitted_at) AS emitted_at,
                       COALESCE(x.expires_at, f.expires_at) AS expires_at,
                       (SELECT count(*) FROM notified) AS notified
                FROM input i
                LEFT JOIN existing x ON x.ord = i.ord
                LEFT JOIN notified f ON x.ord IS NULL AND f.room = i.room AND f.id = i.id
                ORDER BY i.ord"
            ),
            // The head comes from the counters row in the same statement (same snapshot):
            // a visible counter value N means events 1..=N are all committed and visible.
            replay: format!(
                "SELECT h.head, e.sequence, e.id, e.type, e.payload, e.metadata, e.encrypted,
                        e.emitted_at, e.expires_at
                 FROM (SELECT COALESCE((SELECT last_sequence FROM {counters} WHERE room = $1), 0) AS head) h
                 LEFT JOIN LATERAL (
                     SELECT sequence, {EVENT_COLUMNS} FROM {events}
                     WHERE room = $1 AND sequence > $2 AND sequence <= $3
                       AND ($4::text[] IS NULL OR type = ANY($4::text[]))
                       AND expires_at > now()
                     ORDER BY sequence
                     LIMIT $5
                 ) e ON true
                 ORDER BY e.sequence"
            ),
            fetch_event: format!(
                "SELECT sequence, {EVENT_COLUMNS} FROM {events} WHERE room = $1 AND sequence = $2"
            ),
            room_info: format!(
                "SELECT COALESCE(c.epoch, (SELECT value FROM {meta} WHERE key = 'epoch')) AS epoch,
                        COALESCE(c.last_sequence, 0) AS last_sequence,
                        (SELECT min(sequence) FROM {events} WHERE room = $1 AND expires_at > now()) AS earliest
                 FROM (SELECT 1) AS one LEFT JOIN {counters} c ON c.room = $1"
            ),
            ack: format!(
                "INSERT INTO {subscribers} AS s (room, subscriber_id, last_sequence) VALUES ($1, $2, $3)
                 ON CONFLICT (room, subscriber_id) DO UPDATE
                     SET last_sequence = GREATEST(s.last_sequence, EXCLUDED.last_sequence), updated_at = now()
                 RETURNING last_sequence"
            ),
            cursor: format!("SELECT last_sequence FROM {subscribers} WHERE room = $1 AND subscriber_id = $2"),
            put_snapshot: format!(
                "INSERT INTO {snapshots} (room, last_sequence, state, created_at) VALUES ($1, $2, $3::text::json, $4)
                 ON CONFLICT (room) DO UPDATE
                     SET last_sequence = EXCLUDED.last_sequence, state = EXCLUDED.state,
                         created_at = EXCLUDED.created_at"
            ),
            get_snapshot: format!(
                "SELECT last_sequence, state::text AS state, created_at FROM {snapshots} WHERE room = $1"
            ),
            dlq_write: format!(
                "INSERT INTO {dlq} (room, event, error, attempts, subscriber_id, failed_at)
                 VALUES ($1, $2::text::json, $3, $4, $5, $6) RETURNING entry_id"
            ),
            dlq_list: format!(
                "SELECT entry_id, event::text AS event, error, attempts, subscriber_id, failed_at FROM {dlq}
                 WHERE room = $1 AND entry_id > $2 ORDER BY entry_id LIMIT $3"
            ),
            dlq_remove: format!("DELETE FROM {dlq} WHERE room = $1 AND entry_id = ANY($2::bigint[])"),
            dlq_len: format!("SELECT count(*) FROM {dlq} WHERE room = $1"),
            // Byte order (COLLATE "C"), as rooms compare everywhere else, so pages never skip.
            dlq_rooms: format!(
                "SELECT room, count(*) AS len FROM {dlq}
                 WHERE starts_with(room, $1) AND room COLLATE \"C\" > $2
                 GROUP BY room ORDER BY room COLLATE \"C\" LIMIT $3"
            ),
            // Serialises the enters of one user (see `presence_enter`); the two-int key
            // space never meets the migrator's single-bigint lock, and a hash collision
            // only makes two enters wait for each other.
            presence_lock: "SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))".to_owned(),
            // Metadata belongs to the member: `Some` ($4) is written to every row of the
            // user (latest wins), `None` keeps what the user's live rows hold.
            presence_enter: format!(
                "WITH live AS (
                    SELECT metadata::text AS metadata FROM {presence}
                    WHERE room = $1 AND user_id = $2 AND expires_at > now()
                ),
                chosen AS (
                    SELECT COALESCE($4::text, (SELECT metadata FROM live WHERE metadata IS NOT NULL LIMIT 1))
                        AS metadata
                ),
                upsert AS (
                    INSERT INTO {presence} (room, user_id, connection_id, metadata, last_seen_at, expires_at)
                    SELECT $1, $2, $3, metadata::json, $5, now() + $6::bigint * interval '1 millisecond'
                    FROM chosen
                    ON CONFLICT (room, user_id, connection_id) DO UPDATE
                        SET metadata = EXCLUDED.metadata, last_seen_at = EXCLUDED.last_seen_at,
                            expires_at = EXCLUDED.expires_at
                    RETURNING 1
                ),
                spread AS (
                    UPDATE {presence} SET metadata = $4::text::json
                    WHERE $4::text IS NOT NULL AND room = $1 AND user_id = $2 AND connection_id <> $3
                    RETURNING 1
                )
                SELECT NOT EXISTS (SELECT 1 FROM live) AS joined"
            ),
            presence_leave: format!(
                "WITH removed AS (
                    DELETE FROM {presence} WHERE room = $1 AND user_id = $2 AND connection_id = $3
                    RETURNING 1
                )
                SELECT EXISTS (SELECT 1 FROM removed)
                   AND NOT EXISTS (
                       SELECT 1 FROM {presence}
                       WHERE room = $1 AND user_id = $2 AND connection_id <> $3 AND expires_at > now()
                   ) AS left_room"
            ),
            presence_members: format!(
                "SELECT user_id,
                        (array_agg(metadata::text ORDER BY metadata IS NULL, last_seen_at DESC))[1] AS metadata,
                        max(last_seen_at) AS last_seen_at
                 FROM {presence}
                 WHERE room = $1 AND expires_at > now()
                 GROUP BY user_id"
            ),
            presence_sweep: format!(
                "WITH gone AS (
                    DELETE FROM {presence} WHERE expires_at <= now() RETURNING room, user_id
                )
                SELECT DISTINCT g.room, g.user_id FROM gone g
                WHERE NOT EXISTS (
                    SELECT 1 FROM {presence} p
                    WHERE p.room = g.room AND p.user_id = g.user_id AND p.expires_at > now()
                )"
            ),
            prune: format!("SELECT {prune_function}()"),
            read_epoch: format!("SELECT value FROM {meta} WHERE key = 'epoch'"),
            init_epoch: format!(
                "INSERT INTO {meta} (key, value) VALUES ('epoch', $1) ON CONFLICT (key) DO NOTHING"
            ),
            // Taking the counter row lock first serialises the reset with publishers.
            reset_counter: format!(
                "INSERT INTO {counters} AS c (room, last_sequence, epoch) VALUES ($1, 0, $2)
                 ON CONFLICT (room) DO UPDATE SET last_sequence = 0, epoch = EXCLUDED.epoch, updated_at = now()"
            ),
            reset_events: format!("DELETE FROM {events} WHERE room = $1"),
            reset_cursors: format!("DELETE FROM {subscribers} WHERE room = $1"),
            reset_snapshot: format!("DELETE FROM {snapshots} WHERE room = $1"),
        }
    }
}
