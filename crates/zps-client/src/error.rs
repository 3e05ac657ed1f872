//! The client's error type: every failure a caller can see, typed, cloneable
//! (so one failure can be reported to several waiters) and without panics on
//! anything the network controls.

use std::time::Duration;

use zps_protocol::ErrorCode;

/// Everything that can go wrong in the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not a usable `ws://` URL.
    #[error("invalid url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A client option is out of range (empty subscriber id, zero limits, ...).
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// A room or `scope:*` pattern is malformed.
    #[error("invalid room `{room}`: {reason}")]
    InvalidRoom {
        /// The room as given.
        room: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A payload could not be serialized to JSON.
    #[error("invalid payload: {0}")]
    Payload(String),
    /// The server refused a request; `code` is one of the documented error codes.
    #[error("server refused ({code}): {message}")]
    Server {
        /// The wire code (`"4403"`, `"4408"`, ...); see [`ClientError::error_code`].
        code: String,
        /// The server's explanation.
        message: String,
        /// The room concerned, when the server named one.
        room: Option<String>,
    },
    /// The bounded outbound queue is full (the client is disconnected or the server is slow).
    #[error("outbound queue is full ({limit} messages waiting)")]
    QueueFull {
        /// `max_queued_messages`.
        limit: usize,
    },
    /// No answer within `request_timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The client was closed (by [`crate::Client::close`] or after a fatal error).
    #[error("client is closed")]
    Closed,
    /// This room or pattern already has a subscription on this client.
    #[error("already subscribed to `{0}`")]
    AlreadySubscribed(String),
    /// The server closed the connection with a close code.
    #[error("connection closed by the server ({code}): {reason}")]
    ConnectionClosed {
        /// The WebSocket close code (1012 drain, 4401 auth, 4509 slow consumer, ...).
        code: u16,
        /// The close reason text.
        reason: String,
    },
    /// The connection failed or broke (I/O, handshake, protocol violation).
    #[error("transport error: {0}")]
    Transport(String),
    /// The server sent a frame the client cannot understand (the frame is skipped).
    #[error("unreadable server message: {0}")]
    Protocol(String),
    /// The token provider failed.
    #[error("token provider failed: {0}")]
    Token(String),
    /// Authentication failed and no new token can fix it; the client stopped.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// `max_attempts` consecutive connection attempts failed; the client stopped.
    #[error("gave up after {attempts} connection attempts; last error: {last}")]
    ReconnectExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

impl ClientError {
    /// The server's error code, when this is a server refusal with a known code.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } => ErrorCode::parse(code),
            _ => None,
        }
    }

    /// Whether retrying the same call later may succeed (timeouts, queue full,
    /// transient server errors); authorization and validation failures are not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::QueueFull { .. }
            | Self::Timeout(_)
            | Self::Transport(_)
            | Self::ConnectionClosed { .. } => true,
            Self::Server { .. } => matches!(
                self.error_code(),
                Some(ErrorCode::RateLimited | ErrorCode::Internal | ErrorCode::Unavailable)
            ),
            _ => false,
        }
    }

    pub(crate) fn server(msg: &zps_protocol::ErrorMessage) -> Self {
        Self::Server {
            code: msg.code.clone(),
            message: msg.message.clone(),
            room: msg.room.clone(),
        }
    }
}

/// Shorthand for results of client calls.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
