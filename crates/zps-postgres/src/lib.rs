//! PostgreSQL provider for zero-pub-sub.
//!
//! - **Storage**: `realtime_events` keyed by `(room, sequence)`, unique `(room, id)`,
//!   plus counters, cursors, snapshots, dead letters, presence and a meta table
//!   (names configurable, validated as identifiers). The schema is the plain SQL of
//!   `migrations/` (embedded here and applied by [`migrate`], or by hand with `psql`).
//! - **Publish** is one round trip: a single statement takes the room's next sequence
//!   under the counter row's lock, inserts the event (or returns the stored one for a
//!   duplicate id without consuming a sequence) and queues a NOTIFY in the same
//!   transaction, so commit order — and therefore notification order — equals
//!   sequence order. Concurrent publishes of one transport are grouped into one
//!   multi-event statement (group commit), because PostgreSQL serialises the commits
//!   of notifying transactions.
//! - **Live** fan-out: one dedicated LISTEN connection per transport feeds an
//!   in-process fan-out. Payloads too large for NOTIFY are fetched by `(room, sequence)`
//!   without reordering. When the LISTEN connection drops it is re-opened with backoff
//!   and every live stream gets `LiveSignal::Lagged(None)`, so the engine re-reads
//!   history and nothing is lost.
//! - **Epochs**: a random database epoch (set at the first migration) is every room's
//!   epoch until [`PostgresTransport::reset_room`] gives the room a new one.
//!
//! ```no_run
//! use std::sync::Arc;
//! use zps_core::Realtime;
//! use zps_postgres::{PostgresConfig, PostgresTransport};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = PostgresConfig { schema: Some("realtime".into()), ..PostgresConfig::default() };
//! let transport = PostgresTransport::connect("postgres://postgres@127.0.0.1:5432/app", config).await?;
//! let realtime = Realtime::new(Arc::new(transport));
//! // ... publish / subscribe ...
//! realtime.close().await?;
//! # Ok(()) }
//! ```

mod config;
mod error;
mod listener;
mod migrate;
mod publish;
mod rows;
mod sql;
mod stats;
mod transport;

pub use config::{PostgresConfig, is_valid_identifier};
pub use error::PostgresError;
pub use migrate::{MIGRATIONS, MigrationReport, migrate, render_migrations};
pub use publish::NOTIFY_PAYLOAD_LIMIT;
pub use sqlx::PgPool;
pub use transport::{PostgresTransport, connect_pool, prune_expired};
