//! The demo chat page (`--demo`), built from `clients/js/demo` and compiled
//! into the binary, so it works offline with no CDN; and the plain answer to
//! a browser that opens the gateway's root URL.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};

use crate::gateway_state::GatewayState;

const INDEX: &[u8] = include_bytes!("../assets/demo/index.html");
const SCRIPT: &[u8] = include_bytes!("../assets/demo/demo.js");

fn asset(body: &'static [u8], content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

pub(crate) async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

pub(crate) async fn to_index() -> Redirect {
    Redirect::permanent("/demo/")
}

/// `GET /`: a WebSocket upgrade is served as on `/ws`; anything else (a
/// browser, curl) gets a short map of the gateway instead of an upgrade error.
pub(crate) async fn root(
    state: State<Arc<GatewayState>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => crate::ws::handler(state, headers, ws).await,
        Err(_) => {
            let gw = &state.0;
            let mut text = format!(
                "zero-pub-sub gateway {}\n\n\
                 WebSocket  /ws (protocol: docs/protocol.md)\n\
                 SSE        /events?room=ROOM\n",
                env!("CARGO_PKG_VERSION")
            );
            if gw.config.api.enabled {
                text.push_str("HTTP API   /api/v1 (OpenAPI: /api/v1/openapi.json)\n");
            }
            text.push_str("Health     /health, /live, /ready; metrics /metrics\n");
            if gw.config.demo {
                text.push_str("Demo       /demo/\n");
            }
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
    }
}
