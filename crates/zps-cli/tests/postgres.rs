//! The real binary on PostgreSQL: migrate, publish/replay, and a gateway killed
//! with SIGKILL and restarted while events keep being published — the client
//! resumes from its cursor and loses nothing.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;

use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use zps_core::{PublishRequest, Realtime, Room};

mod support;
use support::{Gateway, Ws, pg_url as url, ready, recv, send};

fn run(args: &[&str]) -> (i32, String, String) {
    support::run(args, &[])
}

struct Schema {
    name: String,
    pool: zps_postgres::PgPool,
}

impl Schema {
    async fn new(tag: &str) -> Self {
        let name = format!("zps_cli_{tag}_{}", std::process::id());
        let pool = zps_postgres::connect_pool(&url(), &zps_postgres::PostgresConfig::default())
            .await
            .unwrap();
        sqlx_exec(&pool, &format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await;
        sqlx_exec(&pool, &format!("CREATE SCHEMA {name}")).await;
        Self { name, pool }
    }

    async fn drop(self) {
        sqlx_exec(
            &self.pool,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
        )
        .await;
        self.pool.close().await;
    }

    async fn engine(&self) -> Realtime {
        let config = zps_postgres::PostgresConfig {
            schema: Some(self.name.clone()),
            ..Default::default()
        };
        Realtime::new(Arc::new(
            zps_postgres::PostgresTransport::connect(&url(), config)
                .await
                .unwrap(),
        ))
    }
}

async fn sqlx_exec(pool: &zps_postgres::PgPool, sql: &str) {
    sqlx::query(sql).execute(pool).await.unwrap();
}

fn start_gateway(schema: &str) -> Gateway {
    support::start_gateway(&[
        "--provider",
        "postgres",
        "--connection",
        &url(),
        "--postgres-schema",
        schema,
    ])
}

async fn client(url: &str, room: &str, from: Option<u64>) -> (Ws, serde_json::Value) {
    let mut ws = ready(url, "device-1").await;
    let mut sub = json!({"type": "subscribe", "room": room});
    if let Some(f) = from {
        sub["fromSequence"] = f.into();
    }
    send(&mut ws, sub).await;
    let subscribed = recv(&mut ws).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    (ws, subscribed)
}

async fn events(ws: &mut Ws, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = recv(ws).await;
        if m["type"] == "event" {
            out.push(m["data"]["sequence"].as_u64().unwrap());
        }
    }
    out
}

async fn publish_n(engine: &Realtime, room: &Room, n: usize) {
    for i in 0..n {
        engine
            .publish(PublishRequest::new(room.clone(), "t", &json!({"i": i})).unwrap())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn migrate_is_idempotent_and_prints_sql() {
    let schema = Schema::new("migrate").await;
    let args = [
        "migrate",
        "--provider",
        "postgres",
        "--connection",
        &url(),
        "--postgres-schema",
        &schema.name,
    ];
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("applied 001_postgres_initial") && out.contains("applied 002_postgres_prune_function"),
        "{out}"
    );
    let (code, out, _) = run(&args);
    assert_eq!(code, 0);
    assert!(out.contains("already applied 001_postgres_initial"), "{out}");
    let (code, out, _) = run(&["migrate", "--provider", "postgres", "--print"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(r#"CREATE TABLE IF NOT EXISTS "realtime_events""#),
        "{out}"
    );
    let (code, _, err) = run(&[
        "migrate",
        "--provider",
        "postgres",
        "--connection",
        "postgres://postgres@127.0.0.1:1/x",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach") && !err.contains("panicked"), "{err}");
    schema.drop().await;
}

#[tokio::test]
async fn publish_replay_and_prune_subcommands() {
    let schema = Schema::new("ops").await;
    let base = [
        "--provider",
        "postgres",
        "--connection",
        &url(),
        "--postgres-schema",
        &schema.name,
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(base.iter().map(|s| s.to_string()));
        v
    };
    for i in 0..3 {
        let payload = format!("{{\"i\":{i}}}");
        let args = with(&[
            "publish",
            "--room",
            "chat:1",
            "--type",
            "message.created",
            "--payload",
            &payload,
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{err}");
        let e: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(e["sequence"], i + 1);
    }
    let args = with(&["replay", "--room", "chat:1", "--from", "1"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, _) = run(&args);
    assert_eq!(code, 0);
    let seqs: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["sequence"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![2, 3]);
    let args = with(&["prune"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, _) = run(&args);
    assert_eq!(code, 0);
    assert!(out.contains("removed 0 expired events"), "{out}");
    let (code, _, err) = run(&["publish", "--room", "chat:1", "--type", "t"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("memory provider lives inside one gateway process"),
        "{err}"
    );
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_with_sigkill_and_restarted_loses_nothing() {
    let schema = Schema::new("crash").await;
    let engine = schema.engine().await;
    let room = Room::parse("orders:1").unwrap();
    let gw = start_gateway(&schema.name);
    let (mut ws, first) = client(&gw.ws, "orders:1", Some(0)).await;
    assert_eq!(first["recovered"], true);
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    publish_n(&engine, &room, 50).await;
    assert_eq!(events(&mut ws, 50).await, (1..=50).collect::<Vec<u64>>());
    ws.send(Message::Text(
        json!({"type": "ack", "room": "orders:1", "sequence": 50})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(recv(&mut ws).await["sequence"], 50);

    // kill -9: no drain, no goodbye.
    let pid = gw.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    drop(gw);
    // Business goes on while the gateway is down.
    publish_n(&engine, &room, 50).await;

    let gw = start_gateway(&schema.name);
    // Resume from the stored cursor (no fromSequence): nothing lost, nothing repeated.
    let (mut ws, resumed) = client(&gw.ws, "orders:1", None).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(
        resumed["epoch"],
        epoch.as_str(),
        "a durable provider keeps its epoch"
    );
    assert_eq!(resumed["lastSequence"], 100);
    publish_n(&engine, &room, 10).await;
    assert_eq!(events(&mut ws, 60).await, (51..=110).collect::<Vec<u64>>());
    // An explicit position works too, on a second connection.
    let (mut ws2, _) = client(&gw.ws, "orders:1", Some(105)).await;
    assert_eq!(events(&mut ws2, 5).await, vec![106, 107, 108, 109, 110]);
    engine.close().await.unwrap();
    drop(gw);
    schema.drop().await;
}
