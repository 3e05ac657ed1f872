//! Who may do what: subscriber ids bound to the token's `sub` (WebSocket, SSE,
//! HTTP API), per-action grants, room tokens, issuer and audience checks, and
//! hostile tokens (algorithm switch, room token as a connection token, huge
//! tokens).

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use support::sse::Sse;
use support::*;
use zps_gateway::{GatewayConfig, JwtKey};

fn token(sub: &str, extra: Value) -> String {
    let mut claims = json!({"sub": sub, "exp": now_secs() + 600});
    claims
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    hs256(claims)
}

/// `init` with this subscriber id and token: the answer's type and code.
async fn init(gw: &TestGateway, subscriber: &str, token: &str) -> (Client, Value) {
    let mut c = gw.client().await;
    c.send(json!({"type": "init", "subscriberId": subscriber, "token": token}))
        .await;
    let answer = c.recv().await;
    (c, answer)
}

#[tokio::test]
async fn subscriber_ids_belong_to_the_token_subject() {
    let gw = TestGateway::start(hs256_config()).await;
    let alice = token("alice", json!({}));
    for ok in ["alice", "alice#phone", "alice#laptop#2"] {
        let (_, ready) = init(&gw, ok, &alice).await;
        assert_eq!(
            (ready["type"].as_str(), ready["subscriberId"].as_str()),
            (Some("ready"), Some(ok))
        );
    }
    for theirs in ["bob", "alice#", "aliceX", "bob#alice"] {
        let (mut c, refused) = init(&gw, theirs, &alice).await;
        assert_eq!(
            (refused["type"].as_str(), refused["code"].as_str()),
            (Some("error"), Some("4403")),
            "{theirs}"
        );
        c.expect_close(4401).await;
    }
    // No `sub`, or a `sub` holding the device separator: no identity to bind.
    let (_, refused) = init(&gw, "x", &hs256(json!({"exp": now_secs() + 60}))).await;
    assert_eq!(refused["code"], "4401", "{refused}");
    let (_, refused) = init(&gw, "a#b", &token("a#b", json!({}))).await;
    assert_eq!(refused["code"], "4401", "{refused}");

    // SSE: the same rule; without a subscriberId the stream is the token's sub.
    let url = |q: &str| gw.http_url(&format!("/events?room=chat:1&token={alice}{q}"));
    let (status, body) = Sse::open(&url("&subscriberId=bob"), &[]).await.err().unwrap();
    assert_eq!((status, body["code"].as_str()), (403, Some("4403")));
    let mut stream = Sse::open(&url(""), &[]).await.unwrap();
    let ready = loop {
        let r = stream.record().await;
        if r.event.as_deref() == Some("ready") {
            break serde_json::from_str::<Value>(&r.data.unwrap()).unwrap();
        }
    };
    assert_eq!(ready["subscriberId"], "alice");
    assert!(Sse::open(&url("&subscriberId=alice%23tv"), &[]).await.is_ok());

    // The HTTP API: a client's own cursors only (devices included).
    let client = reqwest::Client::new();
    let put = |id: &str| {
        client
            .put(gw.http_url(&format!(
                "/api/v1/subscribers/{}/cursors/chat:1",
                id.replace('#', "%23")
            )))
            .bearer_auth(&alice)
            .json(&json!({"sequence": 0}))
            .send()
    };
    assert_eq!(put("alice#phone").await.unwrap().status(), 200);
    assert_eq!(put("bob").await.unwrap().status(), 403);
}

