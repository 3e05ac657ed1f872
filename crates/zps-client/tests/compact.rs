//! The client with compact event frames: the same envelopes as over JSON,
//! history then live, exactly once in order across a cut connection.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::*;
use zps_client::{Client, Encoding, OutgoingEvent, SubscribeOptions};

#[tokio::test]
async fn compact_events_match_json_ones_and_survive_a_reconnect() {
    let gw = TestGateway::start(publish_config()).await;
    publish_n(gw.engine(), "chat:1", 5).await;
    let relay = Relay::start(gw.addr).await;
    let compact = Client::connect(
        relay.url(),
        fast_options("compact").with_encoding(Encoding::Compact),
    )
    .unwrap();
    let json_client = Client::connect(gw.ws_url(), fast_options("json")).unwrap();
    let mut c_sub = compact
        .subscribe_with_options("chat:1", SubscribeOptions::new().from_beginning())
        .await
        .unwrap();
    let mut j_sub = json_client
        .subscribe_with_options("chat:1", SubscribeOptions::new().from_beginning())
        .await
        .unwrap();
    assert_eq!(next_seqs(&mut c_sub, 5).await, [1, 2, 3, 4, 5]);
    assert_eq!(next_seqs(&mut j_sub, 5).await, [1, 2, 3, 4, 5]);

    // Cut the compact client's connection; what is published meanwhile is caught up.
    relay.cut_all();
    for i in 6..=8 {
        gw.engine().publish(event("chat:1", i)).await.unwrap();
    }
    let published = compact
        .publish(
            OutgoingEvent::new("chat:1", "message.created", &json!({"text": "hé \"x\""}))
                .unwrap()
                .with_metadata("traceId", json!("t-9"))
                .encrypted(),
        )
        .await
        .unwrap();
    assert_eq!(published.sequence, 9);

    let via_compact = next_items(&mut c_sub, 4).await;
    let via_json = next_items(&mut j_sub, 4).await;
    let as_json = |items: &[zps_client::ClientEvent]| -> Vec<String> {
        items.iter().map(|i| i.envelope().unwrap().to_json()).collect()
    };
    assert_eq!(as_json(&via_compact), as_json(&via_json));
    let last = via_compact[3].envelope().unwrap();
    assert_eq!(
        (
            last.sequence,
            last.encrypted,
            last.metadata.as_ref().unwrap()["traceId"].as_str()
        ),
        (9, true, Some("t-9"))
    );
    assert!(relay.accepted() >= 2, "the compact client reconnected");
}
