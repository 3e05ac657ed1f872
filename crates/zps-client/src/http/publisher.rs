//! [`Publisher`]: durable, batch, broadcast and ephemeral publishing over HTTP.

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Api, HttpOptions, Retry};
use crate::{ClientError, Metadata, OutgoingEvent, Published, Result};

/// Publishes through a gateway's HTTP API with an API key (`publish` scope).
///
/// Every event gets an id before it leaves (yours, or a generated one), so a
/// call retried after a timeout or a 503 is stored once: the gateway answers
/// the retry with `duplicate: true` and the first sequence.
#[derive(Debug, Clone)]
pub struct Publisher {
    api: Api,
}

/// One event of a batch, as the API takes it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventBody<'a> {
    room: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    payload: &'a RawValue,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a Metadata>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    encrypted: bool,
}

/// The outcome of one event of a batch or broadcast.
pub type BatchResult = std::result::Result<Published, ClientError>;

#[derive(Deserialize)]
#[serde(untagged)]
enum ItemOut {
    Ok(Published),
    Err { error: ErrorOut },
}

#[derive(Deserialize)]
struct ErrorOut {
    code: String,
    message: String,
}

#[derive(Deserialize)]
struct BatchOut {
    results: Vec<ItemOut>,
}

impl BatchOut {
    fn into_results(self) -> Vec<BatchResult> {
        self.results
            .into_iter()
            .map(|item| match item {
                ItemOut::Ok(p) => Ok(p),
                ItemOut::Err { error } => Err(ClientError::Server {
                    code: error.code,
                    message: error.message,
                    room: None,
                }),
            })
            .collect()
    }
}

fn with_id(event: &mut OutgoingEvent) -> &str {
    event
        .request
        .id
        .get_or_insert_with(zps_model::envelope::generate_id)
}

fn body(event: &OutgoingEvent) -> EventBody<'_> {
    let event = &event.request;
    EventBody {
        room: &event.room,
        event_type: &event.event_type,
        payload: &event.payload,
        id: event.id.as_deref().unwrap_or_default(),
        ttl_ms: event
            .ttl
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        metadata: event.metadata.as_ref(),
        encrypted: event.encrypted,
    }
}

impl Publisher {
    /// A publisher for the gateway at `base_url` (`http://host:8080`) with an API key.
    pub fn new(base_url: &str, api_key: &str) -> Result<Self> {
        Self::with_options(base_url, api_key, HttpOptions::default())
    }

    /// The same with explicit timeouts and retries.
    pub fn with_options(base_url: &str, api_key: &str, options: HttpOptions) -> Result<Self> {
        Ok(Self {
            api: Api::new(base_url, api_key, options)?,
        })
    }

    /// Stores one event; retried on transient failures (the id makes it idempotent).
    pub async fn publish(&self, mut event: OutgoingEvent) -> Result<Published> {
        with_id(&mut event);
        self.api
            .json(Method::POST, "/publish", Some(&body(&event)), Retry::Safe)
            .await
    }

    /// Stores events in order (events of one room get ascending sequences in
    /// this order); one result per event. At most 1 000 events.
    pub async fn publish_batch(&self, mut events: Vec<OutgoingEvent>) -> Result<Vec<BatchResult>> {
        for e in &mut events {
            with_id(e);
        }
        #[derive(Serialize)]
        struct Batch<'a> {
            events: Vec<EventBody<'a>>,
        }
        let batch = Batch {
            events: events.iter().map(body).collect(),
        };
        let out: BatchOut = self
            .api
            .json(Method::POST, "/publish", Some(&batch), Retry::Safe)
            .await?;
        Ok(out.into_results())
    }

    /// Stores the same event in several rooms (each room's copy has id `ID:room`).
    pub async fn broadcast<T: Serialize + ?Sized>(
        &self,
        rooms: &[&str],
        event_type: &str,
        payload: &T,
    ) -> Result<Vec<BatchResult>> {
        let payload =
            serde_json::value::to_raw_value(payload).map_err(|e| ClientError::Payload(e.to_string()))?;
        let id = zps_model::envelope::generate_id();
        let body = serde_json::json!({"rooms": rooms, "type": event_type, "payload": payload, "id": id});
        let out: BatchOut = self
            .api
            .json(Method::POST, "/broadcast", Some(&body), Retry::Safe)
            .await?;
        Ok(out.into_results())
    }

    /// Fans out a not-stored event (typing, cursors) to the room's live subscribers.
    pub async fn ephemeral<T: Serialize + ?Sized>(
        &self,
        room: &str,
        event_type: &str,
        payload: &T,
    ) -> Result<()> {
        let payload =
            serde_json::value::to_raw_value(payload).map_err(|e| ClientError::Payload(e.to_string()))?;
        let body = serde_json::json!({"room": room, "type": event_type, "payload": payload});
        // Not idempotent: a retried ephemeral event could be seen twice.
        self.api
            .empty(Method::POST, "/ephemeral", Some(&body), Retry::Never)
            .await
    }
}
