//! The binary reaches its databases over TLS, verified against a private CA given
//! with `--ca-file`: PostgreSQL (`sslmode=verify-full`, on a throwaway cluster that
//! refuses plain connections), Redis (`rediss://` to a `redis-server --tls-port`)
//! and MongoDB (`tls=true`, through a TLS proxy in front of the stand-in). Without
//! the CA the same URLs are refused at startup: the certificate is really checked.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::pki::{ca, temp_dir};
use support::tls_servers::{TlsPostgres, TlsRedis, tls_proxy};
use support::{recv, run, send, start_gateway};

/// Starts the gateway on `provider` at `url`, publishes three events through it and
/// checks they come back stored, in order.
async fn round_trip(provider: &str, url: &str, ca_file: &str, extra: &[&str]) {
    let mut args = vec![
        "--allow-client-publish",
        "--provider",
        provider,
        "--connection",
        url,
        "--ca-file",
        ca_file,
    ];
    args.extend_from_slice(extra);
    let gw = start_gateway(&args);
    let (mut ws, _) = tokio_tungstenite::connect_async(&gw.ws).await.unwrap();
    send(&mut ws, json!({"type": "init", "subscriberId": "tls"})).await;
    assert_eq!(recv(&mut ws).await["type"], "ready");
    let room = format!("chat:tls-{}", std::process::id());
    send(&mut ws, json!({"type": "subscribe", "room": room})).await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    for i in 0..3 {
        send(&mut ws, json!({"type": "publish", "requestId": i.to_string(), "event": {"type": "t", "room": room, "payload": {"i": i}}})).await;
    }
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let m = recv(&mut ws).await;
        if m["type"] == "event" {
            seqs.push(m["data"]["sequence"].as_u64().unwrap());
        }
    }
    assert_eq!(seqs, vec![1, 2, 3], "{provider} over TLS");
}

/// The gateway must refuse to start on `url` when the CA is not trusted.
fn refused_without_ca(provider: &str, url: &str, extra: &[&str], expect: &str) {
    let mut args = vec![
        "gateway",
        "--port",
        "0",
        "--provider",
        provider,
        "--connection",
        url,
    ];
    args.extend_from_slice(extra);
    let (code, _, stderr) = run(&args, &[]);
    assert_ne!(code, 0, "{provider} started without trusting the CA");
    assert!(
        stderr.to_lowercase().contains(expect),
        "{expect:?} not in: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_private_ca() {
    let dir = temp_dir("redis-tls");
    let authority = ca();
    let ca_file = dir.join("ca.pem");
    authority.write_pem(&ca_file);
    let redis = TlsRedis::start(&authority, &dir);
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let prefix = format!("zps-tls-{}:", std::process::id());
    round_trip(
        "redis",
        &url,
        ca_file.to_str().unwrap(),
        &["--redis-prefix", &prefix],
    )
    .await;
    refused_without_ca("redis", &url, &[], "cannot use redis");
    // The TLS port does not speak plain Redis.
    refused_without_ca(
        "redis",
        &format!("redis://127.0.0.1:{}", redis.port),
        &["--ca-file", ca_file.to_str().unwrap()],
        "cannot use redis",
    );
    drop(redis);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verify_full_with_a_private_ca() {
    let dir = temp_dir("pg-tls");
    let authority = ca();
    let ca_file = dir.join("ca.pem");
    authority.write_pem(&ca_file);
    let pg = TlsPostgres::start(&authority, &dir);
    let base = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    round_trip(
        "postgres",
        &format!("{base}?sslmode=verify-full"),
        ca_file.to_str().unwrap(),
        &[],
    )
    .await;
    // The server refuses plain connections, so the round trip above was encrypted.
    refused_without_ca(
        "postgres",
        &format!("{base}?sslmode=disable"),
        &[],
        "no encryption",
    );
    // verify-full without the CA: the certificate is unknown.
    refused_without_ca(
        "postgres",
        &format!("{base}?sslmode=verify-full"),
        &[],
        "cannot use postgresql",
    );
    drop(pg);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_over_tls_with_a_private_ca() {
    let Ok(base) = std::env::var("ZPS_TEST_MONGO_URL") else {
        panic!("no MongoDB: set ZPS_TEST_MONGO_URL (cargo xtask test starts the stand-in)");
    };
    let upstream = base
        .trim_start_matches("mongodb://")
        .split(['/', '?'])
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let dir = temp_dir("mongo-tls");
    let authority = ca();
    let ca_file = dir.join("ca.pem");
    authority.write_pem(&ca_file);
    let port = tls_proxy(&authority, upstream).await;
    let db = format!("zps_cli_tls_{}", std::process::id());
    let url = format!(
        "mongodb://127.0.0.1:{port}/{db}?directConnection=true&tls=true&serverSelectionTimeoutMS=3000"
    );
    round_trip("mongo", &url, ca_file.to_str().unwrap(), &[]).await;
    let url_no_ca = url.clone();
    tokio::task::spawn_blocking(move || refused_without_ca("mongo", &url_no_ca, &[], "cannot use mongodb"))
        .await
        .unwrap();
    let client = zps_mongo::Client::with_uri_str(&base).await.unwrap();
    client.database(&db).drop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
