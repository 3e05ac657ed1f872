//! Errors of the SQLite provider, and how they map to the engine's.

use zps_core::error::{Error, TransportError, TransportErrorKind};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    /// The connection string is not `sqlite://PATH`.
    #[error("expected sqlite://PATH, got {0:?}")]
    InvalidUrl(String),
    /// Another process has the file open.
    #[error("{path} is in use by another process (the SQLite store belongs to one gateway)")]
    Locked {
        /// The database file.
        path: String,
    },
    /// The file or its folder could not be created or opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The database file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// SQLite refused a statement.
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    /// A stored row does not decode.
    #[error("stored {what} is not valid: {detail}")]
    Corrupt {
        /// Which kind of row.
        what: &'static str,
        /// The decoding error.
        detail: String,
    },
    /// The file was written by a newer version of this provider.
    #[error("the database schema is version {found}; this build knows up to {known}")]
    SchemaTooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this build knows.
        known: i64,
    },
    /// The group transaction holding this write did not commit.
    #[error("commit failed: {0}")]
    Commit(String),
    /// The transport was closed.
    #[error("the SQLite transport is closed")]
    Closed,
}

impl SqliteError {
    fn kind(&self) -> TransportErrorKind {
        match self {
            Self::Corrupt { .. } => TransportErrorKind::Corrupt,
            Self::Locked { .. } => TransportErrorKind::Unavailable,
            Self::Sql(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                TransportErrorKind::Unavailable
            }
            _ => TransportErrorKind::Other,
        }
    }
}

impl From<SqliteError> for Error {
    fn from(e: SqliteError) -> Self {
        match e {
            SqliteError::Closed => Error::Closed,
            other => {
                let kind = other.kind();
                Error::Transport(TransportError::new("sqlite", kind, other))
            }
        }
    }
}

/// Shorthand inside the crate.
pub(crate) type SqlResult<T> = Result<T, SqliteError>;
