//! Pruning expired events: each room's expired prefix is purged, but a room's
//! newest event always stays, so its sequence survives and continues.

use async_trait::async_trait;
use futures::TryStreamExt;
use zps_core::Timestamp;
use zps_core::transport::Retention;

use super::NatsTransport;
use super::read::decode_envelope;
use crate::error::{NatsError, NatsResult};

impl NatsTransport {
    /// Purges the expired events at the start of one room's subject; returns how many.
    async fn prune_subject(&self, subject: &str, now: Timestamp) -> NatsResult<u64> {
        let Some(mut msg) = self.first_from(subject, 1).await? else {
            return Ok(0);
        };
        let Some(last) = self.last_message(subject).await? else {
            return Ok(0);
        };
        // Events of one room share a TTL rule only by convention, so walk
        // until the first unexpired one (or the newest, which is kept).
        while msg.sequence < last.sequence && decode_envelope(&msg.payload)?.is_expired_at(now) {
            match self.first_from(subject, msg.sequence + 1).await? {
                Some(next) => msg = next,
                None => break,
            }
        }
        let Some(first) = self.first_from(subject, 1).await? else {
            return Ok(0);
        };
        if first.sequence >= msg.sequence {
            return Ok(0);
        }
        let purged = self
            .inner
            .events
            .purge()
            .filter(subject)
            .sequence(msg.sequence)
            .await
            .map_err(|e| NatsError::request("prune", e, true))?;
        Ok(purged.purged)
    }
}

#[async_trait]
impl Retention for NatsTransport {
    async fn prune_expired(&self) -> zps_core::Result<u64> {
        self.check_open()?;
        let now = Timestamp::now();
        let info = self
            .inner
            .events
            .info_with_subjects(self.inner.subjects.all_events())
            .await
            .map_err(|e| NatsError::request("prune", e, true))?;
        let subjects: Vec<(String, usize)> = info
            .try_collect()
            .await
            .map_err(|e| NatsError::request("prune", e, true))?;
        let mut removed = 0;
        for (subject, count) in subjects {
            if count > 1 {
                removed += self.prune_subject(&subject, now).await?;
            }
        }
        Ok(removed)
    }
}
