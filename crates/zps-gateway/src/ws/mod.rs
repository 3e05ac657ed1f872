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
use zps_protocol::compact::{COMPACT_SUBPROTOCOL, JSON_SUBPROTOCOL};
use zps_protocol::{CloseCode, ErrorCode, ServerMessage, parse_client};

mod deadlines;
mod dispatch;

use deadlines::Deadlines;

use crate::auth::unix_now;
use crate::conn::ConnShared;
use crate::frames::{ConnKind, Outbound, control};
use crate::gateway_state::{ConnSlot, GatewayState};
use crate::http::origin_allowed;
use crate::outbox::Signal;
use crate::publish_queue::PublishQueue;
use crate::session::{Failure, Refusal, Session};
use crate::writer::{ConnWriter, Disconnected, WsWriter, close_frame};

/// How long before `exp` a `token_expiring` notice is sent.
const EXPIRY_NOTICE: Duration = Duration::from_secs(30);
/// Bytes one read takes from the socket: an idle connection holds this much.
const READ_BUFFER: usize = 2 * 1024;
/// Bytes of frames gathered before the socket is written (flushes write sooner).
const WRITE_BUFFER: usize = 64 * 1024;
/// Client messages handled in one go before the connection looks at its queue again.
const BURST: usize = 64;
/// Consecutive rate-limited windows before the connection is closed.
const MAX_FLOODED_WINDOWS: u32 = 3;

