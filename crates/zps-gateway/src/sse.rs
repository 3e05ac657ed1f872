//! The SSE endpoint: `GET /events?room=chat:1&room=...&fromSequence=...`.
//!
//! Auth failures are HTTP errors before the stream starts (401 token, 403 room,
//! 400 invalid room, 503 capacity). Each event is `id: room@sequence` plus
//! `data: <envelope JSON>`; `Last-Event-ID` resumes that room; without a
//! position the stream is live only. Heartbeat comments keep proxies open.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use zps_core::RoomPattern;
use zps_protocol::{ErrorCode, Ready, ServerMessage};

use crate::auth::{AuthAction, TokenError};
use crate::conn::ConnShared;
use crate::frames::{ConnKind, Outbound};
use crate::gateway_state::{ConnSlot, GatewayState};
use crate::http::origin_allowed;
use crate::outbox::Signal;
use crate::session::{Failure, Refusal, Session};
use crate::writer::{ConnWriter, SseWriter};

#[derive(Default)]
struct Params {
    rooms: Vec<String>,
    from_sequence: Option<u64>,
    epoch: Option<String>,
    event_types: Option<Vec<String>>,
    token: Option<String>,
    subscriber_id: Option<String>,
    /// Room tokens, each opening the room it names.
    room_tokens: Vec<String>,
    /// Also carry the rooms' ephemeral events (`event: ephemeral` records).
    ephemeral: bool,
    /// Also carry the rooms' presence (`presence_state`, then `presence` records).
    presence: bool,
}

fn parse_params(query: &str) -> Result<Params, Refusal> {
    let mut p = Params::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "room" => p.rooms.push(v.into_owned()),
            "rooms" => p
                .rooms
                .extend(v.split(',').filter(|s| !s.is_empty()).map(str::to_owned)),
            "fromSequence" => {
                p.from_sequence = Some(v.parse().map_err(|_| {
                    Refusal::new(
                        ErrorCode::Malformed,
                        "fromSequence must be a non-negative integer",
                    )
                })?)
            }
            "epoch" => p.epoch = Some(v.into_owned()),
            "eventTypes" => {
                p.event_types = Some(
                    v.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                )
            }
            "token" => p.token = Some(v.into_owned()),
            "subscriberId" => p.subscriber_id = Some(v.into_owned()),
            "roomToken" => p.room_tokens.push(v.into_owned()),
            "ephemeral" => p.ephemeral = matches!(&*v, "1" | "true"),
            "presence" => p.presence = matches!(&*v, "1" | "true"),
            _ => {}
        }
    }
    p.rooms.dedup();
    if p.rooms.is_empty() {
        return Err(Refusal::new(
            ErrorCode::Malformed,
            "at least one `room` parameter is required",
        ));
    }
    Ok(p)
}

fn http_error(status: StatusCode, r: &Refusal) -> Response {
    metrics::counter!("zps_gateway_errors_total", "code" => r.code.as_str()).increment(1);
    let body = serde_json::json!({ "code": r.code.as_str(), "message": r.message, "room": r.room });
    (status, Json(body)).into_response()
}

