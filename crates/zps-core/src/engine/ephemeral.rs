//! Ephemeral events: fanned out to live subscribers, never stored, numbered or
//! replayed (typing indicators, cursors).

use super::*;

/// What to fan out as an ephemeral event.
#[derive(Debug, Clone)]
pub struct EphemeralRequest {
    /// Target room.
    pub room: Room,
    /// Event type (`typing`, `cursor.moved`, ...).
    pub event_type: String,
    /// Payload JSON.
    pub payload: Payload,
    /// Optional metadata.
    pub metadata: Option<Metadata>,
    /// The sender (connection or subscriber id), so fan-outs can skip it.
    pub origin: Option<String>,
}

impl EphemeralRequest {
    /// An ephemeral event with a serializable payload.
    pub fn new<T: Serialize + ?Sized>(
        room: Room,
        event_type: impl Into<String>,
        payload: &T,
    ) -> Result<Self> {
        Ok(Self {
            room,
            event_type: event_type.into(),
            payload: to_payload(payload)?,
            metadata: None,
            origin: None,
        })
    }
}

impl Realtime {
    /// Fans out an event that is not stored, numbered or replayed.
    pub async fn publish_ephemeral(&self, request: EphemeralRequest) -> Result<()> {
        self.inner.check_open()?;
        crate::envelope::validate_token("event type", &request.event_type)?;
        let event = Arc::new(EphemeralEvent {
            event_type: request.event_type,
            room: request.room,
            payload: request.payload,
            emitted_at: Timestamp::now(),
            metadata: request.metadata,
            origin: request.origin,
        });
        let transport = self.inner.transport.clone();
        let mut ctx = Context::new(Action::EphemeralPublish).with_room(event.room.clone());
        ctx.ephemeral = Some(event);
        self.inner
            .run(ctx, move |ctx| async move {
                let Some(event) = ctx.ephemeral.clone() else {
                    return Err(Error::Rejected("middleware removed the event".into()));
                };
                transport.require_ephemeral()?.publish_ephemeral(event).await?;
                Ok(ctx)
            })
            .await?;
        self.inner.metrics.ephemeral_published();
        Ok(())
    }

    /// Live ephemeral events of these rooms/patterns, optionally filtered by type.
    pub async fn subscribe_ephemeral(
        &self,
        patterns: &[RoomPattern],
        event_types: Option<Vec<String>>,
    ) -> Result<BoxStream<'static, Arc<EphemeralEvent>>> {
        self.inner.check_open()?;
        let stream = self
            .inner
            .transport
            .require_ephemeral()?
            .subscribe_ephemeral(patterns)
            .await?;
        let inner = self.inner.clone();
        let has_middleware = !inner.chain().is_empty();
        Ok(stream
            .filter(move |e| {
                let keep = event_types
                    .as_ref()
                    .is_none_or(|t| t.iter().any(|t| *t == e.event_type));
                std::future::ready(keep)
            })
            .filter_map(move |e| {
                let inner = inner.clone();
                async move {
                    if !has_middleware {
                        return Some(e);
                    }
                    let mut ctx = Context::new(Action::EphemeralDeliver).with_room(e.room.clone());
                    ctx.ephemeral = Some(e);
                    inner
                        .run(ctx, |ctx| async move { Ok(ctx) })
                        .await
                        .ok()
                        .and_then(|ctx| ctx.ephemeral)
                }
            })
            .boxed())
    }
}
