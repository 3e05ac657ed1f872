//! The [`Client`] handle: cheap to clone; every call becomes a command for the
//! background connection task, and answers come back on oneshot channels
//! bounded by `request_timeout`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use zps_model::{Metadata, PresenceMember, Room, RoomPattern, Snapshot};
use zps_protocol::{PublishEphemeral, PublishEvent};

use crate::driver::{Command, Driver, Dropped, Outgoing, Reply};
use crate::error::ClientError;
use crate::handle_state::Shared;
use crate::options::{AckMode, ClientOptions, StartAt, SubscribeOptions, Targets};
use crate::room::Sink;
use crate::subscription::{EphemeralSubscription, PresenceSubscription, Subscription, SubscriptionHandle};
use crate::types::{ClientEvent, ConnectionState, OutgoingEvent, Published, RoomPosition};

/// Commands waiting for the connection task (callers wait when it is full).
const COMMAND_CAPACITY: usize = 1024;

/// A connection to a zero-pub-sub gateway; clones share one connection.
///
/// The connection lives in a background task that reconnects on its own and
/// restores every subscription from its last delivered event. It stops after
/// [`Client::close`], after a fatal error (authentication, `max_attempts`), or when
/// every clone and every subscription is dropped.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cmd: mpsc::Sender<Command>,
    pub(crate) drops: mpsc::UnboundedSender<Dropped>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) opts: Arc<ClientOptions>,
    next_id: AtomicU64,
    url: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.url)
            .field("subscriber_id", &self.inner.opts.subscriber_id)
            .field("state", &*self.inner.shared.state.borrow())
            .finish()
    }
}

/// The result of [`Client::sync`]: the snapshot (if any) and a subscription that
/// continues right after it.
#[derive(Debug)]
pub struct Synced {
    /// The room's latest snapshot; `None` when the room has none (history starts at 0).
    pub snapshot: Option<Snapshot>,
    /// Events after the snapshot's `lastSequence`, then live.
    pub subscription: Subscription,
}

