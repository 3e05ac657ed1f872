//! The real binary on MongoDB (the nx-27017 stand-in in CI): a gateway that
//! stores, delivers and replays; and `publish`/`replay` through the provider.

#![allow(clippy::unwrap_used)]

use serde_json::json;

mod support;
use support::{Gateway, recv, send, start_gateway};

/// The test database URL, or `None` (with the skip line) when there is no MongoDB.
fn mongo_url(test: &str) -> Option<String> {
    match std::env::var("ZPS_TEST_MONGO_URL") {
        Ok(base) => {
            // One database per test run: the URL path names it.
            let db = format!("zps_cli_{test}_{}", std::process::id());
            let (head, query) = base.split_once('?').unwrap_or((&base, ""));
            let head = head.trim_end_matches('/');
            Some(format!("{head}/{db}?{query}"))
        }
        Err(_) => {
            // Under `cargo xtask test` a missing service fails; elsewhere it is skipped visibly.
            assert!(
                std::env::var_os("ZPS_REQUIRE_SERVICES").is_none(),
                "{test}: no MongoDB (set ZPS_TEST_MONGO_URL)"
            );
            eprintln!("{test}: skipped: no MongoDB (set ZPS_TEST_MONGO_URL)");
            None
        }
    }
}

fn start(url: &str) -> Gateway {
    start_gateway(&[
        "--allow-client-publish",
        "--provider",
        "mongo",
        "--connection",
        url,
    ])
}

#[tokio::test]
async fn gateway_on_mongo_stores_delivers_and_resumes() {
    let Some(url) = mongo_url("gateway") else { return };
    let gw = start(&url);
    let (mut ws, _) = tokio_tungstenite::connect_async(&gw.ws).await.unwrap();
    send(&mut ws, json!({"type": "init", "subscriberId": "d"})).await;
    assert_eq!(recv(&mut ws).await["type"], "ready");
    send(&mut ws, json!({"type": "subscribe", "room": "chat:1"})).await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    let mut seqs = Vec::new();
    for i in 0..5 {
        send(&mut ws, json!({"type": "publish", "requestId": i.to_string(), "event": {"type": "t", "room": "chat:1", "payload": {"i": i}}})).await;
    }
    while seqs.len() < 5 {
        let m = recv(&mut ws).await;
        if m["type"] == "event" {
            seqs.push(m["data"]["sequence"].as_u64().unwrap());
        }
    }
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    drop(ws);
    // Stored durably: a new gateway process replays it.
    drop(gw);
    let gw = start(&url);
    let (mut ws, _) = tokio_tungstenite::connect_async(&gw.ws).await.unwrap();
    send(&mut ws, json!({"type": "init", "subscriberId": "d2"})).await;
    recv(&mut ws).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "room": "chat:1", "fromSequence": 2}),
    )
    .await;
    let sub = recv(&mut ws).await;
    assert_eq!(sub["recovered"], true, "{sub}");
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let m = recv(&mut ws).await;
        if m["type"] == "event" {
            seqs.push(m["data"]["sequence"].as_u64().unwrap());
        }
    }
    assert_eq!(seqs, vec![3, 4, 5]);
    drop(gw);
    drop_database(&url).await;
}

async fn drop_database(url: &str) {
    let client = zps_mongo::Client::with_uri_str(url).await.unwrap();
    if let Some(db) = client.default_database() {
        db.drop().await.unwrap();
    }
}
