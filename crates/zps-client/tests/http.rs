//! Hosted mode: `http::Publisher` and `http::Admin` against a real gateway's
//! HTTP API — receipts, idempotent retries through a relay that refuses
//! connections, no retry for what is not idempotent, typed refusals, and a
//! minted token that opens a WebSocket client.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use zps_client::http::{Admin, EventsQuery, HttpOptions, Publisher};
use zps_client::{Client, ClientError, ErrorCode, OutgoingEvent};
use zps_gateway::api::keys::{ApiKey, ApiKeys};

const KEY: &str = "zps_client-http-test-key-0123456789abcdefghi";
const READ_ONLY: &str = "zps_client-http-read-only-0123456789abcdefgh";

fn config() -> zps_gateway::GatewayConfig {
    let mut c = hs256_config();
    c.api.keys = ApiKeys::new(vec![
        ApiKey::from_flag(KEY, 1).unwrap(),
        ApiKey::from_flag(&format!("{READ_ONLY}@read"), 2).unwrap(),
    ]);
    c
}

fn base(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}")
}

fn quick() -> HttpOptions {
    HttpOptions {
        timeout: Duration::from_secs(5),
        retries: 20,
        backoff: zps_client::Backoff {
            base: Duration::from_millis(5),
            cap: Duration::from_millis(20),
            max_attempts: None,
        },
    }
}

