//! `POST /api/v1/tokens`: a backend holding an API key mints a short-lived client
//! token, so a browser or app connects to a hosted gateway without the backend
//! running its own JWT code. Needs a gateway that signs with an HS256 secret.

use std::sync::Arc;
use zps_core::middleware::Action;

use axum::Json;
use axum::extract::State;
use jsonwebtoken::{EncodingKey, Header};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zps_protocol::ErrorCode;

use super::caller::Caller;
use super::error::{ApiError, Body, ErrorBody};
use super::keys::Scope;
use crate::auth::{JwtKey, unix_now};
use crate::gateway_state::GatewayState;

/// Longest lifetime of a minted token.
const MAX_TTL_SECONDS: u64 = 24 * 3600;

/// What the token grants.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TokenIn {
    /// The user (`sub`): the subscriber id the client must use.
    #[schema(example = "user-42")]
    subject: String,
    /// Room patterns the client may use (`chat:42`, `chat:*`); each must be within the key's rooms.
    rooms: Vec<String>,
    /// Lifetime in seconds (default 3600, at most 86400).
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

/// A minted token.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenOut {
    /// The JWT to pass as `init.token` (WebSocket) or `token` (SSE).
    token: String,
    /// Its `exp` (Unix seconds).
    expires_at: u64,
}

/// Mints a client token for `subject`, limited to `rooms` (needs a key with
/// the `read` scope covering those rooms, and a gateway with `--jwt-secret`).
#[utoipa::path(
    post,
    path = "/tokens",
    tag = "subscribers",
    request_body = TokenIn,
    responses(
        (status = 200, body = TokenOut), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 501, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn mint(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Body(t): Body<TokenIn>,
) -> Result<Json<TokenOut>, ApiError> {
    let key = caller.key_for(Scope::Read, None)?;
    caller.check(&gw, Action::MintToken, None).await?;
    let Some(JwtKey::Hs256(secret)) = &gw.config.auth.jwt else {
        return Err(ApiError::new(
            ErrorCode::Unsupported,
            "this gateway mints no tokens: it needs an HS256 secret (--jwt-secret)",
        ));
    };
    if t.subject.is_empty() || t.subject.len() > 256 {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            "`subject` must be 1 to 256 characters",
        ));
    }
    if t.rooms.is_empty() || t.rooms.len() > 100 {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            "`rooms` holds 1 to 100 room patterns",
        ));
    }
    for raw in &t.rooms {
        // The socket's checks: reserved scope, the `--scopes` allow-list.
        let pattern = crate::session::parse_target(&gw, raw)?;
        if !key.covers(&pattern) {
            return Err(ApiError::new(
                ErrorCode::AccessDenied,
                format!("API key `{}` is not allowed room {pattern}", key.name),
            ));
        }
    }
    let ttl = t.ttl_seconds.unwrap_or(3600).clamp(1, MAX_TTL_SECONDS);
    let now = unix_now();
    let expires_at = now + ttl;
    let Some(claim) = gw.config.auth.rooms_claim.clone() else {
        // A token whose rooms nobody checks would open every room.
        return Err(ApiError::new(
            ErrorCode::Unsupported,
            "this gateway checks no rooms claim, so a minted token could not be limited to rooms",
        ));
    };
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), t.subject.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), expires_at.into());
    stamp(&gw, &mut claims);
    claims.insert(claim, t.rooms.into());
    let token = jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(secret))
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("cannot sign the token: {e}")))?;
    metrics::counter!("zps_api_tokens_minted_total").increment(1);
    Ok(Json(TokenOut { token, expires_at }))
}

/// What a room token opens.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RoomTokenIn {
    /// The one room it opens (never a pattern).
    #[schema(example = "private:7")]
    room: String,
    /// Actions: `subscribe` (also acks and history), `history`, `publish`, `presence`.
    actions: Vec<String>,
    /// The only user who may use it (`sub`); absent = whoever holds it.
    #[serde(default)]
    subject: Option<String>,
    /// Lifetime in seconds (default 300, at most 86400).
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

/// Mints a room token: it opens one room for some actions, beyond what the
/// client's connection token grants (`roomToken` on `subscribe`, or on an SSE
/// URL). Needs a key with the `admin` scope covering the room.
#[utoipa::path(
    post,
    path = "/room-tokens",
    tag = "subscribers",
    request_body = RoomTokenIn,
    responses(
        (status = 200, body = TokenOut), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody), (status = 501, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn mint_room(
    State(gw): State<Arc<GatewayState>>,
    caller: Caller,
    Body(t): Body<RoomTokenIn>,
) -> Result<Json<TokenOut>, ApiError> {
    let room = super::rooms::parse_room(&gw, &t.room)?;
    caller.key_for(Scope::Admin, Some(&zps_core::RoomPattern::Exact(room.clone())))?;
    caller.check(&gw, Action::MintToken, Some(&room)).await?;
    let Some(JwtKey::Hs256(secret)) = &gw.config.auth.jwt else {
        return Err(ApiError::new(
            ErrorCode::Unsupported,
            "this gateway mints no tokens: it needs an HS256 secret (--jwt-secret)",
        ));
    };
    const ACTIONS: [&str; 4] = ["subscribe", "history", "publish", "presence"];
    if t.actions.is_empty() || t.actions.iter().any(|a| !ACTIONS.contains(&a.as_str())) {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            "`actions` lists some of subscribe, history, publish, presence",
        ));
    }
    let ttl = t.ttl_seconds.unwrap_or(300).clamp(1, MAX_TTL_SECONDS);
    let now = unix_now();
    let expires_at = now + ttl;
    let mut claims = serde_json::Map::new();
    if let Some(sub) = t.subject {
        claims.insert("sub".into(), sub.into());
    }
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), expires_at.into());
    stamp(&gw, &mut claims);
    claims.insert(
        crate::access::ROOM_TOKEN_CLAIM.into(),
        serde_json::json!({"room": room.as_str(), "actions": t.actions}),
    );
    let token = jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(secret))
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("cannot sign the token: {e}")))?;
    metrics::counter!("zps_api_tokens_minted_total").increment(1);
    Ok(Json(TokenOut { token, expires_at }))
}

/// Adds the `iss` and `aud` this gateway requires, so its own tokens pass.
fn stamp(gw: &GatewayState, claims: &mut serde_json::Map<String, serde_json::Value>) {
    if let Some(iss) = &gw.config.auth.issuer {
        claims.insert("iss".into(), iss.clone().into());
    }
    if let Some(aud) = gw.config.auth.audience.as_ref().and_then(|a| a.first()) {
        claims.insert("aud".into(), aud.clone().into());
    }
}
