//! The compact encoding (`zps.compact.v1`): negotiated per connection; events
//! arrive as MessagePack binary frames with every field of the JSON event,
//! history and live alike, in order; everything else stays JSON; connections
//! that do not ask keep the JSON protocol.

#![allow(clippy::unwrap_used)]

mod support;

use futures::StreamExt;
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use zps_core::{PublishRequest, Room};
use zps_gateway::GatewayConfig;
use zps_protocol::compact::{COMPACT_SUBPROTOCOL, EventView};

/// A connection that offered `protocols`; returns it and the protocol the server chose.
async fn connect(url: &str, protocols: &str) -> (Client, Option<String>) {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    (Client { ws }, chosen)
}

/// The next event of a compact connection, as the JSON envelope it stands for
/// (text frames in between must not be events).
async fn next_compact_event(c: &mut Client) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("no message in time")
            .unwrap()
            .unwrap();
        match msg {
            Message::Binary(b) => {
                let envelope = EventView::decode(&b).unwrap().to_envelope().unwrap();
                return serde_json::from_str(&envelope.to_json()).unwrap();
            }
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_ne!(v["type"], "event", "an event arrived as JSON: {v}");
            }
            _ => {}
        }
    }
}

async fn publish(gw: &TestGateway, room: &str, i: u64, encrypted: bool) {
    let mut req = PublishRequest::new(
        Room::parse(room).unwrap(),
        "message.created",
        &json!({"i": i, "text": "héllo \"x\""}),
    )
    .unwrap()
    .with_metadata("traceId", json!(format!("t-{i}")));
    if encrypted {
        req = req.encrypted();
    }
    gw.engine().publish(req).await.unwrap();
}

#[tokio::test]
async fn events_arrive_compact_with_every_field_history_and_live_in_order() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    for i in 1..=3 {
        publish(&gw, "chat:1", i, i == 2).await;
    }
    let (mut compact, chosen) = connect(&gw.ws_url(), &format!("{COMPACT_SUBPROTOCOL}, zps.json.v1")).await;
    assert_eq!(chosen.as_deref(), Some(COMPACT_SUBPROTOCOL));
    let mut json_client = gw.ready("json").await;

    compact
        .send(json!({"type": "init", "subscriberId": "compact"}))
        .await;
    compact.recv_type("ready").await;
    compact
        .send(json!({"type": "subscribe", "room": "chat:1", "fromSequence": 0}))
        .await;
    let subscribed = compact.recv_type("subscribed").await;
    assert_eq!(subscribed["lastSequence"], 3);
    json_client
        .send(json!({"type": "subscribe", "room": "chat:1", "fromSequence": 0}))
        .await;
    json_client.recv_type("subscribed").await;

    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_compact_event(&mut compact).await);
    }
    publish(&gw, "chat:1", 4, false).await;
    got.push(next_compact_event(&mut compact).await);

    // The same events, field for field, as the JSON connection receives them.
    let expected = json_client.events(4).await;
    assert_eq!(got, expected);
    assert_eq!(seqs(&got), [1, 2, 3, 4]);
    assert_eq!(got[1]["encrypted"], true);
    assert_eq!(got[3]["metadata"]["traceId"], "t-4");

    // Answers stay JSON text.
    compact.send(json!({"type": "ping", "id": "p1"})).await;
    assert_eq!(compact.recv_type("pong").await["id"], "p1");
}

#[tokio::test]
async fn a_connection_that_asks_for_json_gets_json() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let (mut c, chosen) = connect(&gw.ws_url(), "something.else, zps.json.v1").await;
    assert_eq!(chosen.as_deref(), Some("zps.json.v1"));
    c.send(json!({"type": "init", "subscriberId": "plain"})).await;
    c.recv_type("ready").await;
    c.subscribe("chat:1").await;
    publish(&gw, "chat:1", 1, false).await;
    assert_eq!(seqs(&c.events(1).await), [1]);
    let _ = c.ws.close(None).await;
}
