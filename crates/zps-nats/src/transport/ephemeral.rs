//! Ephemeral events on core NATS subjects: delivered live, never stored.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use zps_core::transport::{EphemeralBus, EphemeralStream};
use zps_core::{EphemeralEvent, RoomPattern};

use super::NatsTransport;
use crate::error::NatsError;

#[async_trait]
impl EphemeralBus for NatsTransport {
    async fn publish_ephemeral(&self, event: Arc<EphemeralEvent>) -> zps_core::Result<()> {
        self.check_open()?;
        let json = serde_json::to_vec(&*event).map_err(|e| {
            zps_core::Error::InvalidEvent(format!("ephemeral event is not serializable: {e}"))
        })?;
        self.inner
            .client
            .publish(self.inner.subjects.ephemeral(&event.room), json.into())
            .await
            .map_err(|e| NatsError::request("ephemeral publish", e, true))?;
        Ok(())
    }

    async fn subscribe_ephemeral(&self, patterns: &[RoomPattern]) -> zps_core::Result<EphemeralStream> {
        self.check_open()?;
        let mut subscriptions = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            let subscriber = self
                .inner
                .client
                .subscribe(self.inner.subjects.ephemeral_filter(pattern))
                .await
                .map_err(|e| NatsError::request("ephemeral subscribe", e, true))?;
            subscriptions.push(subscriber);
        }
        // The server has the interest once the flush returns: later publishes reach us.
        self.inner
            .client
            .flush()
            .await
            .map_err(|e| NatsError::request("ephemeral subscribe", e, true))?;
        let merged = futures::stream::select_all(subscriptions).filter_map(|msg| async move {
            match serde_json::from_slice::<EphemeralEvent>(&msg.payload) {
                Ok(event) => Some(Arc::new(event)),
                Err(e) => {
                    tracing::warn!(error = %e, subject = %msg.subject, "nats: skipping an undecodable ephemeral event");
                    None
                }
            }
        });
        Ok(merged.boxed())
    }
}
