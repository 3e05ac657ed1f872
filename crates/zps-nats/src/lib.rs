//! NATS JetStream transport for zero-pub-sub.
//!
//! * **History**: one stream (`{prefix}_events`) with a subject per room,
//!   `{prefix}.ev.{scope}.{resource}` (names encoded as in [`subject`](crate)
//!   docs: `[A-Za-z0-9_-]` kept, other bytes `=XX`). Each message is the
//!   envelope's JSON with its room sequence in the `Zps-Seq` header.
//! * **Sequencing**: optimistic. A publisher writes sequence `n + 1` with
//!   `Nats-Expected-Last-Subject-Sequence` set to the stream position of the
//!   room's event `n` and `Nats-Msg-Id: {room}.{n + 1}` (the server checks the
//!   first against applied state only, the second also against attempts in
//!   flight); when another publisher took it first the server refuses, the
//!   publisher re-reads the room's head and tries again. Publishes to one
//!   room from one process wait for each other, so contention only arises
//!   between processes. Sequences stay gap-free under any number of gateways.
//! * **Idempotency**: the `{prefix}_ids` stream holds one record per (room,
//!   event id), claimed before the event is stored and finished with its
//!   sequence after; a second publisher of the id waits for it and answers
//!   with the original.
//! * **Replay**: the room's position in the stream is found by bisection over
//!   stream sequences, then a short-lived consumer filtered to the room's
//!   subject reads the page.
//! * **Live**: one ordered push consumer per transport on `{prefix}.ev.>`,
//!   started on the first subscription; stored events only, in stream order,
//!   re-created from the last position it saw when the link drops.
//! * **Epoch**: a marker message (`{prefix}.epoch`) in the events stream;
//!   recreating or purging the stream removes it, and a new one is a new epoch.
//! * **The rest**: cursors and snapshots one record per subject in a state
//!   stream (what a KV bucket is underneath), dead letters in a
//!   stream of their own, presence in a stream keeping one record per
//!   connection, ephemeral events on core NATS subjects (never stored).
//!
//! See `docs/providers/nats.md` for the layout, limits and cluster setup.

mod config;
mod error;
mod subject;
mod transport;

/// The NATS client library this crate is built on.
pub use async_nats;
pub use config::NatsConfig;
pub use error::NatsError;
pub use transport::{NatsTransport, delete_prefix};
