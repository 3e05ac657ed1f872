//! Bad input and limits: every breach gets its code (and a close code when the
//! connection cannot continue), and the gateway and other subscribers carry on.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use futures::SinkExt;
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use zps_gateway::GatewayConfig;

/// A bystander that must keep receiving everything while others misbehave.
async fn bystander(gw: &TestGateway) -> Client {
    let mut c = gw.ready("bystander").await;
    c.subscribe("watch:1").await;
    c
}

async fn bystander_saw_everything(gw: &TestGateway, c: &mut Client, n: u64) {
    for _ in 0..n {
        gw.engine()
            .publish(publish("watch:1", "t", json!({})))
            .await
            .unwrap();
    }
    let got = c.events(n as usize).await;
    let first = got[0]["sequence"].as_u64().unwrap();
    assert_eq!(seqs(&got), (first..first + n).collect::<Vec<u64>>());
}

#[tokio::test]
async fn malformed_unknown_wrong_types_and_binary_frames() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let mut b = bystander(&gw).await;
    let mut c = gw.ready("d").await;
    for bad in ["{", "[]", "null", "\"text\"", r#"{"no":"type"}"#] {
        c.send_raw(bad).await;
        let e = c.expect_error("4400").await;
        assert!(
            e["message"].as_str().unwrap().starts_with("malformed message"),
            "{bad}: {e}"
        );
    }
    c.send(json!({"type": "teleport"})).await;
    let e = c.expect_error("4400").await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("unknown message type `teleport`"),
        "{e}"
    );
    c.send(json!({"type": "ack", "room": "chat:1", "sequence": "ten"}))
        .await;
    let e = c.expect_error("4400").await;
    assert!(
        e["message"].as_str().unwrap().contains("invalid `ack` message"),
        "{e}"
    );
    c.send(json!({"type": "subscribe", "room": 42})).await;
    c.expect_error("4400").await;
    c.send(json!({"type": "subscribe"})).await;
    c.expect_error("4400").await;
    c.ws.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    let e = c.expect_error("4400").await;
    assert!(e["message"].as_str().unwrap().contains("binary"), "{e}");
    c.send(json!({"type": "init", "subscriberId": "again"})).await;
    c.expect_error("4409").await;
    // Still usable, and nobody else was affected.
    c.subscribe("chat:1").await;
    bystander_saw_everything(&gw, &mut b, 5).await;
}

#[tokio::test]
async fn messages_before_init_and_silent_connections_are_closed_4401() {
    let mut config = GatewayConfig::default();
    config.limits.init_timeout = Duration::from_millis(300);
    let gw = TestGateway::start(config).await;
    let mut b = bystander(&gw).await;
    let mut early = gw.client().await;
    early.send(json!({"type": "subscribe", "room": "chat:1"})).await;
    let e = early.expect_error("4401").await;
    assert!(e["message"].as_str().unwrap().contains("init"), "{e}");
    early.expect_close(4401).await;

    let mut silent = gw.client().await;
    let e = silent.expect_error("4401").await;
    assert!(e["message"].as_str().unwrap().contains("init timeout"), "{e}");
    silent.expect_close(4401).await;

    let mut bad_id = gw.client().await;
    bad_id.send(json!({"type": "init", "subscriberId": ""})).await;
    bad_id.expect_error("4400").await;
    bad_id.expect_close(4401).await;
    bystander_saw_everything(&gw, &mut b, 3).await;
}

#[tokio::test]
async fn invalid_rooms_are_4422() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let mut c = gw.ready("d").await;
    for bad in ["chat", "chat:", ":1", "*", "bad scope:1", "*:*"] {
        c.send(json!({"type": "subscribe", "room": bad})).await;
        let e = c.expect_error("4422").await;
        assert_eq!(e["room"], bad);
    }
    c.send(json!({"type": "ack", "room": "chat:*", "sequence": 1}))
        .await;
    c.expect_error("4422").await;
    c.send(json!({"type": "replay_request", "room": "x".repeat(5000), "fromSequence": 0}))
        .await;
    let e = c.expect_error("4422").await;
    assert!(e["message"].as_str().unwrap().len() < 400, "echoes are bounded");
}

