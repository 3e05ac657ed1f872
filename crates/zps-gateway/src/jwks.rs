//! Token-signing keys fetched from an identity provider's JWKS endpoint.
//!
//! Keys are cached by `kid`. The set is fetched again on a schedule and when a
//! token names a `kid` the cache does not hold — at most once per
//! [`JwksConfig::min_refetch`], so a flood of forged `kid`s cannot turn the
//! gateway into a load generator against the identity provider. A token whose
//! `kid` is still unknown after that is refused: there is no fallback key.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

/// Where and how often to fetch the key set.
#[derive(Debug, Clone)]
pub struct JwksConfig {
    /// The JWKS document (`https://…/.well-known/jwks.json`); plain `http://` only on loopback.
    pub url: String,
    /// Refetch on this schedule even when every `kid` is known (keys get revoked too).
    pub refresh_every: Duration,
    /// Least time between two fetches caused by unknown `kid`s.
    pub min_refetch: Duration,
    /// Extra trusted root certificates (PEM), beside the system's, for a private CA.
    pub ca_pem: Option<Vec<u8>>,
    /// Time allowed for one fetch.
    pub timeout: Duration,
}

impl JwksConfig {
    /// Defaults for `url`: refresh every 5 minutes, refetch at most every 10 s, 5 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            refresh_every: Duration::from_secs(300),
            min_refetch: Duration::from_secs(10),
            ca_pem: None,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why the key set could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The URL is not HTTPS (and not loopback) or does not parse.
    #[error("JWKS URL {0}: must be https:// (plain http:// only to a loopback address)")]
    InsecureUrl(String),
    /// The CA file is not PEM.
    #[error("JWKS CA certificate: {0}")]
    Ca(String),
    /// The request failed or the server answered with an error status.
    #[error("fetching the JWKS failed: {0}")]
    Fetch(String),
    /// The document is not a JWK set, or holds no usable signing key.
    #[error("the JWKS document is unusable: {0}")]
    Document(String),
}

/// One verification key and the only algorithm it is accepted with.
#[derive(Clone)]
pub(crate) struct SigningKey {
    pub(crate) key: DecodingKey,
    pub(crate) algorithm: Algorithm,
}

/// Decides when an unknown `kid` may cause a fetch, with time passed in (testable
/// without a clock). Scheduled and startup fetches do not count: a key rotated
/// just after startup is still picked up on first sight.
#[derive(Debug, Default)]
pub(crate) struct FetchGate {
    last: Option<Instant>,
}

impl FetchGate {
    /// Whether an unknown `kid` may trigger a fetch at `now` (the first one always may).
    pub(crate) fn may_refetch(&self, now: Instant, min_gap: Duration) -> bool {
        self.last
            .is_none_or(|last| now.saturating_duration_since(last) >= min_gap)
    }

    /// Records a refetch attempt (successful or not: failures are rate-limited too).
    pub(crate) fn fetched(&mut self, now: Instant) {
        self.last = Some(now);
    }
}

/// The cached key set and the client that refreshes it.
pub(crate) struct JwksKeys {
    config: JwksConfig,
    http: reqwest::Client,
    keys: RwLock<Arc<HashMap<String, SigningKey>>>,
    gate: Mutex<FetchGate>,
    /// One fetch at a time; waiters then read what it brought.
    fetching: tokio::sync::Mutex<()>,
}

