//! Provider-specific tests against the server in `ZPS_TEST_MONGO_URL` (each test owns a
//! database and drops it), plus connection-error tests that need no server.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;
use zps_core::transport::Retention;

use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{Document, doc};
use serde_json::json;
use zps_core::{
    CatchUpOptions, Error, LiveSignal, NewEvent, PublishRequest, Realtime, ReplayQuery, Room, RoomPattern,
    SubscribeOptions, SubscriptionItem, Timestamp, Transport, TransportErrorKind,
};
use zps_mongo::{MongoConfig, MongoError, MongoTransport, docs};

use common::TestDb;

const WAIT: Duration = Duration::from_secs(30);

fn room(name: &str) -> Room {
    Room::new("chat", &format!("{name}-{}", uuid::Uuid::new_v4().simple())).unwrap()
}

fn new_event(room: &Room, id: Option<&str>, payload: serde_json::Value) -> NewEvent {
    let mut req = PublishRequest::new(room.clone(), "t", &payload).unwrap();
    if let Some(id) = id {
        req = req.with_id(id);
    }
    NewEvent::from_request(req, Duration::from_secs(3600), Timestamp::now()).unwrap()
}

fn seqs<E: std::ops::Deref<Target = zps_core::Envelope>>(events: &[E]) -> Vec<u64> {
    events.iter().map(|e| e.sequence).collect()
}

async fn next_event(sub: &mut zps_core::Subscription) -> Arc<zps_core::Envelope> {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(SubscriptionItem::Event(e))) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Takes `count` sequences the way a publish does, then "crashes" before inserting.
async fn consume_sequences(db: &TestDb, room: &Room, count: u64) {
    db.db()
        .collection::<Document>("realtime_counters")
        .update_one(
            doc! { "_id": docs::counter_key(room) },
            docs::allocation_update(count, Timestamp::now().as_millis()),
        )
        .upsert(true)
        .await
        .unwrap();
}

