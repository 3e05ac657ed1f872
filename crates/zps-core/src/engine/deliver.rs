//! The `deliver` middleware step every stored event passes on its way out of
//! the engine: live and catch-up events of a subscription, the events of a
//! [`Realtime::replay`](super::Realtime::replay) page and of a
//! [`catch_up`](super::Realtime::catch_up) stream. One rule everywhere, so a
//! redaction or filtering middleware cannot be bypassed by reading history.

use std::sync::Arc;

use crate::envelope::Envelope;
use crate::middleware::{Action, Context};

use super::Inner;

/// Runs the `deliver` action for one event; `None` when a middleware withheld it
/// (cleared `ctx.envelope` or refused).
pub(crate) async fn deliver_one(
    inner: &Inner,
    envelope: Arc<Envelope>,
    subscriber_id: Option<String>,
) -> Option<Arc<Envelope>> {
    if inner.chain().is_empty() {
        return Some(envelope);
    }
    let mut ctx = Context::new(Action::Deliver)
        .with_room(envelope.room.clone())
        .with_subscriber(subscriber_id);
    ctx.envelope = Some(envelope);
    match inner.run(ctx, |ctx| async move { Ok(ctx) }).await {
        Ok(ctx) => ctx.envelope,
        Err(e) => {
            tracing::debug!(error = %e, "delivery blocked by middleware");
            None
        }
    }
}

/// Runs the `deliver` action for every event of a page, in order, keeping the
/// ones the middleware let through (the page's `scanned_to` still covers the others).
pub(crate) async fn deliver_page(
    inner: &Inner,
    events: Vec<Arc<Envelope>>,
    subscriber_id: Option<&str>,
) -> Vec<Arc<Envelope>> {
    if inner.chain().is_empty() {
        return events;
    }
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        if let Some(e) = deliver_one(inner, e, subscriber_id.map(str::to_owned)).await {
            out.push(e);
        }
    }
    out
}
