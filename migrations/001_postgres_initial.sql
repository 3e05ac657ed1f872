-- zero-pub-sub PostgreSQL provider: initial schema.
--
-- Apply by hand with:
--   psql "$DATABASE_URL" --single-transaction -v ON_ERROR_STOP=1 -f migrations/001_postgres_initial.sql
-- The provider applies the same file itself when auto-migrate is on (the default outside
-- ZPS_ENV=production), with the table names of its configuration substituted.
-- Every statement is idempotent, and the file records itself in realtime_migrations,
-- so applying it twice (by hand, by the provider, or both) is harmless.
-- No BEGIN/COMMIT here: the provider runs it inside its own transaction under an
-- advisory lock; use --single-transaction when applying it with psql.

CREATE TABLE IF NOT EXISTS realtime_migrations (
    name       text        PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Database-wide facts; 'epoch' is the default epoch of every room (random, set once).
CREATE TABLE IF NOT EXISTS realtime_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

INSERT INTO realtime_meta (key, value)
VALUES ('epoch', replace(gen_random_uuid()::text, '-', ''))
ON CONFLICT (key) DO NOTHING;

-- One row per room: the last assigned sequence. Publishers take the next sequence under
-- this row's lock, so commit order equals sequence order within a room.
-- epoch NULL means "the database epoch"; reset_room() gives the row a fresh one.
CREATE TABLE IF NOT EXISTS realtime_counters (
    room          text        PRIMARY KEY,
    last_sequence bigint      NOT NULL DEFAULT 0,
    epoch         text,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The history. payload/metadata are json (not jsonb) so they round-trip byte for byte.
CREATE TABLE IF NOT EXISTS realtime_events (
    room       text        NOT NULL,
    sequence   bigint      NOT NULL,
    id         text        NOT NULL,
    type       text        NOT NULL,
    payload    json        NOT NULL,
    metadata   json,
    encrypted  boolean     NOT NULL DEFAULT false,
    emitted_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (room, sequence)
);

-- Idempotency: an event id is unique within its room.
CREATE UNIQUE INDEX IF NOT EXISTS realtime_events_room_id_key
    ON realtime_events (room, id);

-- Pruning deletes by expiry.
CREATE INDEX IF NOT EXISTS realtime_events_expires_at_idx
    ON realtime_events (expires_at);

-- Ack cursors: the highest processed sequence per (room, subscriber); never moves back.
CREATE TABLE IF NOT EXISTS realtime_subscribers (
    room          text        NOT NULL,
    subscriber_id text        NOT NULL,
    last_sequence bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, subscriber_id)
);

-- The latest snapshot of each room.
CREATE TABLE IF NOT EXISTS realtime_snapshots (
    room          text        PRIMARY KEY,
    last_sequence bigint      NOT NULL,
    state         json        NOT NULL,
    created_at    timestamptz NOT NULL
);

-- Dead letters: events whose handler failed every retry.
CREATE TABLE IF NOT EXISTS realtime_dlq (
    entry_id      bigserial   PRIMARY KEY,
    room          text        NOT NULL,
    event         json        NOT NULL,
    error         text        NOT NULL,
    attempts      integer     NOT NULL,
    subscriber_id text,
    failed_at     timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS realtime_dlq_room_entry_idx
    ON realtime_dlq (room, entry_id);

-- Presence: one row per (room, user, connection), each with its own expiry.
CREATE TABLE IF NOT EXISTS realtime_presence (
    room          text        NOT NULL,
    user_id       text        NOT NULL,
    connection_id text        NOT NULL,
    metadata      json,
    last_seen_at  timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (room, user_id, connection_id)
);

CREATE INDEX IF NOT EXISTS realtime_presence_expires_at_idx
    ON realtime_presence (expires_at);

INSERT INTO realtime_migrations (name) VALUES ('001_postgres_initial')
ON CONFLICT (name) DO NOTHING;
