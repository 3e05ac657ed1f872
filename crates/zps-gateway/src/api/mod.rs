//! The HTTP API under `/api/v1`: publish and manage from any language.
//!
//! Callers authenticate with `Authorization: Bearer …`, either an **API key**
//! (`zps_…`, for backends and operators; scopes `publish`, `read`, `admin`,
//! optionally limited to room patterns) or a **client token** (the JWT a
//! WebSocket client would send in `init`; the same rules as on a socket:
//! publish where the socket could publish, move its own cursor, enter
//! presence from its own SSE stream). Without a token verifier configured,
//! requests with no credential act as an anonymous client, exactly as an
//! anonymous socket would. Errors are one JSON shape,
//! `{"error":{"code":"4403","message":"…"}}`, with the protocol's codes. The
//! OpenAPI 3.1 document is served at `/api/v1/openapi.json`.
//!
//! Every operation goes through the engine, so the middleware onion sees it
//! with its action name.

pub mod keys;

mod caller;
mod error;
mod manage;
mod publish;
mod rooms;
mod tokens;

use std::sync::Arc;

use axum::Router;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use caller::RateLimiter;
pub use error::{ApiError, ErrorBody, ErrorDetail};

use crate::gateway_state::GatewayState;

/// Settings of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Serve `/api/v1` (default on).
    pub enabled: bool,
    /// Keys for backends and operators.
    pub keys: keys::ApiKeys,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Requests per second per caller (key, token subject or anonymous), a
    /// burst of as many; a key may set its own.
    pub rate_per_second: u32,
    /// How often this node reports its room counts to the cluster: how stale
    /// other nodes' counts in `GET /rooms` can be (kept under half the presence TTL).
    pub cluster_report_interval: std::time::Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            keys: keys::ApiKeys::default(),
            max_body_bytes: 1024 * 1024,
            rate_per_second: 1_000,
            cluster_report_interval: std::time::Duration::from_secs(5),
        }
    }
}

impl ApiConfig {
    /// Sets the cluster report interval from milliseconds, when given.
    pub fn with_report_interval(mut self, ms: Option<u64>) -> Self {
        if let Some(ms) = ms {
            self.cluster_report_interval = std::time::Duration::from_millis(ms);
        }
        self
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "zero-pub-sub HTTP API",
        description = "Publish and manage rooms of a zero-pub-sub gateway from any language. \
                       Authenticate with `Authorization: Bearer <API key or client token>`."
    ),
    modifiers(&Security),
    tags(
        (name = "publish", description = "Store and deliver events"),
        (name = "rooms", description = "Rooms, history, presence, snapshots"),
        (name = "subscribers", description = "Cursors and connections"),
        (name = "operations", description = "Dead letters, pruning")
    )
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key (`zps_…`) or a client token (JWT)"))
                    .build(),
            ),
        );
    }
}

/// The API's routes and its OpenAPI document, built from the same handlers.
fn api() -> (Router<Arc<GatewayState>>, utoipa::openapi::OpenApi) {
    let v1 = OpenApiRouter::new()
        .routes(routes!(publish::publish))
        .routes(routes!(publish::broadcast))
        .routes(routes!(publish::ephemeral))
        .routes(routes!(rooms::list_rooms))
        .routes(routes!(rooms::room))
        .routes(routes!(rooms::events))
        .routes(routes!(rooms::presence))
        .routes(routes!(rooms::presence_enter, rooms::presence_leave))
        .routes(routes!(rooms::get_snapshot, rooms::put_snapshot))
        .routes(routes!(manage::get_cursor, manage::put_cursor))
        .routes(routes!(manage::disconnect_subscriber))
        .routes(routes!(manage::kick_connection))
        .routes(routes!(manage::dlq_index))
        .routes(routes!(manage::dlq_list))
        .routes(routes!(manage::dlq_replay))
        .routes(routes!(manage::dlq_remove))
        .routes(routes!(manage::prune))
        .routes(routes!(tokens::mint))
        .routes(routes!(tokens::mint_room));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", v1)
        .split_for_parts()
}

/// The OpenAPI 3.1 document of the HTTP API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().1
}

/// `/api/v1/…` routes, with body limits and the document at `/api/v1/openapi.json`.
pub(crate) fn router(shared: &Arc<GatewayState>) -> Router<Arc<GatewayState>> {
    let (routes, doc) = api();
    let json = Arc::new(doc.to_json().unwrap_or_else(|_| "{}".to_owned()));
    routes
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let json = json.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        (*json).clone(),
                    )
                }
            }),
        )
        // The body extractors enforce it and answer in the API's error shape.
        .layer(axum::extract::DefaultBodyLimit::max(
            shared.config.api.max_body_bytes,
        ))
}
