//! Who is calling the HTTP API: an API key, a client token, or (on a gateway
//! that verifies no tokens) an anonymous client — and the per-caller rate limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use parking_lot::Mutex;
use zps_core::middleware::{Action, Context};
use zps_core::{Room, RoomPattern};
use zps_protocol::ErrorCode;

use super::error::ApiError;
use super::keys::{ApiKey, Scope, looks_like_key};
use crate::access::{authorize, check_connection_token};
use crate::auth::{AuthAction, Identity, TokenError};
use crate::gateway_state::GatewayState;
use crate::session::parse_target;

/// The authenticated caller of one request.
pub(crate) enum Caller {
    /// A backend or operator key.
    Key(ApiKey),
    /// A client: the token's identity (empty for an anonymous client).
    Client(Identity),
}

impl Caller {
    /// A name for rate limiting and logs (never a secret).
    fn bucket(&self) -> String {
        match self {
            Self::Key(k) => format!("key:{}", k.name),
            Self::Client(id) => match &id.subject {
                Some(sub) => format!("sub:{sub}"),
                None => "anonymous".to_owned(),
            },
        }
    }

    /// Lets policy middleware see, and refuse, an operation the engine does not
    /// run itself (room info, cursor and presence reads, kicks, token minting):
    /// the context carries the action, the room and `extensions["caller"]`.
    pub(crate) async fn check(
        &self,
        gw: &GatewayState,
        action: Action,
        room: Option<&Room>,
    ) -> Result<(), ApiError> {
        let mut ctx = Context::new(action);
        ctx.room = room.cloned();
        ctx.extensions.insert("caller".into(), self.bucket().into());
        gw.engine.check(ctx).await?;
        Ok(())
    }

    /// Requires an API key with `scope` covering `target` (operators only).
    pub(crate) fn key_for(&self, scope: Scope, target: Option<&RoomPattern>) -> Result<&ApiKey, ApiError> {
        let Self::Key(key) = self else {
            return Err(ApiError::forbidden(format!(
                "this operation needs an API key with the `{}` scope",
                scope.as_str()
            )));
        };
        if !key.allows(scope) {
            return Err(ApiError::forbidden(format!(
                "API key `{}` lacks the `{}` scope",
                key.name,
                scope.as_str()
            )));
        }
        if let Some(t) = target
            && !key.covers(t)
        {
            return Err(ApiError::new(
                ErrorCode::AccessDenied,
                format!("API key `{}` is not allowed room {t}", key.name),
            ));
        }
        Ok(key)
    }

    /// Requires an `admin`-style key that is not limited to rooms: for
    /// operations that reach beyond one room (kick, prune).
    pub(crate) fn unlimited_key(&self, scope: Scope) -> Result<&ApiKey, ApiError> {
        let key = self.key_for(scope, None)?;
        if key.limited() {
            return Err(ApiError::new(
                ErrorCode::AccessDenied,
                format!(
                    "API key `{}` is limited to some rooms; this operation needs an unlimited key",
                    key.name
                ),
            ));
        }
        Ok(key)
    }

    /// Allows `action` on `room` for a key with `scope`, or for a client the
    /// socket rules would allow (same claims, hooks and allow-list).
    pub(crate) async fn allow(
        &self,
        gw: &Arc<GatewayState>,
        scope: Scope,
        action: AuthAction,
        room: &Room,
    ) -> Result<(), ApiError> {
        let target = RoomPattern::Exact(room.clone());
        match self {
            Self::Key(_) => self.key_for(scope, Some(&target)).map(|_| ()),
            Self::Client(identity) => {
                parse_target(gw, room.as_str())?;
                authorize(gw, identity, identity.subject.as_deref(), None, &target, action).await?;
                Ok(())
            }
        }
    }
}

impl FromRequestParts<Arc<GatewayState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, gw: &Arc<GatewayState>) -> Result<Self, ApiError> {
        let credential = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| {
                v.to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim)
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::Unauthorized,
                            "use `Authorization: Bearer <key or token>`",
                        )
                    })
            })
            .transpose()?;
        let caller = match credential {
            Some(c) if looks_like_key(c) => match gw.config.api.keys.find(c) {
                Some(key) => Self::Key(key.clone()),
                None => {
                    metrics::counter!("zps_api_auth_failures_total").increment(1);
                    return Err(ApiError::new(ErrorCode::Unauthorized, "unknown API key"));
                }
            },
            Some(token) => match &gw.verifier {
                Some(v) => match v
                    .verify(token)
                    .await
                    .and_then(|i| check_connection_token(&i).map(|()| i))
                {
                    Ok(identity) => Self::Client(identity),
                    Err(e) => {
                        metrics::counter!("zps_api_auth_failures_total").increment(1);
                        return Err(ApiError::new(ErrorCode::Unauthorized, e.to_string()));
                    }
                },
                None => {
                    return Err(ApiError::new(
                        ErrorCode::Unauthorized,
                        "this gateway verifies no client tokens: use an API key",
                    ));
                }
            },
            None if gw.verifier.is_some() => {
                return Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    TokenError::Missing.to_string(),
                ));
            }
            // No verifier: an anonymous client, as on an anonymous socket.
            None => Self::Client(Identity::default()),
        };
        let rate = match &caller {
            Self::Key(k) => k.rate_per_second.unwrap_or(gw.config.api.rate_per_second),
            Self::Client(_) => gw.config.api.rate_per_second,
        };
        if !gw.api_rate.admit(&caller.bucket(), rate) {
            metrics::counter!("zps_api_rate_limited_total").increment(1);
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!("rate limited: at most {rate} requests per second"),
            ));
        }
        Ok(caller)
    }
}

/// Token buckets per caller: `rate` requests per second, a burst of as many.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes one token from `who`'s bucket; false when it is empty.
    pub(crate) fn admit(&self, who: &str, rate: u32) -> bool {
        let rate = f64::from(rate.max(1));
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() > 10_000 {
            // Forget full buckets of idle callers rather than grow without bound.
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < rate);
        }
        let (tokens, at) = buckets.entry(who.to_owned()).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_allow_a_burst_then_the_rate() {
        let r = RateLimiter::default();
        for _ in 0..5 {
            assert!(r.admit("a", 5));
        }
        assert!(!r.admit("a", 5), "the burst is the rate");
        assert!(r.admit("b", 5), "buckets are per caller");
    }
}
