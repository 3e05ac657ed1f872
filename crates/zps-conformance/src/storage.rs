//! What the engine keeps: payloads exactly as sent, subscriber cursors, snapshots and
//! dead-letter queues (entries, paging, the index of rooms, handlers that
//! fail into them).

// A test suite: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use zps_core::{Error, NewDlqEntry, Realtime, ReplayQuery, RetryPolicy, Room, SubscribeOptions, Timestamp};

use crate::cases::req;
use crate::{
    Fixture, WAIT, engine, next_event, offered, offers_dead_letters, take_stream, unique_room, unique_scope,
};

/// Cursors only move forward and are per (room, subscriber).
pub async fn ack_never_moves_backwards(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let (a, b) = (unique_room("chat"), unique_room("chat"));
    assert_eq!(rt.cursor(&a, "s1").await.unwrap(), None);
    assert_eq!(rt.ack(&a, 10, "s1").await.unwrap(), 10);
    assert_eq!(rt.ack(&a, 5, "s1").await.unwrap(), 10);
    assert_eq!(rt.cursor(&a, "s1").await.unwrap(), Some(10));
    assert_eq!(rt.ack(&a, 11, "s1").await.unwrap(), 11);
    assert_eq!(rt.cursor(&a, "s2").await.unwrap(), None);
    assert_eq!(rt.cursor(&b, "s1").await.unwrap(), None);
    assert_eq!(rt.ack(&b, 3, "s1").await.unwrap(), 3);
    assert_eq!(rt.cursor(&a, "s1").await.unwrap(), Some(11));
    assert!(matches!(rt.ack(&a, 1, "").await, Err(Error::InvalidEvent(_))));
    assert_eq!(rt.metrics().acked, 4, "four successful acks");
    rt.close().await.unwrap();
}

/// Snapshots: none, stored, replaced.
pub async fn snapshots_store_and_replace(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    if !offered(
        rt.transport().snapshots().is_some(),
        rt.get_snapshot(&unique_room("chat")),
    )
    .await
    {
        return;
    }
    let chat = unique_room("chat");
    assert!(rt.get_snapshot(&chat).await.unwrap().is_none());
    rt.snapshot(&chat, 100, &json!({"messages": ["a", "b"], "n": 2}))
        .await
        .unwrap();
    let s = rt.get_snapshot(&chat).await.unwrap().unwrap();
    assert_eq!(s.last_sequence, 100);
    assert_eq!(s.room, chat);
    let state: serde_json::Value = serde_json::from_str(s.state.get()).unwrap();
    assert_eq!(state, json!({"messages": ["a", "b"], "n": 2}));
    rt.snapshot(&chat, 150, &json!({"n": 3})).await.unwrap();
    let s = rt.get_snapshot(&chat).await.unwrap().unwrap();
    assert_eq!(s.last_sequence, 150);
    assert!(rt.get_snapshot(&unique_room("chat")).await.unwrap().is_none());
    assert_eq!(rt.metrics().snapshot_usage, 6, "two writes, four reads");
    rt.close().await.unwrap();
}

