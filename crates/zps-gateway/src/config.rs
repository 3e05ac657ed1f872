//! Gateway settings: limits, auth, origins, draining.

use std::time::Duration;

use crate::auth::AuthConfig;

/// Every per-connection and per-gateway limit. Each breach has its own error
/// code, and a close code where the connection cannot continue.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections (WebSocket + SSE) before new ones get 4503.
    pub max_connections: usize,
    /// Room/pattern subscriptions per connection before 4430.
    pub max_subscriptions: usize,
    /// Largest event payload (bytes of JSON) before 4413. Frames larger than this plus
    /// 16 KiB of envelope close the connection with 1009.
    pub max_payload_bytes: usize,
    /// Messages a client may send per window before 4429.
    pub max_messages_per_window: u32,
    /// The rate-limit window.
    pub rate_limit_window: Duration,
    /// Time allowed between connecting and `init` (then 4401).
    pub init_timeout: Duration,
    /// How often the server pings.
    pub heartbeat_interval: Duration,
    /// How long after a missed pong the peer counts as dead (then 4410).
    pub heartbeat_timeout: Duration,
    /// Outbound bytes queued for one connection before it is cut off as a slow consumer (4509).
    pub max_socket_buffered_bytes: usize,
    /// Whether clients may publish durable events (default false: publish from your backend).
    pub allow_client_publish: bool,
    /// Whether clients may publish ephemeral events (typing, cursors).
    pub allow_client_ephemeral: bool,
    /// Largest `limit` a `replay_request` may ask for.
    pub max_replay_limit: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_subscriptions: 128,
            max_payload_bytes: 64 * 1024,
            max_messages_per_window: 100,
            rate_limit_window: Duration::from_secs(1),
            init_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(10),
            max_socket_buffered_bytes: 1024 * 1024,
            allow_client_publish: false,
            allow_client_ephemeral: true,
            max_replay_limit: 1_000,
        }
    }
}

impl Limits {
    /// Largest WebSocket message accepted (payload limit plus envelope slack).
    pub fn max_frame_bytes(&self) -> usize {
        self.max_payload_bytes.saturating_add(16 * 1024)
    }
}

/// Everything the gateway needs besides the engine.
#[derive(Clone, Default)]
pub struct GatewayConfig {
    /// Limits.
    pub limits: Limits,
    /// Authentication and authorization.
    pub auth: AuthConfig,
    /// Browser origins allowed to connect (`None` = any). Requests without an
    /// `Origin` header (non-browser clients) are always allowed.
    pub allowed_origins: Option<Vec<String>>,
    /// How long a drain waits for sockets to close before closing the transport.
    pub drain_timeout: Option<Duration>,
    /// Reconnect delay hinted to SSE clients (`retry:`).
    pub sse_retry: Option<Duration>,
    /// The HTTP API under `/api/v1`.
    pub api: crate::api::ApiConfig,
    /// Serve the demo chat page at `/demo/` (built from `clients/js/demo`).
    pub demo: bool,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("limits", &self.limits)
            .field("auth", &self.auth)
            .field("allowed_origins", &self.allowed_origins)
            .field("drain_timeout", &self.drain_timeout)
            .field("api", &self.api)
            .finish()
    }
}
