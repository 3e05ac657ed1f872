//! Building the transport named by the settings.

use std::sync::Arc;

use anyhow::bail;
use zps_core::{MemoryConfig, MemoryTransport, Transport};

use crate::settings::{ProviderKind, Settings};

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

/// Connects the configured provider; errors say what is missing or unreachable.
pub(crate) async fn connect(s: &Settings) -> anyhow::Result<Arc<dyn Transport>> {
    match s.provider {
        ProviderKind::Memory => {
            if let Some(url) = &s.connection {
                tracing::warn!(connection = %redact(url), "--connection is ignored by the memory provider");
            }
            Ok(Arc::new(MemoryTransport::new(MemoryConfig {
                max_events_per_room: s.memory_max_events_per_room.max(1),
                ..MemoryConfig::default()
            })))
        }
        ProviderKind::Hybrid => {
            let storage = s.storage_provider.map_or("?", |p| p.as_str());
            let realtime = s.realtime_provider.map_or("?", |p| p.as_str());
            required(&s.storage_connection, "--storage-connection", "hybrid")?;
            required(&s.realtime_connection, "--realtime-connection", "hybrid")?;
            bail!(
                "the hybrid provider ({storage} + {realtime}) is not available in this build yet; use --provider memory"
            )
        }
        other => {
            let url = required(&s.connection, "--connection", other.as_str())?;
            bail!(
                "the `{}` provider ({}) is not available in this build yet; use --provider memory",
                other.as_str(),
                redact(url)
            )
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
