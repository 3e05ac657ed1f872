//! Settings of the Redis transport and the key / channel names derived from them.
//!
//! Every key that belongs to a room carries the room inside a hash tag
//! (`realtime:stream:{chat:123}`), so all of a room's keys hash to one Redis
//! Cluster slot and the publish script may touch them together.

use std::time::Duration;

use zps_core::Room;

use crate::error::RedisError;

/// Settings of [`RedisTransport`](crate::RedisTransport): key prefixes, retention and timeouts.
///
/// ```
/// use zps_redis::RedisConfig;
/// let config = RedisConfig::with_prefix("myapp:");
/// assert_eq!(config.stream_prefix, "myapp:stream:");
/// assert!(config.validate().is_ok());
/// assert!(RedisConfig::with_prefix("bad{").validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Prefix of each room's history stream (`realtime:stream:{room}`).
    pub stream_prefix: String,
    /// Prefix of each room's live channel (`realtime:room:{room}`).
    pub channel_prefix: String,
    /// Prefix of each room's ephemeral channel (`realtime:ephemeral:{room}`); never stored.
    pub ephemeral_prefix: String,
    /// Prefix of each room's ack-cursor hash (`realtime:subscriber:{room}`, field = subscriber id).
    pub subscriber_prefix: String,
    /// Prefix of each room's sequence hash (`realtime:sequence:{room}`, fields `seq` and `epoch`).
    pub sequence_prefix: String,
    /// Prefix of the idempotency keys (`realtime:idempotency:{room}:<event id>`).
    pub idempotency_prefix: String,
    /// Prefix of each room's snapshot (`realtime:snapshot:{room}`).
    pub snapshot_prefix: String,
    /// Prefix of each room's dead-letter stream (`realtime:dlq:{room}`).
    pub dlq_prefix: String,
    /// Prefix of each room's presence hash (`realtime:presence:{room}`) and of the
    /// presence index (`realtime:presence:rooms`).
    pub presence_prefix: String,
    /// Keep history in a stream per room. `false` = fan-out only (no replay), for
    /// deployments where another provider owns history (the hybrid provider's realtime leg).
    pub persist_streams: bool,
    /// Approximate cap on entries per room stream (`XADD MAXLEN ~`); `None` = only TTL-based retention.
    pub max_stream_len: Option<u64>,
    /// How long a published id is remembered for de-duplication (capped by the event's own TTL).
    pub idempotency_ttl: Duration,
    /// Approximate cap on dead letters per room.
    pub max_dlq_len: u64,
    /// Use sharded pub/sub (`SPUBLISH` / `SSUBSCRIBE`, Redis 7): on a Cluster a message
    /// goes only to the shard owning the room instead of every node. `scope:*`
    /// wildcard subscriptions are not available in this mode.
    pub sharded_pubsub: bool,
    /// Bound on establishing each connection in [`RedisTransport::connect`](crate::RedisTransport::connect).
    pub connect_timeout: Duration,
    /// Bound on every command of clients created by `connect` (zero = none).
    pub command_timeout: Duration,
    /// Depth of the subscriber client's message buffer (clients created by `connect`);
    /// if the reader falls further behind, subscribers are told to re-read history.
    pub subscriber_buffer: usize,
    /// Depth of each room's in-process fan-out channel.
    pub channel_capacity: usize,
    /// Extra root certificates (PEM) trusted for `rediss://`, beside the system's: a
    /// private CA. Needs the `tls` feature.
    pub tls_ca_pem: Option<Vec<u8>>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self::with_prefix("realtime:")
    }
}

impl RedisConfig {
    /// Default settings with every key prefix under `base` (`{base}stream:`, `{base}room:`, ...),
    /// so several applications or test runs can share one Redis.
    pub fn with_prefix(base: &str) -> Self {
        Self {
            stream_prefix: format!("{base}stream:"),
            channel_prefix: format!("{base}room:"),
            ephemeral_prefix: format!("{base}ephemeral:"),
            subscriber_prefix: format!("{base}subscriber:"),
            sequence_prefix: format!("{base}sequence:"),
            idempotency_prefix: format!("{base}idempotency:"),
            snapshot_prefix: format!("{base}snapshot:"),
            dlq_prefix: format!("{base}dlq:"),
            presence_prefix: format!("{base}presence:"),
            persist_streams: true,
            max_stream_len: Some(100_000),
            idempotency_ttl: Duration::from_secs(24 * 60 * 60),
            max_dlq_len: 10_000,
            sharded_pubsub: false,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(10),
            subscriber_buffer: 16_384,
            channel_capacity: zps_core::fanout::DEFAULT_CHANNEL_CAPACITY,
            tls_ca_pem: None,
        }
    }

