//! Redis transport for zero-pub-sub.
//!
//! * **History**: one stream per room (`realtime:stream:{room}`), entry id =
//!   `<sequence>-0`, so reading by sequence is a direct `XRANGE`.
//! * **Publish**: one `EVALSHA` round trip. The script checks the id's
//!   idempotency record, makes sure the room has an epoch, increments the
//!   room's sequence, appends to the stream (trimmed with `MAXLEN ~`), records
//!   the id and PUBLISHes the envelope with the room's epoch. A batch's rooms
//!   share calls, except on a Cluster (one room's keys per call there).
//! * **Live**: one subscriber connection per transport; SUBSCRIBE per room,
//!   PSUBSCRIBE per `scope:*`; in-process fan-out through `LocalFanout`. All
//!   deliveries, local ones included, come back through Redis, in sequence order.
//! * **Epochs**: each room has a random epoch stored next to its sequence. A
//!   flushed or restarted Redis (without persistence) loses both; the next use
//!   creates a new epoch and every resume or live stream is told so.
//! * **Cluster**: every key of a room carries the room as hash tag, so the
//!   script's keys share one slot.
//!
//! See `docs/providers/redis.md` for the full key layout and operations notes.

mod admin;
mod codec;
mod config;
mod error;
mod live;
mod scripts;
#[cfg(feature = "tls")]
mod tls;
mod transport;

pub use admin::{delete_prefix, keys_with_prefix};
pub use config::RedisConfig;
pub use error::RedisError;
/// The fred client library this crate is built on, re-exported so injected clients match its version.
pub use fred;
pub use transport::RedisTransport;
