//! Authentication (JWT) and authorization (scopes, the rooms claim, a per-room hook).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use zps_core::RoomPattern;

use crate::jwks::{JwksError, JwksKeys};

/// Token claims, as decoded (any JSON object).
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// What a connection wants to do with a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthAction {
    /// Receive events (also: ephemeral subscribe, presence).
    Subscribe,
    /// Publish events (durable or ephemeral).
    Publish,
    /// Read history (replay requests, snapshots).
    Replay,
    /// Move a cursor.
    Ack,
    /// Enter a room's presence.
    Presence,
}

impl AuthAction {
    /// Lowercase name (`subscribe`, `publish`, `replay`, `ack`, `presence`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Publish => "publish",
            Self::Replay => "replay",
            Self::Ack => "ack",
            Self::Presence => "presence",
        }
    }
}

/// What the authorize hook is asked.
#[derive(Debug, Clone)]
pub struct AuthorizeRequest {
    /// The connection's subscriber id (from `init`).
    pub subscriber_id: String,
    /// Verified token claims (empty without a token).
    pub claims: Arc<Claims>,
    /// The room, or the wildcard string for `scope:*` subscriptions.
    pub room: String,
    /// The action.
    pub action: AuthAction,
}

/// A per-room authorization callback (library API): return true to allow.
pub type Authorizer = Arc<dyn Fn(AuthorizeRequest) -> BoxFuture<'static, bool> + Send + Sync>;

/// Builds an [`Authorizer`] from an async closure.
///
/// ```
/// use zps_gateway::auth::{authorizer, AuthAction};
/// let only_own_notifications = authorizer(|req| async move {
///     let user = req.claims.get("sub").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
///     req.action != AuthAction::Publish && req.room == format!("notifications:{user}")
/// });
/// # let _ = only_own_notifications;
/// ```
pub fn authorizer<F, Fut>(f: F) -> Authorizer
where
    F: Fn(AuthorizeRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// The key that verifies tokens.
#[derive(Clone)]
pub enum JwtKey {
    /// HMAC-SHA256 shared secret.
    Hs256(Vec<u8>),
    /// RSA public key (PEM).
    Rs256Pem(Vec<u8>),
    /// ECDSA P-256 public key (PEM).
    Es256Pem(Vec<u8>),
    /// Keys fetched from an identity provider's JWKS endpoint, chosen by the token's `kid`.
    Jwks(crate::jwks::JwksConfig),
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str(match self {
            Self::Hs256(_) => "Hs256(..)",
            Self::Rs256Pem(_) => "Rs256Pem(..)",
            Self::Es256Pem(_) => "Es256Pem(..)",
            Self::Jwks(_) => "Jwks(..)",
        })
    }
}

/// Authentication and authorization settings.
#[derive(Clone)]
pub struct AuthConfig {
    /// Verify tokens with this key; when set, `init` must carry a valid token.
    pub jwt: Option<JwtKey>,
    /// Clock skew tolerated on `exp`/`nbf` (default 5 s).
    pub leeway: Option<Duration>,
    /// Allowed room scopes (`None` = any). Other scopes are refused with 4422.
    pub scopes: Option<Vec<String>>,
    /// A token claim listing room patterns the connection may use (`chat:123`, `chat:*`);
    /// without the claim in a token, any room of an allowed scope is allowed.
    /// Default `rooms`; `None` ignores every token's room list.
    pub rooms_claim: Option<String>,
    /// A token claim with per-action grants (`{"subscribe": [...], "publish": [...],
    /// "presence": [...], "history": [...]}`); default `zps`. See [`crate::access`].
    pub grants_claim: Option<String>,
    /// Tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// Tokens must carry one of these in `aud`.
    pub audience: Option<Vec<String>>,
    /// Token claims the gateway copies, beside `sub`, into what it vouches for about a
    /// member: `metadata.publisher` of events clients publish and `metadata.verified` of
    /// presence entries (e.g. `name`, `avatar`).
    pub member_claims: Vec<String>,
    /// Per-room callback, asked last.
    pub authorize: Option<Authorizer>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt: None,
            leeway: None,
            scopes: None,
            rooms_claim: Some("rooms".to_owned()),
            grants_claim: Some("zps".to_owned()),
            issuer: None,
            audience: None,
            member_claims: Vec::new(),
            authorize: None,
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt", &self.jwt)
            .field("scopes", &self.scopes)
            .field("rooms_claim", &self.rooms_claim)
            .field("grants_claim", &self.grants_claim)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("member_claims", &self.member_claims)
            .field("authorize", &self.authorize.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A token is required but none was given.
    #[error("a token is required")]
    Missing,
    /// The token expired.
    #[error("token expired")]
    Expired,
    /// Anything else: bad signature, wrong algorithm (including `none`), malformed, not yet valid.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// A verified identity.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Claims (empty when no token was verified).
    pub claims: Arc<Claims>,
    /// `exp` (Unix seconds), when present.
    pub expires_at: Option<u64>,
    /// `sub`, when present.
    pub subject: Option<String>,
    /// What the gateway vouches for about this member, built once per token
    /// (see [`crate::attest`]) instead of on every publish.
    pub(crate) attested: std::sync::OnceLock<Option<serde_json::Value>>,
}

/// Verifies tokens: one key and one algorithm, or a JWKS where the token's `kid`
/// picks the key and the key fixes the algorithm.
#[derive(Clone)]
pub struct JwtVerifier {
    keys: KeySource,
    validation: Validation,
}

#[derive(Clone)]
enum KeySource {
    Fixed(DecodingKey),
    Jwks(Arc<JwksKeys>),
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .field("jwks", &matches!(self.keys, KeySource::Jwks(_)))
            .finish()
    }
}

