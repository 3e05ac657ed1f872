//! The room tracker on its own: holes, throttled repair, overflow, blocked
//! consumers, stale pages, positions and discontinuities.

use super::*;
use zps_model::Room;

fn env(seq: u64) -> Arc<Envelope> {
    let now = zps_model::Timestamp::now();
    Arc::new(Envelope {
        id: format!("e{seq}"),
        event_type: if seq.is_multiple_of(2) { "even" } else { "odd" }.into(),
        room: Room::parse("chat:1").unwrap(),
        sequence: seq,
        emitted_at: now,
        expires_at: now,
        payload: zps_model::envelope::null_payload(),
        metadata: None,
        encrypted: false,
    })
}

fn tune() -> Tuning {
    Tuning {
        throttle: Duration::from_millis(100),
        page_size: 50,
        request_timeout: Duration::from_secs(5),
        max_buffer: 4,
    }
}

fn track(cap: usize, start: StartAt) -> (RoomTrack, mpsc::Receiver<ClientEvent>) {
    let (tx, rx) = mpsc::channel(cap);
    let sink = Sink {
        id: 1,
        tx,
        types: None,
    };
    let mut t = RoomTrack::exact(Arc::from("chat:1"), sink, &start, &tune(), Instant::now());
    t.confirmed = true;
    (t, rx)
}

