//! MongoDB provider for zero-pub-sub (official `mongodb` driver, tokio).
//!
//! - **Storage**: `realtime_events` (unique `{room, sequence}`, the event id unique as
//!   `_id = "<room>\0<id>"` so idempotency is per room, TTL on `expiresAt`),
//!   `realtime_counters` (per-room sequences, dead-letter counters, the database epoch),
//!   `realtime_subscribers` (ack cursors, unique `{room, subscriberId}`),
//!   `realtime_snapshots`, `realtime_dlq`, `realtime_presence`. Names are configurable
//!   and validated; indexes are created at connect outside production.
//! - **Publish**: look the id up (a repeat never consumes a sequence), take the next
//!   sequence with `findOneAndUpdate $inc` (upsert), insert the event. A sequence whose
//!   insert lost an id race gets a skip record; a sequence whose publisher died is
//!   claimed by readers with a skip record once it is older than
//!   [`MongoConfig::hole_grace`] — the unique `{room, sequence}` index makes a late
//!   insert and the claim mutually exclusive, so a reader never skips an event that
//!   later appears, and never waits on a dead one for longer than the grace.
//! - **Replay** reports `scanned_to` only up to sequences that are final (stored,
//!   filtered, expired, skipped, or pruned long ago), waiting briefly for in-flight ones.
//! - **Live**: a change stream on the events collection when the deployment has them
//!   (replica set, sharded, Atlas), resumed with its token after a disconnect;
//!   otherwise (standalone) in-process fan-out of this process's publishes plus a head
//!   poller for the exact rooms local subscribers listen to. Ephemeral events are
//!   in-process only (cross-process ephemeral needs the hybrid provider with Redis).
//!
//! ```no_run
//! use std::sync::Arc;
//! use zps_core::{PublishRequest, Realtime, room};
//! use zps_mongo::{MongoConfig, MongoTransport};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let transport = MongoTransport::connect("mongodb://127.0.0.1:27017/app?replicaSet=rs0", MongoConfig::default()).await?;
//! let realtime = Realtime::new(Arc::new(transport));
//! let e = realtime
//!     .publish(PublishRequest::new(room("chat", "1")?, "message.created", &serde_json::json!({"text": "hi"}))?)
//!     .await?;
//! println!("stored #{}", e.sequence);
//! realtime.close().await?;
//! # Ok(()) }
//! ```

mod config;
pub mod docs;
mod error;
mod holes;
mod live;
mod transport;

pub use config::{
    ChangeStreams, CollectionNames, DEFAULT_COLLECTION_PREFIX, DEFAULT_DATABASE, MAX_COLLECTION_NAME_LEN,
    MongoConfig, is_valid_collection_name, is_valid_database_name,
};
pub use error::{DUPLICATE_KEY, MongoError, is_duplicate_key};
pub use mongodb::{Client, Database};
pub use transport::{MongoTransport, SCAN_WINDOW, client_options};