#[tokio::test]
async fn too_many_subscriptions_is_4430() {
    let mut config = GatewayConfig::default();
    config.limits.max_subscriptions = 2;
    let gw = TestGateway::start(config).await;
    let mut c = gw.ready("d").await;
    c.subscribe("chat:1").await;
    c.subscribe("chat:2").await;
    c.send(json!({"type": "subscribe", "room": "chat:3"})).await;
    c.expect_error("4430").await;
    // Re-subscribing an existing room is not a new subscription.
    c.subscribe("chat:2").await;
    c.send(json!({"type": "unsubscribe", "room": "chat:1"})).await;
    c.recv_type("unsubscribed").await;
    c.subscribe("chat:3").await;
}

#[tokio::test]
async fn payload_limit_is_4413_and_oversized_frames_close_1009() {
    let mut config = GatewayConfig::default();
    config.limits.allow_client_publish = true;
    config.limits.max_payload_bytes = 1024;
    let gw = TestGateway::start(config).await;
    let mut b = bystander(&gw).await;
    let mut c = gw.ready("d").await;
    let big = "x".repeat(2000);
    c.send(json!({"type": "publish", "requestId": "big", "event": {"type": "t", "room": "chat:1", "payload": {"b": big}}}))
        .await;
    let e = c.expect_error("4413").await;
    assert_eq!(e["requestId"], "big");
    c.send(json!({"type": "publish_ephemeral", "room": "chat:1", "eventType": "t", "payload": {"b": big}}))
        .await;
    c.expect_error("4413").await;
    let info = gw
        .engine()
        .room_info(&zps_core::Room::parse("chat:1").unwrap())
        .await
        .unwrap();
    assert_eq!(info.last_sequence, 0, "nothing was stored");
    // A frame beyond payload + 16 KiB cannot even be read: 4413, then close 1009.
    c.send_raw(&format!(r#"{{"type":"ping","id":"{}"}}"#, "y".repeat(40_000)))
        .await;
    c.expect_error("4413").await;
    c.expect_close(1009).await;
    bystander_saw_everything(&gw, &mut b, 3).await;
    gw.ready("fresh").await;
}

#[tokio::test]
async fn floods_are_rate_limited_then_closed() {
    let mut config = GatewayConfig::default();
    config.limits.max_messages_per_window = 5;
    config.limits.rate_limit_window = Duration::from_millis(400);
    let gw = TestGateway::start(config).await;
    let mut b = bystander(&gw).await;
    let mut c = gw.ready("d").await;
    // init counted as 1: 4 more pings pass, the rest of the burst is dropped with one 4429.
    for i in 0..20 {
        c.send(json!({"type": "ping", "id": i})).await;
    }
    for i in 0..4 {
        assert_eq!(c.recv_type("pong").await["id"], i);
    }
    let e = c.expect_error("4429").await;
    assert!(e["message"].as_str().unwrap().contains("at most 5"), "{e}");
    c.assert_silent(Duration::from_millis(450)).await;
    // Next window: served again.
    c.send(json!({"type": "ping", "id": "later"})).await;
    assert_eq!(c.recv_type("pong").await["id"], "later");

    // A client that keeps flooding window after window is closed with 4429.
    let mut f = gw.ready("flooder").await;
    let closer = tokio::spawn(async move {
        loop {
            if f.ws
                .send(Message::Text(r#"{"type":"ping"}"#.into()))
                .await
                .is_err()
            {
                break f;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut f = tokio::time::timeout(Duration::from_secs(10), closer)
        .await
        .unwrap()
        .unwrap();
    let mut saw_4429_close = false;
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout(Duration::from_secs(2), futures::StreamExt::next(&mut f.ws)).await
    {
        if let Message::Close(Some(frame)) = msg {
            saw_4429_close = u16::from(frame.code) == 4429;
            break;
        }
    }
    assert!(saw_4429_close, "expected close 4429");
    bystander_saw_everything(&gw, &mut b, 3).await;
}

/// A rate-limited request that carries an id is refused with that id, so the
/// caller fails at once instead of waiting out its own timeout (found by the
/// chaos suite: a publisher's 101st publish in a second hung for 5 s).
#[tokio::test]
async fn rate_limited_requests_are_refused_with_their_request_id() {
    let mut config = GatewayConfig::default();
    config.limits.allow_client_publish = true;
    config.limits.max_messages_per_window = 3;
    // Long enough that the whole burst falls in one window on any machine.
    config.limits.rate_limit_window = Duration::from_secs(60);
    let gw = TestGateway::start(config).await;
    let mut c = gw.ready("p").await;
    // init counted as 1: two publishes pass, the other four are refused by id.
    for i in 0..6 {
        c.send(json!({"type": "publish", "requestId": format!("r{i}"),
            "event": {"type": "t", "room": "chat:1", "payload": {"i": i}}}))
            .await;
    }
    // Answers are matched by id: a refusal may overtake an earlier publish's answer.
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..6 {
        let m = c.recv().await;
        answers.insert(m["requestId"].as_str().unwrap().to_owned(), m);
    }
    for i in 0..2 {
        let p = &answers[&format!("r{i}")];
        assert_eq!(p["type"], "published", "{p}");
        assert_eq!(p["sequence"], i + 1);
    }
    for i in 2..6 {
        let e = &answers[&format!("r{i}")];
        assert_eq!((&e["type"], &e["code"]), (&json!("error"), &json!("4429")), "{e}");
    }
    // A ping with a string id is answered the same way; one without an id is dropped silently
    // (the window's warning went out with the first refusal).
    c.send(json!({"type": "ping", "id": "p1"})).await;
    assert_eq!(c.expect_error("4429").await["requestId"], "p1");
    c.send(json!({"type": "ping"})).await;
    c.assert_silent(Duration::from_millis(200)).await;
    let info = gw
        .engine()
        .room_info(&zps_core::Room::parse("chat:1").unwrap())
        .await
        .unwrap();
    assert_eq!(info.last_sequence, 2, "refused publishes are not stored");
}

#[tokio::test]
async fn at_capacity_new_connections_get_4503() {
    let mut config = GatewayConfig::default();
    config.limits.max_connections = 2;
    let gw = TestGateway::start(config).await;
    let _a = gw.ready("a").await;
    let _b = gw.ready("b").await;
    let mut c = gw.client().await;
    c.expect_error("4503").await;
    c.expect_close(4503).await;
    drop(_a);
    // The place frees up once the connection is gone.
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.gateway.connections() > 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.ready("c").await;
}

#[tokio::test]
async fn dead_peers_are_dropped_by_heartbeat() {
    let mut config = GatewayConfig::default();
    config.limits.heartbeat_interval = Duration::from_millis(100);
    config.limits.heartbeat_timeout = Duration::from_millis(100);
    let gw = TestGateway::start(config).await;
    let mut alive = gw.ready("alive").await;
    let mut dead = gw.ready("dead").await;
    // `dead` is never polled, so it never answers pings.
    let reader = tokio::spawn(async move {
        // `alive` keeps reading (and so answers pings) for a while.
        alive.assert_silent(Duration::from_millis(800)).await;
        alive
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut alive = reader.await.unwrap();
    dead.expect_close(4410).await;
    alive.send(json!({"type": "ping"})).await;
    alive.recv_type("pong").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_is_cut_off_and_others_stay_on_time() {
    let mut config = GatewayConfig::default();
    config.limits.max_socket_buffered_bytes = 256 * 1024;
    config.limits.max_payload_bytes = 128 * 1024;
    let gw = TestGateway::start(config).await;
    let mut fast = gw.ready("fast").await;
    fast.subscribe("feed:1").await;
    let mut stuck = gw.ready("stuck").await;
    stuck.subscribe("feed:1").await;
    assert_eq!(gw.gateway.connections(), 2);
    let payload = "z".repeat(100 * 1024);
    let total = 300u64;
    // The fast reader reports progress; the publisher never runs more than two
    // events ahead of it, so it is never behind while the stuck one reads nothing.
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..total {
            let e = fast.events(1).await.remove(0);
            progress_tx.send_replace(e["sequence"].as_u64().unwrap());
            got.push(e);
        }
        (fast, got)
    });
    for i in 1..=total {
        progress.wait_for(|seen| *seen + 2 >= i).await.unwrap();
        gw.engine()
            .publish(publish("feed:1", "t", json!({ "blob": payload })))
            .await
            .unwrap();
    }
    let (_fast, got) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seqs(&got), (1..=total).collect::<Vec<u64>>());
    // 30 MB went out; the stuck reader could not hold it and was cut off.
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.gateway.connections() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stuck reader was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = gw.gateway.health().await;
    assert_eq!(metrics.connections, 1);
    drop(stuck);
}
