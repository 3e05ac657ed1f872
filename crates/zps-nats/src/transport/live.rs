//! The live path: one ordered consumer per transport on every room's events,
//! routed to this process's subscribers by room.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, push};
use futures::StreamExt;
use zps_core::{Backoff, Envelope};

use super::read::decode_envelope;
use super::{Inner, NatsTransport};
use crate::error::{NatsError, NatsResult};

impl NatsTransport {
    /// Starts the live consumer on first use. It starts at the stream's end
    /// as of now, so every event stored after the caller's subscription
    /// exists is delivered.
    pub(super) async fn ensure_live(&self) -> NatsResult<()> {
        let mut task = self.inner.live_task.lock().await;
        if task.is_some() {
            return Ok(());
        }
        let info = self
            .inner
            .events
            .get_info()
            .await
            .map_err(|e| NatsError::request("live start", e, true))?;
        let messages = open_consumer(&self.inner, info.state.last_sequence + 1).await?;
        let weak = Arc::downgrade(&self.inner);
        *task = Some(tokio::spawn(run_live(weak, messages, info.state.last_sequence)));
        Ok(())
    }
}

async fn open_consumer(inner: &Inner, start_sequence: u64) -> NatsResult<push::Ordered> {
    let consumer = inner
        .events
        .create_consumer(push::OrderedConfig {
            deliver_subject: inner.client.new_inbox(),
            filter_subject: inner.subjects.all_events(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
            ..Default::default()
        })
        .await
        .map_err(|e| NatsError::request("live start", e, true))?;
    consumer
        .messages()
        .await
        .map_err(|e| NatsError::request("live start", e, true))
}

/// Routes stored events to local subscribers until the transport goes away.
/// The ordered consumer re-creates itself after gaps and reconnects; when it
/// ends anyway, it is opened again after the last position seen, so nothing
/// is skipped.
async fn run_live(inner: std::sync::Weak<Inner>, mut messages: push::Ordered, mut last: u64) {
    let backoff = Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(5),
        max_attempts: None,
    };
    let mut failures = 0u32;
    loop {
        while let Some(next) = messages.next().await {
            let Some(inner) = inner.upgrade() else { return };
            match next {
                Ok(msg) => {
                    failures = 0;
                    if let Ok(info) = msg.info() {
                        last = info.stream_sequence;
                    }
                    match decode_envelope(&msg.payload) {
                        Ok(envelope) => route(&inner, envelope),
                        Err(e) => {
                            tracing::warn!(error = %e, subject = %msg.subject, "nats: skipping an undecodable event")
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "nats: live consumer error; it recovers by itself"),
            }
        }
        loop {
            let Some(strong) = inner.upgrade() else { return };
            if strong.closed.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            let delay = backoff.delay(failures, &mut rand::rng());
            tokio::time::sleep(delay).await;
            failures = failures.saturating_add(1);
            match open_consumer(&strong, last + 1).await {
                Ok(reopened) => {
                    messages = reopened;
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "nats: cannot reopen the live consumer; retrying"),
            }
        }
    }
}

fn route(inner: &Inner, envelope: Envelope) {
    let room = envelope.room.clone();
    inner.live.send(&room, Arc::new(envelope));
}
