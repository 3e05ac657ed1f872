//! The client API against the real gateway: publish round trips and refusals,
//! auth and token refresh, bounded queues, close codes, presence, ephemeral
//! events and snapshot sync.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use support::*;
use zps_client::{
    Client, ClientError, ClientEvent, ClientOptions, ConnectionState, ErrorCode, OutgoingEvent,
    PresenceEvent, SubscribeOptions,
};
use zps_core::{Realtime, Room};
use zps_gateway::GatewayConfig;

/// An address nothing listens on (bound, then released).
async fn dead_addr() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn publish_round_trip_with_request_ids_and_idempotent_ids() {
    let gw = TestGateway::start(publish_config()).await;
    let client = Client::connect(gw.ws_url(), fast_options("pub")).unwrap();
    let mut sub = client.subscribe("chat:1").await.unwrap();
    let published = client
        .publish(
            OutgoingEvent::new("chat:1", "message.created", &json!({"text": "hi"}))
                .unwrap()
                .with_id("m-1")
                .with_ttl(Duration::from_secs(60))
                .with_metadata("traceId", json!("x")),
        )
        .await
        .unwrap();
    assert_eq!(published.sequence, 1);
    assert_eq!(published.id, "m-1");
    assert_eq!(published.room, "chat:1");
    assert!(!published.duplicate);
    let got = next_items(&mut sub, 1).await;
    let e = got[0].envelope().unwrap();
    assert_eq!((e.id.as_str(), e.sequence), ("m-1", 1));
    assert_eq!(e.payload.get(), r#"{"text":"hi"}"#);
    assert_eq!(e.metadata.as_ref().unwrap()["traceId"], "x");

    let again = client
        .publish(
            OutgoingEvent::new("chat:1", "message.created", &json!({}))
                .unwrap()
                .with_id("m-1"),
        )
        .await
        .unwrap();
    assert_eq!((again.sequence, again.duplicate), (1, true));
    // Concurrent publishes are each matched to their own answer.
    let mut calls = Vec::new();
    for i in 0..20 {
        let c = client.clone();
        calls.push(tokio::spawn(async move {
            c.publish(OutgoingEvent::new("chat:1", "t", &json!({ "i": i })).unwrap())
                .await
                .unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for c in calls {
        seqs.push(c.await.unwrap().sequence);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (2..=21).collect::<Vec<_>>());
    assert_eq!(next_seqs(&mut sub, 20).await, (2..=21).collect::<Vec<_>>());
    client.close().await;
}

#[tokio::test]
async fn client_publish_disabled_answers_4403_as_a_typed_error() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let client = Client::connect(gw.ws_url(), fast_options("no-pub")).unwrap();
    let mut errors = Box::pin(client.errors());
    let err = client
        .publish(OutgoingEvent::new("chat:1", "t", &json!({})).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::Forbidden), "{err}");
    assert!(!err.is_transient());
    let reported = tokio::time::timeout(WAIT, errors.next()).await.unwrap().unwrap();
    assert_eq!(reported.error_code(), Some(ErrorCode::Forbidden));
    // The connection is still fine.
    client.ping().await.unwrap();
    assert_eq!(client.connection_state(), ConnectionState::Connected);
    client.close().await;
}

#[tokio::test]
async fn refused_and_invalid_subscriptions_are_errors() {
    let mut config = GatewayConfig::default();
    config.auth.scopes = Some(vec!["chat".into()]);
    let gw = TestGateway::start(config).await;
    let client = Client::connect(gw.ws_url(), fast_options("refused")).unwrap();
    let err = client.subscribe("order:1").await.unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::InvalidRoom), "{err}");
    let err = client.subscribe(vec!["chat:1", "order:*"]).await.unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::InvalidRoom), "{err}");
    // The refused multi-room subscription left nothing behind: chat:1 is free again.
    let _ok = client.subscribe("chat:1").await.unwrap();
    assert!(matches!(
        client.subscribe("chat:1").await.unwrap_err(),
        ClientError::AlreadySubscribed(_)
    ));
    assert!(matches!(
        client.subscribe("no-colon").await.unwrap_err(),
        ClientError::InvalidRoom { .. }
    ));
    assert!(matches!(
        client.subscribe("*").await.unwrap_err(),
        ClientError::InvalidRoom { .. }
    ));
    assert!(matches!(
        Client::connect("http://x", ClientOptions::default()).unwrap_err(),
        ClientError::InvalidUrl { .. }
    ));
    assert!(matches!(
        Client::connect(
            "ws://127.0.0.1:1/ws",
            ClientOptions::default().with_subscriber_id("")
        )
        .unwrap_err(),
        ClientError::InvalidOption(_)
    ));
    client.close().await;
}

