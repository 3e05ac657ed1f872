//! Building the transport named by the settings.

use std::sync::Arc;

use anyhow::{Context, bail};
use zps_core::{MemoryConfig, MemoryTransport, Transport};

use crate::settings::{ProviderKind, ProviderSettings};

/// Hides the password of a connection URL for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn required<'a>(value: &'a Option<String>, flag: &str, provider: &str) -> anyhow::Result<&'a str> {
    match value.as_deref() {
        Some(v) if !v.is_empty() => Ok(v),
        _ => bail!("{flag} is required for the {provider} provider"),
    }
}

/// The PostgreSQL settings for this run.
pub(crate) fn postgres_config(s: &ProviderSettings) -> zps_postgres::PostgresConfig {
    zps_postgres::PostgresConfig {
        schema: s.given.postgres_schema.clone(),
        auto_migrate: s.given.auto_migrate,
        ssl_root_cert: s.given.ca_file.clone(),
        ..zps_postgres::PostgresConfig::default()
    }
}

async fn postgres(url: &str, s: &ProviderSettings) -> anyhow::Result<Arc<dyn Transport>> {
    let t = zps_postgres::PostgresTransport::connect(url, postgres_config(s))
        .await
        .with_context(|| format!("cannot use PostgreSQL at {}", redact(url)))?;
    Ok(Arc::new(t))
}

/// The Redis settings for this run; `fanout_only` for the hybrid's realtime leg.
pub(crate) fn redis_config(
    s: &ProviderSettings,
    fanout_only: bool,
) -> anyhow::Result<zps_redis::RedisConfig> {
    let mut config =
        zps_redis::RedisConfig::with_prefix(s.given.redis_prefix.as_deref().unwrap_or("realtime:"));
    config.tls_ca_pem = s.ca_pem()?;
    Ok(if fanout_only { config.fanout_only() } else { config })
}

async fn redis(url: &str, s: &ProviderSettings, fanout_only: bool) -> anyhow::Result<Arc<dyn Transport>> {
    let t = zps_redis::RedisTransport::connect(url, redis_config(s, fanout_only)?)
        .await
        .with_context(|| format!("cannot use Redis at {}", redact(url)))?;
    Ok(Arc::new(t))
}

/// The NATS settings for this run.
pub(crate) fn nats_config(s: &ProviderSettings) -> zps_nats::NatsConfig {
    let mut config = zps_nats::NatsConfig::default();
    if let Some(prefix) = &s.given.nats_prefix {
        config.prefix = prefix.clone();
    }
    if let Some(replicas) = s.given.nats_replicas {
        config.replicas = replicas;
    }
    config
}

async fn nats(url: &str, s: &ProviderSettings) -> anyhow::Result<Arc<dyn Transport>> {
    let t = zps_nats::NatsTransport::connect(url, nats_config(s))
        .await
        .with_context(|| format!("cannot use NATS JetStream at {}", redact(url)))?;
    Ok(Arc::new(t))
}

async fn mongo(url: &str, s: &ProviderSettings) -> anyhow::Result<Arc<dyn Transport>> {
    let config = zps_mongo::MongoConfig {
        auto_create_indexes: s.given.auto_migrate,
        tls_ca_file: s.given.ca_file.clone(),
        ..zps_mongo::MongoConfig::default()
    };
    let t = zps_mongo::MongoTransport::connect(url, config)
        .await
        .with_context(|| format!("cannot use MongoDB at {}", redact(url)))?;
    if !t.uses_change_streams() {
        tracing::warn!(
            "MongoDB has no change streams here (standalone server): live events reach this process's \
             subscribers, other gateways only see them by polling; use a replica set or the hybrid provider"
        );
    }
    Ok(Arc::new(t))
}

/// The SQLite settings: `--connection sqlite://PATH`, else `--data-dir DIR` (`DIR/zps.db`).
pub(crate) fn sqlite_config(s: &ProviderSettings) -> anyhow::Result<zps_sqlite::SqliteConfig> {
    let mut config = match (&s.given.connection, &s.given.data_dir) {
        (Some(url), None) => zps_sqlite::SqliteConfig::from_url(url)?,
        (None, Some(dir)) => zps_sqlite::SqliteConfig::new(dir.join("zps.db")),
        (Some(_), Some(_)) => bail!("give either --data-dir or --connection sqlite://PATH, not both"),
        (None, None) => bail!("the sqlite provider needs --data-dir DIR or --connection sqlite://PATH"),
    };
    if s.given.sqlite_synchronous == Some(crate::settings::SqliteSync::Normal) {
        config.synchronous = zps_sqlite::Synchronous::Normal;
    }
    Ok(config)
}

async fn sqlite(s: &ProviderSettings) -> anyhow::Result<Arc<dyn Transport>> {
    let config = sqlite_config(s)?;
    let path = config.path.display().to_string();
    let t = zps_sqlite::SqliteTransport::open(config)
        .await
        .with_context(|| format!("cannot use SQLite at {path}"))?;
    Ok(Arc::new(t))
}

async fn single(kind: ProviderKind, url: &str, s: &ProviderSettings) -> anyhow::Result<Arc<dyn Transport>> {
    match kind {
        ProviderKind::Postgres => postgres(url, s).await,
        ProviderKind::Mongo => mongo(url, s).await,
        ProviderKind::Redis => redis(url, s, false).await,
        ProviderKind::Nats => nats(url, s).await,
        other => bail!(
            "the `{}` provider ({}) is not available in this build yet",
            other.as_str(),
            redact(url)
        ),
    }
}

/// Connects the configured provider; errors say what is missing or unreachable.
pub(crate) async fn connect(s: &ProviderSettings) -> anyhow::Result<Arc<dyn Transport>> {
    match s.kind {
        ProviderKind::Memory => {
            if let Some(url) = &s.given.connection {
                tracing::warn!(connection = %redact(url), "--connection is ignored by the memory provider");
            }
            Ok(Arc::new(MemoryTransport::new(MemoryConfig {
                max_events_per_room: s.memory_max_events_per_room.max(1),
                ..MemoryConfig::default()
            })))
        }
        ProviderKind::Sqlite => sqlite(s).await,
        ProviderKind::Hybrid => {
            let storage_kind = match s.given.storage_provider {
                Some(k @ (ProviderKind::Postgres | ProviderKind::Mongo)) => k,
                Some(other) => bail!(
                    "--storage-provider must be postgres or mongo, not {}",
                    other.as_str()
                ),
                None => bail!("--storage-provider is required for the hybrid provider (postgres or mongo)"),
            };
            let realtime_kind = match s.given.realtime_provider {
                Some(ProviderKind::Redis) | None => ProviderKind::Redis,
                Some(other) => bail!("--realtime-provider must be redis, not {}", other.as_str()),
            };
            let storage_url = required(&s.given.storage_connection, "--storage-connection", "hybrid")?;
            let realtime_url = required(&s.given.realtime_connection, "--realtime-connection", "hybrid")?;
            let storage = single(storage_kind, storage_url, s).await?;
            // The realtime leg only fans out: storage keeps the history.
            let realtime = match realtime_kind {
                ProviderKind::Redis => redis(realtime_url, s, true).await?,
                other => single(other, realtime_url, s).await?,
            };
            Ok(Arc::new(zps_hybrid::HybridTransport::new(
                storage,
                realtime,
                zps_hybrid::HybridConfig::default(),
            )))
        }
        kind => {
            let url = required(&s.given.connection, "--connection", kind.as_str())?;
            single(kind, url, s).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("mongodb://user@h/db"), "mongodb://user@h/db");
    }
}
