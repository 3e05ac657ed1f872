//! Middleware on every path that hands stored events out: live delivery,
//! catch-up on subscribe, `replay` pages, `catch_up` streams, dead letters.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use zps_conformance::{seqs, take_events, unique_room};
use zps_core::middleware::{Action, Context, Middleware, Next, from_fn};
use zps_core::*;

fn req(room: &Room, t: &str, payload: Value) -> PublishRequest {
    PublishRequest::new(room.clone(), t, &payload).unwrap()
}

/// Removes `payload.secret` from every delivered event.
fn redact_secret() -> Arc<dyn Middleware> {
    from_fn(|mut ctx: Context, next: Next| async move {
        if ctx.action == Action::Deliver
            && let Some(e) = ctx.envelope.take()
        {
            let mut payload: Value =
                serde_json::from_str(e.payload.get()).map_err(|e| Error::InvalidEvent(e.to_string()))?;
            if let Some(map) = payload.as_object_mut() {
                map.remove("secret");
            }
            let mut redacted = (*e).clone();
            redacted.payload = envelope::to_payload(&payload)?;
            ctx.envelope = Some(Arc::new(redacted));
        }
        next.run(ctx).await
    })
}

/// Withholds events of type `hidden` (clears the envelope) and of type
/// `refused` (returns an error).
fn drop_hidden() -> Arc<dyn Middleware> {
    from_fn(|mut ctx: Context, next: Next| async move {
        if ctx.action == Action::Deliver {
            match ctx.envelope.as_ref().map(|e| e.event_type.as_str()) {
                Some("hidden") => ctx.envelope = None,
                Some("refused") => return Err(Error::Rejected("not for you".into())),
                _ => {}
            }
        }
        next.run(ctx).await
    })
}

fn payloads(events: &[Arc<Envelope>]) -> Vec<Value> {
    events
        .iter()
        .map(|e| serde_json::from_str(e.payload.get()).unwrap())
        .collect()
}

fn texts(n: u64) -> Vec<Value> {
    (1..=n).map(|i| json!({ "text": format!("m{i}") })).collect()
}

#[tokio::test]
async fn redaction_applies_to_live_replay_catch_up_and_drains() {
    let rt = Realtime::memory();
    rt.use_middleware(redact_secret());
    let chat = unique_room("chat");
    let mut live = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).live_only())
        .await
        .unwrap();
    for i in 1..=3 {
        rt.publish(req(
            &chat,
            "msg",
            json!({ "text": format!("m{i}"), "secret": "s3cr3t" }),
        ))
        .await
        .unwrap();
    }
    // Publishing is untouched: the stored event keeps its secret.
    let stored = rt
        .transport()
        .replay(&ReplayQuery::new(chat.clone(), 0))
        .await
        .unwrap();
    assert_eq!(payloads(&stored.events)[0]["secret"], "s3cr3t");

    assert_eq!(
        payloads(&take_events(&mut live, 3).await),
        texts(3),
        "live delivery"
    );

    let page = rt.replay(ReplayQuery::new(chat.clone(), 0)).await.unwrap();
    assert_eq!(payloads(&page.events), texts(3), "replay page");
    assert_eq!((page.scanned_to, page.exhausted), (3, true));

    let mut resumed = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).from_sequence(0))
        .await
        .unwrap();
    assert_eq!(
        payloads(&take_events(&mut resumed, 3).await),
        texts(3),
        "catch-up on subscribe"
    );

    let drained: Vec<Arc<Envelope>> = rt
        .catch_up(CatchUpOptions::new(chat.clone()).from_sequence(0))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(payloads(&drained), texts(3), "catch_up stream");
    rt.close().await.unwrap();
}

