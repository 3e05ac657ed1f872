//! What the NATS provider adds beyond the conformance suite: contention
//! between processes, idempotency beyond the server's duplicate window, room
//! names that are not subject-safe, locating positions in an interleaved
//! stream, and epochs when the stream is recreated.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use zps_core::{
    HealthStatus, LiveSignal, NewEvent, PublishRequest, Realtime, ReplayQuery, Room, RoomPattern, Timestamp,
    Transport,
};
use zps_nats::{NatsTransport, async_nats};

fn req(room: &Room, n: u64) -> PublishRequest {
    PublishRequest::new(room.clone(), "t", &json!({ "n": n })).unwrap()
}

/// Event `n` of `room` with the id `id`, as the engine hands it to the transport.
fn new_event(room: &Room, n: u64, id: impl Into<String>) -> NewEvent {
    NewEvent::from_request(
        req(room, n).with_id(id),
        Duration::from_secs(60),
        Timestamp::now(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_publishing_to_one_room_stay_gap_free() {
    let (_prefix, config) = support::config();
    let a = Arc::new(support::connect(config.clone()).await);
    let b = Arc::new(support::connect(config).await);
    let room = Room::parse("chat:contended").unwrap();
    let per_task = 50u64;
    let mut tasks = Vec::new();
    for (t, transport) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            let rt = Realtime::new(transport);
            let mut seqs = Vec::new();
            for i in 0..per_task {
                let r = req(&room, i).with_id(format!("t{t}-{i}"));
                seqs.push(rt.publish(r).await.unwrap().sequence);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let n = 4 * per_task;
    assert_eq!(
        all,
        (1..=n).collect::<Vec<_>>(),
        "every publish got its own sequence, none skipped"
    );
    let page = a
        .replay(&ReplayQuery::new(room.clone(), 0).limit(1000))
        .await
        .unwrap();
    let ids: HashSet<&str> = page.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(page.events.len() as u64, n);
    assert_eq!(ids.len() as u64, n, "no event stored twice");
    let conflicts = a.sequence_conflicts() + b.sequence_conflicts();
    eprintln!("{conflicts} sequence conflicts for {n} publishes from two processes");
    assert!(
        conflicts > 0,
        "two processes on one room must have contended at least once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_remembered_beyond_the_duplicate_window() {
    let (_prefix, mut config) = support::config();
    config.duplicate_window = Duration::from_millis(100);
    let transport = Arc::new(support::connect(config).await);
    let room = Room::parse("chat:idem").unwrap();
    let event = |n| new_event(&room, n, "once");
    let first = transport.publish(event(1)).await.unwrap();
    assert!(!first.duplicate);
    // Past the server's window, only the durable id record can know.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = transport.publish(event(2)).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.envelope.sequence, first.envelope.sequence);
    assert_eq!(
        again.envelope.payload.get(),
        r#"{"n":1}"#,
        "the original, not the retry"
    );
    let page = transport.replay(&ReplayQuery::new(room, 0)).await.unwrap();
    assert_eq!(page.events.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_names_that_are_not_subject_safe_round_trip() {
    let (_prefix, config) = support::config();
    let transport = Arc::new(support::connect(config).await);
    let rt = Realtime::new(transport.clone());
    let odd = [
        Room::parse("my.scope:a.b c*>").unwrap(),
        Room::parse("my.scope:ünï=3A/x").unwrap(),
    ];
    let other = Room::parse("myXscope:a.b c*>").unwrap();
    let mut live = transport
        .subscribe(&[RoomPattern::parse("my.scope:*").unwrap()])
        .await
        .unwrap();
    for room in odd.iter().chain([&other]) {
        rt.publish(req(room, 1)).await.unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .unwrap()
        {
            Some(LiveSignal::Event(e)) => seen.push(e.room.clone()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        odd.to_vec(),
        "the wildcard matches its scope only, names intact"
    );
    for room in odd.iter().chain([&other]) {
        let page = transport
            .replay(&ReplayQuery::new(room.clone(), 0))
            .await
            .unwrap();
        assert_eq!(page.events.len(), 1);
        assert_eq!(&page.events[0].room, room);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_finds_any_position_in_an_interleaved_stream() {
    let (_prefix, config) = support::config();
    let transport = Arc::new(support::connect(config).await);
    let rt = Realtime::new(transport.clone());
    let rooms: Vec<Room> = (0..3)
        .map(|i| Room::parse(&format!("chat:r{i}")).unwrap())
        .collect();
    // An irregular interleaving: room i gets i + 1 events per round.
    let mut counts = [0u64; 3];
    for round in 0..30u64 {
        for (i, room) in rooms.iter().enumerate() {
            for _ in 0..=i {
                rt.publish(req(room, round)).await.unwrap();
                counts[i] += 1;
            }
        }
    }
    for (i, room) in rooms.iter().enumerate() {
        let last = counts[i];
        for from in 0..=last {
            // A short page (read event by event) and a long one (through a consumer).
            for limit in [3usize, 40] {
                let page = transport
                    .replay(&ReplayQuery::new(room.clone(), from).limit(limit))
                    .await
                    .unwrap();
                let want: Vec<u64> = (from + 1..=last).take(limit).collect();
                let got: Vec<u64> = page.events.iter().map(|e| e.sequence).collect();
                assert_eq!(got, want, "room {room} from {from} limit {limit}");
                assert_eq!(page.exhausted, from + limit as u64 >= last);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_stream_is_a_new_epoch() {
    let (prefix, config) = support::config();
    let before = support::connect(config.clone()).await;
    let room = Room::parse("chat:epoch").unwrap();
    Realtime::new(Arc::new(before.clone()))
        .publish(req(&room, 1))
        .await
        .unwrap();
    let old = before.room_info(&room).await.unwrap();
    assert_eq!(old.last_sequence, 1);
    let client = async_nats::connect(&prefix.url).await.unwrap();
    async_nats::jetstream::new(client)
        .delete_stream(config.events_stream())
        .await
        .unwrap();
    let after: NatsTransport = support::connect(config).await;
    let new = after.room_info(&room).await.unwrap();
    assert_ne!(new.epoch, old.epoch, "a new history is a new epoch");
    assert_eq!(new.last_sequence, 0);
    assert_eq!(
        before.health().await.status,
        HealthStatus::Unhealthy,
        "the old transport tells operators its epoch is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_stream_is_a_new_epoch() {
    let (prefix, config) = support::config();
    let before = support::connect(config.clone()).await;
    let room = Room::parse("chat:purged").unwrap();
    Realtime::new(Arc::new(before.clone()))
        .publish(req(&room, 1))
        .await
        .unwrap();
    let old = before.room_info(&room).await.unwrap();
    assert_eq!(before.health().await.status, HealthStatus::Healthy);
    let client = async_nats::connect(&prefix.url).await.unwrap();
    async_nats::jetstream::new(client)
        .get_stream(config.events_stream())
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let after = support::connect(config).await;
    let new = after.room_info(&room).await.unwrap();
    assert_ne!(new.epoch, old.epoch, "sequences restart, so the epoch changes");
    assert_eq!(new.last_sequence, 0);
    assert_eq!(before.health().await.status, HealthStatus::Unhealthy);
    assert_eq!(after.health().await.status, HealthStatus::Healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_id_published_at_once_through_two_processes_is_stored_once() {
    let (_prefix, config) = support::config();
    let a = Arc::new(support::connect(config.clone()).await);
    let b = Arc::new(support::connect(config).await);
    let room = Room::parse("chat:same-id").unwrap();
    for i in 0..20u64 {
        let event = new_event(&room, i, format!("e{i}"));
        let (x, y) = tokio::join!(a.publish(event.clone()), b.publish(event));
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(
            x.envelope.sequence, y.envelope.sequence,
            "both answers name one event"
        );
        assert!(x.duplicate != y.duplicate, "exactly one of the two stored it");
    }
    let page = a.replay(&ReplayQuery::new(room, 0).limit(100)).await.unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
}

/// Writes an id record by hand, as a publisher that died mid-publish leaves it.
async fn leave_pending_claim(prefix: &support::Prefix, id: &str) {
    write_id_record(prefix, id, "pending").await;
}

async fn write_id_record(prefix: &support::Prefix, id: &str, value: &'static str) {
    let client = async_nats::connect(&prefix.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish(format!("{}.id.chat.orphan.{id}", prefix.name), value.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_by_a_dead_publisher_is_taken_over() {
    let (prefix, mut config) = support::config();
    config.request_timeout = Duration::from_millis(500);
    let transport = support::connect(config).await;
    let room = Room::parse("chat:orphan").unwrap();
    let event = |id: &str| new_event(&room, 1, id);

    // Died before storing: the event is stored once the claim lapses.
    leave_pending_claim(&prefix, "never-stored").await;
    let first = transport.publish(event("never-stored")).await.unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.envelope.sequence, 1);

    // Died after storing, before recording the sequence: found, not stored again.
    transport.publish(event("stored")).await.unwrap();
    leave_pending_claim(&prefix, "stored").await;
    let again = transport.publish(event("stored")).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.envelope.sequence, 2);
    let page = transport
        .replay(&ReplayQuery::new(room.clone(), 0))
        .await
        .unwrap();
    assert_eq!(page.events.len(), 2);
    // And the record now names the sequence: the next retry answers at once.
    let third = transport.publish(event("stored")).await.unwrap();
    assert!(third.duplicate);
    assert_eq!(third.envelope.sequence, 2);

    // A record naming no sequence (0) is a claim, not an answer: never "stored at 0".
    write_id_record(&prefix, "zero", "0").await;
    let zero = transport.publish(event("zero")).await.unwrap();
    assert!(!zero.duplicate);
    assert_eq!(zero.envelope.sequence, 3);
}

/// Regression (the fault suite's gateway-kill on NATS): a publish waiting out a dead
/// publisher's claim held the room's turn, so every other publish to that room on the
/// surviving gateway stalled for `request_timeout` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_out_a_dead_claim_holds_up_no_other_publish_to_the_room() {
    let (prefix, mut config) = support::config();
    config.request_timeout = Duration::from_secs(3);
    let transport = Arc::new(support::connect(config).await);
    let room = Room::parse("chat:orphan").unwrap();
    let event = |id: &str| new_event(&room, 1, id);
    for batched in [false, true] {
        let dead = format!("in-flight-at-the-kill-{batched}");
        leave_pending_claim(&prefix, &dead).await;
        let waiting = {
            let (t, e) = (transport.clone(), event(&dead));
            tokio::spawn(async move {
                if batched {
                    t.publish_batch(vec![e]).await.map(|mut v| v.remove(0))
                } else {
                    t.publish(e).await
                }
            })
        };
        // Give the waiting publish time to take the room's turn, as it used to.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let other = format!("other-{batched}");
        let stored = if batched {
            transport
                .publish_batch(vec![event(&other)])
                .await
                .unwrap()
                .remove(0)
        } else {
            transport.publish(event(&other)).await.unwrap()
        };
        assert!(!stored.duplicate);
        assert!(
            !waiting.is_finished(),
            "the other publish is stored while the dead claim is still being waited out"
        );
        let taken_over = waiting.await.unwrap().unwrap();
        assert_eq!(taken_over.envelope.id, dead);
        assert!(!taken_over.duplicate);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_from_two_processes_keep_each_batch_in_order() {
    let (_prefix, config) = support::config();
    let a = Arc::new(support::connect(config.clone()).await);
    let b = Arc::new(support::connect(config).await);
    assert!(a.batches_publishes());
    let rooms = [Room::parse("chat:b1").unwrap(), Room::parse("chat:b2").unwrap()];
    let event = |room: &Room, id: String| new_event(room, 0, id);
    // Stored before: the batch answers it as a duplicate.
    let earlier = a.publish(event(&rooms[0], "a-0-0".into())).await.unwrap();
    let batches = |t: Arc<NatsTransport>, name: &'static str| {
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for n in 0..10 {
                // Both rooms interleaved, and one id twice in the batch.
                let mut events = Vec::new();
                for k in 0..6 {
                    events.push(event(&rooms[k % 2], format!("{name}-{n}-{k}")));
                }
                events.push(event(&rooms[0], format!("{name}-{n}-0")));
                let out = t.publish_batch(events).await.unwrap();
                answers.push(out);
            }
            answers
        })
    };
    let (x, y) = (batches(a.clone(), "a"), batches(b.clone(), "b"));
    for (name, answers) in [("a", x.await.unwrap()), ("b", y.await.unwrap())] {
        for (n, out) in answers.iter().enumerate() {
            assert_eq!(out.len(), 7);
            assert_eq!(
                out[6].envelope.id, out[0].envelope.id,
                "the repeat answers with the first"
            );
            assert!(out[6].duplicate);
            assert_eq!(out[6].envelope.sequence, out[0].envelope.sequence);
            for room in 0..2 {
                let seqs: Vec<u64> = (0..6)
                    .filter(|k| k % 2 == room)
                    .map(|k| out[k].envelope.sequence)
                    .collect();
                assert!(
                    seqs.windows(2).all(|w| w[0] < w[1]),
                    "{name} batch {n}: order kept in room {room}: {seqs:?}"
                );
            }
            if name == "a" && n == 0 {
                assert!(out[0].duplicate, "stored before the batch");
                assert_eq!(out[0].envelope.sequence, earlier.envelope.sequence);
            }
        }
    }
    for room in &rooms {
        let page = a
            .replay(&ReplayQuery::new(room.clone(), 0).limit(1000))
            .await
            .unwrap();
        let n = page.events.len() as u64;
        assert_eq!(
            page.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>()
        );
        let ids: HashSet<&str> = page.events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len() as u64, n, "no id stored twice");
        assert_eq!(n, 60, "3 events per room per batch, 10 batches, 2 processes");
    }
}
