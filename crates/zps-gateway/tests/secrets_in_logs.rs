//! Tokens and API keys never reach the logs, wherever they travel (query
//! string, `init`, `Authorization`), even at TRACE level and on refusals.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::json;
use support::sse::Sse;
use support::*;
use zps_gateway::api::keys::{ApiKey, ApiKeys};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secrets_are_never_logged() {
    let logs = Captured::default();
    let writer = logs.clone();
    // Everything at TRACE, with the clamps the binary applies.
    let filter = format!("trace,{}", zps_gateway::LOG_CLAMPS.join(","));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || writer.clone())
        .init();
    let key = "zps_secret-api-key-that-must-not-be-logged-000";
    let mut config = hs256_config();
    config.api.keys = ApiKeys::new(vec![ApiKey::from_flag(key, 1).unwrap()]);
    let gw = TestGateway::start(config).await;
    let good = hs256(json!({"sub": "lou", "exp": now_secs() + 60}));
    let expired = hs256(json!({"sub": "lou", "exp": now_secs() - 600}));
    // Query strings, init frames, refresh frames, refused and accepted.
    let _ok = Sse::open(&gw.http_url(&format!("/events?room=chat:1&token={good}")), &[])
        .await
        .unwrap();
    let _ = Sse::open(&gw.http_url(&format!("/events?room=chat:1&token={expired}")), &[]).await;
    let mut c = gw.ready_with_token("lou", &good).await;
    c.send(json!({"type": "refresh_token", "token": expired})).await;
    let _ = c.recv().await;
    let mut bad = gw.client().await;
    bad.send(json!({"type": "init", "subscriberId": "lou", "token": expired}))
        .await;
    let _ = bad.recv().await;
    let http = reqwest::Client::new();
    for credential in [key, "zps_wrong-key-0000000000000000000000000", good.as_str()] {
        let _ = http
            .get(gw.http_url("/api/v1/rooms"))
            .bearer_auth(credential)
            .send()
            .await
            .unwrap();
    }
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        !text.is_empty(),
        "nothing was logged: the check would prove nothing"
    );
    for secret in [key, good.as_str(), expired.as_str(), "zps_wrong-key"] {
        // A JWT's signature is the part that must never leak.
        let needle = secret.rsplit('.').next().unwrap();
        assert!(!text.contains(needle), "a secret reached the logs:\n{text}");
    }
}
