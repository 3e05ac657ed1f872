//! Event-id idempotency: a record per (room, id) in the ids stream, claimed
//! before the event is stored and finished with its sequence after.
//!
//! The claim is a write of `pending` that succeeds only when no record exists
//! (expected last subject sequence 0) and is not a duplicate of a claim in
//! flight (`Nats-Msg-Id`), so of two publishers of one id — on one gateway or
//! two — exactly one goes on to store it; the other waits for the record to
//! name the sequence and answers with the original. A claim left `pending` by
//! a publisher that died is taken over after the wait, once a look at the
//! room's newest events shows the event was never stored.

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use bytes::Bytes;
use tokio::time::Instant;
use zps_core::{Envelope, NewEvent, ReplayQuery};

use super::NatsTransport;
use crate::error::{NatsError, NatsResult};

/// The value of a claimed id whose event is not stored yet.
const PENDING: &[u8] = b"pending";

/// How many of a room's newest events a takeover searches for the id.
const TAKEOVER_SCAN: u64 = 256;

/// Rounds of waiting and claiming before a publish gives up on an id.
const MAX_CLAIM_ROUNDS: usize = 1_000;

/// What claiming an id found.
pub(super) enum Claim {
    /// This publisher stores the event.
    Owned,
    /// The id was stored before: its original (or, if pruned, its sequence).
    Stored(Envelope),
}

/// The sequence a finished record names; `None` for a claim (or anything that
/// names no sequence: sequences start at 1), which is waited out like a claim.
fn stored_sequence(record: &StreamMessage) -> Option<u64> {
    std::str::from_utf8(&record.payload)
        .ok()?
        .parse()
        .ok()
        .filter(|&sequence| sequence > 0)
}

impl NatsTransport {
    /// Claims `event`'s id at once when nobody holds it (true), else false:
    /// resolve with [`Self::claim_held_id`].
    pub(super) async fn claim_free_id(&self, id_subject: &str) -> NatsResult<bool> {
        self.try_claim(id_subject, 0, true).await
    }

