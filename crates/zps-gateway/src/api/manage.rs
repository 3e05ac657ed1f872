//! Cursors, connections, dead letters, pruning.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use zps_core::{DlqEntry, PublishRequest, RoomPattern};

use super::caller::Caller;
use super::error::{ApiError, Body, ErrorBody, Path, Query};
use super::keys::Scope;
use super::rooms::parse_room;
use crate::auth::AuthAction;
use crate::cluster::{KickOrder, disconnect_everywhere};
use crate::gateway_state::GatewayState;
use zps_core::middleware::Action;

/// A subscriber's position in a room.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CursorIo {
    /// The highest processed sequence (cursors never move back).
    sequence: u64,
}

/// A client may only touch its own cursors: its token's `sub` or `sub#device`.
fn own_subscriber(caller: &Caller, id: &str) -> Result<(), ApiError> {
    if let Caller::Client(identity) = caller
        && !identity
            .subject
            .as_deref()
            .is_some_and(|sub| crate::access::owns_subscriber(sub, id))
    {
        return Err(ApiError::forbidden(
            "a client may only use its own subscriber ids (the token's `sub`, or `sub#device`)",
        ));
    }
    Ok(())
}

/// A subscriber's ack cursor in a room.
#[utoipa::path(
    get,
    path = "/subscribers/{id}/cursors/{room}",
    tag = "subscribers",
    params(("id" = String, Path, description = "Subscriber id"), ("room" = String, Path, description = "The room, URL-encoded")),
    responses((status = 200, body = CursorIo), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn get_cursor(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Path((id, raw)): Path<(String, String)>,
) -> Result<Json<CursorIo>, ApiError> {
    let room = parse_room(&gw, &raw)?;
    own_subscriber(&caller, &id)?;
    caller.allow(&gw, Scope::Read, AuthAction::Ack, &room).await?;
    caller.check(&gw, Action::GetCursor, Some(&room)).await?;
    let sequence = gw
        .engine
        .cursor(&room, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{id} has no cursor in {room}")))?;
    Ok(Json(CursorIo { sequence }))
}

/// Moves a subscriber's cursor forward (an ack; it never moves back). Clients
/// may ack for themselves; an `admin` key for anyone.
#[utoipa::path(
    put,
    path = "/subscribers/{id}/cursors/{room}",
    tag = "subscribers",
    params(("id" = String, Path, description = "Subscriber id"), ("room" = String, Path, description = "The room, URL-encoded")),
    request_body = CursorIo,
    responses((status = 200, description = "The stored cursor", body = CursorIo), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn put_cursor(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Path((id, raw)): Path<(String, String)>,
    Body(body): Body<CursorIo>,
) -> Result<Json<CursorIo>, ApiError> {
    let room = parse_room(&gw, &raw)?;
    own_subscriber(&caller, &id)?;
    caller.allow(&gw, Scope::Admin, AuthAction::Ack, &room).await?;
    let sequence = gw.engine.ack(&room, body.sequence, &id).await?;
    Ok(Json(CursorIo { sequence }))
}

/// Why a connection is closed by an operator.
#[derive(Debug, Default, Deserialize, ToSchema, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct KickIn {
    /// Told to the client in an `error` message before the close.
    reason: Option<String>,
    /// Refuse the subscriber's reconnections for this long.
    ban_seconds: Option<u64>,
}

/// How many connections were closed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Closed {
    /// Connections closed on this gateway (other nodes close theirs too).
    closed: usize,
}

/// Closes every connection of a subscriber (close code 4403), on every gateway
/// of the cluster on Redis, PostgreSQL and hybrid, optionally refusing its
/// reconnections for a while; `closed` counts this gateway's.
#[utoipa::path(
    post,
    path = "/subscribers/{id}/disconnect",
    tag = "subscribers",
    params(("id" = String, Path, description = "Subscriber id")),
    request_body = KickIn,
    responses((status = 200, body = Closed), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn disconnect_subscriber(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<KickIn>,
) -> Result<Json<Closed>, ApiError> {
    caller.unlimited_key(Scope::Admin)?;
    caller.check(&gw, Action::Kick, None).await?;
    let order = KickOrder {
        subscriber: id,
        reason: body
            .reason
            .unwrap_or_else(|| "disconnected by an operator".into()),
        ban_seconds: body.ban_seconds,
    };
    let closed = disconnect_everywhere(&gw, order).await;
    Ok(Json(Closed { closed }))
}

/// Closes one connection on this gateway (close code 4403).
#[utoipa::path(
    delete,
    path = "/connections/{id}",
    tag = "subscribers",
    params(("id" = String, Path, description = "Connection id (from `ready`)"), KickIn),
    responses((status = 200, body = Closed), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn kick_connection(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<KickIn>,
) -> Result<Json<Closed>, ApiError> {
    caller.unlimited_key(Scope::Admin)?;
    caller.check(&gw, Action::Kick, None).await?;
    let conn = gw
        .find_connection(&id)
        .ok_or_else(|| ApiError::not_found(format!("no connection {id} on this gateway")))?;
    if let (Some(secs), Some(sub)) = (q.ban_seconds, conn.subscriber()) {
        gw.ban(&sub, Duration::from_secs(secs));
    }
    let reason = q.reason.unwrap_or_else(|| "disconnected by an operator".into());
    let closed = gw.kick(|c| c.key.as_ref() == id, &reason);
    Ok(Json(Closed { closed }))
}

/// `GET /rooms/{room}/dlq` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct DlqParams {
    /// Entries after this entry id.
    after: Option<u64>,
    /// Page size (default 100, at most 1 000).
    limit: Option<usize>,
}

/// A page of dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DlqPage {
    /// Oldest first.
    #[schema(value_type = Vec<Object>)]
    entries: Vec<DlqEntry>,
    /// Entries in the room's queue.
    total: u64,
}

/// A room's dead letters: events whose handler failed every retry.
#[utoipa::path(
    get,
    path = "/rooms/{room}/dlq",
    tag = "operations",
    params(("room" = String, Path, description = "The room, URL-encoded"), DlqParams),
    responses((status = 200, body = DlqPage), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn dlq_list(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Path(raw): Path<String>,
    Query(p): Query<DlqParams>,
) -> Result<Json<DlqPage>, ApiError> {
    let room = parse_room(&gw, &raw)?;
    caller.key_for(Scope::Read, Some(&RoomPattern::Exact(room.clone())))?;
    let dlq = gw.engine.dlq(room);
    let entries = dlq
        .list_after(p.after.unwrap_or(0), p.limit.unwrap_or(100).clamp(1, 1_000))
        .await?;
    let total = dlq.len().await?;
    Ok(Json(DlqPage { entries, total }))
}

/// `GET /dlq` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct DlqIndexParams {
    /// Only rooms whose name starts with this.
    prefix: Option<String>,
    /// Rooms after this one (the previous page's `next`).
    after: Option<String>,
    /// Page size (default 100, at most 1 000).
    limit: Option<usize>,
}

/// A room whose dead-letter queue is not empty.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DlqRoomOut {
    /// The room.
    room: String,
    /// Dead letters it holds.
    size: u64,
}