impl Client {
    /// Starts the background connection to `url` (`ws://host:port/ws`) and returns at
    /// once; the first connection happens in the background. Must be called inside a
    /// tokio runtime.
    pub fn connect(url: impl Into<String>, options: ClientOptions) -> Result<Self, ClientError> {
        let url = url.into();
        options.validate()?;
        check_url(&url)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ClientError::InvalidOption("Client::connect must be called inside a tokio runtime".into())
        })?;
        let (cmd, cmd_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (drops, drop_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new());
        let opts = Arc::new(options);
        let driver = Driver::new(
            url.clone(),
            opts.clone(),
            cmd_rx,
            cmd.downgrade(),
            drop_rx,
            shared.clone(),
        );
        runtime.spawn(driver.run());
        Ok(Self {
            inner: Arc::new(Inner {
                cmd,
                drops,
                shared,
                opts,
                next_id: AtomicU64::new(1),
                url,
            }),
        })
    }

    /// The subscriber id sent in `init` (ack cursors are kept per id).
    pub fn subscriber_id(&self) -> &str {
        &self.inner.opts.subscriber_id
    }

    /// The options this client runs with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// Watches the connection state (Connecting, Connected, Reconnecting, Closed).
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.shared.state.subscribe()
    }

    /// The connection state right now.
    pub fn connection_state(&self) -> ConnectionState {
        self.inner.shared.state.borrow().clone()
    }

    /// Waits until the client is connected (`ready` received); fails once it is closed.
    pub async fn wait_connected(&self) -> Result<(), ClientError> {
        let mut rx = self.state();
        loop {
            match &*rx.borrow_and_update() {
                ConnectionState::Connected => return Ok(()),
                ConnectionState::Closed { reason } => {
                    return Err(reason.clone().unwrap_or(ClientError::Closed));
                }
                _ => {}
            }
            rx.changed().await.map_err(|_| ClientError::Closed)?;
        }
    }

    /// Waits until the client stopped for good; returns why (`None` after [`Client::close`]).
    pub async fn closed(&self) -> Option<ClientError> {
        let mut rx = self.state();
        loop {
            if let ConnectionState::Closed { reason } = &*rx.borrow_and_update() {
                return reason.clone();
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Every error from now on: server `error` messages, lost connections, unreadable
    /// frames, token failures. Slow readers skip the oldest (64 are kept).
    pub fn errors(&self) -> impl Stream<Item = ClientError> + Send + 'static {
        let rx = self.inner.shared.errors.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(e) => return Some((e, rx)),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                }
            }
        })
    }

    /// Subscribes to rooms and/or `scope:*` patterns, starting where the server decides
    /// (after this subscriber's acked cursor, else live). Resolves once the server
    /// confirmed every target.
    pub async fn subscribe(&self, targets: impl Into<Targets>) -> Result<Subscription, ClientError> {
        self.subscribe_with_options(targets, SubscribeOptions::default())
            .await
    }

    /// Subscribes with explicit start positions and filters.
    pub async fn subscribe_with_options(
        &self,
        targets: impl Into<Targets>,
        options: SubscribeOptions,
    ) -> Result<Subscription, ClientError> {
        let targets = targets.into().0;
        if targets.is_empty() {
            return Err(ClientError::InvalidOption(
                "subscribe needs at least one room".into(),
            ));
        }
        for t in &targets {
            RoomPattern::parse(t).map_err(|e| ClientError::InvalidRoom {
                room: t.clone(),
                reason: e.to_string(),
            })?;
        }
        let id = self.next_id();
        let (tx, rx) = mpsc::channel(self.inner.opts.delivery_buffer);
        let sink = Sink {
            id,
            tx,
            types: options.event_types.map(Arc::from),
        };
        let sub = Subscription {
            rx,
            client: self.clone(),
            id,
            targets: targets.clone(),
            ack_on_take: self.inner.opts.ack_mode == AckMode::Auto,
        };
        // On failure `sub` is dropped, which removes whatever was registered.
        self.ask(|reply| Command::Subscribe {
            sink,
            targets,
            start: options.start,
            positions: options.positions,
            reply,
        })
        .await?;
        Ok(sub)
    }

    /// Subscribes and runs `handler` for every item, one at a time, in order; in auto-ack
    /// mode an event is acked after its handler returned.
    pub async fn subscribe_with<F, Fut>(
        &self,
        targets: impl Into<Targets>,
        options: SubscribeOptions,
        handler: F,
    ) -> Result<SubscriptionHandle, ClientError>
    where
        F: FnMut(ClientEvent) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let sub = self.subscribe_with_options(targets, options).await?;
        Ok(SubscriptionHandle::spawn(sub, self.inner.opts.ack_mode, handler))
    }

    /// Snapshot sync: the room's latest snapshot, then a subscription from its
    /// `lastSequence` (or from the beginning when there is none), then live.
    pub async fn sync(&self, room: &str, options: SubscribeOptions) -> Result<Synced, ClientError> {
        let snapshot = self.snapshot(room).await?;
        let sequence = snapshot.as_ref().map_or(0, |s| s.last_sequence);
        let mut options = options;
        options.start = StartAt::After {
            sequence,
            epoch: None,
        };
        options.positions.remove(room);
        let subscription = self.subscribe_with_options(room, options).await?;
        Ok(Synced {
            snapshot,
            subscription,
        })
    }

    /// Publishes a durable event; resolves to the stored id and sequence. Fails with
    /// [`ClientError::Server`] code 4403 when the gateway does not allow client publishing.
    /// Unanswered publishes are re-sent after a reconnect with the same event id, so each
    /// is stored once.
    pub async fn publish(&self, event: OutgoingEvent) -> Result<Published, ClientError> {
        let request = event.request;
        check_room(&request.room)?;
        let publish = zps_protocol::Publish {
            request_id: None,
            event: PublishEvent {
                event_type: request.event_type,
                room: request.room,
                payload: request.payload,
                id: Some(request.id.unwrap_or_else(zps_model::envelope::generate_id)),
                ttl_ms: request
                    .ttl
                    .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                encrypted: request.encrypted,
                metadata: request.metadata,
            },
            exclude_self: event.exclude_self,
        };
        self.ask(|reply| Command::Request {
            req: Outgoing::Publish(publish),
            reply: Reply::Publish(reply),
        })
        .await
    }

    /// Fans out an ephemeral event (not stored, not replayed); resolves once it is
    /// queued or sent. Server refusals arrive on [`Client::errors`].
    pub async fn publish_ephemeral<T: serde::Serialize + ?Sized>(
        &self,
        room: &str,
        event_type: &str,
        payload: &T,
    ) -> Result<(), ClientError> {
        check_room(room)?;
        let payload =
            serde_json::value::to_raw_value(payload).map_err(|e| ClientError::Payload(e.to_string()))?;
        let msg = PublishEphemeral {
            request_id: None,
            room: room.to_owned(),
            event_type: event_type.to_owned(),
            payload,
            echo: false,
        };
        self.ask(|reply| Command::Request {
            req: Outgoing::Ephemeral(msg),
            reply: Reply::Accepted(reply),
        })
        .await
    }

    /// Receives ephemeral events of a room or `scope:*` pattern (optionally only some
    /// types); restored after reconnects.
    pub async fn subscribe_ephemeral(
        &self,
        target: &str,
        event_types: Option<Vec<String>>,
    ) -> Result<EphemeralSubscription, ClientError> {
        let pattern = RoomPattern::parse(target).map_err(|e| ClientError::InvalidRoom {
            room: target.to_owned(),
            reason: e.to_string(),
        })?;
        let id = self.next_id();
        let (tx, rx) = mpsc::channel(self.inner.opts.delivery_buffer);
        self.command(Command::EphemeralSubscribe {
            id,
            pattern,
            types: event_types,
            tx,
        })
        .await?;
        Ok(EphemeralSubscription {
            rx,
            client: self.clone(),
            id,
        })
    }

    /// Presence of one room: enter, leave, watch.
    pub fn presence(&self, room: &str) -> Result<Presence, ClientError> {
        check_room(room)?;
        Ok(Presence {
            client: self.clone(),
            room: room.to_owned(),
        })
    }

    /// The room's latest snapshot, if one was stored.
    pub async fn snapshot(&self, room: &str) -> Result<Option<Snapshot>, ClientError> {
        check_room(room)?;
        let room = room.to_owned();
        self.ask(|reply| Command::Request {
            req: Outgoing::Snapshot(room),
            reply: Reply::Snapshot(reply),
        })
        .await
    }

    /// Application-level ping; resolves to the round-trip time.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let started = Instant::now();
        self.ask(|reply| Command::Request {
            req: Outgoing::Ping,
            reply: Reply::Ping(reply),
        })
        .await?;
        Ok(started.elapsed())
    }

    /// Marks `room` processed up to `sequence` (manual ack mode); sent coalesced.
    pub fn ack(&self, room: &str, sequence: u64) {
        self.inner.shared.taken(room, sequence);
    }

    /// Where the client stands in every subscribed room (last delivered sequence + epoch).
    pub async fn positions(&self) -> Result<HashMap<String, RoomPosition>, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Positions(reply)).await?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Closes gracefully: sends pending acks, closes the socket, ends every stream, and
    /// never reconnects. Idempotent.
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.inner.cmd.send(Command::Close(reply)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = self.closed().await;
    }

    pub(crate) async fn command(&self, cmd: Command) -> Result<(), ClientError> {
        self.inner.cmd.send(cmd).await.map_err(|_| ClientError::Closed)
    }

    async fn ask<T>(
        &self,
        build: impl FnOnce(oneshot::Sender<Result<T, ClientError>>) -> Command,
    ) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.command(build(tx)).await?;
        let timeout = self.inner.opts.request_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(ClientError::Timeout(timeout)),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(r)) => r,
        }
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Presence operations of one room ([`Client::presence`]); entering and watching are
/// restored after reconnects.
#[derive(Debug, Clone)]
pub struct Presence {
    client: Client,
    room: String,
}

