-- zero-pub-sub PostgreSQL provider: pruning of expired events.
--
-- Apply by hand (after 001) with:
--   psql "$DATABASE_URL" --single-transaction -v ON_ERROR_STOP=1 -f migrations/002_postgres_prune_function.sql
-- Then prune from cron / pg_cron / the CLI:
--   SELECT realtime_prune_expired_events();
-- It returns the number of events removed. Expired events are never replayed anyway;
-- pruning only reclaims space.

CREATE OR REPLACE FUNCTION realtime_prune_expired_events()
RETURNS bigint
LANGUAGE sql
VOLATILE
AS $$
    WITH removed AS (
        DELETE FROM realtime_events
        WHERE expires_at <= now()
        RETURNING 1
    )
    SELECT count(*) FROM removed;
$$;

INSERT INTO realtime_migrations (name) VALUES ('002_postgres_prune_function')
ON CONFLICT (name) DO NOTHING;
