//! The background task that owns the socket: connects (and reconnects with
//! jittered backoff), sends `init`, restores subscriptions, presence and
//! ephemeral subscriptions after every `ready`, routes server frames to rooms,
//! requests and streams, repairs gaps, coalesces acks, and answers commands
//! from [`crate::Client`] handles.
//!
//! Handlers never do I/O: they push frames into `outbox`, which the loop
//! writes after each step, and only while a connection is ready.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use zps_core::{Envelope, Metadata, PresenceMember, RoomPattern, Snapshot};
use zps_protocol::{
    Ack, ClientMessage, ErrorCode, Init, PresenceEnter, RefreshToken, RoomRef, ServerMessage, Subscribe,
    SubscribeEphemeral, Unsubscribe, parse_server,
};

use crate::error::ClientError;
use crate::options::{ClientOptions, Encoding, StartAt};
use crate::room::{RoomTrack, Sink, SinkId, Tuning};
use crate::shared::Shared;
use crate::types::{ClientEvent, ConnectionState, EphemeralMessage, PresenceEvent, Published, RoomPosition};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Targets per `subscribe` / `subscribe_ephemeral` frame (keeps frames small).
const TARGETS_PER_FRAME: usize = 100;
/// How long a graceful close waits for the server's close answer.
const CLOSE_BUDGET: Duration = Duration::from_secs(1);
/// Wait before re-subscribing a room the server failed to serve (storage trouble).
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);
/// Safety net for a missed consumer wake-up while a room is blocked.
const BLOCKED_RECHECK: Duration = Duration::from_millis(50);
/// Idle allowance on top of twice the server's heartbeat interval.
const IDLE_SLACK: Duration = Duration::from_secs(10);
/// Sleep horizon when no timer is armed.
const FAR: Duration = Duration::from_secs(3600);

