//! The WebSocket endpoint: one task per connection that reads client
//! messages, writes answers and queued live frames in order, pings, and closes
//! with a documented code when the connection cannot continue.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use tokio::time::{Instant, sleep_until};
use zps_core::{PublishRequest, ReplayQuery, RoomPattern};
use zps_protocol::{Ack, ClientMessage, CloseCode, ErrorCode, Ping, Ready, ServerMessage, parse_client};

use crate::auth::{AuthAction, TokenError, unix_now};
use crate::conn::ConnShared;
use crate::frames::{ConnKind, Outbound, ReplayOut, control};
use crate::http::origin_allowed;
use crate::lane::{Pending, PublishLane};
use crate::pipe::{Disconnected, Pipe, WsWriter, close_frame};
use crate::session::{Failure, Refusal, Session};
use crate::shared::{ConnSlot, Shared};

/// How long before `exp` a `token_expiring` notice is sent.
const EXPIRY_NOTICE: Duration = Duration::from_secs(30);
/// Bytes of frames gathered before the socket is written (flushes write sooner).
const WRITE_BUFFER: usize = 64 * 1024;
/// Consecutive rate-limited windows before the connection is closed.
const MAX_FLOODED_WINDOWS: u32 = 3;

/// `GET /` and `GET /ws`: upgrade to a WebSocket.
pub(crate) async fn handler(
    State(gw): State<Arc<Shared>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&gw, &headers) {
        metrics::counter!("zps_gateway_rejected_connections_total", "reason" => "origin").increment(1);
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let limits = &gw.config.limits;
    let ws = ws
        // A small read buffer keeps an idle connection cheap. Writes are
        // buffered up to WRITE_BUFFER and go out on flush: a connection writes
        // everything queued with one system call (the buffer only grows while
        // a batch needs it, so an idle connection holds none).
        .read_buffer_size(4 * 1024)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(limits.max_socket_buffered_bytes.max(WRITE_BUFFER) + WRITE_BUFFER)
        .max_message_size(limits.max_frame_bytes())
        .max_frame_size(limits.max_frame_bytes());
    if gw.is_draining() {
        return ws.on_upgrade(|socket| refuse(socket, CloseCode::ServiceRestart, "gateway is draining"));
    }
    match gw.try_acquire() {
        Some(slot) => ws.on_upgrade(move |socket| run(socket, gw, slot)),
        None => ws.on_upgrade(|socket| refuse(socket, CloseCode::AtCapacity, "gateway at capacity")),
    }
}

/// Accepts, explains and closes (capacity, draining): a browser cannot read an HTTP status.
async fn refuse(mut socket: WebSocket, code: CloseCode, why: &str) {
    let msg = ServerMessage::error(ErrorCode::Unavailable, why).to_json();
    let _ = socket.send(Message::Text(msg.into())).await;
    let _ = socket.send(Message::Close(Some(close_frame(code)))).await;
}

struct RateWindow {
    started: Instant,
    count: u32,
    warned: bool,
    flooded_windows: u32,
}

enum Verdict {
    Allow,
    Drop { warn: bool },
    Close,
}

impl RateWindow {
    fn check(&mut self, max: u32, window: Duration) -> Verdict {
        let now = Instant::now();
        if now.duration_since(self.started) >= window {
            self.flooded_windows = if self.warned { self.flooded_windows + 1 } else { 0 };
            self.started = now;
            self.count = 0;
            self.warned = false;
        }
        self.count += 1;
        if self.count <= max {
            return Verdict::Allow;
        }
        metrics::counter!("zps_gateway_rate_limited_total").increment(1);
        if self.flooded_windows >= MAX_FLOODED_WINDOWS {
            return Verdict::Close;
        }
        let warn = !self.warned;
        self.warned = true;
        Verdict::Drop { warn }
    }
}

struct Conn {
    session: Session,
    pipe: Pipe<WsWriter>,
    initialized: bool,
    rate: RateWindow,
    last_seen: Instant,
    expiry_noticed: bool,
    /// Started by the first publish.
    lane: Option<PublishLane>,
}