#[tokio::test]
async fn publisher_receipts_batches_and_broadcasts() {
    let gw = TestGateway::start(config()).await;
    let publisher = Publisher::new(&base(gw.addr), KEY).unwrap();
    let first = publisher
        .publish(
            OutgoingEvent::new("chat:1", "m", &json!({"n": 1}))
                .unwrap()
                .with_id("x"),
        )
        .await
        .unwrap();
    assert_eq!(
        (first.id.as_str(), first.sequence, first.duplicate),
        ("x", 1, false)
    );
    let again = publisher
        .publish(
            OutgoingEvent::new("chat:1", "m", &json!({"n": 1}))
                .unwrap()
                .with_id("x"),
        )
        .await
        .unwrap();
    assert_eq!((again.sequence, again.duplicate), (1, true));
    // Ids are generated when absent.
    let generated = publisher
        .publish(OutgoingEvent::new("chat:1", "m", &2).unwrap())
        .await
        .unwrap();
    assert!(!generated.id.is_empty());
    assert_eq!(generated.sequence, 2);

    let batch = publisher
        .publish_batch(vec![
            OutgoingEvent::new("chat:1", "a", &3).unwrap(),
            OutgoingEvent::new("bad room", "b", &0).unwrap(),
            OutgoingEvent::new("chat:1", "c", &4).unwrap(),
        ])
        .await
        .unwrap();
    assert_eq!(batch[0].as_ref().unwrap().sequence, 3);
    assert_eq!(
        batch[1].as_ref().unwrap_err().error_code(),
        Some(ErrorCode::InvalidRoom)
    );
    assert_eq!(batch[2].as_ref().unwrap().sequence, 4);

    let fanned = publisher
        .broadcast(&["chat:1", "chat:2"], "notice", &json!({}))
        .await
        .unwrap();
    let seqs: Vec<u64> = fanned.iter().map(|r| r.as_ref().unwrap().sequence).collect();
    assert_eq!(seqs, vec![5, 1]);
    publisher.ephemeral("chat:1", "typing", &json!({})).await.unwrap();

    let admin = Admin::new(&base(gw.addr), READ_ONLY).unwrap();
    let page = admin
        .events(
            "chat:1",
            &EventsQuery {
                from_sequence: 2,
                limit: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let got: Vec<u64> = page.events.iter().map(|e| e.sequence).collect();
    assert_eq!(got, vec![3, 4]);
    assert_eq!((page.has_more, page.next_from_sequence), (true, Some(4)));
    assert_eq!(admin.room("chat:1").await.unwrap().last_sequence, 5);
    assert_eq!(admin.cursor("nobody", "chat:1").await.unwrap(), None);
    assert_eq!(admin.snapshot("chat:1").await.unwrap().map(|s| s.0), None);
    // A read key is refused what it lacks, with the protocol's code.
    let refused = Publisher::new(&base(gw.addr), READ_ONLY)
        .unwrap()
        .publish(OutgoingEvent::new("chat:1", "m", &0).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ClientError::Server { code, .. } if code == "4403"),
        "{refused:?}"
    );
    let denied = admin.prune().await.unwrap_err();
    assert_eq!(denied.error_code(), Some(ErrorCode::Forbidden));

    let full = Admin::new(&base(gw.addr), KEY).unwrap();
    assert_eq!(full.set_cursor("sam", "chat:1", 4).await.unwrap(), 4);
    assert_eq!(full.cursor("sam", "chat:1").await.unwrap(), Some(4));
    full.set_snapshot("chat:1", 5, &json!({"total": 5}))
        .await
        .unwrap();
    let (last, state) = full.snapshot("chat:1").await.unwrap().unwrap();
    assert_eq!((last, state.get()), (5, r#"{"total":5}"#));
}

#[tokio::test]
async fn publishes_are_retried_once_stored_and_ephemerals_are_not() {
    let gw = TestGateway::start(config()).await;
    let relay = Relay::start(gw.addr).await;
    relay.set_accepting(false);
    let publisher = Publisher::with_options(&base(relay.addr), KEY, quick()).unwrap();
    let pending = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            publisher
                .publish(OutgoingEvent::new("orders:1", "created", &1).unwrap())
                .await
        }
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    while relay.accepted() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no retries");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    relay.set_accepting(true);
    let stored = pending.await.unwrap().unwrap();
    assert_eq!((stored.sequence, stored.duplicate), (1, false));
    assert_eq!(
        gw.engine()
            .room_info(&zps_core::Room::parse("orders:1").unwrap())
            .await
            .unwrap()
            .last_sequence,
        1
    );

    relay.set_accepting(false);
    let before = relay.accepted();
    // A new publisher: no pooled connection to reuse.
    let publisher = Publisher::with_options(&base(relay.addr), KEY, quick()).unwrap();
    let err = publisher
        .ephemeral("orders:1", "typing", &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Transport(_)), "{err:?}");
    assert_eq!(
        relay.accepted(),
        before + 1,
        "an ephemeral event is never sent twice"
    );
}

/// The worst case for a retry: the event was stored and only the answer was
/// lost. The retry carries the same id, so it is answered as a duplicate with
/// the first sequence, and the room holds one event.
#[tokio::test]
async fn a_publish_whose_answer_was_lost_is_stored_once() {
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};
    let gw = TestGateway::start(config()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = listener.local_addr().unwrap();
    let (target, (swallowed_tx, mut swallowed)) = (gw.addr, tokio::sync::mpsc::unbounded_channel::<()>());
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut down, _)) = listener.accept().await {
            let Ok(mut up) = TcpStream::connect(target).await else {
                return;
            };
            if !std::mem::take(&mut first) {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
                continue;
            }
            // The request goes through; the gateway's answer is read and
            // dropped, then the client's connection is closed.
            let (mut down_r, down_w) = down.into_split();
            let (mut up_r, mut up_w) = up.into_split();
            let forward = tokio::spawn(async move { tokio::io::copy(&mut down_r, &mut up_w).await });
            let mut answer = [0u8; 4096];
            let n = up_r.read(&mut answer).await.unwrap_or(0);
            assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"));
            forward.abort();
            drop(down_w);
            let _ = swallowed_tx.send(());
        }
    });
    let publisher = Publisher::with_options(&base(relay), KEY, quick()).unwrap();
    let receipt = publisher
        .publish(OutgoingEvent::new("orders:7", "created", &json!({"n": 1})).unwrap())
        .await
        .unwrap();
    swallowed.recv().await.unwrap();
    assert_eq!((receipt.sequence, receipt.duplicate), (1, true), "{receipt:?}");
    let room = zps_core::Room::parse("orders:7").unwrap();
    assert_eq!(gw.engine().room_info(&room).await.unwrap().last_sequence, 1);
}

#[tokio::test]
async fn a_minted_token_opens_a_websocket_client() {
    let gw = TestGateway::start(config()).await;
    let admin = Admin::new(&base(gw.addr), KEY).unwrap();
    let minted = admin.mint_token("kim", &["chat:*"], Some(300)).await.unwrap();
    assert!(minted.expires_at > now_secs());
    let client = Client::connect(gw.ws_url(), fast_options("kim").with_token(minted.token)).unwrap();
    let mut sub = client.subscribe("chat:7").await.unwrap();
    Publisher::new(&base(gw.addr), KEY)
        .unwrap()
        .publish(OutgoingEvent::new("chat:7", "m", &json!({"hi": true})).unwrap())
        .await
        .unwrap();
    assert_eq!(next_seqs(&mut sub, 1).await, vec![1]);
    let refused = client.subscribe("order:1").await.map(|_| ()).unwrap_err();
    assert_eq!(refused.error_code(), Some(ErrorCode::AccessDenied), "{refused:?}");
    client.close().await;
}
