//! Engine middleware seen through the gateway: a `deliver` rule that redacts
//! and withholds events applies to catch-up on subscribe, live delivery and
//! replay requests alike, and withheld events cause no gap or error.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use serde_json::{Value, json};
use support::*;
use zps_core::middleware::{Action, Context, Next, from_fn};
use zps_core::{Error, Realtime};
use zps_gateway::GatewayConfig;

/// Removes `payload.secret`; withholds events of type `hidden`.
fn engine_with_rules() -> Realtime {
    let engine = Realtime::memory();
    engine.use_middleware(from_fn(|mut ctx: Context, next: Next| async move {
        if ctx.action == Action::Deliver
            && let Some(e) = ctx.envelope.take()
            && e.event_type != "hidden"
        {
            let mut payload: Value =
                serde_json::from_str(e.payload.get()).map_err(|e| Error::InvalidEvent(e.to_string()))?;
            if let Some(map) = payload.as_object_mut() {
                map.remove("secret");
            }
            let mut redacted = (*e).clone();
            redacted.payload = zps_core::envelope::to_payload(&payload)?;
            ctx.envelope = Some(Arc::new(redacted));
        }
        next.run(ctx).await
    }));
    engine
}

fn no_secrets(events: &[Value]) {
    for e in events {
        assert_eq!(
            e["payload"]["text"].as_str().map(|t| t.starts_with('m')),
            Some(true),
            "{e}"
        );
        assert!(e["payload"].get("secret").is_none(), "secret leaked: {e}");
    }
}

#[tokio::test]
async fn deliver_middleware_covers_catch_up_live_and_replay_requests() {
    let engine = engine_with_rules();
    // 1 shown, 2 hidden, 3 shown, 4 hidden
    for (i, t) in ["shown", "hidden", "shown", "hidden"].into_iter().enumerate() {
        engine
            .publish(publish(
                "chat:1",
                t,
                json!({"text": format!("m{}", i + 1), "secret": "s"}),
            ))
            .await
            .unwrap();
    }
    let gw = TestGateway::start_with(engine.clone(), GatewayConfig::default()).await;
    let mut c = gw.ready("device-1").await;
    c.send(json!({"type": "subscribe", "room": "chat:1", "fromSequence": 0}))
        .await;
    let sub = c.recv_type("subscribed").await;
    assert_eq!(sub["recovered"], true);
    let history = c.events(2).await;
    assert_eq!(seqs(&history), vec![1, 3]);
    no_secrets(&history);

    // Live: 5 is withheld, 6 and 7 arrive, with nothing (no error, no
    // discontinuity) in between.
    for (i, t) in [(5, "hidden"), (6, "shown"), (7, "shown")] {
        engine
            .publish(publish(
                "chat:1",
                t,
                json!({"text": format!("m{i}"), "secret": "s"}),
            ))
            .await
            .unwrap();
    }
    let live = c.events(2).await;
    assert_eq!(seqs(&live), vec![6, 7]);
    no_secrets(&live);

    c.send(json!({"type": "replay_request", "room": "chat:1", "fromSequence": 0, "limit": 3}))
        .await;
    let page = c.recv_type("replay").await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(seqs(events), vec![1, 3]);
    no_secrets(events);
    assert_eq!(
        (page["scannedTo"].as_u64(), page["hasMore"].as_bool()),
        (Some(3), Some(true))
    );
    c.send(json!({"type": "replay_request", "room": "chat:1", "fromSequence": 3}))
        .await;
    let page = c.recv_type("replay").await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(seqs(events), vec![6, 7]);
    no_secrets(events);
    assert_eq!(
        (page["scannedTo"].as_u64(), page["hasMore"].as_bool()),
        (Some(7), Some(false))
    );
}
