//! The gateway serving TLS itself: a throwaway CA signs a certificate for
//! 127.0.0.1, clients that trust the CA get `https://` and `wss://`, clients
//! that do not are refused, and `kill -HUP` swaps the certificate for new
//! handshakes while open connections carry on.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use support::pki::{Ca, ca, leaf};
use support::spawn_gateway;
use tokio_tungstenite::tungstenite::Message;

fn client_config(ca: &Ca) -> Arc<rustls::ClientConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.cert.der().to_vec())).unwrap();
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS connection to `port`; returns the stream and the server's leaf (DER).
async fn handshake(
    config: &Arc<rustls::ClientConfig>,
    port: u16,
) -> std::io::Result<(tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Vec<u8>)> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let tls = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    Ok((tls, leaf))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_wss_and_https_and_reloads_on_sighup() {
    let dir = std::env::temp_dir().join(format!("zps-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    let authority = ca();
    let (cert, key, first_der) = leaf(&authority, "first");
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();

    let (cert_arg, key_arg) = (cert_file.to_str().unwrap(), key_file.to_str().unwrap());
    let gw = spawn_gateway(
        &["--port", "0", "--tls-cert", cert_arg, "--tls-key", key_arg],
        &[],
    );
    let (url, pid) = (gw.ws.clone(), gw.child.id());
    let port: u16 = url
        .trim_start_matches("wss://127.0.0.1:")
        .trim_end_matches("/ws")
        .parse()
        .unwrap();
    let trusting = client_config(&authority);

    // https:// with the CA trusted; refused without it.
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_der(authority.cert.der()).unwrap())
        .build()
        .unwrap();
    let health = https
        .get(format!("https://127.0.0.1:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        reqwest::get(format!("https://127.0.0.1:{port}/health"))
            .await
            .is_err(),
        "an untrusted certificate was accepted"
    );
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/health")).await;
    assert!(
        !plain.is_ok_and(|r| r.status().is_success()),
        "plain HTTP was served on the TLS port"
    );

    // wss:// through the verified TLS stream.
    let (tls, der) = handshake(&trusting, port).await.unwrap();
    assert_eq!(der, first_der);
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://127.0.0.1:{port}/ws"), tls)
        .await
        .unwrap();
    ws.send(Message::Text(
        json!({"type": "init", "subscriberId": "tls"}).to_string().into(),
    ))
    .await
    .unwrap();
    let ready = loop {
        if let Message::Text(t) = ws.next().await.unwrap().unwrap() {
            break serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap();
        }
    };
    assert_eq!(ready["type"], "ready");

    // A renewed certificate on disk, then SIGHUP: new handshakes see it.
    let (cert, key, second_der) = leaf(&authority, "second");
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, der) = handshake(&trusting, port).await.unwrap();
        if der == second_der {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the certificate was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection opened before the reload still works.
    ws.send(Message::Text(
        json!({"type": "ping", "id": "p"}).to_string().into(),
    ))
    .await
    .unwrap();
    let pong = loop {
        if let Message::Text(t) = ws.next().await.unwrap().unwrap() {
            break serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap();
        }
    };
    assert_eq!(pong["type"], "pong");
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