/// Dead letters: write, list in order, page, count, remove.
pub async fn dead_letter_queue_lists_pages_and_removes(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    if !offers_dead_letters(&rt).await {
        return;
    }
    let chat = unique_room("chat");
    let dlq = rt.dlq(chat.clone());
    assert_eq!(dlq.len().await.unwrap(), 0);
    let mut ids = Vec::new();
    for i in 0..5 {
        let e = rt.publish(req(&chat, "t", json!({"i": i}))).await.unwrap();
        let entry = dlq
            .write(NewDlqEntry {
                event: (*e).clone(),
                error: format!("boom {i}"),
                attempts: 3,
                subscriber_id: Some("worker".into()),
                failed_at: Timestamp::now(),
            })
            .await
            .unwrap();
        ids.push(entry.entry_id);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "entry ids increase: {ids:?}");
    let listed = dlq.list(10).await.unwrap();
    assert_eq!(listed.len(), 5);
    assert_eq!(listed[2].error, "boom 2");
    assert_eq!(listed[2].attempts, 3);
    assert_eq!(listed[2].event.sequence, 3);
    assert_eq!(listed[2].subscriber_id.as_deref(), Some("worker"));
    let page2 = dlq.list_after(ids[1], 2).await.unwrap();
    assert_eq!(
        page2.iter().map(|e| e.entry_id).collect::<Vec<_>>(),
        vec![ids[2], ids[3]]
    );
    let streamed: Vec<_> = dlq.replay(2).try_collect().await.unwrap();
    assert_eq!(
        streamed.iter().map(|e| e.event.sequence).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(dlq.remove(&[ids[0], ids[4], 999_999]).await.unwrap(), 2);
    assert_eq!(dlq.len().await.unwrap(), 3);
    assert_eq!(rt.dlq(unique_room("chat")).len().await.unwrap(), 0);
    rt.close().await.unwrap();
}

/// Publishes an event to `room` and parks it in the room's dead-letter queue.
async fn park(rt: &Realtime, room: &Room) {
    let e = rt.publish(req(room, "t", json!({}))).await.unwrap();
    rt.dlq(room.clone())
        .write(NewDlqEntry {
            event: (*e).clone(),
            error: "boom".into(),
            attempts: 1,
            subscriber_id: None,
            failed_at: Timestamp::now(),
        })
        .await
        .unwrap();
}

/// The index of dead-letter queues: rooms with dead letters under a prefix, in
/// name order, paged, with their sizes; a queue emptied leaves the index.
pub async fn dead_letter_rooms_are_listed_by_prefix_in_name_order(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    if !offers_dead_letters(&rt).await {
        return;
    }
    let scope = unique_scope("dlqidx");
    let room = |name: &str| Room::new(&scope, name).unwrap_or_else(|e| panic!("room: {e}"));
    let (a, b, c) = (room("a"), room("b"), room("c"));
    let prefix = format!("{scope}:");
    for (target, n) in [(&b, 2), (&a, 1), (&c, 3)] {
        for _ in 0..n {
            park(&rt, target).await;
        }
    }
    // A room outside the prefix and a room with events but no dead letters stay out.
    let outside = unique_room("dlqidx-other");
    park(&rt, &outside).await;
    rt.publish(req(&room("quiet"), "t", json!({}))).await.unwrap();
    let rows = |v: Vec<zps_core::DlqRoom>| v.into_iter().map(|r| (r.room, r.len)).collect::<Vec<_>>();
    assert_eq!(
        rows(rt.dlq_rooms(&prefix, None, 10).await.unwrap()),
        vec![(a.clone(), 1), (b.clone(), 2), (c.clone(), 3)]
    );
    assert_eq!(
        rows(rt.dlq_rooms(&prefix, None, 2).await.unwrap()),
        vec![(a.clone(), 1), (b.clone(), 2)]
    );
    assert_eq!(
        rows(rt.dlq_rooms(&prefix, Some(&b), 2).await.unwrap()),
        vec![(c.clone(), 3)]
    );
    let first = rt.dlq(a.clone()).list(10).await.unwrap();
    assert_eq!(rt.dlq(a.clone()).remove(&[first[0].entry_id]).await.unwrap(), 1);
    assert_eq!(
        rows(rt.dlq_rooms(&prefix, None, 10).await.unwrap()),
        vec![(b, 2), (c, 3)],
        "an emptied queue leaves the index"
    );
    rt.close().await.unwrap();
}

/// A handler that fails is retried; one that keeps failing is dead-lettered; auto-ack
/// moves the cursor past both.
pub async fn failing_handler_retries_then_dead_letters(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    if !offers_dead_letters(&rt).await {
        return;
    }
    let chat = unique_room("chat");
    let calls = Arc::new(AtomicU32::new(0));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let c = calls.clone();
    let handle = rt
        .subscribe(
            SubscribeOptions::room(chat.clone())
                .subscriber("worker-1")
                .auto_ack()
                .retry(RetryPolicy {
                    attempts: 3,
                    strategy: zps_core::BackoffStrategy::Fixed,
                    base_delay: Duration::from_millis(5),
                    max_delay: Duration::from_millis(5),
                }),
            move |e| {
                let n = c.fetch_add(1, Ordering::SeqCst);
                let tx = done_tx.clone();
                async move {
                    let seq = e.sequence;
                    // Event 2 fails twice then succeeds; event 3 always fails.
                    let fail = (seq == 2 && n < 3) || seq == 3;
                    if fail {
                        return Err(format!("cannot handle {seq}"));
                    }
                    let _ = tx.send(seq);
                    Ok(())
                }
            },
        )
        .await
        .unwrap();
    for _ in 0..4 {
        rt.publish(req(&chat, "t", json!({}))).await.unwrap();
    }
    let handled = take_stream(
        &mut futures::stream::poll_fn(|cx| done_rx.poll_recv(cx)).boxed(),
        3,
    )
    .await;
    assert_eq!(handled, vec![1, 2, 4]);
    // 1 + 3 (event 2) + 3 (event 3) + 1 = 8 handler runs.
    let deadline = tokio::time::Instant::now() + WAIT;
    while rt.cursor(&chat, "worker-1").await.unwrap() != Some(4) {
        assert!(tokio::time::Instant::now() < deadline, "cursor never reached 4");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 8);
    let dead = rt.dlq(chat.clone()).list(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.sequence, 3);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].error, "cannot handle 3");
    assert_eq!(dead[0].subscriber_id.as_deref(), Some("worker-1"));
    let m = rt.metrics();
    assert_eq!(m.retry_count, 4);
    assert_eq!(m.dlq_size, 1);
    handle.unsubscribe().await;
    rt.close().await.unwrap();
}

