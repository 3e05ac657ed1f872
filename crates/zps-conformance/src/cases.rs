//! The conformance cases. Each takes a fresh fixture and asserts exact
//! behaviour: sequences, contents, counts and error kinds.

// A test suite: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use serde_json::json;
use zps_core::{
    CatchUpOptions, DiscontinuityReason, Error, PublishRequest, ReplayQuery, Room, RoomPattern,
    SubscribeOptions, SubscriptionItem, Timestamp, room,
};

pub use crate::presence::{
    ephemeral_events_fan_out_and_are_not_stored, presence_latest_metadata_wins_across_connections,
    presence_metadata_survives_heartbeats_and_extra_connections, presence_tracks_users_across_connections,
};
pub use crate::storage::{
    ack_never_moves_backwards, dead_letter_queue_lists_pages_and_removes,
    dead_letter_rooms_are_listed_by_prefix_in_name_order, failing_handler_retries_then_dead_letters,
    payloads_round_trip_exactly, snapshots_store_and_replace,
};
use crate::{Fixture, WAIT, assert_quiet, engine, next_event, seqs, take_events, unique_room, unique_scope};

pub(crate) fn req(room: &Room, event_type: &str, payload: serde_json::Value) -> PublishRequest {
    PublishRequest::new(room.clone(), event_type, &payload).unwrap_or_else(|e| panic!("request: {e}"))
}

/// 8 concurrent publishers × 1 000 events to one room: sequences 1..=8000, each once.
pub async fn sequences_are_gap_free_under_concurrent_publishers(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let chat = unique_room("chat");
    let mut live = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).live_only())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for p in 0..8 {
        let (rt, chat) = (rt.clone(), chat.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(1000);
            for i in 0..1000 {
                let e = rt
                    .publish(req(&chat, "tick", json!({"p": p, "i": i})))
                    .await
                    .unwrap();
                got.push(e.sequence);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let got = t.await.unwrap();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "one publisher's sequences must increase"
        );
        all.extend(got);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=8000).collect::<Vec<u64>>());

    let delivered = take_events(&mut live, 8000).await;
    assert_eq!(seqs(&delivered), (1..=8000).collect::<Vec<u64>>());
    let stored: Vec<_> = rt
        .catch_up(CatchUpOptions::new(chat.clone()).batch_size(1000))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(seqs(&stored), (1..=8000).collect::<Vec<u64>>());
    assert_eq!(rt.room_info(&chat).await.unwrap().last_sequence, 8000);
    rt.close().await.unwrap();
}

