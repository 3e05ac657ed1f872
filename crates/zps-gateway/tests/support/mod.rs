//! Test support: an in-process gateway on an ephemeral port, a WebSocket test
//! client with timeouts, and token helpers.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

pub mod api;
pub mod sse;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use zps_core::Realtime;
use zps_gateway::{Gateway, GatewayConfig, JwtKey};

/// How long a test waits for any single message.
pub const WAIT: Duration = Duration::from_secs(15);
/// The HS256 secret tests sign with.
pub const SECRET: &[u8] = b"test-secret-with-enough-entropy-0123456789";

pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Gateway,
    task: tokio::task::JoinHandle<()>,
}

impl TestGateway {
    pub async fn start(config: GatewayConfig) -> Self {
        Self::start_with(Realtime::memory(), config).await
    }

    pub async fn start_with(engine: Realtime, config: GatewayConfig) -> Self {
        let gateway = Gateway::new(engine, config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let g = gateway.clone();
        let task = tokio::spawn(async move {
            g.serve(listener).await.unwrap();
        });
        Self { addr, gateway, task }
    }

    pub fn engine(&self) -> &Realtime {
        self.gateway.engine()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// A client that sent `init` and got `ready`.
    pub async fn ready(&self, subscriber: &str) -> Client {
        let mut c = self.client().await;
        c.send(json!({"type": "init", "subscriberId": subscriber})).await;
        c.recv_type("ready").await;
        c
    }

    /// A client initialised with a token.
    pub async fn ready_with_token(&self, subscriber: &str, token: &str) -> Client {
        let mut c = self.client().await;
        c.send(json!({"type": "init", "subscriberId": subscriber, "token": token}))
            .await;
        c.recv_type("ready").await;
        c
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        Self { ws }
    }

    pub async fn send(&mut self, v: Value) {
        self.send_raw(&v.to_string()).await;
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// The next JSON message (pings and pongs skipped).
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no message in time")
                .expect("connection ended")
                .expect("read failed");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(f) => panic!("unexpected close: {f:?}"),
                _ => continue,
            }
        }
    }

    /// The next message, which must have this `type`.
    pub async fn recv_type(&mut self, t: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], t, "expected {t}, got {v}");
        v
    }

    /// The next message, which must be an error with this code.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], "error", "expected error {code}, got {v}");
        assert_eq!(v["code"], code, "{v}");
        v
    }

    /// Reads until the server closes; asserts the close code.
    pub async fn expect_close(&mut self, code: u16) {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no close in time")
            {
                Some(Ok(Message::Close(Some(frame)))) => {
                    assert_eq!(u16::from(frame.code), code, "close reason: {}", frame.reason);
                    return;
                }
                Some(Ok(Message::Close(None))) => panic!("closed without a code, expected {code}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("read error before close {code}: {e}"),
                None => panic!("stream ended without a close frame, expected {code}"),
            }
        }
    }

    /// The next `n` event envelopes (other message types are a failure).
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let v = self.recv_type("event").await;
            out.push(v["data"].clone());
        }
        out
    }

    /// Asserts nothing but pings arrives for `window`.
    pub async fn assert_silent(&mut self, window: Duration) {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    pub async fn subscribe(&mut self, room: &str) -> Value {
        self.send(json!({"type": "subscribe", "room": room})).await;
        self.recv_type("subscribed").await
    }
}

pub fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["sequence"].as_u64().unwrap()).collect()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn hs256(claims: Value) -> String {
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(SECRET)).unwrap()
}

pub fn rs256(claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("../fixtures/rsa_private.pem")).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .unwrap()
}

pub fn es256(claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_ec_pem(include_bytes!("../fixtures/ec_private.pem")).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &key,
    )
    .unwrap()
}

/// An unsigned token (`alg: none`), which must always be refused.
pub fn unsigned(claims: Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    )
}

pub fn hs256_config() -> GatewayConfig {
    let mut c = GatewayConfig::default();
    c.auth.jwt = Some(JwtKey::Hs256(SECRET.to_vec()));
    c
}

pub fn publish(room: &str, t: &str, payload: Value) -> zps_core::PublishRequest {
    zps_core::PublishRequest::new(zps_core::Room::parse(room).unwrap(), t, &payload).unwrap()
}