#[tokio::test]
async fn grants_separate_actions_per_room() {
    let gw = TestGateway::start(hs256_config()).await;
    let grants = json!({"zps": {"subscribe": ["chat:*"], "publish": ["chat:42"], "presence": ["chat:1"]}});
    let mut c = gw.ready_with_token("gina", &token("gina", grants)).await;
    c.subscribe("chat:1").await;
    c.subscribe("chat:*").await;
    c.send(json!({"type": "subscribe", "room": "order:1"})).await;
    c.expect_error("4408").await;
    // Publishing is off on this gateway, but the grant opens chat:42.
    c.send(json!({"type": "publish", "requestId": "a", "event": {"type": "t", "room": "chat:42", "payload": {}}})).await;
    let published = c.recv_type("published").await;
    assert_eq!(published["sequence"], 1);
    assert_eq!(c.events(1).await[0]["room"], "chat:42");
    c.send(
        json!({"type": "publish", "requestId": "b", "event": {"type": "t", "room": "chat:1", "payload": {}}}),
    )
    .await;
    c.expect_error("4403").await;
    c.send(json!({"type": "presence_enter", "room": "chat:1"})).await;
    let _ = c.recv_type("presence_state").await;
    assert_eq!(c.recv_type("presence").await["action"], "member_added");
    c.send(json!({"type": "presence_enter", "room": "chat:2"})).await;
    c.expect_error("4408").await;
    // History falls back to the subscribe list.
    c.send(json!({"type": "replay_request", "room": "chat:42", "fromSequence": 0, "requestId": "r"}))
        .await;
    let replay = loop {
        let m = c.recv().await;
        if m["type"] == "replay" {
            break m;
        }
    };
    assert_eq!(replay["events"].as_array().unwrap().len(), 1);

    // A grant of one room does not cover its scope's wildcard.
    let narrow = json!({"zps": {"subscribe": ["chat:1"]}});
    let mut n = gw.ready_with_token("nick", &token("nick", narrow)).await;
    n.subscribe("chat:1").await;
    n.send(json!({"type": "subscribe", "room": "chat:*"})).await;
    n.expect_error("4408").await;
    // With client publishing on, a room outside the publish grant is denied.
    let mut open = hs256_config();
    open.limits.allow_client_publish = true;
    let gw2 = TestGateway::start(open).await;
    let mut p = gw2
        .ready_with_token("gina", &token("gina", json!({"zps": {"publish": ["chat:42"]}})))
        .await;
    p.send(
        json!({"type": "publish", "requestId": "c", "event": {"type": "t", "room": "chat:7", "payload": {}}}),
    )
    .await;
    p.expect_error("4408").await;
}

fn room_token(room: &str, actions: &[&str], sub: Option<&str>, ttl: i64) -> String {
    let mut claims = json!({
        "exp": (now_secs() as i64 + ttl),
        "zps_room": {"room": room, "actions": actions},
    });
    if let Some(s) = sub {
        claims["sub"] = json!(s);
    }
    hs256(claims)
}

