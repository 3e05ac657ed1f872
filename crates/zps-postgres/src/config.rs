//! Provider settings and the validated, quoted SQL names derived from them.

use std::time::Duration;

use crate::error::PostgresError;

/// Settings of the PostgreSQL provider; every name is validated as a plain SQL identifier.
///
/// ```
/// use zps_postgres::PostgresConfig;
/// let config = PostgresConfig {
///     schema: Some("realtime".into()),
///     auto_migrate: Some(false),
///     ..PostgresConfig::default()
/// };
/// assert!(config.validate().is_ok());
/// let bad = PostgresConfig { events_table: "events; DROP TABLE x".into(), ..PostgresConfig::default() };
/// assert!(bad.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// Schema holding every table (created by auto-migrate); `None` = the connection's `search_path`.
    pub schema: Option<String>,
    /// The history table.
    pub events_table: String,
    /// Per-room sequence counters and epochs.
    pub counters_table: String,
    /// Ack cursors.
    pub subscribers_table: String,
    /// Latest snapshot per room.
    pub snapshots_table: String,
    /// Dead letters.
    pub dlq_table: String,
    /// Database-wide facts (the database epoch).
    pub meta_table: String,
    /// Presence connections with their expiry.
    pub presence_table: String,
    /// Which migrations were applied.
    pub migrations_table: String,
    /// Name of the SQL function that deletes expired events.
    pub prune_function: String,
    /// NOTIFY channel carrying stored events (and room resets).
    pub notify_channel: String,
    /// NOTIFY channel carrying ephemeral events.
    pub ephemeral_channel: String,
    /// Create/upgrade the schema at connect; `None` = on unless `ZPS_ENV=production`.
    pub auto_migrate: Option<bool>,
    /// Most pooled connections of an owned pool (the LISTEN connection comes on top).
    pub max_connections: u32,
    /// Bound on establishing a connection (and on waiting for a pooled one).
    pub connect_timeout: Duration,
    /// `application_name` of the connections (the LISTEN one gets `-listener` appended),
    /// so operators can find them in `pg_stat_activity`.
    pub application_name: String,
    /// Depth of each room's in-process live channel; a subscriber further behind re-reads history.
    pub channel_capacity: usize,
    /// Most concurrent `publish` calls sent as one statement (group commit); 1 sends each
    /// publish on its own.
    pub publish_batch_max: usize,
    /// Root certificate (PEM file) that verifies the server under `sslmode=verify-ca` or
    /// `verify-full`, when the URL has no `sslrootcert`. Needs the `tls` feature.
    pub ssl_root_cert: Option<std::path::PathBuf>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            schema: None,
            events_table: "realtime_events".into(),
            counters_table: "realtime_counters".into(),
            subscribers_table: "realtime_subscribers".into(),
            snapshots_table: "realtime_snapshots".into(),
            dlq_table: "realtime_dlq".into(),
            meta_table: "realtime_meta".into(),
            presence_table: "realtime_presence".into(),
            migrations_table: "realtime_migrations".into(),
            prune_function: "realtime_prune_expired_events".into(),
            notify_channel: "realtime_events".into(),
            ephemeral_channel: "realtime_ephemeral".into(),
            auto_migrate: None,
            max_connections: 10,
            connect_timeout: Duration::from_secs(10),
            application_name: "zero-pub-sub".into(),
            channel_capacity: zps_core::fanout::DEFAULT_CHANNEL_CAPACITY,
            publish_batch_max: 256,
            ssl_root_cert: None,
        }
    }
}

/// Whether `s` is a plain SQL identifier: `^[A-Za-z_][A-Za-z0-9_]{0,62}$`.
pub fn is_valid_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {}
        _ => return false,
    }
    b.len() <= 63 && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

