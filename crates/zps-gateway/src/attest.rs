//! What the gateway vouches for about a member: the verified token's `sub` and
//! the claims named by [`AuthConfig::member_claims`](crate::AuthConfig::member_claims),
//! written under reserved metadata keys that clients cannot fill themselves —
//! `publisher` on the events they publish, `verified` on their presence entries.
//! The rest of the metadata stays the client's own: readers tell the two apart
//! by key, and never trust anything else a client says about itself.

use serde_json::{Map, Value};
use zps_core::Metadata;

use crate::auth::Identity;
use crate::gateway_state::GatewayState;

/// Metadata key of a client-published event that names its publisher.
pub const PUBLISHER_KEY: &str = "publisher";

/// Metadata key of a presence entry that holds the member's verified identity.
pub const VERIFIED_KEY: &str = "verified";

/// `{"sub": …, <member claim>: …}` from a verified token; `None` for an anonymous client.
/// Built on the first publish or presence entry of a token, then reused.
pub(crate) fn attested(gw: &GatewayState, identity: &Identity) -> Option<Value> {
    identity.attested.get_or_init(|| build(gw, identity)).clone()
}

fn build(gw: &GatewayState, identity: &Identity) -> Option<Value> {
    let sub = identity.subject.as_ref()?;
    let mut out = Map::new();
    out.insert("sub".to_owned(), Value::String(sub.clone()));
    for claim in &gw.config.auth.member_claims {
        if let Some(v) = identity.claims.get(claim) {
            out.insert(claim.clone(), v.clone());
        }
    }
    Some(Value::Object(out))
}

/// Replaces whatever the client put under `key` with `attested` (or removes it).
pub(crate) fn stamp(metadata: Option<Metadata>, key: &str, attested: Option<Value>) -> Option<Metadata> {
    if metadata.is_none() && attested.is_none() {
        return None;
    }
    let mut m = metadata.unwrap_or_default();
    m.remove(key);
    if let Some(a) = attested {
        m.insert(key.to_owned(), a);
    }
    (!m.is_empty()).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: Value) -> Option<Metadata> {
        v.as_object().cloned()
    }

    #[test]
    fn a_forged_key_is_replaced_or_dropped_and_the_rest_kept() {
        let forged = meta(json!({"name": "Ann", "publisher": {"sub": "admin"}}));
        let real = Some(json!({"sub": "u1"}));
        assert_eq!(
            stamp(forged.clone(), PUBLISHER_KEY, real),
            meta(json!({"name": "Ann", "publisher": {"sub": "u1"}}))
        );
        assert_eq!(stamp(forged, PUBLISHER_KEY, None), meta(json!({"name": "Ann"})));
        assert_eq!(stamp(meta(json!({"publisher": 1})), PUBLISHER_KEY, None), None);
        assert_eq!(stamp(None, PUBLISHER_KEY, None), None);
    }
}
