//! The zero-pub-sub gateway: WebSocket (`/`, `/ws`) and SSE (`/events`)
//! endpoints speaking the wire protocol of `zps-protocol`, with auth, limits,
//! `/health`, `/live`, `/ready` and Prometheus `/metrics`. Browsers and apps
//! talk to the gateway; database credentials never leave the server.
//!
//! ```no_run
//! use zps_core::Realtime;
//! use zps_gateway::{Gateway, GatewayConfig};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gateway = Gateway::new(Realtime::memory(), GatewayConfig::default())?;
//! // Mount into an existing axum app...
//! let app = axum::Router::new().merge(gateway.router());
//! # let _ = app;
//! // ...or serve it directly until `gateway.shutdown()` drains it.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! gateway.serve(listener).await?;
//! # Ok(()) }
//! ```

pub mod access;
pub mod api;
pub mod attest;
pub mod auth;
mod cluster;
mod config;
mod conn;
mod demo;
mod frame_counters;
mod frames;
mod gateway_state;
mod http;
pub mod jwks;
mod outbox;
mod publish_queue;
mod replay;
mod room_hub;
mod session;
mod sse;
pub mod tls;
mod writer;
mod ws;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use zps_core::Realtime;

pub use auth::{AuthAction, AuthConfig, AuthorizeRequest, Authorizer, Claims, JwtKey};
pub use config::{GatewayConfig, Limits};
pub use http::GatewayHealth;

use gateway_state::GatewayState;

/// Errors building a gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The JWT public key could not be parsed.
    #[error("invalid JWT key: {0}")]
    InvalidJwtKey(String),
    /// A setting is out of range.
    #[error("invalid gateway config: {0}")]
    InvalidConfig(String),
}

/// Installs the process-wide Prometheus recorder once; `None` when the
/// application already installed another `metrics` recorder.
pub fn prometheus_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("seconds".into()),
                &zps_core::metrics::SECONDS_BUCKETS,
            );
            let builder = match builder {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "prometheus buckets rejected");
                    PrometheusBuilder::new()
                }
            };
            match builder.install_recorder() {
                Ok(handle) => {
                    zps_core::metrics::export_on_scrape();
                    spawn_upkeep(handle.clone());
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not install the Prometheus recorder; /metrics disabled");
                    None
                }
            }
        })
        .clone()
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// A recorder installed with `install_recorder` keeps every histogram sample
/// until upkeep folds it into the buckets; scrapes do that, but a gateway nobody
/// scrapes would grow by 8 bytes per sample forever (found by the fault suite's
/// memory soak: +9 MiB in 30 min). One thread per process, like the exporter's own.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("zps-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(METRICS_UPKEEP);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no metrics upkeep thread: histograms are folded only when /metrics is scraped");
    }
}

/// A gateway over one engine; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<GatewayState>,
}

/// Log directives to append to any filter: the WebSocket and HTTP libraries
/// print whole frames and requests at TRACE (tokens included), so they are
/// held at `info` whatever `RUST_LOG` says.
pub const LOG_CLAMPS: &[&str] = &[
    "tungstenite=info",
    "tokio_tungstenite=info",
    "hyper=info",
    "hyper_util=info",
    "h2=info",
];

impl Gateway {
    /// Builds a gateway; fails on an unusable JWT key or limits.
    pub fn new(engine: Realtime, config: GatewayConfig) -> Result<Self, GatewayError> {
        let limits = &config.limits;
        if limits.max_connections == 0 || limits.max_subscriptions == 0 || limits.max_messages_per_window == 0
        {
            return Err(GatewayError::InvalidConfig(
                "max_connections, max_subscriptions and max_messages_per_window must be at least 1".into(),
            ));
        }
        if limits.heartbeat_interval.is_zero() || limits.rate_limit_window.is_zero() {
            return Err(GatewayError::InvalidConfig(
                "heartbeat_interval and rate_limit_window must be positive".into(),
            ));
        }
        let verifier = match &config.auth.jwt {
            Some(key) => Some(
                auth::JwtVerifier::new(key, config.auth.leeway.unwrap_or(Duration::from_secs(5)))
                    .map_err(|e| GatewayError::InvalidJwtKey(e.to_string()))?
                    .with_claims(config.auth.issuer.as_deref(), config.auth.audience.as_deref()),
            ),
            None => None,
        };
        if let Some(v) = &verifier {
            v.start_refresh();
        }
        let shared = Arc::new(GatewayState::new(engine, config, verifier, prometheus_handle()));
        // A report outlives its presence entry's TTL only if it is refreshed in time.
        let every = shared
            .config
            .api
            .cluster_report_interval
            .clamp(Duration::from_millis(50), shared.engine.config().presence_ttl / 2);
        cluster::start(&shared, every);
        cluster::follow_kicks(&shared);
        Ok(Self { shared })
    }

    /// Fetches the JWKS now when tokens are verified with one (else does nothing): call
    /// before serving to fail fast on a wrong URL or CA instead of refusing the first tokens.
    pub async fn load_keys(&self) -> Result<usize, jwks::JwksError> {
        match &self.shared.verifier {
            Some(v) => v.load_keys().await,
            None => Ok(0),
        }
    }

    /// The engine behind the gateway (publish from your backend through it).
    pub fn engine(&self) -> &Realtime {
        &self.shared.engine
    }

    /// The routes, ready to serve or to merge into an existing axum app.
    pub fn router(&self) -> Router {
        let api = if self.shared.config.api.enabled {
            api::router(&self.shared)
        } else {
            Router::new()
        };
        let browser = Router::new()
            .merge(api)
            .route("/events", get(sse::handler))
            .layer(http::cors(&self.shared));
        let demo = if self.shared.config.demo {
            Router::new()
                .route("/demo", get(demo::to_index))
                .route("/demo/", get(demo::index))
                .route("/demo/demo.js", get(demo::script))
        } else {
            Router::new()
        };
        Router::new()
            .merge(browser)
            .merge(demo)
            .route("/", get(demo::root))
            .route("/ws", get(ws::handler))
            .route("/health", get(http::health))
            .route("/live", get(http::live))
            .route("/ready", get(http::ready))
            .route("/metrics", get(http::metrics))
            .with_state(self.shared.clone())
    }

    /// Serves on `listener` until [`Gateway::shutdown`] is called.
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        let token = self.shared.drain.clone();
        // Realtime frames are small: Nagle's algorithm would hold them back waiting
        // for ACKs (tens of milliseconds with delayed ACKs).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.shared.connections()
    }

    /// Health as served on `/health`.
    pub async fn health(&self) -> GatewayHealth {
        http::health_of(&self.shared).await
    }

    /// Drains: stop accepting, close every socket with 1012 (clients reconnect
    /// elsewhere with jitter), wait for them (bounded), then close the transport.
    pub async fn shutdown(&self) {
        let gw = &self.shared;
        if gw.draining.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        tracing::info!(connections = gw.connections(), "draining gateway");
        gw.tasks.close();
        gw.drain.cancel();
        gw.close_all(zps_protocol::CloseCode::ServiceRestart);
        let bound = gw.config.drain_timeout.unwrap_or(Duration::from_secs(10));
        if tokio::time::timeout(bound, gw.tasks.wait()).await.is_err() {
            tracing::warn!(left = gw.tasks.len(), "drain timed out; closing anyway");
        }
        if let Err(e) = gw.engine.close().await {
            tracing::warn!(error = %e, "closing the transport failed");
        }
        tracing::info!(remaining = gw.connections(), "gateway drained");
    }
}