impl PostgresConfig {
    /// Checks every name, so nothing unvalidated ever reaches SQL text.
    pub fn validate(&self) -> Result<(), PostgresError> {
        let mut fields: Vec<(&'static str, &str)> = vec![
            ("events_table", &self.events_table),
            ("counters_table", &self.counters_table),
            ("subscribers_table", &self.subscribers_table),
            ("snapshots_table", &self.snapshots_table),
            ("dlq_table", &self.dlq_table),
            ("meta_table", &self.meta_table),
            ("presence_table", &self.presence_table),
            ("migrations_table", &self.migrations_table),
            ("prune_function", &self.prune_function),
            ("notify_channel", &self.notify_channel),
            ("ephemeral_channel", &self.ephemeral_channel),
        ];
        if let Some(schema) = &self.schema {
            fields.push(("schema", schema));
        }
        for (field, value) in &fields {
            if !is_valid_identifier(value) {
                return Err(PostgresError::InvalidIdentifier {
                    field,
                    value: truncate(value),
                });
            }
        }
        let tables = &fields[..8];
        for (i, (field, value)) in tables.iter().enumerate() {
            if let Some((other, _)) = tables[..i].iter().find(|(_, v)| v.eq_ignore_ascii_case(value)) {
                return Err(PostgresError::InvalidConfig(format!(
                    "{field} and {other} are both `{value}`; every table needs its own name"
                )));
            }
        }
        if self.notify_channel == self.ephemeral_channel {
            return Err(PostgresError::InvalidConfig(
                "notify_channel and ephemeral_channel must differ".into(),
            ));
        }
        if self.publish_batch_max == 0 || self.publish_batch_max > 10_000 {
            return Err(PostgresError::InvalidConfig(
                "publish_batch_max must be within 1..=10000".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(PostgresError::InvalidConfig(
                "max_connections must be at least 1".into(),
            ));
        }
        if self.application_name.len() > 50
            || !self
                .application_name
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(PostgresError::InvalidConfig(
                "application_name must be at most 50 printable ASCII characters".into(),
            ));
        }
        Ok(())
    }

    /// Whether connecting applies migrations: the explicit setting, else on unless `ZPS_ENV=production`.
    pub fn auto_migrate_enabled(&self) -> bool {
        self.auto_migrate
            .unwrap_or_else(|| !std::env::var("ZPS_ENV").is_ok_and(|v| v.eq_ignore_ascii_case("production")))
    }
}

fn truncate(s: &str) -> String {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Double-quotes a validated identifier (validated names contain no quotes).
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{ident}\"")
}

/// The quoted, schema-qualified SQL names of one configuration.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) schema: Option<String>,
    pub(crate) events: String,
    pub(crate) counters: String,
    pub(crate) subscribers: String,
    pub(crate) snapshots: String,
    pub(crate) dlq: String,
    pub(crate) meta: String,
    pub(crate) presence: String,
    pub(crate) migrations: String,
    pub(crate) prune_function: String,
    /// Unquoted `schema.table` spellings for `to_regclass` and error messages.
    pub(crate) plain: Vec<(&'static str, String)>,
    /// `(default token, replacement)` pairs for the migration files.
    pub(crate) substitutions: Vec<(String, String)>,
    /// Short tag identifying this history in NOTIFY payloads, so two deployments that
    /// share a database and a channel never deliver each other's events.
    pub(crate) tag: String,
}

