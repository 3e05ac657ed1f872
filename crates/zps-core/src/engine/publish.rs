//! Storing events through the engine: one, a batch (grouped per room, order
//! kept), or one event to many rooms; each through the `publish` middleware.

use super::*;

impl Realtime {
    /// Stores an event and returns its envelope (for a duplicate id: the original).
    pub async fn publish(&self, request: PublishRequest) -> Result<Arc<Envelope>> {
        Ok(self.publish_outcome(request).await?.envelope)
    }

    /// Like [`Realtime::publish`], also telling whether the id was a duplicate.
    pub async fn publish_outcome(&self, request: PublishRequest) -> Result<PublishOutcome> {
        self.inner.check_open()?;
        let event = NewEvent::from_request(request, self.inner.config.default_ttl, Timestamp::now())?;
        if self.inner.chain().is_empty() {
            let outcome = self.inner.transport.publish(event).await;
            self.count_publish(&outcome, true);
            outcome
        } else {
            // Failures inside the chain are counted by `Inner::run`.
            let outcome = self.publish_through_middleware(event).await;
            self.count_publish(&outcome, false);
            outcome
        }
    }

    /// Publishes several events in the order given, in as few storage round trips
    /// as the provider allows (one statement on PostgreSQL, one pipeline on Redis),
    /// so a producer sending many events is not bound by one round trip per event.
    ///
    /// Each request gets its own result, in order; events of one room get
    /// ascending sequences in the order given. With middleware installed every
    /// event passes through it one at a time. If the provider fails the batch as
    /// a whole, the events are retried one at a time (their ids are already
    /// resolved, so an event the batch did store comes back as a duplicate of
    /// itself, never twice).
    ///
    /// ```
    /// use zps_core::{PublishRequest, Realtime, room};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), zps_core::Error> {
    /// let realtime = Realtime::memory();
    /// let chat = room("chat", "1")?;
    /// let mut requests = Vec::new();
    /// for i in 0..3 {
    ///     requests.push(PublishRequest::new(chat.clone(), "message.created", &serde_json::json!({ "i": i }))?);
    /// }
    /// let mut sequences = Vec::new();
    /// for result in realtime.publish_batch(requests).await {
    ///     sequences.push(result?.envelope.sequence);
    /// }
    /// assert_eq!(sequences, [1, 2, 3]);
    /// # Ok(()) }
    /// ```
    pub async fn publish_batch(&self, requests: Vec<PublishRequest>) -> Vec<Result<PublishOutcome>> {
        if requests.len() <= 1 || !self.inner.chain().is_empty() {
            let mut out = Vec::with_capacity(requests.len());
            for request in requests {
                out.push(self.publish_outcome(request).await);
            }
            return out;
        }
        let mut results: Vec<Option<Result<PublishOutcome>>> = Vec::with_capacity(requests.len());
        if self.inner.check_open().is_err() {
            return requests.iter().map(|_| Err(Error::Closed)).collect();
        }
        let now = Timestamp::now();
        let (mut events, mut slots) = (Vec::with_capacity(requests.len()), Vec::new());
        for (i, request) in requests.into_iter().enumerate() {
            match NewEvent::from_request(request, self.inner.config.default_ttl, now) {
                Ok(event) => {
                    events.push(event);
                    slots.push(i);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e.into()))),
            }
        }
        if !self.inner.transport.batches_publishes() {
            // Event by event: nothing to copy for a retry, each result its own.
            for (&i, event) in slots.iter().zip(events) {
                let outcome = self.inner.transport.publish(event).await;
                self.count_publish(&outcome, true);
                results[i] = Some(outcome);
            }
            return results
                .into_iter()
                .map(|r| r.unwrap_or(Err(Error::Closed)))
                .collect();
        }
        let retry = events.clone();
        let stored = match events.len() {
            0 => Ok(Vec::new()),
            _ => self.inner.transport.publish_batch(events).await,
        };
        match stored {
            Ok(outcomes) if outcomes.len() == slots.len() => {
                for (&i, outcome) in slots.iter().zip(outcomes) {
                    let outcome = Ok(outcome);
                    self.count_publish(&outcome, true);
                    results[i] = Some(outcome);
                }
            }
            other => {
                if let Err(e) = other {
                    tracing::debug!(error = %e, events = slots.len(), "batch publish failed; publishing one by one");
                }
                for (&i, event) in slots.iter().zip(retry) {
                    let outcome = self.inner.transport.publish(event).await;
                    self.count_publish(&outcome, true);
                    results[i] = Some(outcome);
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::Closed)))
            .collect()
    }

    /// Publishes the same event to several rooms (one envelope per room).
    pub async fn publish_many(&self, rooms: &[Room], template: PublishRequest) -> Result<Vec<Arc<Envelope>>> {
        let mut out = Vec::with_capacity(rooms.len());
        for room in rooms {
            let mut req = template.clone();
            req.room = room.clone();
            // An idempotency key names one event; derive one per room.
            req.id = template.id.as_ref().map(|id| format!("{id}:{room}"));
            out.push(self.publish(req).await?);
        }
        Ok(out)
    }
}