/// Payloads, metadata, the encrypted marker and timestamps survive storage exactly.
pub async fn payloads_round_trip_exactly(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let chat = unique_room("chat");
    let mut live = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).live_only())
        .await
        .unwrap();
    let big = "x".repeat(20_000);
    let payload =
        json!({"text": "héllo ✓ \"quoted\" \\ \n", "n": 1.5, "big": big, "nested": {"a": [1, null, true]}});
    let sent = rt
        .publish(
            req(&chat, "message.created", payload.clone())
                .with_metadata("tenantId", json!("t-1"))
                .with_metadata("traceId", json!("tr-9"))
                .with_ttl(Duration::from_secs(3600))
                .encrypted(),
        )
        .await
        .unwrap();
    let check = |e: &zps_core::Envelope| {
        let p: serde_json::Value = e.payload_as().unwrap();
        assert_eq!(p, payload);
        assert!(e.encrypted);
        assert_eq!(e.event_type, "message.created");
        let m = e.metadata.as_ref().unwrap();
        assert_eq!(m.get("tenantId"), Some(&json!("t-1")));
        assert_eq!(m.get("traceId"), Some(&json!("tr-9")));
        assert_eq!(e.emitted_at, sent.emitted_at);
        assert_eq!(e.expires_at.as_millis() - e.emitted_at.as_millis(), 3_600_000);
        assert_eq!(e.id, sent.id);
    };
    check(&sent);
    check(&*next_event(&mut live).await);
    let page = rt.replay(ReplayQuery::new(chat.clone(), 0)).await.unwrap();
    check(&page.events[0]);
    let plain = rt.publish(req(&chat, "t", json!(null))).await.unwrap();
    let back = rt.replay(ReplayQuery::new(chat.clone(), 1)).await.unwrap();
    assert_eq!(back.events[0].payload.get(), "null");
    assert!(!back.events[0].encrypted);
    assert!(back.events[0].metadata.as_ref().is_none_or(|m| m.is_empty()));
    assert_eq!(plain.sequence, 2);
    rt.close().await.unwrap();
}
