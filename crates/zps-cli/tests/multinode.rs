//! Two gateway processes sharing one provider: clients on node A and node B
//! subscribe to the same room while publishers on both nodes publish; every
//! subscriber sees 1..=N exactly once, in order. Redis, NATS JetStream, and
//! hybrid (PostgreSQL storage + Redis fan-out).

#![allow(clippy::unwrap_used)]

use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{Gateway as Node, nats_url, pg_url, ready, recv, redis_url, run, start_gateway};

fn start(args: &[&str]) -> Node {
    let mut all = vec!["--allow-client-publish", "--max-messages-per-window", "100000"];
    all.extend_from_slice(args);
    start_gateway(&all)
}

async fn two_nodes_one_room(a: &Node, b: &Node) {
    let room = "multi:1";
    let mut subscribers = Vec::new();
    for (i, node) in [a, b, a, b].into_iter().enumerate() {
        let mut ws = ready(&node.ws, &format!("sub-{i}")).await;
        ws.send(Message::Text(
            json!({"type": "subscribe", "room": room}).to_string().into(),
        ))
        .await
        .unwrap();
        assert_eq!(recv(&mut ws).await["type"], "subscribed");
        subscribers.push(ws);
    }
    let per = 100;
    let publishers: Vec<_> = [a.ws.clone(), b.ws.clone(), a.ws.clone(), b.ws.clone()]
        .into_iter()
        .enumerate()
        .map(|(p, url)| {
            tokio::spawn(async move {
                let mut ws = ready(&url, &format!("pub-{p}")).await;
                for i in 0..per {
                    let msg = json!({"type": "publish", "requestId": format!("{p}-{i}"), "event": {"type": "t", "room": room, "payload": {"p": p, "i": i}}});
                    ws.send(Message::Text(msg.to_string().into())).await.unwrap();
                    let answer = recv(&mut ws).await;
                    assert_eq!(answer["type"], "published", "{answer}");
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let n = 4 * per as u64;
    for mut ws in subscribers {
        let mut seqs = Vec::new();
        while seqs.len() < n as usize {
            let m = recv(&mut ws).await;
            if m["type"] == "event" {
                seqs.push(m["data"]["sequence"].as_u64().unwrap());
            }
        }
        assert_eq!(seqs, (1..=n).collect::<Vec<u64>>());
    }
}

async fn delete_redis_keys(prefix: &str) {
    use zps_redis::fred::prelude::*;
    let client = Builder::from_config(Config::from_url(&redis_url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    zps_redis::delete_prefix(&client, prefix).await.unwrap();
    client.quit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_redis() {
    let prefix = format!("zps-cli-multi-{}:", std::process::id());
    let redis = redis_url();
    let args = [
        "--provider",
        "redis",
        "--connection",
        &redis,
        "--redis-prefix",
        &prefix,
    ];
    let (a, b) = (start(&args), start(&args));
    two_nodes_one_room(&a, &b).await;
    drop((a, b));
    delete_redis_keys(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_hybrid_postgres_and_redis() {
    let schema = format!("zps_cli_hybrid_{}", std::process::id());
    let pool = zps_postgres::connect_pool(&pg_url(), &zps_postgres::PostgresConfig::default())
        .await
        .unwrap();
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    let prefix = format!("zps-cli-hybrid-{}:", std::process::id());
    let (redis, pg) = (redis_url(), pg_url());
    let args = [
        "--provider",
        "hybrid",
        "--storage-provider",
        "postgres",
        "--storage-connection",
        &pg,
        "--postgres-schema",
        &schema,
        "--realtime-provider",
        "redis",
        "--realtime-connection",
        &redis,
        "--redis-prefix",
        &prefix,
    ];
    let (a, b) = (start(&args), start(&args));
    two_nodes_one_room(&a, &b).await;
    drop((a, b));
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    delete_redis_keys(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_nats() {
    let prefix = format!("zps_cli_multi_{}", std::process::id());
    let nats = nats_url();
    let args = [
        "--provider",
        "nats",
        "--connection",
        &nats,
        "--nats-prefix",
        &prefix,
    ];
    let (a, b) = (start(&args), start(&args));
    two_nodes_one_room(&a, &b).await;
    drop((a, b));
    // The operational commands reach the same streams.
    let (code, out, err) = run(
        &[
            "prune",
            "--provider",
            "nats",
            "--connection",
            &nats,
            "--nats-prefix",
            &prefix,
        ],
        &[],
    );
    assert_eq!((code, out.trim()), (0, "removed 0 expired events"), "{err}");
    let client = zps_nats::async_nats::connect(&nats).await.unwrap();
    zps_nats::delete_prefix(&client, &prefix).await.unwrap();
}