fn seqs(rx: &mut mpsc::Receiver<ClientEvent>) -> Vec<u64> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        match ev {
            ClientEvent::Event(e) => out.push(e.sequence),
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

fn page(req: &ReplayRequest, events: Vec<u64>, scanned_to: u64, has_more: bool) -> Replay {
    Replay {
        room: "chat:1".into(),
        events: events.into_iter().map(|s| (*env(s)).clone()).collect(),
        has_more,
        scanned_to,
        request_id: req.request_id.clone(),
    }
}

fn after(n: u64) -> StartAt {
    StartAt::After {
        sequence: n,
        epoch: None,
    }
}

#[test]
fn gap_waits_the_throttle_then_asks_for_exactly_the_hole() {
    let (mut t, mut rx) = track(100, after(0));
    let now = Instant::now();
    t.on_event(env(1), now);
    t.on_event(env(4), now);
    assert_eq!(seqs(&mut rx), vec![1]);
    assert!(
        t.poll_replay(now, &tune(), || "r1".into()).is_none(),
        "reorder window"
    );
    assert_eq!(t.deadline(), Some(now + tune().throttle));
    let later = now + tune().throttle;
    let req = t.poll_replay(later, &tune(), || "r1".into()).unwrap();
    assert_eq!((req.from_sequence, req.to_sequence), (1, Some(3)));
    // The late frame fills part of it; the page fills the rest without duplicates.
    t.on_event(env(2), later);
    assert!(t.on_replay(page(&req, vec![2, 3], 3, false), later));
    assert_eq!(seqs(&mut rx), vec![2, 3, 4]);
    assert!(!t.wants_timer());
}

#[test]
fn a_hole_that_filled_itself_sends_no_request() {
    let (mut t, mut rx) = track(100, after(0));
    let now = Instant::now();
    t.on_event(env(2), now);
    t.on_event(env(1), now);
    assert_eq!(seqs(&mut rx), vec![1, 2]);
    assert!(
        t.poll_replay(now + Duration::from_secs(1), &tune(), || "r".into())
            .is_none()
    );
}

#[test]
fn expired_holes_are_settled_by_scanned_to() {
    let (mut t, mut rx) = track(100, after(0));
    let now = Instant::now();
    t.on_event(env(1), now);
    t.on_event(env(5), now);
    let req = t
        .poll_replay(now + tune().throttle, &tune(), || "r".into())
        .unwrap();
    // 2 and 4 expired: the page holds only 3 but everything up to 4 is final.
    assert!(t.on_replay(page(&req, vec![3], 4, false), now));
    assert_eq!(seqs(&mut rx), vec![1, 3, 5]);
}

#[test]
fn overflow_falls_back_to_paging_from_the_last_delivered() {
    let (mut t, mut rx) = track(100, after(0));
    let now = Instant::now();
    t.on_event(env(1), now);
    for s in 3..=10 {
        t.on_event(env(s), now);
    }
    assert_eq!(seqs(&mut rx), vec![1]);
    let req = t.poll_replay(now, &tune(), || "r".into()).unwrap();
    assert_eq!((req.from_sequence, req.to_sequence), (1, None));
    assert!(t.on_replay(page(&req, (2..=6).collect(), 6, true), now));
    // A full page: the next one goes out at once, without waiting the throttle.
    let req2 = t.poll_replay(now, &tune(), || "r2".into()).unwrap();
    assert_eq!(req2.from_sequence, 6);
    assert!(t.on_replay(page(&req2, (7..=10).collect(), 10, false), now));
    assert_eq!(seqs(&mut rx), (2..=10).collect::<Vec<_>>());
    assert!(!t.wants_timer());
}

#[test]
fn a_full_consumer_blocks_without_losing_and_resumes_by_replay() {
    let (mut t, mut rx) = track(2, after(0));
    let now = Instant::now();
    for s in 1..=12 {
        t.on_event(env(s), now);
    }
    assert!(t.blocked);
    assert!(
        t.poll_replay(now + Duration::from_secs(1), &tune(), || "r".into())
            .is_none()
    );
    let mut got = Vec::new();
    let mut clock = now;
    for _ in 0..100 {
        if got.len() == 12 {
            break;
        }
        clock += Duration::from_millis(200);
        got.extend(seqs(&mut rx));
        t.drain(clock);
        if let Some(req) = t.poll_replay(clock, &tune(), || "r".into()) {
            let from = req.from_sequence;
            t.on_replay(page(&req, (from + 1..=12).collect(), 12, false), clock);
        }
    }
    assert_eq!(got, (1..=12).collect::<Vec<_>>());
}

#[test]
fn stale_and_foreign_replay_pages_are_ignored() {
    let (mut t, mut rx) = track(100, after(0));
    let now = Instant::now();
    t.on_event(env(3), now);
    let req = t
        .poll_replay(now + tune().throttle, &tune(), || "mine".into())
        .unwrap();
    let mut foreign = page(&req, vec![1, 2], 2, false);
    foreign.request_id = Some("other".into());
    assert!(!t.on_replay(foreign, now));
    assert_eq!(seqs(&mut rx), Vec::<u64>::new());
    // A timeout re-asks.
    let again = t.poll_replay(now + Duration::from_secs(6), &tune(), || "again".into());
    assert_eq!(again.unwrap().request_id.as_deref(), Some("again"));
}

#[test]
fn subscribed_positions_and_discontinuities() {
    // Live-only answer: lastSequence is the starting point.
    let (mut t, mut rx) = track(100, StartAt::Default);
    let now = Instant::now();
    t.confirmed = false;
    assert_eq!(t.resume_position(), None);
    t.on_subscribed(
        &Subscribed {
            room: "chat:1".into(),
            epoch: Some("e1".into()),
            last_sequence: Some(7),
            ..Default::default()
        },
        now,
    );
    assert_eq!(t.resume_position(), Some((7, Some("e1"))));
    t.on_event(env(8), now);
    assert_eq!(seqs(&mut rx), vec![8]);
    // A resume refused with stream_reset: surfaced, then the new epoch from its start.
    t.on_disconnect();
    t.sent_position = Some(8);
    t.on_subscribed(
        &Subscribed {
            room: "chat:1".into(),
            epoch: Some("e2".into()),
            last_sequence: Some(2),
            recovered: Some(false),
            reason: Some("stream_reset".into()),
            earliest_sequence: Some(1),
            ..Default::default()
        },
        now,
    );
    match rx.try_recv().unwrap() {
        ClientEvent::Discontinuity {
            reason,
            epoch,
            earliest_sequence,
            last_delivered,
            ..
        } => {
            assert_eq!(reason, DiscontinuityReason::StreamReset);
            assert_eq!(epoch.as_deref(), Some("e2"));
            assert_eq!((earliest_sequence, last_delivered), (1, 8));
        }
        other => panic!("{other:?}"),
    }
    t.on_event(env(1), now);
    t.on_event(env(2), now);
    assert_eq!(seqs(&mut rx), vec![1, 2]);
    // Mid-stream: history trimmed past us.
    t.on_discontinuity(
        &DiscontinuityNotice {
            room: "chat:1".into(),
            reason: "position_expired".into(),
            epoch: "e2".into(),
            earliest_sequence: 50,
        },
        now,
    );
    assert!(matches!(
        rx.try_recv().unwrap(),
        ClientEvent::Discontinuity {
            reason: DiscontinuityReason::PositionExpired,
            earliest_sequence: 50,
            ..
        }
    ));
    t.on_event(env(50), now);
    assert_eq!(seqs(&mut rx), vec![50]);
}

#[test]
fn cursor_resume_anchors_on_the_first_event() {
    let (mut t, mut rx) = track(100, StartAt::Default);
    let now = Instant::now();
    t.on_subscribed(
        &Subscribed {
            room: "chat:1".into(),
            epoch: Some("e".into()),
            last_sequence: Some(9),
            recovered: Some(true),
            ..Default::default()
        },
        now,
    );
    assert_eq!(t.resume_position(), None);
    t.on_event(env(4), now);
    t.on_event(env(5), now);
    assert_eq!(seqs(&mut rx), vec![4, 5]);
    assert_eq!(t.resume_position(), Some((5, Some("e"))));
}

#[test]
fn wildcard_rooms_detect_a_reset_after_reconnect() {
    let (tx, mut rx) = mpsc::channel(100);
    let sink = Sink {
        id: 1,
        tx,
        types: None,
    };
    let now = Instant::now();
    let mut t = RoomTrack::wildcard(Arc::from("chat:1"), sink, &tune(), now);
    t.on_event(env(10), now);
    t.on_event(env(11), now);
    assert_eq!(seqs(&mut rx), vec![10, 11]);
    t.on_disconnect();
    t.on_event(env(2), now);
    assert!(matches!(
        rx.try_recv().unwrap(),
        ClientEvent::Discontinuity { .. }
    ));
    let req = t
        .poll_replay(now + tune().throttle, &tune(), || "r".into())
        .unwrap();
    assert_eq!((req.from_sequence, req.to_sequence), (0, Some(1)));
    t.on_replay(page(&req, vec![1], 1, false), now);
    assert_eq!(seqs(&mut rx), vec![1, 2]);
}

#[test]
fn type_filter_skips_delivery_but_not_position() {
    let (tx, mut rx) = mpsc::channel(100);
    let sink = Sink {
        id: 1,
        tx,
        types: Some(Arc::from(vec!["even".to_owned()])),
    };
    let now = Instant::now();
    let mut t = RoomTrack::exact(Arc::from("chat:1"), sink, &after(0), &tune(), now);
    t.confirmed = true;
    for s in 1..=5 {
        t.on_event(env(s), now);
    }
    assert_eq!(seqs(&mut rx), vec![2, 4]);
    assert_eq!(t.position().sequence, 5);
    assert!(!t.wants_timer(), "filtered events are not gaps");
}

/// The ordering rule's shared state table (`crates/zps-model/room_sync_table.json`),
/// which the JS client runs too: same inputs, same hand-over, same requests.
#[test]
fn follows_the_shared_state_table() {
    use serde_json::Value;
    let table: Value = serde_json::from_str(include_str!("../../../zps-model/room_sync_table.json")).unwrap();
    let t = &table["tuning"];
    let ms = |v: &Value| Duration::from_millis(v.as_u64().unwrap());
    let tune = Tuning {
        throttle: ms(&t["throttleMs"]),
        page_size: t["pageSize"].as_u64().unwrap() as usize,
        request_timeout: ms(&t["timeoutMs"]),
        max_buffer: t["maxBuffer"].as_u64().unwrap() as usize,
    };
    let cases = table["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let t0 = Instant::now();
        let (tx, mut rx) = mpsc::channel(1000);
        let sink = Sink {
            id: 1,
            tx,
            types: None,
        };
        let mut room = RoomTrack::exact(Arc::from("chat:1"), sink, &after(0), &tune, t0);
        room.confirmed = true;
        let mut last_request: Option<ReplayRequest> = None;
        let mut n = 0;
        let mut now = t0;
        for step in case["steps"].as_array().unwrap() {
            if let Some(at) = step.get("at") {
                now = t0 + ms(at);
            }
            if let Some(seq) = step.get("live") {
                room.on_event(env(seq.as_u64().unwrap()), now);
            } else if let Some(want) = step.get("poll") {
                let got = room.poll_replay(now, &tune, || {
                    n += 1;
                    format!("r{n}")
                });
                let got_json = got
                    .as_ref()
                    .map(|r| serde_json::json!({"from": r.from_sequence, "to": r.to_sequence}));
                assert_eq!(got_json.unwrap_or(Value::Null), *want, "{name}: poll at {step}");
                if got.is_some() {
                    last_request = got;
                }
            } else if let Some(p) = step.get("page") {
                let req = last_request.as_ref().expect("a request to answer");
                let events = p["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect();
                let page = page(
                    req,
                    events,
                    p["scannedTo"].as_u64().unwrap(),
                    p["hasMore"].as_bool().unwrap(),
                );
                assert!(room.on_replay(page, now), "{name}: the page answers the request");
            } else if step.get("error").is_some() {
                let id = last_request.as_ref().and_then(|r| r.request_id.clone()).unwrap();
                assert!(room.on_replay_error(&id, now), "{name}");
            } else if let Some(d) = step.get("discontinuity") {
                let notice = DiscontinuityNotice {
                    room: "chat:1".into(),
                    reason: d["reason"].as_str().unwrap().into(),
                    epoch: d["epoch"].as_str().unwrap().into(),
                    earliest_sequence: d["earliest"].as_u64().unwrap(),
                };
                room.on_discontinuity(&notice, now);
            } else if let Some(want) = step.get("delivered") {
                let mut got = Vec::new();
                while let Ok(item) = rx.try_recv() {
                    got.push(match item {
                        ClientEvent::Event(e) => serde_json::json!(e.sequence),
                        ClientEvent::Discontinuity {
                            reason,
                            earliest_sequence,
                            last_delivered,
                            ..
                        } => serde_json::json!({"notice": [reason.as_str(), last_delivered, earliest_sequence]}),
                        other => panic!("{name}: unexpected {other:?}"),
                    });
                }
                assert_eq!(Value::Array(got), *want, "{name}: delivered");
            } else if let Some(want) = step.get("position") {
                assert_eq!(
                    room.position().sequence,
                    want.as_u64().unwrap(),
                    "{name}: position"
                );
            } else if step.get("at").is_none() {
                panic!("{name}: unknown step {step}");
            }
        }
    }
}
