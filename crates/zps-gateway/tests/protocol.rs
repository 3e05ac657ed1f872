//! Every protocol message over a real WebSocket, and the delivery promise:
//! history then live, in order, without gaps or duplicates.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use zps_gateway::GatewayConfig;

#[tokio::test]
async fn seed_session_subscribe_event_ack_replay_unsubscribe() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let mut c = gw.client().await;
    c.send(json!({"type": "init", "subscriberId": "device-1"})).await;
    let ready = c.recv_type("ready").await;
    assert_eq!(ready["subscriberId"], "device-1");
    assert!(ready["connectionId"].as_str().is_some_and(|s| !s.is_empty()));

    c.send(json!({"type": "subscribe", "room": "chat:123", "eventTypes": ["message.created"]}))
        .await;
    let sub = c.recv_type("subscribed").await;
    assert_eq!(sub["room"], "chat:123");
    assert_eq!(sub["lastSequence"], 0);
    assert!(sub["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(sub.get("recovered").is_none(), "not a resume: {sub}");

    let engine = gw.engine();
    engine
        .publish(publish("chat:123", "message.created", json!({"text": "hi"})))
        .await
        .unwrap();
    engine
        .publish(publish("chat:123", "typing.other", json!({})))
        .await
        .unwrap();
    engine
        .publish(publish("chat:123", "message.created", json!({"text": "again"})))
        .await
        .unwrap();
    let events = c.events(2).await;
    assert_eq!(seqs(&events), vec![1, 3], "the type filter skips sequence 2");
    assert_eq!(events[0]["payload"]["text"], "hi");
    assert_eq!(events[0]["room"], "chat:123");
    assert_eq!(events[0]["type"], "message.created");
    assert!(events[0]["emittedAt"].as_str().unwrap().ends_with('Z'));

    c.send(json!({"type": "ack", "room": "chat:123", "sequence": 3}))
        .await;
    let ack = c.recv_type("ack").await;
    assert_eq!(ack, json!({"type": "ack", "room": "chat:123", "sequence": 3}));
    c.send(json!({"type": "ack", "room": "chat:123", "sequence": 1}))
        .await;
    assert_eq!(
        c.recv_type("ack").await["sequence"],
        3,
        "a cursor never moves back"
    );

    c.send(json!({"type": "replay_request", "room": "chat:123", "fromSequence": 1, "limit": 100}))
        .await;
    let replay = c.recv_type("replay").await;
    assert_eq!(replay["room"], "chat:123");
    assert_eq!(seqs(replay["events"].as_array().unwrap()), vec![2, 3]);
    assert_eq!(replay["hasMore"], false);

    c.send(json!({"type": "unsubscribe", "room": "chat:123"})).await;
    assert_eq!(c.recv_type("unsubscribed").await["room"], "chat:123");
    engine
        .publish(publish("chat:123", "message.created", json!({})))
        .await
        .unwrap();
    c.assert_silent(Duration::from_millis(300)).await;
    c.send(json!({"type": "unsubscribe", "room": "chat:123"})).await;
    c.expect_error("4404").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_sequence_delivers_history_then_live_without_gap_or_duplicate() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let engine = gw.engine().clone();
    for i in 1..=300 {
        engine
            .publish(publish("chat:1", "t", json!({"i": i})))
            .await
            .unwrap();
    }
    let publisher = tokio::spawn({
        let engine = engine.clone();
        async move {
            for i in 301..=1300 {
                engine
                    .publish(publish("chat:1", "t", json!({"i": i})))
                    .await
                    .unwrap();
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    let mut c = gw.ready("device-1").await;
    c.send(json!({"type": "subscribe", "room": "chat:1", "fromSequence": 100}))
        .await;
    let sub = c.recv_type("subscribed").await;
    assert_eq!(sub["recovered"], true);
    let events = c.events(1200).await;
    publisher.await.unwrap();
    assert_eq!(seqs(&events), (101..=1300).collect::<Vec<u64>>());
    for e in &events {
        assert_eq!(e["payload"]["i"], e["sequence"]);
    }
    c.assert_silent(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn without_from_sequence_start_is_the_cursor_else_live() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let engine = gw.engine();
    for _ in 0..5 {
        engine.publish(publish("chat:1", "t", json!({}))).await.unwrap();
    }
    // No cursor: live only, but the position is reported.
    let mut browser = gw.ready("browser").await;
    let sub = browser.subscribe("chat:1").await;
    assert_eq!(sub["lastSequence"], 5);
    browser.assert_silent(Duration::from_millis(200)).await;
    // A cursor: resume after it.
    engine
        .ack(&zps_core::Room::parse("chat:1").unwrap(), 2, "phone")
        .await
        .unwrap();
    let mut phone = gw.ready("phone").await;
    let sub = phone.subscribe("chat:1").await;
    assert_eq!(sub["recovered"], true);
    assert_eq!(seqs(&phone.events(3).await), vec![3, 4, 5]);
    engine.publish(publish("chat:1", "t", json!({}))).await.unwrap();
    assert_eq!(seqs(&browser.events(1).await), vec![6]);
    assert_eq!(seqs(&phone.events(1).await), vec![6]);
}

#[tokio::test]
async fn resume_reports_reset_and_expired_positions() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let engine = gw.engine();
    for _ in 0..3 {
        engine.publish(publish("chat:1", "t", json!({}))).await.unwrap();
    }
    let mut c = gw.ready("d").await;
    c.send(json!({"type": "subscribe", "room": "chat:1", "fromSequence": 2, "epoch": "old-epoch"}))
        .await;
    let sub = c.recv_type("subscribed").await;
    assert_eq!(sub["recovered"], false);
    assert_eq!(sub["reason"], "stream_reset");
    assert_eq!(sub["earliestSequence"], 1);
    assert_eq!(
        seqs(&c.events(3).await),
        vec![1, 2, 3],
        "everything of the current epoch is delivered"
    );

    let mut ahead = gw.ready("d2").await;
    ahead
        .send(json!({"type": "subscribe", "room": "chat:1", "fromSequence": 40}))
        .await;
    assert_eq!(ahead.recv_type("subscribed").await["reason"], "stream_reset");

    let mut ok = gw.ready("d3").await;
    let epoch = sub["epoch"].as_str().unwrap();
    ok.send(json!({"type": "subscribe", "room": "chat:1", "fromSequence": 3, "epoch": epoch}))
        .await;
    assert_eq!(ok.recv_type("subscribed").await["recovered"], true);
}

#[tokio::test]
async fn multi_room_and_wildcard_subscriptions() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let engine = gw.engine();
    engine.publish(publish("chat:a", "t", json!({}))).await.unwrap();
    let mut c = gw.ready("d").await;
    c.send(json!({"type": "subscribe", "rooms": ["chat:a", "chat:b"], "positions": {"chat:a": 0}}))
        .await;
    let a = c.recv_type("subscribed").await;
    assert_eq!(a["room"], "chat:a");
    assert_eq!(
        seqs(&c.events(1).await),
        vec![1],
        "per-room position resumes chat:a"
    );
    let b = c.recv_type("subscribed").await;
    assert_eq!(b["room"], "chat:b");

    let mut w = gw.ready("w").await;
    let sub = w.subscribe("order:*").await;
    assert_eq!(sub["room"], "order:*");
    assert!(sub.get("epoch").is_none());
    engine.publish(publish("order:1", "t", json!({}))).await.unwrap();
    engine.publish(publish("chat:b", "t", json!({}))).await.unwrap();
    engine.publish(publish("order:2", "t", json!({}))).await.unwrap();
    let got = w.events(2).await;
    assert_eq!(got[0]["room"], "order:1");
    assert_eq!(got[1]["room"], "order:2");
    let got = c.events(1).await;
    assert_eq!(got[0]["room"], "chat:b");

    // Exact + wildcard of the same room: delivered once.
    let mut both = gw.ready("both").await;
    both.subscribe("order:1").await;
    both.subscribe("order:*").await;
    engine.publish(publish("order:1", "t", json!({}))).await.unwrap();
    assert_eq!(both.events(1).await[0]["sequence"], 2);
    both.assert_silent(Duration::from_millis(200)).await;
    assert!(engine.subscriber_count(&zps_core::Room::parse("order:1").unwrap()) >= 3);
}

#[tokio::test]
async fn client_publish_is_off_by_default_and_answers_with_the_sequence_when_on() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let mut c = gw.ready("d").await;
    c.send(json!({"type": "publish", "requestId": "r1", "event": {"type": "t", "room": "chat:1", "payload": {}}}))
        .await;
    let e = c.expect_error("4403").await;
    assert_eq!(e["requestId"], "r1");

    let mut config = GatewayConfig::default();
    config.limits.allow_client_publish = true;
    let gw = TestGateway::start(config).await;
    let mut sender = gw.ready("sender").await;
    let mut other = gw.ready("other").await;
    sender.subscribe("chat:1").await;
    other.subscribe("chat:1").await;
    sender
        .send(json!({"type": "publish", "requestId": "r1", "event": {"type": "message.created", "room": "chat:1", "payload": {"text": "hi"}, "id": "m-1", "ttlMs": 60000, "metadata": {"traceId": "x"}}}))
        .await;
    let published = sender.recv_type("published").await;
    assert_eq!(published["requestId"], "r1");
    assert_eq!(published["sequence"], 1);
    assert_eq!(published["id"], "m-1");
    assert_eq!(published["duplicate"], false);
    assert_eq!(
        sender.events(1).await[0]["id"],
        "m-1",
        "the sender receives its own event by default"
    );
    let got = other.events(1).await;
    assert_eq!(got[0]["metadata"]["traceId"], "x");
    let ttl = zps_core::Timestamp::parse(got[0]["expiresAt"].as_str().unwrap())
        .unwrap()
        .as_millis()
        - zps_core::Timestamp::parse(got[0]["emittedAt"].as_str().unwrap())
            .unwrap()
            .as_millis();
    assert_eq!(ttl, 60_000);

    // The same id again: the original, nothing delivered.
    sender
        .send(json!({"type": "publish", "requestId": "r2", "event": {"type": "message.created", "room": "chat:1", "payload": {}, "id": "m-1"}}))
        .await;
    let dup = sender.recv_type("published").await;
    assert_eq!(
        (dup["sequence"].as_u64(), dup["duplicate"].as_bool()),
        (Some(1), Some(true))
    );
    other.assert_silent(Duration::from_millis(200)).await;

    // excludeSelf: everyone but the sender.
    sender
        .send(json!({"type": "publish", "excludeSelf": true, "event": {"type": "t", "room": "chat:1", "payload": {}}}))
        .await;
    assert_eq!(sender.recv_type("published").await["sequence"], 2);
    assert_eq!(seqs(&other.events(1).await), vec![2]);
    sender.assert_silent(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_publishers_five_rooms_every_subscriber_sees_one_to_n_in_order() {
    let mut config = GatewayConfig::default();
    config.limits.allow_client_publish = true;
    config.limits.max_messages_per_window = 10_000;
    let gw = TestGateway::start(config).await;
    let rooms: Vec<String> = (0..5).map(|i| format!("load:{i}")).collect();
    let mut subscribers = Vec::new();
    for room in &rooms {
        let mut c = gw.ready(&format!("sub-{room}")).await;
        c.subscribe(room).await;
        subscribers.push(c);
    }
    let per_publisher = 20;
    let mut publishers = Vec::new();
    for p in 0..50 {
        let url = gw.ws_url();
        let rooms = rooms.clone();
        publishers.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await;
            c.send(json!({"type": "init", "subscriberId": format!("pub-{p}")})).await;
            c.recv_type("ready").await;
            for i in 0..per_publisher {
                let room = &rooms[(p + i) % rooms.len()];
                c.send(json!({"type": "publish", "requestId": format!("{p}-{i}"), "event": {"type": "t", "room": room, "payload": {"p": p}}}))
                    .await;
                c.recv_type("published").await;
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let per_room = 50 * per_publisher / rooms.len();
    for mut s in subscribers {
        let got = s.events(per_room).await;
        assert_eq!(seqs(&got), (1..=per_room as u64).collect::<Vec<u64>>());
    }
}

/// One connection sending 600 publishes without waiting: answers come in send
/// order (an engine-refused one in its place), each room's sequences follow
/// the send order, and a replay sent right after sees every one stored.
#[tokio::test]
async fn pipelined_publishes_keep_send_order_and_later_messages_see_them() {
    let mut config = GatewayConfig::default();
    config.limits.allow_client_publish = true;
    config.limits.max_messages_per_window = 10_000;
    let gw = TestGateway::start(config).await;
    let mut sub = gw.ready("sub").await;
    sub.subscribe("pipe:a").await;
    let mut c = gw.ready("producer").await;
    let n = 600;
    let refused = 301;
    for i in 0..n {
        let room = if i % 2 == 0 { "pipe:a" } else { "pipe:b" };
        let mut event = json!({"type": "t", "room": room, "payload": {"i": i}});
        if i == refused {
            // Valid JSON the engine refuses: a zero time to live.
            event["ttlMs"] = json!(0);
        }
        c.send(json!({"type": "publish", "requestId": i.to_string(), "event": event}))
            .await;
    }
    c.send(json!({"type": "replay_request", "room": "pipe:b", "fromSequence": 0, "limit": 1000}))
        .await;
    let (mut next_a, mut next_b) = (1u64, 1u64);
    for i in 0..n {
        let answer = c.recv().await;
        assert_eq!(
            answer["requestId"],
            i.to_string(),
            "answers in send order: {answer}"
        );
        if i == refused {
            assert_eq!(answer["type"], "error", "{answer}");
            assert_eq!(answer["code"], "4422", "{answer}");
            assert_eq!(answer["room"], "pipe:b", "{answer}");
            continue;
        }
        assert_eq!(answer["type"], "published", "{answer}");
        let next = if i % 2 == 0 { &mut next_a } else { &mut next_b };
        assert_eq!(
            answer["sequence"], *next,
            "sequences follow the send order: {answer}"
        );
        *next += 1;
    }
    let replay = c.recv_type("replay").await;
    let stored = replay["events"].as_array().unwrap();
    assert_eq!(seqs(stored), (1..=299).collect::<Vec<u64>>());
    let sent: Vec<u64> = stored
        .iter()
        .map(|e| e["payload"]["i"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = (1..n as u64)
        .step_by(2)
        .filter(|&i| i != refused as u64)
        .collect();
    assert_eq!(sent, want);
    let live = sub.events(300).await;
    assert_eq!(seqs(&live), (1..=300).collect::<Vec<u64>>());
    sub.assert_silent(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn snapshot_request_and_app_ping() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let mut c = gw.ready("d").await;
    c.send(json!({"type": "snapshot_request", "room": "doc:1", "requestId": "s1"}))
        .await;
    let none = c.recv_type("snapshot").await;
    assert_eq!(none["snapshot"], serde_json::Value::Null);
    assert_eq!(none["requestId"], "s1");
    gw.engine()
        .snapshot(
            &zps_core::Room::parse("doc:1").unwrap(),
            42,
            &json!({"title": "T"}),
        )
        .await
        .unwrap();
    c.send(json!({"type": "snapshot_request", "room": "doc:1"})).await;
    let s = c.recv_type("snapshot").await;
    assert_eq!(s["snapshot"]["lastSequence"], 42);
    assert_eq!(s["snapshot"]["state"]["title"], "T");
    c.send(json!({"type": "ping", "id": 7})).await;
    assert_eq!(c.recv_type("pong").await["id"], 7);
}

#[tokio::test]
async fn ephemeral_events_and_presence() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let mut a = gw.ready("alice").await;
    let mut b = gw.ready("bob").await;
    b.send(json!({"type": "subscribe_ephemeral", "room": "chat:1", "eventTypes": ["typing"]}))
        .await;
    assert_eq!(b.recv_type("subscribed_ephemeral").await["room"], "chat:1");
    a.send(json!({"type": "subscribe_ephemeral", "room": "chat:1"}))
        .await;
    a.recv_type("subscribed_ephemeral").await;
    a.send(json!({"type": "publish_ephemeral", "room": "chat:1", "eventType": "typing", "payload": {"u": "alice"}}))
        .await;
    a.send(
        json!({"type": "publish_ephemeral", "room": "chat:1", "eventType": "cursor", "payload": {"x": 1}}),
    )
    .await;
    let got = b.recv_type("ephemeral").await;
    assert_eq!(got["data"]["type"], "typing");
    assert_eq!(got["data"]["payload"]["u"], "alice");
    assert!(
        got["data"].get("origin").is_none(),
        "connection ids are not leaked"
    );
    b.assert_silent(Duration::from_millis(200)).await;
    a.assert_silent(Duration::from_millis(100)).await;
    // Nothing was stored.
    let info = gw
        .engine()
        .room_info(&zps_core::Room::parse("chat:1").unwrap())
        .await
        .unwrap();
    assert_eq!(info.last_sequence, 0);

    b.send(json!({"type": "presence_subscribe", "room": "chat:1"}))
        .await;
    assert_eq!(b.recv_type("presence_state").await["members"], json!([]));
    a.send(json!({"type": "presence_enter", "room": "chat:1", "metadata": {"name": "Alice"}}))
        .await;
    let state = a.recv_type("presence_state").await;
    assert_eq!(state["members"][0]["userId"], "alice");
    // Every watcher hears the join, the joining connection included.
    assert_eq!(a.recv_type("presence").await["action"], "member_added");
    let joined = b.recv_type("presence").await;
    assert_eq!(joined["action"], "member_added");
    assert_eq!(joined["userId"], "alice");
    assert_eq!(joined["member"]["metadata"]["name"], "Alice");
    // The same user on a second connection is one member.
    let mut a2 = gw.ready("alice").await;
    a2.send(json!({"type": "presence_enter", "room": "chat:1"})).await;
    assert_eq!(
        a2.recv_type("presence_state").await["members"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    drop(a2);
    b.assert_silent(Duration::from_millis(200)).await;
    // The last connection leaving removes the member.
    a.send(json!({"type": "presence_leave", "room": "chat:1"})).await;
    assert_eq!(a.recv_type("presence_state").await["members"], json!([]));
    let left = b.recv_type("presence").await;
    assert_eq!(
        (left["action"].as_str(), left["userId"].as_str()),
        (Some("member_removed"), Some("alice"))
    );
}

#[tokio::test]
async fn health_live_ready_and_metrics() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let mut c = gw.ready("d").await;
    c.subscribe("chat:1").await;
    let http = reqwest::Client::new();
    let health: serde_json::Value = http
        .get(gw.http_url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["connections"], 1);
    assert_eq!(health["transport"]["provider"], "memory");
    assert!(health["metrics"]["published"].is_u64());
    assert_eq!(http.get(gw.http_url("/live")).send().await.unwrap().status(), 200);
    assert_eq!(
        http.get(gw.http_url("/ready")).send().await.unwrap().status(),
        200
    );
    gw.engine()
        .publish(publish("chat:1", "t", json!({})))
        .await
        .unwrap();
    assert_eq!(c.recv_type("event").await["data"]["sequence"], 1);
    let metrics = http
        .get(gw.http_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("zps_events_published_total"), "{metrics}");
    assert!(metrics.contains("zps_gateway_connections"), "{metrics}");
    // The live delivery's lag, from the sharded histogram written at scrape time.
    assert!(
        metrics.contains("# TYPE zps_delivery_lag_seconds histogram"),
        "{metrics}"
    );
    let series = |name: &str| -> u64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap_or_default();
        line.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    // At least this delivery (the recorder is process-wide).
    assert!(series("zps_delivery_lag_seconds_count ") >= 1, "{metrics}");
    assert_eq!(
        series("zps_delivery_lag_seconds_bucket{le=\"+Inf\"} "),
        series("zps_delivery_lag_seconds_count "),
        "{metrics}"
    );
    assert!(!metrics.contains("chat:1"), "no per-room labels");
}

#[tokio::test]
async fn shutdown_drains_with_1012_and_refuses_new_connections() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let mut a = gw.ready("a").await;
    let mut b = gw.ready("b").await;
    b.subscribe("chat:1").await;
    let g = gw.gateway.clone();
    let drained = tokio::spawn(async move { g.shutdown().await });
    a.expect_close(1012).await;
    b.expect_close(1012).await;
    drained.await.unwrap();
    assert_eq!(gw.gateway.connections(), 0);
    assert!(gw.engine().is_closed(), "the transport is closed after the drain");
    let health = gw.gateway.health().await;
    assert_eq!(health.status, "draining");
}

#[tokio::test]
async fn a_failed_history_read_drops_the_room_so_the_client_can_resubscribe() {
    use std::sync::Arc;
    let faulty = Arc::new(zps_conformance::fault::FaultyTransport::new(Arc::new(
        zps_core::MemoryTransport::default(),
    )));
    let engine = zps_core::Realtime::new(faulty.clone());
    for _ in 0..3 {
        engine.publish(publish("chat:1", "t", json!({}))).await.unwrap();
    }
    let gw = TestGateway::start_with(engine, GatewayConfig::default()).await;
    let mut c = gw.ready("d").await;
    faulty.fail_next_replays(1);
    c.send(json!({"type": "subscribe", "room": "chat:1", "fromSequence": 0, "requestId": "s1"}))
        .await;
    let sub = c.recv_type("subscribed").await;
    assert_eq!(
        (sub["startAfter"].as_u64(), sub["requestId"].as_str()),
        (Some(0), Some("s1"))
    );
    let e = c.expect_error("4503").await;
    assert_eq!(e["room"], "chat:1");
    assert_eq!(e["requestId"], "s1");
    // The room was dropped, not left half-subscribed.
    c.send(json!({"type": "unsubscribe", "room": "chat:1"})).await;
    c.expect_error("4404").await;
    c.send(json!({"type": "subscribe", "room": "chat:1", "fromSequence": 0}))
        .await;
    c.recv_type("subscribed").await;
    assert_eq!(seqs(&c.events(3).await), vec![1, 2, 3]);
}

#[tokio::test]
async fn subscribed_says_where_delivery_starts_and_presence_can_be_unwatched() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    for _ in 0..9 {
        gw.engine()
            .publish(publish("chat:1", "t", json!({})))
            .await
            .unwrap();
    }
    gw.engine()
        .ack(&zps_core::Room::parse("chat:1").unwrap(), 5, "d")
        .await
        .unwrap();
    let mut c = gw.ready("d").await;
    let sub = c.subscribe("chat:1").await;
    assert_eq!(
        (sub["startAfter"].as_u64(), sub["lastSequence"].as_u64()),
        (Some(5), Some(9))
    );
    assert_eq!(seqs(&c.events(4).await), vec![6, 7, 8, 9]);
    let mut live = gw.ready("other").await;
    assert_eq!(live.subscribe("chat:1").await["startAfter"], 9);

    c.send(json!({"type": "presence_subscribe", "room": "chat:1"}))
        .await;
    c.recv_type("presence_state").await;
    c.send(json!({"type": "presence_unsubscribe", "room": "chat:1"}))
        .await;
    assert_eq!(c.recv_type("unsubscribed").await["room"], "chat:1");
    let mut a = gw.ready("alice").await;
    a.send(json!({"type": "presence_enter", "room": "chat:1"})).await;
    a.recv_type("presence_state").await;
    c.assert_silent(Duration::from_millis(200)).await;
    c.send(json!({"type": "presence_unsubscribe", "room": "chat:1"}))
        .await;
    c.expect_error("4404").await;
}