/// `GET /events`.
pub(crate) async fn handler(
    State(gw): State<Arc<GatewayState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if !origin_allowed(&gw, &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if gw.is_draining() {
        return http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &Refusal::new(ErrorCode::Unavailable, "gateway is draining"),
        );
    }
    let params = match parse_params(query.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(r) => return http_error(StatusCode::BAD_REQUEST, &r),
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let token = bearer.or(params.token.clone());
    let identity = match &gw.verifier {
        None => Default::default(),
        Some(v) => match token.as_deref() {
            None | Some("") => {
                let r = Refusal::new(ErrorCode::Unauthorized, TokenError::Missing.to_string());
                return http_error(StatusCode::UNAUTHORIZED, &r);
            }
            Some(t) => match v
                .verify(t)
                .await
                .and_then(|i| crate::access::check_connection_token(&i).map(|()| i))
            {
                Ok(id) => id,
                Err(e) => {
                    return http_error(
                        StatusCode::UNAUTHORIZED,
                        &Refusal::new(ErrorCode::Unauthorized, e.to_string()),
                    );
                }
            },
        },
    };
    if let Some(sub) = &params.subscriber_id
        && let Err(e) = zps_core::envelope::validate_token("subscriberId", sub)
    {
        return http_error(
            StatusCode::BAD_REQUEST,
            &Refusal::new(ErrorCode::Malformed, e.to_string()),
        );
    }
    let Some(slot) = gw.try_acquire() else {
        return http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &Refusal::new(ErrorCode::Unavailable, "gateway at capacity"),
        );
    };
    let id = gw.next_conn_id();
    let key: Arc<str> = Arc::from(format!("{}-{id}", gw.node_id));
    let conn = ConnShared::new(id, key, ConnKind::Sse, gw.config.limits.max_socket_buffered_bytes);
    // With token verification the subscriber id is the token's `sub` (or a device of it).
    let subscriber_id = match &gw.verifier {
        None => params.subscriber_id.clone(),
        Some(_) => match crate::access::bind_subscriber(&gw, &identity, params.subscriber_id.as_deref()) {
            Ok(id) => Some(id),
            Err(r) => {
                let status = if r.code == ErrorCode::Unauthorized {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::FORBIDDEN
                };
                return http_error(status, &r);
            }
        },
    };
    let mut session = Session::new(gw.clone(), conn.clone());
    for token in &params.room_tokens {
        match crate::access::verify_room_token(&gw, &identity, None, token).await {
            Ok((room, grant)) => {
                session.room_grants.insert(room, grant);
            }
            Err(r) => return http_error(StatusCode::FORBIDDEN, &r),
        }
    }
    session.identity = identity;
    session.subscriber_id = subscriber_id.clone();
    if let Some(sub) = &subscriber_id
        && gw.banned(sub)
    {
        let r = Refusal::new(
            ErrorCode::Forbidden,
            "this subscriber was disconnected by an operator; retry later",
        );
        return http_error(StatusCode::FORBIDDEN, &r);
    }
    session.conn.set_owner(crate::conn::Owner {
        subject: session.identity.subject.clone(),
        subscriber: subscriber_id.clone(),
    });

    if params.rooms.len() > gw.config.limits.max_subscriptions {
        let r = Refusal::new(ErrorCode::TooManySubscriptions, "too many rooms");
        return http_error(StatusCode::BAD_REQUEST, &r);
    }
    let mut targets = Vec::new();
    for raw in &params.rooms {
        let target = match session.target(raw) {
            Ok(t) => t,
            Err(r) => return http_error(StatusCode::BAD_REQUEST, &r),
        };
        if let Err(r) = session.authorize(&target, AuthAction::Subscribe).await {
            return http_error(StatusCode::FORBIDDEN, &r);
        }
        targets.push(target);
    }
    // `Last-Event-ID: room@sequence` resumes that room.
    let mut positions: HashMap<RoomPattern, u64> = HashMap::new();
    if let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok())
        && let Some((room, seq)) = last.rsplit_once('@')
        && let (Ok(target), Ok(seq)) = (RoomPattern::parse(room), seq.parse::<u64>())
    {
        positions.insert(target, seq);
    }

    let (tx, body_rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let limits = &gw.config.limits;
    let pipe = ConnWriter::new(
        SseWriter {
            tx,
            stall: limits.heartbeat_interval + limits.heartbeat_timeout,
        },
        conn,
    );
    gw.tasks
        .spawn(run(session, pipe, targets, positions, params, slot));
    metrics::counter!("zps_gateway_connections_opened_total", "transport" => "sse").increment(1);
    let body = Body::from_stream(tokio_stream_from(body_rx));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Bytes, Infallible>>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn run(
    mut session: Session,
    mut pipe: ConnWriter<SseWriter>,
    targets: Vec<RoomPattern>,
    positions: HashMap<RoomPattern, u64>,
    params: Params,
    slot: ConnSlot,
) {
    let gw = session.gw.clone();
    let retry = gw.config.sse_retry.unwrap_or(Duration::from_secs(3)).as_millis();
    let started = async {
        // The first record sets the reconnect delay and names the stream
        // (`connectionId` is what the HTTP API's presence routes take).
        let ready = ServerMessage::Ready(Ready {
            subscriber_id: session.subscriber_id.clone().unwrap_or_default(),
            connection_id: Some(session.conn.key.to_string()),
            heartbeat_interval_ms: Some(gw.config.limits.heartbeat_interval.as_millis() as u64),
            token_expires_at: session.identity.expires_at,
        });
        pipe.write(Outbound::Sse(Bytes::from(format!(
            "retry: {retry}\nevent: ready\ndata: {}\n\n",
            ready.to_json()
        ))))
        .await?;
        for target in targets.clone() {
            let from = positions.get(&target).copied().or(params.from_sequence);
            match session
                .subscribe(
                    &mut pipe,
                    target.clone(),
                    from,
                    params.epoch.clone(),
                    params.event_types.clone(),
                    None,
                )
                .await
            {
                Ok(()) => {}
                Err(Failure::Refused(r)) => {
                    let msg = r.in_room(&target.to_string()).to_message();
                    pipe.write(crate::frames::control(crate::frames::ConnKind::Sse, &msg))
                        .await?;
                }
                Err(Failure::Disconnected) => return Err(crate::writer::Disconnected),
            }
        }
        // Ephemeral events and presence ride on the same stream when asked for,
        // so an SSE client keeps what a socket has (its own actions go over HTTP).
        for target in &targets {
            let mut answers = Vec::new();
            if params.ephemeral
                && let Err(r) = session
                    .subscribe_ephemeral(target.clone(), params.event_types.clone())
                    .await
            {
                answers.push(r.in_room(&target.to_string()).to_message());
            }
            if params.presence
                && let RoomPattern::Exact(room) = target
            {
                answers.push(match session.watch_presence(room).await {
                    Ok(state) => state,
                    Err(r) => r.in_room(room.as_str()).to_message(),
                });
            }
            for msg in answers {
                pipe.write(crate::frames::control(crate::frames::ConnKind::Sse, &msg))
                    .await?;
            }
        }
        Ok::<_, crate::writer::Disconnected>(())
    }
    .await;
    if started.is_ok() {
        let every = gw.config.limits.heartbeat_interval.min(Duration::from_secs(15));
        let mut heartbeat = tokio::time::interval_at(Instant::now() + every, every);
        let conn = pipe.conn.clone();
        let registration = gw.register(&conn);
        // Notices the client going away while nothing is being written.
        let body = pipe.writer.tx.clone();
        let presence_every = (gw.engine.config().presence_ttl / 3).max(Duration::from_millis(50));
        let mut presence_tick = tokio::time::interval_at(Instant::now() + presence_every, presence_every);
        // A stream ends when its token does: the client reconnects with a fresh one.
        let expiry = session
            .identity
            .expires_at
            .map(|exp| Instant::now() + Duration::from_secs(exp.saturating_sub(crate::auth::unix_now())));
        let expired = tokio::time::sleep_until(
            expiry.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365)),
        );
        tokio::pin!(expired);
        loop {
            let step = tokio::select! {
                biased;
                () = body.closed() => break,
                signal = pipe.next() => match signal {
                    Signal::Close(_) => break,
                    Signal::Frames { bytes } => tokio::select! {
                        r = pipe.write_taken(bytes) => r.map(|()| true),
                        _ = conn.killed() => break,
                    },
                    Signal::Resync => match session.resync(&mut pipe).await {
                        Ok(()) => Ok(true),
                        Err(_) => Ok(false),
                    },
                    Signal::Command(crate::conn::Command::Kick { reason }) => {
                        let msg = Refusal::new(ErrorCode::Forbidden, reason).to_message();
                        let _ = pipe.write(crate::frames::control(ConnKind::Sse, &msg)).await;
                        let _ = pipe.flush().await;
                        break;
                    }
                    Signal::Command(c) => {
                        session.run_command(c).await;
                        Ok(true)
                    }
                },
                () = &mut expired, if expiry.is_some() => {
                    let msg = Refusal::new(ErrorCode::Unauthorized, "token expired").to_message();
                    let _ = pipe.write(crate::frames::control(ConnKind::Sse, &msg)).await;
                    break;
                }
                _ = presence_tick.tick(), if !session.entered.is_empty() => {
                    session.presence_refresh().await;
                    Ok(true)
                }
                _ = heartbeat.tick() => pipe.write(Outbound::Sse(Bytes::from_static(b": ping\n\n"))).await.map(|()| true),
            };
            if !matches!(step, Ok(true)) {
                break;
            }
        }
        drop(registration);
        drop(body);
    }
    session.cleanup().await;
    drop(slot);
}
