//! Error codes (in `error` messages) and WebSocket close codes, in one place
//! so each refusal maps to exactly one of each.

use std::fmt;

/// Error codes carried as strings in `{"type":"error","code":"4408"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 4400: malformed JSON, unknown message type, wrong field types, binary frame.
    Malformed,
    /// 4401: not initialised, or token missing / invalid / expired.
    Unauthorized,
    /// 4403: the action is disabled (e.g. client publishing) or needs a subscriber id.
    Forbidden,
    /// 4404: not subscribed to that room.
    NotSubscribed,
    /// 4406: the named thing does not exist (HTTP API: an unknown connection,
    /// subscriber cursor, dead letter or snapshot).
    NotFound,
    /// 4408: access denied for the room (the seed's code).
    AccessDenied,
    /// 4409: `init` sent twice.
    AlreadyInitialised,
    /// 4413: payload or frame too large.
    PayloadTooLarge,
    /// 4422: invalid room name, scope not allowed, or invalid event fields.
    InvalidRoom,
    /// 4429: rate limited.
    RateLimited,
    /// 4430: too many subscriptions on this connection.
    TooManySubscriptions,
    /// 4500: internal error (storage failure).
    Internal,
    /// 4501: the provider does not support this (e.g. replay without history).
    Unsupported,
    /// 4503: gateway at capacity, draining, or storage unavailable.
    Unavailable,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 14] = [
        Self::Malformed,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotSubscribed,
        Self::NotFound,
        Self::AccessDenied,
        Self::AlreadyInitialised,
        Self::PayloadTooLarge,
        Self::InvalidRoom,
        Self::RateLimited,
        Self::TooManySubscriptions,
        Self::Internal,
        Self::Unsupported,
        Self::Unavailable,
    ];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "4400",
            Self::Unauthorized => "4401",
            Self::Forbidden => "4403",
            Self::NotSubscribed => "4404",
            Self::NotFound => "4406",
            Self::AccessDenied => "4408",
            Self::AlreadyInitialised => "4409",
            Self::PayloadTooLarge => "4413",
            Self::InvalidRoom => "4422",
            Self::RateLimited => "4429",
            Self::TooManySubscriptions => "4430",
            Self::Internal => "4500",
            Self::Unsupported => "4501",
            Self::Unavailable => "4503",
        }
    }

    /// Parses a wire string.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The HTTP status the HTTP API answers with this code (the same refusal,
    /// whichever way the client came in).
    pub fn http_status(self) -> u16 {
        match self {
            Self::Malformed => 400,
            Self::Unauthorized => 401,
            Self::Forbidden | Self::AccessDenied => 403,
            Self::NotFound | Self::NotSubscribed => 404,
            Self::AlreadyInitialised => 409,
            Self::PayloadTooLarge => 413,
            Self::InvalidRoom => 422,
            Self::RateLimited | Self::TooManySubscriptions => 429,
            Self::Internal => 500,
            Self::Unsupported => 501,
            Self::Unavailable => 503,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes the gateway uses when a connection cannot continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: normal closure.
    Normal,
    /// 1009: a frame exceeded the size limit.
    TooBig,
    /// 1011: unexpected server error.
    InternalError,
    /// 1012: the server is draining (restart); reconnect elsewhere with jitter.
    ServiceRestart,
    /// 4401: no `init` in time, bad token at `init`, or token expired without refresh.
    Unauthorized,
    /// 4403: disconnected by an operator (HTTP API kick); a ban, if any, is in the reason.
    Kicked,
    /// 4410: the peer stopped answering heartbeats.
    HeartbeatTimeout,
    /// 4429: kept flooding after rate-limit errors.
    RateLimited,
    /// 4503: the gateway is at its connection limit.
    AtCapacity,
    /// 4509: the client did not read fast enough (outbound backlog over the limit).
    SlowConsumer,
}

impl CloseCode {
    /// Every close code, for documentation and tests.
    pub const ALL: [CloseCode; 10] = [
        Self::Normal,
        Self::TooBig,
        Self::InternalError,
        Self::ServiceRestart,
        Self::Unauthorized,
        Self::Kicked,
        Self::HeartbeatTimeout,
        Self::RateLimited,
        Self::AtCapacity,
        Self::SlowConsumer,
    ];

    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::TooBig => 1009,
            Self::InternalError => 1011,
            Self::ServiceRestart => 1012,
            Self::Unauthorized => 4401,
            Self::Kicked => 4403,
            Self::HeartbeatTimeout => 4410,
            Self::RateLimited => 4429,
            Self::AtCapacity => 4503,
            Self::SlowConsumer => 4509,
        }
    }

    /// A short reason phrase (sent in the close frame).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Normal => "normal closure",
            Self::TooBig => "frame too large",
            Self::InternalError => "internal error",
            Self::ServiceRestart => "server restarting, reconnect",
            Self::Unauthorized => "unauthorized",
            Self::Kicked => "disconnected by an operator",
            Self::HeartbeatTimeout => "heartbeat timeout",
            Self::RateLimited => "rate limit exceeded",
            Self::AtCapacity => "gateway at capacity",
            Self::SlowConsumer => "slow consumer",
        }
    }

    /// Parses a numeric code.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Whether a client should reconnect after this close.
    pub fn should_reconnect(self) -> bool {
        !matches!(self, Self::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()));
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
        let mut seen = std::collections::HashSet::new();
        for c in CloseCode::ALL {
            assert!(seen.insert(c.code()));
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
            assert!(c.reason().len() < 123, "close reasons must fit a control frame");
        }
    }

    /// The codes in a `## heading` table of docs/protocol.md (first column, back-quoted).
    fn documented(heading: &str) -> std::collections::BTreeSet<String> {
        let doc = include_str!("../../../docs/protocol.md");
        let section = doc
            .split("\n## ")
            .find(|s| s.starts_with(heading))
            .unwrap_or_else(|| panic!("docs/protocol.md has no `## {heading}`"));
        section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_protocol_doc_gives_each_code_its_http_status() {
        let doc = include_str!("../../../docs/protocol.md");
        let section = doc
            .split("\n## ")
            .find(|s| s.starts_with("Error codes"))
            .expect("docs/protocol.md has `## Error codes`");
        for c in ErrorCode::ALL {
            let row = format!("| `{}` | {} |", c.as_str(), c.http_status());
            assert!(
                section.contains(&row),
                "docs/protocol.md: expected a row starting {row}"
            );
        }
    }

    #[test]
    fn the_protocol_doc_lists_exactly_the_codes_there_are() {
        let errors: std::collections::BTreeSet<String> =
            ErrorCode::ALL.iter().map(|c| c.as_str().to_owned()).collect();
        assert_eq!(
            documented("Error codes"),
            errors,
            "docs/protocol.md error table vs ErrorCode"
        );
        let closes: std::collections::BTreeSet<String> =
            CloseCode::ALL.iter().map(|c| c.code().to_string()).collect();
        assert_eq!(
            documented("Close codes"),
            closes,
            "docs/protocol.md close table vs CloseCode"
        );
    }

    #[test]
    fn seed_codes_are_fixed() {
        assert_eq!(ErrorCode::Malformed.as_str(), "4400");
        assert_eq!(ErrorCode::Unauthorized.as_str(), "4401");
        assert_eq!(ErrorCode::AccessDenied.as_str(), "4408");
        assert_eq!(ErrorCode::PayloadTooLarge.as_str(), "4413");
        assert_eq!(ErrorCode::InvalidRoom.as_str(), "4422");
        assert_eq!(ErrorCode::RateLimited.as_str(), "4429");
        assert_eq!(ErrorCode::TooManySubscriptions.as_str(), "4430");
        assert_eq!(ErrorCode::Unavailable.as_str(), "4503");
    }
}
