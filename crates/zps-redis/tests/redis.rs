//! Redis-specific behaviour against a real server: cross-transport ordering,
//! subscriber reconnects, epochs, fan-out-only mode, idempotency, the script
//! cache, connection errors, injected clients and sharded pub/sub.
//!
//! Every test works under its own random key prefix and deletes its keys afterwards.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use zps_core::transport::{EphemeralBus, PresenceStore};

use futures::StreamExt;
use serde_json::json;
use zps_conformance::{WAIT, next_event, seqs, take_events, unique_room};
use zps_core::{
    DiscontinuityReason, Error, HealthStatus, LiveSignal, NewEvent, PublishRequest, Realtime, ReplayQuery,
    Room, RoomPattern, SubscribeOptions, SubscriptionItem, Timestamp, Transport,
};
use zps_redis::fred::prelude::*;
use zps_redis::fred::types::{ClusterHash, CustomCommand};
use zps_redis::{RedisConfig, RedisError, RedisTransport};

fn req(room: &Room, payload: serde_json::Value) -> PublishRequest {
    PublishRequest::new(room.clone(), "t", &payload).unwrap()
}

fn new_event(room: &Room, id: &str, payload: serde_json::Value, ttl: Duration) -> NewEvent {
    NewEvent::from_request(req(room, payload).with_id(id), ttl, Timestamp::now()).unwrap()
}

async fn command<R: FromValue>(client: &Client, name: &'static str, args: Vec<&str>) -> R {
    client
        .custom(CustomCommand::new_static(name, ClusterHash::Random, false), args)
        .await
        .unwrap()
}

/// Kills the server-side connection of a fred client (found by its CLIENT SETNAME name).
async fn kill_connection(admin: &Client, victim: &Client) {
    let list: String = command(admin, "CLIENT", vec!["LIST"]).await;
    let name = format!("name={}", victim.id());
    let line = list
        .lines()
        .find(|l| l.split(' ').any(|f| f == name))
        .unwrap_or_else(|| panic!("no connection named {}", victim.id()));
    let id = line.split(' ').find_map(|f| f.strip_prefix("id=")).unwrap();
    let killed: i64 = command(admin, "CLIENT", vec!["KILL", "ID", id]).await;
    assert_eq!(killed, 1);
}

/// Deletes every key of one room (what a flush or a restart without persistence does to it).
async fn delete_room_keys(prefix: &str, room: &Room) {
    let client = support::raw_client().await;
    let tag = format!("{{{room}}}");
    let keys: Vec<String> = support::keys_under(&client, prefix)
        .await
        .into_iter()
        .filter(|k| k.contains(&tag))
        .collect();
    assert!(!keys.is_empty());
    let _: i64 = client.del(keys).await.unwrap();
    client.quit().await.unwrap();
}

