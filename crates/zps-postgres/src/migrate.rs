//! The schema: the plain SQL files of `migrations/`, embedded, with the configured
//! names substituted, applied in order under an advisory lock and recorded in the
//! migrations table so a second run is a no-op.

use futures::future::BoxFuture;
use sqlx::{Executor, PgPool};

use crate::config::{Names, PostgresConfig, fnv1a, quote};
use crate::error::{PgResult, PostgresError};

/// The migration files, in order: `(name, SQL written for the default names)`.
pub const MIGRATIONS: [(&str, &str); 2] = [
    (
        "001_postgres_initial",
        include_str!("../../../migrations/001_postgres_initial.sql"),
    ),
    (
        "002_postgres_prune_function",
        include_str!("../../../migrations/002_postgres_prune_function.sql"),
    ),
];

/// What a [`migrate`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Migrations applied by this call, in order.
    pub applied: Vec<&'static str>,
    /// Migrations found already applied.
    pub already_applied: Vec<&'static str>,
}

/// Replaces whole identifier tokens of `sql` (`[A-Za-z0-9_]+` runs) found in `map`.
fn substitute(sql: &str, map: &[(String, String)]) -> String {
    let mut out = String::with_capacity(sql.len() + 256);
    let mut token_start: Option<usize> = None;
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let flush = |out: &mut String, token: &str| match map.iter().find(|(from, _)| from == token) {
        Some((_, to)) => out.push_str(to),
        None => out.push_str(token),
    };
    for (i, c) in sql.char_indices() {
        if is_ident(c) {
            token_start.get_or_insert(i);
            continue;
        }
        if let Some(start) = token_start.take() {
            flush(&mut out, &sql[start..i]);
        }
        out.push(c);
    }
    if let Some(start) = token_start {
        flush(&mut out, &sql[start..]);
    }
    out
}

/// The migration SQL for `config`'s names, in order — what `migrate` executes, for
/// operators who apply it by hand with custom table names.
pub fn render_migrations(config: &PostgresConfig) -> Result<Vec<(&'static str, String)>, PostgresError> {
    let names = Names::new(config)?;
    Ok(MIGRATIONS
        .iter()
        .map(|(name, sql)| (*name, substitute(sql, &names.substitutions)))
        .collect())
}

/// Creates or upgrades the schema for `config` (creating `config.schema` if set).
///
/// Runs in one transaction holding an advisory lock, so concurrent migrators (several
/// processes starting at once) apply each migration exactly once; applied migrations
/// are recorded in the migrations table and skipped on later runs.
///
/// ```no_run
/// # async fn run() -> Result<(), zps_postgres::PostgresError> {
/// use zps_postgres::{PostgresConfig, connect_pool, migrate};
/// let config = PostgresConfig::default();
/// let pool = connect_pool("postgres://postgres@127.0.0.1/app", &config).await?;
/// let report = migrate(&pool, &config).await?;
/// println!("applied {:?}", report.applied);
/// # Ok(()) }
/// ```
pub async fn migrate(pool: &PgPool, config: &PostgresConfig) -> Result<MigrationReport, PostgresError> {
    // Boxed with an explicit `Send` bound: proving `Send` for sqlx transaction futures
    // inside callers' higher-ranked contexts (async_trait, spawn) otherwise fails to compile.
    let fut: BoxFuture<'_, PgResult<MigrationReport>> = Box::pin(migrate_in_transaction(pool, config));
    fut.await
}

async fn migrate_in_transaction(pool: &PgPool, config: &PostgresConfig) -> PgResult<MigrationReport> {
    let names = Names::new(config)?;
    let rendered = render_migrations(config)?;
    let mut tx = pool.begin().await?;
    // One lock per migrations table: migrators of the same schema queue up here.
    let key = fnv1a(format!("zero-pub-sub:migrate:{}", names.migrations).as_bytes()) as i64;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    if let Some(schema) = &names.schema {
        (&mut *tx)
            .execute(sqlx::raw_sql(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote(schema)
            )))
            .await?;
    }
    // The same definition as in 001 (which repeats it), so the bookkeeping exists first.
    let bookkeeping = format!(
        "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        names.migrations
    );
    (&mut *tx).execute(sqlx::raw_sql(&bookkeeping)).await?;
    let select_done = format!("SELECT name FROM {}", names.migrations);
    let done: Vec<String> = sqlx::query_scalar(&select_done).fetch_all(&mut *tx).await?;
    let mut report = MigrationReport::default();
    for (name, sql) in &rendered {
        if done.iter().any(|d| d == name) {
            report.already_applied.push(name);
            continue;
        }
        (&mut *tx)
            .execute(sqlx::raw_sql(sql))
            .await
            .map_err(|source| PostgresError::Migration { name, source })?;
        report.applied.push(name);
    }
    tx.commit().await?;
    if !report.applied.is_empty() {
        tracing::info!(applied = ?report.applied, "applied PostgreSQL migrations");
    }
    Ok(report)
}

/// Fails with [`PostgresError::MissingSchema`] naming the first missing table or function.
pub(crate) async fn check_schema(pool: &PgPool, config: &PostgresConfig, names: &Names) -> PgResult<()> {
    let quoted: Vec<String> = [
        &names.events,
        &names.counters,
        &names.subscribers,
        &names.snapshots,
        &names.dlq,
        &names.meta,
        &names.presence,
    ]
    .into_iter()
    .cloned()
    .collect();
    let present: Vec<bool> =
        sqlx::query_scalar("SELECT to_regclass(t) IS NOT NULL FROM unnest($1::text[]) t")
            .bind(&quoted)
            .fetch_all(pool)
            .await?;
    for ((_, plain), ok) in names.plain.iter().zip(present) {
        if !ok {
            return Err(PostgresError::MissingSchema {
                kind: "table",
                object: plain.clone(),
                migration: MIGRATIONS[0].0,
            });
        }
    }
    let function_ok: bool = sqlx::query_scalar("SELECT to_regprocedure($1) IS NOT NULL")
        .bind(format!("{}()", names.prune_function))
        .fetch_one(pool)
        .await?;
    if !function_ok {
        return Err(PostgresError::MissingSchema {
            kind: "function",
            object: names.plain_function(config),
            migration: MIGRATIONS[1].0,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_replaces_whole_tokens_only() {
        let map = vec![
            ("realtime_events".to_owned(), "\"s\".\"ev\"".to_owned()),
            (
                "realtime_events_room_id_key".to_owned(),
                "\"ev_room_id_key\"".to_owned(),
            ),
        ];
        let sql = "CREATE INDEX realtime_events_room_id_key ON realtime_events (room); \
                   SELECT realtime_prune_expired_events(); x.realtime_events";
        assert_eq!(
            substitute(sql, &map),
            "CREATE INDEX \"ev_room_id_key\" ON \"s\".\"ev\" (room); \
             SELECT realtime_prune_expired_events(); x.\"s\".\"ev\""
        );
    }

    #[test]
    fn default_rendering_only_quotes() {
        let rendered = render_migrations(&PostgresConfig::default()).unwrap();
        assert_eq!(rendered.len(), 2);
        assert!(
            rendered[0]
                .1
                .contains("CREATE TABLE IF NOT EXISTS \"realtime_events\"")
        );
        assert!(
            rendered[1]
                .1
                .contains("FUNCTION \"realtime_prune_expired_events\"()")
        );
        assert!(rendered[1].1.contains("DELETE FROM \"realtime_events\""));
    }
}
