//! The zero-pub-sub Rust client: the front-end half of the delivery promise.
//!
//! A [`Client`] keeps one WebSocket to a gateway in a background task. It sends
//! `init` on every open, reconnects with exponential backoff and full jitter,
//! resubscribes every room from the last event it delivered (with that room's
//! epoch), buffers out-of-order events, repairs gaps with `replay_request`, drops
//! duplicates, and surfaces every discontinuity (history reset or expired) as an
//! explicit [`ClientEvent::Discontinuity`]. An application therefore sees each
//! event of a room exactly once, in sequence order, across disconnects.
//!
//! ```no_run
//! use futures::StreamExt;
//! use zps_client::{Client, ClientEvent, ClientOptions};
//!
//! # async fn run() -> Result<(), zps_client::ClientError> {
//! let client = Client::connect(
//!     "ws://127.0.0.1:8080/ws",
//!     ClientOptions::default().with_subscriber_id("device-1"),
//! )?;
//! let mut chat = client.subscribe("chat:1").await?;
//! while let Some(item) = chat.next().await {
//!     match item {
//!         ClientEvent::Event(e) => println!("#{} {} {}", e.sequence, e.event_type, e.payload),
//!         ClientEvent::Discontinuity { reason, earliest_sequence, .. } => {
//!             println!("history {reason:?}: continuing at #{earliest_sequence}")
//!         }
//!         other => println!("{other:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The callback form gives the same guarantee and acks after the handler returns:
//!
//! ```no_run
//! use zps_client::{Client, ClientEvent, ClientOptions, SubscribeOptions};
//!
//! # async fn run() -> Result<(), zps_client::ClientError> {
//! let client = Client::connect("ws://127.0.0.1:8080/ws", ClientOptions::default())?;
//! let handle = client
//!     .subscribe_with("order:*", SubscribeOptions::new(), |item| async move {
//!         if let ClientEvent::Event(e) = item {
//!             println!("{} #{}", e.room, e.sequence);
//!         }
//!     })
//!     .await?;
//! # handle.unsubscribe().await;
//! # Ok(()) }
//! ```
//!
//! See `docs/client.md` for options, guarantees and close-code behaviour.

mod client;
mod driver;
mod error;
mod handle_state;
pub mod http;
mod options;
mod room;
#[cfg(test)]
mod room_sim;
mod subscription;
mod types;

pub use client::{Client, Presence, Synced};
pub use error::{ClientError, Result};
pub use options::{AckMode, ClientOptions, Encoding, StartAt, SubscribeOptions, Targets, TokenProvider};
pub use subscription::{EphemeralSubscription, PresenceSubscription, Subscription, SubscriptionHandle};
pub use types::{
    ClientEvent, ConnectionState, EphemeralMessage, OutgoingEvent, PresenceEvent, Published, RoomPosition,
};
pub use zps_model::Backoff;
pub use zps_model::{DiscontinuityReason, Envelope, Metadata, PresenceMember, Snapshot};
pub use zps_protocol::{CloseCode, ErrorCode};

/// `docs/client.md`'s examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/client.md")]
struct ClientGuideDoctests;