/// The rooms holding dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DlqIndex {
    /// In room-name order.
    rooms: Vec<DlqRoomOut>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// Every room with dead letters and how many, from the store (cluster-wide on
/// the shared providers): where an operator starts without knowing the rooms.
/// A key limited to some rooms sees only those.
#[utoipa::path(
    get,
    path = "/dlq",
    tag = "operations",
    params(DlqIndexParams),
    responses((status = 200, body = DlqIndex), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn dlq_index(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Query(p): Query<DlqIndexParams>,
) -> Result<Json<DlqIndex>, ApiError> {
    let key = caller.key_for(Scope::Read, None)?;
    let limit = p.limit.unwrap_or(100).clamp(1, 1_000);
    let prefix = p.prefix.unwrap_or_default();
    let mut after = p.after.as_deref().map(|a| parse_room(&gw, a)).transpose()?;
    let mut rooms = Vec::new();
    // Rooms the key may not see are skipped, so a page may take several reads.
    loop {
        let page = gw.engine.dlq_rooms(&prefix, after.as_ref(), limit + 1).await?;
        let exhausted = page.len() <= limit;
        after = page.last().map(|r| r.room.clone());
        rooms.extend(
            page.into_iter()
                .filter(|r| key.covers(&RoomPattern::Exact(r.room.clone())))
                .map(|r| DlqRoomOut {
                    room: r.room.as_str().to_owned(),
                    size: r.len,
                }),
        );
        if exhausted || rooms.len() > limit {
            break;
        }
    }
    let next = (rooms.len() > limit).then(|| {
        rooms.truncate(limit);
        rooms.last().map(|r| r.room.clone()).unwrap_or_default()
    });
    Ok(Json(DlqIndex { rooms, next }))
}

/// The event published again by a dead-letter replay.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Replayed {
    /// The new event's id (`<original id>:dlq:<entry id>`: replaying twice stores it once).
    id: String,
    /// Its sequence.
    sequence: u64,
    /// True when this entry had been replayed before.
    duplicate: bool,
}

