//! Who may do what: the subscriber id bound to the token's `sub`, per-action
//! grants in the token, room tokens that open one room, and the authorize
//! hook — one set of rules for WebSocket, SSE and the HTTP API.
//!
//! Grants (claim `zps` by default):
//! `{"zps": {"subscribe": ["chat:*"], "publish": ["chat:42"], "presence": ["chat:*"]}}`.
//! `subscribe` also covers acks and history unless a `history` list is given;
//! an action without a list is denied. A grant to publish opens client
//! publishing for those rooms even where `allow_client_publish` is off.
//!
//! Room tokens (claim `zps_room`): `{"zps_room": {"room": "private:7",
//! "actions": ["subscribe", "presence"]}, "exp": …, "sub": …}`, signed with the
//! gateway's key, given with `subscribe` (`roomToken`) or on an SSE URL. They
//! open that one room for those actions, for their lifetime, to the `sub` they
//! name (or to anyone holding them when they name none).

use std::collections::HashMap;

use zps_core::{Room, RoomPattern};
use zps_protocol::ErrorCode;

use crate::auth::{AuthAction, AuthorizeRequest, Identity, TokenError, claim_allows, unix_now};
use crate::gateway_state::GatewayState;
use crate::session::Refusal;

/// The claim a room token carries; a connection token must not carry it.
pub const ROOM_TOKEN_CLAIM: &str = "zps_room";

/// The separator between a user (`sub`) and one of its devices in a subscriber id.
pub const DEVICE_SEPARATOR: char = '#';

/// The grant list name for an action.
fn grant_key(action: AuthAction) -> &'static str {
    match action {
        AuthAction::Subscribe | AuthAction::Ack => "subscribe",
        AuthAction::Replay => "history",
        AuthAction::Publish => "publish",
        AuthAction::Presence => "presence",
    }
}

fn patterns(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// What the token's grants say about `action` on `target`: `None` when the
/// token carries no grants (other rules decide).
pub(crate) fn granted(
    gw: &GatewayState,
    identity: &Identity,
    target: &RoomPattern,
    action: AuthAction,
) -> Option<bool> {
    let claim = gw.config.auth.grants_claim.as_deref()?;
    let grants = identity.claims.get(claim)?.as_object()?;
    let list = grants.get(grant_key(action)).or_else(|| {
        (action == AuthAction::Replay)
            .then(|| grants.get("subscribe"))
            .flatten()
    });
    Some(list.is_some_and(|l| claim_allows(&patterns(l), target)))
}

/// The subscriber id a connection may use: with a verified token, its `sub`
/// or `sub#device`; without token verification, whatever the client says.
pub(crate) fn bind_subscriber(
    gw: &GatewayState,
    identity: &Identity,
    requested: Option<&str>,
) -> Result<String, Refusal> {
    if gw.verifier.is_none() {
        return requested
            .map(str::to_owned)
            .ok_or_else(|| Refusal::new(ErrorCode::Malformed, "subscriberId is required"));
    }
    let Some(sub) = identity.subject.as_deref() else {
        return Err(Refusal::new(
            ErrorCode::Unauthorized,
            "the token has no `sub`: the subscriber id is bound to it",
        ));
    };
    match requested {
        None => Ok(sub.to_owned()),
        Some(id) if owns_subscriber(sub, id) => Ok(id.to_owned()),
        Some(id) => Err(Refusal::new(
            ErrorCode::Forbidden,
            format!("subscriberId `{id}` is not yours: use the token's sub or `sub{DEVICE_SEPARATOR}device`"),
        )),
    }
}

/// Whether the user `sub` owns subscriber id `id` (`sub`, or `sub#device`).
pub(crate) fn owns_subscriber(sub: &str, id: &str) -> bool {
    match id.split_once(DEVICE_SEPARATOR) {
        None => id == sub,
        Some((user, device)) => user == sub && !device.is_empty(),
    }
}

/// Refuses tokens that cannot identify a connection: room tokens, and
/// subjects holding the device separator (their ids would be ambiguous).
pub(crate) fn check_connection_token(identity: &Identity) -> Result<(), TokenError> {
    if identity.claims.contains_key(ROOM_TOKEN_CLAIM) {
        return Err(TokenError::Invalid(
            "a room token cannot open a connection".into(),
        ));
    }
    if identity
        .subject
        .as_deref()
        .is_some_and(|s| s.contains(DEVICE_SEPARATOR))
    {
        return Err(TokenError::Invalid(format!(
            "`sub` must not contain `{DEVICE_SEPARATOR}` (it separates devices)"
        )));
    }
    Ok(())
}

/// What a verified room token opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoomGrant {
    actions: Vec<String>,
    expires_at: Option<u64>,
}

impl RoomGrant {
    fn allows(&self, action: AuthAction) -> bool {
        let key = grant_key(action);
        let live = self.expires_at.is_none_or(|exp| unix_now() < exp);
        live && self
            .actions
            .iter()
            .any(|a| a == key || (key == "history" && a == "subscribe"))
    }
}

