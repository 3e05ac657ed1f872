//! Rooms: list, describe, history pages, presence, snapshots.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};
use zps_core::{Metadata, PresenceMember, ReplayQuery, Room, RoomPattern};
use zps_protocol::ErrorCode;

use super::caller::Caller;
use super::error::{ApiError, Body, ErrorBody, Path, Query};
use super::keys::Scope;
use crate::auth::AuthAction;
use crate::cluster;
use crate::conn::Command;
use crate::gateway_state::GatewayState;
use zps_core::middleware::Action;

/// A room name (path or body): the same checks as a socket's (reserved scope,
/// `--scopes` allow-list), and an exact room, never a pattern.
pub(crate) fn parse_room(gw: &GatewayState, raw: &str) -> Result<Room, ApiError> {
    match crate::session::parse_target(gw, raw)? {
        RoomPattern::Exact(room) => Ok(room),
        RoomPattern::Scope(_) => Err(ApiError::new(
            ErrorCode::InvalidRoom,
            "a room is needed here, not a `scope:*` pattern",
        )),
    }
}

/// `GET /rooms` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// Only rooms whose name starts with this.
    prefix: Option<String>,
    /// Rooms after this name (the previous page's `next`).
    after: Option<String>,
    /// Page size (default 100, at most 1 000).
    limit: Option<usize>,
}

/// A room with its subscribers.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RoomCount {
    /// The room (or `scope:*` pattern).
    room: String,
    /// Subscribed connections across the cluster.
    subscribers: u64,
}

/// One page of active rooms.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RoomList {
    /// Rooms with at least one subscriber, by name.
    rooms: Vec<RoomCount>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    /// Gateway nodes that reported (this one included).
    nodes: usize,
}

/// Subscriber counts per room, summed over every node's report.
async fn cluster_counts(gw: &GatewayState) -> Result<(BTreeMap<String, u64>, usize), ApiError> {
    let reports = cluster::reports(gw).await?;
    let nodes = reports.len();
    let mut counts = BTreeMap::new();
    for r in reports {
        for (room, n) in r.rooms {
            *counts.entry(room).or_insert(0) += n;
        }
    }
    Ok((counts, nodes))
}

