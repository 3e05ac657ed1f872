//! Dead letters in a stream of their own: a subject per room, the stream
//! position as entry id.

use std::collections::BTreeMap;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::RawMessageErrorKind;
use async_trait::async_trait;
use futures::TryStreamExt;
use serde::Deserialize;
use zps_core::transport::DeadLetterStore;
use zps_core::{DlqEntry, DlqRoom, Envelope, NewDlqEntry, Room, Timestamp};

use super::NatsTransport;
use crate::error::{NatsError, NatsResult};

/// A dead letter as stored (the entry id is the stream position, not stored).
#[derive(serde::Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredDeadLetter {
    event: Envelope,
    error: String,
    attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subscriber_id: Option<String>,
    failed_at: Timestamp,
}

fn decode(room: &Room, msg: &StreamMessage) -> NatsResult<DlqEntry> {
    let stored: StoredDeadLetter =
        serde_json::from_slice(&msg.payload).map_err(|e| NatsError::Decode(format!("dead letter: {e}")))?;
    Ok(DlqEntry {
        entry_id: msg.sequence,
        room: room.clone(),
        event: stored.event,
        error: stored.error,
        attempts: stored.attempts,
        subscriber_id: stored.subscriber_id,
        failed_at: stored.failed_at,
    })
}

impl NatsTransport {
    async fn dead_letter_at_or_after(&self, subject: &str, from: u64) -> NatsResult<Option<StreamMessage>> {
        match self
            .inner
            .dead_letters
            .get_first_raw_message_by_subject(subject, from.max(1))
            .await
        {
            Ok(msg) => Ok(Some(msg)),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(NatsError::request("dead-letter read", e, true)),
        }
    }

    /// Subject → count of every room's dead letters (the server's per-subject state).
    async fn dead_letter_counts(&self, filter: &str) -> NatsResult<BTreeMap<String, usize>> {
        let info = self
            .inner
            .dead_letters
            .info_with_subjects(filter)
            .await
            .map_err(|e| NatsError::request("dead-letter index", e, true))?;
        info.try_collect()
            .await
            .map_err(|e| NatsError::request("dead-letter index", e, true))
    }
}

#[async_trait]
impl DeadLetterStore for NatsTransport {
    async fn dlq_write(&self, room: &Room, entry: NewDlqEntry) -> zps_core::Result<DlqEntry> {
        self.check_open()?;
        let stored = StoredDeadLetter {
            event: entry.event,
            error: entry.error,
            attempts: entry.attempts,
            subscriber_id: entry.subscriber_id,
            failed_at: entry.failed_at,
        };
        let json = serde_json::to_vec(&stored)
            .map_err(|e| zps_core::Error::InvalidEvent(format!("dead letter is not serializable: {e}")))?;
        let ack = self
            .inner
            .js
            .publish(self.inner.subjects.dead_letter(room), json.into())
            .await
            .map_err(|e| NatsError::request("dead-letter write", e, true))?
            .await
            .map_err(|e| NatsError::request("dead-letter write", e, true))?;
        Ok(DlqEntry {
            entry_id: ack.sequence,
            room: room.clone(),
            event: stored.event,
            error: stored.error,
            attempts: stored.attempts,
            subscriber_id: stored.subscriber_id,
            failed_at: stored.failed_at,
        })
    }

    async fn dlq_list(&self, room: &Room, after: u64, limit: usize) -> zps_core::Result<Vec<DlqEntry>> {
        self.check_open()?;
        let subject = self.inner.subjects.dead_letter(room);
        let mut out = Vec::new();
        let mut next = after + 1;
        while out.len() < limit {
            let Some(msg) = self.dead_letter_at_or_after(&subject, next).await? else {
                break;
            };
            next = msg.sequence + 1;
            out.push(decode(room, &msg)?);
        }
        Ok(out)
    }

    async fn dlq_remove(&self, room: &Room, entry_ids: &[u64]) -> zps_core::Result<u64> {
        self.check_open()?;
        let subject = self.inner.subjects.dead_letter(room);
        let mut removed = 0;
        for &id in entry_ids {
            // Only this room's entries: an id from another room is not ours to delete.
            let owned = match self.inner.dead_letters.get_raw_message(id).await {
                Ok(msg) => msg.subject.as_str() == subject,
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => false,
                Err(e) => return Err(NatsError::request("dead-letter remove", e, true).into()),
            };
            if owned
                && self
                    .inner
                    .dead_letters
                    .delete_message(id)
                    .await
                    .map_err(|e| NatsError::request("dead-letter remove", e, true))?
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn dlq_len(&self, room: &Room) -> zps_core::Result<u64> {
        self.check_open()?;
        let subject = self.inner.subjects.dead_letter(room);
        let counts = self.dead_letter_counts(&subject).await?;
        Ok(counts.get(&subject).map_or(0, |n| *n as u64))
    }

    async fn dlq_rooms(
        &self,
        prefix: &str,
        after: Option<&Room>,
        limit: usize,
    ) -> zps_core::Result<Vec<DlqRoom>> {
        self.check_open()?;
        let counts = self
            .dead_letter_counts(&self.inner.subjects.all_dead_letters())
            .await?;
        let mut rooms: Vec<DlqRoom> = counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .filter_map(|(subject, n)| {
                let room = self.inner.subjects.dead_letter_room(&subject)?;
                Some(DlqRoom { room, len: n as u64 })
            })
            .filter(|r| {
                r.room.as_str().starts_with(prefix) && after.is_none_or(|a| r.room.as_str() > a.as_str())
            })
            .collect();
        // Subjects sort by their encoding; the index promises the rooms' byte order.
        rooms.sort_by(|a, b| a.room.as_str().cmp(b.room.as_str()));
        rooms.truncate(limit);
        Ok(rooms)
    }
}