    /// Resolves an id someone holds: waits for its record to name the sequence
    /// (the stored original), or takes a dead publisher's claim over. It may wait
    /// `request_timeout`: callers do not hold their room's turn meanwhile.
    pub(super) async fn claim_held_id(&self, event: &NewEvent, id_subject: &str) -> NatsResult<Claim> {
        let mut deadline = Instant::now() + self.inner.config.request_timeout;
        for _ in 0..MAX_CLAIM_ROUNDS {
            let Some(record) = self.last_record(&self.inner.ids, id_subject, "id claim").await? else {
                // Expired or released meanwhile: claim it afresh.
                if self.try_claim(id_subject, 0, false).await? {
                    return Ok(Claim::Owned);
                }
                continue;
            };
            if let Some(sequence) = stored_sequence(&record) {
                return Ok(Claim::Stored(self.original(event, sequence).await?));
            }
            if Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(25)).await;
                continue;
            }
            // Still pending: its publisher is gone, maybe after storing the event.
            if let Some(found) = self.find_recent(event).await? {
                self.finish_id(id_subject, found.sequence).await;
                return Ok(Claim::Stored(found));
            }
            if self.try_claim(id_subject, record.sequence, false).await? {
                return Ok(Claim::Owned);
            }
            // Another publisher took it over first: wait for that one.
            deadline = Instant::now() + self.inner.config.request_timeout;
        }
        Err(NatsError::Contended {
            room: event.room.to_string(),
            attempts: MAX_CLAIM_ROUNDS,
        })
    }

    /// Claims many ids at once (create-only, deduplicated), sending every claim
    /// before awaiting any answer: one round trip for all. True where claimed;
    /// false where something holds the id already (resolve with [`Self::claim_held_id`]).
    pub(super) async fn claim_ids_pipelined(&self, id_subjects: &[String]) -> NatsResult<Vec<bool>> {
        let mut pending = Vec::with_capacity(id_subjects.len());
        for subject in id_subjects {
            let claim = PublishMessage::build()
                .payload(Bytes::from_static(PENDING))
                .expected_last_subject_sequence(0)
                .message_id(subject.as_str());
            pending.push(self.inner.js.send_publish(subject.clone(), claim).await);
        }
        let mut out = Vec::with_capacity(pending.len());
        for sent in pending {
            let ack = match sent {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            out.push(match ack {
                Ok(ack) => !ack.duplicate,
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => false,
                Err(e) => {
                    let unavailable = matches!(
                        e.kind(),
                        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
                    );
                    // Claims already won stay pending: a retry resolves them by looking at the room.
                    return Err(NatsError::request("id claim", e, unavailable));
                }
            });
        }
        Ok(out)
    }

    /// Writes `pending` if the id's newest record is still at `expected` (0:
    /// none); `dedup` also refuses a copy of a claim in flight. True when claimed.
    async fn try_claim(&self, id_subject: &str, expected: u64, dedup: bool) -> NatsResult<bool> {
        let mut claim = PublishMessage::build()
            .payload(Bytes::from_static(PENDING))
            .expected_last_subject_sequence(expected);
        if dedup {
            claim = claim.message_id(id_subject);
        }
        let ack = match self.inner.js.send_publish(id_subject.to_owned(), claim).await {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) => Ok(!ack.duplicate),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
            Err(e) => {
                let unavailable = matches!(
                    e.kind(),
                    PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
                );
                Err(NatsError::request("id claim", e, unavailable))
            }
        }
    }

    /// The stored event with this sequence; if pruned, the new event under it,
    /// so the caller still learns that nothing new was stored.
    async fn original(&self, event: &NewEvent, sequence: u64) -> NatsResult<Envelope> {
        Ok(match self.event_by_room_seq(&event.room, sequence).await? {
            Some(original) => original,
            None => event.to_envelope(sequence),
        })
    }

    /// The event with `event`'s id among the room's newest events.
    async fn find_recent(&self, event: &NewEvent) -> NatsResult<Option<Envelope>> {
        let subject = self.inner.subjects.event(&event.room);
        let Some(last) = self.last_message(&subject).await? else {
            return Ok(None);
        };
        let last_seq = super::read::room_seq(&last)?;
        let query = ReplayQuery::new(event.room.clone(), last_seq.saturating_sub(TAKEOVER_SCAN))
            .limit(TAKEOVER_SCAN as usize);
        let page = self.read_page(&query).await?;
        Ok(page
            .events
            .iter()
            .find(|e| e.id == event.id)
            .map(|e| (**e).clone()))
    }

    /// Replaces the claim with the event's sequence. The publisher does not
    /// wait for the server's acknowledgement: the record is sent on the same
    /// connection before the answer, so this gateway's next claim of the id
    /// finds it, and another gateway's claim waits for it. A record that never
    /// lands leaves the claim pending, which a retry resolves by looking at
    /// the room: logged, not returned, because the event is stored.
    pub(super) async fn finish_id(&self, id_subject: &str, sequence: u64) {
        let value = Bytes::from(sequence.to_string().into_bytes());
        let message = PublishMessage::build().payload(value);
        match self.inner.js.send_publish(id_subject.to_owned(), message).await {
            Ok(ack) => {
                tokio::spawn(async move {
                    if let Err(e) = ack.await {
                        tracing::warn!(error = %e, "nats: an event id record was not stored; a retry of it looks at the room");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "nats: could not send an event id record; a retry of it looks at the room");
            }
        }
    }

    /// Gives the claim up after a publish that certainly stored nothing.
    pub(super) async fn release_id(&self, id_subject: &str) {
        if let Err(e) = self
            .purge_subject(&self.inner.ids, id_subject, "id release")
            .await
        {
            tracing::warn!(error = %e, "nats: could not release an event id claim; a retry waits for it to lapse");
        }
    }
}
