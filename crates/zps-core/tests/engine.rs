//! Engine behaviour that does not depend on the provider: middleware, flow
//! control, lag recovery, gap repair over an out-of-order live path, bounds.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use serde_json::json;
use zps_conformance::fault::FaultyTransport;
use zps_conformance::{next_event, seqs, take_events, unique_room};
use zps_core::middleware::{Action, Context, Next, PayloadSizeMiddleware, TenantMiddleware, from_fn};
use zps_core::*;

fn req(room: &Room, t: &str) -> PublishRequest {
    PublishRequest::new(room.clone(), t, &json!({})).unwrap()
}

async fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never became true"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn middleware_runs_as_an_onion() {
    let rt = Realtime::memory();
    let log = Arc::new(Mutex::new(Vec::new()));
    for name in ["m1", "m2"] {
        let log = log.clone();
        rt.use_middleware(from_fn(move |ctx: Context, next: Next| {
            let log = log.clone();
            async move {
                if ctx.action == Action::Publish {
                    log.lock().push(format!("{name} before"));
                }
                let out = next.run(ctx).await;
                if let Ok(ctx) = &out
                    && ctx.action == Action::Publish
                {
                    let seq = ctx.envelope.as_ref().unwrap().sequence;
                    log.lock().push(format!("{name} after seq={seq}"));
                }
                out
            }
        }));
    }
    rt.publish(req(&unique_room("chat"), "t")).await.unwrap();
    assert_eq!(
        *log.lock(),
        vec!["m1 before", "m2 before", "m2 after seq=1", "m1 after seq=1"]
    );
}

#[tokio::test]
async fn middleware_can_edit_block_and_filter() {
    let rt = Realtime::memory();
    let chat = unique_room("chat");
    rt.use_middleware(from_fn(|mut ctx: Context, next: Next| async move {
        match ctx.action {
            Action::Publish => {
                let event = ctx.event.as_mut().unwrap();
                if event.event_type == "forbidden" {
                    return Err(Error::Rejected("forbidden type".into()));
                }
                event
                    .metadata
                    .get_or_insert_with(Default::default)
                    .insert("traceId".into(), json!("t-1"));
            }
            Action::Deliver if ctx.envelope.as_ref().unwrap().event_type == "hidden" => {
                return Err(Error::Rejected("not for subscribers".into()));
            }
            _ => {}
        }
        next.run(ctx).await
    }));
    let mut sub = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()))
        .await
        .unwrap();
    let e = rt.publish(req(&chat, "ok")).await.unwrap();
    assert_eq!(e.metadata.as_ref().unwrap()["traceId"], "t-1");
    let blocked = rt.publish(req(&chat, "forbidden")).await;
    assert!(matches!(blocked, Err(Error::Rejected(_))));
    rt.publish(req(&chat, "hidden")).await.unwrap();
    rt.publish(req(&chat, "ok")).await.unwrap();
    assert_eq!(
        seqs(&take_events(&mut sub, 2).await),
        vec![1, 3],
        "hidden event 2 is filtered"
    );
    let stored = rt
        .transport()
        .replay(&ReplayQuery::new(chat.clone(), 0))
        .await
        .unwrap();
    assert_eq!(
        seqs(&stored.events),
        vec![1, 2, 3],
        "the refused publish stored nothing"
    );
    assert_eq!(stored.events[0].metadata.as_ref().unwrap()["traceId"], "t-1");
    let page = rt.replay(ReplayQuery::new(chat.clone(), 0)).await.unwrap();
    assert_eq!(
        (seqs(&page.events), page.scanned_to),
        (vec![1, 3], 3),
        "history hides event 2 as live delivery did"
    );
}

#[tokio::test]
async fn ready_made_middleware() {
    let rt = Realtime::builder(Arc::new(MemoryTransport::default()))
        .middleware(Arc::new(middleware::LoggerMiddleware))
        .middleware(Arc::new(middleware::MetricsMiddleware))
        .middleware(Arc::new(PayloadSizeMiddleware { max_bytes: 32 }))
        .middleware(Arc::new(TenantMiddleware))
        .build();
    let chat = unique_room("chat");
    let big = PublishRequest::new(chat.clone(), "t", &json!({"x": "y".repeat(64)}))
        .unwrap()
        .with_metadata("tenantId", json!("t1"));
    match rt.publish(big).await {
        Err(Error::PayloadTooLarge { size, limit: 32 }) => assert!(size > 64),
        other => panic!("{other:?}"),
    }
    let no_tenant = rt.publish(req(&chat, "t")).await;
    assert!(matches!(no_tenant, Err(ref e @ Error::Rejected(_)) if e.to_string().contains("tenantId")));
    let ok = rt
        .publish(req(&chat, "t").with_metadata("tenantId", json!("t1")))
        .await
        .unwrap();
    assert_eq!(ok.sequence, 1);
    assert_eq!(rt.metrics().errors, 2);
}