impl Names {
    pub(crate) fn new(c: &PostgresConfig) -> Result<Self, PostgresError> {
        c.validate()?;
        let qualify = |t: &str| match &c.schema {
            Some(s) => format!("{}.{}", quote(s), quote(t)),
            None => quote(t),
        };
        let plain = |t: &str| match &c.schema {
            Some(s) => format!("{s}.{t}"),
            None => t.to_owned(),
        };
        let d = PostgresConfig::default();
        let tables: [(&'static str, &str, &str); 8] = [
            ("events", &d.events_table, &c.events_table),
            ("counters", &d.counters_table, &c.counters_table),
            ("subscribers", &d.subscribers_table, &c.subscribers_table),
            ("snapshots", &d.snapshots_table, &c.snapshots_table),
            ("dlq", &d.dlq_table, &c.dlq_table),
            ("meta", &d.meta_table, &c.meta_table),
            ("presence", &d.presence_table, &c.presence_table),
            ("migrations", &d.migrations_table, &c.migrations_table),
        ];
        let mut substitutions: Vec<(String, String)> = tables
            .iter()
            .map(|(_, default, actual)| ((*default).to_owned(), qualify(actual)))
            .collect();
        substitutions.push((d.prune_function.clone(), qualify(&c.prune_function)));
        // Index names live in the table's schema and follow the configured table name.
        for (default_table, actual_table, suffix) in [
            (&d.events_table, &c.events_table, "room_id_key"),
            (&d.events_table, &c.events_table, "expires_at_idx"),
            (&d.dlq_table, &c.dlq_table, "room_entry_idx"),
            (&d.presence_table, &c.presence_table, "expires_at_idx"),
        ] {
            substitutions.push((
                format!("{default_table}_{suffix}"),
                quote(&index_name(actual_table, suffix)),
            ));
        }
        let tag_source = format!("{}.{}", c.schema.as_deref().unwrap_or(""), c.events_table);
        Ok(Self {
            schema: c.schema.clone(),
            events: qualify(&c.events_table),
            counters: qualify(&c.counters_table),
            subscribers: qualify(&c.subscribers_table),
            snapshots: qualify(&c.snapshots_table),
            dlq: qualify(&c.dlq_table),
            meta: qualify(&c.meta_table),
            presence: qualify(&c.presence_table),
            migrations: qualify(&c.migrations_table),
            prune_function: qualify(&c.prune_function),
            plain: tables
                .iter()
                .filter(|(role, _, _)| *role != "migrations")
                .map(|(role, _, actual)| (*role, plain(actual)))
                .collect(),
            substitutions,
            tag: format!("{:08x}", fnv1a(tag_source.as_bytes()) as u32),
        })
    }

    /// The unquoted qualified name of the prune function, for `to_regprocedure`.
    pub(crate) fn plain_function(&self, c: &PostgresConfig) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}()", c.prune_function),
            None => format!("{}()", c.prune_function),
        }
    }
}

/// `{table}_{suffix}`, cut to PostgreSQL's 63-byte identifier limit.
pub(crate) fn index_name(table: &str, suffix: &str) -> String {
    let mut name = format!("{table}_{suffix}");
    name.truncate(63);
    name
}

/// FNV-1a: a stable hash for lock keys and tags (std's hasher is not stable across releases).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["a", "_x", "realtime_events", "T1", &"a".repeat(63)] {
            assert!(is_valid_identifier(ok), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "a-b",
            "a b",
            "a\"b",
            "a;drop",
            "é",
            &"a".repeat(64),
            "a.b",
        ] {
            assert!(!is_valid_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let c = PostgresConfig {
            schema: Some("bad schema".into()),
            ..PostgresConfig::default()
        };
        match c.validate() {
            Err(PostgresError::InvalidIdentifier { field, .. }) => assert_eq!(field, "schema"),
            other => panic!("{other:?}"),
        }
        let c = PostgresConfig {
            dlq_table: "realtime_events".into(),
            ..PostgresConfig::default()
        };
        assert!(matches!(c.validate(), Err(PostgresError::InvalidConfig(_))));
    }

    #[test]
    fn names_are_quoted_and_qualified() {
        let c = PostgresConfig {
            schema: Some("rt".into()),
            events_table: "Ev".into(),
            ..PostgresConfig::default()
        };
        let n = Names::new(&c).unwrap();
        assert_eq!(n.events, "\"rt\".\"Ev\"");
        assert_eq!(n.counters, "\"rt\".\"realtime_counters\"");
        assert!(
            n.substitutions
                .contains(&("realtime_events_room_id_key".into(), "\"Ev_room_id_key\"".into()))
        );
        assert_eq!(n.tag.len(), 8);
        assert_ne!(n.tag, Names::new(&PostgresConfig::default()).unwrap().tag);
    }
}