async fn skip_records(db: &TestDb, room: &Room) -> Vec<u64> {
    let found: Vec<Document> = db
        .db()
        .collection::<Document>("realtime_events")
        .find(doc! { "room": room.as_str(), "skip": true })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut s: Vec<u64> = found
        .iter()
        .filter_map(|d| docs::get_u64(d, "sequence"))
        .collect();
    s.sort_unstable();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_transports_publishing_concurrently_share_one_gap_free_sequence() {
    let Some(db) = TestDb::new("seq").await else {
        return;
    };
    let (t1, t2) = (Arc::new(db.transport().await), Arc::new(db.transport().await));
    let chat = room("seq");
    let mut tasks = Vec::new();
    for (i, t) in [t1.clone(), t2.clone(), t1.clone(), t2.clone()]
        .into_iter()
        .enumerate()
    {
        let chat = chat.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for j in 0..100 {
                let o = t
                    .publish(new_event(&chat, None, json!({"p": i, "j": j})))
                    .await
                    .unwrap();
                assert!(!o.duplicate);
                got.push(o.envelope.sequence);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let got = t.await.unwrap();
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        all.extend(got);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<u64>>());
    // Cross-process live delivery needs change streams (the stand-in has none): assert history.
    let page = t2
        .replay(&ReplayQuery::new(chat.clone(), 0).limit(10_000))
        .await
        .unwrap();
    assert_eq!(seqs(&page.events), (1..=400).collect::<Vec<u64>>());
    assert_eq!((page.scanned_to, page.exhausted), (400, true));
    let info = t1.room_info(&chat).await.unwrap();
    assert_eq!((info.last_sequence, info.earliest_sequence), (400, 1));
    assert_eq!(
        info.epoch,
        t2.room_info(&chat).await.unwrap().epoch,
        "one epoch per database"
    );
    assert!(skip_records(&db, &chat).await.is_empty());
    t1.close().await.unwrap();
    t2.close().await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_ids_return_the_stored_event_across_transports() {
    let Some(db) = TestDb::new("dup").await else {
        return;
    };
    let (t1, t2) = (Arc::new(db.transport().await), Arc::new(db.transport().await));
    let chat = room("dup");
    let first = t1
        .publish(new_event(&chat, Some("x"), json!({"v": 1})))
        .await
        .unwrap();
    let again = t2
        .publish(new_event(&chat, Some("x"), json!({"v": 2})))
        .await
        .unwrap();
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(again.envelope.sequence, 1);
    assert_eq!(again.envelope.payload.get(), r#"{"v":1}"#);
    // Racing publishes of one id from two "processes": one stored event, everyone gets it.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let t = if i % 2 == 0 { t1.clone() } else { t2.clone() };
            let chat = chat.clone();
            tokio::spawn(async move {
                t.publish(new_event(&chat, Some("y"), json!({"i": i})))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut fresh = 0;
    let mut stored = std::collections::HashSet::new();
    for t in tasks {
        let o = t.await.unwrap();
        fresh += usize::from(!o.duplicate);
        stored.insert((o.envelope.sequence, o.envelope.payload.get().to_owned()));
    }
    assert_eq!(fresh, 1);
    assert_eq!(
        stored.len(),
        1,
        "every racer sees the one stored event: {stored:?}"
    );
    let y_seq = stored.iter().next().unwrap().0;
    let next = t1
        .publish(new_event(&chat, None, json!({})))
        .await
        .unwrap()
        .envelope
        .sequence;
    // Racers from the other transport may each have consumed a sequence: those are skip
    // records, never events, and replay passes over them.
    let skips = skip_records(&db, &chat).await;
    let page = t1.replay(&ReplayQuery::new(chat.clone(), 0)).await.unwrap();
    assert_eq!(seqs(&page.events), vec![1, y_seq, next]);
    assert_eq!(page.scanned_to, next);
    let mut all: Vec<u64> = seqs(&page.events);
    all.extend(&skips);
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=next).collect::<Vec<u64>>(),
        "every consumed sequence is an event or a skip record"
    );
    t1.close().await.unwrap();
    t2.close().await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_publish_is_skipped_after_the_grace_and_cannot_land_later() {
    let Some(db) = TestDb::new("crash").await else {
        return;
    };
    let config = MongoConfig {
        hole_grace: Duration::from_millis(300),
        purge_delay: Duration::from_secs(60),
        ..db.config()
    };
    let t = db.transport_with(config).await;
    let chat = room("crash");
    t.publish(new_event(&chat, None, json!({"n": 1}))).await.unwrap();
    consume_sequences(&db, &chat, 1).await; // sequence 2: taken, never stored
    let third = t.publish(new_event(&chat, None, json!({"n": 3}))).await.unwrap();
    assert_eq!(third.envelope.sequence, 3);

    // The first page stops before the fresh hole instead of skipping it.
    let page = t.replay(&ReplayQuery::new(chat.clone(), 0)).await.unwrap();
    assert_eq!(
        (seqs(&page.events), page.scanned_to, page.exhausted),
        (vec![1], 1, false)
    );
    // The next one waits out the grace, marks 2 skipped and moves on.
    let page = t.replay(&ReplayQuery::new(chat.clone(), 1)).await.unwrap();
    assert_eq!(
        (seqs(&page.events), page.scanned_to, page.exhausted),
        (vec![3], 3, true)
    );
    assert_eq!(skip_records(&db, &chat).await, vec![2]);
    // The crashed publisher's insert arriving now is refused by the unique index.
    let late = new_event(&chat, Some("late"), json!({})).into_envelope(2);
    let err = db
        .db()
        .collection::<Document>("realtime_events")
        .insert_one(docs::event_document(&late, 0))
        .await
        .unwrap_err();
    assert!(zps_mongo::is_duplicate_key(&err), "{err}");
    // Catch-up neither stalls nor shows the skipped sequence.
    let rt = Realtime::new(Arc::new(t));
    let drained: Vec<_> = rt
        .catch_up(CatchUpOptions::new(chat.clone()))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(seqs(&drained), vec![1, 3]);
    assert_eq!(rt.room_info(&chat).await.unwrap().last_sequence, 3);
    rt.close().await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_inserted_late_within_the_grace_is_not_skipped() {
    let Some(db) = TestDb::new("late").await else {
        return;
    };
    let config = MongoConfig {
        hole_grace: Duration::from_secs(5),
        ..db.config()
    };
    let rt = Realtime::new(Arc::new(db.transport_with(config).await));
    let chat = room("late");
    consume_sequences(&db, &chat, 1).await; // sequence 1: a publish in flight
    let second = rt
        .publish(PublishRequest::new(chat.clone(), "t", &json!({"n": 2})).unwrap())
        .await
        .unwrap();
    assert_eq!(second.sequence, 2);
    // A subscriber starting now must wait for 1, not skip it.
    let mut sub = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()))
        .await
        .unwrap();
    let reader = {
        let rt = rt.clone();
        let chat = chat.clone();
        tokio::spawn(async move { rt.replay(ReplayQuery::new(chat, 0)).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = new_event(&chat, Some("slow"), json!({"n": 1})).into_envelope(1);
    db.db()
        .collection::<Document>("realtime_events")
        .insert_one(docs::event_document(&late, Timestamp::now().as_millis()))
        .await
        .unwrap();
    let page = reader.await.unwrap();
    assert_eq!((seqs(&page.events), page.scanned_to), (vec![1, 2], 2));
    assert_eq!(next_event(&mut sub).await.id, "slow");
    assert_eq!(next_event(&mut sub).await.sequence, 2);
    assert!(skip_records(&db, &chat).await.is_empty());
    rt.close().await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_local_publishers_reach_subscribers_in_sequence_order() {
    let Some(db) = TestDb::new("order").await else {
        return;
    };
    let config = MongoConfig {
        channel_capacity: 1024,
        ..db.config()
    };
    let t = Arc::new(db.transport_with(config).await);
    assert!(
        !t.capabilities().reorder_window.is_zero(),
        "live order is repaired by the engine"
    );
    let rt = Realtime::new(t.clone());
    let chat = room("order");
    let mut raw = t.subscribe(&[RoomPattern::from(chat.clone())]).await.unwrap();
    let mut sub = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).live_only())
        .await
        .unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|p| {
            let (rt, chat) = (rt.clone(), chat.clone());
            tokio::spawn(async move {
                for i in 0..50 {
                    rt.publish(PublishRequest::new(chat.clone(), "t", &json!({"p": p, "i": i})).unwrap())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 200 {
        got.push(next_event(&mut sub).await.sequence);
    }
    assert_eq!(got, (1..=200).collect::<Vec<u64>>());
    // The raw in-process stream carries every event (in publish-completion order).
    let mut raw_seqs: Vec<u64> = Vec::new();
    while raw_seqs.iter().collect::<std::collections::HashSet<_>>().len() < 200 {
        match tokio::time::timeout(WAIT, raw.next()).await.unwrap().unwrap() {
            LiveSignal::Event(e) => raw_seqs.push(e.sequence),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Head polling may repeat an event a local publish delivered at the same moment.
    raw_seqs.sort_unstable();
    raw_seqs.dedup();
    assert_eq!(raw_seqs, (1..=200).collect::<Vec<u64>>());
    rt.close().await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_processes_events_reach_local_subscribers_by_head_polling() {
    let Some(db) = TestDb::new("poll").await else {
        return;
    };
    let config = MongoConfig {
        poll_interval: Some(Duration::from_millis(100)),
        ..db.config()
    };
    let t1 = db.transport_with(config.clone()).await;
    let t2 = db.transport_with(config).await;
    let health = t1.health().await;
    if t1.uses_change_streams() {
        assert_eq!(health.details["live"], "change_streams");
    } else {
        assert_eq!(health.details["live"], "in_process");
        assert_eq!(health.details["crossProcess"], false);
        assert!(
            health.details["liveNote"]
                .as_str()
                .unwrap()
                .contains("in-process")
        );
        assert!(!t1.capabilities().cross_process);
    }
    assert_eq!(health.status, zps_core::HealthStatus::Healthy);
    let (rt1, rt2) = (Realtime::new(Arc::new(t1)), Realtime::new(Arc::new(t2)));
    let chat = room("poll");
    let mut sub = rt1
        .subscribe_stream(SubscribeOptions::room(chat.clone()).live_only())
        .await
        .unwrap();
    for i in 1..=5 {
        rt2.publish(PublishRequest::new(chat.clone(), "t", &json!({"i": i})).unwrap())
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next_event(&mut sub).await.sequence);
    }
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
    rt1.close().await.unwrap();
    rt2.close().await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_are_created_unless_switched_off() {
    let Some(db) = TestDb::new("idx").await else {
        return;
    };
    let t = db
        .transport_with(MongoConfig {
            ttl_index: true,
            ..db.config()
        })
        .await;
    let keys = |docs: Vec<Document>| -> Vec<(Document, bool, Option<i64>)> {
        let mut k: Vec<_> = docs
            .into_iter()
            .map(|d| {
                (
                    d.get_document("key").unwrap().clone(),
                    d.get_bool("unique").unwrap_or(false),
                    docs::get_i64(&d, "expireAfterSeconds"),
                )
            })
            .collect();
        k.sort_by_key(|x| format!("{:?}", x.0));
        k
    };
    let events: Vec<Document> = db
        .db()
        .collection::<Document>("realtime_events")
        .list_indexes()
        .await
        .unwrap()
        .map(|i| mongodb::bson::to_document(&i.unwrap()).unwrap())
        .collect()
        .await;
    let events = keys(events);
    assert!(
        events.contains(&(doc! { "room": 1, "sequence": 1 }, true, None)),
        "{events:?}"
    );
    assert!(
        events.contains(&(doc! { "expiresAt": 1 }, false, Some(300))),
        "{events:?}"
    );
    let subs: Vec<Document> = db
        .db()
        .collection::<Document>("realtime_subscribers")
        .list_indexes()
        .await
        .unwrap()
        .map(|i| mongodb::bson::to_document(&i.unwrap()).unwrap())
        .collect()
        .await;
    assert!(keys(subs).contains(&(doc! { "room": 1, "subscriberId": 1 }, true, None)));
    t.close().await.unwrap();
    db.drop_db().await;

    let Some(bare) = TestDb::new("noidx").await else {
        return;
    };
    let t = bare
        .transport_with(MongoConfig {
            auto_create_indexes: Some(false),
            ..bare.config()
        })
        .await;
    let names = bare.db().list_collection_names().await.unwrap();
    assert!(!names.contains(&"realtime_events".to_owned()), "{names:?}");
    t.close().await.unwrap();
    bare.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_database_is_left_to_its_owner() {
    let Some(db) = TestDb::new("inject").await else {
        return;
    };
    let client = zps_mongo::Client::with_uri_str(&db.url).await.unwrap();
    let injected = client.database(&db.name);
    let t = MongoTransport::from_database(injected.clone(), db.config())
        .await
        .unwrap();
    let chat = room("inject");
    t.publish(new_event(&chat, None, json!({}))).await.unwrap();
    t.close().await.unwrap();
    assert!(matches!(
        t.publish(new_event(&chat, None, json!({}))).await,
        Err(Error::Closed)
    ));
    // The caller's client still works after the transport closed.
    injected.run_command(doc! { "ping": 1 }).await.unwrap();
    let n = injected
        .collection::<Document>("realtime_events")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(n, 1);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_batch_stores_new_ids_once_in_order() {
    let Some(db) = TestDb::new("batch").await else {
        return;
    };
    let t = db.transport().await;
    let (a, b) = (room("a"), room("b"));
    t.publish(new_event(&a, Some("c"), json!({"c": 0})))
        .await
        .unwrap();
    let out = t
        .publish_batch(vec![
            new_event(&a, Some("x"), json!({"x": 1})),
            new_event(&b, Some("x"), json!({"bx": 1})),
            new_event(&a, Some("y"), json!({})),
            new_event(&a, Some("x"), json!({"x": 2})),
            new_event(&a, Some("c"), json!({"c": 1})),
        ])
        .await
        .unwrap();
    let summary: Vec<(u64, bool)> = out.iter().map(|o| (o.envelope.sequence, o.duplicate)).collect();
    assert_eq!(
        summary,
        vec![(2, false), (1, false), (3, false), (2, true), (1, true)]
    );
    assert_eq!(out[3].envelope.payload.get(), r#"{"x":1}"#);
    assert_eq!(out[1].envelope.room, b);
    let page = t.replay(&ReplayQuery::new(a.clone(), 0)).await.unwrap();
    assert_eq!(seqs(&page.events), vec![1, 2, 3]);
    t.close().await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_waits_for_the_purge_delay() {
    let Some(db) = TestDb::new("prune").await else {
        return;
    };
    let config = MongoConfig {
        hole_grace: Duration::from_millis(200),
        purge_delay: Duration::from_secs(1),
        ..db.config()
    };
    let t = db.transport_with(config).await;
    let chat = room("prune");
    let mut short = PublishRequest::new(chat.clone(), "t", &json!({})).unwrap();
    short.ttl = Some(Duration::from_millis(100));
    t.publish(NewEvent::from_request(short, Duration::from_secs(60), Timestamp::now()).unwrap())
        .await
        .unwrap();
    t.publish(new_event(&chat, None, json!({}))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Expired: never replayed, but kept on disk for the purge delay.
    let page = t.replay(&ReplayQuery::new(chat.clone(), 0)).await.unwrap();
    assert_eq!((seqs(&page.events), page.scanned_to), (vec![2], 2));
    assert_eq!(t.prune_expired().await.unwrap(), 0);
    // Past the purge delay by more than a second (the stand-in compares dates to the second).
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    assert_eq!(t.prune_expired().await.unwrap(), 1);
    // The pruned sequence is old history: final, no skip record, no wait.
    let page = t.replay(&ReplayQuery::new(chat.clone(), 0)).await.unwrap();
    assert_eq!((seqs(&page.events), page.scanned_to), (vec![2], 2));
    assert!(skip_records(&db, &chat).await.is_empty());
    assert_eq!(t.room_info(&chat).await.unwrap().earliest_sequence, 2);
    t.close().await.unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn a_bad_uri_is_refused_with_a_clear_error() {
    for uri in ["not-a-uri", "http://127.0.0.1:27017", "mongodb://"] {
        match MongoTransport::connect(uri, MongoConfig::default()).await {
            Err(MongoError::InvalidUri(msg)) => assert!(!msg.is_empty()),
            other => panic!("{uri}: expected InvalidUri, got {other:?}"),
        }
    }
    let bad_name = MongoConfig {
        events_collection: Some("bad$name".into()),
        ..MongoConfig::default()
    };
    assert!(matches!(
        MongoTransport::connect("mongodb://127.0.0.1:1", bad_name).await,
        Err(MongoError::InvalidName {
            field: "events_collection",
            ..
        })
    ));
    assert!(matches!(
        MongoTransport::connect("mongodb://127.0.0.1:1/bad.db", MongoConfig::default()).await,
        Err(MongoError::InvalidUri(_) | MongoError::InvalidName { .. })
    ));
}

#[tokio::test]
async fn an_unreachable_server_fails_within_the_connect_timeout() {
    // Port 1 on loopback: nothing listens there.
    let config = MongoConfig {
        connect_timeout: Duration::from_millis(500),
        ..MongoConfig::default()
    };
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        MongoTransport::connect("mongodb://user:secret@127.0.0.1:1/app", config),
    )
    .await
    .expect("connect must give up by itself");
    let err = result.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("127.0.0.1:1"), "{msg}");
    assert!(!msg.contains("secret"), "credentials never appear: {msg}");
    assert!(
        matches!(
            err,
            MongoError::Unreachable { .. } | MongoError::ConnectTimeout { .. }
        ),
        "{err:?}"
    );
    let engine_error = Error::from(err);
    assert!(matches!(&engine_error, Error::Transport(t) if t.kind == TransportErrorKind::Unavailable));
    eprintln!("unreachable server reported after {:?}", started.elapsed());
}
