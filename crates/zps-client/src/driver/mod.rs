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
use zps_model::{Envelope, Metadata, PresenceMember, RoomPattern, Snapshot};
use zps_protocol::{
    Ack, ClientMessage, ErrorCode, Init, PresenceEnter, RefreshToken, RoomRef, ServerMessage, Subscribe,
    SubscribeEphemeral, Unsubscribe, parse_server,
};

use crate::error::ClientError;
use crate::handle_state::Shared;
use crate::options::{ClientOptions, Encoding, StartAt};
use crate::room::{RoomTrack, Sink, SinkId, Tuning};
use crate::types::{ClientEvent, ConnectionState, EphemeralMessage, PresenceEvent, Published, RoomPosition};

mod commands;
mod frames;
mod timers;

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
