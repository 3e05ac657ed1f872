//! Provider settings, the collection names derived from them, and their validation.

use std::time::Duration;

use crate::error::MongoError;

/// Database used when neither the configuration nor the URI path names one.
pub const DEFAULT_DATABASE: &str = "zero_realtime";
/// Prefix of every default collection name (`realtime_events`, ...).
pub const DEFAULT_COLLECTION_PREFIX: &str = "realtime";

/// Whether live fan-out may use MongoDB change streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChangeStreams {
    /// Use change streams when the deployment has them (replica set, sharded cluster,
    /// Atlas); otherwise fall back to in-process fan-out plus head polling.
    #[default]
    Auto,
    /// Never open a change stream (in-process fan-out plus head polling only).
    Disabled,
}

/// Settings of the MongoDB provider; collection names are validated at connect.
///
/// ```
/// use zps_mongo::MongoConfig;
/// let config = MongoConfig { collection_prefix: "chat".into(), ..MongoConfig::default() };
/// assert_eq!(config.collections().unwrap().events, "chat_events");
/// let bad = MongoConfig { events_collection: Some("system.events".into()), ..MongoConfig::default() };
/// assert!(bad.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoConfig {
    /// Database; `None` = the URI's path (`mongodb://host/app` → `app`), else `zero_realtime`.
    /// Ignored by [`crate::MongoTransport::from_database`], which uses the injected database.
    pub database: Option<String>,
    /// Prefix of the default collection names (`{prefix}_events`, `{prefix}_counters`, ...).
    pub collection_prefix: String,
    /// History collection; `None` = `{prefix}_events`.
    pub events_collection: Option<String>,
    /// Per-room sequence counters, dead-letter counters and the database epoch;
    /// `None` = `{prefix}_counters`.
    pub counters_collection: Option<String>,
    /// Ack cursors; `None` = `{prefix}_subscribers`.
    pub subscribers_collection: Option<String>,
    /// Latest snapshot per room; `None` = `{prefix}_snapshots`.
    pub snapshots_collection: Option<String>,
    /// Dead letters; `None` = `{prefix}_dlq`.
    pub dlq_collection: Option<String>,
    /// Presence connections with their expiry; `None` = `{prefix}_presence`.
    pub presence_collection: Option<String>,
    /// Create the indexes at connect; `None` = on unless `ZPS_ENV=production`.
    pub auto_create_indexes: Option<bool>,
    /// Shut the `mongodb::Client` down on `close()`; `None` = only when the transport
    /// created it (`connect`), never for an injected database.
    pub close_client: Option<bool>,
    /// Change streams for cross-process live fan-out.
    pub change_streams: ChangeStreams,
    /// Bound on server selection and on the initial connection, when the URI does not set
    /// `serverSelectionTimeoutMS` / `connectTimeoutMS`.
    pub connect_timeout: Duration,
    /// How long a reader waits for a consumed sequence whose event is not stored yet
    /// before it declares the sequence skipped (writes a skip record). Must exceed the
    /// normal publish latency; it only delays readers behind a crashed publish.
    pub hole_grace: Duration,
    /// Expired events (and skip records) stay on disk this long before the TTL index or
    /// [`zps_core::Transport::prune_expired`] deletes them; holes older than this are final
    /// without a skip record. Also the `expireAfterSeconds` of the TTL indexes.
    pub purge_delay: Duration,
    /// Create TTL indexes on `expiresAt` (events, skip records, presence) so MongoDB
    /// deletes them `purge_delay` after they expire. Off = deletion only through
    /// [`zps_core::Transport::prune_expired`] (e.g. a scheduled `zero-pub-sub prune`).
    pub ttl_index: bool,
    /// Reported as [`zps_core::Capabilities::reorder_window`]: concurrent publishers (and
    /// change streams, which follow commit order) may deliver a room's events slightly out
    /// of sequence; the engine reorders within this window before reading history.
    pub reorder_window: Duration,
    /// Without change streams: how often local subscribers' exact rooms are checked for
    /// events stored by other processes (`None` = never; in-process fan-out only).
    pub poll_interval: Option<Duration>,
    /// Depth of each room's in-process live channel; a subscriber further behind re-reads history.
    pub channel_capacity: usize,
    /// CA certificate (PEM file) verifying the server when the URI turns TLS on
    /// (`tls=true`) without its own `tlsCAFile`.
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl Default for MongoConfig {
    fn default() -> Self {
        Self {
            database: None,
            collection_prefix: DEFAULT_COLLECTION_PREFIX.into(),
            events_collection: None,
            counters_collection: None,
            subscribers_collection: None,
            snapshots_collection: None,
            dlq_collection: None,
            presence_collection: None,
            auto_create_indexes: None,
            close_client: None,
            change_streams: ChangeStreams::Auto,
            connect_timeout: Duration::from_secs(10),
            hole_grace: Duration::from_secs(2),
            purge_delay: Duration::from_secs(300),
            ttl_index: true,
            reorder_window: Duration::from_millis(100),
            poll_interval: Some(Duration::from_millis(500)),
            channel_capacity: zps_core::fanout::DEFAULT_CHANNEL_CAPACITY,
            tls_ca_file: None,
        }
    }
}

