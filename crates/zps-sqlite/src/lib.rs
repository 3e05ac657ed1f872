//! The embedded durable provider: history, cursors, snapshots and dead letters
//! in one SQLite file, so a single gateway keeps everything across restarts
//! with no database server to run.
//!
//! - **One writer, group commit.** Every write goes to one writer thread,
//!   which takes whatever is queued (up to [`SqliteConfig::batch_max`]) into one
//!   transaction: concurrent publishers share one commit (and one `fsync` with
//!   `synchronous=FULL`). A room's next sequence is taken in the same
//!   transaction as the insert, so sequences have no gap and no duplicate, and
//!   an acknowledged publish is committed.
//! - **WAL readers.** Replays and lookups run on a small pool of read
//!   connections, beside the writer, on a consistent snapshot each.
//! - **One node.** Live fan-out, presence and ephemeral events stay in this
//!   process (presence dies with the connections it describes). A second
//!   process opening the same file is refused (an OS lock on `<file>.lock`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use zps_sqlite::{SqliteConfig, SqliteTransport};
//! let transport = SqliteTransport::open(SqliteConfig::new("data/zps.db")).await?;
//! let engine = zps_core::Realtime::new(Arc::new(transport));
//! # let _ = engine; Ok(()) }
//! ```

mod config;
mod error;
mod lock;
mod read;
mod schema;
mod store;
mod transport;
mod writer;

pub use config::{SqliteConfig, Synchronous};
pub use error::SqliteError;
pub use transport::SqliteTransport;
