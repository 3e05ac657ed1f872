//! The delivery promise against the real gateway (memory provider, real sockets):
//! every event of a room exactly once, in order, across cut connections, gateway
//! restarts, reordered / dropped / duplicated frames and slow consumers.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use support::*;
use tokio::sync::mpsc;
use zps_client::{
    AckMode, Client, ClientEvent, ClientOptions, ConnectionState, DiscontinuityReason, SubscribeOptions,
};
use zps_core::Realtime;
use zps_gateway::GatewayConfig;

const N: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_exactly_once_in_order_while_a_relay_cuts_connections() {
    init_tracing();
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let relay = Relay::start(gw.addr).await;
    let client = Client::connect(relay.url(), fast_options("cut-test")).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let handle = client
        .subscribe_with("chat:cut", SubscribeOptions::new(), move |item| {
            let tx = tx.clone();
            async move {
                match item {
                    ClientEvent::Event(e) => {
                        let _ = tx.send(e.sequence);
                    }
                    other => panic!("unexpected item: {other:?}"),
                }
            }
        })
        .await
        .unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let cutter = tokio::spawn({
        let done = done.clone();
        async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0xC07);
            let mut cuts = 0u32;
            while !done.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(rng.random_range(10..80))).await;
                relay.cut_all();
                cuts += 1;
            }
            (cuts, relay.accepted())
        }
    });
    let engine = gw.engine().clone();
    let publisher = tokio::spawn(async move {
        for i in 1..=N {
            engine.publish(event("chat:cut", i)).await.unwrap();
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });

    let mut got = Vec::with_capacity(N as usize);
    let collected = tokio::time::timeout(Duration::from_secs(60), async {
        while (got.len() as u64) < N {
            match rx.recv().await {
                Some(s) => got.push(s),
                None => break,
            }
        }
    })
    .await;
    done.store(true, Ordering::SeqCst);
    publisher.await.unwrap();
    let (cuts, connections) = cutter.await.unwrap();
    let t = tally(&got, N);
    eprintln!(
        "relay cuts: {cuts}, connections: {connections}, received: {}, lost: {}, duplicates: {}, out of order: {}",
        got.len(),
        t.lost,
        t.duplicates,
        t.out_of_order
    );
    assert!(collected.is_ok(), "timed out with {} of {N} events", got.len());
    assert_eq!(
        t,
        Tally {
            lost: 0,
            duplicates: 0,
            out_of_order: 0
        }
    );
    assert_eq!(got, (1..=N).collect::<Vec<_>>());
    assert!(
        connections > 3,
        "the relay must actually have cut connections ({connections})"
    );
    handle.unsubscribe().await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_dropped_and_duplicated_frames_are_repaired_in_order() {
    init_tracing();
    // A buffer larger than the stream: only gap detection + replay can repair drops.
    chaos_run(4096, 7).await;
    // A tiny buffer: overflow drops buffered events too; paging from the last delivered
    // event repairs them.
    chaos_run(16, 8).await;
}

async fn chaos_run(buffer: usize, seed: u64) {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let n = 3_000u64;
    let relay = WsRelay::start(
        gw.ws_url(),
        Chaos {
            drop: 0.03,
            hold: 0.08,
            duplicate: 0.03,
            protect_after: n - 20,
            seed,
        },
    )
    .await;
    let options = fast_options("chaos").with_max_buffered_events_per_room(buffer);
    let client = Client::connect(relay.url(), options).unwrap();
    let mut sub = client.subscribe("chat:chaos").await.unwrap();
    let engine = gw.engine().clone();
    let publisher = tokio::spawn(async move {
        for i in 1..=n {
            engine.publish(event("chat:chaos", i)).await.unwrap();
            if i % 25 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let got = next_seqs(&mut sub, n as usize).await;
    publisher.await.unwrap();
    let t = tally(&got, n);
    let stats = &relay.stats;
    eprintln!(
        "buffer {buffer}: relay dropped {}, held {}, duplicated {}; client: {t:?}",
        stats.dropped.load(Ordering::Relaxed),
        stats.held.load(Ordering::Relaxed),
        stats.duplicated.load(Ordering::Relaxed)
    );
    assert!(stats.dropped.load(Ordering::Relaxed) > 10);
    assert!(stats.held.load(Ordering::Relaxed) > 10);
    assert!(stats.duplicated.load(Ordering::Relaxed) > 10);
    assert_eq!(got, (1..=n).collect::<Vec<_>>());
    // Nothing more (no late duplicate) arrives before the next event.
    engine_publish_marker(&gw, "chat:chaos", n + 1).await;
    assert_eq!(next_seqs(&mut sub, 1).await, vec![n + 1]);
    client.close().await;
}

async fn engine_publish_marker(gw: &TestGateway, room: &str, i: u64) {
    gw.engine().publish(event(room, i)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_restart_is_reported_as_a_discontinuity_then_new_events_flow_in_order() {
    init_tracing();
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let addr = gw.addr;
    let client = Client::connect(gw.ws_url(), fast_options("restart")).unwrap();
    let mut state = client.state();
    let mut sub = client.subscribe("chat:r").await.unwrap();
    publish_n(gw.engine(), "chat:r", 50).await;
    assert_eq!(next_seqs(&mut sub, 50).await, (1..=50).collect::<Vec<_>>());
    let old_epoch = client.positions().await.unwrap()["chat:r"].epoch.clone().unwrap();

    // Restart: drain (1012), then a new engine with empty history on the same port.
    gw.stop().await;
    wait_state(&mut state, |s| !matches!(s, ConnectionState::Connected)).await;
    let gw2 = TestGateway::start_on(addr, Realtime::memory(), GatewayConfig::default()).await;
    publish_n(gw2.engine(), "chat:r", 10).await;
    client.wait_connected().await.unwrap();

    match next_items(&mut sub, 1).await.remove(0) {
        ClientEvent::Discontinuity {
            room,
            reason,
            epoch,
            earliest_sequence,
            last_delivered,
        } => {
            assert_eq!(room, "chat:r");
            assert_eq!(reason, DiscontinuityReason::StreamReset);
            let epoch = epoch.unwrap();
            assert_ne!(epoch, old_epoch, "a restarted memory provider has a new epoch");
            assert_eq!(earliest_sequence, 1);
            assert_eq!(last_delivered, 50);
        }
        other => panic!("expected a discontinuity, got {other:?}"),
    }
    assert_eq!(next_seqs(&mut sub, 10).await, (1..=10).collect::<Vec<_>>());
    for i in 11..=30 {
        gw2.engine().publish(event("chat:r", i)).await.unwrap();
    }
    assert_eq!(next_seqs(&mut sub, 20).await, (11..=30).collect::<Vec<_>>());
    let pos = &client.positions().await.unwrap()["chat:r"];
    assert_eq!(pos.sequence, 30);
    assert_ne!(pos.epoch.as_deref(), Some(old_epoch.as_str()));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_rooms_recover_events_missed_while_disconnected() {
    init_tracing();
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let relay = Relay::start(gw.addr).await;
    let client = Client::connect(relay.url(), fast_options("wild")).unwrap();
    let mut state = client.state();
    let mut sub = client.subscribe("order:*").await.unwrap();
    let engine = gw.engine();
    engine.publish(event("order:1", 1)).await.unwrap();
    engine.publish(event("order:2", 1)).await.unwrap();
    engine.publish(event("order:1", 2)).await.unwrap();
    let got = next_items(&mut sub, 3).await;
    let rooms: Vec<(String, u64)> = got
        .iter()
        .map(|i| (i.room().to_owned(), i.envelope().unwrap().sequence))
        .collect();
    assert_eq!(
        rooms,
        vec![
            ("order:1".into(), 1),
            ("order:2".into(), 1),
            ("order:1".into(), 2)
        ]
    );

    relay.set_accepting(false);
    relay.cut_all();
    wait_state(&mut state, |s| matches!(s, ConnectionState::Reconnecting { .. })).await;
    for i in 3..=7 {
        engine.publish(event("order:1", i)).await.unwrap();
    }
    relay.set_accepting(true);
    client.wait_connected().await.unwrap();
    // A ping answered means the resubscribe sent before it was processed.
    client.ping().await.unwrap();
    // The wildcard resubscribe is live-only; the next event reveals the hole, which the
    // client fills from history before delivering it.
    engine.publish(event("order:1", 8)).await.unwrap();
    let got = next_seqs(&mut sub, 6).await;
    assert_eq!(got, (3..=8).collect::<Vec<_>>());
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_with_tiny_buffers_still_gets_everything_once() {
    init_tracing();
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let mut options = fast_options("slow").with_max_buffered_events_per_room(8);
    options.delivery_buffer = 2;
    let client = Client::connect(gw.ws_url(), options).unwrap();
    let mut sub = client.subscribe("chat:slow").await.unwrap();
    let n = 600u64;
    publish_n(gw.engine(), "chat:slow", n).await;
    let mut got = Vec::new();
    while (got.len() as u64) < n {
        got.extend(next_seqs(&mut sub, 1).await);
        if got.len() % 50 == 0 {
            // A consumer that stalls now and then: the client buffers 8, drops the rest
            // and re-reads them from history later.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(got, (1..=n).collect::<Vec<_>>());
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_positions_cursors_and_multi_room_subscriptions() {
    init_tracing();
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let engine = gw.engine();
    publish_n(engine, "chat:a", 5).await;
    publish_n(engine, "chat:b", 3).await;

    // Explicit positions per room; default start for the rest (no cursor: live).
    let client = Client::connect(gw.ws_url(), fast_options("multi")).unwrap();
    let mut sub = client
        .subscribe_with_options(
            vec!["chat:a", "chat:b", "chat:c"],
            SubscribeOptions::new().position(
                "chat:a",
                zps_client::StartAt::After {
                    sequence: 2,
                    epoch: None,
                },
            ),
        )
        .await
        .unwrap();
    let got = next_items(&mut sub, 3).await;
    assert!(got.iter().all(|i| i.room() == "chat:a"));
    engine.publish(event("chat:b", 4)).await.unwrap();
    engine.publish(event("chat:c", 1)).await.unwrap();
    let got = next_items(&mut sub, 2).await;
    // Order is per room; different rooms may interleave either way.
    let mut seen: Vec<(String, u64)> = got
        .iter()
        .map(|i| (i.room().to_owned(), i.envelope().unwrap().sequence))
        .collect();
    seen.sort();
    assert_eq!(seen, vec![("chat:b".into(), 4), ("chat:c".into(), 1)]);
    let positions = client.positions().await.unwrap();
    assert_eq!(positions["chat:a"].sequence, 5);
    assert_eq!(positions["chat:b"].sequence, 4);
    // Auto acks reach the server (coalesced): a new client with the same subscriber id
    // resumes after the acked cursor.
    tokio::time::timeout(WAIT, async {
        loop {
            let cursor = engine
                .cursor(&zps_core::Room::parse("chat:a").unwrap(), "multi")
                .await
                .unwrap();
            if cursor == Some(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    client.close().await;
    engine.publish(event("chat:a", 6)).await.unwrap();
    let again = Client::connect(gw.ws_url(), fast_options("multi")).unwrap();
    let mut sub = again.subscribe("chat:a").await.unwrap();
    assert_eq!(
        next_seqs(&mut sub, 1).await,
        vec![6],
        "resumed after the stored cursor"
    );
    engine.publish(event("chat:a", 7)).await.unwrap();
    assert_eq!(next_seqs(&mut sub, 1).await, vec![7]);
    again.close().await;

    // Manual acks: nothing moves until the application says so.
    let manual = Client::connect(gw.ws_url(), fast_options("manual").with_ack_mode(AckMode::Manual)).unwrap();
    let mut sub = manual
        .subscribe_with_options("chat:b", SubscribeOptions::new().from_beginning())
        .await
        .unwrap();
    let items = next_items(&mut sub, 4).await;
    let room_b = zps_core::Room::parse("chat:b").unwrap();
    assert_eq!(engine.cursor(&room_b, "manual").await.unwrap(), None);
    sub.ack(items[1].envelope().unwrap());
    tokio::time::timeout(WAIT, async {
        while engine.cursor(&room_b, "manual").await.unwrap() != Some(2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    manual.close().await;
}

#[tokio::test]
async fn event_type_filters_keep_positions_gap_free() {
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let client = Client::connect(gw.ws_url(), ClientOptions::default()).unwrap();
    let mut sub = client
        .subscribe_with_options("chat:f", SubscribeOptions::new().event_types(["keep"]))
        .await
        .unwrap();
    let room = zps_core::Room::parse("chat:f").unwrap();
    for i in 0..10u64 {
        let t = if i % 3 == 0 { "keep" } else { "skip" };
        gw.engine()
            .publish(zps_core::PublishRequest::new(room.clone(), t, &serde_json::json!({})).unwrap())
            .await
            .unwrap();
    }
    assert_eq!(next_seqs(&mut sub, 4).await, vec![1, 4, 7, 10]);
    assert_eq!(client.positions().await.unwrap()["chat:f"].sequence, 10);
    client.close().await;
}
