//! Settings of the SQLite provider.

use std::path::PathBuf;
use std::time::Duration;

/// How hard a commit waits for the disk (SQLite's `synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `fsync` on every commit: an acknowledged publish survives a power cut.
    #[default]
    Full,
    /// `fsync` at checkpoints only: survives a process crash (kill -9), but the last
    /// commits before a power cut or kernel panic may be lost. Faster on slow disks.
    Normal,
}

impl Synchronous {
    /// The pragma value.
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

/// Where the file is and how it is written.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file; it and its folder are created when missing.
    pub path: PathBuf,
    /// Commit durability.
    pub synchronous: Synchronous,
    /// Most writes committed together in one transaction.
    pub batch_max: usize,
    /// Read connections kept open for replays and lookups.
    pub readers: usize,
    /// How long a statement waits for a lock held by another connection.
    pub busy_timeout: Duration,
    /// How often expired events are deleted (`None`: only on `prune_expired`).
    pub prune_interval: Option<Duration>,
    /// Dead letters kept per room; the oldest go first.
    pub max_dlq_per_room: usize,
    /// Depth of each room's in-process live channel; a subscriber further behind re-reads history.
    pub channel_capacity: usize,
}

impl SqliteConfig {
    /// Defaults for a file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::Full,
            batch_max: 512,
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            prune_interval: Some(Duration::from_secs(60)),
            max_dlq_per_room: 10_000,
            channel_capacity: zps_core::fanout::DEFAULT_CHANNEL_CAPACITY,
        }
    }

    /// The file named by a `sqlite://PATH` (or `sqlite:PATH`) connection string.
    pub fn from_url(url: &str) -> Result<Self, crate::SqliteError> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .filter(|p| !p.is_empty())
            .ok_or_else(|| crate::SqliteError::InvalidUrl(url.to_owned()))?;
        Ok(Self::new(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_file() {
        assert_eq!(
            SqliteConfig::from_url("sqlite://data/zps.db").unwrap().path,
            PathBuf::from("data/zps.db")
        );
        assert_eq!(
            SqliteConfig::from_url("sqlite:///var/lib/zps.db").unwrap().path,
            PathBuf::from("/var/lib/zps.db")
        );
        assert_eq!(
            SqliteConfig::from_url("sqlite:zps.db").unwrap().path,
            PathBuf::from("zps.db")
        );
        assert!(SqliteConfig::from_url("sqlite://").is_err());
        assert!(SqliteConfig::from_url("postgres://x").is_err());
    }
}