/// Re-publishing an id returns the first envelope, stores nothing, delivers nothing.
pub async fn duplicate_id_returns_the_original_and_delivers_once(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let chat = unique_room("chat");
    let mut live = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).live_only())
        .await
        .unwrap();
    let first = rt
        .publish_outcome(req(&chat, "message.created", json!({"text": "first"})).with_id("msg-1"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.envelope.sequence, 1);
    let again = rt
        .publish_outcome(req(&chat, "message.created", json!({"text": "second"})).with_id("msg-1"))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.envelope.sequence, 1);
    assert_eq!(again.envelope.id, "msg-1");
    assert_eq!(again.envelope.payload.get(), r#"{"text":"first"}"#);
    assert_eq!(again.envelope.emitted_at, first.envelope.emitted_at);
    let next = rt
        .publish(req(&chat, "message.created", json!({"text": "third"})))
        .await
        .unwrap();
    assert_eq!(next.sequence, 2);

    let got = take_events(&mut live, 2).await;
    assert_eq!(seqs(&got), vec![1, 2]);
    assert_eq!(got[0].payload.get(), r#"{"text":"first"}"#);
    assert_quiet(&mut live, Duration::from_millis(300)).await;
    let page = rt.replay(ReplayQuery::new(chat.clone(), 0)).await.unwrap();
    assert_eq!(seqs(&page.events), vec![1, 2]);
    assert_eq!(rt.metrics().duplicates_dropped, 1);
    rt.close().await.unwrap();
}

/// A batch over two rooms: per-room sequences in the order given, an invalid
/// request answered alone, a duplicate id (stored earlier and repeated within
/// the batch) returning the original, and live delivery of exactly the new ones.
pub async fn publish_batch_keeps_order_and_answers_each_request(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let (a, b) = (unique_room("batch"), unique_room("batch"));
    let mut live = rt
        .subscribe_stream(SubscribeOptions::room(a.clone()).live_only())
        .await
        .unwrap();
    rt.publish(req(&a, "tick", json!({"i": "early"})).with_id("early"))
        .await
        .unwrap();
    let mut requests = Vec::new();
    for i in 0..40 {
        let room = if i % 2 == 0 { &a } else { &b };
        requests.push(req(room, "tick", json!({"i": i})));
    }
    requests.insert(5, req(&a, "tick", json!({"i": "again"})).with_id("early"));
    requests.insert(9, req(&a, "tick", json!({"i": "bad"})).with_id(""));
    requests.push(req(&b, "tick", json!({"i": "twice"})).with_id("twice"));
    requests.push(req(&b, "tick", json!({"i": "twice-again"})).with_id("twice"));
    let results = rt.publish_batch(requests).await;
    assert_eq!(results.len(), 44);
    assert!(
        matches!(results[9], Err(Error::InvalidEvent(_))),
        "an empty id is refused on its own: {:?}",
        results[9]
    );
    let early = results[5].as_ref().unwrap();
    assert!(early.duplicate);
    assert_eq!(
        (early.envelope.id.as_str(), early.envelope.sequence),
        ("early", 1)
    );
    let (mut in_a, mut in_b) = (Vec::new(), Vec::new());
    for (i, r) in results.iter().enumerate() {
        if i == 5 || i == 9 || i >= 42 {
            continue;
        }
        let e = &r.as_ref().unwrap().envelope;
        let i_field = e.payload.get().to_owned();
        if e.room == a {
            in_a.push((e.sequence, i_field));
        } else {
            in_b.push((e.sequence, i_field));
        }
    }
    let want_a: Vec<(u64, String)> = (0..20)
        .map(|k| (k + 2, format!(r#"{{"i":{}}}"#, k * 2)))
        .collect();
    let want_b: Vec<(u64, String)> = (0..20)
        .map(|k| (k + 1, format!(r#"{{"i":{}}}"#, k * 2 + 1)))
        .collect();
    assert_eq!(in_a, want_a, "room a: sequences follow the order given");
    assert_eq!(in_b, want_b, "room b: sequences follow the order given");
    let first = results[42].as_ref().unwrap();
    let second = results[43].as_ref().unwrap();
    assert!(!first.duplicate && second.duplicate);
    assert_eq!(first.envelope.sequence, 21);
    assert_eq!(second.envelope.sequence, 21);
    assert_eq!(second.envelope.payload.get(), r#"{"i":"twice"}"#);

    let delivered = take_events(&mut live, 21).await;
    assert_eq!(seqs(&delivered), (1..=21).collect::<Vec<u64>>());
    assert_quiet(&mut live, Duration::from_millis(300)).await;
    let stored = rt.replay(ReplayQuery::new(b.clone(), 0)).await.unwrap();
    assert_eq!(seqs(&stored.events), (1..=21).collect::<Vec<u64>>());
    assert!(rt.publish_batch(Vec::new()).await.is_empty());
    rt.close().await.unwrap();
}

/// 16 racing publishes of one id: one event stored, everyone gets its envelope.
pub async fn concurrent_duplicates_store_one_event(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let chat = unique_room("chat");
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (rt, chat) = (rt.clone(), chat.clone());
            tokio::spawn(async move {
                rt.publish_outcome(req(&chat, "t", json!({"i": i})).with_id("same"))
                    .await
            })
        })
        .collect();
    let mut fresh = 0;
    let mut payloads = HashSet::new();
    for t in tasks {
        let o = t.await.unwrap().unwrap();
        assert_eq!(o.envelope.sequence, 1);
        payloads.insert(o.envelope.payload.get().to_owned());
        if !o.duplicate {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "exactly one publish stores the event");
    assert_eq!(payloads.len(), 1, "every caller sees the stored payload");
    let page = rt.replay(ReplayQuery::new(chat.clone(), 0)).await.unwrap();
    assert_eq!(seqs(&page.events), vec![1]);
    rt.close().await.unwrap();
}

/// `sequence > from`, `<= to`, `limit`, type filters, the 10 000 cap.
pub async fn replay_respects_bounds_limit_and_types(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let chat = unique_room("chat");
    for i in 1..=20u64 {
        let t = if i % 2 == 0 { "even" } else { "odd" };
        rt.publish(req(&chat, t, json!({"i": i}))).await.unwrap();
    }
    let all = rt.replay(ReplayQuery::new(chat.clone(), 5)).await.unwrap();
    assert_eq!(seqs(&all.events), (6..=20).collect::<Vec<u64>>());
    assert!(all.exhausted);
    assert_eq!(all.scanned_to, 20);

    let bounded = rt.replay(ReplayQuery::new(chat.clone(), 5).to(10)).await.unwrap();
    assert_eq!(seqs(&bounded.events), vec![6, 7, 8, 9, 10]);

    let limited = rt
        .replay(ReplayQuery::new(chat.clone(), 5).limit(3))
        .await
        .unwrap();
    assert_eq!(seqs(&limited.events), vec![6, 7, 8]);
    assert!(!limited.exhausted);
    assert_eq!(limited.scanned_to, 8);

    let evens = rt
        .replay(ReplayQuery::new(chat.clone(), 0).types(["even"]))
        .await
        .unwrap();
    assert_eq!(seqs(&evens.events), (2..=20).step_by(2).collect::<Vec<u64>>());
    assert!(evens.events.iter().all(|e| e.event_type == "even"));
    let page = rt
        .replay(ReplayQuery::new(chat.clone(), 0).types(["even"]).limit(2))
        .await
        .unwrap();
    assert_eq!(seqs(&page.events), vec![2, 4]);
    assert_eq!(page.scanned_to, 4);

    let none = rt.replay(ReplayQuery::new(chat.clone(), 20)).await.unwrap();
    assert!(none.events.is_empty() && none.exhausted);
    let empty_room = rt.replay(ReplayQuery::new(unique_room("chat"), 0)).await.unwrap();
    assert!(empty_room.events.is_empty() && empty_room.exhausted);

    let too_big = rt.replay(ReplayQuery::new(chat.clone(), 0).limit(10_001)).await;
    assert!(matches!(too_big, Err(Error::InvalidEvent(_))), "{too_big:?}");
    let inverted = rt.replay(ReplayQuery::new(chat.clone(), 10).to(5)).await;
    assert!(matches!(inverted, Err(Error::InvalidEvent(_))), "{inverted:?}");
    rt.close().await.unwrap();
}

/// A filter matching 1 event in 700 pages through 2 100 events without stalling.
pub async fn catch_up_with_a_rare_filter_does_not_stall(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let chat = unique_room("audit");
    let batch: Vec<_> = (1..=2100u64)
        .map(|i| {
            let t = if i % 700 == 0 { "rare" } else { "common" };
            zps_core::NewEvent::from_request(
                req(&chat, t, json!({"i": i})),
                zps_core::engine::DEFAULT_TTL,
                Timestamp::now(),
            )
            .unwrap()
        })
        .collect();
    rt.transport().publish_batch(batch).await.unwrap();
    let rare: Vec<_> = rt
        .catch_up(
            CatchUpOptions::new(chat.clone())
                .event_types(["rare"])
                .batch_size(100),
        )
        .try_collect()
        .await
        .unwrap();
    assert_eq!(seqs(&rare), vec![700, 1400, 2100]);

    // The same through a live subscription's catch-up.
    let mut sub = rt
        .subscribe_stream(
            SubscribeOptions::room(chat.clone())
                .event_types(["rare"])
                .batch_size(50),
        )
        .await
        .unwrap();
    assert_eq!(seqs(&take_events(&mut sub, 3).await), vec![700, 1400, 2100]);
    let live = rt.publish(req(&chat, "rare", json!({}))).await.unwrap();
    rt.publish(req(&chat, "common", json!({}))).await.unwrap();
    assert_eq!(next_event(&mut sub).await.sequence, live.sequence);
    assert_quiet(&mut sub, Duration::from_millis(300)).await;
    rt.close().await.unwrap();
}

/// `to_sequence` bounds a drain, `max_batches` caps it, a subscriber id resumes it.
pub async fn catch_up_honours_to_sequence_max_batches_and_cursor(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let chat = unique_room("chat");
    for i in 1..=50u64 {
        rt.publish(req(&chat, "t", json!({"i": i}))).await.unwrap();
    }
    let to: Vec<_> = rt
        .catch_up(
            CatchUpOptions::new(chat.clone())
                .from_sequence(10)
                .to_sequence(25)
                .batch_size(4),
        )
        .try_collect()
        .await
        .unwrap();
    assert_eq!(seqs(&to), (11..=25).collect::<Vec<u64>>());
    let capped: Vec<_> = rt
        .catch_up(CatchUpOptions::new(chat.clone()).batch_size(7).max_batches(2))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(seqs(&capped), (1..=14).collect::<Vec<u64>>());
    rt.ack(&chat, 42, "worker-1").await.unwrap();
    let rest: Vec<_> = rt
        .stream_replay(CatchUpOptions::new(chat.clone()).subscriber("worker-1"))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(seqs(&rest), (43..=50).collect::<Vec<u64>>());
    rt.close().await.unwrap();
}

/// History then live while a publisher keeps going: exactly 1..=N in order.
pub async fn subscribe_switches_from_history_to_live_without_gap_or_duplicate(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let chat = unique_room("chat");
    for i in 1..=500u64 {
        rt.publish(req(&chat, "t", json!({"i": i}))).await.unwrap();
    }
    let publisher = {
        let (rt, chat) = (rt.clone(), chat.clone());
        tokio::spawn(async move {
            for i in 501..=1500u64 {
                rt.publish(req(&chat, "t", json!({"i": i}))).await.unwrap();
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut sub = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).batch_size(50))
        .await
        .unwrap();
    let got = take_events(&mut sub, 1500).await;
    publisher.await.unwrap();
    assert_eq!(seqs(&got), (1..=1500).collect::<Vec<u64>>());
    for e in &got {
        let i: serde_json::Value = e.payload_as().unwrap();
        assert_eq!(i["i"], e.sequence, "payload belongs to its sequence");
    }
    assert_quiet(&mut sub, Duration::from_millis(300)).await;
    rt.close().await.unwrap();
}

/// Without `from_sequence`, a subscriber id starts after its cursor.
pub async fn subscribe_starts_after_the_ack_cursor(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let chat = unique_room("chat");
    for _ in 0..10 {
        rt.publish(req(&chat, "t", json!({}))).await.unwrap();
    }
    rt.ack(&chat, 7, "device-1").await.unwrap();
    let mut sub = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).subscriber("device-1"))
        .await
        .unwrap();
    let start = &sub.starts()[0];
    assert_eq!(start.start_after, 7);
    assert_eq!(start.recovered, Some(true));
    assert_eq!(start.last_sequence, 10);
    assert_eq!(seqs(&take_events(&mut sub, 3).await), vec![8, 9, 10]);
    // An explicit position wins over the cursor.
    let mut explicit = rt
        .subscribe_stream(
            SubscribeOptions::room(chat.clone())
                .subscriber("device-1")
                .from_sequence(2),
        )
        .await
        .unwrap();
    assert_eq!(next_event(&mut explicit).await.sequence, 3);
    rt.close().await.unwrap();
}

/// `catch_up: false` starts at the head; default start `Live` does so without a cursor.
pub async fn live_only_subscription_skips_history(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let chat = unique_room("chat");
    for _ in 0..5 {
        rt.publish(req(&chat, "t", json!({}))).await.unwrap();
    }
    let mut live = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).live_only())
        .await
        .unwrap();
    assert_eq!(live.starts()[0].start_after, 5);
    let mut opts = SubscribeOptions::room(chat.clone());
    opts.default_start = zps_core::DefaultStart::Live;
    let mut browser = rt.subscribe_stream(opts).await.unwrap();
    rt.publish(req(&chat, "t", json!({}))).await.unwrap();
    assert_eq!(next_event(&mut live).await.sequence, 6);
    assert_eq!(next_event(&mut browser).await.sequence, 6);
    rt.close().await.unwrap();
}

/// Expired events are never replayed and pruning removes them.
pub async fn expired_events_are_not_replayed_and_are_pruned(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let chat = unique_room("chat");
    let short = Duration::from_millis(300);
    rt.publish(req(&chat, "short", json!({})).with_ttl(short))
        .await
        .unwrap();
    rt.publish(req(&chat, "long", json!({}))).await.unwrap();
    rt.publish(req(&chat, "short", json!({})).with_ttl(short))
        .await
        .unwrap();
    rt.publish(req(&chat, "long", json!({}))).await.unwrap();
    let before = rt.replay(ReplayQuery::new(chat.clone(), 0)).await.unwrap();
    assert_eq!(seqs(&before.events), vec![1, 2, 3, 4]);
    tokio::time::sleep(short + Duration::from_millis(200)).await;
    let after = rt.replay(ReplayQuery::new(chat.clone(), 0)).await.unwrap();
    assert_eq!(seqs(&after.events), vec![2, 4]);
    assert_eq!(after.scanned_to, 4);
    let drained: Vec<_> = rt
        .catch_up(CatchUpOptions::new(chat.clone()).batch_size(1))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(seqs(&drained), vec![2, 4]);
    let pruned = rt.prune_expired().await.unwrap();
    assert!(pruned <= 2, "pruned {pruned}");
    let page = rt.replay(ReplayQuery::new(chat.clone(), 0)).await.unwrap();
    assert_eq!(seqs(&page.events), vec![2, 4]);
    assert_eq!(rt.room_info(&chat).await.unwrap().earliest_sequence, 2);
    // Sequences continue after pruning.
    assert_eq!(
        rt.publish(req(&chat, "long", json!({}))).await.unwrap().sequence,
        5
    );
    rt.close().await.unwrap();
}

/// Resumes state explicitly when the position is from another epoch, ahead of
/// history, or older than retention.
pub async fn resume_reports_discontinuities(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let chat = unique_room("chat");
    rt.publish(req(&chat, "t", json!({})).with_ttl(Duration::from_millis(200)))
        .await
        .unwrap();
    for _ in 0..3 {
        rt.publish(req(&chat, "t", json!({}))).await.unwrap();
    }
    let info = rt.room_info(&chat).await.unwrap();
    assert!(!info.epoch.is_empty());
    assert_eq!(info.last_sequence, 4);
    assert_eq!(
        rt.room_info(&chat).await.unwrap().epoch,
        info.epoch,
        "epoch is stable"
    );

    // Intact resume with the right epoch.
    let sub = rt
        .subscribe_stream(
            SubscribeOptions::room(chat.clone())
                .from_sequence(2)
                .epoch(info.epoch.clone()),
        )
        .await
        .unwrap();
    assert_eq!(sub.starts()[0].recovered, Some(true));
    assert_eq!(sub.starts()[0].epoch, info.epoch);

    // Another epoch: reset, delivery restarts at the earliest retained event.
    let mut other = rt
        .subscribe_stream(
            SubscribeOptions::room(chat.clone())
                .from_sequence(3)
                .epoch("not-this-one"),
        )
        .await
        .unwrap();
    assert_eq!(other.starts()[0].recovered, Some(false));
    assert_eq!(other.starts()[0].reason, Some(DiscontinuityReason::StreamReset));
    match tokio::time::timeout(WAIT, other.next()).await {
        Ok(Some(SubscriptionItem::Discontinuity(d))) => {
            assert_eq!(d.reason, DiscontinuityReason::StreamReset);
            assert_eq!(d.requested_from, 3);
            assert_eq!(d.epoch, info.epoch);
        }
        other => panic!("expected a discontinuity, got {other:?}"),
    }
    assert_eq!(next_event(&mut other).await.sequence, 1);

    // Ahead of history (a client from before a reset that lost the epoch).
    let ahead = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).from_sequence(99))
        .await
        .unwrap();
    assert_eq!(ahead.starts()[0].reason, Some(DiscontinuityReason::StreamReset));

    // Older than retention once event 1 expired and was pruned.
    tokio::time::sleep(Duration::from_millis(400)).await;
    rt.prune_expired().await.unwrap();
    let mut expired = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).from_sequence(0))
        .await
        .unwrap();
    assert_eq!(
        expired.starts()[0].reason,
        Some(DiscontinuityReason::PositionExpired)
    );
    match tokio::time::timeout(WAIT, expired.next()).await {
        Ok(Some(SubscriptionItem::Discontinuity(d))) => {
            assert_eq!(d.reason, DiscontinuityReason::PositionExpired);
            assert_eq!(d.earliest_sequence, 2);
        }
        other => panic!("expected a discontinuity, got {other:?}"),
    }
    assert_eq!(seqs(&take_events(&mut expired, 3).await), vec![2, 3, 4]);
    assert!(rt.metrics().discontinuities >= 3);
    rt.close().await.unwrap();
}

/// One subscription over several rooms, one over `scope:*`.
pub async fn multi_room_and_wildcard_live_subscriptions(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let scope = unique_scope("chat");
    let other_scope = unique_scope("order");
    let (a, b, c) = (
        room(&scope, "a").unwrap(),
        room(&scope, "b").unwrap(),
        room(&scope, "c").unwrap(),
    );
    let o = room(&other_scope, "1").unwrap();
    let mut multi = rt
        .subscribe_stream(SubscribeOptions::rooms([a.clone().into(), b.clone().into()]).live_only())
        .await
        .unwrap();
    let wildcard = RoomPattern::parse(&format!("{scope}:*")).unwrap();
    let mut wild = rt
        .subscribe_stream(SubscribeOptions::room(wildcard.clone()))
        .await
        .unwrap();
    assert!(wild.starts().is_empty(), "wildcards have no per-room start");
    for r in [&a, &b, &c, &o, &a] {
        rt.publish(req(r, "t", json!({}))).await.unwrap();
    }
    let got = take_events(&mut multi, 3).await;
    let rooms: Vec<_> = got
        .iter()
        .map(|e| (e.room.resource().to_owned(), e.sequence))
        .collect();
    assert_eq!(rooms, vec![("a".into(), 1), ("b".into(), 1), ("a".into(), 2)]);
    let got = take_events(&mut wild, 4).await;
    let rooms: Vec<_> = got
        .iter()
        .map(|e| (e.room.resource().to_owned(), e.sequence))
        .collect();
    assert_eq!(
        rooms,
        vec![("a".into(), 1), ("b".into(), 1), ("c".into(), 1), ("a".into(), 2)]
    );
    assert_quiet(&mut wild, Duration::from_millis(300)).await;
    assert_quiet(&mut multi, Duration::from_millis(100)).await;
    assert_eq!(rt.subscriber_count(&a), 2);
    assert_eq!(rt.subscriber_count(&c), 1);
    assert!(!rt.has_subscribers(&o));
    drop(multi);
    assert_eq!(rt.subscriber_count(&a), 1);
    rt.close().await.unwrap();
}

/// Rooms never see each other's events, sequences or ids.
pub async fn rooms_are_isolated(f: Arc<dyn Fixture>) {
    let rt = engine(&*f).await;
    let (a, b) = (unique_room("chat"), unique_room("chat"));
    let ea = rt
        .publish(req(&a, "t", json!({"r": "a"})).with_id("shared-id"))
        .await
        .unwrap();
    let eb = rt
        .publish_outcome(req(&b, "t", json!({"r": "b"})).with_id("shared-id"))
        .await;
    // Ids are idempotency keys within a room; reusing one in another room is either a
    // new event of that room or refused, never the other room's event.
    match eb {
        Ok(o) => {
            assert_eq!(o.envelope.room, b);
            assert_eq!(o.envelope.payload.get(), r#"{"r":"b"}"#);
            assert!(!o.duplicate);
        }
        Err(e) => assert!(matches!(e, Error::Rejected(_)), "{e:?}"),
    }
    for _ in 0..3 {
        rt.publish(req(&a, "t", json!({"r": "a"}))).await.unwrap();
    }
    assert_eq!(ea.sequence, 1);
    let pa = rt.replay(ReplayQuery::new(a.clone(), 0)).await.unwrap();
    assert_eq!(seqs(&pa.events), vec![1, 2, 3, 4]);
    assert!(pa.events.iter().all(|e| e.room == a));
    let pb = rt.replay(ReplayQuery::new(b.clone(), 0)).await.unwrap();
    assert!(
        pb.events
            .iter()
            .all(|e| e.room == b && e.payload.get() == r#"{"r":"b"}"#)
    );
    assert_eq!(rt.room_info(&a).await.unwrap().last_sequence, 4);
    rt.close().await.unwrap();
}

/// Two transports over the same storage (two "processes"): one history, one
/// sequence, and every subscriber on both sees 1..=N once, in order.
pub async fn two_connections_share_one_history(f: Arc<dyn Fixture>) {
    let (t1, t2) = (f.connect().await, f.connect().await);
    let cross = t1.capabilities().cross_process;
    let (rt1, rt2) = (zps_core::Realtime::new(t1), zps_core::Realtime::new(t2));
    let chat = unique_room("chat");
    let mut sub1 = rt1
        .subscribe_stream(SubscribeOptions::room(chat.clone()))
        .await
        .unwrap();
    let mut sub2 = rt2
        .subscribe_stream(SubscribeOptions::room(chat.clone()))
        .await
        .unwrap();
    let per = 250u64;
    let tasks: Vec<_> = [rt1.clone(), rt2.clone(), rt1.clone(), rt2.clone()]
        .into_iter()
        .map(|rt| {
            let chat = chat.clone();
            tokio::spawn(async move {
                for _ in 0..per {
                    rt.publish(req(&chat, "t", json!({}))).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let n = (4 * per) as usize;
    let expected: Vec<u64> = (1..=n as u64).collect();
    assert_eq!(seqs(&take_events(&mut sub1, n).await), expected);
    if cross {
        assert_eq!(seqs(&take_events(&mut sub2, n).await), expected);
    }
    let page = rt2
        .replay(ReplayQuery::new(chat.clone(), 0).limit(10_000))
        .await
        .unwrap();
    assert_eq!(seqs(&page.events), expected);
    rt1.close().await.unwrap();
    rt2.close().await.unwrap();
}