#[tokio::test]
async fn withheld_events_leave_no_gap_in_subscriptions_or_pages() {
    let rt = Realtime::memory();
    rt.use_middleware(drop_hidden());
    let chat = unique_room("chat");
    // 1 hidden, 2 shown, 3 refused, 4 hidden, 5 shown, 6 hidden
    let types = ["hidden", "shown", "refused", "hidden", "shown", "hidden"];
    for t in types {
        rt.publish(req(&chat, t, json!({}))).await.unwrap();
    }
    let mut sub = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).from_sequence(0))
        .await
        .unwrap();
    assert_eq!(sub.starts()[0].recovered, Some(true));
    // History, then live (7 hidden, 8 shown): exactly the shown events, in
    // order; `take_events` fails on any discontinuity.
    assert_eq!(seqs(&take_events(&mut sub, 2).await), vec![2, 5]);
    rt.publish(req(&chat, "hidden", json!({}))).await.unwrap();
    rt.publish(req(&chat, "shown", json!({}))).await.unwrap();
    assert_eq!(seqs(&take_events(&mut sub, 1).await), vec![8]);

    // Pages leave withheld events out but still report how far they scanned.
    let page = rt
        .replay(ReplayQuery::new(chat.clone(), 0).limit(1))
        .await
        .unwrap();
    assert!(page.events.is_empty());
    assert_eq!((page.scanned_to, page.exhausted), (1, false));
    let page = rt
        .replay(ReplayQuery::new(chat.clone(), 0).limit(4))
        .await
        .unwrap();
    assert_eq!(seqs(&page.events), vec![2]);
    assert_eq!((page.scanned_to, page.exhausted), (4, false));
    let page = rt.replay(ReplayQuery::new(chat.clone(), 4)).await.unwrap();
    assert_eq!(seqs(&page.events), vec![5, 8]);
    assert_eq!((page.scanned_to, page.exhausted), (8, true));

    // A paged drain reaches the end through pages with nothing to hand out.
    let mut opts = CatchUpOptions::new(chat.clone()).from_sequence(0);
    opts.batch_size = 1;
    let drained: Vec<Arc<Envelope>> = rt.catch_up(opts).try_collect().await.unwrap();
    assert_eq!(seqs(&drained), vec![2, 5, 8]);
    rt.close().await.unwrap();
}

#[tokio::test]
async fn dead_letter_reads_run_the_dlq_replay_action() {
    let rt = Realtime::memory();
    let chat = unique_room("chat");
    let event = rt.publish(req(&chat, "t", json!({}))).await.unwrap();
    let dlq = rt.dlq(chat.clone());
    for i in 0..3 {
        dlq.write(NewDlqEntry {
            event: (*event).clone(),
            error: format!("boom {i}"),
            attempts: 1,
            subscriber_id: None,
            failed_at: Timestamp::now(),
        })
        .await
        .unwrap();
    }
    // Observes every dlqReplay read: where it started and how much it read.
    let reads = Arc::new(Mutex::new(Vec::new()));
    let seen = reads.clone();
    rt.use_middleware(from_fn(move |ctx: Context, next: Next| {
        let seen = seen.clone();
        async move {
            let action = ctx.action;
            let ctx = next.run(ctx).await?;
            if action == Action::DlqReplay {
                seen.lock().push((ctx.sequence, ctx.count));
            }
            Ok(ctx)
        }
    }));
    assert_eq!(dlq.list(10).await.unwrap().len(), 3);
    assert_eq!(dlq.list_after(1, 10).await.unwrap().len(), 2);
    let all: Vec<DlqEntry> = dlq.replay(2).try_collect().await.unwrap();
    assert_eq!(all.iter().map(|e| e.entry_id).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(
        *reads.lock(),
        vec![
            (Some(0), Some(3)),
            (Some(1), Some(2)),
            (Some(0), Some(2)),
            (Some(2), Some(1)),
        ],
        "list, list_after, then every page of replay"
    );

    // A policy that forbids dead-letter reads refuses all of them.
    rt.use_middleware(from_fn(|ctx: Context, next: Next| async move {
        if ctx.action == Action::DlqReplay {
            return Err(Error::Rejected("dead letters are off limits".into()));
        }
        next.run(ctx).await
    }));
    assert!(matches!(dlq.list(10).await, Err(Error::Rejected(_))));
    assert!(matches!(dlq.list_after(1, 10).await, Err(Error::Rejected(_))));
    let mut stream = dlq.replay(2);
    assert!(matches!(stream.next().await, Some(Err(Error::Rejected(_)))));
    assert!(stream.next().await.is_none());
    // Counting and removing are not reads of the events.
    assert_eq!(dlq.len().await.unwrap(), 3);
    rt.close().await.unwrap();
}