/// Rooms with subscribers, with their counts across every gateway of the cluster.
#[utoipa::path(
    get,
    path = "/rooms",
    tag = "rooms",
    params(ListParams),
    responses((status = 200, body = RoomList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn list_rooms(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Query(p): Query<ListParams>,
) -> Result<Json<RoomList>, ApiError> {
    let key = caller.key_for(Scope::Read, None)?;
    caller.check(&gw, Action::RoomInfo, None).await?;
    let limit = p.limit.unwrap_or(100).clamp(1, 1_000);
    let (counts, nodes) = cluster_counts(&gw).await?;
    let mut rooms: Vec<RoomCount> = counts
        .into_iter()
        .filter(|(room, _)| p.prefix.as_deref().is_none_or(|pre| room.starts_with(pre)))
        .filter(|(room, _)| p.after.as_deref().is_none_or(|after| room.as_str() > after))
        .filter(|(room, _)| RoomPattern::parse(room).is_ok_and(|t| key.covers(&t)))
        .map(|(room, subscribers)| RoomCount { room, subscribers })
        .take(limit + 1)
        .collect();
    let next = (rooms.len() > limit).then(|| {
        rooms.truncate(limit);
        rooms.last().map(|r| r.room.clone()).unwrap_or_default()
    });
    Ok(Json(RoomList { rooms, next, nodes }))
}

/// A room's state.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RoomOut {
    /// The room.
    room: String,
    /// Its history's epoch (sequences compare within one epoch).
    epoch: String,
    /// The newest sequence (0 when nothing was published).
    last_sequence: u64,
    /// The oldest sequence still retained.
    earliest_sequence: u64,
    /// Subscribed connections across the cluster.
    subscribers: u64,
    /// Present members.
    presence: usize,
}

/// A room's epoch, retained range, subscribers (cluster-wide) and presence count.
#[utoipa::path(
    get,
    path = "/rooms/{room}",
    tag = "rooms",
    params(("room" = String, Path, description = "The room (`scope:id`), URL-encoded")),
    responses((status = 200, body = RoomOut), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn room(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<RoomOut>, ApiError> {
    let room = parse_room(&gw, &raw)?;
    caller
        .allow(&gw, Scope::Read, AuthAction::Subscribe, &room)
        .await?;
    caller.check(&gw, Action::RoomInfo, Some(&room)).await?;
    let info = gw.engine.room_info(&room).await?;
    let (counts, _) = cluster_counts(&gw).await?;
    let presence = gw.engine.presence(room.clone()).members().await?.len();
    Ok(Json(RoomOut {
        subscribers: counts.get(room.as_str()).copied().unwrap_or(0),
        room: room.to_string(),
        epoch: info.epoch,
        last_sequence: info.last_sequence,
        earliest_sequence: info.earliest_sequence,
        presence,
    }))
}

/// `GET /rooms/{room}/events` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct EventsParams {
    /// Events after this sequence (default 0).
    from_sequence: Option<u64>,
    /// Up to this sequence (inclusive).
    to_sequence: Option<u64>,
    /// Only these types, comma separated.
    types: Option<String>,
    /// Page size (default 100, at most the gateway's `max_replay_limit`).
    limit: Option<usize>,
}

/// One page of a room's history.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventsPage {
    /// The room.
    room: String,
    /// Events in sequence order (the same envelopes as on a socket).
    #[schema(value_type = Vec<Object>)]
    events: Vec<Box<RawValue>>,
    /// Every sequence up to this one was looked at.
    scanned_to: u64,
    /// More events exist after `scannedTo` (within `toSequence`).
    has_more: bool,
    /// The next page's `fromSequence`, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_from_sequence: Option<u64>,
}

/// A page of a room's history (`sequence > fromSequence`), oldest first.
#[utoipa::path(
    get,
    path = "/rooms/{room}/events",
    tag = "rooms",
    params(("room" = String, Path, description = "The room, URL-encoded"), EventsParams),
    responses((status = 200, body = EventsPage), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn events(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Path(raw): Path<String>,
    Query(p): Query<EventsParams>,
) -> Result<Json<EventsPage>, ApiError> {
    let room = parse_room(&gw, &raw)?;
    caller.allow(&gw, Scope::Read, AuthAction::Replay, &room).await?;
    let limit = p
        .limit
        .unwrap_or(zps_core::transport::DEFAULT_REPLAY_LIMIT)
        .clamp(1, gw.config.limits.max_replay_limit);
    let query = ReplayQuery {
        room: room.clone(),
        from_sequence: p.from_sequence.unwrap_or(0),
        to_sequence: p.to_sequence,
        event_types: p.types.map(|t| {
            t.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        }),
        limit,
    };
    let page = gw.engine.replay(query).await?;
    let events = page
        .events
        .iter()
        .filter_map(|e| RawValue::from_string(e.to_json()).ok())
        .collect();
    Ok(Json(EventsPage {
        room: room.to_string(),
        events,
        scanned_to: page.scanned_to,
        has_more: !page.exhausted,
        next_from_sequence: (!page.exhausted).then_some(page.scanned_to),
    }))
}

/// A room's present members.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PresenceOut {
    /// The room.
    room: String,
    /// One entry per user (several connections of a user are one member).
    #[schema(value_type = Vec<Object>)]
    members: Vec<PresenceMember>,
}

/// Who is present in a room (across the cluster on shared providers).
#[utoipa::path(
    get,
    path = "/rooms/{room}/presence",
    tag = "rooms",
    params(("room" = String, Path, description = "The room, URL-encoded")),
    responses((status = 200, body = PresenceOut), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn presence(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<PresenceOut>, ApiError> {
    let room = parse_room(&gw, &raw)?;
    caller
        .allow(&gw, Scope::Read, AuthAction::Subscribe, &room)
        .await?;
    caller.check(&gw, Action::PresenceMembers, Some(&room)).await?;
    let members = gw.engine.presence(room.clone()).members().await?;
    Ok(Json(PresenceOut {
        room: room.to_string(),
        members,
    }))
}

/// Presence metadata.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PresenceIn {
    /// Application data (display name, avatar, ...).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Metadata>,
}

/// Enters a room's presence for a connection of the caller's (an SSE stream's
/// `connectionId`); the connection keeps it alive and leaves when it closes.
#[utoipa::path(
    put,
    path = "/rooms/{room}/presence/{connection}",
    tag = "rooms",
    params(
        ("room" = String, Path, description = "The room, URL-encoded"),
        ("connection" = String, Path, description = "The connection id from its `ready` message")
    ),
    request_body = PresenceIn,
    responses(
        (status = 200, body = PresenceOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn presence_enter(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Path((raw, connection)): Path<(String, String)>,
    Body(body): Body<PresenceIn>,
) -> Result<Response, ApiError> {
    let room = parse_room(&gw, &raw)?;
    caller
        .allow(&gw, Scope::Admin, AuthAction::Presence, &room)
        .await?;
    let answer = connection_command(&gw, &caller, &connection, |reply| Command::PresenceEnter {
        room,
        metadata: body.metadata,
        reply,
    })
    .await?;
    Ok(Json(answer).into_response())
}

/// Leaves a room's presence for a connection of the caller's.
#[utoipa::path(
    delete,
    path = "/rooms/{room}/presence/{connection}",
    tag = "rooms",
    params(
        ("room" = String, Path, description = "The room, URL-encoded"),
        ("connection" = String, Path, description = "The connection id")
    ),
    responses((status = 204, description = "Left"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn presence_leave(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Path((raw, connection)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let room = parse_room(&gw, &raw)?;
    caller
        .allow(&gw, Scope::Admin, AuthAction::Subscribe, &room)
        .await?;
    connection_command(&gw, &caller, &connection, |reply| Command::PresenceLeave {
        room,
        reply,
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Runs a command on one of this node's connections, owned by the caller
/// (a key with `admin` may act on any).
async fn connection_command(
    gw: &GatewayState,
    caller: &Caller,
    connection: &str,
    command: impl FnOnce(tokio::sync::oneshot::Sender<Result<serde_json::Value, ApiError>>) -> Command,
) -> Result<serde_json::Value, ApiError> {
    let conn = gw
        .find_connection(connection)
        .ok_or_else(|| ApiError::not_found(format!("no connection {connection} on this gateway")))?;
    if let Caller::Client(identity) = caller
        && gw.verifier.is_some()
        && conn.owner().as_deref() != identity.subject.as_deref()
    {
        return Err(ApiError::forbidden("that connection is not yours"));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    conn.command(command(tx));
    match rx.await {
        Ok(r) => r,
        Err(_) => Err(ApiError::not_found(format!("connection {connection} closed"))),
    }
}

/// A stored snapshot.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SnapshotIo {
    /// The last event folded into `state`; replay continues after it.
    last_sequence: u64,
    /// Application state.
    #[schema(value_type = Object)]
    state: Box<RawValue>,
    /// When it was stored (answers only).
    #[serde(default, skip_serializing_if = "Option::is_none", skip_deserializing)]
    created_at: Option<String>,
}

/// A room's latest snapshot.
#[utoipa::path(
    get,
    path = "/rooms/{room}/snapshot",
    tag = "rooms",
    params(("room" = String, Path, description = "The room, URL-encoded")),
    responses((status = 200, body = SnapshotIo), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn get_snapshot(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<SnapshotIo>, ApiError> {
    let room = parse_room(&gw, &raw)?;
    caller.allow(&gw, Scope::Read, AuthAction::Replay, &room).await?;
    let s = gw
        .engine
        .get_snapshot(&room)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no snapshot of {room}")))?;
    Ok(Json(SnapshotIo {
        last_sequence: s.last_sequence,
        state: s.state,
        created_at: Some(s.created_at.to_string()),
    }))
}

/// Stores (replaces) a room's snapshot.
#[utoipa::path(
    put,
    path = "/rooms/{room}/snapshot",
    tag = "rooms",
    params(("room" = String, Path, description = "The room, URL-encoded")),
    request_body = SnapshotIo,
    responses((status = 200, body = SnapshotIo), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn put_snapshot(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Path(raw): Path<String>,
    Body(body): Body<SnapshotIo>,
) -> Result<Json<SnapshotIo>, ApiError> {
    let room = parse_room(&gw, &raw)?;
    caller.key_for(Scope::Admin, Some(&RoomPattern::Exact(room.clone())))?;
    let s = gw.engine.snapshot(&room, body.last_sequence, &body.state).await?;
    Ok(Json(SnapshotIo {
        last_sequence: s.last_sequence,
        state: s.state,
        created_at: Some(s.created_at.to_string()),
    }))
}
