//! Every auth path: HS256/RS256/ES256, missing, wrong signature, expired,
//! `alg: none`, scopes, the rooms claim, the authorize hook, token refresh and
//! expiry while connected, and the origin allow-list.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use zps_gateway::{AuthAction, GatewayConfig, JwtKey, auth::authorizer};

fn claims(sub: &str, ttl_secs: u64) -> serde_json::Value {
    json!({"sub": sub, "exp": now_secs() + ttl_secs})
}

async fn init_fails(gw: &TestGateway, token: Option<String>, expect: &str) {
    let mut c = gw.client().await;
    let mut init = json!({"type": "init", "subscriberId": "d"});
    if let Some(t) = token {
        init["token"] = t.into();
    }
    c.send(init).await;
    let e = c.expect_error("4401").await;
    assert!(e["message"].as_str().unwrap().contains(expect), "{e}");
    c.expect_close(4401).await;
}

#[tokio::test]
async fn hs256_tokens_are_verified() {
    let gw = TestGateway::start(hs256_config()).await;
    let token = hs256(claims("u1", 3600));
    let mut c = gw.client().await;
    c.send(json!({"type": "init", "subscriberId": "u1#d", "token": token}))
        .await;
    let ready = c.recv_type("ready").await;
    assert!(ready["tokenExpiresAt"].as_u64().unwrap() > now_secs());

    init_fails(&gw, None, "token is required").await;
    init_fails(&gw, Some(String::new()), "token is required").await;
    let wrong_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims("u1", 3600),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret"),
    )
    .unwrap();
    init_fails(&gw, Some(wrong_key), "invalid token").await;
    let expired = hs256(json!({"sub": "u1", "exp": now_secs() - 3600}));
    init_fails(&gw, Some(expired), "token expired").await;
    init_fails(&gw, Some(unsigned(claims("u1", 3600))), "invalid token").await;
    init_fails(&gw, Some(hs256(json!({"sub": "u1"}))), "invalid token").await;
    let not_yet = hs256(json!({"sub": "u1", "exp": now_secs() + 3600, "nbf": now_secs() + 600}));
    init_fails(&gw, Some(not_yet), "invalid token").await;
    init_fails(&gw, Some("not.a.jwt".into()), "invalid token").await;
    // The gateway still serves after every refusal.
    gw.ready_with_token("u1#d", &hs256(claims("u1", 3600))).await;
}

#[tokio::test]
async fn rs256_and_es256_public_keys() {
    let mut config = GatewayConfig::default();
    config.auth.jwt = Some(JwtKey::Rs256Pem(
        include_bytes!("fixtures/rsa_public.pem").to_vec(),
    ));
    let gw = TestGateway::start(config).await;
    gw.ready_with_token("u1#d", &rs256(claims("u1", 60))).await;
    // Algorithm confusion: an HS256 token must not pass an RS256 gateway.
    init_fails(&gw, Some(hs256(claims("u1", 60))), "invalid token").await;
    init_fails(&gw, Some(es256(claims("u1", 60))), "invalid token").await;

    let mut config = GatewayConfig::default();
    config.auth.jwt = Some(JwtKey::Es256Pem(
        include_bytes!("fixtures/ec_public.pem").to_vec(),
    ));
    let gw = TestGateway::start(config).await;
    gw.ready_with_token("u1#d", &es256(claims("u1", 60))).await;
    init_fails(&gw, Some(rs256(claims("u1", 60))), "invalid token").await;

    let mut bad = GatewayConfig::default();
    bad.auth.jwt = Some(JwtKey::Rs256Pem(b"not a pem".to_vec()));
    assert!(zps_gateway::Gateway::new(zps_core::Realtime::memory(), bad).is_err());
}

#[tokio::test]
async fn scopes_and_the_rooms_claim() {
    let mut config = hs256_config();
    config.auth.scopes = Some(vec!["chat".into(), "order".into()]);
    config.auth.rooms_claim = Some("rooms".into());
    let gw = TestGateway::start(config).await;

    // A token with the claim: only those rooms.
    let token = hs256(json!({"sub": "u1", "exp": now_secs() + 60, "rooms": ["chat:123", "order:*"]}));
    let mut c = gw.ready_with_token("u1", &token).await;
    c.subscribe("chat:123").await;
    c.send(json!({"type": "subscribe", "room": "chat:999"})).await;
    let e = c.expect_error("4408").await;
    assert_eq!(e["message"], "Access denied for room: chat:999");
    assert_eq!(e["room"], "chat:999");
    c.subscribe("order:5").await;
    c.subscribe("order:*").await;
    c.send(json!({"type": "subscribe", "room": "chat:*"})).await;
    c.expect_error("4408").await;
    c.send(json!({"type": "subscribe", "room": "admin:settings"}))
        .await;
    let e = c.expect_error("4422").await;
    assert!(
        e["message"].as_str().unwrap().contains("scope not allowed"),
        "{e}"
    );
    c.send(json!({"type": "ack", "room": "chat:999", "sequence": 1}))
        .await;
    c.expect_error("4408").await;
    c.send(json!({"type": "replay_request", "room": "chat:999", "fromSequence": 0}))
        .await;
    c.expect_error("4408").await;

    // Without the claim: any room of an allowed scope.
    let mut open = gw.ready_with_token("u2#d2", &hs256(claims("u2", 60))).await;
    open.subscribe("chat:999").await;
    open.send(json!({"type": "subscribe", "room": "admin:1"})).await;
    open.expect_error("4422").await;
}

