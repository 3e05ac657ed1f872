//! Test support: an in-process gateway on an ephemeral port, a WebSocket test
//! client with timeouts, and token helpers.

#![allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    missing_docs,
    async_fn_in_trait,
    clippy::unwrap_used
)]

pub mod api;
pub mod sse;

use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use zps_test_support::{
    SECRET, TestGateway, WAIT, hs256, hs256_config, init_tracing, now_secs, publish, publish_config,
};

/// Raw WebSocket clients of a [`TestGateway`] (the protocol tests speak frames).
pub trait Clients {
    async fn client(&self) -> Client;
    /// A client that sent `init` and got `ready`.
    async fn ready(&self, subscriber: &str) -> Client;
    /// A client initialised with a token.
    async fn ready_with_token(&self, subscriber: &str, token: &str) -> Client;
}

impl Clients for TestGateway {
    async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    async fn ready(&self, subscriber: &str) -> Client {
        let mut c = self.client().await;
        c.send(json!({"type": "init", "subscriberId": subscriber})).await;
        c.recv_type("ready").await;
        c
    }

    async fn ready_with_token(&self, subscriber: &str, token: &str) -> Client {
        let mut c = self.client().await;
        c.send(json!({"type": "init", "subscriberId": subscriber, "token": token}))
            .await;
        c.recv_type("ready").await;
        c
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
