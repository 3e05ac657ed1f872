//! The provider's error type and its mapping onto the engine's error kinds.

use mongodb::error::{ErrorKind, WriteFailure};
use zps_core::{Error, TransportError, TransportErrorKind};

/// MongoDB's duplicate-key error code (unique index violation).
pub const DUPLICATE_KEY: i32 = 11000;

/// Failures of the MongoDB provider (configuration, connecting, commands, decoding).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MongoError {
    /// A database or collection name is not acceptable.
    #[error(
        "invalid {field} `{value}`: use [A-Za-z0-9_][A-Za-z0-9_.-]* (collections) or [A-Za-z0-9_-]+ (database)"
    )]
    InvalidName {
        /// The configuration field.
        field: &'static str,
        /// The offending value (truncated).
        value: String,
    },
    /// Another configuration value is unusable.
    #[error("invalid MongoDB provider configuration: {0}")]
    InvalidConfig(String),
    /// The connection URI could not be parsed.
    #[error("invalid MongoDB connection URI: {0}")]
    InvalidUri(String),
    /// No server could be reached or selected.
    #[error("cannot connect to MongoDB at {target}: {source}")]
    Unreachable {
        /// The host list (never credentials).
        target: String,
        /// The driver's error.
        #[source]
        source: mongodb::error::Error,
    },
    /// Connecting took longer than the configured bound.
    #[error("cannot connect to MongoDB at {target}: no answer within {timeout_ms} ms")]
    ConnectTimeout {
        /// The host list (never credentials).
        target: String,
        /// The bound that passed.
        timeout_ms: u128,
    },
    /// A command failed.
    #[error("MongoDB command failed: {0}")]
    Database(#[from] mongodb::error::Error),
    /// A stored document could not be decoded.
    #[error("corrupt document in {collection}: {detail}")]
    Corrupt {
        /// The collection read.
        collection: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A publish kept colliding with skip records or a regressed counter.
    #[error("could not store the event in room {room}: {detail}")]
    Conflict {
        /// The room.
        room: String,
        /// What kept failing.
        detail: String,
    },
    /// A history hole did not settle within its bound (the reader gave up for now).
    #[error("history of room {room} has an unsettled hole at sequence {sequence}")]
    Unsettled {
        /// The room.
        room: String,
        /// The first missing sequence.
        sequence: u64,
    },
    /// The transport was closed.
    #[error("the MongoDB transport is closed")]
    Closed,
}

impl MongoError {
    /// How the engine should treat this failure (retry later, corrupt data, or other).
    pub fn kind(&self) -> TransportErrorKind {
        match self {
            Self::Unreachable { .. }
            | Self::ConnectTimeout { .. }
            | Self::Closed
            | Self::Unsettled { .. } => TransportErrorKind::Unavailable,
            Self::Corrupt { .. } => TransportErrorKind::Corrupt,
            Self::Database(e) => driver_kind(e),
            _ => TransportErrorKind::Other,
        }
    }
}

/// Server error codes that mean "not reachable right now / try again".
const TRANSIENT_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// Classifies a driver error: connection trouble is `Unavailable` (retrying may succeed).
pub(crate) fn driver_kind(e: &mongodb::error::Error) -> TransportErrorKind {
    if e.contains_label("RetryableWriteError") || e.contains_label("NetworkError") {
        return TransportErrorKind::Unavailable;
    }
    match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Authentication { .. }
        | ErrorKind::Shutdown => TransportErrorKind::Unavailable,
        ErrorKind::Command(c) if TRANSIENT_CODES.contains(&c.code) => TransportErrorKind::Unavailable,
        ErrorKind::BsonDeserialization(_) | ErrorKind::InvalidResponse { .. } => TransportErrorKind::Corrupt,
        _ => TransportErrorKind::Other,
    }
}

/// Whether a driver error is a unique-index violation (code 11000), whichever command
/// reported it (insert, insert_many, findAndModify upsert, update).
pub fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|errs| !errs.is_empty() && errs.iter().all(|w| w.code == DUPLICATE_KEY)),
        _ => false,
    }
}

impl From<MongoError> for Error {
    fn from(e: MongoError) -> Self {
        match e {
            MongoError::Closed => Error::Closed,
            other => {
                let kind = other.kind();
                Error::Transport(TransportError::new("mongo", kind, other))
            }
        }
    }
}

/// Shorthand for fallible operations inside the crate.
pub(crate) type MongoResult<T> = Result<T, MongoError>;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mongodb::bson::{Bson, doc, from_document};
    use mongodb::error::{CommandError, IndexedWriteError, InsertManyError, WriteError};

    use super::*;

    fn write_error(code: i32) -> mongodb::error::Error {
        let w: WriteError = from_document(doc! {
            "code": code,
            "errmsg": "E11000 duplicate key error collection: db.realtime_events index: _id_",
        })
        .unwrap();
        ErrorKind::Write(WriteFailure::WriteError(w)).into()
    }

    fn command_error(code: i32) -> mongodb::error::Error {
        let c: CommandError =
            from_document(doc! { "code": code, "codeName": "X", "errmsg": "boom" }).unwrap();
        ErrorKind::Command(c).into()
    }

    #[test]
    fn duplicate_key_is_recognised_everywhere() {
        assert!(is_duplicate_key(&write_error(11000)));
        assert!(!is_duplicate_key(&write_error(121)));
        assert!(is_duplicate_key(&command_error(11000)));
        assert!(!is_duplicate_key(&command_error(2)));
        let indexed: IndexedWriteError =
            from_document(doc! { "index": 1_i32, "code": 11000, "errmsg": "dup" }).unwrap();
        let many: InsertManyError = from_document(doc! { "writeErrors": [
            mongodb::bson::to_bson(&indexed).unwrap()
        ] })
        .unwrap();
        let e: mongodb::error::Error = ErrorKind::InsertMany(many).into();
        assert!(is_duplicate_key(&e));
        let io: mongodb::error::Error = ErrorKind::Io(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
        .into();
        assert!(!is_duplicate_key(&io));
        let _ = Bson::Null;
    }

    #[test]
    fn kinds_map_to_engine_errors() {
        let io: mongodb::error::Error = ErrorKind::Io(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
        .into();
        let e: Error = MongoError::Database(io).into();
        assert_eq!(e.code(), zps_core::ErrorCode::Unavailable);
        let stepped_down: Error = MongoError::Database(command_error(10107)).into();
        assert_eq!(stepped_down.code(), zps_core::ErrorCode::Unavailable);
        let other: Error = MongoError::Database(command_error(2)).into();
        assert!(matches!(other, Error::Transport(ref t) if t.kind == TransportErrorKind::Other));
        assert!(matches!(Error::from(MongoError::Closed), Error::Closed));
        let corrupt: Error = MongoError::Corrupt {
            collection: "events",
            detail: "x".into(),
        }
        .into();
        assert!(
            matches!(corrupt, Error::Transport(ref t) if t.kind == TransportErrorKind::Corrupt && t.provider == "mongo")
        );
        let unsettled: Error = MongoError::Unsettled {
            room: "chat:1".into(),
            sequence: 4,
        }
        .into();
        assert_eq!(unsettled.code(), zps_core::ErrorCode::Unavailable);
        let msg = MongoError::InvalidName {
            field: "events_collection",
            value: "a$".into(),
        }
        .to_string();
        assert!(msg.contains("events_collection") && msg.contains("a$"), "{msg}");
    }
}
