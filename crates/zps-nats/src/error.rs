//! The NATS transport's own errors, and how they map onto `zps_core::Error`.

use zps_core::error::{TransportError, TransportErrorKind};

/// What can go wrong talking to NATS JetStream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The configuration or URL is unusable.
    #[error("invalid nats configuration: {0}")]
    InvalidConfig(String),
    /// The server could not be reached when connecting.
    #[error("cannot connect to nats at {target}: {source}")]
    Connect {
        /// The servers, with any credentials removed.
        target: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The server has no JetStream, or refused to create a stream or bucket.
    #[error("jetstream setup of `{what}` failed: {message}")]
    Setup {
        /// The stream or bucket.
        what: String,
        /// The server's or client's message.
        message: String,
    },
    /// A request failed or timed out.
    #[error("nats {op} failed: {message}")]
    Request {
        /// What was asked (publish, read, ...).
        op: &'static str,
        /// The client's message.
        message: String,
        /// Whether retrying later may succeed.
        unavailable: bool,
    },
    /// Other publishers kept taking the room's next sequence.
    #[error("room `{room}`: the next sequence stayed contended for {attempts} attempts")]
    Contended {
        /// The room.
        room: String,
        /// Attempts made.
        attempts: usize,
    },
    /// A publish whose answer was lost and whose result could not be read back:
    /// the event may be stored. Retrying with the same id is safe.
    #[error("room `{room}`: the publish may or may not have been stored ({message}); retry with the same id")]
    OutcomeUnknown {
        /// The room.
        room: String,
        /// What failed.
        message: String,
    },
    /// Stored data could not be decoded.
    #[error("unexpected data in nats: {0}")]
    Decode(String),
}

impl NatsError {
    /// A failed request; `unavailable` when the kind says the server or link is away.
    pub(crate) fn request(op: &'static str, e: impl std::fmt::Display, unavailable: bool) -> Self {
        Self::Request {
            op,
            message: e.to_string(),
            unavailable,
        }
    }

    /// Whether retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Contended { .. } | Self::OutcomeUnknown { .. } => true,
            Self::Request { unavailable, .. } => *unavailable,
            _ => false,
        }
    }
}

impl From<NatsError> for zps_core::Error {
    fn from(e: NatsError) -> Self {
        let kind = if e.is_unavailable() {
            TransportErrorKind::Unavailable
        } else if matches!(e, NatsError::Decode(_)) {
            TransportErrorKind::Corrupt
        } else {
            TransportErrorKind::Other
        };
        zps_core::Error::Transport(TransportError::new("nats", kind, e))
    }
}

/// Result alias for this crate's internals.
pub(crate) type NatsResult<T> = Result<T, NatsError>;
