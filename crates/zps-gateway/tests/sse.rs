//! The SSE endpoint: auth as HTTP errors before the stream, `id: room@sequence`,
//! bare envelope data, `fromSequence` and `Last-Event-ID` resumes, live-only
//! default, heartbeat comments.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::sse::Sse;
use support::*;
use zps_gateway::GatewayConfig;

#[tokio::test]
async fn stream_resumes_from_sequence_then_goes_live() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    for i in 1..=3 {
        gw.engine()
            .publish(publish("chat:1", "t", json!({"i": i})))
            .await
            .unwrap();
    }
    let mut sse = Sse::open(&gw.http_url("/events?room=chat:1&fromSequence=1"), &[])
        .await
        .unwrap();
    assert_eq!(sse.record().await.retry.as_deref(), Some("3000"));
    let sub = sse.record().await;
    assert_eq!(sub.event.as_deref(), Some("subscribed"));
    let sub: Value = serde_json::from_str(sub.data.as_deref().unwrap()).unwrap();
    assert_eq!(sub["recovered"], true);
    let (id, data) = sse.event().await;
    assert_eq!(id, "chat:1@2");
    assert_eq!(data["sequence"], 2, "data is the bare envelope");
    assert_eq!(data["payload"]["i"], 2);
    assert_eq!(sse.event().await.0, "chat:1@3");
    gw.engine()
        .publish(publish("chat:1", "t", json!({"i": 4})))
        .await
        .unwrap();
    assert_eq!(sse.event().await.0, "chat:1@4");
}

#[tokio::test]
async fn last_event_id_resumes_and_default_is_live_only() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    for _ in 0..4 {
        gw.engine()
            .publish(publish("chat:1", "t", json!({})))
            .await
            .unwrap();
    }
    let mut resumed = Sse::open(
        &gw.http_url("/events?room=chat:1"),
        &[("Last-Event-ID", "chat:1@2")],
    )
    .await
    .unwrap();
    assert_eq!(resumed.event().await.0, "chat:1@3");
    assert_eq!(resumed.event().await.0, "chat:1@4");

    let mut live = Sse::open(&gw.http_url("/events?room=chat:1&room=chat:2"), &[])
        .await
        .unwrap();
    gw.engine()
        .publish(publish("chat:2", "t", json!({})))
        .await
        .unwrap();
    gw.engine()
        .publish(publish("chat:1", "t", json!({})))
        .await
        .unwrap();
    assert_eq!(live.event().await.0, "chat:2@1");
    assert_eq!(live.event().await.0, "chat:1@5");
}

#[tokio::test]
async fn auth_failures_are_http_errors_before_the_stream() {
    let mut config = hs256_config();
    config.auth.rooms_claim = Some("rooms".into());
    config.auth.scopes = Some(vec!["chat".into()]);
    let gw = TestGateway::start(config).await;
    let (status, body) = Sse::open(&gw.http_url("/events?room=chat:1"), &[])
        .await
        .err()
        .unwrap();
    assert_eq!((status, body["code"].as_str()), (401, Some("4401")));
    let expired = hs256(json!({"exp": now_secs() - 100}));
    let (status, _) = Sse::open(&gw.http_url(&format!("/events?room=chat:1&token={expired}")), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);
    let token = hs256(json!({"sub": "u", "exp": now_secs() + 60, "rooms": ["chat:1"]}));
    let (status, body) = Sse::open(&gw.http_url(&format!("/events?room=chat:2&token={token}")), &[])
        .await
        .err()
        .unwrap();
    assert_eq!((status, body["code"].as_str()), (403, Some("4408")));
    let (status, body) = Sse::open(&gw.http_url(&format!("/events?room=admin:1&token={token}")), &[])
        .await
        .err()
        .unwrap();
    assert_eq!((status, body["code"].as_str()), (400, Some("4422")));
    let (status, _) = Sse::open(&gw.http_url("/events"), &[]).await.err().unwrap();
    assert_eq!(status, 400);
    // Query token and bearer header both work.
    let mut a = Sse::open(&gw.http_url(&format!("/events?room=chat:1&token={token}")), &[])
        .await
        .unwrap();
    let bearer = format!("Bearer {token}");
    let mut b = Sse::open(
        &gw.http_url("/events?room=chat:1"),
        &[("Authorization", bearer.as_str())],
    )
    .await
    .unwrap();
    gw.engine()
        .publish(publish("chat:1", "t", json!({})))
        .await
        .unwrap();
    assert_eq!(a.event().await.0, "chat:1@1");
    assert_eq!(b.event().await.0, "chat:1@1");
}

#[tokio::test]
async fn heartbeats_are_comments() {
    let mut config = GatewayConfig::default();
    config.limits.heartbeat_interval = Duration::from_millis(100);
    let gw = TestGateway::start(config).await;
    let mut sse = Sse::open(&gw.http_url("/events?room=chat:1"), &[]).await.unwrap();
    let mut saw_ping = false;
    for _ in 0..5 {
        if sse.record().await.comment.as_deref() == Some("ping") {
            saw_ping = true;
            break;
        }
    }
    assert!(saw_ping);
    assert_eq!(gw.gateway.connections(), 1);
    drop(sse);
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.gateway.connections() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed SSE stream must free its place"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asked for, the stream also carries the rooms' presence and ephemeral
/// events, as named records, beside the stored events.
#[tokio::test]
async fn ephemeral_and_presence_ride_on_the_stream_when_asked() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let mut sse = Sse::open(&gw.http_url("/events?room=chat:1&ephemeral=1&presence=1"), &[])
        .await
        .unwrap();
    let mut next_named = async |want: &'static str| loop {
        let r = sse.record().await;
        if r.event.as_deref() == Some(want) {
            break serde_json::from_str::<Value>(&r.data.unwrap()).unwrap();
        }
    };
    let state = next_named("presence_state").await;
    assert_eq!(state["members"], json!([]));
    let mut c = gw.ready("walt").await;
    c.send(json!({"type": "presence_enter", "room": "chat:1", "metadata": {"name": "Walt"}}))
        .await;
    let joined = next_named("presence").await;
    assert_eq!(
        (joined["action"].as_str(), joined["userId"].as_str()),
        (Some("member_added"), Some("walt"))
    );
    gw.engine()
        .publish_ephemeral(zps_core::EphemeralRequest {
            room: zps_core::Room::parse("chat:1").unwrap(),
            event_type: "typing".into(),
            payload: serde_json::value::to_raw_value(&json!({"who": "server"})).unwrap(),
            metadata: None,
            origin: None,
        })
        .await
        .unwrap();
    let typing = next_named("ephemeral").await;
    assert_eq!(typing["data"]["type"], "typing", "{typing}");
}
