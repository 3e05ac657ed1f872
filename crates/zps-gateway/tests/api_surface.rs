//! The HTTP API's surface: the OpenAPI document against the routes (and an
//! outside validator), and what a browser gets at the root and the demo.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::api::*;
use support::*;
use zps_gateway::GatewayConfig;

/// Every route the router serves is in the document, every documented route
/// answers in the API's own shape (never the router's bare 404/405), and an
/// outside validator accepts the document.
#[tokio::test]
async fn openapi_document_matches_the_routes_and_validates() {
    let gw = TestGateway::start(config()).await;
    let http = Http::new(&gw);
    let (status, doc) = http.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let mut documented = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut expected = vec![
        "POST /api/v1/publish",
        "POST /api/v1/broadcast",
        "POST /api/v1/ephemeral",
        "GET /api/v1/rooms",
        "GET /api/v1/rooms/{room}",
        "GET /api/v1/rooms/{room}/events",
        "GET /api/v1/rooms/{room}/presence",
        "PUT /api/v1/rooms/{room}/presence/{connection}",
        "DELETE /api/v1/rooms/{room}/presence/{connection}",
        "GET /api/v1/rooms/{room}/snapshot",
        "PUT /api/v1/rooms/{room}/snapshot",
        "GET /api/v1/subscribers/{id}/cursors/{room}",
        "PUT /api/v1/subscribers/{id}/cursors/{room}",
        "POST /api/v1/subscribers/{id}/disconnect",
        "DELETE /api/v1/connections/{id}",
        "GET /api/v1/dlq",
        "GET /api/v1/rooms/{room}/dlq",
        "POST /api/v1/rooms/{room}/dlq/{entry}/replay",
        "DELETE /api/v1/rooms/{room}/dlq/{entry}",
        "POST /api/v1/prune",
        "POST /api/v1/tokens",
        "POST /api/v1/room-tokens",
    ];
    expected.sort_unstable();
    assert_eq!(documented, expected);
    for route in &documented {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path
            .trim_start_matches("/api/v1")
            .replace("{room}", "chat%3A1")
            .replace("{entry}", "1")
            .replace("{connection}", "c-1")
            .replace("{id}", "u-1");
        let (status, body) = http.call(method, &path, Some(ADMIN), Some(json!({}))).await;
        assert!(
            body.is_null() && status < 300 || body.get("error").is_some() || body.is_object(),
            "{route}: {status} {body}"
        );
        assert_ne!(status, 405, "{route}");
    }
    // Unknown routes under /api/v1 are not silently served.
    assert_eq!(
        reqwest::get(gw.http_url("/api/v1/nope")).await.unwrap().status(),
        404
    );

    let validator = std::env::var("ZPS_OPENAPI_VALIDATOR").expect(
        "ZPS_OPENAPI_VALIDATOR is not set: run `cargo xtask test` (it installs openapi-spec-validator from PyPI) \
         or point it at an openapi-spec-validator executable",
    );
    let file = std::env::temp_dir().join(format!("zps-openapi-{}.json", std::process::id()));
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = std::process::Command::new(&validator)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("{validator}: {e}"));
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A browser opening the gateway's address gets a map, not an upgrade error;
/// the demo page is served only when enabled, and carries its own script.
#[tokio::test]
async fn root_answers_browsers_and_the_demo_is_opt_in() {
    let off = TestGateway::start(GatewayConfig::default()).await;
    let root = reqwest::get(off.http_url("/")).await.unwrap();
    assert_eq!(root.status(), 200);
    let text = root.text().await.unwrap();
    assert!(
        text.starts_with(&format!("zero-pub-sub gateway {}\n", env!("CARGO_PKG_VERSION")))
            && text.contains("/ws")
            && text.contains("/api/v1/openapi.json")
            && !text.contains("/demo/"),
        "{text}"
    );
    assert_eq!(reqwest::get(off.http_url("/demo/")).await.unwrap().status(), 404);
    // The root still upgrades WebSockets.
    let mut ws = Client::connect(&format!("ws://{}/", off.addr)).await;
    ws.send(json!({"type": "init", "subscriberId": "root"})).await;
    ws.recv_type("ready").await;

    let on = TestGateway::start(GatewayConfig {
        demo: true,
        ..Default::default()
    })
    .await;
    assert!(
        reqwest::get(on.http_url("/"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("/demo/")
    );
    let page = reqwest::get(on.http_url("/demo")).await.unwrap();
    assert_eq!(page.url().path(), "/demo/", "redirected to the directory");
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("./demo.js"), "{html}");
    let script = reqwest::get(on.http_url("/demo/demo.js")).await.unwrap();
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(script.text().await.unwrap().contains("/ws"));
}