/// `GET /` and `GET /ws`: upgrade to a WebSocket.
pub(crate) async fn handler(
    State(gw): State<Arc<GatewayState>>,
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
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(limits.max_socket_buffered_bytes.max(WRITE_BUFFER) + WRITE_BUFFER)
        .max_message_size(limits.max_frame_bytes())
        .max_frame_size(limits.max_frame_bytes());
    if gw.is_draining() {
        return ws.on_upgrade(|socket| refuse(socket, CloseCode::ServiceRestart, "gateway is draining"));
    }
    // A client that offers the compact subprotocol gets events as MessagePack.
    let ws = ws.protocols([COMPACT_SUBPROTOCOL, JSON_SUBPROTOCOL]);
    match gw.try_acquire() {
        Some(slot) => ws.on_upgrade(move |socket| {
            let kind = if socket
                .protocol()
                .is_some_and(|p| p.as_bytes() == COMPACT_SUBPROTOCOL.as_bytes())
            {
                ConnKind::WsCompact
            } else {
                ConnKind::Ws
            };
            run(socket, gw, slot, kind)
        }),
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
    pipe: ConnWriter<WsWriter>,
    initialized: bool,
    rate: RateWindow,
    last_seen: Instant,
    expiry_noticed: bool,
    /// When the token timer fires next (notice, then expiry); `None` without a token.
    expiry_at: Option<Instant>,
    /// Started by the first publish.
    publish_queue: Option<PublishQueue>,
}

/// Outcome of handling one inbound frame.
enum Next {
    Continue,
    Close(CloseCode),
}

async fn run(socket: WebSocket, gw: Arc<GatewayState>, slot: ConnSlot, kind: ConnKind) {
    let id = gw.next_conn_id();
    let key: Arc<str> = Arc::from(format!("{}-{id}", gw.node_id));
    let conn_shared = ConnShared::new(id, key, kind, gw.config.limits.max_socket_buffered_bytes);
    let registration = gw.register(&conn_shared);
    let (sink, mut stream) = socket.split();
    let writer = WsWriter {
        sink,
        stall: gw.config.limits.heartbeat_interval + gw.config.limits.heartbeat_timeout,
    };
    let mut conn = Conn {
        session: Session::new(gw.clone(), conn_shared.clone()),
        pipe: ConnWriter::new(writer, conn_shared.clone()),
        initialized: false,
        rate: RateWindow {
            started: Instant::now(),
            count: 0,
            warned: false,
            flooded_windows: 0,
        },
        last_seen: Instant::now(),
        expiry_noticed: false,
        expiry_at: None,
        publish_queue: None,
    };
    metrics::counter!("zps_gateway_connections_opened_total", "transport" => "ws").increment(1);
    let limits = gw.config.limits.clone();
    let presence_every = (gw.engine.config().presence_ttl / 3).max(Duration::from_millis(50));
    let started = Instant::now();
    let mut deadlines = Deadlines {
        heartbeat: started + limits.heartbeat_interval,
        init: Some(started + limits.init_timeout),
        expiry: None,
        presence: None,
    };
    // One timer for every deadline, living across loop turns.
    let timer = sleep_until(deadlines.next());
    tokio::pin!(timer);
    let mut armed = Some(deadlines.next());

    let close = loop {
        deadlines.expiry = conn.expiry_at;
        if conn.session.entered.is_empty() {
            deadlines.presence = None;
        } else if deadlines.presence.is_none() {
            deadlines.presence = Some(Instant::now() + presence_every);
        }
        let next = deadlines.next();
        if armed != Some(next) {
            timer.as_mut().reset(next);
            armed = Some(next);
        }
        let outcome: Result<Next, Disconnected> = tokio::select! {
            biased;
            signal = conn.pipe.next() => match signal {
                Signal::Close(code) => Ok(Next::Close(code)),
                // A peer that stopped reading blocks this write; being killed wins.
                Signal::Frames { bytes } => tokio::select! {
                    r = Box::pin(conn.pipe.write_taken(bytes)) => r.map(|()| Next::Continue),
                    code = conn_shared.killed() => Ok(Next::Close(code)),
                },
                // Handlers are boxed: their state exists only while they run, which keeps
                // an idle connection's task small.
                Signal::Resync => match Box::pin(conn.session.resync(&mut conn.pipe)).await {
                    Ok(()) => Ok(Next::Continue),
                    Err(Failure::Disconnected) => Err(Disconnected),
                    Err(Failure::Refused(r)) => conn.reply(r.to_message()).await.map(|()| Next::Continue),
                },
                Signal::Command(crate::conn::Command::Kick { reason }) => conn
                    .refuse(zps_protocol::ErrorCode::Forbidden, &reason)
                    .await
                    .map(|()| Next::Close(zps_protocol::CloseCode::Kicked)),
                Signal::Command(c) => {
                    Box::pin(conn.session.run_command(c)).await;
                    Ok(Next::Continue)
                }
            },
            msg = stream.next() => Box::pin(conn.inbound_burst(msg, &mut stream)).await,
            () = &mut timer => {
                // Fired: re-arm whatever the deadlines are now.
                armed = None;
                Box::pin(conn.on_timer(&mut deadlines, &limits, presence_every)).await
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
    drop(registration);
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
        self.pipe.write(control(self.session.conn.kind, &msg)).await?;
        self.pipe.flush().await
    }

    async fn refuse(&mut self, code: ErrorCode, message: &str) -> Result<(), Disconnected> {
        self.reply(Refusal::new(code, message).to_message()).await
    }

    /// Re-arms the token timer: the expiry notice first, then the expiry itself.
    fn arm_expiry(&mut self) {
        self.expiry_at = self.session.identity.expires_at.map(|exp| {
            let now = unix_now();
            let target = if self.expiry_noticed {
                exp
            } else {
                exp.saturating_sub(EXPIRY_NOTICE.as_secs())
            };
            Instant::now() + Duration::from_secs(target.saturating_sub(now))
        });
    }

    async fn token_timer(&mut self) -> Result<Next, Disconnected> {
        let Some(exp) = self.session.identity.expires_at else {
            self.arm_expiry();
            return Ok(Next::Continue);
        };
        if unix_now() >= exp {
            self.refuse(ErrorCode::Unauthorized, "token expired").await?;
            return Ok(Next::Close(CloseCode::Unauthorized));
        }
        if !self.expiry_noticed {
            self.expiry_noticed = true;
            self.arm_expiry();
            self.reply(ServerMessage::TokenExpiring { expires_at: exp })
                .await?;
        } else {
            // Woken before the second passed: look again then.
            self.expiry_at = Some(Instant::now() + Duration::from_secs(1));
        }
        Ok(Next::Continue)
    }

    /// Handles whatever deadlines fell due.
    async fn on_timer(
        &mut self,
        deadlines: &mut Deadlines,
        limits: &crate::Limits,
        presence_every: Duration,
    ) -> Result<Next, Disconnected> {
        let now = Instant::now();
        let due = deadlines.take_due(now);
        if due.init && !self.initialized {
            self.refuse(ErrorCode::Unauthorized, "init timeout: send init first")
                .await?;
            return Ok(Next::Close(CloseCode::Unauthorized));
        }
        if due.expiry
            && let Next::Close(code) = self.token_timer().await?
        {
            return Ok(Next::Close(code));
        }
        if due.heartbeat {
            deadlines.heartbeat = now + limits.heartbeat_interval;
            if let Next::Close(code) = self.heartbeat(limits).await? {
                return Ok(Next::Close(code));
            }
        }
        if due.presence {
            self.session.presence_refresh().await;
            deadlines.presence = Some(Instant::now() + presence_every);
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

    /// Handles `first` and every message already read behind it (up to a
    /// budget) before looking at the queue again: the publishes of a burst
    /// reach the publish queue together and their answers leave in one write.
    async fn inbound_burst(
        &mut self,
        first: Option<Result<Message, axum::Error>>,
        stream: &mut futures::stream::SplitStream<WebSocket>,
    ) -> Result<Next, Disconnected> {
        use futures::FutureExt;
        let mut next = self.inbound(first).await;
        for _ in 0..BURST {
            if !matches!(next, Ok(Next::Continue)) {
                break;
            }
            // Only what is already here: a pending read is left to the select loop.
            match stream.next().now_or_never() {
                Some(msg) => next = self.inbound(msg).await,
                None => break,
            }
        }
        next
    }

    async fn inbound(&mut self, msg: Option<Result<Message, axum::Error>>) -> Result<Next, Disconnected> {
        let msg = match msg {
            None => return Err(Disconnected),
            Some(Err(e)) => {
                let text = e.to_string();
                let inner = e.into_inner();
                if let Some(tungstenite::Error::Capacity(_)) = inner.downcast_ref::<tungstenite::Error>() {
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
                if let Some(next) = self.rate_limit(None).await? {
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
        if let Some(next) = self.rate_limit(Some(text.as_str())).await? {
            return Ok(next);
        }
        crate::frame_counters::counters().received();
        let parsed = match parse_client(text.as_str()) {
            Ok(m) => m,
            Err(e) => {
                self.refuse(ErrorCode::Malformed, &e).await?;
                return Ok(Next::Continue);
            }
        };
        self.dispatch(parsed).await
    }

    /// Counts one inbound message against the window. A dropped message that
    /// carries a request id is refused with that id (its caller fails at once
    /// instead of waiting for its own timeout); other dropped messages get one
    /// warning per window.
    async fn rate_limit(&mut self, text: Option<&str>) -> Result<Option<Next>, Disconnected> {
        let limits = &self.session.gw.config.limits;
        match self
            .rate
            .check(limits.max_messages_per_window, limits.rate_limit_window)
        {
            Verdict::Allow => Ok(None),
            Verdict::Drop { warn } => {
                let window = limits.rate_limit_window.as_millis();
                let max = limits.max_messages_per_window;
                let request_id = text
                    .and_then(|t| parse_client(t).ok())
                    .and_then(|m| m.request_id().map(str::to_owned));
                if warn || request_id.is_some() {
                    let refusal = Refusal::new(
                        ErrorCode::RateLimited,
                        format!("rate limited: at most {max} messages per {window} ms"),
                    )
                    .with_request(request_id);
                    self.reply(refusal.to_message()).await?;
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
}
