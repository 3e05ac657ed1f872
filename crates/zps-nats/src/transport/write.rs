//! Publishing: the room's next sequence taken optimistically, refereed by
//! the server twice over.
//!
//! Each attempt at sequence `n + 1` carries `Nats-Expected-Last-Subject-Sequence`
//! (the stream position of event `n`) and `Nats-Msg-Id: {room}.{n + 1}`. The
//! first refuses a publisher whose view of the room is stale; the second
//! refuses a racing publisher whose attempt at the same sequence is still in
//! flight — on a replicated stream the server checks the expected subject
//! sequence against what is applied, not against proposals in flight, so two
//! gateways could otherwise both win sequence `n + 1` (the three-node cluster
//! test caught exactly that). The loser re-reads the head and tries `n + 2`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use zps_core::{Envelope, NewEvent, PublishOutcome};

use super::ids::Claim;
use super::read::{SEQ_HEADER, room_seq};
use super::{Head, NatsTransport};
use crate::error::{NatsError, NatsResult};
use crate::subject::room_tokens;

/// How one attempt at a sequence ended.
enum Attempt {
    /// Stored under the attempted sequence, at this stream position when known.
    Stored(Option<u64>),
    /// An earlier attempt of this very event holds the sequence.
    Ours(Envelope),
    /// Another publisher holds it: re-read the head.
    Lost,
}

impl NatsTransport {
    /// Stores `event` under its room's next sequence, or finds the original
    /// when its id was stored before.
    pub(super) async fn store(&self, event: NewEvent) -> NatsResult<PublishOutcome> {
        let id_subject = self.inner.subjects.event_id(&event.room, &event.id);
        let slot = self.head_slot(&event.room);
        // Publishes to one room from this process take turns: they never race
        // each other, and the id is claimed in the turn, right before storing (a
        // claim left behind by a crash is one whose store was under way).
        let mut cached = slot.lock().await;
        if !self.claim_free_id(&id_subject).await? {
            // Held by someone (an earlier attempt, another gateway, a dead
            // publisher's claim waited out for `request_timeout`): resolve it
            // without holding up the room's other publishes.
            drop(cached);
            if let Claim::Stored(original) = self.claim_held_id(&event, &id_subject).await? {
                return Ok(duplicate(original));
            }
            cached = slot.lock().await;
        }
        let result = self.store_claimed(&event, &mut cached).await;
        match &result {
            Ok(outcome) => self.finish_id(&id_subject, outcome.envelope.sequence).await,
            // Maybe stored: the pending claim makes a retry look before storing again.
            Err(NatsError::OutcomeUnknown { .. }) => {}
            Err(_) => self.release_id(&id_subject).await,
        }
        result
    }

    /// Takes the room's next sequence for an event whose id this publisher claimed.
    pub(super) async fn store_claimed(
        &self,
        event: &NewEvent,
        cached: &mut Option<Head>,
    ) -> NatsResult<PublishOutcome> {
        let subject = self.inner.subjects.event(&event.room);
        let attempts = self.inner.config.max_publish_attempts;
        for attempt in 0..attempts {
            let head = match *cached {
                Some(head) => head,
                None => match self.last_message(&subject).await? {
                    None => Head::default(),
                    Some(last) => Head {
                        room_seq: room_seq(&last)?,
                        stream_seq: last.sequence,
                    },
                },
            };
            match self.try_sequence(event, &subject, head, cached, attempt).await {
                Err(NatsError::Contended { .. }) => continue,
                done => return done,
            }
        }
        Err(NatsError::Contended {
            room: event.room.to_string(),
            attempts,
        })
    }

    /// One attempt at `head.room_seq + 1`. `Contended` means: lost, try again.
    async fn try_sequence(
        &self,
        event: &NewEvent,
        subject: &str,
        head: Head,
        cached: &mut Option<Head>,
        attempt: usize,
    ) -> NatsResult<PublishOutcome> {
        let envelope = event.to_envelope(head.room_seq + 1);
        let outcome = match self.attempt(subject, &envelope, head).await {
            Ok(outcome) => outcome,
            Err(e) if e.is_unavailable() => {
                // The answer was lost (timeout, leader change): find out whether it
                // was stored before saying anything, so a retry cannot store it twice.
                *cached = None;
                match self.event_by_room_seq(&event.room, envelope.sequence).await {
                    Ok(Some(stored)) if stored.id == event.id => Attempt::Stored(None),
                    // Another event holds the sequence: ours was certainly not stored.
                    Ok(Some(_)) => return Err(e),
                    // Not visible, or not readable: a new stream leader may still
                    // commit it, so the id stays claimed and a retry looks first.
                    Ok(None) | Err(_) => {
                        return Err(NatsError::OutcomeUnknown {
                            room: event.room.to_string(),
                            message: e.to_string(),
                        });
                    }
                }
            }
            Err(e) => {
                *cached = None;
                return Err(e);
            }
        };
        match outcome {
            Attempt::Stored(stream_seq) => {
                *cached = stream_seq.map(|stream_seq| Head {
                    room_seq: envelope.sequence,
                    stream_seq,
                });
                Ok(PublishOutcome {
                    envelope: Arc::new(envelope),
                    duplicate: false,
                })
            }
            Attempt::Ours(original) => {
                *cached = None;
                Ok(duplicate(original))
            }
            Attempt::Lost => {
                *cached = None;
                self.inner.conflicts.fetch_add(1, Ordering::Relaxed);
                if attempt >= 4 {
                    // Many writers on one room: spread the retries out a little.
                    let pause = rand_jitter(attempt);
                    tokio::time::sleep(pause).await;
                }
                Err(NatsError::Contended {
                    room: event.room.to_string(),
                    attempts: attempt + 1,
                })
            }
        }
    }

    /// Sends one attempt and reads the server's verdict.
    async fn attempt(&self, subject: &str, envelope: &Envelope, head: Head) -> NatsResult<Attempt> {
        let claim = format!("{}.{}", room_tokens(&envelope.room), envelope.sequence);
        let message = PublishMessage::build()
            .payload(envelope.to_json().into())
            .message_id(claim.as_str())
            .expected_last_subject_sequence(head.stream_seq)
            .header(SEQ_HEADER, envelope.sequence.to_string().as_str());
        let ack = match self.inner.js.send_publish(subject.to_owned(), message).await {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) if ack.duplicate => {
                // Someone claimed this sequence inside the duplicate window: us
                // (an earlier attempt whose answer was lost) or a racing publisher.
                let holder = self.event_at(ack.sequence).await?;
                Ok(if holder.id == envelope.id {
                    Attempt::Ours(holder)
                } else {
                    Attempt::Lost
                })
            }
            Ok(ack) => Ok(Attempt::Stored(Some(ack.sequence))),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Attempt::Lost),
            Err(e) => {
                let unavailable = matches!(
                    e.kind(),
                    PublishErrorKind::TimedOut
                        | PublishErrorKind::BrokenPipe
                        | PublishErrorKind::StreamNotFound
                );
                Err(NatsError::request("publish", e, unavailable))
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

/// The answer for an id stored before.
pub(super) fn duplicate(original: Envelope) -> PublishOutcome {
    PublishOutcome {
        envelope: Arc::new(original),
        duplicate: true,
    }
}