/// Why a verifier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A PEM key does not parse.
    #[error(transparent)]
    Pem(#[from] jsonwebtoken::errors::Error),
    /// The JWKS settings are unusable.
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

impl JwtVerifier {
    /// A verifier for `key`; fails when a PEM key cannot be parsed or a JWKS URL is not HTTPS.
    /// A JWKS is fetched on first use (or by [`JwtVerifier::load_keys`]), then on its schedule.
    pub fn new(key: &JwtKey, leeway: Duration) -> Result<Self, KeyError> {
        let (keys, alg) = match key {
            JwtKey::Hs256(secret) => (
                KeySource::Fixed(DecodingKey::from_secret(secret)),
                Algorithm::HS256,
            ),
            JwtKey::Rs256Pem(pem) => (
                KeySource::Fixed(DecodingKey::from_rsa_pem(pem)?),
                Algorithm::RS256,
            ),
            JwtKey::Es256Pem(pem) => (KeySource::Fixed(DecodingKey::from_ec_pem(pem)?), Algorithm::ES256),
            // Replaced per token by the algorithm of the key its `kid` names.
            JwtKey::Jwks(config) => (
                KeySource::Jwks(Arc::new(JwksKeys::new(config.clone())?)),
                Algorithm::RS256,
            ),
        };
        // Exactly one algorithm: `alg: none` and algorithm confusion are refused.
        let mut validation = Validation::new(alg);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = leeway.as_secs();
        validation.required_spec_claims = ["exp".to_owned()].into_iter().collect();
        validation.validate_aud = false;
        Ok(Self { keys, validation })
    }

    /// Also requires `iss` to be `issuer` and `aud` to hold one of `audience`.
    pub fn with_claims(mut self, issuer: Option<&str>, audience: Option<&[String]>) -> Self {
        if let Some(iss) = issuer {
            self.validation.set_issuer(&[iss]);
            self.validation.required_spec_claims.insert("iss".to_owned());
        }
        if let Some(aud) = audience {
            self.validation.set_audience(aud);
            self.validation.validate_aud = true;
            self.validation.required_spec_claims.insert("aud".to_owned());
        }
        self
    }

    /// Fetches the JWKS now (no-op for a fixed key): call at startup to fail fast on a
    /// wrong URL or CA. Returns how many signing keys were loaded.
    pub async fn load_keys(&self) -> Result<usize, JwksError> {
        match &self.keys {
            KeySource::Fixed(_) => Ok(1),
            KeySource::Jwks(keys) => keys.refresh().await,
        }
    }

    /// Starts the scheduled JWKS refresh (no-op for a fixed key or outside a runtime).
    pub(crate) fn start_refresh(&self) {
        if let KeySource::Jwks(keys) = &self.keys {
            keys.start_refresh();
        }
    }

    /// Verifies signature, algorithm, `exp` and `nbf` (and `iss`/`aud` when set).
    pub async fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        match &self.keys {
            KeySource::Fixed(key) => self.decode(token, key, &self.validation),
            KeySource::Jwks(keys) => {
                let header =
                    jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
                let kid = header.kid.ok_or_else(|| {
                    TokenError::Invalid("the token has no kid; keys come from a JWKS".into())
                })?;
                let Some(signing) = keys.key(&kid).await else {
                    return Err(TokenError::Invalid("the token's kid is not in the JWKS".into()));
                };
                let mut validation = self.validation.clone();
                validation.algorithms = vec![signing.algorithm];
                self.decode(token, &signing.key, &validation)
            }
        }
    }

    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        validation: &Validation,
    ) -> Result<Identity, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        match jsonwebtoken::decode::<Claims>(token, key, validation) {
            Ok(data) => {
                let claims = data.claims;
                Ok(Identity {
                    expires_at: claims.get("exp").and_then(serde_json::Value::as_u64),
                    subject: claims.get("sub").and_then(|v| v.as_str()).map(str::to_owned),
                    claims: Arc::new(claims),
                    attested: std::sync::OnceLock::new(),
                })
            }
            Err(e) => match e.kind() {
                ErrorKind::ExpiredSignature => Err(TokenError::Expired),
                _ => Err(TokenError::Invalid(e.to_string())),
            },
        }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether the rooms claim allows `target` (a room or a `scope:*` string).
pub fn claim_allows(patterns: &[String], target: &RoomPattern) -> bool {
    patterns.iter().any(|p| match RoomPattern::parse(p) {
        Ok(RoomPattern::Exact(room)) => matches!(target, RoomPattern::Exact(t) if *t == room),
        Ok(RoomPattern::Scope(scope)) => target.scope() == &*scope,
        Err(_) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_claim_matching() {
        let claim = vec!["chat:123".to_owned(), "order:*".to_owned(), "bogus".to_owned()];
        let p = |s: &str| RoomPattern::parse(s).unwrap();
        assert!(claim_allows(&claim, &p("chat:123")));
        assert!(!claim_allows(&claim, &p("chat:1234")));
        assert!(
            !claim_allows(&claim, &p("chat:*")),
            "an exact grant does not grant the wildcard"
        );
        assert!(claim_allows(&claim, &p("order:9")));
        assert!(claim_allows(&claim, &p("order:*")));
        assert!(!claim_allows(&claim, &p("orders:1")));
    }
}
