//! Reading history: a room's head, its position in the stream, pages of events.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, RawMessageErrorKind};
use futures::StreamExt;
use zps_core::transport::MAX_REPLAY_LIMIT;
use zps_core::{Envelope, ReplayPage, ReplayQuery, Room, RoomInfo, Timestamp};

use super::NatsTransport;
use crate::error::{NatsError, NatsResult};

/// Header carrying an event's room sequence, so a probe need not parse the envelope.
pub(super) const SEQ_HEADER: &str = "Zps-Seq";

/// Widest sequence range one page examines when a type filter is set: a rarely
/// matching filter pages through long histories in windows of this size.
const SCAN_WINDOW: usize = MAX_REPLAY_LIMIT;

/// Pages this short are read message by message; longer ones through a consumer.
const DIRECT_READ_MAX: usize = 8;

/// The room sequence of a stored event.
pub(super) fn room_seq(msg: &StreamMessage) -> NatsResult<u64> {
    msg.headers
        .get(SEQ_HEADER)
        .and_then(|v| v.as_str().parse().ok())
        .ok_or_else(|| {
            NatsError::Decode(format!(
                "message {} on `{}` has no {SEQ_HEADER} header",
                msg.sequence, msg.subject
            ))
        })
}

/// The envelope a stored event carries.
pub(super) fn decode_envelope(payload: &[u8]) -> NatsResult<Envelope> {
    serde_json::from_slice(payload).map_err(|e| NatsError::Decode(format!("stored event: {e}")))
}

impl NatsTransport {
    /// The room's newest event, or `None` for a room never published to.
    pub(super) async fn last_message(&self, subject: &str) -> NatsResult<Option<StreamMessage>> {
        match self.inner.events.get_last_raw_message_by_subject(subject).await {
            Ok(msg) => Ok(Some(msg)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(NatsError::request("read", e, true)),
        }
    }

    /// The first event of `subject` at stream position `from` or later.
    pub(super) async fn first_from(&self, subject: &str, from: u64) -> NatsResult<Option<StreamMessage>> {
        match self
            .inner
            .events
            .get_first_raw_message_by_subject(subject, from.max(1))
            .await
        {
            Ok(msg) => Ok(Some(msg)),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(NatsError::request("read", e, true)),
        }
    }

    /// The event stored at a stream position.
    pub(super) async fn event_at(&self, stream_seq: u64) -> NatsResult<Envelope> {
        let msg = self
            .inner
            .events
            .get_raw_message(stream_seq)
            .await
            .map_err(|e| NatsError::request("read", e, true))?;
        decode_envelope(&msg.payload)
    }

    /// The room's event with this sequence, if still stored.
    pub(super) async fn event_by_room_seq(&self, room: &Room, sequence: u64) -> NatsResult<Option<Envelope>> {
        let Some(after) = sequence.checked_sub(1) else {
            // Sequences start at 1: a record naming 0 names nothing.
            return Ok(None);
        };
        let subject = self.inner.subjects.event(room);
        let Some(last) = self.last_message(&subject).await? else {
            return Ok(None);
        };
        let Some(msg) = self.locate(&subject, after, last).await? else {
            return Ok(None);
        };
        if room_seq(&msg)? != sequence {
            return Ok(None);
        }
        decode_envelope(&msg.payload).map(Some)
    }

    /// The room's first stored event with a sequence after `after`, found by
    /// bisection over stream positions (the room's events are in sequence
    /// order in the stream); `last` is the room's newest event.
    pub(super) async fn locate(
        &self,
        subject: &str,
        after: u64,
        last: StreamMessage,
    ) -> NatsResult<Option<StreamMessage>> {
        if room_seq(&last)? <= after {
            return Ok(None);
        }
        if room_seq(&last)? == after + 1 {
            return Ok(Some(last));
        }
        let Some(first) = self.first_from(subject, 1).await? else {
            return Ok(None);
        };
        if room_seq(&first)? > after {
            return Ok(Some(first));
        }
        // Invariant: the event at or after `lo` is at most `after`; the first
        // event at or after `hi` (`best`) is past it.
        let (mut lo, mut hi, mut best) = (first.sequence, last.sequence, last);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let Some(probe) = self.first_from(subject, mid).await? else {
                // Pruned while we searched: start over from what is left.
                return Box::pin(self.locate_again(subject, after)).await;
            };
            if room_seq(&probe)? > after {
                hi = mid;
                best = probe;
            } else {
                lo = probe.sequence.max(mid);
            }
        }
        Ok(Some(best))
    }

