//! Plain HTTP endpoints: `/health`, `/live`, `/ready`, `/metrics`, and the origin check.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use zps_core::{HealthStatus, MetricsSnapshot, TransportHealth};

use crate::gateway_state::GatewayState;

/// What `GET /health` answers.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayHealth {
    /// `healthy`, `degraded`, `unhealthy` or `draining`.
    pub status: &'static str,
    /// Open connections.
    pub connections: usize,
    /// Running room hubs (one per room or pattern with local subscribers).
    pub hubs: usize,
    /// Whether the gateway is shutting down.
    pub draining: bool,
    /// The transport's report.
    pub transport: TransportHealth,
    /// Engine counters.
    pub metrics: MetricsSnapshot,
}

impl GatewayHealth {
    /// Whether orchestrators should consider the gateway serving.
    pub fn is_ok(&self) -> bool {
        matches!(self.status, "healthy" | "degraded")
    }
}

pub(crate) async fn health_of(gw: &GatewayState) -> GatewayHealth {
    let health = gw.engine.health().await;
    let draining = gw.is_draining();
    let status = if draining {
        "draining"
    } else {
        match health.status {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        }
    };
    GatewayHealth {
        status,
        connections: gw.connections(),
        hubs: gw.hubs.len(),
        draining,
        transport: health.transport,
        metrics: health.metrics,
    }
}

pub(crate) async fn health(State(gw): State<Arc<GatewayState>>) -> Response {
    let h = health_of(&gw).await;
    let code = if h.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(h)).into_response()
}

pub(crate) async fn live() -> &'static str {
    "ok"
}

pub(crate) async fn ready(State(gw): State<Arc<GatewayState>>) -> Response {
    let h = health_of(&gw).await;
    let ready = h.is_ok();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(serde_json::json!({ "ready": ready, "status": h.status })),
    )
        .into_response()
}

pub(crate) async fn metrics(State(gw): State<Arc<GatewayState>>) -> Response {
    match &gw.prometheus {
        Some(handle) => {
            gw.engine.export_metrics();
            crate::frame_counters::export();
            handle.run_upkeep();
            let mut text = handle.render();
            zps_core::metrics::render_deferred(&mut text);
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no Prometheus recorder: another metrics recorder was installed by the application",
        )
            .into_response(),
    }
}

/// Browser origin allow-list; requests without `Origin` (non-browser clients) pass.
pub(crate) fn origin_allowed(gw: &GatewayState, headers: &HeaderMap) -> bool {
    let Some(allowed) = &gw.config.allowed_origins else {
        return true;
    };
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin)),
    }
}

/// CORS for the browser-facing HTTP routes (`/events`, `/api/v1`): the same
/// origin allow-list as WebSocket upgrades; any origin when none is configured
/// (credentials travel in the `Authorization` header, never in cookies).
pub(crate) fn cors(gw: &GatewayState) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origin = match &gw.config.allowed_origins {
        Some(list) if !list.iter().any(|o| o == "*") => {
            AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        }
        _ => AllowOrigin::any(),
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(600))
}
