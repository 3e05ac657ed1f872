//! What the gateway vouches for about a member: `metadata.publisher` on events a
//! client publishes (WebSocket and HTTP), `metadata.verified` on presence
//! entries — the token's `sub` plus the configured claims — replacing whatever
//! the client wrote there, while the client's own metadata stays beside it.
//! A backend's events (API key) are trusted as sent.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use support::api::{ADMIN, Http};
use support::*;

fn config() -> zps_gateway::GatewayConfig {
    let mut c = support::api::config();
    c.auth.member_claims = vec!["name".into(), "avatar".into()];
    c.limits.allow_client_publish = true;
    c
}

/// The next `n` events, skipping the publisher's own `published` replies.
async fn events(c: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = c.recv().await;
        match m["type"].as_str() {
            Some("event") => out.push(m["data"].clone()),
            Some("published") => {}
            _ => panic!("unexpected {m}"),
        }
    }
    out
}

fn ann() -> String {
    // `role` is not a member claim: it is not vouched for.
    hs256(json!({"sub": "u1", "name": "Ann", "role": "admin", "exp": now_secs() + 600}))
}

#[tokio::test]
async fn client_events_name_their_verified_publisher_and_backend_events_are_kept() {
    let gw = TestGateway::start(config()).await;
    let token = ann();
    let mut c = gw.ready_with_token("u1", &token).await;
    c.subscribe("chat:1").await;
    c.send(
        json!({"type": "publish", "requestId": "a", "event": {"type": "t", "room": "chat:1", "payload": {},
        "metadata": {"thread": 7, "publisher": {"sub": "admin"}}}}),
    )
    .await;
    let e = &events(&mut c, 1).await[0];
    assert_eq!(
        e["metadata"],
        json!({"thread": 7, "publisher": {"sub": "u1", "name": "Ann"}}),
        "{e}"
    );

    // The same over HTTP with the client's token.
    let http = Http::new(&gw);
    let answer = http
        .call(
            "POST",
            "/publish",
            Some(&token),
            Some(json!({"room": "chat:1", "type": "t",
            "metadata": {"publisher": "forged"}})),
        )
        .await;
    assert_eq!(answer.0, 200, "{answer:?}");
    let e = &events(&mut c, 1).await[0];
    assert_eq!(
        e["metadata"],
        json!({"publisher": {"sub": "u1", "name": "Ann"}}),
        "{e}"
    );

    // A backend with an API key says who published; that is trusted as sent.
    let answer = http
        .call(
            "POST",
            "/publish",
            Some(ADMIN),
            Some(json!({"room": "chat:1", "type": "t",
            "metadata": {"publisher": {"service": "billing"}}})),
        )
        .await;
    assert_eq!(answer.0, 200, "{answer:?}");
    let e = &events(&mut c, 1).await[0];
    assert_eq!(e["metadata"], json!({"publisher": {"service": "billing"}}), "{e}");

    // Stored that way: history shows the same.
    let (status, page) = http.call("GET", "/rooms/chat:1/events", Some(ADMIN), None).await;
    assert_eq!(status, 200);
    let publishers: Vec<Value> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["metadata"]["publisher"].clone())
        .collect();
    assert_eq!(
        publishers,
        vec![
            json!({"sub": "u1", "name": "Ann"}),
            json!({"sub": "u1", "name": "Ann"}),
            json!({"service": "billing"})
        ]
    );
}

#[tokio::test]
async fn presence_entries_carry_the_verified_member_beside_the_client_metadata() {
    let gw = TestGateway::start(config()).await;
    let mut c = gw.ready_with_token("u1#phone", &ann()).await;
    c.send(json!({"type": "presence_enter", "room": "chat:1",
        "metadata": {"name": "Queen of Chat", "verified": {"sub": "admin"}}}))
        .await;
    let state = c.recv_type("presence_state").await;
    let expected = json!({"name": "Queen of Chat", "verified": {"sub": "u1", "name": "Ann"}});
    assert_eq!(state["members"][0]["metadata"], expected, "{state}");
    // Without metadata of its own, the entry still says who it is.
    let bob = hs256(json!({"sub": "u2", "exp": now_secs() + 600}));
    let mut b = gw.ready_with_token("u2", &bob).await;
    b.send(json!({"type": "presence_enter", "room": "chat:1"})).await;
    let state = b.recv_type("presence_state").await;
    let members = state["members"].as_array().unwrap();
    let u2 = members
        .iter()
        .find(|m| m["userId"].as_str().unwrap().starts_with("u2"))
        .unwrap();
    assert_eq!(u2["metadata"], json!({"verified": {"sub": "u2"}}), "{state}");
    // Operators see the same through the HTTP API.
    let (status, body) = Http::new(&gw)
        .call("GET", "/rooms/chat:1/presence", Some(ADMIN), None)
        .await;
    assert_eq!(status, 200);
    let u1 = body["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["userId"].as_str().unwrap().starts_with("u1"))
        .unwrap()
        .clone();
    assert_eq!(u1["metadata"], expected, "{body}");
}

#[tokio::test]
async fn anonymous_clients_cannot_claim_a_publisher() {
    let mut config = zps_gateway::GatewayConfig::default();
    config.limits.allow_client_publish = true;
    let gw = TestGateway::start(config).await;
    let mut c = gw.ready("anon").await;
    c.subscribe("chat:1").await;
    c.send(
        json!({"type": "publish", "requestId": "a", "event": {"type": "t", "room": "chat:1", "payload": {},
        "metadata": {"publisher": {"sub": "admin"}}}}),
    )
    .await;
    c.send(
        json!({"type": "publish", "requestId": "b", "event": {"type": "t", "room": "chat:1", "payload": {},
        "metadata": {"publisher": {"sub": "admin"}, "x": 1}}}),
    )
    .await;
    let events = events(&mut c, 2).await;
    assert_eq!(events[0].get("metadata"), None, "{}", events[0]);
    assert_eq!(events[1]["metadata"], json!({"x": 1}));
}
