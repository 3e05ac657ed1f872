//! Handler subscriptions: an ordered subscription driving an async handler
//! with retries, dead-lettering, flow control and optional auto-ack.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinHandle;

use crate::envelope::{DlqEntry, Envelope, NewDlqEntry};
use crate::error::{Error, Result};
use crate::middleware::{Action, Context};
use crate::room::Room;
use crate::time::Timestamp;

use super::options::{FlowStrategy, RetryPolicy, SubscribeOptions};
use super::subscription::{Discontinuity, SubscriptionItem};
use super::{Inner, Realtime, Subscription};

/// A handler failure (its text goes to the dead-letter queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError(pub String);

impl<E: Display> From<E> for HandlerError {
    fn from(e: E) -> Self {
        Self(e.to_string())
    }
}

type HandlerFn = dyn Fn(Arc<Envelope>) -> BoxFuture<'static, Result<(), HandlerError>> + Send + Sync;
type DiscontinuityFn = dyn Fn(Discontinuity) + Send + Sync;

/// A running handler subscription; dropping it (or [`SubscriptionHandle::unsubscribe`]) stops it.
pub struct SubscriptionHandle {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    starts: Vec<super::RoomStart>,
}

impl SubscriptionHandle {
    /// Where each exact room started.
    pub fn starts(&self) -> &[super::RoomStart] {
        &self.starts
    }