impl Presence {
    /// The room.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// Becomes present (the identity is the token's `sub`, else the subscriber id);
    /// resolves to the member list.
    pub async fn enter(&self, metadata: Option<Metadata>) -> Result<Vec<PresenceMember>, ClientError> {
        let room = self.room.clone();
        self.client
            .ask(|reply| Command::PresenceEnter {
                room,
                metadata,
                reply,
            })
            .await
    }

    /// Leaves the room's presence.
    pub async fn leave(&self) -> Result<(), ClientError> {
        let room = self.room.clone();
        self.client
            .ask(|reply| Command::PresenceLeave { room, reply })
            .await
    }

    /// Watches joins and leaves; the stream starts with the full member list.
    pub async fn subscribe(&self) -> Result<PresenceSubscription, ClientError> {
        let id = self.client.next_id();
        let (tx, rx) = mpsc::channel(self.client.inner.opts.delivery_buffer);
        let sub = PresenceSubscription {
            rx,
            client: self.client.clone(),
            id,
            room: self.room.clone(),
        };
        let room = self.room.clone();
        self.client
            .ask(|reply| Command::PresenceWatch { id, room, tx, reply })
            .await?;
        Ok(sub)
    }
}

fn check_room(room: &str) -> Result<(), ClientError> {
    Room::parse(room)
        .map(|_| ())
        .map_err(|e| ClientError::InvalidRoom {
            room: room.to_owned(),
            reason: e.to_string(),
        })
}

fn check_url(url: &str) -> Result<(), ClientError> {
    let invalid = |reason: &str| ClientError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let request = url.into_client_request().map_err(|e| invalid(&e.to_string()))?;
    match request.uri().scheme_str() {
        Some("ws") => Ok(()),
        Some("wss") => Err(invalid(
            "wss:// needs TLS, which this build does not include; terminate TLS in front of the gateway or use ws://",
        )),
        _ => Err(invalid("the scheme must be ws://")),
    }
}