/// The resolved, validated collection names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionNames {
    /// History.
    pub events: String,
    /// Counters, dead-letter counters, the meta document.
    pub counters: String,
    /// Ack cursors.
    pub subscribers: String,
    /// Snapshots.
    pub snapshots: String,
    /// Dead letters.
    pub dlq: String,
    /// Presence.
    pub presence: String,
}

impl MongoConfig {
    /// The collection names after applying the prefix, validated.
    pub fn collections(&self) -> Result<CollectionNames, MongoError> {
        let pick = |field: &'static str, value: &Option<String>, suffix: &str| {
            let name = value
                .clone()
                .unwrap_or_else(|| format!("{}_{suffix}", self.collection_prefix));
            validate_collection_name(field, &name).map(|()| name)
        };
        let names = CollectionNames {
            events: pick("events_collection", &self.events_collection, "events")?,
            counters: pick("counters_collection", &self.counters_collection, "counters")?,
            subscribers: pick(
                "subscribers_collection",
                &self.subscribers_collection,
                "subscribers",
            )?,
            snapshots: pick("snapshots_collection", &self.snapshots_collection, "snapshots")?,
            dlq: pick("dlq_collection", &self.dlq_collection, "dlq")?,
            presence: pick("presence_collection", &self.presence_collection, "presence")?,
        };
        let all = [
            &names.events,
            &names.counters,
            &names.subscribers,
            &names.snapshots,
            &names.dlq,
            &names.presence,
        ];
        for (i, a) in all.iter().enumerate() {
            if all[i + 1..].contains(a) {
                return Err(MongoError::InvalidConfig(format!(
                    "collection `{a}` is configured for two purposes"
                )));
            }
        }
        Ok(names)
    }

    /// Checks names and durations, so nothing unvalidated reaches the server.
    pub fn validate(&self) -> Result<(), MongoError> {
        if let Some(db) = &self.database {
            validate_database_name(db)?;
        }
        self.collections()?;
        if self.hole_grace.is_zero() {
            return Err(MongoError::InvalidConfig(
                "hole_grace must be greater than zero".into(),
            ));
        }
        if self.purge_delay < self.hole_grace * 2 {
            return Err(MongoError::InvalidConfig(
                "purge_delay must be at least twice hole_grace (holes are judged by age)".into(),
            ));
        }
        if self.purge_delay.as_secs() == 0 || self.purge_delay.as_secs() > i32::MAX as u64 {
            return Err(MongoError::InvalidConfig(
                "purge_delay must be between 1 s and i32::MAX s (TTL index expireAfterSeconds)".into(),
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(MongoError::InvalidConfig(
                "connect_timeout must be greater than zero".into(),
            ));
        }
        if self.poll_interval.is_some_and(|p| p.is_zero()) {
            return Err(MongoError::InvalidConfig(
                "poll_interval must be greater than zero (None disables polling)".into(),
            ));
        }
        Ok(())
    }

    /// Whether indexes are created at connect: the explicit setting, else on unless
    /// `ZPS_ENV=production`.
    pub fn creates_indexes(&self) -> bool {
        self.auto_create_indexes
            .unwrap_or_else(|| !is_production(std::env::var("ZPS_ENV").ok().as_deref()))
    }

    /// The database name for a URI whose path named `uri_database` (if any).
    pub fn database_name(&self, uri_database: Option<&str>) -> String {
        self.database
            .clone()
            .or_else(|| uri_database.filter(|d| !d.is_empty()).map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_DATABASE.to_owned())
    }
}

/// `ZPS_ENV=production` (any case) switches automatic index creation off by default.
pub(crate) fn is_production(env: Option<&str>) -> bool {
    env.is_some_and(|v| v.trim().eq_ignore_ascii_case("production"))
}

/// Longest collection name accepted (well inside MongoDB's 255-byte namespace limit).
pub const MAX_COLLECTION_NAME_LEN: usize = 120;

/// Whether `name` is a safe collection name: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,119}`, not
/// `system.*`, no empty dot-separated part.
pub fn is_valid_collection_name(name: &str) -> bool {
    let b = name.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_alphanumeric() || *c == b'_' => {}
        _ => return false,
    }
    b.len() <= MAX_COLLECTION_NAME_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        && !name.starts_with("system.")
        && !name.contains("..")
        && !name.ends_with('.')
}

