//! `POST /api/v1/publish`, `/broadcast`, `/ephemeral`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use zps_core::{EphemeralRequest, Metadata, PublishOutcome, PublishRequest, Room};
use zps_protocol::ErrorCode;

use super::caller::Caller;
use super::error::{ApiError, Body, ErrorBody, ErrorDetail, RawBody};
use super::keys::Scope;
use super::rooms::parse_room;
use crate::auth::AuthAction;
use crate::gateway_state::GatewayState;

/// Most events in one batch.
const MAX_BATCH: usize = 1_000;

/// An event to store.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct EventIn {
    /// Target room (`scope:id`).
    #[schema(example = "chat:42")]
    room: String,
    /// Event type.
    #[serde(rename = "type")]
    #[schema(example = "message.created")]
    event_type: String,
    /// Any JSON (default `null`).
    #[serde(default)]
    #[schema(value_type = Object)]
    payload: Option<Box<RawValue>>,
    /// Idempotency key: the same id twice stores one event.
    #[serde(default)]
    id: Option<String>,
    /// Time to live in milliseconds.
    #[serde(default)]
    ttl_ms: Option<u64>,
    /// A metadata object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Metadata>,
    /// The payload is ciphertext the server never reads.
    #[serde(default)]
    encrypted: bool,
}

/// An ordered batch: events of one room get ascending sequences in this order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchIn {
    /// The events (at most 1 000).
    events: Vec<EventIn>,
}

/// The body of `POST /publish`: one event, or `{"events": [...]}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) enum PublishIn {
    /// One event.
    One(EventIn),
    /// An ordered batch.
    Batch(BatchIn),
}

/// A stored event's place (the WebSocket `published` answer without its `type`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PublishedOut {
    /// The event id (generated when none was given).
    id: String,
    /// The room.
    room: String,
    /// Its sequence in the room.
    sequence: u64,
    /// True when the id existed: nothing new was stored or delivered.
    duplicate: bool,
}

impl From<&PublishOutcome> for PublishedOut {
    fn from(o: &PublishOutcome) -> Self {
        Self {
            id: o.envelope.id.clone(),
            room: o.envelope.room.to_string(),
            sequence: o.envelope.sequence,
            duplicate: o.duplicate,
        }
    }
}

/// One result of a batch.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum BatchItem {
    /// Stored.
    Ok(PublishedOut),
    /// Refused or failed (the rest of the batch is unaffected).
    Err(ErrorBody),
}

/// The answer to a batch or a broadcast: one result per event, in order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchOut {
    /// Results in request order.
    results: Vec<BatchItem>,
}

fn err_item(e: ApiError) -> BatchItem {
    BatchItem::Err(ErrorBody {
        error: ErrorDetail {
            code: e.code.as_str().to_owned(),
            message: e.message,
        },
    })
}

impl EventIn {
    /// The request to store; a client's event carries what the gateway vouches for
    /// about its publisher (see [`crate::attest::stamp`]), an API key's is trusted as sent.
    fn into_request(
        self,
        room: Room,
        gw: &GatewayState,
        caller: &Caller,
    ) -> Result<PublishRequest, ApiError> {
        let payload = self.payload.unwrap_or_else(zps_core::envelope::null_payload);
        let limit = gw.config.limits.max_payload_bytes;
        if payload.get().len() > limit {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("payload too large: {} bytes (limit {limit})", payload.get().len()),
            ));
        }
        let mut req = PublishRequest::raw(room, self.event_type, payload);
        req.id = self.id;
        req.ttl = self.ttl_ms.map(Duration::from_millis);
        req.metadata = match caller {
            Caller::Client(identity) => crate::attest::stamp(
                self.metadata,
                crate::attest::PUBLISHER_KEY,
                crate::attest::attested(gw, identity),
            ),
            Caller::Key(_) => self.metadata,
        };
        req.encrypted = self.encrypted;
        Ok(req)
    }
}

/// Checks the caller may publish to `raw` and parses it.
async fn publish_target(caller: &Caller, gw: &Arc<GatewayState>, raw: &str) -> Result<Room, ApiError> {
    let room = parse_room(gw, raw)?;
    if let Caller::Client(identity) = caller
        && !crate::access::may_publish(gw, identity, None, &room, true)
    {
        return Err(ApiError::forbidden(
            "client publishing is disabled on this gateway",
        ));
    }
    caller
        .allow(gw, Scope::Publish, AuthAction::Publish, &room)
        .await?;
    Ok(room)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::Malformed,
            zps_protocol::bounded(&format!("invalid JSON body: {e}")),
        )
    })
}