/// Room grants a connection collected from room tokens.
pub(crate) type RoomGrants = HashMap<Room, RoomGrant>;

/// Verifies a room token for a connection of `identity`: the room it opens
/// (which must be `expected` when given) and what for.
pub(crate) async fn verify_room_token(
    gw: &GatewayState,
    identity: &Identity,
    expected: Option<&Room>,
    token: &str,
) -> Result<(Room, RoomGrant), Refusal> {
    let denied = |why: String| {
        let r = Refusal::new(ErrorCode::AccessDenied, format!("room token refused: {why}"));
        match expected {
            Some(room) => r.in_room(room.as_str()),
            None => r,
        }
    };
    let verifier = gw
        .verifier
        .as_ref()
        .ok_or_else(|| denied("this gateway verifies no tokens".into()))?;
    let t = verifier.verify(token).await.map_err(|e| denied(e.to_string()))?;
    let grant = t
        .claims
        .get(ROOM_TOKEN_CLAIM)
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| denied(format!("no `{ROOM_TOKEN_CLAIM}` claim")))?;
    let room = grant
        .get("room")
        .and_then(serde_json::Value::as_str)
        .and_then(|r| Room::parse(r).ok())
        .ok_or_else(|| denied("it names no valid room".into()))?;
    if expected.is_some_and(|e| *e != room) {
        return Err(denied("it is for another room".into()));
    }
    if let Some(sub) = &t.subject
        && identity.subject.as_ref() != Some(sub)
    {
        return Err(denied("it was issued to another user".into()));
    }
    let actions = grant.get("actions").map(patterns).unwrap_or_default();
    if actions.is_empty() {
        return Err(denied("it grants no actions".into()));
    }
    metrics::counter!("zps_gateway_room_tokens_total").increment(1);
    Ok((
        room,
        RoomGrant {
            actions,
            expires_at: t.expires_at,
        },
    ))
}

/// Whether `identity` may do `action` on `target`: a room token for the room,
/// else the token's grants and rooms claim; then the authorize hook (4408).
pub(crate) async fn authorize(
    gw: &GatewayState,
    identity: &Identity,
    subscriber_id: Option<&str>,
    room_grants: Option<&RoomGrants>,
    target: &RoomPattern,
    action: AuthAction,
) -> Result<(), Refusal> {
    let denied = || {
        metrics::counter!("zps_gateway_access_denied_total", "action" => action.as_str()).increment(1);
        let room = target.to_string();
        Refusal::new(ErrorCode::AccessDenied, format!("Access denied for room: {room}")).in_room(&room)
    };
    let by_room_token = match (target, room_grants) {
        (RoomPattern::Exact(room), Some(grants)) => grants.get(room).is_some_and(|g| g.allows(action)),
        _ => false,
    };
    if !by_room_token {
        if granted(gw, identity, target, action) == Some(false) {
            return Err(denied());
        }
        let auth = &gw.config.auth;
        if let Some(claim) = &auth.rooms_claim
            && let Some(list) = identity.claims.get(claim)
            && !claim_allows(&patterns(list), target)
        {
            return Err(denied());
        }
    }
    if let Some(hook) = &gw.config.auth.authorize {
        let request = AuthorizeRequest {
            subscriber_id: subscriber_id.unwrap_or_default().to_owned(),
            claims: identity.claims.clone(),
            room: target.to_string(),
            action,
        };
        if !hook(request).await {
            return Err(denied());
        }
    }
    Ok(())
}

/// Whether client publishing (durable when `durable`, else ephemeral) is open
/// for `room`: the gateway's switch, a publish grant, or a room token.
pub(crate) fn may_publish(
    gw: &GatewayState,
    identity: &Identity,
    room_grants: Option<&RoomGrants>,
    room: &Room,
    durable: bool,
) -> bool {
    let switch = if durable {
        gw.config.limits.allow_client_publish
    } else {
        gw.config.limits.allow_client_ephemeral
    };
    switch
        || granted(
            gw,
            identity,
            &RoomPattern::Exact(room.clone()),
            AuthAction::Publish,
        ) == Some(true)
        || room_grants
            .and_then(|g| g.get(room))
            .is_some_and(|g| g.allows(AuthAction::Publish))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_belong_to_their_user_only() {
        assert!(owns_subscriber("alice", "alice"));
        assert!(owns_subscriber("alice", "alice#phone"));
        assert!(owns_subscriber("alice", "alice#phone#2"));
        assert!(!owns_subscriber("alice", "alice#"));
        assert!(!owns_subscriber("alice", "alicex"));
        assert!(!owns_subscriber("alice", "bob"));
        assert!(!owns_subscriber("alice", "bob#alice"));
        assert!(!owns_subscriber("al", "alice#phone"));
    }
}
