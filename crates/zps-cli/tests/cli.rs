//! The real `zero-pub-sub` binary: help, environment and config-file forms,
//! startup errors, and a graceful SIGTERM drain.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{Ws, recv, run, send, spawn_gateway};

fn start(args: &[&str], env: &[(&str, &str)]) -> support::Gateway {
    spawn_gateway(args, env)
}

async fn connect(url: &str) -> Ws {
    connect_async(url).await.unwrap().0
}

#[test]
fn help_reads_well() {
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("gateway") && out.contains("health"), "{out}");
    let (code, out, _) = run(&["gateway", "--help"], &[]);
    assert_eq!(code, 0);
    for flag in [
        "--provider",
        "--connection",
        "--port",
        "--host",
        "--storage-provider",
        "--realtime-connection",
        "--max-connections",
        "--max-payload-bytes",
        "--allow-client-publish",
        "--jwt-secret",
        "--jwt-public-key",
        "--scopes",
        "--rooms-claim",
        "--allowed-origins",
        "--config",
        "ZERO_PUBSUB_PROVIDER",
        "ZERO_PUBSUB_CONNECTION",
        "PORT",
        "ZERO_PUBSUB_JWT_SECRET",
    ] {
        assert!(out.contains(flag), "missing {flag} in help");
    }
}

#[test]
fn startup_errors_are_clear() {
    let (code, _, err) = run(&["gateway", "--max-conections", "5"], &[]);
    assert_eq!(code, 2, "a bad flag is a usage error");
    assert!(err.contains("--max-conections"), "{err}");

    let dir = std::env::temp_dir().join(format!("zps-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "port = 0\nmax_conections = 5\n").unwrap();
    let (code, _, err) = run(&["gateway", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("max_conections"), "unknown keys are named: {err}");

    let (code, _, err) = run(&["gateway", "--provider", "postgres", "--port", "0"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("--connection is required"), "{err}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let (code, _, err) = run(&["gateway", "--port", &port], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot listen on"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn environment_form_sets_limits_and_auth() {
    let gw = start(
        &[],
        &[
            ("PORT", "0"),
            ("ZERO_PUBSUB_MAX_SUBSCRIPTIONS", "1"),
            ("ZERO_PUBSUB_JWT_SECRET", "0123456789abcdef-secret"),
        ],
    );
    let mut ws = connect(&gw.ws).await;
    send(&mut ws, serde_json::json!({"type": "init", "subscriberId": "d"})).await;
    let e = recv(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("4401"))
    );

    let gw = start(&["--port", "0"], &[("ZERO_PUBSUB_MAX_SUBSCRIPTIONS", "1")]);
    let mut ws = connect(&gw.ws).await;
    send(&mut ws, serde_json::json!({"type": "init", "subscriberId": "d"})).await;
    assert_eq!(recv(&mut ws).await["type"], "ready");
    send(
        &mut ws,
        serde_json::json!({"type": "subscribe", "rooms": ["chat:1", "chat:2"]}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    assert_eq!(recv(&mut ws).await["code"], "4430");
}

#[tokio::test]
async fn config_file_form_and_flags_override_it() {
    let dir = std::env::temp_dir().join(format!("zps-cli-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gw.toml");
    std::fs::write(
        &file,
        "port = 1\nallow_client_publish = true\nscopes = [\"chat\"]\n",
    )
    .unwrap();
    // The flag's port wins over the file's.
    let gw = start(&["--config", file.to_str().unwrap(), "--port", "0"], &[]);
    let mut ws = connect(&gw.ws).await;
    send(&mut ws, serde_json::json!({"type": "init", "subscriberId": "d"})).await;
    recv(&mut ws).await;
    send(
        &mut ws,
        serde_json::json!({"type": "publish", "requestId": "r", "event": {"type": "t", "room": "chat:1", "payload": {}}}),
    )
    .await;
    let p = recv(&mut ws).await;
    assert_eq!(
        (p["type"].as_str(), p["sequence"].as_u64()),
        (Some("published"), Some(1))
    );
    send(
        &mut ws,
        serde_json::json!({"type": "subscribe", "room": "admin:1"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["code"], "4422");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn sigterm_drains_with_1012_and_exits_cleanly() {
    let mut gw = start(&["--port", "0", "--drain-timeout-ms", "3000"], &[]);
    let mut ws = connect(&gw.ws).await;
    send(&mut ws, serde_json::json!({"type": "init", "subscriberId": "d"})).await;
    recv(&mut ws).await;
    let health_url = gw.ws.replace("ws://", "http://").replace("/ws", "");
    let (code, out, _) = run(&["health", "--url", &health_url], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"status\": \"healthy\""), "{out}");

    let pid = gw.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut close = None;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        if let Message::Close(Some(f)) = msg {
            close = Some(u16::from(f.code));
            break;
        }
    }
    assert_eq!(close, Some(1012));
    let status = tokio::task::spawn_blocking(move || {
        let s = gw.child.wait().unwrap();
        (s, gw)
    })
    .await
    .unwrap()
    .0;
    assert!(status.success(), "exit status {status:?}");
}
