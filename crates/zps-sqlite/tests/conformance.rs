//! The shared conformance suite on SQLite: every case gets a fresh file in its
//! own folder; every `connect()` opens another transport on that file (its own
//! writer and readers), so two of them share one history.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use zps_conformance::{Factory, Fixture};
use zps_core::Transport;
use zps_sqlite::{SqliteConfig, SqliteTransport};

struct FileFixture {
    dir: PathBuf,
}

#[async_trait::async_trait]
impl Fixture for FileFixture {
    async fn connect(&self) -> Arc<dyn Transport> {
        Arc::new(
            SqliteTransport::open(SqliteConfig::new(self.dir.join("zps.db")))
                .await
                .unwrap(),
        )
    }

    async fn cleanup(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Sqlite;

#[async_trait::async_trait]
impl Factory for Sqlite {
    async fn fixture(&self) -> Result<Arc<dyn Fixture>, String> {
        let dir = std::env::temp_dir().join(format!(
            "zps-sqlite-conf-{}-{}",
            std::process::id(),
            zps_core::envelope::generate_id()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        Ok(Arc::new(FileFixture { dir }))
    }
}

zps_conformance::conformance_suite!(Sqlite);
