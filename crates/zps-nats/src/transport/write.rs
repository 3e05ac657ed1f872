//! Publishing: the room's next sequence taken optimistically, with the
//! server's expected-last-subject-sequence check as the referee.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use zps_core::{NewEvent, PublishOutcome};

use super::read::SEQ_HEADER;
use super::{Head, NatsTransport};
use crate::error::{NatsError, NatsResult};
use crate::subject::{encode_token, room_tokens};

impl NatsTransport {
    /// Stores `event` under its room's next sequence, or finds the original
    /// when its id was stored before.
    pub(super) async fn store(&self, event: NewEvent) -> NatsResult<PublishOutcome> {
        let id_key = format!("{}.{}", room_tokens(&event.room), encode_token(&event.id));
        let id_subject = self.inner.subjects.event_id(&event.room, &event.id);
        if let Some(original) = self.indexed_original(&event, &id_subject).await? {
            return Ok(original);
        }
        let subject = self.inner.subjects.event(&event.room);
        let slot = self.head_slot(&event.room);
        let mut cached = slot.lock().await;
        let attempts = self.inner.config.max_publish_attempts;
        for attempt in 0..attempts {
            let head = match *cached {
                Some(head) => head,
                None => self.read_head(&subject).await?,
            };
            let envelope = event.to_envelope(head.room_seq + 1);
            let message = PublishMessage::build()
                .payload(envelope.to_json().into())
                .message_id(id_key.as_str())
                .expected_last_subject_sequence(head.stream_seq)
                .header(SEQ_HEADER, envelope.sequence.to_string().as_str());
            let ack = match self.inner.js.send_publish(subject.clone(), message).await {
                Ok(pending) => pending.await,
                Err(e) => Err(e),
            };
            match ack {
                Ok(ack) if ack.duplicate => {
                    // Stored before, inside the duplicate window (a retry, or a
                    // concurrent publish of the same id elsewhere).
                    *cached = None;
                    drop(cached);
                    let original = self.event_at(ack.sequence).await?;
                    return Ok(PublishOutcome {
                        envelope: Arc::new(original),
                        duplicate: true,
                    });
                }
                Ok(ack) => {
                    *cached = Some(Head {
                        room_seq: envelope.sequence,
                        stream_seq: ack.sequence,
                    });
                    drop(cached);
                    self.index_id(&id_subject, envelope.sequence).await;
                    return Ok(PublishOutcome {
                        envelope: Arc::new(envelope),
                        duplicate: false,
                    });
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    // Another publisher took this sequence: read the new head and try the next one.
                    *cached = None;
                    self.inner.conflicts.fetch_add(1, Ordering::Relaxed);
                    if attempt >= 4 {
                        // Many writers on one room: spread the retries out a little.
                        let pause = rand_jitter(attempt);
                        tokio::time::sleep(pause).await;
                    }
                }
                Err(e) => {
                    *cached = None;
                    let unavailable = matches!(
                        e.kind(),
                        PublishErrorKind::TimedOut
                            | PublishErrorKind::BrokenPipe
                            | PublishErrorKind::StreamNotFound
                    );
                    return Err(NatsError::request("publish", e, unavailable));
                }
            }
        }
        Err(NatsError::Contended {
            room: event.room.to_string(),
            attempts,
        })
    }

    /// The original of an id the durable index already holds.
    async fn indexed_original(
        &self,
        event: &NewEvent,
        id_subject: &str,
    ) -> NatsResult<Option<PublishOutcome>> {
        let Some(record) = self.last_record(&self.inner.ids, id_subject, "id lookup").await? else {
            return Ok(None);
        };
        let sequence: u64 = std::str::from_utf8(&record.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| NatsError::Decode(format!("id record `{id_subject}` is not a sequence")))?;
        let envelope = match self.event_by_room_seq(&event.room, sequence).await? {
            Some(original) => original,
            // The original was pruned: answer with its sequence, so the caller still
            // learns that nothing new was stored.
            None => event.to_envelope(sequence),
        };
        Ok(Some(PublishOutcome {
            envelope: Arc::new(envelope),
            duplicate: true,
        }))
    }

    /// Records the id beyond the server's duplicate window. A failure only
    /// narrows idempotency to that window, so it is logged, not returned: the
    /// event is stored and its publisher must hear so.
    async fn index_id(&self, id_subject: &str, sequence: u64) {
        let value = bytes::Bytes::from(sequence.to_string().into_bytes());
        for attempt in 0..3u32 {
            match self
                .put_record(id_subject.to_owned(), value.clone(), None, "id index")
                .await
            {
                Ok(_) => return,
                Err(e) if attempt == 2 => {
                    tracing::warn!(error = %e, "nats: could not index an event id; duplicates are caught only inside the duplicate window");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20 << attempt)).await,
            }
        }
    }
}

/// A short random pause after repeated conflicts, so contending publishers
/// stop colliding in lockstep (full jitter, at most 64 ms).
fn rand_jitter(attempt: usize) -> Duration {
    let backoff = zps_core::Backoff {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(64),
        max_attempts: None,
    };
    backoff.delay(u32::try_from(attempt).unwrap_or(u32::MAX), &mut rand::rng())
}