    /// Fan-out only: no streams, no replay (what a hybrid provider's realtime leg wants).
    pub fn fanout_only(mut self) -> Self {
        self.persist_streams = false;
        self
    }

    /// Checks the prefixes: no `{` / `}` (they would break the per-room hash tag) and all distinct.
    pub fn validate(&self) -> Result<(), RedisError> {
        let prefixes = self.prefixes();
        for (name, value) in &prefixes {
            if value.contains(['{', '}']) {
                return Err(RedisError::InvalidConfig(format!(
                    "{name} `{value}` must not contain `{{` or `}}` (the room is the key's hash tag)"
                )));
            }
            if value.chars().any(char::is_control) {
                return Err(RedisError::InvalidConfig(format!(
                    "{name} must not contain control characters"
                )));
            }
        }
        for (i, (a_name, a)) in prefixes.iter().enumerate() {
            for (b_name, b) in &prefixes[i + 1..] {
                if a == b {
                    return Err(RedisError::InvalidConfig(format!(
                        "{a_name} and {b_name} are both `{a}`; every prefix must be distinct"
                    )));
                }
            }
        }
        if self.idempotency_ttl.is_zero() {
            return Err(RedisError::InvalidConfig(
                "idempotency_ttl must be positive".into(),
            ));
        }
        if self.max_stream_len == Some(0) {
            return Err(RedisError::InvalidConfig(
                "max_stream_len must be positive (use None for no length cap)".into(),
            ));
        }
        Ok(())
    }

    fn prefixes(&self) -> [(&'static str, &str); 9] {
        [
            ("stream_prefix", &self.stream_prefix),
            ("channel_prefix", &self.channel_prefix),
            ("ephemeral_prefix", &self.ephemeral_prefix),
            ("subscriber_prefix", &self.subscriber_prefix),
            ("sequence_prefix", &self.sequence_prefix),
            ("idempotency_prefix", &self.idempotency_prefix),
            ("snapshot_prefix", &self.snapshot_prefix),
            ("dlq_prefix", &self.dlq_prefix),
            ("presence_prefix", &self.presence_prefix),
        ]
    }
}

/// Builds key and channel names; the room is always the hash tag.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    config: RedisConfig,
}

fn tagged(prefix: &str, room: &Room) -> String {
    let room = room.as_str();
    let mut s = String::with_capacity(prefix.len() + room.len() + 2);
    s.push_str(prefix);
    s.push('{');
    s.push_str(room);
    s.push('}');
    s
}

