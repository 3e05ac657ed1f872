//! The engine's error type. Each variant maps to one stable [`ErrorCode`] so
//! the gateway and clients can react to the kind of failure, not its text.

use std::fmt;

use crate::room::RoomError;

/// Result alias used across the engine and transports.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors from the engine, middleware and transports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A room, scope or pattern is malformed.
    #[error(transparent)]
    InvalidRoom(#[from] RoomError),
    /// An event or option is malformed (empty id, zero TTL, bad limit, ...).
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// A payload exceeds a configured limit.
    #[error("payload too large: {size} bytes (limit {limit})")]
    PayloadTooLarge {
        /// Actual size in bytes.
        size: usize,
        /// Configured limit in bytes.
        limit: usize,
    },
    /// A middleware or policy refused the action.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The provider cannot do this (e.g. replay with `persistStreams: false`).
    #[error("not supported by the {provider} provider: {what}")]
    Unsupported {
        /// Provider name.
        provider: &'static str,
        /// What was asked.
        what: String,
    },
    /// A bounded queue or flow-control window is full.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The engine or transport was closed.
    #[error("closed")]
    Closed,
    /// The storage or fanout backend failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl From<zps_model::Error> for Error {
    fn from(e: zps_model::Error) -> Self {
        match e {
            zps_model::Error::InvalidRoom(r) => Self::InvalidRoom(r),
            zps_model::Error::InvalidEvent(m) => Self::InvalidEvent(m),
            // `zps_model::Error` is non-exhaustive; anything new is an input error too.
            other => Self::InvalidEvent(other.to_string()),
        }
    }
}

impl Error {
    /// The stable code of this error (see [`ErrorCode`]).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidRoom(_) => ErrorCode::InvalidRoom,
            Self::InvalidEvent(_) => ErrorCode::InvalidInput,
            Self::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Self::Rejected(_) => ErrorCode::Rejected,
            Self::Unsupported { .. } => ErrorCode::Unsupported,
            Self::Overloaded(_) => ErrorCode::Overloaded,
            Self::Closed => ErrorCode::Unavailable,
            Self::Transport(t) => match t.kind {
                TransportErrorKind::Unavailable => ErrorCode::Unavailable,
                _ => ErrorCode::Internal,
            },
        }
    }
}

/// Machine-readable error categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Malformed room or pattern.
    InvalidRoom,
    /// Malformed event or option.
    InvalidInput,
    /// Payload over the limit.
    PayloadTooLarge,
    /// Refused by middleware or policy.
    Rejected,
    /// Not offered by this provider.
    Unsupported,
    /// Temporarily full.
    Overloaded,
    /// Backend or engine unavailable (retrying later may succeed).
    Unavailable,
    /// Unexpected backend failure.
    Internal,
}

/// How a backend failed; decides whether callers retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    /// Connection refused, lost or timed out.
    Unavailable,
    /// Stored data could not be decoded.
    Corrupt,
    /// Schema, configuration or anything else.
    Other,
}

/// A provider failure, tagged with the provider's name.
#[derive(Debug)]
pub struct TransportError {
    /// Which provider failed (`memory`, `postgres`, `redis`, ...).
    pub provider: &'static str,
    /// Failure category.
    pub kind: TransportErrorKind,
    /// The underlying error.
    pub source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl TransportError {
    /// Wraps a provider error.
    pub fn new(
        provider: &'static str,
        kind: TransportErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            provider,
            kind,
            source: source.into(),
        }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} transport error: {}", self.provider, self.source)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