/// Outcome of handling one inbound frame.
enum Next {
    Continue,
    Close(CloseCode),
}

async fn run(socket: WebSocket, gw: Arc<Shared>, slot: ConnSlot) {
    let id = gw.next_conn_id();
    let key: Arc<str> = Arc::from(format!("{}-{id}", gw.node_id));
    let (conn_shared, rx) =
        ConnShared::new(id, key, ConnKind::Ws, gw.config.limits.max_socket_buffered_bytes);
    let (sink, mut stream) = socket.split();
    let mut conn = Conn {
        session: Session::new(gw.clone(), conn_shared.clone()),
        pipe: Pipe {
            writer: WsWriter {
                sink,
                stall: gw.config.limits.heartbeat_interval + gw.config.limits.heartbeat_timeout,
            },
            rx,
            conn: conn_shared.clone(),
        },
        initialized: false,
        rate: RateWindow {
            started: Instant::now(),
            count: 0,
            warned: false,
            flooded_windows: 0,
        },
        last_seen: Instant::now(),
        expiry_noticed: false,
        lane: None,
    };
    metrics::counter!("zps_gateway_connections_opened_total", "transport" => "ws").increment(1);
    let limits = gw.config.limits.clone();
    let init_deadline = Instant::now() + limits.init_timeout;
    let mut heartbeat = tokio::time::interval_at(
        Instant::now() + limits.heartbeat_interval,
        limits.heartbeat_interval,
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let presence_every = (gw.engine.config().presence_ttl / 3).max(Duration::from_millis(50));
    let mut presence_tick = tokio::time::interval_at(Instant::now() + presence_every, presence_every);
    let drain = gw.drain.clone();

    let close = loop {
        let expiry = conn.token_deadline();
        let outcome: Result<Next, Disconnected> = tokio::select! {
            biased;
            () = drain.cancelled() => Ok(Next::Close(CloseCode::ServiceRestart)),
            code = conn_shared.killed() => Ok(Next::Close(code)),
            out = conn.pipe.rx.recv() => match out {
                // A peer that stopped reading blocks this write; being killed wins.
                Some(out) => tokio::select! {
                    r = Box::pin(conn.pipe.forward(out)) => r.map(|c| c.map_or(Next::Continue, Next::Close)),
                    code = conn_shared.killed() => Ok(Next::Close(code)),
                },
                None => Ok(Next::Close(CloseCode::InternalError)),
            },
            // Handlers are boxed: their state exists only while they run, which keeps
            // an idle connection's task small.
            () = conn_shared.resync_needed() => match Box::pin(conn.session.resync(&mut conn.pipe)).await {
                Ok(()) => Ok(Next::Continue),
                Err(Failure::Disconnected) => Err(Disconnected),
                Err(Failure::Refused(r)) => conn.reply(r.to_message()).await.map(|()| Next::Continue),
            },
            msg = stream.next() => Box::pin(conn.inbound(msg)).await,
            _ = heartbeat.tick() => Box::pin(conn.heartbeat(&limits)).await,
            () = sleep_until(init_deadline), if !conn.initialized => {
                Box::pin(conn.refuse(ErrorCode::Unauthorized, "init timeout: send init first")).await
                    .map(|()| Next::Close(CloseCode::Unauthorized))
            }
            () = sleep_until(expiry.unwrap_or(init_deadline)), if expiry.is_some() => Box::pin(conn.token_timer()).await,
            _ = presence_tick.tick(), if !conn.session.entered.is_empty() => {
                Box::pin(conn.session.presence_refresh()).await;
                Ok(Next::Continue)
            }
        };
        match outcome {
            Ok(Next::Continue) => {}
            Ok(Next::Close(code)) => break Some(code),
            Err(Disconnected) => break None,
        }
    };
    if let Some(code) = close {
        Box::pin(close_politely(&mut conn, &mut stream, code)).await;
    }
    Box::pin(conn.session.cleanup()).await;
    drop(slot);
}

/// Sends the close frame and completes the close handshake (bounded).
async fn close_politely(
    conn: &mut Conn,
    stream: &mut futures::stream::SplitStream<WebSocket>,
    code: CloseCode,
) {
    metrics::counter!("zps_gateway_closes_total", "code" => code.code().to_string()).increment(1);
    // A slow consumer is not read from: do not wait for its socket.
    let budget = Duration::from_millis(if code == CloseCode::SlowConsumer {
        50
    } else {
        1_000
    });
    let sent = tokio::time::timeout(budget, async {
        conn.pipe.write(Outbound::Close(code)).await?;
        conn.pipe.flush().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) && code != CloseCode::SlowConsumer {
        // Close handshake: read (and discard) until the peer's close, so unread
        // input does not turn our close into a TCP reset the peer never sees.
        let started = Instant::now();
        let _ = tokio::time::timeout(budget, async {
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
        if code == CloseCode::TooBig {
            // The rest of the oversized frame cannot be read; give the peer time
            // to read our close before the socket drops.
            tokio::time::sleep(
                budget
                    .saturating_sub(started.elapsed())
                    .min(Duration::from_millis(500)),
            )
            .await;
        }
    }
}

impl Conn {
    async fn reply(&mut self, msg: ServerMessage) -> Result<(), Disconnected> {
        self.pipe.write(control(ConnKind::Ws, &msg)).await?;
        self.pipe.flush().await
    }

    async fn refuse(&mut self, code: ErrorCode, message: &str) -> Result<(), Disconnected> {
        self.reply(Refusal::new(code, message).to_message()).await
    }

    fn token_deadline(&self) -> Option<Instant> {
        let exp = self.session.identity.expires_at?;
        let now = unix_now();
        let target = if self.expiry_noticed {
            exp
        } else {
            exp.saturating_sub(EXPIRY_NOTICE.as_secs())
        };
        Some(Instant::now() + Duration::from_secs(target.saturating_sub(now)))
    }

    async fn token_timer(&mut self) -> Result<Next, Disconnected> {
        let Some(exp) = self.session.identity.expires_at else {
            return Ok(Next::Continue);
        };
        if unix_now() >= exp {
            self.refuse(ErrorCode::Unauthorized, "token expired").await?;
            return Ok(Next::Close(CloseCode::Unauthorized));
        }
        if !self.expiry_noticed {
            self.expiry_noticed = true;
            self.reply(ServerMessage::TokenExpiring { expires_at: exp })
                .await?;
        }
        Ok(Next::Continue)
    }

    async fn heartbeat(&mut self, limits: &crate::Limits) -> Result<Next, Disconnected> {
        if self.last_seen.elapsed() > limits.heartbeat_interval + limits.heartbeat_timeout {
            metrics::counter!("zps_gateway_heartbeat_timeouts_total").increment(1);
            return Ok(Next::Close(CloseCode::HeartbeatTimeout));
        }
        let stall = self.pipe.writer.stall;
        match tokio::time::timeout(
            stall,
            self.pipe.writer.sink.send(Message::Ping(Default::default())),
        )
        .await
        {
            Ok(Ok(())) => Ok(Next::Continue),
            _ => Err(Disconnected),
        }
    }

    async fn inbound(&mut self, msg: Option<Result<Message, axum::Error>>) -> Result<Next, Disconnected> {
        let msg = match msg {
            None => return Err(Disconnected),
            Some(Err(e)) => {
                let text = e.to_string();
                if text.contains("Space limit exceeded") || text.contains("too long") {
                    let limit = self.session.gw.config.limits.max_frame_bytes();
                    let _ = self
                        .refuse(
                            ErrorCode::PayloadTooLarge,
                            &format!("frame larger than {limit} bytes"),
                        )
                        .await;
                    return Ok(Next::Close(CloseCode::TooBig));
                }
                tracing::debug!(error = %text, "websocket read failed");
                return Err(Disconnected);
            }
            Some(Ok(m)) => m,
        };
        self.last_seen = Instant::now();
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                if let Some(next) = self.rate_limit().await? {
                    return Ok(next);
                }
                self.refuse(
                    ErrorCode::Malformed,
                    "binary frames are not supported; send JSON text",
                )
                .await?;
                return Ok(Next::Continue);
            }
            Message::Ping(_) | Message::Pong(_) => return Ok(Next::Continue),
            Message::Close(_) => return Err(Disconnected),
        };
        if let Some(next) = self.rate_limit().await? {
            return Ok(next);
        }
        crate::hot::hot().messages_received.increment(1);
        let parsed = match parse_client(text.as_str()) {
            Ok(m) => m,
            Err(e) => {
                self.refuse(ErrorCode::Malformed, &e).await?;
                return Ok(Next::Continue);
            }
        };
        self.dispatch(parsed).await
    }

    async fn rate_limit(&mut self) -> Result<Option<Next>, Disconnected> {
        let limits = &self.session.gw.config.limits;
        match self
            .rate
            .check(limits.max_messages_per_window, limits.rate_limit_window)
        {
            Verdict::Allow => Ok(None),
            Verdict::Drop { warn } => {
                if warn {
                    let window = limits.rate_limit_window.as_millis();
                    let max = limits.max_messages_per_window;
                    self.refuse(
                        ErrorCode::RateLimited,
                        &format!("rate limited: at most {max} messages per {window} ms"),
                    )
                    .await?;
                }
                Ok(Some(Next::Continue))
            }
            Verdict::Close => {
                self.refuse(ErrorCode::RateLimited, "rate limit exceeded repeatedly")
                    .await?;
                Ok(Some(Next::Close(CloseCode::RateLimited)))
            }
        }
    }

    async fn dispatch(&mut self, msg: ClientMessage) -> Result<Next, Disconnected> {
        if !self.initialized {
            return match msg {
                ClientMessage::Init(init) => self.init(init).await,
                _ => {
                    self.refuse(
                        ErrorCode::Unauthorized,
                        "not initialised: the first message must be init",
                    )
                    .await?;
                    Ok(Next::Close(CloseCode::Unauthorized))
                }
            };
        }
        if !matches!(msg, ClientMessage::Publish(_))
            && let Some(lane) = &self.lane
        {
            // Whatever follows a publish sees it stored, and its answer goes out first.
            lane.settled().await;
            self.pipe.drain_queue().await?;
        }
        let result = match msg {
            ClientMessage::Init(_) => Err(Failure::Refused(Refusal::new(
                ErrorCode::AlreadyInitialised,
                "already initialised",
            ))),
            ClientMessage::Subscribe(s) => self.subscribe(s).await,
            ClientMessage::Unsubscribe(u) => self.unsubscribe(u.room, u.rooms, false).await,
            ClientMessage::Publish(p) => {
                let request_id = p.request_id.clone();
                self.publish(p).await.map_err(|f| with_request(f, request_id))
            }
            ClientMessage::Ack(a) => self.ack(a).await,
            ClientMessage::ReplayRequest(r) => {
                let request_id = r.request_id.clone();
                self.replay(r).await.map_err(|f| with_request(f, request_id))
            }
            ClientMessage::PublishEphemeral(e) => {
                let request_id = e.request_id.clone();
                self.publish_ephemeral(e)
                    .await
                    .map_err(|f| with_request(f, request_id))
            }
            ClientMessage::SubscribeEphemeral(s) => self.subscribe_ephemeral(s).await,
            ClientMessage::UnsubscribeEphemeral(u) => self.unsubscribe(u.room, u.rooms, true).await,
            ClientMessage::PresenceEnter(p) => self.presence_enter(p).await,
            ClientMessage::PresenceLeave(r) => self.presence_leave(r).await,
            ClientMessage::PresenceSubscribe(r) => self.presence_subscribe(r).await,
            ClientMessage::PresenceUnsubscribe(r) => self.presence_unsubscribe(r).await,
            ClientMessage::SnapshotRequest(r) => {
                let request_id = r.request_id.clone();
                self.snapshot(r).await.map_err(|f| with_request(f, request_id))
            }
            ClientMessage::RefreshToken(t) => self.refresh_token(&t.token).await,
            ClientMessage::Ping(p) => self
                .reply(ServerMessage::Pong(Ping { id: p.id }))
                .await
                .map_err(Into::into),
        };
        match result {
            Ok(()) => Ok(Next::Continue),
            Err(Failure::Disconnected) => Err(Disconnected),
            Err(Failure::Refused(r)) => {
                self.reply(r.to_message()).await?;
                Ok(Next::Continue)
            }
        }
    }

    async fn init(&mut self, init: zps_protocol::Init) -> Result<Next, Disconnected> {
        if let Err(e) = zps_core::envelope::validate_token("subscriberId", &init.subscriber_id) {
            self.refuse(ErrorCode::Malformed, &e.to_string()).await?;
            return Ok(Next::Close(CloseCode::Unauthorized));
        }
        if let Some(verifier) = &self.session.gw.verifier {
            let verified = match init.token.as_deref() {
                None | Some("") => Err(TokenError::Missing),
                Some(token) => verifier.verify(token),
            };
            match verified {
                Ok(identity) => self.session.identity = identity,
                Err(e) => {
                    metrics::counter!("zps_gateway_auth_failures_total").increment(1);
                    self.refuse(ErrorCode::Unauthorized, &e.to_string()).await?;
                    return Ok(Next::Close(CloseCode::Unauthorized));
                }
            }
        }
        self.session.subscriber_id = Some(init.subscriber_id.clone());
        self.initialized = true;
        let heartbeat_ms = self.session.gw.config.limits.heartbeat_interval.as_millis() as u64;
        self.reply(ServerMessage::Ready(Ready {
            subscriber_id: init.subscriber_id,
            connection_id: Some(self.session.conn.key.to_string()),
            heartbeat_interval_ms: Some(heartbeat_ms),
            token_expires_at: self.session.identity.expires_at,
        }))
        .await?;
        Ok(Next::Continue)
    }

    async fn refresh_token(&mut self, token: &str) -> Result<(), Failure> {
        let Some(verifier) = &self.session.gw.verifier else {
            return Err(Refusal::new(ErrorCode::Forbidden, "this gateway does not verify tokens").into());
        };
        let identity = verifier
            .verify(token)
            .map_err(|e| Refusal::new(ErrorCode::Unauthorized, e.to_string()))?;
        if identity.subject != self.session.identity.subject {
            return Err(Refusal::new(
                ErrorCode::Unauthorized,
                "a refreshed token must keep the same subject",
            )
            .into());
        }
        let expires_at = identity.expires_at;
        self.session.identity = identity;
        self.expiry_noticed = false;
        self.reply(ServerMessage::TokenRefreshed { expires_at }).await?;
        Ok(())
    }

    async fn subscribe(&mut self, s: zps_protocol::Subscribe) -> Result<(), Failure> {
        let targets = targets(s.room, s.rooms)?;
        for raw in targets {
            let outcome = async {
                let target = self.session.target(&raw)?;
                self.session.authorize(&target, AuthAction::Subscribe).await?;
                let from = s
                    .positions
                    .as_ref()
                    .and_then(|p| p.get(&raw).copied())
                    .or(s.from_sequence);
                let epoch = s
                    .epochs
                    .as_ref()
                    .and_then(|e| e.get(&raw).cloned())
                    .or_else(|| s.epoch.clone());
                self.session
                    .subscribe(
                        &mut self.pipe,
                        target,
                        from,
                        epoch,
                        s.event_types.clone(),
                        s.request_id.clone(),
                    )
                    .await
            }
            .await;
            match outcome {
                Ok(()) => {}
                Err(Failure::Disconnected) => return Err(Failure::Disconnected),
                Err(Failure::Refused(r)) => {
                    let r = r.in_room(&raw).with_request(s.request_id.clone());
                    self.reply(r.to_message()).await?
                }
            }
        }
        Ok(())
    }

    async fn unsubscribe(
        &mut self,
        room: Option<String>,
        rooms: Option<Vec<String>>,
        ephemeral: bool,
    ) -> Result<(), Failure> {
        for raw in targets(room, rooms)? {
            let outcome = match self.session.target(&raw) {
                Ok(target) => {
                    let existed = if ephemeral {
                        self.session.unsubscribe_ephemeral(&target)
                    } else {
                        self.session.unsubscribe(&target)
                    };
                    if existed {
                        Ok(())
                    } else {
                        Err(Refusal::new(
                            ErrorCode::NotSubscribed,
                            format!("not subscribed to {raw}"),
                        ))
                    }
                }
                Err(r) => Err(r),
            };
            match outcome {
                Ok(()) => self.reply(ServerMessage::Unsubscribed { room: raw }).await?,
                Err(r) => self.reply(r.in_room(&raw).to_message()).await?,
            }
        }
        Ok(())
    }

    async fn publish(&mut self, p: zps_protocol::Publish) -> Result<(), Failure> {
        let gw = self.session.gw.clone();
        if !gw.config.limits.allow_client_publish {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "client publishing is disabled on this gateway",
            )
            .into());
        }
        let room = self.session.room(&p.event.room)?;
        self.session
            .authorize(&RoomPattern::Exact(room.clone()), AuthAction::Publish)
            .await?;
        check_payload(p.event.payload.get().len(), gw.config.limits.max_payload_bytes)?;
        let id = p.event.id.clone().unwrap_or_else(zps_core::envelope::generate_id);
        let mut req =
            PublishRequest::raw(room.clone(), p.event.event_type, p.event.payload).with_id(id.clone());
        req.ttl = p.event.ttl_ms.map(Duration::from_millis);
        req.encrypted = p.event.encrypted;
        req.metadata = p.event.metadata;
        if p.exclude_self {
            self.session.conn.state.lock().skip_id(Arc::from(id.as_str()));
        }
        let engine = &gw.engine;
        let conn = &self.session.conn;
        self.lane
            .get_or_insert_with(|| PublishLane::start(engine.clone(), conn.clone()))
            .submit(Pending {
                request: req,
                request_id: p.request_id,
            })
            .await;
        Ok(())
    }

    async fn ack(&mut self, a: Ack) -> Result<(), Failure> {
        let room = self.session.room(&a.room)?;
        self.session
            .authorize(&RoomPattern::Exact(room.clone()), AuthAction::Ack)
            .await?;
        let subscriber = self.session.subscriber_id.clone().unwrap_or_default();
        let stored = self
            .session
            .gw
            .engine
            .ack(&room, a.sequence, &subscriber)
            .await
            .map_err(|e| Refusal::engine(&e).in_room(room.as_str()))?;
        self.reply(ServerMessage::Ack(Ack {
            room: a.room,
            sequence: stored,
        }))
        .await?;
        Ok(())
    }

    async fn replay(&mut self, r: zps_protocol::ReplayRequest) -> Result<(), Failure> {
        let room = self.session.room(&r.room)?;
        self.session
            .authorize(&RoomPattern::Exact(room.clone()), AuthAction::Replay)
            .await?;
        let max = self.session.gw.config.limits.max_replay_limit;
        let query = ReplayQuery {
            room: room.clone(),
            from_sequence: r.from_sequence,
            to_sequence: r.to_sequence,
            event_types: r.event_types,
            limit: r
                .limit
                .unwrap_or(zps_core::transport::DEFAULT_REPLAY_LIMIT)
                .clamp(1, max),
        };
        let page = self
            .session
            .gw
            .engine
            .replay(query)
            .await
            .map_err(|e| Refusal::engine(&e).in_room(room.as_str()))?;
        let out = ReplayOut {
            kind: "replay",
            room: &r.room,
            events: page.events.iter().map(|e| &**e).collect(),
            has_more: !page.exhausted,
            scanned_to: page.scanned_to,
            request_id: r.request_id.as_deref(),
        };
        let json =
            serde_json::to_string(&out).map_err(|_| Refusal::new(ErrorCode::Internal, "internal error"))?;
        self.pipe.write(Outbound::Ws(json.into())).await?;
        self.pipe.flush().await?;
        Ok(())
    }

    async fn publish_ephemeral(&mut self, e: zps_protocol::PublishEphemeral) -> Result<(), Failure> {
        let gw = self.session.gw.clone();
        if !gw.config.limits.allow_client_ephemeral {
            return Err(Refusal::new(ErrorCode::Forbidden, "client ephemeral publishing is disabled").into());
        }
        let room = self.session.room(&e.room)?;
        self.session
            .authorize(&RoomPattern::Exact(room.clone()), AuthAction::Publish)
            .await?;
        check_payload(e.payload.get().len(), gw.config.limits.max_payload_bytes)?;
        self.session
            .publish_ephemeral(room, e.event_type, e.payload, e.echo)
            .await?;
        Ok(())
    }

    async fn subscribe_ephemeral(&mut self, s: zps_protocol::SubscribeEphemeral) -> Result<(), Failure> {
        for raw in targets(s.room, s.rooms)? {
            let outcome = async {
                let target = self.session.target(&raw)?;
                self.session.authorize(&target, AuthAction::Subscribe).await?;
                self.session
                    .subscribe_ephemeral(target, s.event_types.clone())
                    .await
            }
            .await;
            match outcome {
                Ok(()) => {
                    self.reply(ServerMessage::SubscribedEphemeral { room: raw })
                        .await?
                }
                Err(r) => self.reply(r.in_room(&raw).to_message()).await?,
            }
        }
        Ok(())
    }

    async fn presence_enter(&mut self, p: zps_protocol::PresenceEnter) -> Result<(), Failure> {
        let room = self.session.room(&p.room)?;
        self.session
            .authorize(&RoomPattern::Exact(room.clone()), AuthAction::Subscribe)
            .await?;
        let state = self.session.presence_enter(&room, p.metadata).await?;
        self.reply(state).await?;
        Ok(())
    }

    async fn presence_leave(&mut self, r: zps_protocol::RoomRef) -> Result<(), Failure> {
        let room = self.session.room(&r.room)?;
        self.session.presence_leave(&room).await?;
        let state = self.session.presence_state(&room).await?;
        self.reply(state).await?;
        Ok(())
    }

    async fn presence_subscribe(&mut self, r: zps_protocol::RoomRef) -> Result<(), Failure> {
        let room = self.session.room(&r.room)?;
        self.session
            .authorize(&RoomPattern::Exact(room.clone()), AuthAction::Subscribe)
            .await?;
        let state = self.session.watch_presence(&room).await?;
        self.reply(state).await?;
        Ok(())
    }

    async fn presence_unsubscribe(&mut self, r: zps_protocol::RoomRef) -> Result<(), Failure> {
        let room = self.session.room(&r.room)?;
        if !self.session.unwatch_presence(&room) {
            let why = format!("not watching presence of {}", r.room);
            return Err(Refusal::new(ErrorCode::NotSubscribed, why).into());
        }
        self.reply(ServerMessage::Unsubscribed { room: r.room }).await?;
        Ok(())
    }

    async fn snapshot(&mut self, r: zps_protocol::RoomRef) -> Result<(), Failure> {
        let room = self.session.room(&r.room)?;
        self.session
            .authorize(&RoomPattern::Exact(room.clone()), AuthAction::Replay)
            .await?;
        let snapshot = self
            .session
            .gw
            .engine
            .get_snapshot(&room)
            .await
            .map_err(|e| Refusal::engine(&e).in_room(room.as_str()))?;
        self.reply(ServerMessage::Snapshot {
            room: r.room,
            snapshot: snapshot.map(Box::new),
            request_id: r.request_id,
        })
        .await?;
        Ok(())
    }
}

fn with_request(f: Failure, request_id: Option<String>) -> Failure {
    match f {
        Failure::Refused(r) => Failure::Refused(r.with_request(request_id)),
        other => other,
    }
}

fn targets(room: Option<String>, rooms: Option<Vec<String>>) -> Result<Vec<String>, Failure> {
    let mut out: Vec<String> = room.into_iter().chain(rooms.unwrap_or_default()).collect();
    out.dedup();
    if out.is_empty() {
        return Err(Refusal::new(ErrorCode::Malformed, "`room` or `rooms` is required").into());
    }
    Ok(out)
}

fn check_payload(size: usize, limit: usize) -> Result<(), Refusal> {
    if size > limit {
        return Err(Refusal::new(
            ErrorCode::PayloadTooLarge,
            format!("payload too large: {size} bytes (limit {limit})"),
        ));
    }
    Ok(())
}