/// A request from a [`crate::Client`] handle.
pub(crate) enum Command {
    Subscribe {
        sink: Sink,
        targets: Vec<String>,
        start: StartAt,
        positions: HashMap<String, StartAt>,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Unsubscribe {
        sink: SinkId,
        reply: oneshot::Sender<()>,
    },
    Request {
        req: Outgoing,
        reply: Reply,
    },
    EphemeralSubscribe {
        id: u64,
        pattern: RoomPattern,
        types: Option<Vec<String>>,
        tx: mpsc::Sender<EphemeralMessage>,
    },
    PresenceEnter {
        room: String,
        metadata: Option<Metadata>,
        reply: oneshot::Sender<Result<Vec<PresenceMember>, ClientError>>,
    },
    PresenceLeave {
        room: String,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    PresenceWatch {
        id: u64,
        room: String,
        tx: mpsc::Sender<PresenceEvent>,
        reply: oneshot::Sender<Result<Vec<PresenceMember>, ClientError>>,
    },
    RefreshToken(String),
    Positions(oneshot::Sender<HashMap<String, RoomPosition>>),
    Close(oneshot::Sender<()>),
}

/// Something a consumer dropped.
pub(crate) enum Dropped {
    Sink(SinkId),
    Ephemeral(u64),
    Presence { id: u64, room: String },
}

/// A message that expects an answer (or, for ephemeral events, just to be sent).
pub(crate) enum Outgoing {
    Publish(zps_protocol::Publish),
    Snapshot(String),
    Ping,
    Ephemeral(zps_protocol::PublishEphemeral),
}

/// Where a request's answer goes.
pub(crate) enum Reply {
    Publish(oneshot::Sender<Result<Published, ClientError>>),
    Snapshot(oneshot::Sender<Result<Option<Snapshot>, ClientError>>),
    Ping(oneshot::Sender<Result<(), ClientError>>),
    /// Answered as soon as the message is accepted (queued or sent).
    Accepted(oneshot::Sender<Result<(), ClientError>>),
}

impl Reply {
    fn is_closed(&self) -> bool {
        match self {
            Self::Publish(t) => t.is_closed(),
            Self::Snapshot(t) => t.is_closed(),
            Self::Ping(t) | Self::Accepted(t) => t.is_closed(),
        }
    }

    fn fail(self, e: ClientError) {
        match self {
            Self::Publish(t) => drop(t.send(Err(e))),
            Self::Snapshot(t) => drop(t.send(Err(e))),
            Self::Ping(t) | Self::Accepted(t) => drop(t.send(Err(e))),
        }
    }
}

struct Pending {
    order: u64,
    frame: String,
    reply: Reply,
    sent: bool,
}

struct Queued {
    /// The pending request it belongs to (`None`: fire-and-forget).
    id: Option<String>,
    frame: String,
}

struct SinkEntry {
    sink: Sink,
    exact: Vec<Arc<str>>,
    /// Scopes of its `scope:*` patterns.
    scopes: Vec<String>,
}

struct Confirm {
    sink: SinkId,
    waiting: HashSet<String>,
    reply: oneshot::Sender<Result<(), ClientError>>,
}

struct EphemeralSink {
    pattern: RoomPattern,
    types: Option<Vec<String>>,
    tx: mpsc::Sender<EphemeralMessage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Enter,
    Leave,
    Watch,
}

#[derive(Default)]
struct PresenceRoom {
    entered: Option<Option<Metadata>>,
    watchers: Vec<(u64, mpsc::Sender<PresenceEvent>)>,
    slots: VecDeque<Slot>,
    enter_waiters: Vec<oneshot::Sender<Result<Vec<PresenceMember>, ClientError>>>,
    leave_waiters: Vec<oneshot::Sender<Result<(), ClientError>>>,
    watch_waiters: Vec<oneshot::Sender<Result<Vec<PresenceMember>, ClientError>>>,
}

impl PresenceRoom {
    fn is_idle(&self) -> bool {
        self.entered.is_none()
            && self.watchers.is_empty()
            && self.enter_waiters.is_empty()
            && self.leave_waiters.is_empty()
            && self.watch_waiters.is_empty()
    }
}

/// Why a connection ended.
enum End {
    /// [`crate::Client::close`] or every handle dropped.
    Closed,
    /// Lost; `auth` when the server refused the credentials.
    Lost {
        error: ClientError,
        auth: bool,
        ready: bool,
    },
}

/// Per-connection bookkeeping.
struct Conn {
    ready: bool,
    last_frame: Instant,
    idle: Duration,
    handshake_deadline: Instant,
    auth_error: bool,
}

pub(crate) struct Driver {
    url: String,
    opts: Arc<ClientOptions>,
    tune: Tuning,
    cmd_rx: mpsc::Receiver<Command>,
    cmd_weak: mpsc::WeakSender<Command>,
    drop_rx: mpsc::UnboundedReceiver<Dropped>,
    shared: Arc<Shared>,
    rng: StdRng,
    next_id: u64,
    online: bool,
    /// The gateway refused the compact subprotocol once: connect with JSON from now on.
    compact_refused: bool,
    closing: bool,
    close_waiters: Vec<oneshot::Sender<()>>,
    outbox: Vec<String>,
    // Durable subscriptions.
    sinks: HashMap<SinkId, SinkEntry>,
    rooms: HashMap<Arc<str>, RoomTrack>,
    /// `scope` of each `scope:*` subscription → its sink.
    patterns: HashMap<String, SinkId>,
    wild_rooms: usize,
    confirms: Vec<Confirm>,
    blocked: HashSet<Arc<str>>,
    timed: HashSet<Arc<str>>,
    resubscribe: HashMap<Arc<str>, Instant>,
    // Ephemeral and presence.
    ephemeral: HashMap<u64, EphemeralSink>,
    presence: HashMap<String, PresenceRoom>,
    // Requests.
    pending: HashMap<String, Pending>,
    queue: VecDeque<Queued>,
    in_flight: usize,
    // Acks.
    acked: HashMap<String, u64>,
    ack_due: Option<Instant>,
}

impl Driver {
    pub(crate) fn new(
        url: String,
        opts: Arc<ClientOptions>,
        cmd_rx: mpsc::Receiver<Command>,
        cmd_weak: mpsc::WeakSender<Command>,
        drop_rx: mpsc::UnboundedReceiver<Dropped>,
        shared: Arc<Shared>,
    ) -> Self {
        let tune = Tuning {
            throttle: opts.replay_throttle,
            page_size: opts.replay_page_size,
            request_timeout: opts.request_timeout,
            max_buffer: opts.max_buffered_events_per_room,
        };
        Self {
            url,
            opts,
            tune,
            cmd_rx,
            cmd_weak,
            drop_rx,
            shared,
            rng: StdRng::from_os_rng(),
            next_id: 0,
            online: false,
            compact_refused: false,
            closing: false,
            close_waiters: Vec::new(),
            outbox: Vec::new(),
            sinks: HashMap::new(),
            rooms: HashMap::new(),
            patterns: HashMap::new(),
            wild_rooms: 0,
            confirms: Vec::new(),
            blocked: HashSet::new(),
            timed: HashSet::new(),
            resubscribe: HashMap::new(),
            ephemeral: HashMap::new(),
            presence: HashMap::new(),
            pending: HashMap::new(),
            queue: VecDeque::new(),
            in_flight: 0,
            acked: HashMap::new(),
            ack_due: None,
        }
    }

    /// Runs until closed or a fatal error.
    pub(crate) async fn run(mut self) {
        let mut failures: u32 = 0;
        let mut auth_streak: u32 = 0;
        let reason = loop {
            if self.closing {
                break None;
            }
            self.shared.set_state(ConnectionState::Connecting);
            let end = self.session().await;
            self.on_disconnect();
            let (error, auth, ready) = match end {
                End::Closed => break None,
                End::Lost { error, auth, ready } => (error, auth, ready),
            };
            tracing::debug!(error = %error, ready, "zps-client connection lost");
            self.shared.report(error.clone());
            if ready {
                failures = 0;
            }
            if auth {
                auth_streak = if ready { 1 } else { auth_streak + 1 };
                // Without a provider the same token fails again; with one, a second refusal
                // in a row means the provider cannot help either.
                if self.opts.token_provider.is_none() || auth_streak >= 2 {
                    break Some(ClientError::Unauthorized(error.to_string()));
                }
            } else if ready {
                auth_streak = 0;
            }
            failures += 1;
            if !self.opts.reconnect.allows(failures) {
                break Some(ClientError::ReconnectExhausted {
                    attempts: failures,
                    last: error.to_string(),
                });
            }
            let delay = self.opts.reconnect.delay(failures - 1, &mut self.rng);
            self.shared.set_state(ConnectionState::Reconnecting {
                attempt: failures,
                delay,
            });
            if self.offline(tokio::time::sleep(delay)).await.is_none() {
                break None;
            }
        };
        self.finish(reason);
    }

    /// One connection: token, connect, `init`, then serve until it ends.
    async fn session(&mut self) -> End {
        let token = match self.opts.token_provider.clone() {
            Some(provider) => match self
                .offline(tokio::time::timeout(self.opts.connect_timeout, provider()))
                .await
            {
                None => return End::Closed,
                Some(Ok(Ok(t))) => Some(t),
                Some(Err(_)) => {
                    return End::Lost {
                        error: ClientError::Token("the token provider did not answer in time".into()),
                        auth: false,
                        ready: false,
                    };
                }
                Some(Ok(Err(e))) => {
                    return End::Lost {
                        error: ClientError::Token(e),
                        auth: false,
                        ready: false,
                    };
                }
            },
            None => self.opts.token.clone(),
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(self.opts.max_message_bytes))
            .max_frame_size(Some(self.opts.max_message_bytes));
        let request = match self.upgrade_request() {
            Ok(r) => r,
            Err(e) => {
                return End::Lost {
                    error: e,
                    auth: false,
                    ready: false,
                };
            }
        };
        let connect = tokio::time::timeout(
            self.opts.connect_timeout,
            tokio_tungstenite::connect_async_with_config(request, Some(config), true),
        );
        let lost = |error| End::Lost {
            error,
            auth: false,
            ready: false,
        };
        let mut ws = match self.offline(connect).await {
            None => return End::Closed,
            Some(Err(_)) => return lost(ClientError::Transport("connect timed out".into())),
            Some(Ok(Err(tokio_tungstenite::tungstenite::Error::Protocol(
                tokio_tungstenite::tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(e),
            )))) if self.opts.encoding == Encoding::Compact && !self.compact_refused => {
                // A gateway without the compact encoding: JSON carries the same guarantees.
                tracing::debug!(error = %e, "compact encoding not offered; using JSON");
                self.compact_refused = true;
                return lost(ClientError::Transport(format!(
                    "compact subprotocol refused: {e}"
                )));
            }
            Some(Ok(Err(e))) => return lost(ClientError::Transport(e.to_string())),
            Some(Ok(Ok((ws, _response)))) => ws,
        };
        let init = ClientMessage::Init(Init {
            subscriber_id: self.opts.subscriber_id.clone(),
            token,
        });
        if let Some(text) = to_frame(&init)
            && let Err(e) = ws.send(Message::Text(text.into())).await
        {
            return lost(ClientError::Transport(e.to_string()));
        }
        self.serve(&mut ws).await
    }

    async fn serve(&mut self, ws: &mut Ws) -> End {
        let now = Instant::now();
        let mut conn = Conn {
            ready: false,
            last_frame: now,
            idle: self.opts.request_timeout,
            handshake_deadline: now + self.opts.request_timeout,
            auth_error: false,
        };
        loop {
            let deadline = if conn.ready {
                self.next_deadline().min(conn.last_frame + conn.idle)
            } else {
                conn.handshake_deadline
            };
            tokio::select! {
                msg = ws.next() => {
                    let now = Instant::now();
                    match msg {
                        Some(Ok(Message::Text(text))) => {
                            conn.last_frame = now;
                            self.on_text(text.as_str(), &mut conn, now);
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((1005, String::new()));
                            return End::Lost {
                                auth: code == 4401 || conn.auth_error,
                                error: ClientError::ConnectionClosed { code, reason },
                                ready: conn.ready,
                            };
                        }
                        Some(Ok(Message::Binary(bytes))) => {
                            conn.last_frame = now;
                            self.on_binary(&bytes, &conn, now);
                        }
                        Some(Ok(_)) => conn.last_frame = now,
                        Some(Err(e)) => {
                            return End::Lost {
                                error: ClientError::Transport(e.to_string()),
                                auth: conn.auth_error,
                                ready: conn.ready,
                            };
                        }
                        None => {
                            return End::Lost {
                                error: ClientError::Transport("connection closed".into()),
                                auth: conn.auth_error,
                                ready: conn.ready,
                            };
                        }
                    }
                }
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(c) => self.on_command(c),
                    None => self.closing = true,
                },
                Some(d) = self.drop_rx.recv() => self.on_dropped(d),
                () = self.shared.wake.notified() => self.on_wake(Instant::now()),
                () = sleep_until(deadline) => {
                    let now = Instant::now();
                    if !conn.ready {
                        return End::Lost {
                            error: ClientError::Timeout(self.opts.request_timeout),
                            auth: conn.auth_error,
                            ready: false,
                        };
                    }
                    if now >= conn.last_frame + conn.idle {
                        return End::Lost {
                            error: ClientError::Transport(format!("server silent for {:?}", conn.idle)),
                            auth: false,
                            ready: true,
                        };
                    }
                    self.on_timers(now);
                }
            }
            if self.closing {
                self.graceful_close(ws).await;
                return End::Closed;
            }
            if let Err(e) = self.flush(ws).await {
                return End::Lost {
                    error: ClientError::Transport(e.to_string()),
                    auth: false,
                    ready: conn.ready,
                };
            }
        }
    }

    /// Waits for `fut` while answering commands (nothing is sent meanwhile).
    async fn offline<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(c) => self.on_command(c),
                    None => self.closing = true,
                },
                Some(d) = self.drop_rx.recv() => self.on_dropped(d),
                () = self.shared.wake.notified() => self.on_wake(Instant::now()),
            }
            self.outbox.clear();
            if self.closing {
                return None;
            }
        }
    }

    async fn flush(&mut self, ws: &mut Ws) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        for frame in self.outbox.drain(..) {
            ws.feed(Message::Text(frame.into())).await?;
        }
        ws.flush().await
    }

    async fn graceful_close(&mut self, ws: &mut Ws) {
        if self.online {
            self.flush_acks();
        }
        let _ = tokio::time::timeout(CLOSE_BUDGET, async {
            if self.flush(ws).await.is_err() {
                return;
            }
            let frame = CloseFrame {
                code: WsCloseCode::Normal,
                reason: "client closing".into(),
            };
            if ws.close(Some(frame)).await.is_err() {
                return;
            }
            // Read until the server's close answer so the close handshake completes.
            while let Some(Ok(msg)) = ws.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }

    fn finish(&mut self, reason: Option<ClientError>) {
        self.online = false;
        self.cmd_rx.close();
        for (_, p) in self.pending.drain() {
            p.reply.fail(ClientError::Closed);
        }
        self.queue.clear();
        for c in self.confirms.drain(..) {
            let _ = c.reply.send(Err(ClientError::Closed));
        }
        for (_, p) in self.presence.drain() {
            for w in p.enter_waiters.into_iter().chain(p.watch_waiters) {
                let _ = w.send(Err(ClientError::Closed));
            }
            for w in p.leave_waiters {
                let _ = w.send(Err(ClientError::Closed));
            }
        }
        // Dropping the senders ends every stream once it has been read out.
        self.rooms.clear();
        self.sinks.clear();
        self.ephemeral.clear();
        if let Some(e) = &reason {
            self.shared.report(e.clone());
        }
        self.shared.set_state(ConnectionState::Closed { reason });
        for w in self.close_waiters.drain(..) {
            let _ = w.send(());
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    // ---- connection lifecycle -------------------------------------------------

    fn on_ready(&mut self, ready: &zps_protocol::Ready, conn: &mut Conn, now: Instant) {
        conn.ready = true;
        conn.idle = self.opts.idle_timeout.unwrap_or_else(|| {
            ready
                .heartbeat_interval_ms
                .map_or(Duration::from_secs(60), |ms| Duration::from_millis(ms) * 2)
                + IDLE_SLACK
        });
        self.online = true;
        self.shared.set_state(ConnectionState::Connected);
        tracing::debug!(connection = ?ready.connection_id, "zps-client ready");
        // Durable subscriptions, each exact room from its last delivered event.
        let mut targets: Vec<String> = self
            .rooms
            .values()
            .filter(|t| !t.via_wildcard)
            .map(|t| t.room.to_string())
            .collect();
        targets.extend(self.patterns.keys().map(|s| format!("{s}:*")));
        self.send_subscribe(&targets);
        // Ephemeral subscriptions.
        let mut eph: Vec<String> = self.ephemeral.values().map(|e| e.pattern.to_string()).collect();
        eph.sort();
        eph.dedup();
        for chunk in eph.chunks(TARGETS_PER_FRAME) {
            self.push(&ClientMessage::SubscribeEphemeral(SubscribeEphemeral {
                room: None,
                rooms: Some(chunk.to_vec()),
                event_types: None,
            }));
        }
        // Presence: re-enter, re-watch.
        let rooms: Vec<String> = self.presence.keys().cloned().collect();
        for room in rooms {
            self.send_presence_restore(&room);
        }
        self.resubscribe.clear();
        self.pump();
        if self.shared.has_acks() {
            self.ack_due = Some(now);
        }
    }

    fn on_disconnect(&mut self) {
        self.online = false;
        self.outbox.clear();
        for t in self.rooms.values_mut() {
            t.on_disconnect();
        }
        self.timed.clear();
        self.resubscribe.clear();
        for p in self.presence.values_mut() {
            p.slots.clear();
            // The server dropped this connection's presence with it.
            for w in p.leave_waiters.drain(..) {
                let _ = w.send(Ok(()));
            }
        }
        self.presence.retain(|_, p| !p.is_idle());
        // Requests without an answer go out again, in their original order; a publish
        // carries its event id, so a re-send is stored once.
        let mut resend: Vec<(u64, String)> = self
            .pending
            .iter_mut()
            .filter(|(_, p)| p.sent)
            .map(|(id, p)| {
                p.sent = false;
                (p.order, id.clone())
            })
            .collect();
        resend.sort_unstable();
        for (_, id) in resend.into_iter().rev() {
            self.queue.push_front(Queued {
                id: Some(id),
                frame: String::new(),
            });
        }
        self.in_flight = 0;
    }

    // ---- commands ------------------------------------------------------------------

    fn on_command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Subscribe {
                sink,
                targets,
                start,
                positions,
                reply,
            } => self.subscribe(sink, targets, &start, &positions, reply, now),
            Command::Unsubscribe { sink, reply } => {
                self.remove_sink(sink);
                let _ = reply.send(());
            }
            Command::Request { req, reply } => self.request(req, reply),
            Command::EphemeralSubscribe {
                id,
                pattern,
                types,
                tx,
            } => {
                let fresh = !self.ephemeral.values().any(|e| e.pattern == pattern);
                if fresh && self.online {
                    self.push(&ClientMessage::SubscribeEphemeral(SubscribeEphemeral {
                        room: Some(pattern.to_string()),
                        rooms: None,
                        event_types: None,
                    }));
                }
                self.ephemeral.insert(id, EphemeralSink { pattern, types, tx });
            }
            Command::PresenceEnter {
                room,
                metadata,
                reply,
            } => {
                let p = self.presence.entry(room.clone()).or_default();
                p.entered = Some(metadata.clone());
                p.enter_waiters.push(reply);
                if self.online {
                    p.slots.push_back(Slot::Enter);
                    self.push(&ClientMessage::PresenceEnter(PresenceEnter { room, metadata }));
                }
            }
            Command::PresenceLeave { room, reply } => {
                let online = self.online;
                let p = self.presence.entry(room.clone()).or_default();
                p.entered = None;
                if online {
                    p.slots.push_back(Slot::Leave);
                    p.leave_waiters.push(reply);
                    self.push(&ClientMessage::PresenceLeave(RoomRef {
                        room,
                        request_id: None,
                    }));
                } else {
                    // Offline: the server already forgot this connection's presence.
                    let _ = reply.send(Ok(()));
                }
            }
            Command::PresenceWatch { id, room, tx, reply } => {
                let online = self.online;
                let p = self.presence.entry(room.clone()).or_default();
                p.watchers.push((id, tx));
                p.watch_waiters.push(reply);
                if online {
                    p.slots.push_back(Slot::Watch);
                    self.push(&ClientMessage::PresenceSubscribe(RoomRef {
                        room,
                        request_id: None,
                    }));
                }
            }
            Command::RefreshToken(token) => {
                if self.online {
                    self.push(&ClientMessage::RefreshToken(RefreshToken { token }));
                }
            }
            Command::Positions(reply) => {
                let map = self
                    .rooms
                    .iter()
                    .map(|(room, t)| (room.to_string(), t.position()))
                    .collect();
                let _ = reply.send(map);
            }
            Command::Close(reply) => {
                self.closing = true;
                self.close_waiters.push(reply);
            }
        }
    }

    fn subscribe(
        &mut self,
        sink: Sink,
        targets: Vec<String>,
        start: &StartAt,
        positions: &HashMap<String, StartAt>,
        reply: oneshot::Sender<Result<(), ClientError>>,
        now: Instant,
    ) {
        // Targets were validated by the handle; sort them into rooms and scopes.
        let mut exact: Vec<Arc<str>> = Vec::new();
        let mut scopes: Vec<String> = Vec::new();
        for t in &targets {
            match RoomPattern::parse(t) {
                Ok(RoomPattern::Exact(_)) => {
                    let taken = self.rooms.get(t.as_str()).is_some_and(|r| !r.via_wildcard);
                    if taken || exact.iter().any(|r| **r == **t) {
                        let _ = reply.send(Err(ClientError::AlreadySubscribed(t.clone())));
                        return;
                    }
                    exact.push(Arc::from(t.as_str()));
                }
                Ok(RoomPattern::Scope(scope)) => {
                    if self.patterns.contains_key(&*scope) || scopes.iter().any(|s| **s == *scope) {
                        let _ = reply.send(Err(ClientError::AlreadySubscribed(t.clone())));
                        return;
                    }
                    scopes.push(scope.to_string());
                }
                Err(e) => {
                    let _ = reply.send(Err(ClientError::InvalidRoom {
                        room: t.clone(),
                        reason: e.to_string(),
                    }));
                    return;
                }
            }
        }
        for room in &exact {
            if let Some(old) = self.rooms.remove(room)
                && old.via_wildcard
            {
                // An exact subscription takes the room over from a wildcard one.
                self.wild_rooms = self.wild_rooms.saturating_sub(1);
            }
            let s = positions.get(&**room).unwrap_or(start);
            let track = RoomTrack::exact(room.clone(), sink.clone(), s, &self.tune, now);
            self.rooms.insert(room.clone(), track);
        }
        for scope in &scopes {
            self.patterns.insert(scope.clone(), sink.id);
        }
        self.sinks.insert(
            sink.id,
            SinkEntry {
                sink: sink.clone(),
                exact,
                scopes,
            },
        );
        self.confirms.push(Confirm {
            sink: sink.id,
            waiting: targets.iter().cloned().collect(),
            reply,
        });
        if self.online {
            self.send_subscribe(&targets);
        }
    }

    /// Sends `subscribe` frames for these targets, each exact room with its position.
    fn send_subscribe(&mut self, targets: &[String]) {
        for chunk in targets.chunks(TARGETS_PER_FRAME) {
            let mut positions = HashMap::new();
            let mut epochs = HashMap::new();
            for t in chunk {
                if let Some(track) = self.rooms.get_mut(t.as_str())
                    && !track.via_wildcard
                {
                    track.confirmed = false;
                    track.sent_position = None;
                    if let Some((seq, epoch)) = track.resume_position() {
                        positions.insert(t.clone(), seq);
                        if let Some(e) = epoch {
                            epochs.insert(t.clone(), e.to_owned());
                        }
                        track.sent_position = Some(seq);
                    }
                }
            }
            self.push(&ClientMessage::Subscribe(Subscribe {
                rooms: Some(chunk.to_vec()),
                positions: (!positions.is_empty()).then_some(positions),
                epochs: (!epochs.is_empty()).then_some(epochs),
                ..Default::default()
            }));
        }
    }

    fn remove_sink(&mut self, id: SinkId) {
        let Some(entry) = self.sinks.remove(&id) else {
            return;
        };
        // The application's last position is not lost with the subscription.
        self.flush_acks();
        let mut targets: Vec<String> = Vec::new();
        for room in &entry.exact {
            if self.rooms.remove(room).is_some() {
                targets.push(room.to_string());
            }
            self.acked.remove(&**room);
            self.blocked.remove(room);
            self.timed.remove(room);
            self.resubscribe.remove(room);
        }
        for scope in &entry.scopes {
            self.patterns.remove(scope);
            targets.push(format!("{scope}:*"));
        }
        if !entry.scopes.is_empty() {
            let before = self.rooms.len();
            let gone: Vec<Arc<str>> = self
                .rooms
                .iter()
                .filter(|(_, t)| t.via_wildcard && t.sink.id == id)
                .map(|(r, _)| r.clone())
                .collect();
            for r in &gone {
                self.rooms.remove(r);
                self.blocked.remove(r);
                self.timed.remove(r);
                self.acked.remove(&**r);
            }
            self.wild_rooms = self.wild_rooms.saturating_sub(before - self.rooms.len());
        }
        self.confirms.retain(|c| c.sink != id);
        self.refresh_blocked_flag();
        if self.online && !targets.is_empty() {
            for chunk in targets.chunks(TARGETS_PER_FRAME) {
                self.push(&ClientMessage::Unsubscribe(Unsubscribe {
                    room: None,
                    rooms: Some(chunk.to_vec()),
                }));
            }
        }
        drop(entry.sink);
    }

    /// Drops one room of a subscription (refused by the server after a reconnect).
    fn drop_room(&mut self, room: &str) {
        let Some(track) = self.rooms.remove(room) else {
            return;
        };
        if let Some(entry) = self.sinks.get_mut(&track.sink.id) {
            entry.exact.retain(|r| &**r != room);
        }
        self.blocked.remove(room);
        self.timed.remove(room);
        self.resubscribe.remove(room);
    }

    fn on_dropped(&mut self, d: Dropped) {
        match d {
            Dropped::Sink(id) => self.remove_sink(id),
            Dropped::Ephemeral(id) => {
                if let Some(e) = self.ephemeral.remove(&id)
                    && self.online
                    && !self.ephemeral.values().any(|o| o.pattern == e.pattern)
                {
                    self.push(&ClientMessage::UnsubscribeEphemeral(Unsubscribe {
                        room: Some(e.pattern.to_string()),
                        rooms: None,
                    }));
                }
            }
            Dropped::Presence { id, room } => {
                if let Some(p) = self.presence.get_mut(&room) {
                    p.watchers.retain(|(w, _)| *w != id);
                    if p.is_idle() && p.slots.is_empty() {
                        self.presence.remove(&room);
                    }
                }
            }
        }
    }

    fn request(&mut self, req: Outgoing, reply: Reply) {
        let n = self.next_id();
        let id = format!("c{n}");
        let msg = match req {
            Outgoing::Publish(mut p) => {
                p.request_id = Some(id.clone());
                ClientMessage::Publish(p)
            }
            Outgoing::Snapshot(room) => ClientMessage::SnapshotRequest(RoomRef {
                room,
                request_id: Some(id.clone()),
            }),
            Outgoing::Ping => ClientMessage::Ping(zps_protocol::Ping {
                id: Some(serde_json::Value::String(id.clone())),
            }),
            Outgoing::Ephemeral(mut e) => {
                e.request_id = Some(id.clone());
                ClientMessage::PublishEphemeral(e)
            }
        };
        let Some(frame) = to_frame(&msg) else {
            reply.fail(ClientError::Payload("message could not be serialized".into()));
            return;
        };
        if self.online && self.in_flight >= self.opts.max_in_flight {
            self.sweep_abandoned();
        }
        let can_send = self.online && self.queue.is_empty() && self.in_flight < self.opts.max_in_flight;
        if let Reply::Accepted(tx) = reply {
            if can_send {
                self.outbox.push(frame);
            } else if self.queue.len() < self.opts.max_queued_messages {
                self.queue.push_back(Queued { id: None, frame });
            } else {
                let _ = tx.send(Err(ClientError::QueueFull {
                    limit: self.opts.max_queued_messages,
                }));
                return;
            }
            let _ = tx.send(Ok(()));
            return;
        }
        if !can_send && self.queue.len() >= self.opts.max_queued_messages {
            self.sweep_abandoned();
            if self.queue.len() >= self.opts.max_queued_messages {
                reply.fail(ClientError::QueueFull {
                    limit: self.opts.max_queued_messages,
                });
                return;
            }
        }
        if can_send {
            self.outbox.push(frame.clone());
            self.in_flight += 1;
        } else {
            self.queue.push_back(Queued {
                id: Some(id.clone()),
                frame: String::new(),
            });
        }
        self.pending.insert(
            id,
            Pending {
                order: n,
                frame,
                reply,
                sent: can_send,
            },
        );
    }

    /// Forgets requests whose callers gave up (timed out, dropped), queued or in flight,
    /// so an answer the server never sends (a rate-limited request) cannot hold the
    /// in-flight window forever.
    fn sweep_abandoned(&mut self) {
        let before = self.pending.len();
        let mut freed = 0;
        self.pending.retain(|_, p| {
            let keep = !p.reply.is_closed();
            if !keep && p.sent {
                freed += 1;
            }
            keep
        });
        self.in_flight = self.in_flight.saturating_sub(freed);
        if before == self.pending.len() {
            return;
        }
        let pending = &mut self.pending;
        self.queue.retain(|q| match &q.id {
            Some(id) => match pending.get(id) {
                Some(p) if p.reply.is_closed() => {
                    pending.remove(id);
                    false
                }
                Some(_) => true,
                None => false,
            },
            None => true,
        });
    }

    /// Sends queued requests while the in-flight window allows.
    fn pump(&mut self) {
        while self.online && self.in_flight < self.opts.max_in_flight {
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            match q.id {
                None => self.outbox.push(q.frame),
                Some(id) => match self.pending.get_mut(&id) {
                    Some(p) if !p.reply.is_closed() => {
                        p.sent = true;
                        self.in_flight += 1;
                        self.outbox.push(p.frame.clone());
                    }
                    Some(_) => {
                        self.pending.remove(&id);
                    }
                    None => {}
                },
            }
        }
    }

    fn take_pending(&mut self, id: &str) -> Option<Pending> {
        let p = self.pending.remove(id)?;
        if p.sent {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        Some(p)
    }

    // ---- server frames ---------------------------------------------------------------

    /// The upgrade request, offering the compact subprotocol when asked for.
    fn upgrade_request(
        &self,
    ) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::HeaderValue;
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if self.opts.encoding == Encoding::Compact && !self.compact_refused {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(zps_protocol::compact::COMPACT_SUBPROTOCOL),
            );
        }
        Ok(request)
    }

    /// A binary frame: a compact event.
    fn on_binary(&mut self, bytes: &[u8], conn: &Conn, now: Instant) {
        let decoded = zps_protocol::compact::EventView::decode(bytes).and_then(|v| v.to_envelope());
        match decoded {
            Ok(envelope) if conn.ready => self.on_event(Arc::new(envelope), now),
            Ok(_) => {}
            Err(e) => self
                .shared
                .report(ClientError::Protocol(zps_protocol::bounded(&e.to_string()))),
        }
    }

    fn on_text(&mut self, text: &str, conn: &mut Conn, now: Instant) {
        let msg = match parse_server(text) {
            Ok(m) => m,
            Err(e) => {
                self.shared
                    .report(ClientError::Protocol(zps_protocol::bounded(&e.to_string())));
                return;
            }
        };
        if !conn.ready {
            match msg {
                ServerMessage::Ready(r) => self.on_ready(&r, conn, now),
                ServerMessage::Error(e) => {
                    if e.error_code() == Some(ErrorCode::Unauthorized) {
                        conn.auth_error = true;
                    }
                    self.shared.report(ClientError::server(&e));
                }
                _ => {}
            }
            return;
        }
        match msg {
            ServerMessage::Event { data } => self.on_event(Arc::from(data), now),
            ServerMessage::Subscribed(s) => self.on_subscribed(&s, now),
            ServerMessage::Replay(r) => {
                let room = r.room.clone();
                if let Some(t) = self.rooms.get_mut(room.as_str())
                    && t.on_replay(r, now, &self.tune)
                {
                    self.after_room_op(&room);
                }
            }
            ServerMessage::Discontinuity(d) => {
                if let Some(t) = self.rooms.get_mut(d.room.as_str()) {
                    t.on_discontinuity(&d, now, &self.tune);
                    self.after_room_op(&d.room);
                }
            }
            ServerMessage::Published(p) => {
                if let Some(id) = &p.request_id
                    && let Some(pending) = self.take_pending(id)
                    && let Reply::Publish(tx) = pending.reply
                {
                    let _ = tx.send(Ok(Published {
                        id: p.id,
                        room: p.room,
                        sequence: p.sequence,
                        duplicate: p.duplicate,
                    }));
                }
                self.pump();
            }
            ServerMessage::Snapshot {
                snapshot, request_id, ..
            } => {
                if let Some(id) = &request_id
                    && let Some(pending) = self.take_pending(id)
                    && let Reply::Snapshot(tx) = pending.reply
                {
                    let _ = tx.send(Ok(snapshot.map(|s| *s)));
                }
                self.pump();
            }
            ServerMessage::Pong(p) => {
                if let Some(serde_json::Value::String(id)) = &p.id
                    && let Some(pending) = self.take_pending(id)
                    && let Reply::Ping(tx) = pending.reply
                {
                    let _ = tx.send(Ok(()));
                }
                self.pump();
            }
            ServerMessage::Error(e) => self.on_error(&e, now),
            ServerMessage::Ephemeral { data } => self.on_ephemeral(*data),
            ServerMessage::PresenceState { room, members } => self.on_presence_state(room, members),
            ServerMessage::Presence(n) => {
                let event = match n.action.as_str() {
                    "member_added" => PresenceEvent::Joined {
                        room: n.room.clone(),
                        user_id: n.user_id,
                        member: n.member,
                    },
                    "member_removed" => PresenceEvent::Left {
                        room: n.room.clone(),
                        user_id: n.user_id,
                    },
                    _ => return,
                };
                self.route_presence(&n.room, &event);
            }
            ServerMessage::TokenExpiring { expires_at } => {
                tracing::debug!(expires_at, "token expiring; refreshing");
                self.spawn_refresh();
            }
            ServerMessage::Ready(_)
            | ServerMessage::Ack(_)
            | ServerMessage::Unsubscribed { .. }
            | ServerMessage::SubscribedEphemeral { .. }
            | ServerMessage::TokenRefreshed { .. } => {}
        }
    }

    fn on_event(&mut self, env: Arc<Envelope>, now: Instant) {
        let key = env.room.as_str();
        if let Some(t) = self.rooms.get_mut(key) {
            if !t.confirmed {
                // From before this connection's `subscribed`: the catch-up re-sends it.
                return;
            }
            t.on_event(env.clone(), now, &self.tune);
            self.after_room_op(env.room.as_str());
            return;
        }
        let Some(&sink_id) = self.patterns.get(env.room.scope()) else {
            return;
        };
        let Some(entry) = self.sinks.get(&sink_id) else {
            return;
        };
        let sink = entry.sink.clone();
        if self.wild_rooms >= self.opts.max_wildcard_rooms {
            self.evict_wildcard_room();
        }
        let room: Arc<str> = Arc::from(key);
        let mut track = RoomTrack::wildcard(room.clone(), sink, &self.tune, now);
        track.on_event(env, now, &self.tune);
        self.rooms.insert(room.clone(), track);
        self.wild_rooms += 1;
        self.after_room_op(&room);
    }

    fn evict_wildcard_room(&mut self) {
        let oldest = self
            .rooms
            .iter()
            .filter(|(_, t)| t.via_wildcard)
            .min_by_key(|(_, t)| t.last_seen)
            .map(|(r, _)| r.clone());
        if let Some(r) = oldest {
            self.rooms.remove(&r);
            self.blocked.remove(&r);
            self.timed.remove(&r);
            self.acked.remove(&*r);
            self.wild_rooms = self.wild_rooms.saturating_sub(1);
        }
    }

    fn on_subscribed(&mut self, s: &zps_protocol::Subscribed, now: Instant) {
        if let Some(scope) = s.room.strip_suffix(":*") {
            if self.patterns.contains_key(scope) {
                self.confirm(&s.room);
            }
            return;
        }
        let Some(t) = self.rooms.get_mut(s.room.as_str()) else {
            return;
        };
        if t.via_wildcard {
            return;
        }
        t.on_subscribed(s, now, &self.tune);
        self.after_room_op(&s.room);
        self.confirm(&s.room);
    }

    fn confirm(&mut self, target: &str) {
        let mut i = 0;
        while i < self.confirms.len() {
            self.confirms[i].waiting.remove(target);
            if self.confirms[i].waiting.is_empty() {
                let c = self.confirms.swap_remove(i);
                let _ = c.reply.send(Ok(()));
            } else {
                i += 1;
            }
        }
    }

    fn on_error(&mut self, e: &zps_protocol::ErrorMessage, now: Instant) {
        let err = ClientError::server(e);
        self.shared.report(err.clone());
        if let Some(rid) = &e.request_id {
            if let Some(p) = self.take_pending(rid) {
                p.reply.fail(err);
                self.pump();
                return;
            }
            if let Some(room) = &e.room
                && let Some(t) = self.rooms.get_mut(room.as_str())
                && t.on_replay_error(rid, now, &self.tune)
            {
                self.after_room_op(room);
                return;
            }
        }
        let Some(room) = e.room.as_deref() else {
            return;
        };
        let code = e.error_code();
        let refused = matches!(
            code,
            Some(
                ErrorCode::AccessDenied
                    | ErrorCode::InvalidRoom
                    | ErrorCode::TooManySubscriptions
                    | ErrorCode::Forbidden
                    | ErrorCode::Unauthorized
                    | ErrorCode::Malformed
            )
        );
        let transient = matches!(code, Some(ErrorCode::Internal | ErrorCode::Unavailable));
        // A first subscribe that the server refused fails as a whole.
        if let Some(i) = self.confirms.iter().position(|c| c.waiting.contains(room))
            && (refused || transient)
        {
            let c = self.confirms.swap_remove(i);
            self.remove_sink(c.sink);
            let _ = c.reply.send(Err(err));
            return;
        }
        let key: Arc<str> = Arc::from(room);
        let subscribed = self.rooms.get(room).is_some_and(|t| !t.via_wildcard)
            || room
                .strip_suffix(":*")
                .is_some_and(|s| self.patterns.contains_key(s));
        if subscribed {
            let unconfirmed = self.rooms.get(room).is_some_and(|t| !t.confirmed);
            if transient {
                // Storage trouble while (re)subscribing or catching up: try again shortly.
                self.resubscribe.insert(key, now + RESUBSCRIBE_DELAY);
                return;
            }
            if refused && (unconfirmed || room.ends_with(":*")) {
                self.refuse_target(room, err, now);
                return;
            }
        }
        if let Some(p) = self.presence.get_mut(room)
            && (refused || transient)
            && let Some(slot) = p.slots.pop_front()
        {
            match slot {
                Slot::Enter => {
                    p.entered = None;
                    for w in p.enter_waiters.drain(..) {
                        let _ = w.send(Err(err.clone()));
                    }
                }
                Slot::Leave => {
                    for w in p.leave_waiters.drain(..) {
                        let _ = w.send(Err(err.clone()));
                    }
                }
                Slot::Watch => {
                    for w in p.watch_waiters.drain(..) {
                        let _ = w.send(Err(err.clone()));
                    }
                }
            }
        }
    }

    /// A resubscribe was refused: tell the subscription, stop tracking the target.
    fn refuse_target(&mut self, target: &str, error: ClientError, now: Instant) {
        let notice = ClientEvent::Refused {
            room: target.to_owned(),
            error,
        };
        if let Some(scope) = target.strip_suffix(":*") {
            if let Some(id) = self.patterns.remove(scope) {
                if let Some(entry) = self.sinks.get_mut(&id) {
                    entry.scopes.retain(|s| s != scope);
                    let _ = entry.sink.tx.try_send(notice);
                }
                let gone: Vec<Arc<str>> = self
                    .rooms
                    .iter()
                    .filter(|(r, t)| t.via_wildcard && t.sink.id == id && r.split(':').next() == Some(scope))
                    .map(|(r, _)| r.clone())
                    .collect();
                for r in gone {
                    self.drop_room(&r);
                    self.acked.remove(&*r);
                    self.wild_rooms = self.wild_rooms.saturating_sub(1);
                }
            }
            return;
        }
        if let Some(t) = self.rooms.get_mut(target) {
            t.push_notice(notice, now, &self.tune);
        }
        self.drop_room(target);
    }

    fn on_ephemeral(&mut self, data: zps_protocol::EphemeralData) {
        let Ok(room) = zps_core::Room::parse(&data.room) else {
            return;
        };
        let msg = EphemeralMessage {
            event_type: data.event_type,
            room: data.room,
            payload: data.payload,
            emitted_at: data.emitted_at,
            metadata: data.metadata,
        };
        for e in self.ephemeral.values() {
            let wanted = e.types.as_ref().is_none_or(|t| t.contains(&msg.event_type));
            if wanted && e.pattern.matches(&room) && e.tx.try_send(msg.clone()).is_err() {
                tracing::debug!(room = %msg.room, "ephemeral consumer full; event dropped");
            }
        }
    }

    fn on_presence_state(&mut self, room: String, members: Vec<PresenceMember>) {
        if let Some(p) = self.presence.get_mut(&room) {
            match p.slots.pop_front() {
                Some(Slot::Enter) => {
                    for w in p.enter_waiters.drain(..) {
                        let _ = w.send(Ok(members.clone()));
                    }
                }
                Some(Slot::Leave) => {
                    for w in p.leave_waiters.drain(..) {
                        let _ = w.send(Ok(()));
                    }
                }
                Some(Slot::Watch) => {
                    for w in p.watch_waiters.drain(..) {
                        let _ = w.send(Ok(members.clone()));
                    }
                }
                None => {}
            }
        }
        let event = PresenceEvent::Members {
            room: room.clone(),
            members,
        };
        self.route_presence(&room, &event);
        if let Some(p) = self.presence.get(&room)
            && p.is_idle()
            && p.slots.is_empty()
        {
            self.presence.remove(&room);
        }
    }

    fn route_presence(&mut self, room: &str, event: &PresenceEvent) {
        if let Some(p) = self.presence.get_mut(room) {
            p.watchers.retain(|(_, tx)| !tx.is_closed());
            for (_, tx) in &p.watchers {
                if tx.try_send(event.clone()).is_err() {
                    tracing::debug!(room, "presence consumer full; change dropped");
                }
            }
        }
    }

    fn send_presence_restore(&mut self, room: &str) {
        let Some(p) = self.presence.get_mut(room) else {
            return;
        };
        let msg = if let Some(metadata) = &p.entered {
            p.slots.push_back(Slot::Enter);
            ClientMessage::PresenceEnter(PresenceEnter {
                room: room.to_owned(),
                metadata: metadata.clone(),
            })
        } else if !p.watchers.is_empty() || !p.watch_waiters.is_empty() {
            p.slots.push_back(Slot::Watch);
            ClientMessage::PresenceSubscribe(RoomRef {
                room: room.to_owned(),
                request_id: None,
            })
        } else {
            return;
        };
        self.push(&msg);
        // Entering also watches: a pending watch is answered by the same state.
        if let Some(p) = self.presence.get_mut(room)
            && p.entered.is_some()
            && !p.watch_waiters.is_empty()
        {
            p.slots.push_back(Slot::Watch);
            self.push(&ClientMessage::PresenceSubscribe(RoomRef {
                room: room.to_owned(),
                request_id: None,
            }));
        }
    }

    fn spawn_refresh(&self) {
        let Some(provider) = self.opts.token_provider.clone() else {
            return;
        };
        let weak = self.cmd_weak.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            match provider().await {
                Ok(token) => {
                    if let Some(tx) = weak.upgrade() {
                        let _ = tx.send(Command::RefreshToken(token)).await;
                    }
                }
                Err(e) => shared.report(ClientError::Token(e)),
            }
        });
    }

    // ---- rooms, timers, acks ----------------------------------------------------------

    /// Bookkeeping after a room handled something: consumer gone, blocked, timers.
    fn after_room_op(&mut self, room: &str) {
        let Some(t) = self.rooms.get(room) else {
            return;
        };
        let key = t.room.clone();
        if t.closed {
            let id = t.sink.id;
            self.remove_sink(id);
            return;
        }
        if t.blocked {
            self.blocked.insert(key.clone());
        } else {
            self.blocked.remove(&key);
        }
        if t.wants_timer() {
            self.timed.insert(key);
        } else {
            self.timed.remove(&key);
        }
        self.refresh_blocked_flag();
    }

    fn refresh_blocked_flag(&self) {
        self.shared
            .any_blocked
            .store(!self.blocked.is_empty(), Ordering::SeqCst);
    }

    fn on_wake(&mut self, now: Instant) {
        if !self.blocked.is_empty() {
            let blocked: Vec<Arc<str>> = self.blocked.iter().cloned().collect();
            for room in blocked {
                if let Some(t) = self.rooms.get_mut(&room) {
                    t.drain(now, &self.tune);
                    self.after_room_op(&room);
                } else {
                    self.blocked.remove(&room);
                }
            }
            self.refresh_blocked_flag();
        }
        if self.shared.ack_signal() && self.ack_due.is_none() {
            self.ack_due = Some(now + self.opts.ack_interval);
        }
    }

    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut at = now + FAR;
        if let Some(d) = self.ack_due {
            at = at.min(d);
        }
        for room in &self.timed {
            if let Some(d) = self.rooms.get(room).and_then(|t| t.deadline(&self.tune)) {
                at = at.min(d);
            }
        }
        for d in self.resubscribe.values() {
            at = at.min(*d);
        }
        if !self.blocked.is_empty() {
            at = at.min(now + BLOCKED_RECHECK);
        }
        at
    }

    fn on_timers(&mut self, now: Instant) {
        if self.ack_due.is_some_and(|d| d <= now) {
            self.flush_acks();
        }
        if !self.blocked.is_empty() {
            self.on_wake(now);
        }
        let timed: Vec<Arc<str>> = self.timed.iter().cloned().collect();
        for room in timed {
            let Some(t) = self.rooms.get_mut(&room) else {
                self.timed.remove(&room);
                continue;
            };
            let next_id = &mut self.next_id;
            let req = t.poll_replay(now, &self.tune, || {
                *next_id += 1;
                format!("r{next_id}")
            });
            if !t.wants_timer() {
                self.timed.remove(&room);
            }
            if let Some(req) = req {
                self.push(&ClientMessage::ReplayRequest(req));
            }
        }
        let due: Vec<Arc<str>> = self
            .resubscribe
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(r, _)| r.clone())
            .collect();
        if !due.is_empty() {
            let targets: Vec<String> = due
                .iter()
                .filter(|r| {
                    self.rooms.get(&***r).is_some_and(|t| !t.via_wildcard)
                        || r.strip_suffix(":*")
                            .is_some_and(|s| self.patterns.contains_key(s))
                })
                .map(|r| r.to_string())
                .collect();
            for r in &due {
                self.resubscribe.remove(r);
            }
            if self.online && !targets.is_empty() {
                self.send_subscribe(&targets);
            }
        }
    }

    /// Sends one ack per room whose consumer moved since the last one.
    fn flush_acks(&mut self) {
        self.ack_due = None;
        let acks = self.shared.take_acks();
        if !self.online {
            self.shared.restore_acks(acks);
            return;
        }
        for (room, sequence) in acks {
            if self.acked.get(&room) == Some(&sequence) {
                continue;
            }
            self.push(&ClientMessage::Ack(Ack {
                room: room.clone(),
                sequence,
            }));
            self.acked.insert(room, sequence);
        }
    }

    fn push(&mut self, msg: &ClientMessage) {
        if !self.online {
            return;
        }
        if let Some(frame) = to_frame(msg) {
            self.outbox.push(frame);
        }
    }
}

fn to_frame(msg: &ClientMessage) -> Option<String> {
    match serde_json::to_string(msg) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "could not serialize a client message");
            None
        }
    }
}
