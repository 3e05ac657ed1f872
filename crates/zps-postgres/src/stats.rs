//! Planner statistics for a table that has never been analyzed.
//!
//! Without statistics PostgreSQL guesses that `room = $1` matches 0.5 % of the
//! events table, so a catch-up page of a large room is planned as a bitmap scan
//! of every later event plus a sort — each 500-event page then costs as much
//! as reading the whole rest of the room. Autovacuum's first ANALYZE fixes that
//! (within a minute by default), but servers run with autovacuum off, and a new
//! deployment can take a burst first. So after the events table has received
//! [`FIRST_CHECK`] events, and again at every tenfold count, the transport asks
//! whether the table was ever analyzed and, if not, analyzes it (once).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sqlx::PgPool;

/// Events published through this transport before the first check.
const FIRST_CHECK: u64 = 10_000;

/// Counts published events and triggers the check.
pub(crate) struct StatsBootstrap {
    published: AtomicU64,
    next_check: AtomicU64,
    done: AtomicBool,
    /// `ANALYZE` target: the quoted events and counters tables.
    tables: String,
    /// The events table as `to_regclass` reads it.
    plain_events: String,
}

impl StatsBootstrap {
    pub(crate) fn new(quoted_events: &str, quoted_counters: &str, plain_events: &str) -> Self {
        Self {
            published: AtomicU64::new(0),
            next_check: AtomicU64::new(FIRST_CHECK),
            done: AtomicBool::new(false),
            tables: format!("{quoted_events}, {quoted_counters}"),
            plain_events: plain_events.to_owned(),
        }
    }

    /// Records `n` stored events; past a threshold, checks in the background.
    pub(crate) fn published(self: &Arc<Self>, n: u64, pool: &PgPool) {
        if self.done.load(Ordering::Relaxed) {
            return;
        }
        let total = self.published.fetch_add(n, Ordering::Relaxed) + n;
        let due = self.next_check.load(Ordering::Relaxed);
        if total < due
            || self
                .next_check
                .compare_exchange(due, due.saturating_mul(10), Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (me, pool) = (self.clone(), pool.clone());
        tokio::spawn(async move {
            match me.analyze_if_never_analyzed(&pool).await {
                Ok(true) => {
                    me.done.store(true, Ordering::Relaxed);
                    tracing::info!(table = %me.plain_events, "events table had no planner statistics; analyzed it");
                }
                Ok(false) => me.done.store(true, Ordering::Relaxed),
                Err(e) => tracing::debug!(error = %e, "planner statistics check failed"),
            }
        });
    }

    /// Returns whether it ran ANALYZE.
    async fn analyze_if_never_analyzed(&self, pool: &PgPool) -> Result<bool, sqlx::Error> {
        let never: Option<bool> = sqlx::query_scalar(
            "SELECT last_analyze IS NULL AND last_autoanalyze IS NULL
             FROM pg_stat_user_tables WHERE relid = to_regclass($1)",
        )
        .bind(&self.plain_events)
        .fetch_optional(pool)
        .await?;
        if never != Some(true) {
            return Ok(false);
        }
        sqlx::query(&format!("ANALYZE {}", self.tables))
            .execute(pool)
            .await?;
        Ok(true)
    }
}