fn validate_collection_name(field: &'static str, name: &str) -> Result<(), MongoError> {
    if is_valid_collection_name(name) {
        Ok(())
    } else {
        Err(MongoError::InvalidName {
            field,
            value: truncate(name),
        })
    }
}

/// Whether `name` is a usable database name: 1–63 bytes of `[A-Za-z0-9_-]`.
pub fn is_valid_database_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 64
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'))
}

pub(crate) fn validate_database_name(name: &str) -> Result<(), MongoError> {
    if is_valid_database_name(name) {
        Ok(())
    } else {
        Err(MongoError::InvalidName {
            field: "database",
            value: truncate(name),
        })
    }
}

fn truncate(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_spec() {
        let c = MongoConfig::default();
        let names = c.collections().unwrap();
        assert_eq!(
            names,
            CollectionNames {
                events: "realtime_events".into(),
                counters: "realtime_counters".into(),
                subscribers: "realtime_subscribers".into(),
                snapshots: "realtime_snapshots".into(),
                dlq: "realtime_dlq".into(),
                presence: "realtime_presence".into(),
            }
        );
        assert!(c.validate().is_ok());
        assert_eq!(c.change_streams, ChangeStreams::Auto);
        assert_eq!(c.close_client, None);
    }

    #[test]
    fn prefix_and_overrides() {
        let c = MongoConfig {
            collection_prefix: "app".into(),
            dlq_collection: Some("dead.letters".into()),
            ..MongoConfig::default()
        };
        let n = c.collections().unwrap();
        assert_eq!(n.events, "app_events");
        assert_eq!(n.dlq, "dead.letters");
        let clash = MongoConfig {
            snapshots_collection: Some("realtime_events".into()),
            ..MongoConfig::default()
        };
        assert!(matches!(clash.collections(), Err(MongoError::InvalidConfig(_))));
    }

    #[test]
    fn collection_names_are_validated() {
        for ok in ["realtime_events", "a", "A.b-c_d", "_x", "9lives"] {
            assert!(is_valid_collection_name(ok), "{ok}");
        }
        let long = "x".repeat(121);
        for bad in [
            "",
            "$cmd",
            "a$b",
            "system.users",
            "a..b",
            "a.",
            ".a",
            "a b",
            "a\0b",
            "é",
            &long,
        ] {
            assert!(!is_valid_collection_name(bad), "{bad:?}");
        }
        let c = MongoConfig {
            events_collection: Some("ev$".into()),
            ..MongoConfig::default()
        };
        match c.validate() {
            Err(MongoError::InvalidName { field, value }) => {
                assert_eq!(field, "events_collection");
                assert_eq!(value, "ev$");
            }
            other => panic!("{other:?}"),
        }
        let bad_prefix = MongoConfig {
            collection_prefix: "bad prefix".into(),
            ..MongoConfig::default()
        };
        assert!(bad_prefix.validate().is_err());
    }

    #[test]
    fn database_names() {
        assert!(is_valid_database_name("zero_realtime"));
        assert!(is_valid_database_name("app-1"));
        for bad in ["", "a.b", "a/b", "a b", "a$", &"d".repeat(64)] {
            assert!(!is_valid_database_name(bad), "{bad:?}");
        }
        let c = MongoConfig::default();
        assert_eq!(c.database_name(Some("app")), "app");
        assert_eq!(c.database_name(Some("")), "zero_realtime");
        assert_eq!(c.database_name(None), "zero_realtime");
        let explicit = MongoConfig {
            database: Some("mine".into()),
            ..MongoConfig::default()
        };
        assert_eq!(explicit.database_name(Some("app")), "mine");
        let bad = MongoConfig {
            database: Some("a.b".into()),
            ..MongoConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn durations_are_checked() {
        let zero_grace = MongoConfig {
            hole_grace: Duration::ZERO,
            ..MongoConfig::default()
        };
        assert!(zero_grace.validate().is_err());
        let short_purge = MongoConfig {
            purge_delay: Duration::from_secs(3),
            ..MongoConfig::default()
        };
        assert!(short_purge.validate().is_err());
        let zero_poll = MongoConfig {
            poll_interval: Some(Duration::ZERO),
            ..MongoConfig::default()
        };
        assert!(zero_poll.validate().is_err());
        let no_poll = MongoConfig {
            poll_interval: None,
            ..MongoConfig::default()
        };
        assert!(no_poll.validate().is_ok());
    }

    #[test]
    fn production_switch() {
        assert!(is_production(Some("production")));
        assert!(is_production(Some(" Production ")));
        assert!(!is_production(Some("staging")));
        assert!(!is_production(None));
        let explicit = MongoConfig {
            auto_create_indexes: Some(false),
            ..MongoConfig::default()
        };
        assert!(!explicit.creates_indexes());
        let on = MongoConfig {
            auto_create_indexes: Some(true),
            ..MongoConfig::default()
        };
        assert!(on.creates_indexes());
    }
}
