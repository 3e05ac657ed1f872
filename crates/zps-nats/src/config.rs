//! [`NatsConfig`]: where the transport keeps its stream and buckets, and how
//! it talks to the servers.

use std::time::Duration;

use crate::error::NatsError;

/// How the transport lays out and tunes its JetStream resources.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Names every stream and subject (`[A-Za-z0-9_-]`, at most 64
    /// characters), so several deployments or test runs share one NATS.
    pub prefix: String,
    /// Replicas of every stream and bucket (1, or 3/5 on a JetStream cluster).
    pub replicas: usize,
    /// Keep events on disk (`true`) or in server memory.
    pub file_storage: bool,
    /// The stream's `max_age`: a hard ceiling on history, on top of each
    /// event's own TTL. `None` keeps events until they expire and are pruned
    /// (a room's newest event always stays, so its sequence survives).
    pub max_age: Option<Duration>,
    /// The server's `Nats-Msg-Id` duplicate window; ids older than it are
    /// caught by the durable id index instead.
    pub duplicate_window: Duration,
    /// How long the durable id index remembers an event id (`None`: forever).
    pub id_retention: Option<Duration>,
    /// Bound on connecting to the first server.
    pub connect_timeout: Duration,
    /// Bound on every JetStream request (publish acknowledgement, reads).
    pub request_timeout: Duration,
    /// Attempts at a room's next sequence before a publish gives up, when
    /// other publishers keep taking it.
    pub max_publish_attempts: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            prefix: "zps".into(),
            replicas: 1,
            file_storage: true,
            max_age: None,
            duplicate_window: Duration::from_secs(120),
            id_retention: Some(Duration::from_secs(7 * 24 * 3600)),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            max_publish_attempts: 64,
        }
    }
}

impl NatsConfig {
    /// Sets the prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the replica count.
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Refuses settings the server would refuse later, with a clearer message.
    pub fn validate(&self) -> Result<(), NatsError> {
        let p = &self.prefix;
        if p.is_empty()
            || p.len() > 64
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(NatsError::InvalidConfig(format!(
                "prefix `{p}` must be 1–64 characters of [A-Za-z0-9_-]"
            )));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(NatsError::InvalidConfig(format!(
                "replicas must be 1..=5, got {}",
                self.replicas
            )));
        }
        if self.max_publish_attempts == 0 {
            return Err(NatsError::InvalidConfig(
                "max_publish_attempts must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The events stream.
    pub fn events_stream(&self) -> String {
        format!("{}_events", self.prefix)
    }

    /// The dead-letter stream.
    pub fn dead_letter_stream(&self) -> String {
        format!("{}_dlq", self.prefix)
    }

    /// The presence stream (one record per connection and per member).
    pub fn presence_stream(&self) -> String {
        format!("{}_presence", self.prefix)
    }

    /// The stream of per-key state (cursors, snapshots), one record per subject.
    pub fn state_stream(&self) -> String {
        format!("{}_state", self.prefix)
    }

    /// The stream of event ids (the durable idempotency index), one record per id.
    pub fn id_stream(&self) -> String {
        format!("{}_ids", self.prefix)
    }

    /// Every stream this configuration creates.
    pub fn all_streams(&self) -> Vec<String> {
        vec![
            self.events_stream(),
            self.dead_letter_stream(),
            self.presence_stream(),
            self.state_stream(),
            self.id_stream(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked() {
        assert!(NatsConfig::default().validate().is_ok());
        assert!(NatsConfig::default().with_prefix("a.b").validate().is_err());
        assert!(NatsConfig::default().with_prefix("").validate().is_err());
        assert!(NatsConfig::default().with_replicas(0).validate().is_err());
    }
}