#[tokio::test]
async fn every_action_passes_through_middleware() {
    let rt = Realtime::builder(Arc::new(MemoryTransport::default()))
        .presence_ttl(Duration::from_secs(5))
        .build();
    let seen = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let s = seen.clone();
    rt.use_middleware(from_fn(move |ctx: Context, next: Next| {
        s.lock().insert(ctx.action.as_str());
        next.run(ctx)
    }));
    let chat = unique_room("chat");
    let mut sub = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()))
        .await
        .unwrap();
    let mut eph = rt
        .subscribe_ephemeral(&[chat.clone().into()], None)
        .await
        .unwrap();
    let e = rt.publish(req(&chat, "t")).await.unwrap();
    next_event(&mut sub).await;
    rt.replay(ReplayQuery::new(chat.clone(), 0)).await.unwrap();
    let _: Vec<_> = rt
        .catch_up(CatchUpOptions::new(chat.clone()))
        .try_collect()
        .await
        .unwrap();
    rt.ack(&chat, 1, "s").await.unwrap();
    rt.snapshot(&chat, 1, &json!({})).await.unwrap();
    rt.get_snapshot(&chat).await.unwrap();
    rt.publish_ephemeral(EphemeralRequest::new(chat.clone(), "typing", &json!({})).unwrap())
        .await
        .unwrap();
    eph.next().await.unwrap();
    rt.presence(chat.clone()).enter("u", None, "c").await.unwrap();
    rt.presence(chat.clone()).leave("u", "c").await.unwrap();
    let dlq = rt.dlq(chat.clone());
    dlq.write(NewDlqEntry {
        event: (*e).clone(),
        error: "x".into(),
        attempts: 1,
        subscriber_id: None,
        failed_at: Timestamp::now(),
    })
    .await
    .unwrap();
    let _: Vec<_> = dlq.replay(10).try_collect().await.unwrap();
    assert_eq!(rt.dlq_rooms("", None, 10).await.unwrap().len(), 1);
    assert_eq!(dlq.remove(&[1]).await.unwrap(), 1);
    rt.prune_expired().await.unwrap();
    rt.check(zps_core::middleware::Context::new(Action::RoomInfo).with_room(chat.clone()))
        .await
        .unwrap();
    rt.close().await.unwrap();
    let expected = [
        "ack",
        "catchUp",
        "close",
        "deliver",
        "dlqRemove",
        "dlqReplay",
        "dlqRooms",
        "dlqWrite",
        "ephemeralDeliver",
        "ephemeralPublish",
        "getSnapshot",
        "presenceEnter",
        "presenceLeave",
        "prune",
        "publish",
        "replay",
        "roomInfo",
        "snapshot",
        "subscribe",
    ];
    assert_eq!(seen.lock().iter().copied().collect::<Vec<_>>(), expected);
}

/// A handler that blocks until the gate opens, recording what it handled.
fn gated_handler(
    gate: Arc<tokio::sync::Semaphore>,
    handled: Arc<Mutex<Vec<u64>>>,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
) -> impl Fn(Arc<Envelope>) -> futures::future::BoxFuture<'static, Result<(), HandlerError>> + Send + Sync + 'static
{
    move |e| {
        let (gate, handled, running, peak) = (gate.clone(), handled.clone(), running.clone(), peak.clone());
        Box::pin(async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let _permit = gate.acquire().await.map_err(|e| HandlerError(e.to_string()))?;
            running.fetch_sub(1, Ordering::SeqCst);
            handled.lock().push(e.sequence);
            Ok(())
        })
    }
}

async fn run_flow(strategy: FlowStrategy, max_in_flight: usize) -> (Vec<u64>, MetricsSnapshot, usize) {
    let rt = Realtime::memory();
    let chat = unique_room("chat");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let handle = rt
        .subscribe(
            SubscribeOptions::room(chat.clone())
                .live_only()
                .flow_control(FlowControl {
                    max_in_flight,
                    strategy,
                    max_buffer_size: 5,
                }),
            gated_handler(gate.clone(), handled.clone(), running.clone(), peak.clone()),
        )
        .await
        .unwrap();
    for _ in 0..10 {
        rt.publish(req(&chat, "t")).await.unwrap();
    }
    // Let the dispatcher see every event before the handlers may finish.
    let expect_dropped = match strategy {
        FlowStrategy::Pause => 0,
        FlowStrategy::Drop => 10 - max_in_flight as u64,
        FlowStrategy::Buffer => 10 - max_in_flight as u64 - 5,
    };
    wait_until(|| {
        rt.metrics().flow_control_dropped == expect_dropped && running.load(Ordering::SeqCst) == max_in_flight
    })
    .await;
    gate.add_permits(1_000);
    let expect_handled = 10 - expect_dropped as usize;
    wait_until(|| handled.lock().len() == expect_handled).await;
    handle.unsubscribe().await;
    let out = handled.lock().clone();
    (out, rt.metrics(), peak.load(Ordering::SeqCst))
}

