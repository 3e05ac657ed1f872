//! What the binary's integration tests share: starting `zero-pub-sub gateway`
//! as a child process and talking to it over a WebSocket.

// Each test file uses a different part of this module.
#![allow(dead_code, clippy::unwrap_used)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

pub(crate) mod pki;
pub(crate) mod tls_servers;

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_zero-pub-sub");

/// A WebSocket to a gateway.
pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The PostgreSQL the tests use.
pub(crate) fn pg_url() -> String {
    std::env::var("ZPS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The Redis the tests use.
pub(crate) fn redis_url() -> String {
    std::env::var("ZPS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The NATS (with JetStream) the tests use.
pub(crate) fn nats_url() -> String {
    std::env::var("ZPS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A running gateway process (killed when dropped) and its WebSocket URL.
pub(crate) struct Gateway {
    pub(crate) child: Child,
    pub(crate) ws: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `zero-pub-sub gateway --port 0 ARGS...` and waits for the line that
/// names its address.
pub(crate) fn start_gateway<S: AsRef<OsStr>>(args: &[S]) -> Gateway {
    let mut all: Vec<&OsStr> = vec!["--port".as_ref(), "0".as_ref()];
    all.extend(args.iter().map(AsRef::as_ref));
    spawn_gateway(&all, &[])
}

/// Starts `zero-pub-sub gateway ARGS...` with extra environment variables and
/// waits for the line that names its address.
pub(crate) fn spawn_gateway<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> Gateway {
    let mut child = Command::new(BIN)
        .arg("gateway")
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ws = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://") || w.starts_with("wss://"))
        .unwrap_or_else(|| panic!("no ws:// or wss:// address in {line:?}"))
        .to_owned();
    Gateway { child, ws }
}

/// Runs the binary to completion: exit code, stdout, stderr.
pub(crate) fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The next JSON message (pings skipped); panics on close or after 20 s.
pub(crate) async fn recv(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

/// Sends one JSON message.
pub(crate) async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Connects and completes `init`.
pub(crate) async fn ready(url: &str, subscriber_id: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    send(&mut ws, json!({"type": "init", "subscriberId": subscriber_id})).await;
    assert_eq!(recv(&mut ws).await["type"], "ready");
    ws
}