/// Escapes Redis glob metacharacters so a prefix matches itself literally.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Keys {
    pub(crate) fn new(config: RedisConfig) -> Self {
        Self { config }
    }

    pub(crate) fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Hash with the room's last sequence (`seq`), its epoch (`epoch`).
    pub(crate) fn meta(&self, room: &Room) -> String {
        tagged(&self.config.sequence_prefix, room)
    }

    pub(crate) fn stream(&self, room: &Room) -> String {
        tagged(&self.config.stream_prefix, room)
    }

    pub(crate) fn idempotency(&self, room: &Room, id: &str) -> String {
        let mut s = tagged(&self.config.idempotency_prefix, room);
        s.push(':');
        s.push_str(id);
        s
    }

    pub(crate) fn cursors(&self, room: &Room) -> String {
        tagged(&self.config.subscriber_prefix, room)
    }

    pub(crate) fn snapshot(&self, room: &Room) -> String {
        tagged(&self.config.snapshot_prefix, room)
    }

    pub(crate) fn dlq(&self, room: &Room) -> String {
        tagged(&self.config.dlq_prefix, room)
    }

    pub(crate) fn presence(&self, room: &Room) -> String {
        tagged(&self.config.presence_prefix, room)
    }

    /// Sorted set of rooms with presence entries (score: earliest possible expiry, ms).
    pub(crate) fn presence_index(&self) -> String {
        format!("{}rooms", self.config.presence_prefix)
    }

    pub(crate) fn event_channel(&self, room: &Room) -> String {
        tagged(&self.config.channel_prefix, room)
    }

    pub(crate) fn ephemeral_channel(&self, room: &Room) -> String {
        tagged(&self.config.ephemeral_prefix, room)
    }

    pub(crate) fn event_pattern(&self, scope: &str) -> String {
        format!("{}{{{scope}:*}}", glob_escape(&self.config.channel_prefix))
    }

    pub(crate) fn ephemeral_pattern(&self, scope: &str) -> String {
        format!("{}{{{scope}:*}}", glob_escape(&self.config.ephemeral_prefix))
    }

    /// Whether a channel name is one of this transport's event channels.
    pub(crate) fn is_event_channel(&self, channel: &str) -> bool {
        channel
            .strip_prefix(self.config.channel_prefix.as_str())
            .is_some_and(|rest| rest.starts_with('{'))
    }

    /// Whether a channel name is one of this transport's ephemeral channels.
    pub(crate) fn is_ephemeral_channel(&self, channel: &str) -> bool {
        channel
            .strip_prefix(self.config.ephemeral_prefix.as_str())
            .is_some_and(|rest| rest.starts_with('{'))
    }

    /// `SCAN MATCH` pattern of the dead-letter streams of rooms starting with `room_prefix`.
    pub(crate) fn dlq_scan_pattern(&self, room_prefix: &str) -> String {
        format!(
            "{}{{{}*",
            glob_escape(&self.config.dlq_prefix),
            glob_escape(room_prefix)
        )
    }

    /// The room whose dead-letter stream `key` is.
    pub(crate) fn dlq_room(&self, key: &str) -> Option<Room> {
        let room = key
            .strip_prefix(self.config.dlq_prefix.as_str())?
            .strip_prefix('{')?
            .strip_suffix('}')?;
        Room::parse(room).ok()
    }

    /// `SCAN MATCH` pattern of every room stream.
    pub(crate) fn stream_scan_pattern(&self) -> String {
        format!("{}{{*", glob_escape(&self.config.stream_prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> Room {
        Room::parse(s).unwrap()
    }

    #[test]
    fn every_room_key_carries_the_room_as_hash_tag() {
        let keys = Keys::new(RedisConfig::default());
        let r = room("chat:123");
        for key in [
            keys.meta(&r),
            keys.stream(&r),
            keys.idempotency(&r, "msg-1"),
            keys.cursors(&r),
            keys.snapshot(&r),
            keys.dlq(&r),
            keys.presence(&r),
            keys.event_channel(&r),
            keys.ephemeral_channel(&r),
        ] {
            let open = key.find('{').unwrap();
            let close = open + key[open..].find('}').unwrap();
            assert_eq!(&key[open + 1..close], "chat:123", "{key}");
        }
        assert_eq!(keys.stream(&r), "realtime:stream:{chat:123}");
        assert_eq!(keys.dlq_room(&keys.dlq(&r)), Some(r.clone()));
        assert_eq!(keys.dlq_room(&keys.stream(&r)), None);
        assert_eq!(keys.dlq_scan_pattern("chat*"), "realtime:dlq:{chat\\**");
        assert_eq!(keys.idempotency(&r, "a:b"), "realtime:idempotency:{chat:123}:a:b");
    }

    #[test]
    fn patterns_and_channel_recognition() {
        let mut config = RedisConfig::with_prefix("t*[1]:");
        config.persist_streams = true;
        let keys = Keys::new(config);
        assert_eq!(keys.event_pattern("chat"), "t\\*\\[1\\]:room:{chat:*}");
        let ch = keys.event_channel(&room("chat:1"));
        assert!(keys.is_event_channel(&ch));
        assert!(!keys.is_ephemeral_channel(&ch));
        assert!(keys.is_ephemeral_channel(&keys.ephemeral_channel(&room("chat:1"))));
    }

    #[test]
    fn validation_refuses_braces_and_duplicates() {
        assert!(RedisConfig::default().validate().is_ok());
        let c = RedisConfig {
            stream_prefix: "a{".into(),
            ..RedisConfig::default()
        };
        assert!(matches!(c.validate(), Err(RedisError::InvalidConfig(_))));
        let mut c = RedisConfig::default();
        c.dlq_prefix = c.stream_prefix.clone();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("distinct"), "{err}");
        let c = RedisConfig {
            max_stream_len: Some(0),
            ..RedisConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
