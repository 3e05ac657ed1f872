//! Subscriber cursors and room snapshots, one record per subject in the state stream.

use async_trait::async_trait;
use zps_core::transport::SnapshotStore;
use zps_core::{Room, Snapshot};

use super::NatsTransport;
use super::records::Written;
use crate::error::{NatsError, NatsResult};

/// Compare-and-set rounds before an ack gives up on a cursor others keep moving.
const MAX_CURSOR_ROUNDS: usize = 32;

fn parse_cursor(subject: &str, bytes: &[u8]) -> NatsResult<u64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| NatsError::Decode(format!("cursor `{subject}` is not a sequence")))
}

impl NatsTransport {
    /// Moves the cursor forward only: a compare-and-set on the record's stream position.
    pub(super) async fn advance_cursor(
        &self,
        room: &Room,
        subscriber_id: &str,
        sequence: u64,
    ) -> NatsResult<u64> {
        let subject = self.inner.subjects.cursor(room, subscriber_id);
        for _ in 0..MAX_CURSOR_ROUNDS {
            let current = self
                .last_record(&self.inner.state, &subject, "cursor read")
                .await?;
            let expected = match &current {
                Some(msg) => {
                    let stored = parse_cursor(&subject, &msg.payload)?;
                    if stored >= sequence {
                        return Ok(stored);
                    }
                    msg.sequence
                }
                None => 0,
            };
            let value = sequence.to_string().into_bytes().into();
            match self
                .put_record(subject.clone(), value, Some(expected), "cursor write")
                .await?
            {
                Written::Stored => return Ok(sequence),
                Written::Conflict => continue,
            }
        }
        Err(NatsError::Contended {
            room: room.to_string(),
            attempts: MAX_CURSOR_ROUNDS,
        })
    }

    /// The stored cursor.
    pub(super) async fn read_cursor(&self, room: &Room, subscriber_id: &str) -> NatsResult<Option<u64>> {
        let subject = self.inner.subjects.cursor(room, subscriber_id);
        let current = self
            .last_record(&self.inner.state, &subject, "cursor read")
            .await?;
        current
            .map(|msg| parse_cursor(&subject, &msg.payload))
            .transpose()
    }
}

#[async_trait]
impl SnapshotStore for NatsTransport {
    async fn put_snapshot(&self, snapshot: Snapshot) -> zps_core::Result<()> {
        self.check_open()?;
        let json = serde_json::to_vec(&snapshot)
            .map_err(|e| zps_core::Error::InvalidEvent(format!("snapshot is not serializable: {e}")))?;
        let subject = self.inner.subjects.snapshot(&snapshot.room);
        self.put_record(subject, json.into(), None, "snapshot write")
            .await?;
        Ok(())
    }

    async fn get_snapshot(&self, room: &Room) -> zps_core::Result<Option<Snapshot>> {
        self.check_open()?;
        let subject = self.inner.subjects.snapshot(room);
        let Some(msg) = self
            .last_record(&self.inner.state, &subject, "snapshot read")
            .await?
        else {
            return Ok(None);
        };
        let snapshot =
            serde_json::from_slice(&msg.payload).map_err(|e| NatsError::Decode(format!("snapshot: {e}")))?;
        Ok(Some(snapshot))
    }
}