#[tokio::test]
async fn flow_control_pause_loses_nothing_and_keeps_order() {
    let (handled, m, peak) = run_flow(FlowStrategy::Pause, 1).await;
    assert_eq!(handled, (1..=10).collect::<Vec<u64>>());
    assert_eq!(m.flow_control_dropped, 0);
    assert_eq!(peak, 1);
}

#[tokio::test]
async fn flow_control_drop_drops_while_saturated() {
    let (handled, m, _) = run_flow(FlowStrategy::Drop, 1).await;
    assert_eq!(handled, vec![1]);
    assert_eq!(m.flow_control_dropped, 9);
}

#[tokio::test]
async fn flow_control_buffer_queues_up_to_its_bound() {
    let (handled, m, _) = run_flow(FlowStrategy::Buffer, 1).await;
    assert_eq!(handled, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(m.flow_control_dropped, 4);
}

#[tokio::test]
async fn max_in_flight_runs_handlers_concurrently() {
    let (mut handled, m, peak) = run_flow(FlowStrategy::Pause, 4).await;
    handled.sort_unstable();
    assert_eq!(handled, (1..=10).collect::<Vec<u64>>());
    assert_eq!(peak, 4);
    assert_eq!(m.flow_control_dropped, 0);
}

#[tokio::test]
async fn a_reader_that_lags_recovers_from_history() {
    let transport = MemoryTransport::new(MemoryConfig {
        channel_capacity: 4,
        ..MemoryConfig::default()
    });
    let rt = Realtime::new(Arc::new(transport));
    let chat = unique_room("chat");
    let mut sub = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).live_only())
        .await
        .unwrap();
    for _ in 0..300 {
        rt.publish(req(&chat, "t")).await.unwrap();
    }
    assert_eq!(
        seqs(&take_events(&mut sub, 300).await),
        (1..=300).collect::<Vec<u64>>()
    );
    assert!(rt.metrics().replayed > 0, "the lagged part came from history");
}

/// A live path that reorders pairs and loses every 7th event, like a hybrid
/// deployment whose fanout raced or dropped messages.
fn unreliable(window: Duration) -> Arc<dyn Transport> {
    // Room for the whole burst: lag recovery must not hide the gap-repair path.
    let memory = MemoryTransport::new(MemoryConfig {
        channel_capacity: 4096,
        ..MemoryConfig::default()
    });
    let faulty = FaultyTransport::new(Arc::new(memory))
        .reorder_window(window)
        .rewrite_live(|| {
            let mut held: Option<LiveSignal> = None;
            Box::new(move |signal| {
                let LiveSignal::Event(e) = &signal else {
                    return vec![signal];
                };
                if e.sequence.is_multiple_of(7) {
                    return vec![];
                }
                if e.sequence % 2 == 1 && held.is_none() {
                    held = Some(signal);
                    return vec![];
                }
                let mut out = vec![signal];
                out.extend(held.take());
                out
            })
        });
    Arc::new(faulty)
}

async fn unreliable_delivery(window: Duration) {
    let rt = Realtime::new(unreliable(window));
    let chat = unique_room("chat");
    let mut sub = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).live_only())
        .await
        .unwrap();
    let publisher = {
        let (rt, chat) = (rt.clone(), chat.clone());
        tokio::spawn(async move {
            for _ in 0..500 {
                rt.publish(req(&chat, "t")).await.unwrap();
            }
        })
    };
    let got = take_events(&mut sub, 500).await;
    publisher.await.unwrap();
    assert_eq!(seqs(&got), (1..=500).collect::<Vec<u64>>());
    let m = rt.metrics();
    assert!(m.gaps_detected > 0 && m.gaps_filled > 0, "{m:?}");
    assert!(m.replayed >= 500 / 7, "lost events came from history: {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_lost_live_events_are_repaired_immediately() {
    unreliable_delivery(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_lost_live_events_are_repaired_after_the_window() {
    unreliable_delivery(Duration::from_millis(20)).await;
}

#[tokio::test]
async fn bounded_history_trims_and_reports_expired_positions() {
    let rt = Realtime::new(Arc::new(MemoryTransport::new(MemoryConfig {
        max_events_per_room: 100,
        ..MemoryConfig::default()
    })));
    let chat = unique_room("chat");
    for _ in 0..250 {
        rt.publish(req(&chat, "t")).await.unwrap();
    }
    let page = rt
        .replay(ReplayQuery::new(chat.clone(), 0).limit(1000))
        .await
        .unwrap();
    assert_eq!(seqs(&page.events), (151..=250).collect::<Vec<u64>>());
    let info = rt.room_info(&chat).await.unwrap();
    assert_eq!((info.earliest_sequence, info.last_sequence), (151, 250));
    let mut sub = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).from_sequence(10))
        .await
        .unwrap();
    assert!(matches!(
        sub.next().await,
        Some(SubscriptionItem::Discontinuity(Discontinuity {
            reason: DiscontinuityReason::PositionExpired,
            earliest_sequence: 151,
            ..
        }))
    ));
    assert_eq!(next_event(&mut sub).await.sequence, 151);
}