/// Publishes a dead-lettered event to its room again (as a new event, so every
/// subscriber gets it) and removes the entry.
#[utoipa::path(
    post,
    path = "/rooms/{room}/dlq/{entry}/replay",
    tag = "operations",
    params(("room" = String, Path, description = "The room, URL-encoded"), ("entry" = u64, Path, description = "Entry id")),
    responses((status = 200, body = Replayed), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn dlq_replay(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Path((raw, entry)): Path<(String, u64)>,
) -> Result<Json<Replayed>, ApiError> {
    let room = parse_room(&gw, &raw)?;
    caller.key_for(Scope::Admin, Some(&RoomPattern::Exact(room.clone())))?;
    let dlq = gw.engine.dlq(room.clone());
    let found = dlq
        .list_after(entry.saturating_sub(1), 1)
        .await?
        .into_iter()
        .find(|e| e.entry_id == entry)
        .ok_or_else(|| ApiError::not_found(format!("no dead letter {entry} in {room}")))?;
    let e = &found.event;
    let mut req = PublishRequest::raw(room, e.event_type.clone(), e.payload.clone())
        .with_id(format!("{}:dlq:{entry}", e.id));
    req.metadata = e.metadata.clone();
    req.encrypted = e.encrypted;
    let outcome = gw.engine.publish_outcome(req).await?;
    dlq.remove(&[entry]).await?;
    Ok(Json(Replayed {
        id: outcome.envelope.id.clone(),
        sequence: outcome.envelope.sequence,
        duplicate: outcome.duplicate,
    }))
}

/// Removes a dead letter.
#[utoipa::path(
    delete,
    path = "/rooms/{room}/dlq/{entry}",
    tag = "operations",
    params(("room" = String, Path, description = "The room, URL-encoded"), ("entry" = u64, Path, description = "Entry id")),
    responses((status = 204, description = "Removed"), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn dlq_remove(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Path((raw, entry)): Path<(String, u64)>,
) -> Result<Response, ApiError> {
    let room = parse_room(&gw, &raw)?;
    caller.key_for(Scope::Admin, Some(&RoomPattern::Exact(room.clone())))?;
    match gw.engine.dlq(room.clone()).remove(&[entry]).await? {
        0 => Err(ApiError::not_found(format!("no dead letter {entry} in {room}"))),
        _ => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// How many expired events were removed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Pruned {
    /// Events removed.
    removed: u64,
}

/// Deletes expired events now (providers also prune on their own schedule).
#[utoipa::path(
    post,
    path = "/prune",
    tag = "operations",
    responses((status = 200, body = Pruned), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn prune(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
) -> Result<Json<Pruned>, ApiError> {
    caller.unlimited_key(Scope::Admin)?;
    let removed = gw.engine.prune_expired().await?;
    Ok(Json(Pruned { removed }))
}