async fn next_signal(stream: &mut zps_core::transport::LiveStream) -> LiveSignal {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no live signal in time")
        .expect("live stream ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_on_two_transports_are_seen_once_in_order_on_both() {
    let (_prefix, mut config) = support::config();
    // Room for the whole burst (2 000 events): this test is about order on the live
    // path; with the default 128 a busy CI machine lets the raw reader fall behind
    // and the stream reports a lag (covered by its own tests).
    config.channel_capacity = 4096;
    let (a, b) = (
        Arc::new(support::connect(config.clone()).await),
        Arc::new(support::connect(config.clone()).await),
    );
    let chat = unique_room("chat");
    // Raw transport streams: the live path itself must be in order, without engine repair.
    let raw_a = a.subscribe(&[chat.clone().into()]).await.unwrap();
    let raw_b = b.subscribe(&[chat.clone().into()]).await.unwrap();
    let (rt_a, rt_b) = (Realtime::new(a.clone()), Realtime::new(b.clone()));
    let mut sub_a = rt_a
        .subscribe_stream(SubscribeOptions::room(chat.clone()))
        .await
        .unwrap();
    let mut sub_b = rt_b
        .subscribe_stream(SubscribeOptions::room(chat.clone()))
        .await
        .unwrap();
    let per = 500u64;
    let publishers: Vec<_> = [rt_a.clone(), rt_b.clone(), rt_a.clone(), rt_b.clone()]
        .into_iter()
        .enumerate()
        .map(|(p, rt)| {
            let chat = chat.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    rt.publish(req(&chat, json!({"p": p, "i": i}))).await.unwrap();
                }
            })
        })
        .collect();
    let n = 4 * per;
    let expected: Vec<u64> = (1..=n).collect();
    let collect_raw = |mut s: zps_core::transport::LiveStream| async move {
        let mut got = Vec::new();
        while (got.len() as u64) < n {
            match next_signal(&mut s).await {
                LiveSignal::Event(e) => got.push(e.sequence),
                other => panic!("unexpected signal on an undisturbed live path: {other:?}"),
            }
        }
        got
    };
    let (got_a, got_b) = tokio::join!(tokio::spawn(collect_raw(raw_a)), tokio::spawn(collect_raw(raw_b)));
    for p in publishers {
        p.await.unwrap();
    }
    assert_eq!(got_a.unwrap(), expected);
    assert_eq!(got_b.unwrap(), expected);
    assert_eq!(seqs(&take_events(&mut sub_a, n as usize).await), expected);
    assert_eq!(seqs(&take_events(&mut sub_b, n as usize).await), expected);
    rt_a.close().await.unwrap();
    rt_b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_subscriber_connection_loses_no_stored_event() {
    let (_prefix, config) = support::config();
    let publisher = Arc::new(support::connect(config.clone()).await);
    let receiver = Arc::new(support::connect(config.clone()).await);
    let admin = support::raw_client().await;
    let chat = unique_room("chat");
    let rt_pub = Realtime::new(publisher.clone());
    let rt_sub = Realtime::new(receiver.clone());
    let mut sub = rt_sub
        .subscribe_stream(SubscribeOptions::room(chat.clone()))
        .await
        .unwrap();
    // A raw stream on the same transport, to see the transport's own signals.
    let mut raw = receiver.subscribe(&[chat.clone().into()]).await.unwrap();
    let saw_lagged_all = Arc::new(AtomicBool::new(false));
    let raw_task = {
        let saw = saw_lagged_all.clone();
        tokio::spawn(async move {
            while let Some(signal) = raw.next().await {
                if matches!(signal, LiveSignal::Lagged(None)) {
                    saw.store(true, Ordering::SeqCst);
                }
            }
        })
    };
    let n = 3000u64;
    let publish_task = {
        let (rt, chat) = (rt_pub.clone(), chat.clone());
        tokio::spawn(async move {
            for i in 1..=n {
                rt.publish(req(&chat, json!({"i": i}))).await.unwrap();
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };
    let mut got = take_events(&mut sub, 500).await;
    kill_connection(&admin, receiver.subscriber()).await;
    got.extend(take_events(&mut sub, (n - 500) as usize).await);
    publish_task.await.unwrap();
    assert_eq!(seqs(&got), (1..=n).collect::<Vec<u64>>());
    for e in &got {
        let p: serde_json::Value = e.payload_as().unwrap();
        assert_eq!(p["i"], e.sequence);
    }
    // The reconnect was announced to every live stream.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !saw_lagged_all.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Lagged(None) after the reconnect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Live delivery continues on the re-established connection.
    let after = rt_pub.publish(req(&chat, json!({"i": n + 1}))).await.unwrap();
    assert_eq!(next_event(&mut sub).await.sequence, after.sequence);
    rt_pub.close().await.unwrap();
    rt_sub.close().await.unwrap();
    raw_task.await.unwrap();
    admin.quit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_room_history_changes_the_epoch_and_is_reported() {
    let (prefix, config) = support::config();
    let transport = Arc::new(support::connect(config.clone()).await);
    let rt = Realtime::new(transport.clone());
    let chat = unique_room("chat");
    for i in 1..=3 {
        rt.publish(req(&chat, json!({"i": i}))).await.unwrap();
    }
    let old = rt.room_info(&chat).await.unwrap();
    assert_eq!(old.last_sequence, 3);
    let mut live = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()))
        .await
        .unwrap();
    assert_eq!(seqs(&take_events(&mut live, 3).await), vec![1, 2, 3]);

    delete_room_keys(&prefix, &chat).await;

    // A resume with the old epoch is told the history is gone.
    let resume = rt
        .subscribe_stream(
            SubscribeOptions::room(chat.clone())
                .from_sequence(3)
                .epoch(old.epoch.clone()),
        )
        .await
        .unwrap();
    let start = &resume.starts()[0];
    assert_eq!(start.recovered, Some(false));
    assert_eq!(start.reason, Some(DiscontinuityReason::StreamReset));
    assert_ne!(start.epoch, old.epoch);
    let new = rt.room_info(&chat).await.unwrap();
    assert_eq!(new.epoch, start.epoch, "the new epoch is stable");
    assert_eq!((new.last_sequence, new.earliest_sequence), (0, 1));

    // The live subscriber sees the reset, then the new epoch's events from 1.
    let first = rt.publish(req(&chat, json!({"i": "new-1"}))).await.unwrap();
    assert_eq!(first.sequence, 1);
    match tokio::time::timeout(WAIT, live.next()).await {
        Ok(Some(SubscriptionItem::Discontinuity(d))) => {
            assert_eq!(d.reason, DiscontinuityReason::StreamReset);
            assert_eq!(d.epoch, new.epoch);
            assert_eq!(d.requested_from, 3);
        }
        other => panic!("expected a discontinuity, got {other:?}"),
    }
    assert_eq!(next_event(&mut live).await.sequence, 1);
    rt.publish(req(&chat, json!({"i": "new-2"}))).await.unwrap();
    assert_eq!(next_event(&mut live).await.sequence, 2);
    rt.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reset_during_a_disconnect_is_announced_on_reconnect() {
    let (prefix, config) = support::config();
    let transport = support::connect(config.clone()).await;
    let admin = support::raw_client().await;
    let chat = unique_room("chat");
    let first = transport
        .publish(new_event(&chat, "a", json!(1), Duration::from_secs(60)))
        .await
        .unwrap();
    let old_epoch = transport.room_info(&chat).await.unwrap().epoch;
    let mut raw = transport.subscribe(&[chat.clone().into()]).await.unwrap();
    assert_eq!(first.envelope.sequence, 1);

    // History lost while the subscriber connection is down: nothing is published
    // afterwards, yet the stream learns about the new epoch from the resync.
    delete_room_keys(&prefix, &chat).await;
    kill_connection(&admin, transport.subscriber()).await;
    let mut reset = None;
    let mut lagged = false;
    while reset.is_none() || !lagged {
        match next_signal(&mut raw).await {
            LiveSignal::Reset { room, epoch } => {
                assert_eq!(room, chat);
                assert!(!lagged, "the reset comes before the re-read request");
                reset = Some(epoch);
            }
            LiveSignal::Lagged(None) => lagged = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    let new_epoch = reset.unwrap();
    assert_ne!(new_epoch, old_epoch);
    assert_eq!(transport.room_info(&chat).await.unwrap().epoch, new_epoch);
    transport.close().await.unwrap();
    admin.quit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fanout_only_mode_delivers_across_transports_and_refuses_replay() {
    let (prefix, config) = support::config();
    let config = config.fanout_only();
    let (a, b) = (
        Arc::new(support::connect(config.clone()).await),
        Arc::new(support::connect(config.clone()).await),
    );
    assert!(!a.capabilities().history);
    assert!(a.capabilities().cross_process);
    let chat = unique_room("chat");
    let (rt_a, rt_b) = (Realtime::new(a.clone()), Realtime::new(b.clone()));
    let mut sub_a = rt_a
        .subscribe_stream(SubscribeOptions::room(chat.clone()).live_only())
        .await
        .unwrap();
    let mut sub_b = rt_b
        .subscribe_stream(SubscribeOptions::room(chat.clone()).live_only())
        .await
        .unwrap();
    let scope = RoomPattern::parse(&format!("{}:*", chat.scope())).unwrap();
    let mut wild = b.subscribe(&[scope]).await.unwrap();
    for i in 1..=100u64 {
        let rt = if i % 2 == 0 { &rt_a } else { &rt_b };
        assert_eq!(rt.publish(req(&chat, json!({"i": i}))).await.unwrap().sequence, i);
    }
    let expected: Vec<u64> = (1..=100).collect();
    assert_eq!(seqs(&take_events(&mut sub_a, 100).await), expected);
    assert_eq!(seqs(&take_events(&mut sub_b, 100).await), expected);
    for i in 1..=100u64 {
        match next_signal(&mut wild).await {
            LiveSignal::Event(e) => assert_eq!(e.sequence, i),
            other => panic!("unexpected {other:?}"),
        }
    }

    // Idempotency still holds without a stream: the stored JSON is returned.
    let original = a
        .publish(new_event(
            &chat,
            "dup",
            json!({"v": "first"}),
            Duration::from_secs(60),
        ))
        .await
        .unwrap();
    let again = b
        .publish(new_event(
            &chat,
            "dup",
            json!({"v": "second"}),
            Duration::from_secs(60),
        ))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.envelope.to_json(), original.envelope.to_json());

    let err = rt_a.replay(ReplayQuery::new(chat.clone(), 0)).await.unwrap_err();
    match &err {
        Error::Unsupported { provider, what } => {
            assert_eq!(*provider, "redis");
            assert!(what.contains("persist_streams = false"), "{what}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    let info = a.room_info(&chat).await.unwrap();
    assert_eq!(info.last_sequence, 101);
    assert_eq!(info.earliest_sequence, 102, "nothing is retained");
    let client = support::raw_client().await;
    let keys = support::keys_under(&client, &prefix).await;
    assert!(
        keys.iter().all(|k| !k.contains(":stream:")),
        "no stream is written: {keys:?}"
    );
    client.quit().await.unwrap();
    rt_a.close().await.unwrap();
    rt_b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_stored_elsewhere_fan_out_as_is() {
    let (_prefix, config) = support::config();
    let config = config.fanout_only();
    let (a, b) = (
        support::connect(config.clone()).await,
        support::connect(config.clone()).await,
    );
    let chat = unique_room("chat");
    let mut live = b.subscribe(&[chat.clone().into()]).await.unwrap();
    let stored = |seq: u64| {
        Arc::new(
            new_event(
                &chat,
                &format!("e{seq}"),
                json!({"s": seq}),
                Duration::from_secs(60),
            )
            .into_envelope(seq),
        )
    };
    let expect_event = |signal: LiveSignal, seq: u64| match signal {
        LiveSignal::Event(e) => assert_eq!(e.sequence, seq),
        other => panic!("expected event {seq}, got {other:?}"),
    };
    // The hybrid provider's path: no epoch on the wire, delivered exactly as given.
    let first = stored(41);
    a.fanout(first.clone()).await.unwrap();
    match next_signal(&mut live).await {
        LiveSignal::Event(e) => assert_eq!(e.to_json(), first.to_json()),
        other => panic!("unexpected {other:?}"),
    }
    // With an epoch, a change of it is announced before the event.
    a.fanout_stored(&stored(42), "storage-epoch-1").await.unwrap();
    expect_event(next_signal(&mut live).await, 42);
    a.fanout_stored(&stored(1), "storage-epoch-2").await.unwrap();
    match next_signal(&mut live).await {
        LiveSignal::Reset { room, epoch } => {
            assert_eq!(room, chat);
            assert_eq!(epoch, "storage-epoch-2");
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    expect_event(next_signal(&mut live).await, 1);
    // Epoch-less envelopes never look like a reset.
    a.fanout(stored(2)).await.unwrap();
    expect_event(next_signal(&mut live).await, 2);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_publishes_never_stall_a_room() {
    let (_prefix, config) = support::config();
    let t = Arc::new(support::connect(config).await);
    let chat = unique_room("chat");
    // Concurrent publishes to one room queue behind the call in flight; cancel half of
    // them at arbitrary points, leaders included.
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (t, chat) = (t.clone(), chat.clone());
            tokio::spawn(async move {
                t.publish(new_event(
                    &chat,
                    &format!("c{i}"),
                    json!(i),
                    Duration::from_secs(60),
                ))
                .await
                .map(|o| o.envelope.sequence)
            })
        })
        .collect();
    let mut finished = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if i % 2 == 0 {
            task.abort();
        } else {
            finished.push(task);
        }
    }
    for task in finished {
        task.await.unwrap().unwrap();
    }
    // The room still publishes, and what was stored is gap-free.
    for i in 0..10 {
        tokio::time::timeout(
            WAIT,
            t.publish(new_event(
                &chat,
                &format!("after{i}"),
                json!(i),
                Duration::from_secs(60),
            )),
        )
        .await
        .expect("a cancelled publish stalled the room")
        .unwrap();
    }
    let last = t.room_info(&chat).await.unwrap().last_sequence;
    assert!((110..=210).contains(&last), "{last}");
    let page = t
        .replay(&ReplayQuery::new(chat.clone(), 0).limit(10_000))
        .await
        .unwrap();
    assert_eq!(seqs(&page.events), (1..=last).collect::<Vec<u64>>());
    t.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_is_per_room_and_expires() {
    let (_prefix, mut config) = support::config();
    config.idempotency_ttl = Duration::from_millis(300);
    let t = support::connect(config).await;
    let (a, b) = (unique_room("chat"), unique_room("chat"));
    let long = Duration::from_secs(3600);

    let first = t.publish(new_event(&a, "id-1", json!("a1"), long)).await.unwrap();
    let dup = t.publish(new_event(&a, "id-1", json!("a2"), long)).await.unwrap();
    assert!(!first.duplicate && dup.duplicate);
    assert_eq!(dup.envelope.sequence, 1);
    assert_eq!(dup.envelope.payload.get(), "\"a1\"");
    assert_eq!(dup.envelope.emitted_at, first.envelope.emitted_at);
    // Another room: the same id is a new event there.
    let other = t.publish(new_event(&b, "id-1", json!("b1"), long)).await.unwrap();
    assert!(!other.duplicate);
    assert_eq!(
        (other.envelope.room.clone(), other.envelope.sequence),
        (b.clone(), 1)
    );

    // Past the idempotency TTL the id is free again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = t.publish(new_event(&a, "id-1", json!("a3"), long)).await.unwrap();
    assert!(!later.duplicate);
    assert_eq!(later.envelope.sequence, 2);

    // The record never outlives the event it points to.
    let short = t
        .publish(new_event(&a, "id-2", json!("s1"), Duration::from_millis(200)))
        .await
        .unwrap();
    assert_eq!(short.envelope.sequence, 3);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let again = t
        .publish(new_event(&a, "id-2", json!("s2"), Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(!again.duplicate);
    assert_eq!(again.envelope.sequence, 4);
    t.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_and_published_envelopes_equal_the_returned_one() {
    let (_prefix, config) = support::config();
    let t = support::connect(config.clone()).await;
    let chat = unique_room("chat");
    // Listen on the raw channel with a plain client, as a foreign consumer would.
    let listener = support::raw_client().await;
    let mut messages = listener.message_rx();
    let channel = format!("{}{{{chat}}}", config.channel_prefix);
    listener.subscribe(channel.clone()).await.unwrap();
    // fred resolves SUBSCRIBE when written; a PING answer means the server processed it.
    let _: Value = listener.ping(None).await.unwrap();
    let tricky = json!({"sequence": 0, "text": "\"sequence\":0", "n": [1.5, null]});
    let mut returned = Vec::new();
    for _ in 0..3 {
        let out = t
            .publish(new_event(
                &chat,
                &zps_core::envelope::generate_id(),
                tricky.clone(),
                Duration::from_secs(60),
            ))
            .await
            .unwrap();
        returned.push(out.envelope);
    }
    let epoch = t.room_info(&chat).await.unwrap().epoch;
    for env in &returned {
        let msg = tokio::time::timeout(WAIT, messages.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*msg.channel, channel.as_str());
        let expected = format!(
            "{{\"v\":1,\"epoch\":\"{epoch}\",\"event\":{}}}",
            serde_json::to_string(&**env).unwrap()
        );
        assert_eq!(msg.value.as_str().unwrap(), expected);
    }
    // Stream ids are the sequences, and the stored JSON is the returned envelope.
    let reader = support::raw_client().await;
    let entries: Vec<(String, Vec<(String, String)>)> = reader
        .xrange(format!("{}{{{chat}}}", config.stream_prefix), "-", "+", None)
        .await
        .unwrap();
    let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, vec!["1-0", "2-0", "3-0"]);
    for ((_, fields), env) in entries.iter().zip(&returned) {
        let d = &fields.iter().find(|(k, _)| k == "d").unwrap().1;
        assert_eq!(d, &serde_json::to_string(&**env).unwrap());
        let x = &fields.iter().find(|(k, _)| k == "x").unwrap().1;
        assert_eq!(x, &env.expires_at.as_millis().to_string());
    }
    listener.quit().await.unwrap();
    reader.quit().await.unwrap();
    t.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_survives_a_flushed_script_cache() {
    let (_prefix, config) = support::config();
    let t = support::connect(config).await;
    let admin = support::raw_client().await;
    let chat = unique_room("chat");
    let long = Duration::from_secs(60);
    assert_eq!(
        t.publish(new_event(&chat, "1", json!(1), long))
            .await
            .unwrap()
            .envelope
            .sequence,
        1
    );
    let _: () = command(&admin, "SCRIPT", vec!["FLUSH"]).await;
    assert_eq!(
        t.publish(new_event(&chat, "2", json!(2), long))
            .await
            .unwrap()
            .envelope
            .sequence,
        2
    );
    let _: () = command(&admin, "SCRIPT", vec!["FLUSH"]).await;
    assert_eq!(t.room_info(&chat).await.unwrap().last_sequence, 2);
    let _: () = command(&admin, "SCRIPT", vec!["FLUSH"]).await;
    assert_eq!(t.ack(&chat, "s", 2).await.unwrap(), 2);
    let _: () = command(&admin, "SCRIPT", vec!["FLUSH"]).await;
    let batch = t
        .publish_batch(
            (3..=10)
                .map(|i| new_event(&chat, &i.to_string(), json!(i), long))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(
        batch.iter().map(|o| o.envelope.sequence).collect::<Vec<_>>(),
        (3..=10).collect::<Vec<u64>>()
    );
    admin.quit().await.unwrap();
    t.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_length_cap_reports_trimmed_history_as_expired_positions() {
    let (_prefix, mut config) = support::config();
    config.max_stream_len = Some(100);
    let t = Arc::new(support::connect(config).await);
    let rt = Realtime::new(t.clone());
    let chat = unique_room("chat");
    let events: Vec<NewEvent> = (0..1000)
        .map(|i| new_event(&chat, &format!("e{i}"), json!(i), Duration::from_secs(60)))
        .collect();
    t.publish_batch(events).await.unwrap();
    let info = rt.room_info(&chat).await.unwrap();
    assert_eq!(info.last_sequence, 1000);
    // `MAXLEN ~` trims whole stream nodes: somewhere between the cap and a node more.
    assert!(
        info.earliest_sequence > 1 && info.earliest_sequence <= 901,
        "{info:?}"
    );
    let page = rt
        .replay(ReplayQuery::new(chat.clone(), 0).limit(10_000))
        .await
        .unwrap();
    assert_eq!(page.events.first().unwrap().sequence, info.earliest_sequence);
    assert_eq!(page.events.last().unwrap().sequence, 1000);
    assert!(page.exhausted);
    let resume = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).from_sequence(0))
        .await
        .unwrap();
    assert_eq!(
        resume.starts()[0].reason,
        Some(DiscontinuityReason::PositionExpired)
    );
    rt.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_expires_across_transports_and_is_swept_once() {
    let (_prefix, config) = support::config();
    let (a, b) = (
        support::connect(config.clone()).await,
        support::connect(config.clone()).await,
    );
    let chat = unique_room("chat");
    let member = |user: &str| zps_core::PresenceMember {
        user_id: user.into(),
        metadata: None,
        last_seen_at: Timestamp::now(),
    };
    let short = Duration::from_millis(200);
    assert!(a.presence_enter(&chat, member("u1"), "c1", short).await.unwrap());
    assert!(
        b.presence_enter(&chat, member("u2"), "c2", Duration::from_secs(60))
            .await
            .unwrap()
    );
    let members = b.presence_members(&chat).await.unwrap();
    assert_eq!(
        members.iter().map(|m| m.user_id.as_str()).collect::<Vec<_>>(),
        vec!["u1", "u2"]
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let members = a.presence_members(&chat).await.unwrap();
    assert_eq!(
        members.iter().map(|m| m.user_id.as_str()).collect::<Vec<_>>(),
        vec!["u2"]
    );
    let (left_b, left_a) = (
        b.presence_sweep().await.unwrap(),
        a.presence_sweep().await.unwrap(),
    );
    let mine = |left: &[(Room, String)]| {
        left.iter()
            .filter(|(r, _)| *r == chat)
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut all = mine(&left_b);
    all.extend(mine(&left_a));
    assert_eq!(
        all,
        vec![(chat.clone(), "u1".to_owned())],
        "one leave, announced once"
    );
    assert!(!a.presence_leave(&chat, "u1", "c1").await.unwrap());
    assert!(b.presence_leave(&chat, "u2", "c2").await.unwrap());
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn unreachable_servers_and_bad_settings_fail_fast_with_clear_errors() {
    let config = RedisConfig {
        connect_timeout: Duration::from_secs(2),
        ..RedisConfig::default()
    };
    let started = std::time::Instant::now();
    let err = RedisTransport::connect("redis://127.0.0.1:1", config.clone())
        .await
        .err()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, RedisError::Connect { .. }), "{err:?}");
    assert!(err.is_unavailable());
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    let core: Error = err.into();
    assert_eq!(core.code(), zps_core::ErrorCode::Unavailable);

    let err = RedisTransport::connect("redis://:hunter2@127.0.0.1:1", config.clone())
        .await
        .err()
        .unwrap();
    assert!(!err.to_string().contains("hunter2"), "{err}");

    let err = RedisTransport::connect("not a url", config.clone())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RedisError::InvalidConfig(_)), "{err:?}");

    if !cfg!(feature = "tls") {
        let err = RedisTransport::connect("rediss://127.0.0.1:1", config.clone())
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("`tls` feature"), "{err}");
    }

    let bad = RedisConfig {
        channel_prefix: "rooms{".into(),
        ..RedisConfig::default()
    };
    let err = RedisTransport::connect(&support::redis_url(), bad)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("channel_prefix"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_clients_stay_with_their_owner() {
    let (_prefix, config) = support::config();
    let client = support::raw_client().await;
    let subscriber = support::raw_client().await;
    assert!(matches!(
        RedisTransport::from_clients(client.clone(), client.clone(), config.clone()),
        Err(RedisError::InvalidConfig(_))
    ));
    let t = RedisTransport::from_clients(client.clone(), subscriber.clone(), config.clone()).unwrap();
    let chat = unique_room("chat");
    let mut live = t.subscribe(&[chat.clone().into()]).await.unwrap();
    let out = t
        .publish(new_event(&chat, "x", json!(1), Duration::from_secs(60)))
        .await
        .unwrap();
    match next_signal(&mut live).await {
        LiveSignal::Event(e) => assert_eq!(e.sequence, out.envelope.sequence),
        other => panic!("unexpected {other:?}"),
    }
    let health = t.health().await;
    assert_eq!(health.status, HealthStatus::Healthy, "{health:?}");
    assert_eq!(health.details["subscriptions"], json!(1));
    t.close().await.unwrap();
    assert!(live.next().await.is_none(), "live streams end on close");
    assert_eq!(t.health().await.status, HealthStatus::Unhealthy);
    assert!(matches!(t.room_info(&chat).await, Err(Error::Closed)));
    // Both clients still work, and the subscriber no longer listens to the room.
    let pong: String = client.ping(None).await.unwrap();
    assert_eq!(pong, "PONG");
    let channel = format!("{}{{{chat}}}", config.channel_prefix);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let counts: Vec<(String, i64)> = client.pubsub_numsub(channel.clone()).await.unwrap();
        if counts[0].1 == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still subscribed: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.quit().await.unwrap();
    subscriber.quit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub_delivers_exact_rooms_and_refuses_wildcards() {
    let (_prefix, mut config) = support::config();
    config.sharded_pubsub = true;
    let (a, b) = (
        Arc::new(support::connect(config.clone()).await),
        Arc::new(support::connect(config.clone()).await),
    );
    let chat = unique_room("chat");
    let rt_a = Realtime::new(a.clone());
    let rt_b = Realtime::new(b.clone());
    let mut sub = rt_b
        .subscribe_stream(SubscribeOptions::room(chat.clone()))
        .await
        .unwrap();
    let mut eph = b.subscribe_ephemeral(&[chat.clone().into()]).await.unwrap();
    for i in 1..=50u64 {
        rt_a.publish(req(&chat, json!({"i": i}))).await.unwrap();
    }
    assert_eq!(
        seqs(&take_events(&mut sub, 50).await),
        (1..=50).collect::<Vec<u64>>()
    );
    rt_a.publish_ephemeral(zps_core::EphemeralRequest::new(chat.clone(), "typing", &json!({})).unwrap())
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, eph.next()).await.unwrap().unwrap();
    assert_eq!(got.event_type, "typing");
    let wildcard = RoomPattern::parse("chat:*").unwrap();
    assert!(matches!(
        b.subscribe(std::slice::from_ref(&wildcard)).await,
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        b.subscribe_ephemeral(&[wildcard]).await,
        Err(Error::Unsupported { .. })
    ));
    rt_a.close().await.unwrap();
    rt_b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_the_last_stream_releases_the_channel() {
    let (_prefix, config) = support::config();
    let t = support::connect(config.clone()).await;
    let admin = support::raw_client().await;
    let chat = unique_room("chat");
    let channel = format!("{}{{{chat}}}", config.channel_prefix);
    let numsub = |admin: Client, channel: String| async move {
        let counts: Vec<(String, i64)> = admin.pubsub_numsub(channel).await.unwrap();
        counts[0].1
    };
    let first = t.subscribe(&[chat.clone().into()]).await.unwrap();
    let second = t.subscribe(&[chat.clone().into()]).await.unwrap();
    assert_eq!(
        numsub(admin.clone(), channel.clone()).await,
        1,
        "one SUBSCRIBE per room"
    );
    drop(first);
    assert_eq!(numsub(admin.clone(), channel.clone()).await, 1);
    drop(second);
    let deadline = tokio::time::Instant::now() + WAIT;
    while numsub(admin.clone(), channel.clone()).await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "channel never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Subscribing again works (no stale UNSUBSCRIBE overtakes it).
    let mut again = t.subscribe(&[chat.clone().into()]).await.unwrap();
    let out = t
        .publish(new_event(&chat, "x", json!(1), Duration::from_secs(60)))
        .await
        .unwrap();
    match next_signal(&mut again).await {
        LiveSignal::Event(e) => assert_eq!(e.sequence, out.envelope.sequence),
        other => panic!("unexpected {other:?}"),
    }
    admin.quit().await.unwrap();
    t.close().await.unwrap();
}

/// `delete_prefix` removes exactly the keys under a prefix, even one holding glob
/// characters, and leaves a neighbour the unescaped pattern would have matched.
#[tokio::test]
async fn delete_prefix_removes_exactly_the_prefix() {
    let base = support::unique_prefix();
    let client = support::raw_client().await;
    let odd = format!("{base}[a]*?:");
    let neighbour = format!("{base}a-other:");
    for i in 0..1200 {
        let _: () = client
            .set(format!("{odd}k{i}"), i, None, None, false)
            .await
            .unwrap();
    }
    let _: () = client
        .set(format!("{neighbour}k"), 1, None, None, false)
        .await
        .unwrap();
    assert_eq!(
        zps_redis::keys_with_prefix(&client, &odd).await.unwrap().len(),
        1200
    );
    assert_eq!(zps_redis::delete_prefix(&client, &odd).await.unwrap(), 1200);
    assert!(
        zps_redis::keys_with_prefix(&client, &odd)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        zps_redis::keys_with_prefix(&client, &base).await.unwrap(),
        vec![format!("{neighbour}k")]
    );
    assert_eq!(zps_redis::delete_prefix(&client, &base).await.unwrap(), 1);
    client.quit().await.unwrap();
}

/// A batch over more events than one script call holds, over several rooms:
/// rooms share calls, a room cut between two calls keeps its order, and every
/// event gets exactly the next sequence of its own room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_many_rooms_shares_script_calls_and_keeps_each_rooms_order() {
    let (_prefix, config) = support::config();
    let t = support::connect(config).await;
    let rooms: Vec<Room> = (0..7).map(|_| unique_room("many")).collect();
    // 100 events per room, rooms round robin: 700 events need three calls, so
    // calls hold several rooms and some rooms are cut between two calls.
    let events = (0..700)
        .map(|i| new_event(&rooms[i % 7], &format!("m{i}"), json!(i), Duration::from_secs(60)))
        .collect();
    let out = t.publish_batch(events).await.unwrap();
    assert_eq!(out.len(), 700);
    for (i, o) in out.iter().enumerate() {
        let e = &o.envelope;
        assert!(!o.duplicate, "{i}");
        assert_eq!(
            (e.room.as_str(), e.id.as_str(), e.sequence),
            (
                rooms[i % 7].as_str(),
                format!("m{i}").as_str(),
                (i / 7 + 1) as u64
            ),
            "event {i}"
        );
    }
    for (r, room) in rooms.iter().enumerate() {
        let page = t
            .replay(&ReplayQuery::new(room.clone(), 0).limit(1_000))
            .await
            .unwrap();
        let stored: Vec<(u64, String)> = page
            .events
            .iter()
            .map(|e| (e.sequence, e.payload.get().to_owned()))
            .collect();
        let want: Vec<(u64, String)> = (0..100)
            .map(|k| (k as u64 + 1, (k * 7 + r).to_string()))
            .collect();
        assert_eq!(stored, want, "room {r}");
    }
    // The same batch again, after the server forgot the script (the first call
    // falls back to EVAL with arguments rebuilt for its several rooms): every
    // id is a duplicate of the stored event.
    let admin = support::raw_client().await;
    let _: () = command(&admin, "SCRIPT", vec!["FLUSH"]).await;
    let again = t
        .publish_batch(
            (0..700)
                .map(|i| {
                    new_event(
                        &rooms[i % 7],
                        &format!("m{i}"),
                        json!(-1),
                        Duration::from_secs(60),
                    )
                })
                .collect(),
        )
        .await
        .unwrap();
    assert!(again.iter().enumerate().all(|(i, o)| o.duplicate
        && o.envelope.sequence == (i / 7 + 1) as u64
        && o.envelope.payload.get() == i.to_string()));
    admin.quit().await.unwrap();
    t.close().await.unwrap();
}
