//! The HTTP API over real HTTP: every route's success, refusals (401/403/404/
//! 413/422/429 in the one error shape), idempotency, and delivery to
//! WebSocket and SSE subscribers (the document itself: `api_surface.rs`).

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::api::*;
use support::sse::Sse;
use support::*;
use zps_gateway::GatewayConfig;

#[tokio::test]
async fn publish_reaches_websocket_and_sse_once_per_id() {
    let gw = TestGateway::start(config()).await;
    let http = Http::new(&gw);
    let alice = token("alice", json!({}));
    let mut ws = gw.ready_with_token("alice", &alice).await;
    ws.subscribe("chat:1").await;
    let mut sse = Sse::open(&gw.http_url(&format!("/events?room=chat:1&token={alice}")), &[])
        .await
        .unwrap();

    let event = json!({"room": "chat:1", "type": "message.created", "payload": {"text": "hi"}, "id": "m-1"});
    let first = http
        .call("POST", "/publish", Some(PUBLISH), Some(event.clone()))
        .await;
    assert_eq!(
        first,
        (
            200,
            json!({"id": "m-1", "room": "chat:1", "sequence": 1, "duplicate": false})
        )
    );
    let got = ws.events(1).await;
    assert_eq!(
        (got[0]["sequence"].as_u64(), got[0]["payload"]["text"].as_str()),
        (Some(1), Some("hi"))
    );
    let (id, data) = sse.event().await;
    assert_eq!((id.as_str(), data["sequence"].as_u64()), ("chat:1@1", Some(1)));

    // The same id again: the first event's place, nothing delivered.
    let again = http.call("POST", "/publish", Some(PUBLISH), Some(event)).await;
    assert_eq!(
        again,
        (
            200,
            json!({"id": "m-1", "room": "chat:1", "sequence": 1, "duplicate": true})
        )
    );

    // An ordered batch: one result per event, refusals keep their place.
    let batch = json!({"events": [
        {"room": "chat:1", "type": "a", "payload": 1},
        {"room": "not a room", "type": "b"},
        {"room": "chat:1", "type": "c", "payload": 3, "id": "m-1"},
        {"room": "chat:1", "type": "d", "payload": 4},
    ]});
    let (status, body) = http.call("POST", "/publish", Some(PUBLISH), Some(batch)).await;
    assert_eq!(status, 207, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["sequence"], 2);
    assert_eq!(results[1]["error"]["code"], "4422");
    assert_eq!(
        (results[2]["sequence"].as_u64(), results[2]["duplicate"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(results[3]["sequence"], 3);
    let live = ws.events(2).await;
    assert_eq!(seqs(&live), vec![2, 3]);
    assert_eq!(
        (live[0]["type"].as_str(), live[1]["type"].as_str()),
        (Some("a"), Some("d"))
    );
    for want in [2, 3] {
        assert_eq!(sse.event().await.1["sequence"], want);
    }
    ws.assert_silent(Duration::from_millis(200)).await;

    // Broadcast: one event per room, each with its own sequence and id.
    let b = json!({"rooms": ["chat:1", "chat:2"], "type": "notice", "payload": {}, "id": "n-1"});
    let (status, body) = http
        .call("POST", "/broadcast", Some(PUBLISH), Some(b.clone()))
        .await;
    assert_eq!(status, 207);
    assert_eq!(body["results"][0]["id"], "n-1:chat:1");
    assert_eq!(body["results"][0]["sequence"], 4);
    assert_eq!(body["results"][1]["sequence"], 1);
    assert_eq!(ws.events(1).await[0]["type"], "notice");
    let (_, body) = http.call("POST", "/broadcast", Some(PUBLISH), Some(b)).await;
    assert_eq!(body["results"][0]["duplicate"], true);

    // Ephemeral: delivered live, not stored.
    ws.send(json!({"type": "subscribe_ephemeral", "room": "chat:1"}))
        .await;
    let _ = ws.recv().await;
    let e = json!({"room": "chat:1", "type": "typing", "payload": {"who": "bob"}});
    assert_eq!(
        http.call("POST", "/ephemeral", Some(PUBLISH), Some(e)).await.0,
        202
    );
    let typing = ws.recv_type("ephemeral").await;
    assert_eq!(typing["data"]["payload"]["who"], "bob");
    assert_eq!(
        gw.engine()
            .room_info(&zps_core::Room::parse("chat:1").unwrap())
            .await
            .unwrap()
            .last_sequence,
        4
    );
}

#[tokio::test]
async fn credentials_and_scopes_are_401_and_403() {
    let gw = TestGateway::start(config()).await;
    let http = Http::new(&gw);
    let ev = |room: &str| Some(json!({"room": room, "type": "t"}));
    refused(
        &http.call("POST", "/publish", None, ev("chat:1")).await,
        401,
        "4401",
    );
    refused(
        &http
            .call(
                "POST",
                "/publish",
                Some("zps_not-a-known-key-000000000000"),
                ev("chat:1"),
            )
            .await,
        401,
        "4401",
    );
    refused(
        &http
            .call("POST", "/publish", Some("not.a.jwt"), ev("chat:1"))
            .await,
        401,
        "4401",
    );
    let expired = hs256(json!({"sub": "a", "exp": now_secs() - 120}));
    refused(
        &http.call("GET", "/rooms/chat:1", Some(&expired), None).await,
        401,
        "4401",
    );
    // A key without the scope, a key limited to other rooms.
    refused(
        &http.call("GET", "/rooms", Some(PUBLISH), None).await,
        403,
        "4403",
    );
    refused(
        &http.call("POST", "/publish", Some(READ_CHAT), ev("chat:1")).await,
        403,
        "4403",
    );
    refused(
        &http.call("GET", "/rooms/order:1", Some(READ_CHAT), None).await,
        403,
        "4408",
    );
    refused(
        &http
            .call("POST", "/publish", Some(CHAT1_ONLY), ev("chat:2"))
            .await,
        403,
        "4408",
    );
    assert_eq!(
        http.call("POST", "/publish", Some(CHAT1_ONLY), ev("chat:1"))
            .await
            .0,
        200
    );
    // Operations beyond one room need an unlimited key.
    refused(
        &http.call("POST", "/prune", Some(CHAT1_ONLY), None).await,
        403,
        "4408",
    );
    assert_eq!(
        http.call("POST", "/prune", Some(ADMIN), None).await,
        (200, json!({"removed": 0}))
    );
    // Client tokens: the socket's rules (client publishing is off by default;
    // the rooms claim limits reads).
    let limited = token("carol", json!({"rooms": ["chat:1"]}));
    refused(
        &http.call("POST", "/publish", Some(&limited), ev("chat:1")).await,
        403,
        "4403",
    );
    assert_eq!(
        http.call("GET", "/rooms/chat:1", Some(&limited), None).await.0,
        200
    );
    refused(
        &http
            .call("GET", "/rooms/chat:2/events", Some(&limited), None)
            .await,
        403,
        "4408",
    );
    refused(
        &http.call("GET", "/rooms", Some(&limited), None).await,
        403,
        "4403",
    );
    // A client moves its own cursor only.
    let c = Some(json!({"sequence": 1}));
    assert_eq!(
        http.call(
            "PUT",
            "/subscribers/carol/cursors/chat:1",
            Some(&limited),
            c.clone()
        )
        .await
        .0,
        200
    );
    refused(
        &http
            .call("PUT", "/subscribers/dave/cursors/chat:1", Some(&limited), c)
            .await,
        403,
        "4403",
    );
    // The per-caller rate limit: a burst of 2, then 429 with Retry-After.
    for _ in 0..2 {
        assert_eq!(http.call("GET", "/rooms", Some(SLOW), None).await.0, 200);
    }
    let resp = reqwest::Client::new()
        .get(gw.http_url("/api/v1/rooms"))
        .bearer_auth(SLOW)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "4429");
}

#[tokio::test]
async fn bad_input_gets_the_error_shape() {
    let mut c = config();
    c.limits.max_payload_bytes = 1024;
    let gw = TestGateway::start(c).await;
    let http = Http::new(&gw);
    let post = |body: &str| http.raw("POST", "/publish", Some(ADMIN), Some(body.to_owned()));
    refused(&post("{not json").await, 400, "4400");
    refused(&post(r#"{"room": 5, "type": "t"}"#).await, 400, "4400");
    refused(
        &post(r#"{"room": "chat:1", "type": "t", "surprise": 1}"#).await,
        400,
        "4400",
    );
    refused(&post(r#"{"events": []}"#).await, 400, "4400");
    refused(&post(r#"{"room": "chat", "type": "t"}"#).await, 422, "4422");
    refused(&post(r#"{"room": "chat:*", "type": "t"}"#).await, 422, "4422");
    refused(
        &post(r#"{"room": "zps-cluster:nodes", "type": "t"}"#).await,
        422,
        "4422",
    );
    let big_payload = format!(
        r#"{{"room": "chat:1", "type": "t", "payload": "{}"}}"#,
        "x".repeat(2000)
    );
    refused(&post(&big_payload).await, 413, "4413");
    let big_body = format!(
        r#"{{"room": "chat:1", "type": "t", "payload": "{}"}}"#,
        "x".repeat(20_000)
    );
    refused(&post(&big_body).await, 413, "4413");
    refused(
        &http
            .call("GET", "/rooms/chat:1/events?limit=abc", Some(ADMIN), None)
            .await,
        400,
        "4400",
    );
    refused(
        &http
            .call("DELETE", "/rooms/chat:1/dlq/abc", Some(ADMIN), None)
            .await,
        400,
        "4400",
    );
    refused(
        &http
            .call("GET", "/rooms/chat:1/snapshot", Some(ADMIN), None)
            .await,
        404,
        "4406",
    );
    refused(
        &http
            .call("GET", "/subscribers/nobody/cursors/chat:1", Some(ADMIN), None)
            .await,
        404,
        "4406",
    );
    refused(
        &http
            .call("DELETE", "/connections/no-such-connection", Some(ADMIN), None)
            .await,
        404,
        "4406",
    );
    refused(
        &http
            .call("DELETE", "/rooms/chat:1/dlq/7", Some(ADMIN), None)
            .await,
        404,
        "4406",
    );
    refused(
        &http
            .call("POST", "/rooms/chat:1/dlq/7/replay", Some(ADMIN), None)
            .await,
        404,
        "4406",
    );
    // Nothing was stored by any of it.
    let (_, room) = http.call("GET", "/rooms/chat:1", Some(ADMIN), None).await;
    assert_eq!(room["lastSequence"], 0);
}

#[tokio::test]
async fn rooms_history_presence_snapshots_and_cursors() {
    let gw = TestGateway::start(config()).await;
    let http = Http::new(&gw);
    let alice = token("alice", json!({}));
    let mut ws = gw.ready_with_token("alice", &alice).await;
    ws.subscribe("chat:9").await;
    ws.send(json!({"type": "presence_enter", "room": "chat:9", "metadata": {"name": "Alice"}}))
        .await;
    ws.recv_type("presence_state").await;
    for i in 1..=5 {
        let t = if i % 2 == 0 { "even" } else { "odd" };
        let e = json!({"room": "chat:9", "type": t, "payload": {"i": i}});
        assert_eq!(http.call("POST", "/publish", Some(ADMIN), Some(e)).await.0, 200);
    }
    let mut live = Vec::new();
    while live.len() < 5 {
        let m = ws.recv().await;
        if m["type"] == "event" {
            live.push(m["data"]["sequence"].as_u64().unwrap());
        }
    }
    assert_eq!(live, vec![1, 2, 3, 4, 5]);

    let (status, list) = http.call("GET", "/rooms?prefix=chat:", Some(ADMIN), None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["rooms"], json!([{"room": "chat:9", "subscribers": 1}]));
    assert_eq!(list["nodes"], 1);
    let (_, none) = http.call("GET", "/rooms?prefix=order:", Some(ADMIN), None).await;
    assert_eq!(none["rooms"], json!([]));

    let (status, room) = http.call("GET", "/rooms/chat%3A9", Some(READ_CHAT), None).await;
    assert_eq!(status, 200, "{room}");
    assert_eq!(
        (
            room["lastSequence"].as_u64(),
            room["earliestSequence"].as_u64(),
            room["subscribers"].as_u64(),
            room["presence"].as_u64()
        ),
        (Some(5), Some(1), Some(1), Some(1))
    );

    let (_, page) = http
        .call(
            "GET",
            "/rooms/chat:9/events?fromSequence=1&limit=2",
            Some(READ_CHAT),
            None,
        )
        .await;
    let got: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![2, 3]);
    assert_eq!(
        (page["hasMore"].as_bool(), page["nextFromSequence"].as_u64()),
        (Some(true), Some(3))
    );
    let (_, last) = http
        .call(
            "GET",
            "/rooms/chat:9/events?fromSequence=3",
            Some(READ_CHAT),
            None,
        )
        .await;
    assert_eq!(last["events"].as_array().unwrap().len(), 2);
    assert_eq!(last["hasMore"], false);
    assert!(last.get("nextFromSequence").is_none());
    let (_, odd) = http
        .call("GET", "/rooms/chat:9/events?types=odd", Some(READ_CHAT), None)
        .await;
    let got: Vec<u64> = odd["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![1, 3, 5]);

    let (_, presence) = http
        .call("GET", "/rooms/chat:9/presence", Some(READ_CHAT), None)
        .await;
    assert_eq!(presence["members"].as_array().unwrap().len(), 1);
    assert_eq!(presence["members"][0]["userId"], "alice");
    assert_eq!(presence["members"][0]["metadata"]["name"], "Alice");

    let snap = json!({"lastSequence": 5, "state": {"count": 5}});
    refused(
        &http
            .call(
                "PUT",
                "/rooms/chat:9/snapshot",
                Some(READ_CHAT),
                Some(snap.clone()),
            )
            .await,
        403,
        "4403",
    );
    let (status, stored) = http
        .call("PUT", "/rooms/chat:9/snapshot", Some(ADMIN), Some(snap))
        .await;
    assert_eq!(
        (status, &stored["lastSequence"], &stored["state"]),
        (200, &json!(5), &json!({"count": 5}))
    );
    let (_, read) = http
        .call("GET", "/rooms/chat:9/snapshot", Some(READ_CHAT), None)
        .await;
    assert_eq!(
        (&read["lastSequence"], &read["state"]),
        (&json!(5), &json!({"count": 5}))
    );

    let put = |seq: u64| {
        http.call(
            "PUT",
            "/subscribers/alice/cursors/chat:9",
            Some(ADMIN),
            Some(json!({"sequence": seq})),
        )
    };
    assert_eq!(put(3).await, (200, json!({"sequence": 3})));
    assert_eq!(
        put(2).await,
        (200, json!({"sequence": 3})),
        "cursors never move back"
    );
    let got = http
        .call("GET", "/subscribers/alice/cursors/chat:9", Some(READ_CHAT), None)
        .await;
    assert_eq!(got, (200, json!({"sequence": 3})));
}

#[tokio::test]
async fn kicks_bans_and_sse_presence_by_connection() {
    let gw = TestGateway::start(config()).await;
    let http = Http::new(&gw);
    let mallory = token("mallory", json!({}));
    let mut ws = gw.client().await;
    ws.send(json!({"type": "init", "subscriberId": "mallory", "token": mallory}))
        .await;
    let ready = ws.recv_type("ready").await;
    let conn = ready["connectionId"].as_str().unwrap().to_owned();
    refused(
        &http
            .call("DELETE", &format!("/connections/{conn}"), Some(READ_CHAT), None)
            .await,
        403,
        "4403",
    );
    let kicked = http
        .call(
            "DELETE",
            &format!("/connections/{conn}?reason=bye"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(kicked, (200, json!({"closed": 1})));
    let told = ws.expect_error("4403").await;
    assert_eq!(told["message"], "bye");
    ws.expect_close(4403).await;

    // Every connection of a subscriber, and a ban on reconnecting.
    let mut a = gw.ready_with_token("mallory", &mallory).await;
    let mut b = gw.ready_with_token("mallory", &mallory).await;
    let body = json!({"reason": "spam", "banSeconds": 60});
    let out = http
        .call("POST", "/subscribers/mallory/disconnect", Some(ADMIN), Some(body))
        .await;
    assert_eq!(out, (200, json!({"closed": 2})));
    a.expect_close(4403).await;
    b.expect_close(4403).await;
    let mut again = gw.client().await;
    again
        .send(json!({"type": "init", "subscriberId": "mallory", "token": mallory}))
        .await;
    again.expect_error("4403").await;
    again.expect_close(4403).await;
    let (status, _) = Sse::open(
        &gw.http_url(&format!(
            "/events?room=chat:1&subscriberId=mallory&token={mallory}"
        )),
        &[],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status, 403);

    // An SSE client enters presence for its own stream by connection id.
    let erin = token("erin", json!({}));
    let mut sse = Sse::open(
        &gw.http_url(&format!("/events?room=chat:5&subscriberId=erin&token={erin}")),
        &[],
    )
    .await
    .unwrap();
    let ready = loop {
        let r = sse.record().await;
        if r.event.as_deref() == Some("ready") {
            break serde_json::from_str::<Value>(&r.data.unwrap()).unwrap();
        }
    };
    let id = ready["connectionId"].as_str().unwrap().to_owned();
    let path = format!("/rooms/chat:5/presence/{id}");
    let other = token("frank", json!({}));
    refused(
        &http.call("PUT", &path, Some(&other), Some(json!({}))).await,
        403,
        "4403",
    );
    let (status, state) = http
        .call(
            "PUT",
            &path,
            Some(&erin),
            Some(json!({"metadata": {"name": "Erin"}})),
        )
        .await;
    assert_eq!(status, 200, "{state}");
    let (_, p) = http
        .call("GET", "/rooms/chat:5/presence", Some(ADMIN), None)
        .await;
    assert_eq!(p["members"][0]["userId"], "erin");
    assert_eq!(http.call("DELETE", &path, Some(&erin), None).await.0, 204);
    let (_, p) = http
        .call("GET", "/rooms/chat:5/presence", Some(ADMIN), None)
        .await;
    assert_eq!(p["members"], json!([]));
}

#[tokio::test]
async fn dead_letters_list_replay_and_drop() {
    let gw = TestGateway::start(config()).await;
    let http = Http::new(&gw);
    let room = zps_core::Room::parse("orders:7").unwrap();
    let mut ids = Vec::new();
    for i in 1..=3 {
        let out = gw
            .engine()
            .publish(publish("orders:7", "order.paid", json!({"n": i})))
            .await
            .unwrap();
        let entry = gw
            .engine()
            .dlq(room.clone())
            .write(zps_core::NewDlqEntry {
                event: (*out).clone(),
                failed_at: zps_core::Timestamp::now(),
                error: format!("handler failed {i}"),
                attempts: 3,
                subscriber_id: Some("billing".into()),
            })
            .await
            .unwrap();
        ids.push(entry.entry_id);
    }
    let (status, page) = http
        .call("GET", "/rooms/orders:7/dlq", Some(READ_CHAT), None)
        .await;
    refused(&(status, page), 403, "4408");
    let (status, page) = http
        .call("GET", "/rooms/orders:7/dlq?limit=2", Some(ADMIN), None)
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["total"], 3);
    let listed: Vec<u64> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["entryId"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, ids[..2].to_vec());

    let replay = format!("/rooms/orders:7/dlq/{}/replay", ids[0]);
    let (status, replayed) = http.call("POST", &replay, Some(ADMIN), None).await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(
        (replayed["sequence"].as_u64(), replayed["duplicate"].as_bool()),
        (Some(4), Some(false))
    );
    refused(&http.call("POST", &replay, Some(ADMIN), None).await, 404, "4406");
    let (_, ev) = http
        .call("GET", "/rooms/orders:7/events?fromSequence=3", Some(ADMIN), None)
        .await;
    assert_eq!(ev["events"][0]["payload"], json!({"n": 1}));

    let drop = format!("/rooms/orders:7/dlq/{}", ids[1]);
    assert_eq!(http.call("DELETE", &drop, Some(ADMIN), None).await.0, 204);
    refused(&http.call("DELETE", &drop, Some(ADMIN), None).await, 404, "4406");
    let (_, page) = http.call("GET", "/rooms/orders:7/dlq", Some(ADMIN), None).await;
    assert_eq!(page["total"], 1);
    assert_eq!(page["entries"][0]["entryId"], ids[2]);
}

#[tokio::test]
async fn minted_tokens_open_only_their_rooms() {
    let gw = TestGateway::start(config()).await;
    let http = Http::new(&gw);
    let ask = json!({"subject": "zoe", "rooms": ["chat:*"], "ttlSeconds": 120});
    let (status, minted) = http.call("POST", "/tokens", Some(READ_CHAT), Some(ask)).await;
    assert_eq!(status, 200, "{minted}");
    let exp = minted["expiresAt"].as_u64().unwrap();
    assert!(exp > now_secs() + 100 && exp <= now_secs() + 121, "{exp}");
    let t = minted["token"].as_str().unwrap();
    let mut ws = gw.ready_with_token("zoe", t).await;
    ws.subscribe("chat:3").await;
    ws.send(json!({"type": "subscribe", "room": "order:3"})).await;
    ws.expect_error("4408").await;
    // Keys mint within their own rooms only; publish-only keys not at all.
    let wider = json!({"subject": "zoe", "rooms": ["order:*"]});
    refused(
        &http.call("POST", "/tokens", Some(READ_CHAT), Some(wider)).await,
        403,
        "4408",
    );
    let ok = json!({"subject": "zoe", "rooms": ["chat:1"]});
    refused(
        &http
            .call("POST", "/tokens", Some(PUBLISH), Some(ok.clone()))
            .await,
        403,
        "4403",
    );
    // A gateway without an HS256 secret mints nothing.
    let mut plain = GatewayConfig::default();
    plain.api.keys = config().api.keys;
    let other = TestGateway::start(plain).await;
    refused(
        &Http::new(&other)
            .call("POST", "/tokens", Some(ADMIN), Some(ok))
            .await,
        501,
        "4501",
    );
}
