//! Shared by the HTTP API tests: keys with different rights, a gateway
//! configuration using them, a small HTTP caller, and the error-shape check.

use serde_json::{Value, json};
use zps_gateway::GatewayConfig;
use zps_gateway::api::keys::{ApiKey, ApiKeys, KeySpec, Scope, hash_key};

use super::{TestGateway, WAIT, hs256, hs256_config, now_secs};

pub const ADMIN: &str = "zps_admin-key-0123456789abcdefghijklmnopqrstuv";
pub const PUBLISH: &str = "zps_publish-key-0123456789abcdefghijklmnopqrst";
pub const READ_CHAT: &str = "zps_read-chat-key-0123456789abcdefghijklmnopqr";
pub const CHAT1_ONLY: &str = "zps_chat1-key-0123456789abcdefghijklmnopqrstuv";
pub const SLOW: &str = "zps_slow-key-0123456789abcdefghijklmnopqrstuvw";

pub fn key(name: &str, secret: &str, scopes: &[Scope], rooms: Option<&[&str]>, rate: Option<u32>) -> ApiKey {
    ApiKey::from_spec(&KeySpec {
        name: name.into(),
        hash: hash_key(secret),
        scopes: scopes.to_vec(),
        rooms: rooms.map(|r| r.iter().map(|s| (*s).to_owned()).collect()),
        rate_per_second: rate,
    })
    .unwrap()
}

/// Keys for every test; a JWT verifier so a missing credential is a 401.
pub fn config() -> GatewayConfig {
    let mut c = hs256_config();
    c.api.keys = ApiKeys::new(vec![
        key(
            "admin",
            ADMIN,
            &[Scope::Publish, Scope::Read, Scope::Admin],
            None,
            None,
        ),
        key("publisher", PUBLISH, &[Scope::Publish], None, None),
        key("reader", READ_CHAT, &[Scope::Read], Some(&["chat:*"]), None),
        key(
            "chat1",
            CHAT1_ONLY,
            &[Scope::Publish, Scope::Admin, Scope::Read],
            Some(&["chat:1"]),
            None,
        ),
        key("slow", SLOW, &[Scope::Read], None, Some(2)),
    ]);
    c.api.max_body_bytes = 16 * 1024;
    c
}

pub struct Http {
    pub base: String,
    pub client: reqwest::Client,
}

impl Http {
    pub fn new(gw: &TestGateway) -> Self {
        Self {
            base: gw.http_url("/api/v1"),
            client: reqwest::Client::new(),
        }
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<String>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = tokio::time::timeout(WAIT, req.send()).await.unwrap().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: not JSON: {text}"))
        };
        (status, body)
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.raw(method, path, auth, body.map(|b| b.to_string())).await
    }
}

/// Asserts the one error shape with `code`.
pub fn refused(answer: &(u16, Value), status: u16, code: &str) {
    assert_eq!(answer.0, status, "{answer:?}");
    assert_eq!(answer.1["error"]["code"], code, "{answer:?}");
    assert!(
        answer.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{answer:?}"
    );
}

pub fn token(sub: &str, extra: Value) -> String {
    let mut claims = json!({"sub": sub, "exp": now_secs() + 600});
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    hs256(claims)
}