    /// Stops reading and waits for handlers already running to finish.
    pub async fn unsubscribe(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SubscriptionHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Tracks which sequences are still being handled, so auto-ack never moves a
/// cursor past an event that has not finished (with `max_in_flight > 1`).
#[derive(Default)]
struct AckTracker {
    in_flight: BTreeSet<u64>,
    highest_done: u64,
}

impl AckTracker {
    fn safe_cursor(&self) -> u64 {
        match self.in_flight.first() {
            Some(&first) => first.saturating_sub(1).min(self.highest_done),
            None => self.highest_done,
        }
    }
}

struct Worker {
    engine: Realtime,
    handler: Arc<HandlerFn>,
    retry: RetryPolicy,
    subscriber_id: Option<String>,
    auto_ack: bool,
    acks: Mutex<HashMap<Room, AckTracker>>,
}

impl Worker {
    fn dispatched(&self, e: &Envelope) {
        if self.auto_ack {
            self.acks
                .lock()
                .entry(e.room.clone())
                .or_default()
                .in_flight
                .insert(e.sequence);
        }
    }

    async fn process(self: Arc<Self>, e: Arc<Envelope>, _permit: OwnedSemaphorePermit) {
        let metrics = &self.engine.inner.metrics;
        let attempts = self.retry.attempts.max(1);
        let mut last_error = String::new();
        let mut ok = false;
        for attempt in 1..=attempts {
            let run = AssertUnwindSafe((self.handler)(e.clone())).catch_unwind().await;
            match run {
                Ok(Ok(())) => {
                    ok = true;
                    break;
                }
                Ok(Err(HandlerError(msg))) => last_error = msg,
                Err(_) => last_error = "handler panicked".to_owned(),
            }
            metrics.error();
            if attempt < attempts {
                metrics.retry();
                tokio::time::sleep(self.retry.delay_after(attempt)).await;
            }
        }
        if !ok {
            let entry = NewDlqEntry {
                event: (*e).clone(),
                error: last_error,
                attempts,
                subscriber_id: self.subscriber_id.clone(),
                failed_at: Timestamp::now(),
            };
            if let Err(err) = dlq_write(&self.engine.inner, &e.room, entry).await {
                tracing::error!(room = %e.room, sequence = e.sequence, error = %err, "dead-letter write failed");
                // Not acked: a restart re-reads the event from the cursor.
                return;
            }
        }
        self.finish(&e).await;
    }

    async fn finish(&self, e: &Envelope) {
        let (Some(sub), true) = (&self.subscriber_id, self.auto_ack) else {
            return;
        };
        let cursor = {
            let mut acks = self.acks.lock();
            let t = acks.entry(e.room.clone()).or_default();
            t.in_flight.remove(&e.sequence);
            t.highest_done = t.highest_done.max(e.sequence);
            t.safe_cursor()
        };
        if cursor > 0
            && let Err(err) = self.engine.ack(&e.room, cursor, sub).await
        {
            tracing::warn!(room = %e.room, error = %err, "auto-ack failed");
        }
    }
}

/// Writes a dead letter through the `dlqWrite` middleware.
pub(crate) async fn dlq_write(inner: &Arc<Inner>, room: &Room, entry: NewDlqEntry) -> Result<DlqEntry> {
    let transport = inner.transport.clone();
    let mut ctx = Context::new(Action::DlqWrite)
        .with_room(room.clone())
        .with_subscriber(entry.subscriber_id.clone());
    ctx.envelope = Some(Arc::new(entry.event.clone()));
    ctx.error = Some(entry.error.clone());
    let (_, stored) = inner
        .call(ctx, move |ctx| async move {
            let Some(room) = &ctx.room else {
                return Err(Error::Rejected("middleware removed the room".into()));
            };
            let stored = transport.require_dead_letters()?.dlq_write(room, entry).await?;
            Ok((ctx, stored))
        })
        .await?;
    inner.metrics.dlq_delta(1);
    Ok(stored)
}

impl Realtime {
    /// Runs `handler` for every event (catch-up, then live), in order, with the
    /// options' retry policy, flow control and auto-ack. Failed events go to the
    /// room's dead-letter queue.
    ///
    /// ```
    /// use zps_core::{Realtime, SubscribeOptions, RetryPolicy, room};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), zps_core::Error> {
    /// let realtime = Realtime::memory();
    /// let handle = realtime
    ///     .subscribe(
    ///         SubscribeOptions::room(room("chat", "1")?).subscriber("worker-1").auto_ack()
    ///             .retry(RetryPolicy { attempts: 3, ..Default::default() }),
    ///         |event| async move {
    ///             println!("{} {}", event.sequence, event.event_type);
    ///             Ok::<_, std::io::Error>(())
    ///         },
    ///     )
    ///     .await?;
    /// handle.unsubscribe().await;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe<F, Fut, E>(
        &self,
        options: SubscribeOptions,
        handler: F,
    ) -> Result<SubscriptionHandle>
    where
        F: Fn(Arc<Envelope>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<HandlerError> + 'static,
    {
        self.subscribe_with(options, handler, |d| {
            tracing::warn!(room = %d.room, reason = d.reason.as_str(), "history discontinuity");
        })
        .await
    }

    /// Like [`Realtime::subscribe`], with a callback for history discontinuities.
    pub async fn subscribe_with<F, Fut, E, D>(
        &self,
        options: SubscribeOptions,
        handler: F,
        on_discontinuity: D,
    ) -> Result<SubscriptionHandle>
    where
        F: Fn(Arc<Envelope>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<HandlerError> + 'static,
        D: Fn(Discontinuity) + Send + Sync + 'static,
    {
        let flow = options.flow_control;
        let worker = Arc::new(Worker {
            engine: self.clone(),
            handler: Arc::new(move |e| {
                let fut = handler(e);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }),
            retry: options.retry,
            subscriber_id: options.subscriber_id.clone(),
            auto_ack: options.auto_ack,
            acks: Mutex::new(HashMap::new()),
        });
        let on_discontinuity: Arc<DiscontinuityFn> = Arc::new(on_discontinuity);
        let sub = self.subscribe_stream(options).await?;
        let starts = sub.starts().to_vec();
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(dispatch(sub, worker, flow, on_discontinuity, stop_rx));
        Ok(SubscriptionHandle {
            stop: Some(stop_tx),
            task: Some(task),
            starts,
        })
    }
}

async fn dispatch(
    mut sub: Subscription,
    worker: Arc<Worker>,
    flow: super::options::FlowControl,
    on_discontinuity: Arc<DiscontinuityFn>,
    mut stop: oneshot::Receiver<()>,
) {
    let max = flow.max_in_flight.max(1);
    let permits = Arc::new(Semaphore::new(max));
    let mut buffer: VecDeque<Arc<Envelope>> = VecDeque::new();
    let metrics = worker.engine.inner.metrics.clone();
    let spawn = |e: Arc<Envelope>, permit: OwnedSemaphorePermit| {
        worker.dispatched(&e);
        tokio::spawn(worker.clone().process(e, permit));
    };
    loop {
        if flow.strategy == FlowStrategy::Pause {
            // Take a slot first, then read: while saturated nothing is read, so
            // nothing is dropped (events wait in the transport).
            let permit = tokio::select! {
                _ = &mut stop => break,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let item = tokio::select! {
                _ = &mut stop => break,
                item = sub.next() => item,
            };
            match item {
                Some(SubscriptionItem::Event(e)) => spawn(e, permit),
                Some(SubscriptionItem::Discontinuity(d)) => on_discontinuity(d),
                None => break,
            }
            continue;
        }
        tokio::select! {
            biased;
            _ = &mut stop => break,
            p = permits.clone().acquire_owned(), if !buffer.is_empty() => {
                let (Ok(permit), Some(e)) = (p, buffer.pop_front()) else { break };
                spawn(e, permit);
            }
            item = sub.next() => match item {
                Some(SubscriptionItem::Event(e)) => {
                    if buffer.is_empty()
                        && let Ok(permit) = permits.clone().try_acquire_owned()
                    {
                        spawn(e, permit);
                        continue;
                    }
                    if flow.strategy == FlowStrategy::Buffer && buffer.len() < flow.max_buffer_size {
                        buffer.push_back(e);
                    } else {
                        metrics.flow_dropped();
                    }
                }
                Some(SubscriptionItem::Discontinuity(d)) => on_discontinuity(d),
                None => break,
            },
        }
    }
    // Let running handlers finish before reporting the subscription as stopped.
    let _ = permits.acquire_many(max as u32).await;
}
