//! The Redis transport's own errors, and how they map onto `zps_core::Error`.

use std::time::Duration;

use zps_core::error::{TransportError, TransportErrorKind};

/// What can go wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// The configuration or URL is unusable.
    #[error("invalid redis configuration: {0}")]
    InvalidConfig(String),
    /// The server could not be reached when connecting.
    #[error("cannot connect to redis at {target}: {source}")]
    Connect {
        /// The server, with any password removed.
        target: String,
        /// The client's error.
        #[source]
        source: fred::error::Error,
    },
    /// Connecting took longer than the configured timeout.
    #[error("cannot connect to redis at {target}: no answer within {timeout:?}")]
    ConnectTimeout {
        /// The server, with any password removed.
        target: String,
        /// The configured bound.
        timeout: Duration,
    },
    /// The server is older than the commands this transport needs.
    #[error("redis {found} is not supported: version 7.0 or newer is required")]
    UnsupportedServer {
        /// The version the server reported.
        found: String,
    },
    /// A command failed.
    #[error("redis command failed: {0}")]
    Command(#[from] fred::error::Error),
    /// Stored data or a script reply could not be decoded.
    #[error("unexpected data in redis: {0}")]
    Decode(String),
}

impl RedisError {
    /// Whether retrying later may succeed (connection lost, timeout, server loading).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::ConnectTimeout { .. } => true,
            Self::Command(e) => is_unavailable(e),
            _ => false,
        }
    }
}

fn is_unavailable(e: &fred::error::Error) -> bool {
    use fred::error::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Backpressure
            | ErrorKind::Routing
    ) || e.details().starts_with("LOADING")
        || e.details().starts_with("CLUSTERDOWN")
        || e.details().starts_with("TRYAGAIN")
}

impl From<RedisError> for zps_core::Error {
    fn from(e: RedisError) -> Self {
        let kind = match &e {
            RedisError::Decode(_) => TransportErrorKind::Corrupt,
            e if e.is_unavailable() => TransportErrorKind::Unavailable,
            _ => TransportErrorKind::Other,
        };
        zps_core::Error::Transport(TransportError::new("redis", kind, e))
    }
}

/// Shorthand: a fred error as a core error.
pub(crate) fn core(e: fred::error::Error) -> zps_core::Error {
    RedisError::Command(e).into()
}

/// Shorthand: a decode failure as a core error.
pub(crate) fn decode(what: impl Into<String>) -> zps_core::Error {
    RedisError::Decode(what.into()).into()
}

/// Removes the password from a Redis URL so it can appear in errors and logs.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if user.is_empty() {
                format!("{scheme}://***@{host}{path}")
            } else {
                format!("{scheme}://{user}:***@{host}{path}")
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact_url("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact_url("rediss://app:p@ss@host/1"), "rediss://app:***@host/1");
    }

    #[test]
    fn maps_to_core_kinds() {
        let e: zps_core::Error = RedisError::Decode("x".into()).into();
        match e {
            zps_core::Error::Transport(t) => assert_eq!(t.kind, TransportErrorKind::Corrupt),
            other => panic!("{other:?}"),
        }
        let io = fred::error::Error::new(fred::error::ErrorKind::IO, "refused");
        let e: zps_core::Error = RedisError::Command(io).into();
        assert_eq!(e.code(), zps_core::ErrorCode::Unavailable);
    }
}