impl JwksKeys {
    /// A cache for `config`; fetches nothing yet.
    pub(crate) fn new(config: JwksConfig) -> Result<Self, JwksError> {
        check_url(&config.url)?;
        let mut http = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("zero-pub-sub/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &config.ca_pem {
            for cert in
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| JwksError::Ca(e.to_string()))?
            {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http.build().map_err(|e| JwksError::Fetch(e.to_string()))?;
        Ok(Self {
            config,
            http,
            keys: RwLock::new(Arc::new(HashMap::new())),
            gate: Mutex::new(FetchGate::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The key for `kid`, fetching the set again if it is unknown and the gate allows.
    pub(crate) async fn key(&self, kid: &str) -> Option<SigningKey> {
        if let Some(k) = self.keys.read().get(kid) {
            return Some(k.clone());
        }
        let _one = self.fetching.lock().await;
        // A fetch that finished while this one waited may have brought it.
        if let Some(k) = self.keys.read().get(kid) {
            return Some(k.clone());
        }
        {
            let mut gate = self.gate.lock();
            let now = Instant::now();
            if !gate.may_refetch(now, self.config.min_refetch) {
                return None;
            }
            gate.fetched(now);
        }
        if let Err(e) = self.fetch_locked().await {
            tracing::warn!(error = %e, "JWKS refetch for an unknown kid failed");
        }
        self.keys.read().get(kid).cloned()
    }

    /// Fetches the set now (startup and the schedule); keeps the old keys on failure.
    pub(crate) async fn refresh(&self) -> Result<usize, JwksError> {
        let _one = self.fetching.lock().await;
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<usize, JwksError> {
        let response = self
            .http
            .get(&self.config.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| JwksError::Fetch(e.without_url().to_string()))?;
        let body = response
            .bytes()
            .await
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        let keys = parse_key_set(&body)?;
        let n = keys.len();
        *self.keys.write() = Arc::new(keys);
        tracing::info!(keys = n, "JWKS loaded");
        Ok(n)
    }

    /// Refreshes on the schedule for as long as the cache is alive.
    pub(crate) fn start_refresh(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        let every = self.config.refresh_every.max(Duration::from_secs(1));
        runtime.spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(keys) = weak.upgrade() else { return };
                if let Err(e) = keys.refresh().await {
                    tracing::warn!(error = %e, "scheduled JWKS refresh failed; keeping the previous keys");
                }
            }
        });
    }
}

fn check_url(url: &str) -> Result<(), JwksError> {
    let parsed = reqwest::Url::parse(url).map_err(|_| JwksError::InsecureUrl(url.to_owned()))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(JwksError::InsecureUrl(url.to_owned())),
    }
}

/// The signing keys of a JWKS document, by `kid`. Keys without a `kid`, symmetric
/// (`oct`) keys, encryption-only keys and unsupported algorithms are skipped.
pub(crate) fn parse_key_set(body: &[u8]) -> Result<HashMap<String, SigningKey>, JwksError> {
    use jsonwebtoken::jwk::PublicKeyUse;
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| JwksError::Document(e.to_string()))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = &jwk.common.key_id else { continue };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithm = match (jwk.common.key_algorithm, &jwk.algorithm) {
            (_, AlgorithmParameters::OctetKey(_)) => continue,
            (Some(alg), _) => match Algorithm::from_str(&alg.to_string()) {
                Ok(a) if !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => a,
                _ => continue,
            },
            (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (None, AlgorithmParameters::EllipticCurve(p)) => match p.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => continue,
            },
            (None, AlgorithmParameters::OctetKeyPair(_)) => Algorithm::EdDSA,
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        keys.insert(kid.clone(), SigningKey { key, algorithm });
    }
    if keys.is_empty() {
        return Err(JwksError::Document("no signing key with a kid".into()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_allows_the_first_fetch_then_one_per_gap() {
        let t0 = Instant::now();
        let gap = Duration::from_secs(10);
        let mut gate = FetchGate::default();
        assert!(gate.may_refetch(t0, gap));
        gate.fetched(t0);
        assert!(!gate.may_refetch(t0 + Duration::from_secs(9), gap));
        assert!(gate.may_refetch(t0 + gap, gap));
    }

    #[test]
    fn urls_must_be_https_unless_loopback() {
        assert!(check_url("https://idp.example.com/jwks.json").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
        assert!(check_url("http://[::1]/jwks").is_ok());
        assert!(check_url("http://idp.example.com/jwks.json").is_err());
        assert!(check_url("ftp://127.0.0.1/jwks").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn key_sets_keep_signing_keys_with_a_kid_only() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "use": "sig",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "enc", "crv": "P-256", "use": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]});
        let keys = parse_key_set(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ec"]);
        assert_eq!(keys["ec"].algorithm, Algorithm::ES256);
        assert!(parse_key_set(br#"{"keys": []}"#).is_err());
        assert!(parse_key_set(b"<html>").is_err());
    }
}
