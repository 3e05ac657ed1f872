//! The provider's error type and its mapping onto the engine's error kinds.

use zps_core::{Error, TransportError, TransportErrorKind};

/// Failures of the PostgreSQL provider (connecting, migrating, querying).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// A table, schema, function or channel name is not a plain SQL identifier.
    #[error("invalid {field} `{value}`: must match ^[A-Za-z_][A-Za-z0-9_]{{0,62}}$")]
    InvalidIdentifier {
        /// The configuration field.
        field: &'static str,
        /// The offending value (truncated).
        value: String,
    },
    /// Another configuration value is unusable.
    #[error("invalid PostgreSQL provider configuration: {0}")]
    InvalidConfig(String),
    /// The connection URL could not be parsed.
    #[error("invalid PostgreSQL connection URL: {0}")]
    InvalidUrl(String),
    /// The database could not be reached or refused the connection.
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Unreachable {
        /// `host:port/database` (never the password).
        target: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Connecting took longer than `connect_timeout`.
    #[error("cannot connect to PostgreSQL at {target}: no connection within {timeout_ms} ms")]
    ConnectTimeout {
        /// `host:port/database` (never the password).
        target: String,
        /// The configured bound.
        timeout_ms: u128,
    },
    /// A table or function is missing and auto-migrate is off.
    #[error(
        "{kind} `{object}` does not exist and auto_migrate is off: apply migrations/{migration}.sql \
         (psql --single-transaction -f migrations/{migration}.sql, after the ones before it), \
         run `zero-pub-sub migrate`, or enable auto_migrate"
    )]
    MissingSchema {
        /// `table` or `function`.
        kind: &'static str,
        /// The qualified name.
        object: String,
        /// The migration that creates it, e.g. `001_postgres_initial`.
        migration: &'static str,
    },
    /// Applying a migration failed.
    #[error("migration {name} failed: {source}")]
    Migration {
        /// The migration, e.g. `001_postgres_initial`.
        name: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A query failed.
    #[error("PostgreSQL query failed: {0}")]
    Database(#[from] sqlx::Error),
    /// Stored data could not be decoded.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt {
        /// The table read.
        table: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The transport was closed.
    #[error("the PostgreSQL transport is closed")]
    Closed,
}

impl PostgresError {
    /// How the engine should treat this failure (retry later, corrupt data, or other).
    pub fn kind(&self) -> TransportErrorKind {
        match self {
            Self::Unreachable { .. } | Self::ConnectTimeout { .. } | Self::Closed => {
                TransportErrorKind::Unavailable
            }
            Self::Corrupt { .. } => TransportErrorKind::Corrupt,
            Self::Database(e) | Self::Migration { source: e, .. } => sqlx_kind(e),
            _ => TransportErrorKind::Other,
        }
    }
}

/// Classifies a driver error: connection trouble is `Unavailable` (retrying may succeed).
pub(crate) fn sqlx_kind(e: &sqlx::Error) -> TransportErrorKind {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => TransportErrorKind::Unavailable,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 08: connection exception; 57P0x: shutdown / cannot connect now; 53: out of
            // resources (too many connections, disk full); 28: authentication; 3D000: no such
            // database; 55000: database not accepting connections.
            let connecting = ["08", "57P", "53", "28"].iter().any(|c| code.starts_with(c));
            if connecting || code == "3D000" || code == "55000" {
                TransportErrorKind::Unavailable
            } else {
                TransportErrorKind::Other
            }
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => TransportErrorKind::Corrupt,
        _ => TransportErrorKind::Other,
    }
}

impl From<PostgresError> for Error {
    fn from(e: PostgresError) -> Self {
        match e {
            PostgresError::Closed | PostgresError::Database(sqlx::Error::PoolClosed) => Error::Closed,
            other => {
                let kind = other.kind();
                Error::Transport(TransportError::new("postgres", kind, other))
            }
        }
    }
}

/// Shorthand for query results inside the crate.
pub(crate) type PgResult<T> = Result<T, PostgresError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_engine_errors() {
        let e: Error = PostgresError::Database(sqlx::Error::PoolTimedOut).into();
        assert_eq!(e.code(), zps_core::ErrorCode::Unavailable);
        let e: Error = PostgresError::Database(sqlx::Error::PoolClosed).into();
        assert!(matches!(e, Error::Closed));
        let e: Error = PostgresError::Corrupt {
            table: "events",
            detail: "x".into(),
        }
        .into();
        assert!(matches!(e, Error::Transport(ref t) if t.kind == TransportErrorKind::Corrupt));
        let msg = PostgresError::MissingSchema {
            kind: "table",
            object: "public.realtime_events".into(),
            migration: "001_postgres_initial",
        }
        .to_string();
        assert!(msg.contains("realtime_events") && msg.contains("migrations/001_postgres_initial.sql"));
    }
}
