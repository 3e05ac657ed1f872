//! Hosted mode: publish and manage through a gateway's HTTP API (`/api/v1`)
//! with an API key — the Rust twin of the seeds' cloud-mode publisher, for
//! backends that should not hold a WebSocket or a database connection.
//!
//! [`Publisher`] stores events (ids are generated when absent, so a retried
//! publish is stored once); [`Admin`] reads rooms, history, presence and dead
//! letters and acts on them; [`Admin::mint_token`] gives a client a short-lived
//! token for [`crate::Client`] on a hosted gateway.
//!
//! ```no_run
//! # async fn run() -> zps_client::Result<()> {
//! use zps_client::OutgoingEvent;
//! use zps_client::http::Publisher;
//!
//! let publisher = Publisher::new("http://127.0.0.1:8080", "zps_...")?;
//! let receipt = publisher
//!     .publish(OutgoingEvent::new("chat:42", "message.created", &serde_json::json!({"text": "hi"}))?)
//!     .await?;
//! println!("stored as #{}", receipt.sequence);
//! # Ok(()) }
//! ```

mod admin;
mod publisher;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use admin::{
    Admin, Closed, DlqIndex, DlqPage, DlqRoom, EventsPage, EventsQuery, MintedToken, PresenceList, Replayed,
    RoomCount, RoomList, RoomState,
};
pub use publisher::{BatchResult, Publisher};

use crate::{Backoff, ClientError, Result};

/// Timeouts and retries of the HTTP clients.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Bound on one request, connection included.
    pub timeout: Duration,
    /// Attempts after the first for retryable calls (connection failures,
    /// 429, 502, 503, 504); calls that are not idempotent are never retried.
    pub retries: u32,
    /// Delay between attempts (full jitter).
    pub backoff: Backoff,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            retries: 3,
            backoff: Backoff {
                base: Duration::from_millis(100),
                cap: Duration::from_secs(2),
                max_attempts: None,
            },
        }
    }
}

/// The shared HTTP core: base URL, bearer credential, retries, error decoding.
#[derive(Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
    bearer: String,
    options: HttpOptions,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Api")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Whether a call may be sent again without a second effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    Safe,
    Never,
}

impl Api {
    pub(crate) fn new(base_url: &str, credential: &str, options: HttpOptions) -> Result<Self> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::InvalidUrl {
                url: base_url.to_owned(),
                reason: "expected an http:// or https:// base URL".into(),
            });
        }
        if credential.is_empty() {
            return Err(ClientError::InvalidOption(
                "an API key or token is required".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(Self {
            http,
            base,
            bearer: format!("Bearer {credential}"),
            options,
        })
    }

    /// Sends a request and decodes a JSON answer.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&dyn ErasedBody>,
        retry: Retry,
    ) -> Result<T> {
        let (_, bytes) = self.send(method, path, body, retry).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(format!("unreadable answer: {e}")))
    }

    /// Sends a request whose answer has no body worth reading.
    pub(crate) async fn empty(
        &self,
        method: Method,
        path: &str,
        body: Option<&dyn ErasedBody>,
        retry: Retry,
    ) -> Result<()> {
        self.send(method, path, body, retry).await.map(|_| ())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&dyn ErasedBody>,
        retry: Retry,
    ) -> Result<(StatusCode, Vec<u8>)> {
        let body = body.map(ErasedBody::to_json).transpose()?;
        let url = format!("{}/api/v1{path}", self.base);
        let mut attempt = 0u32;
        loop {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header(reqwest::header::AUTHORIZATION, &self.bearer);
            if let Some(b) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            let (transient, error) = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    match resp.bytes().await {
                        Ok(bytes) if status.is_success() => return Ok((status, bytes.to_vec())),
                        Ok(bytes) => (retryable(status), server_error(status, &bytes)),
                        Err(e) => (true, transport(e, self.options.timeout)),
                    }
                }
                Err(e) => (true, transport(e, self.options.timeout)),
            };
            if !transient || retry == Retry::Never || attempt >= self.options.retries {
                return Err(error);
            }
            let delay = self.options.backoff.delay(attempt, &mut rand::rng());
            tracing::debug!(%error, attempt, ?delay, "HTTP API call failed; retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

/// A request body, serialized once and re-sent as is on retries.
pub(crate) trait ErasedBody: Sync {
    fn to_json(&self) -> Result<Vec<u8>>;
}

impl<T: Serialize + Sync> ErasedBody for T {
    fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| ClientError::Payload(e.to_string()))
    }
}

fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

fn transport(e: reqwest::Error, timeout: Duration) -> ClientError {
    if e.is_timeout() {
        ClientError::Timeout(timeout)
    } else {
        ClientError::Transport(e.to_string())
    }
}

/// The API's error shape, `{"error":{"code","message"}}`, as a [`ClientError::Server`].
fn server_error(status: StatusCode, body: &[u8]) -> ClientError {
    #[derive(serde::Deserialize)]
    struct Shape {
        error: Detail,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        code: String,
        message: String,
    }
    match serde_json::from_slice::<Shape>(body) {
        Ok(s) => ClientError::Server {
            code: s.error.code,
            message: s.error.message,
            room: None,
        },
        Err(_) => ClientError::Server {
            code: status.as_u16().to_string(),
            message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            room: None,
        },
    }
}

/// A path segment, percent-encoded (rooms hold `:`).
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