#[tokio::test]
async fn auth_failure_with_a_static_token_stops_without_reconnecting() {
    let gw = TestGateway::start(hs256_config()).await;
    let relay = Relay::start(gw.addr).await;
    let client = Client::connect(relay.url(), fast_options("auth").with_token("not-a-jwt")).unwrap();
    let reason = tokio::time::timeout(WAIT, client.closed()).await.unwrap();
    assert!(matches!(reason, Some(ClientError::Unauthorized(_))), "{reason:?}");
    // The task has ended: nothing can open another connection.
    assert_eq!(relay.accepted(), 1);
    let err = client
        .publish(OutgoingEvent::new("chat:1", "t", &json!({})).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err, ClientError::Closed);
    assert!(matches!(
        client.subscribe("chat:1").await.unwrap_err(),
        ClientError::Closed
    ));
}

#[tokio::test]
async fn a_token_provider_gets_one_more_chance_then_the_client_stops() {
    let gw = TestGateway::start(hs256_config()).await;
    let relay = Relay::start(gw.addr).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let options = fast_options("auth-provider").with_token_provider({
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, String>("still-not-a-jwt".to_owned()) }
        }
    });
    let client = Client::connect(relay.url(), options).unwrap();
    let reason = tokio::time::timeout(WAIT, client.closed()).await.unwrap();
    assert!(matches!(reason, Some(ClientError::Unauthorized(_))), "{reason:?}");
    assert_eq!(relay.accepted(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn token_provider_refreshes_before_expiry_without_reconnecting() {
    let gw = TestGateway::start(hs256_config()).await;
    let relay = Relay::start(gw.addr).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let options = fast_options("u1#refresh").with_token_provider({
        let calls = calls.clone();
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            // The first token expires in 32 s, so the gateway warns (30 s ahead) at once.
            let ttl = if n == 0 { 32 } else { 3600 };
            let token = hs256(json!({"sub": "u1", "exp": now_secs() + ttl}));
            async move { Ok::<_, String>(token) }
        }
    });
    let client = Client::connect(relay.url(), options).unwrap();
    client.wait_connected().await.unwrap();
    tokio::time::timeout(WAIT, async {
        while calls.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the provider was not asked for a fresh token");
    // The refreshed connection keeps working; no reconnect happened.
    client.ping().await.unwrap();
    assert_eq!(relay.accepted(), 1);
    assert_eq!(client.connection_state(), ConnectionState::Connected);
    client.close().await;
}

#[tokio::test]
async fn a_valid_token_connects() {
    let gw = TestGateway::start(hs256_config()).await;
    let token = hs256(json!({"sub": "u1", "exp": now_secs() + 3600}));
    let client = Client::connect(gw.ws_url(), fast_options("u1#jwt").with_token(token)).unwrap();
    client.wait_connected().await.unwrap();
    let _sub = client.subscribe("chat:1").await.unwrap();
    client.close().await;
}

#[tokio::test]
async fn queue_overflow_while_disconnected_is_an_error() {
    let addr = dead_addr().await;
    let options = ClientOptions::default()
        .with_max_queued_messages(3)
        .with_reconnect(Duration::from_secs(5), Duration::from_secs(5), None);
    let client = Client::connect(format!("ws://{addr}/ws"), options).unwrap();
    for i in 0..3 {
        client
            .publish_ephemeral("chat:1", "typing", &json!({ "i": i }))
            .await
            .unwrap();
    }
    let err = client
        .publish_ephemeral("chat:1", "typing", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err, ClientError::QueueFull { limit: 3 });
    let err = client
        .publish(OutgoingEvent::new("chat:1", "t", &json!({})).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err, ClientError::QueueFull { limit: 3 });
    assert!(err.is_transient());
    client.close().await;
    assert_eq!(
        client.connection_state(),
        ConnectionState::Closed { reason: None }
    );
}

#[tokio::test]
async fn publishes_queued_while_offline_are_sent_once_connected() {
    let addr = dead_addr().await;
    let client = Client::connect(format!("ws://{addr}/ws"), fast_options("queued")).unwrap();
    let pending = tokio::spawn({
        let c = client.clone();
        async move {
            c.publish(OutgoingEvent::new("chat:q", "t", &json!({"n": 1})).unwrap())
                .await
        }
    });
    let mut state = client.state();
    wait_state(&mut state, |s| matches!(s, ConnectionState::Reconnecting { .. })).await;
    let gw = TestGateway::start_on(addr, Realtime::memory(), publish_config()).await;
    let published = tokio::time::timeout(WAIT, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(published.sequence, 1);
    let info = gw
        .engine()
        .room_info(&Room::parse("chat:q").unwrap())
        .await
        .unwrap();
    assert_eq!(info.last_sequence, 1, "stored exactly once");
    client.close().await;
}

#[tokio::test]
async fn reconnect_attempts_are_bounded_when_asked() {
    let addr = dead_addr().await;
    let options =
        ClientOptions::default().with_reconnect(Duration::from_millis(1), Duration::from_millis(5), Some(2));
    let client = Client::connect(format!("ws://{addr}/ws"), options).unwrap();
    let reason = tokio::time::timeout(WAIT, client.closed()).await.unwrap();
    assert!(
        matches!(reason, Some(ClientError::ReconnectExhausted { attempts: 3, .. })),
        "{reason:?}"
    );
}

#[tokio::test]
async fn drain_1012_reconnects_with_full_jitter_backoff() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let addr = gw.addr;
    let base = Duration::from_millis(40);
    let cap = Duration::from_millis(300);
    let options = ClientOptions::default().with_reconnect(base, cap, None);
    let client = Client::connect(gw.ws_url(), options).unwrap();
    client.wait_connected().await.unwrap();
    let mut errors = Box::pin(client.errors());
    // Record every state from here on.
    let mut rx = client.state();
    rx.borrow_and_update();
    let recorder = tokio::spawn(async move {
        let mut seen = Vec::new();
        while rx.changed().await.is_ok() {
            let s = rx.borrow_and_update().clone();
            let done = s == ConnectionState::Connected;
            seen.push(s);
            if done {
                break;
            }
        }
        seen
    });
    gw.stop().await;
    let closed = tokio::time::timeout(WAIT, errors.next()).await.unwrap().unwrap();
    assert_eq!(
        closed,
        ClientError::ConnectionClosed {
            code: 1012,
            reason: "server restarting, reconnect".into()
        }
    );
    let _gw2 = TestGateway::start_on(addr, Realtime::memory(), GatewayConfig::default()).await;
    client.wait_connected().await.unwrap();
    let seen = tokio::time::timeout(WAIT, recorder).await.unwrap().unwrap();
    let retries: Vec<(u32, Duration)> = seen
        .iter()
        .filter_map(|s| match s {
            ConnectionState::Reconnecting { attempt, delay } => Some((*attempt, *delay)),
            _ => None,
        })
        .collect();
    assert!(!retries.is_empty(), "{seen:?}");
    for (i, (attempt, delay)) in retries.iter().enumerate() {
        assert_eq!(*attempt as usize, i + 1, "attempts count up: {seen:?}");
        let ceiling = zps_client::Backoff {
            base,
            cap,
            max_attempts: None,
        }
        .ceiling(attempt - 1);
        assert!(*delay <= ceiling, "attempt {attempt}: {delay:?} > {ceiling:?}");
    }
    assert_eq!(seen.last(), Some(&ConnectionState::Connected));
    client.close().await;
}

#[tokio::test]
async fn close_is_graceful_ends_streams_and_never_reconnects() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let relay = Relay::start(gw.addr).await;
    let client = Client::connect(relay.url(), fast_options("closer")).unwrap();
    let mut sub = client.subscribe("chat:1").await.unwrap();
    gw.engine().publish(event("chat:1", 1)).await.unwrap();
    assert_eq!(next_seqs(&mut sub, 1).await, vec![1]);
    client.close().await;
    assert_eq!(
        client.connection_state(),
        ConnectionState::Closed { reason: None }
    );
    assert!(tokio::time::timeout(WAIT, sub.next()).await.unwrap().is_none());
    // The server saw a normal close and the acks before it.
    let cursor = gw
        .engine()
        .cursor(&Room::parse("chat:1").unwrap(), "closer")
        .await
        .unwrap();
    assert_eq!(cursor, Some(1), "pending acks are flushed on close");
    assert!(matches!(client.ping().await, Err(ClientError::Closed)));
    client.close().await;
    assert_eq!(relay.accepted(), 1);
}

#[tokio::test]
async fn presence_ephemeral_snapshot_sync_and_ping() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let alice = Client::connect(gw.ws_url(), fast_options("alice")).unwrap();
    let bob = Client::connect(gw.ws_url(), fast_options("bob")).unwrap();

    // Ephemeral: type filter on the receiving side, not stored.
    let mut typing = alice
        .subscribe_ephemeral("chat:*", Some(vec!["typing".into()]))
        .await
        .unwrap();
    alice.ping().await.unwrap();
    bob.wait_connected().await.unwrap();
    bob.publish_ephemeral("chat:1", "cursor", &json!({"x": 1}))
        .await
        .unwrap();
    bob.publish_ephemeral("chat:1", "typing", &json!({"who": "bob"}))
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, typing.next()).await.unwrap().unwrap();
    assert_eq!((got.room.as_str(), got.event_type.as_str()), ("chat:1", "typing"));
    assert_eq!(got.payload.get(), r#"{"who":"bob"}"#);

    // Presence: watch, enter, leave.
    let mut watch = alice.presence("chat:1").unwrap().subscribe().await.unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, watch.next()).await.unwrap().unwrap(),
        PresenceEvent::Members {
            room: "chat:1".into(),
            members: vec![]
        }
    );
    let mut meta = zps_core::Metadata::new();
    meta.insert("name".into(), json!("Bob"));
    let members = bob.presence("chat:1").unwrap().enter(Some(meta)).await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].user_id, "bob");
    match tokio::time::timeout(WAIT, watch.next()).await.unwrap().unwrap() {
        PresenceEvent::Joined { user_id, member, .. } => {
            assert_eq!(user_id, "bob");
            assert_eq!(member.unwrap().metadata.unwrap()["name"], "Bob");
        }
        other => panic!("{other:?}"),
    }
    bob.presence("chat:1").unwrap().leave().await.unwrap();
    match tokio::time::timeout(WAIT, watch.next()).await.unwrap().unwrap() {
        PresenceEvent::Left { user_id, .. } => assert_eq!(user_id, "bob"),
        other => panic!("{other:?}"),
    }

    // Snapshot sync: snapshot, then the events after it, then live.
    let room = Room::parse("doc:1").unwrap();
    assert!(alice.snapshot("doc:1").await.unwrap().is_none());
    publish_n(gw.engine(), "doc:1", 5).await;
    gw.engine()
        .snapshot(&room, 3, &json!({"title": "T"}))
        .await
        .unwrap();
    let mut synced = alice.sync("doc:1", SubscribeOptions::new()).await.unwrap();
    let snapshot = synced.snapshot.take().unwrap();
    assert_eq!(snapshot.last_sequence, 3);
    assert_eq!(snapshot.state.get(), r#"{"title":"T"}"#);
    assert_eq!(next_seqs(&mut synced.subscription, 2).await, vec![4, 5]);
    gw.engine().publish(event("doc:1", 6)).await.unwrap();
    assert_eq!(next_seqs(&mut synced.subscription, 1).await, vec![6]);

    // A room without a snapshot syncs from the beginning.
    publish_n(gw.engine(), "doc:2", 2).await;
    let mut fresh = bob.sync("doc:2", SubscribeOptions::new()).await.unwrap();
    assert!(fresh.snapshot.is_none());
    assert_eq!(next_seqs(&mut fresh.subscription, 2).await, vec![1, 2]);

    assert!(alice.ping().await.unwrap() < WAIT);
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn callback_subscriptions_ack_after_the_handler_and_stop_on_unsubscribe() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let client = Client::connect(gw.ws_url(), fast_options("cb")).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = client
        .subscribe_with("chat:cb", SubscribeOptions::new(), move |item| {
            let tx = tx.clone();
            async move {
                if let ClientEvent::Event(e) = item {
                    tx.send(e.sequence).unwrap();
                }
            }
        })
        .await
        .unwrap();
    publish_n(gw.engine(), "chat:cb", 5).await;
    let mut got = Vec::new();
    while got.len() < 5 {
        got.push(tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap());
    }
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
    let room = Room::parse("chat:cb").unwrap();
    tokio::time::timeout(WAIT, async {
        while gw.engine().cursor(&room, "cb").await.unwrap() != Some(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    handle.unsubscribe().await;
    client.ping().await.unwrap();
    assert_eq!(
        gw.engine().subscriber_count(&room),
        0,
        "unsubscribed on the server"
    );
    client.close().await;
}

/// Past the gateway's rate limit a publish is refused at once with 4429 (it
/// used to be dropped, and only the request timeout ended the call); refused
/// requests leave the in-flight window, so later publishes go through.
#[tokio::test]
async fn requests_refused_by_the_rate_limit_fail_at_once_without_wedging_the_client() {
    let mut config = publish_config();
    config.limits.max_messages_per_window = 4;
    config.limits.rate_limit_window = Duration::from_millis(300);
    let gw = TestGateway::start(config).await;
    // Long: a refusal that never came would surface as Timeout, which fails the test.
    let mut options = fast_options("limited").with_request_timeout(Duration::from_secs(30));
    options.max_in_flight = 2;
    let client = Client::connect(gw.ws_url(), options).unwrap();
    client.wait_connected().await.unwrap();
    let mut calls = Vec::new();
    for i in 0..12 {
        let c = client.clone();
        calls.push(tokio::spawn(async move {
            c.publish(OutgoingEvent::new("chat:rl", "t", &json!({ "i": i })).unwrap())
                .await
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if e.error_code() == Some(ErrorCode::RateLimited) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok + refused, 12);
    assert!(
        refused > 0,
        "the gateway refuses what exceeds 4 messages per 300 ms"
    );
    // The refused requests no longer occupy the in-flight window.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let p = client
        .publish(OutgoingEvent::new("chat:rl", "t", &json!({})).unwrap())
        .await
        .unwrap();
    assert_eq!(p.sequence, ok + 1);
    client.close().await;
}

#[tokio::test]
async fn a_resubscribe_refused_after_reconnect_is_surfaced_and_other_rooms_continue() {
    let allowed = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut config = GatewayConfig::default();
    config.auth.authorize = Some(zps_gateway::auth::authorizer({
        let allowed = allowed.clone();
        move |req| {
            let ok = req.room != "chat:secret" || allowed.load(Ordering::SeqCst);
            async move { ok }
        }
    }));
    let gw = TestGateway::start(config).await;
    let relay = Relay::start(gw.addr).await;
    let client = Client::connect(relay.url(), fast_options("revoked")).unwrap();
    let mut sub = client.subscribe(vec!["chat:secret", "chat:open"]).await.unwrap();
    let mut state = client.state();
    gw.engine().publish(event("chat:secret", 1)).await.unwrap();
    assert_eq!(next_seqs(&mut sub, 1).await, vec![1]);

    allowed.store(false, Ordering::SeqCst);
    relay.cut_all();
    wait_state(&mut state, |s| matches!(s, ConnectionState::Reconnecting { .. })).await;
    match next_items(&mut sub, 1).await.remove(0) {
        ClientEvent::Refused { room, error } => {
            assert_eq!(room, "chat:secret");
            assert_eq!(error.error_code(), Some(ErrorCode::AccessDenied));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    gw.engine().publish(event("chat:secret", 2)).await.unwrap();
    gw.engine().publish(event("chat:open", 1)).await.unwrap();
    let got = next_items(&mut sub, 1).await;
    assert_eq!(
        (got[0].room(), got[0].envelope().unwrap().sequence),
        ("chat:open", 1)
    );
    assert!(!client.positions().await.unwrap().contains_key("chat:secret"));
    client.close().await;
}