/// Stores one event, or an ordered batch of events.
#[utoipa::path(
    post,
    path = "/publish",
    tag = "publish",
    request_body(content = PublishIn, description = "One event, or `{\"events\": [...]}`"),
    responses(
        (status = 200, description = "Stored (or a duplicate id)", body = PublishedOut),
        (status = 207, description = "A batch: one result per event", body = BatchOut),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn publish(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    struct Probe {
        events: Option<serde::de::IgnoredAny>,
    }
    let batch = parse::<Probe>(&body)?.events.is_some();
    if !batch {
        let event: EventIn = parse(&body)?;
        let room = publish_target(&caller, &gw, &event.room).await?;
        let request = event.into_request(room, &gw, &caller)?;
        let outcome = gw.engine.publish_outcome(request).await?;
        return Ok(Json(PublishedOut::from(&outcome)).into_response());
    }
    let BatchIn { events } = parse(&body)?;
    if events.is_empty() || events.len() > MAX_BATCH {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            format!("a batch holds 1 to {MAX_BATCH} events"),
        ));
    }
    let mut checked = Vec::with_capacity(events.len());
    for event in events {
        checked.push(match publish_target(&caller, &gw, &event.room).await {
            Ok(room) => event.into_request(room, &gw, &caller),
            Err(e) => Err(e),
        });
    }
    let results = store(&gw, checked).await;
    Ok((StatusCode::MULTI_STATUS, Json(BatchOut { results })).into_response())
}

/// Stores the requests that passed their checks as one ordered batch; refusals
/// decided before storage keep their place in the results.
async fn store(gw: &GatewayState, checked: Vec<Result<PublishRequest, ApiError>>) -> Vec<BatchItem> {
    let mut results: Vec<Option<BatchItem>> = Vec::with_capacity(checked.len());
    let (mut requests, mut slots) = (Vec::new(), Vec::new());
    for (i, c) in checked.into_iter().enumerate() {
        match c {
            Ok(req) => {
                requests.push(req);
                slots.push(i);
                results.push(None);
            }
            Err(e) => results.push(Some(err_item(e))),
        }
    }
    for (i, outcome) in slots.into_iter().zip(gw.engine.publish_batch(requests).await) {
        results[i] = Some(match outcome {
            Ok(o) => BatchItem::Ok(PublishedOut::from(&o)),
            Err(e) => err_item(e.into()),
        });
    }
    results.into_iter().flatten().collect()
}

/// One event for many rooms.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct BroadcastIn {
    /// The rooms (at most 1 000).
    rooms: Vec<String>,
    /// Event type.
    #[serde(rename = "type")]
    event_type: String,
    /// Any JSON (default `null`).
    #[serde(default)]
    #[schema(value_type = Object)]
    payload: Option<Box<RawValue>>,
    /// Idempotency key; each room's event gets `id:room`.
    #[serde(default)]
    id: Option<String>,
    /// Time to live in milliseconds.
    #[serde(default)]
    ttl_ms: Option<u64>,
    /// A metadata object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Metadata>,
}

/// Stores the same event in several rooms (an event per room, each with its own sequence).
#[utoipa::path(
    post,
    path = "/broadcast",
    tag = "publish",
    request_body = BroadcastIn,
    responses(
        (status = 207, description = "One result per room, in order", body = BatchOut),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn broadcast(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Body(b): Body<BroadcastIn>,
) -> Result<Response, ApiError> {
    if b.rooms.is_empty() || b.rooms.len() > MAX_BATCH {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            format!("`rooms` holds 1 to {MAX_BATCH} rooms"),
        ));
    }
    let mut checked = Vec::with_capacity(b.rooms.len());
    for raw in &b.rooms {
        let event = EventIn {
            room: raw.clone(),
            event_type: b.event_type.clone(),
            payload: b.payload.clone(),
            // An idempotency key names one event: one per room.
            id: b.id.as_ref().map(|id| format!("{id}:{raw}")),
            ttl_ms: b.ttl_ms,
            metadata: b.metadata.clone(),
            encrypted: false,
        };
        checked.push(match publish_target(&caller, &gw, raw).await {
            Ok(room) => event.into_request(room, &gw, &caller),
            Err(e) => Err(e),
        });
    }
    let results = store(&gw, checked).await;
    Ok((StatusCode::MULTI_STATUS, Json(BatchOut { results })).into_response())
}

/// A not-stored event (typing, cursors).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EphemeralIn {
    /// Target room.
    room: String,
    /// Event type.
    #[serde(rename = "type")]
    event_type: String,
    /// Any JSON (default `null`).
    #[serde(default)]
    #[schema(value_type = Object)]
    payload: Option<Box<RawValue>>,
}

/// Fans an ephemeral event out to the room's live subscribers (nothing stored).
#[utoipa::path(
    post,
    path = "/ephemeral",
    tag = "publish",
    request_body = EphemeralIn,
    responses(
        (status = 202, description = "Fanned out (no body)"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn ephemeral(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Body(e): Body<EphemeralIn>,
) -> Result<Response, ApiError> {
    let room = parse_room(&gw, &e.room)?;
    if let Caller::Client(identity) = &caller
        && !crate::access::may_publish(&gw, identity, None, &room, false)
    {
        return Err(ApiError::forbidden("client ephemeral publishing is disabled"));
    }
    caller
        .allow(&gw, Scope::Publish, AuthAction::Publish, &room)
        .await?;
    let payload = e.payload.unwrap_or_else(zps_core::envelope::null_payload);
    if payload.get().len() > gw.config.limits.max_payload_bytes {
        return Err(ApiError::new(ErrorCode::PayloadTooLarge, "payload too large"));
    }
    gw.engine
        .publish_ephemeral(EphemeralRequest {
            room,
            event_type: e.event_type,
            payload,
            metadata: None,
            origin: None,
        })
        .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}