    async fn locate_again(&self, subject: &str, after: u64) -> NatsResult<Option<StreamMessage>> {
        match self.last_message(subject).await? {
            Some(last) => self.locate(subject, after, last).await,
            None => Ok(None),
        }
    }

    /// Up to `count` events of `subject` from stream position `start` on.
    async fn read_from(
        &self,
        subject: &str,
        start: StreamMessage,
        count: usize,
    ) -> NatsResult<Vec<StreamMessage>> {
        let mut out = Vec::with_capacity(count);
        if count <= DIRECT_READ_MAX {
            let mut next = Some(start);
            while let Some(msg) = next.take() {
                let position = msg.sequence;
                out.push(msg);
                if out.len() == count {
                    break;
                }
                next = self.first_from(subject, position + 1).await?;
            }
            return Ok(out);
        }
        let start_sequence = start.sequence;
        out.push(start);
        let consumer = self
            .inner
            .events
            .create_consumer(pull::Config {
                filter_subject: subject.to_owned(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start_sequence + 1,
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| NatsError::request("read", e, true))?;
        let name = consumer.cached_info().name.clone();
        let fetched = async {
            let mut batch = consumer
                .fetch()
                .max_messages(count - 1)
                .messages()
                .await
                .map_err(|e| NatsError::request("read", e, true))?;
            while let Some(msg) = batch.next().await {
                let msg = msg.map_err(|e| NatsError::request("read", e, true))?;
                let info = msg.info().map_err(|e| NatsError::Decode(e.to_string()))?;
                let sequence = info.stream_sequence;
                let headers = msg.headers.clone().unwrap_or_default();
                out.push(StreamMessage {
                    subject: msg.subject.clone(),
                    sequence,
                    headers,
                    payload: msg.payload.clone(),
                    time: info.published,
                });
                if out.len() == count {
                    break;
                }
            }
            Ok::<_, NatsError>(())
        }
        .await;
        // The consumer would expire by itself; deleting it keeps the server tidy.
        let stream = self.inner.events.clone();
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        fetched?;
        Ok(out)
    }

    /// One page of a room's history.
    pub(super) async fn read_page(&self, query: &ReplayQuery) -> NatsResult<ReplayPage> {
        let from = query.from_sequence;
        let mut page = ReplayPage {
            events: Vec::new(),
            scanned_to: from,
            exhausted: true,
        };
        let subject = self.inner.subjects.event(&query.room);
        let Some(last) = self.last_message(&subject).await? else {
            return Ok(page);
        };
        let bound = room_seq(&last)?.min(query.to_sequence.unwrap_or(u64::MAX));
        if from >= bound {
            return Ok(page);
        }
        let window = if query.event_types.is_some() {
            SCAN_WINDOW
        } else {
            query.effective_limit()
        };
        let Some(start) = self.locate(&subject, from, last).await? else {
            return Ok(page);
        };
        let span = usize::try_from(bound - from).unwrap_or(usize::MAX);
        let messages = self.read_from(&subject, start, window.min(span)).await?;
        let now = Timestamp::now();
        let limit = query.effective_limit();
        for msg in messages {
            let sequence = room_seq(&msg)?;
            if sequence > bound || page.events.len() == limit {
                break;
            }
            if sequence <= from {
                continue;
            }
            page.scanned_to = sequence;
            let envelope = decode_envelope(&msg.payload)?;
            if envelope.is_expired_at(now) || !query.accepts_type(&envelope.event_type) {
                continue;
            }
            page.events.push(std::sync::Arc::new(envelope));
        }
        page.exhausted = page.scanned_to >= bound;
        Ok(page)
    }

    /// The room's epoch and retained range.
    pub(super) async fn read_room_info(&self, room: &Room) -> NatsResult<RoomInfo> {
        let subject = self.inner.subjects.event(room);
        let epoch = self.inner.epoch.clone();
        let Some(last) = self.last_message(&subject).await? else {
            return Ok(RoomInfo {
                epoch,
                last_sequence: 0,
                earliest_sequence: 1,
            });
        };
        let last_sequence = room_seq(&last)?;
        let first = match self.first_from(&subject, 1).await? {
            Some(first) => first,
            None => last,
        };
        let earliest_sequence = if room_seq(&first)? == last_sequence
            && decode_envelope(&first.payload)?.is_expired_at(Timestamp::now())
        {
            // Only the newest event is left, kept for its sequence, and it expired.
            last_sequence + 1
        } else {
            room_seq(&first)?
        };
        Ok(RoomInfo {
            epoch,
            last_sequence,
            earliest_sequence,
        })
    }
}
