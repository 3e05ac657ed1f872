//! API keys for the HTTP API: stored as SHA-256 hashes, each with scopes and
//! optional room patterns, compared in constant time.
//!
//! A key is `zps_` followed by 43 URL-safe base64 characters (32 random
//! bytes). The gateway never keeps the key itself: `--api-key` values are
//! hashed at start-up, and key files hold only `sha256:<hex>` hashes.

use std::collections::HashSet;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zps_core::RoomPattern;

use crate::auth::claim_allows;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Publish events (durable, batch, broadcast, ephemeral).
    Publish,
    /// Read rooms, history, presence, snapshots, cursors, dead letters.
    Read,
    /// Everything that changes state for others: kick, cursors, snapshots,
    /// presence on another's connection, dead-letter replay and removal, prune.
    Admin,
}

impl Scope {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Result<Self, KeyError> {
        match s.trim() {
            "publish" => Ok(Self::Publish),
            "read" => Ok(Self::Read),
            "admin" => Ok(Self::Admin),
            other => Err(KeyError(format!(
                "unknown scope `{other}` (publish, read, admin)"
            ))),
        }
    }
}

/// A key definition that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid API key definition: {0}")]
pub struct KeyError(String);

/// One key as configured (in a key file, or built from `--api-key`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// A name for logs and metrics (never the key).
    pub name: String,
    /// `sha256:<64 hex digits>` of the key.
    pub hash: String,
    /// Granted scopes; `admin` does not imply the others.
    pub scopes: Vec<Scope>,
    /// Room patterns the key is limited to (`chat:*`, `chat:42`); absent = any room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// Requests per second allowed (a burst of as many); absent = the gateway default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<u32>,
}

/// A key file: `[[keys]]` tables of [`KeySpec`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// The keys.
    #[serde(default)]
    pub keys: Vec<KeySpec>,
}

/// A verified caller's rights.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub(crate) name: String,
    digest: [u8; 32],
    scopes: HashSet<Scope>,
    rooms: Option<Vec<String>>,
    pub(crate) rate_per_second: Option<u32>,
}

impl ApiKey {
    /// A key from its specification.
    pub fn from_spec(spec: &KeySpec) -> Result<Self, KeyError> {
        let hex_digest = spec
            .hash
            .strip_prefix("sha256:")
            .ok_or_else(|| KeyError(format!("key `{}`: hash must start with sha256:", spec.name)))?;
        let bytes = hex::decode(hex_digest).map_err(|e| KeyError(format!("key `{}`: {e}", spec.name)))?;
        let digest: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError(format!("key `{}`: a SHA-256 hash has 64 hex digits", spec.name)))?;
        if spec.scopes.is_empty() {
            return Err(KeyError(format!("key `{}` has no scopes", spec.name)));
        }
        if let Some(rooms) = &spec.rooms {
            for r in rooms {
                RoomPattern::parse(r).map_err(|e| KeyError(format!("key `{}`: {e}", spec.name)))?;
            }
        }
        Ok(Self {
            name: spec.name.clone(),
            digest,
            scopes: spec.scopes.iter().copied().collect(),
            rooms: spec.rooms.clone(),
            rate_per_second: spec.rate_per_second,
        })
    }

    /// A key from a `--api-key` value: `KEY` (every scope, any room) or
    /// `KEY@scope+scope` (those scopes).
    pub fn from_flag(value: &str, index: usize) -> Result<Self, KeyError> {
        let (key, scopes) = match value.split_once('@') {
            Some((k, s)) => (k, s.split('+').map(Scope::parse).collect::<Result<Vec<_>, _>>()?),
            None => (value, vec![Scope::Publish, Scope::Read, Scope::Admin]),
        };
        if !looks_like_key(key) || key.len() < 24 {
            return Err(KeyError(format!(
                "--api-key #{index}: a key is `zps_` and at least 20 more characters \
                 (make one with `zero-pub-sub api-key new`)"
            )));
        }
        Self::from_spec(&KeySpec {
            name: format!("flag-{index}"),
            hash: hash_key(key),
            scopes,
            rooms: None,
            rate_per_second: None,
        })
    }

    /// Whether the key has `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// Whether the key may act on `target`.
    pub fn covers(&self, target: &RoomPattern) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|rooms| claim_allows(rooms, target))
    }

    /// Whether the key is limited to some rooms (listing endpoints then filter).
    pub fn limited(&self) -> bool {
        self.rooms.is_some()
    }
}

/// `sha256:<hex>` of a key, as key files store it.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// A new random key (`zps_…`).
pub fn new_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "zps_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Whether a bearer credential is an API key (rather than a client token).
pub(crate) fn looks_like_key(credential: &str) -> bool {
    credential.starts_with("zps_")
}

/// Every configured key.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

impl ApiKeys {
    /// A set of keys.
    pub fn new(keys: Vec<ApiKey>) -> Self {
        Self { keys }
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key `presented` stands for. Every configured digest is compared, in
    /// constant time, whatever matches first: timing tells nothing about keys.
    pub fn find(&self, presented: &str) -> Option<&ApiKey> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&digest)) && found.is_none() {
                found = Some(key);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_hash_with_their_rights() {
        let secret = new_key();
        assert!(secret.starts_with("zps_") && secret.len() == 47, "{secret}");
        let spec = KeySpec {
            name: "backend".into(),
            hash: hash_key(&secret),
            scopes: vec![Scope::Publish],
            rooms: Some(vec!["chat:*".into()]),
            rate_per_second: None,
        };
        let keys = ApiKeys::new(vec![ApiKey::from_spec(&spec).unwrap()]);
        let key = keys.find(&secret).expect("found");
        assert!(key.allows(Scope::Publish) && !key.allows(Scope::Read) && !key.allows(Scope::Admin));
        assert!(key.covers(&RoomPattern::parse("chat:1").unwrap()));
        assert!(!key.covers(&RoomPattern::parse("order:1").unwrap()));
        assert!(keys.find("zps_wrong").is_none());
        assert!(keys.find(&secret[..secret.len() - 1]).is_none());
    }

    #[test]
    fn flags_and_bad_specs() {
        let all = ApiKey::from_flag("zps_a-long-enough-secret", 0).unwrap();
        assert!(all.allows(Scope::Admin) && all.allows(Scope::Read) && !all.limited());
        let read = ApiKey::from_flag("zps_a-long-enough-secret@read", 1).unwrap();
        assert!(read.allows(Scope::Read) && !read.allows(Scope::Publish));
        assert!(ApiKey::from_flag("zps_short", 2).is_err());
        assert!(ApiKey::from_flag("a-long-enough-secret-without-prefix", 2).is_err());
        assert!(ApiKey::from_flag("zps_a-long-enough-secret@root", 3).is_err());
        let bad = |hash: &str, scopes: Vec<Scope>, rooms: Option<Vec<String>>| {
            ApiKey::from_spec(&KeySpec {
                name: "x".into(),
                hash: hash.into(),
                scopes,
                rooms,
                rate_per_second: None,
            })
            .is_err()
        };
        assert!(bad("md5:00", vec![Scope::Read], None));
        assert!(bad("sha256:zz", vec![Scope::Read], None));
        assert!(bad(&hash_key("k"), vec![], None));
        assert!(bad(&hash_key("k"), vec![Scope::Read], Some(vec!["*".into()])));
        let unknown = r#"{"keys":[{"name":"ops","hash":"sha256:00","scopes":["admin"],"extra":1}]}"#;
        assert!(
            serde_json::from_str::<KeyFile>(unknown).is_err(),
            "unknown fields are refused"
        );
    }
}