#[tokio::test]
async fn room_tokens_open_one_room_for_their_actions() {
    let gw = TestGateway::start(hs256_config()).await;
    let conn = token("rita", json!({"rooms": ["chat:*"]}));
    let mut c = gw.ready_with_token("rita", &conn).await;
    c.send(json!({"type": "subscribe", "room": "private:7"})).await;
    c.expect_error("4408").await;
    let refused = |t: String| json!({"type": "subscribe", "room": "private:7", "roomToken": t});
    for bad in [
        room_token("private:8", &["subscribe"], None, 60),
        room_token("private:7", &["subscribe"], Some("someone-else"), 60),
        room_token("private:7", &["subscribe"], None, -120),
        room_token("private:7", &[], None, 60),
        conn.clone(),
    ] {
        c.send(refused(bad)).await;
        c.expect_error("4408").await;
    }
    let good = room_token("private:7", &["subscribe", "publish"], Some("rita"), 60);
    c.send(json!({"type": "subscribe", "room": "private:7", "roomToken": good}))
        .await;
    c.recv_type("subscribed").await;
    // Its actions only: publish yes (though client publishing is off), presence no.
    c.send(json!({"type": "publish", "requestId": "p", "event": {"type": "t", "room": "private:7", "payload": {}}})).await;
    assert_eq!(c.recv_type("published").await["sequence"], 1);
    assert_eq!(c.events(1).await[0]["sequence"], 1);
    c.send(json!({"type": "presence_enter", "room": "private:7"}))
        .await;
    c.expect_error("4408").await;

    // A room token never opens a connection.
    let (_, refused) = init(
        &gw,
        "rita",
        &room_token("private:7", &["subscribe"], Some("rita"), 60),
    )
    .await;
    assert_eq!(refused["code"], "4401", "{refused}");
    // SSE takes room tokens as parameters.
    let t = room_token("private:7", &["subscribe"], None, 60);
    let url = format!("/events?room=private:7&fromSequence=0&token={conn}&roomToken={t}");
    let mut stream = Sse::open(&gw.http_url(&url), &[]).await.unwrap();
    assert_eq!(stream.event().await.1["sequence"], 1);
    let (status, _) = Sse::open(&gw.http_url(&format!("/events?room=private:7&token={conn}")), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(status, 403);
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let mut config = hs256_config();
    config.auth.issuer = Some("https://auth.example".into());
    config.auth.audience = Some(vec!["zps".into()]);
    let key = "zps_issuer-test-key-0123456789abcdefghijklm";
    config.api.keys = zps_gateway::api::keys::ApiKeys::new(vec![
        zps_gateway::api::keys::ApiKey::from_flag(key, 1).unwrap(),
    ]);
    let gw = TestGateway::start(config).await;
    let with = |extra: Value| token("ivy", extra);
    for (bad, why) in [
        (with(json!({})), "no iss"),
        (
            with(json!({"iss": "https://evil.example", "aud": "zps"})),
            "wrong iss",
        ),
        (with(json!({"iss": "https://auth.example"})), "no aud"),
        (
            with(json!({"iss": "https://auth.example", "aud": "other"})),
            "wrong aud",
        ),
    ] {
        let (_, refused) = init(&gw, "ivy", &bad).await;
        assert_eq!(refused["code"], "4401", "{why}: {refused}");
    }
    let (_, ready) = init(
        &gw,
        "ivy",
        &with(json!({"iss": "https://auth.example", "aud": ["x", "zps"]})),
    )
    .await;
    assert_eq!(ready["type"], "ready");
    // Tokens the gateway mints carry its issuer and audience, so they pass.
    let minted: Value = reqwest::Client::new()
        .post(gw.http_url("/api/v1/tokens"))
        .bearer_auth(key)
        .json(&json!({"subject": "ivy", "rooms": ["chat:*"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (_, ready) = init(&gw, "ivy", minted["token"].as_str().unwrap()).await;
    assert_eq!(ready["type"], "ready", "{ready}");
}

#[tokio::test]
async fn hostile_tokens_are_refused_and_harm_no_one() {
    let mut config = GatewayConfig::default();
    let public = include_bytes!("fixtures/rsa_public.pem");
    config.auth.jwt = Some(JwtKey::Rs256Pem(public.to_vec()));
    let gw = TestGateway::start(config).await;
    let mut bystander = gw
        .ready_with_token("u1", &rs256(json!({"sub": "u1", "exp": now_secs() + 60})))
        .await;
    bystander.subscribe("chat:1").await;
    // The RS256 public key used as an HS256 secret (algorithm switch).
    let switched = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "u1", "exp": now_secs() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(public),
    )
    .unwrap();
    let (_, refused) = init(&gw, "u1", &switched).await;
    assert_eq!(refused["code"], "4401", "{refused}");
    // A `kid` pointing anywhere changes nothing: there is one key.
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("../../../../dev/null".into());
    let kid = jsonwebtoken::encode(
        &header,
        &json!({"sub": "u1", "exp": now_secs() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b""),
    )
    .unwrap();
    let (_, refused) = init(&gw, "u1", &kid).await;
    assert_eq!(refused["code"], "4401", "{refused}");
    // A huge token: refused, the connection alone pays.
    let huge = format!(
        "{}.{}.{}",
        "e".repeat(40_000),
        "e".repeat(40_000),
        "e".repeat(40_000)
    );
    let mut c = gw.client().await;
    c.send(json!({"type": "init", "subscriberId": "u1", "token": huge}))
        .await;
    let answer = c.recv().await;
    assert_eq!(answer["type"], "error", "{answer}");
    // The bystander is untouched.
    gw.engine()
        .publish(publish("chat:1", "t", json!({})))
        .await
        .unwrap();
    assert_eq!(bystander.events(1).await[0]["sequence"], 1);
}

/// An SSE stream ends when its token expires, after telling the client why
/// (WebSocket connections are covered in tests/auth.rs).
#[tokio::test]
async fn sse_streams_end_when_their_token_expires() {
    let mut config = hs256_config();
    config.auth.leeway = Some(std::time::Duration::ZERO);
    let gw = TestGateway::start(config).await;
    let short = hs256(json!({"sub": "sam", "exp": now_secs() + 2}));
    let mut stream = Sse::open(&gw.http_url(&format!("/events?room=chat:1&token={short}")), &[])
        .await
        .unwrap();
    let told = loop {
        let r = stream.record().await;
        if r.event.as_deref() == Some("error") {
            break serde_json::from_str::<Value>(&r.data.unwrap()).unwrap();
        }
    };
    assert_eq!(told["code"], "4401", "{told}");
    assert!(stream.ends().await, "the stream stays open past its token's exp");
}
