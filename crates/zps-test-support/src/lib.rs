//! What the gateway's and the client's integration tests share, written once:
//! an in-process gateway serving on a real loopback port, the HS256 secret and
//! token helpers, and publish-request builders. Test code: a failed setup
//! panics with what went wrong.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use zps_core::{PublishRequest, Realtime, Room};
use zps_gateway::{Gateway, GatewayConfig, JwtKey};

/// How long a test waits for any one thing before it fails.
pub const WAIT: Duration = Duration::from_secs(20);
/// The HS256 secret test tokens are signed with.
pub const SECRET: &[u8] = b"test-secret-with-enough-entropy-0123456789";

/// Log output for a test run (`RUST_LOG=...`), once per process.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A gateway serving on a loopback port, stopped when dropped.
pub struct TestGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The gateway itself (engine, shutdown, ...).
    pub gateway: Gateway,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestGateway {
    /// A gateway on the in-memory provider.
    pub async fn start(config: GatewayConfig) -> Self {
        Self::start_with(Realtime::memory(), config).await
    }

    /// A gateway over `engine`.
    pub async fn start_with(engine: Realtime, config: GatewayConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, engine, config)
    }

    /// A gateway on a given address (a restart on the same port); retries while the
    /// previous listener is still going away.
    pub async fn start_on(addr: SocketAddr, engine: Realtime, config: GatewayConfig) -> Self {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => return Self::serve(l, engine, config),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("could not rebind {addr}: {e}"),
            }
        }
    }

    fn serve(listener: TcpListener, engine: Realtime, config: GatewayConfig) -> Self {
        let gateway = Gateway::new(engine, config).unwrap();
        let addr = listener.local_addr().unwrap();
        let g = gateway.clone();
        let task = tokio::spawn(async move {
            let _ = g.serve(listener).await;
        });
        Self {
            addr,
            gateway,
            task: Some(task),
        }
    }

    /// The engine behind it.
    pub fn engine(&self) -> &Realtime {
        self.gateway.engine()
    }

    /// Its WebSocket endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// An HTTP URL on it.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Drains (1012 to every client) and waits until the port is free again.
    pub async fn stop(mut self) {
        self.gateway.shutdown().await;
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(WAIT, task).await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A gateway configuration that verifies HS256 tokens signed with [`SECRET`].
pub fn hs256_config() -> GatewayConfig {
    let mut c = GatewayConfig::default();
    c.auth.jwt = Some(JwtKey::Hs256(SECRET.to_vec()));
    c
}

/// A gateway configuration that lets clients publish.
pub fn publish_config() -> GatewayConfig {
    let mut c = GatewayConfig::default();
    c.limits.allow_client_publish = true;
    c
}

/// A token with `claims`, signed with [`SECRET`].
pub fn hs256(claims: Value) -> String {
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(SECRET)).unwrap()
}

/// Seconds since the Unix epoch (for `exp` / `iat` claims).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A publish request to `room` of type `event_type` with `payload`.
pub fn publish(room: &str, event_type: &str, payload: Value) -> PublishRequest {
    PublishRequest::new(Room::parse(room).unwrap(), event_type, &payload).unwrap()
}

/// The `i`-th event of a test series in `room` (type `t`, payload `{"i": i}`).
pub fn event(room: &str, i: u64) -> PublishRequest {
    publish(room, "t", json!({ "i": i }))
}

/// Publishes events 1..=n to `room`.
pub async fn publish_n(engine: &Realtime, room: &str, n: u64) {
    for i in 1..=n {
        engine.publish(event(room, i)).await.unwrap();
    }
}