#[tokio::test]
async fn close_ends_subscriptions_and_refuses_work() {
    let rt = Realtime::memory();
    let chat = unique_room("chat");
    let mut sub = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()))
        .await
        .unwrap();
    rt.close().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(rt.publish(req(&chat, "t")).await, Err(Error::Closed)));
    assert!(rt.is_closed());
    assert_eq!(rt.health().await.status, HealthStatus::Unhealthy);
    rt.close().await.unwrap();
}

#[tokio::test]
async fn publish_many_and_listener_counts() {
    let rt = Realtime::memory();
    let rooms = [unique_room("chat"), unique_room("chat"), unique_room("chat")];
    let out = rt
        .publish_many(&rooms, req(&rooms[0], "broadcast").with_id("b-1"))
        .await
        .unwrap();
    assert_eq!(
        out.iter()
            .map(|e| (e.room.clone(), e.sequence))
            .collect::<Vec<_>>(),
        rooms.iter().map(|r| (r.clone(), 1)).collect::<Vec<_>>()
    );
    let again = rt
        .publish_many(&rooms, req(&rooms[0], "broadcast").with_id("b-1"))
        .await
        .unwrap();
    assert!(
        again.iter().all(|e| e.sequence == 1),
        "per-room idempotency holds for broadcasts"
    );
    let guard = rt.track_listener(rooms[0].clone().into());
    assert_eq!(rt.subscriber_count(&rooms[0]), 1);
    assert_eq!(rt.active_rooms(), vec![RoomPattern::from(rooms[0].clone())]);
    assert_eq!(rt.metrics().active_rooms, 1);
    drop(guard);
    assert!(!rt.has_subscribers(&rooms[0]));
    assert_eq!(rt.metrics().active_listeners, 0);
}

#[tokio::test(start_paused = true)]
async fn presence_times_out_silent_connections() {
    let rt = Realtime::builder(Arc::new(MemoryTransport::default()))
        .presence_ttl(Duration::from_secs(10))
        .build();
    let chat = unique_room("chat");
    let presence = rt.presence(chat.clone());
    let mut changes = presence.changes().await.unwrap();
    presence.enter("alive", None, "c1").await.unwrap();
    presence.enter("silent", None, "c2").await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        presence.enter("alive", None, "c1").await.unwrap();
    }
    let members = presence.members().await.unwrap();
    assert_eq!(
        members.iter().map(|m| m.user_id.as_str()).collect::<Vec<_>>(),
        vec!["alive"]
    );
    let mut left = None;
    for _ in 0..3 {
        if let Some(PresenceChange::Left { user_id }) = changes.next().await {
            left = Some(user_id);
        }
    }
    assert_eq!(left.as_deref(), Some("silent"));
}

#[tokio::test]
async fn without_history_a_lost_event_is_reported_not_waited_for() {
    // Loses sequence 3 on the live path of a provider that keeps no history.
    let faulty = FaultyTransport::new(Arc::new(MemoryTransport::default()))
        .history(false)
        .rewrite_live(|| {
            Box::new(|signal| match &signal {
                LiveSignal::Event(e) if e.sequence == 3 => vec![],
                _ => vec![signal],
            })
        });
    let rt = Realtime::new(Arc::new(faulty));
    let chat = unique_room("chat");
    rt.publish(req(&chat, "t")).await.unwrap();
    // A resume cannot be served without history: it is reported, and the
    // subscription goes live instead of retrying forever.
    let mut sub = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).from_sequence(0))
        .await
        .unwrap();
    assert_eq!(sub.starts()[0].recovered, Some(false));
    assert!(matches!(
        sub.next().await,
        Some(SubscriptionItem::Discontinuity(_))
    ));
    for _ in 0..4 {
        rt.publish(req(&chat, "t")).await.unwrap();
    }
    assert_eq!(next_event(&mut sub).await.sequence, 2);
    match tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
    {
        Some(SubscriptionItem::Discontinuity(d)) => {
            assert_eq!(d.reason, DiscontinuityReason::PositionExpired);
            assert_eq!((d.requested_from, d.earliest_sequence), (2, 4));
        }
        other => panic!("expected a discontinuity, got {other:?}"),
    }
    assert_eq!(seqs(&take_events(&mut sub, 2).await), vec![4, 5]);
}
