//! Consumer handles: a [`Subscription`] is a `Stream` of [`ClientEvent`]s; a
//! [`SubscriptionHandle`] runs a callback per item in its own task. Both see
//! each room's events exactly once and in order; in auto-ack mode the stream
//! acks an event when it is taken, the callback form after the handler returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use zps_model::Envelope;

use crate::client::Client;
use crate::driver::{Command, Dropped};
use crate::error::ClientError;
use crate::options::AckMode;
use crate::room::SinkId;
use crate::types::{ClientEvent, EphemeralMessage, PresenceEvent};

/// A durable subscription to one or more rooms and/or `scope:*` patterns.
///
/// Dropping it unsubscribes. The stream ends when the client is closed.
pub struct Subscription {
    pub(crate) rx: mpsc::Receiver<ClientEvent>,
    pub(crate) client: Client,
    pub(crate) id: SinkId,
    pub(crate) targets: Vec<String>,
    /// Ack events as they are taken (auto mode, stream form).
    pub(crate) ack_on_take: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("targets", &self.targets)
            .finish()
    }
}

impl Subscription {
    /// The rooms and patterns this subscription covers.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// Acknowledges `event` (manual ack mode; harmless in auto mode).
    pub fn ack(&self, event: &Envelope) {
        self.client.ack(event.room.as_str(), event.sequence);
    }

    /// Stops the subscription (the server stops sending its rooms).
    pub async fn unsubscribe(self) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.client
            .command(Command::Unsubscribe { sink: self.id, reply })
            .await?;
        rx.await.map_err(|_| ClientError::Closed)
    }
}

impl Stream for Subscription {
    type Item = ClientEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        let this = self.get_mut();
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                let shared = &this.client.inner.shared;
                match &item {
                    ClientEvent::Event(e) if this.ack_on_take => shared.taken(e.room.as_str(), e.sequence),
                    _ => shared.consumed(),
                }
                Poll::Ready(Some(item))
            }
            other => other,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.client.inner.drops.send(Dropped::Sink(self.id));
    }
}

/// A running callback subscription ([`Client::subscribe_with`]). Dropping the handle
/// leaves the callback running until the client closes; call
/// [`SubscriptionHandle::unsubscribe`] to stop it.
#[derive(Debug)]
pub struct SubscriptionHandle {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl SubscriptionHandle {
    pub(crate) fn spawn<F, Fut>(mut sub: Subscription, mode: AckMode, mut handler: F) -> Self
    where
        F: FnMut(ClientEvent) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        sub.ack_on_take = false;
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut stop_armed = true;
            loop {
                let item = tokio::select! {
                    biased;
                    r = &mut stopped, if stop_armed => {
                        if r.is_ok() {
                            break;
                        }
                        // The handle was dropped: keep running.
                        stop_armed = false;
                        continue;
                    }
                    item = sub.next() => item,
                };
                let Some(item) = item else {
                    break;
                };
                let done = match (&item, mode) {
                    (ClientEvent::Event(e), AckMode::Auto) => Some(Arc::clone(e)),
                    _ => None,
                };
                handler(item).await;
                if let Some(e) = done {
                    sub.client.inner.shared.taken(e.room.as_str(), e.sequence);
                }
            }
            let _ = sub.unsubscribe().await;
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Stops after the current callback returns, and unsubscribes.
    pub async fn unsubscribe(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Whether the callback task has ended (unsubscribed or client closed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Ephemeral events of one room or pattern ([`Client::subscribe_ephemeral`]). Lossy by
/// design: when the consumer falls behind, new ephemeral events are dropped.
pub struct EphemeralSubscription {
    pub(crate) rx: mpsc::Receiver<EphemeralMessage>,
    pub(crate) client: Client,
    pub(crate) id: u64,
}

impl std::fmt::Debug for EphemeralSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EphemeralSubscription")
            .field("id", &self.id)
            .finish()
    }
}

impl Stream for EphemeralSubscription {
    type Item = EphemeralMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<EphemeralMessage>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

impl Drop for EphemeralSubscription {
    fn drop(&mut self) {
        let _ = self.client.inner.drops.send(Dropped::Ephemeral(self.id));
    }
}

/// Presence changes of one room ([`crate::Presence::subscribe`]); lossy when not read.
pub struct PresenceSubscription {
    pub(crate) rx: mpsc::Receiver<PresenceEvent>,
    pub(crate) client: Client,
    pub(crate) id: u64,
    pub(crate) room: String,
}

impl std::fmt::Debug for PresenceSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceSubscription")
            .field("room", &self.room)
            .finish()
    }
}

impl Stream for PresenceSubscription {
    type Item = PresenceEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PresenceEvent>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

impl Drop for PresenceSubscription {
    fn drop(&mut self) {
        let _ = self.client.inner.drops.send(Dropped::Presence {
            id: self.id,
            room: std::mem::take(&mut self.room),
        });
    }
}