#[tokio::test]
async fn the_authorize_hook_sees_action_room_and_claims() {
    let mut config = hs256_config();
    config.limits.allow_client_publish = true;
    config.auth.authorize = Some(authorizer(|req| async move {
        let user = req
            .claims
            .get("sub")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        match req.action {
            AuthAction::Publish => req.room != "chat:locked",
            AuthAction::Subscribe => req.room != "chat:*" || user == "admin",
            AuthAction::Replay => req.subscriber_id == "user#allowed-replayer",
            AuthAction::Ack | AuthAction::Presence => true,
        }
    }));
    let gw = TestGateway::start(config).await;
    let mut c = gw.ready_with_token("user#d", &hs256(claims("user", 60))).await;
    c.send(json!({"type": "publish", "requestId": "p", "event": {"type": "t", "room": "chat:locked", "payload": {}}}))
        .await;
    let e = c.expect_error("4408").await;
    assert_eq!(e["requestId"], "p");
    c.send(json!({"type": "publish", "event": {"type": "t", "room": "chat:open", "payload": {}}}))
        .await;
    c.recv_type("published").await;
    // Wildcards are authorized against the wildcard string.
    c.send(json!({"type": "subscribe", "room": "chat:*"})).await;
    c.expect_error("4408").await;
    let mut admin = gw.ready_with_token("admin#d", &hs256(claims("admin", 60))).await;
    admin.subscribe("chat:*").await;
    c.send(json!({"type": "replay_request", "room": "chat:open", "fromSequence": 0}))
        .await;
    c.expect_error("4408").await;
    let mut r = gw
        .ready_with_token("user#allowed-replayer", &hs256(claims("user", 60)))
        .await;
    r.send(json!({"type": "replay_request", "room": "chat:open", "fromSequence": 0}))
        .await;
    assert_eq!(r.recv_type("replay").await["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn tokens_expire_while_connected_unless_refreshed() {
    let gw = TestGateway::start(hs256_config()).await;
    // Refreshed in time: the connection stays.
    let mut c = gw.ready_with_token("u1#d", &hs256(claims("u1", 3))).await;
    assert!(
        c.recv_type("token_expiring").await["expiresAt"]
            .as_u64()
            .is_some()
    );
    c.send(json!({"type": "refresh_token", "token": hs256(claims("u1", 3600))}))
        .await;
    let refreshed = c.recv_type("token_refreshed").await;
    assert!(refreshed["expiresAt"].as_u64().unwrap() > now_secs() + 3000);
    // A token for another subject is refused and the old one stays in force.
    c.send(json!({"type": "refresh_token", "token": hs256(claims("someone-else", 3600))}))
        .await;
    c.expect_error("4401").await;
    c.send(json!({"type": "ping"})).await;
    c.recv_type("pong").await;

    // Not refreshed: closed with 4401 at expiry.
    let mut late = gw.ready_with_token("u2#d2", &hs256(claims("u2", 2))).await;
    late.recv_type("token_expiring").await;
    let e = late.expect_error("4401").await;
    assert_eq!(e["message"], "token expired");
    late.expect_close(4401).await;
    c.send(json!({"type": "ping"})).await;
    c.recv_type("pong").await;
}

#[tokio::test]
async fn origin_allow_list() {
    let config = GatewayConfig {
        allowed_origins: Some(vec!["https://app.example.com".into()]),
        ..Default::default()
    };
    let gw = TestGateway::start(config).await;
    // Look-alikes: another host, a suffix, a prefix, another scheme or port, `null`.
    for spoof in [
        "https://evil.example.com",
        "https://app.example.com.evil.com",
        "https://evilapp.example.com",
        "http://app.example.com",
        "https://app.example.com:8443",
        "null",
    ] {
        let mut req = gw.ws_url().into_client_request().unwrap();
        req.headers_mut().insert("origin", spoof.parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403, "{spoof}")
            }
            other => panic!("{spoof}: expected 403, got {:?}", other.map(|_| ())),
        }
        let sse = reqwest::Client::new()
            .get(gw.http_url("/events?room=chat:1"))
            .header("origin", spoof)
            .send()
            .await
            .unwrap();
        assert_eq!(sse.status(), 403, "SSE {spoof}");
    }
    let mut req = gw.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://app.example.com".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    use futures::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({"type": "init", "subscriberId": "d"}).to_string().into(),
    ))
    .await
    .unwrap();
    let mut c = Client { ws };
    c.recv_type("ready").await;
    // Non-browser clients send no Origin and are allowed.
    gw.ready("server-side").await;
}
