//! The HTTP API through the real binary: keys from flags and from a key file,
//! the operator commands against a running gateway, and counts that mean "the
//! cluster" with two gateways on Redis and on PostgreSQL.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{BIN, Gateway, Ws, pg_url, recv, redis_url, run, send, start_gateway};
use zps_client::http::Admin;

const KEY: &str = "zps_cli-test-admin-key-0123456789abcdefghij";
const SECRET: &str = "cli-test-secret-0123456789abcdef";

fn http(gw: &Gateway) -> String {
    gw.ws
        .replace("ws://", "http://")
        .trim_end_matches("/ws")
        .to_owned()
}

/// Runs `zero-pub-sub ARGS` against `server` with the admin key.
fn cli(server: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = args.to_vec();
    all.extend(["--server", server, "--api-key", KEY]);
    run(&all, &[])
}

async fn ready_with(url: &str, subscriber: &str, token: &str) -> (Ws, Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    send(
        &mut ws,
        json!({"type": "init", "subscriberId": subscriber, "token": token}),
    )
    .await;
    let ready = recv(&mut ws).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    (ws, ready)
}

async fn subscribe(ws: &mut Ws, room: &str) {
    send(ws, json!({"type": "subscribe", "room": room})).await;
    loop {
        let m = recv(ws).await;
        if m["type"] == "subscribed" {
            return;
        }
    }
}

#[test]
fn api_keys_are_made_hashed_and_refused_when_unusable() {
    let (code, key, file_entry) = run(
        &["api-key", "new", "--name", "billing", "--scopes", "publish,read"],
        &[],
    );
    assert_eq!(code, 0, "{file_entry}");
    let key = key.trim();
    assert!(key.starts_with("zps_") && key.len() == 47, "{key}");
    assert!(file_entry.contains("name = \"billing\""), "{file_entry}");
    assert!(
        !file_entry.contains(key),
        "the key file entry holds only the hash"
    );
    let mut hash = Command::new(BIN)
        .args(["api-key", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(hash.stdin.take().unwrap(), "{key}").unwrap();
    let out = hash.wait_with_output().unwrap();
    let hashed = String::from_utf8(out.stdout).unwrap();
    assert!(file_entry.contains(hashed.trim()), "{file_entry} / {hashed}");

    for (bad, why) in [
        (vec!["--api-key", "not-a-zps-key-but-long-enough"], "zps_"),
        (vec!["--api-key", "zps_short"], "zps_"),
        (
            vec!["--api-key", "zps_a-long-enough-key-0123456789@root"],
            "unknown scope",
        ),
        (
            vec!["--api-keys-file", "/nonexistent/keys.toml"],
            "cannot read --api-keys-file",
        ),
    ] {
        let mut args = vec!["gateway", "--port", "0"];
        args.extend(bad);
        let (code, _, err) = run(&args, &[]);
        assert_ne!(code, 0);
        assert!(err.contains(why), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_against_a_running_gateway() {
    // A second key from a key file, made by the CLI: publish only.
    let (_, publish_key, entry) = run(&["api-key", "new", "--name", "pub", "--scopes", "publish"], &[]);
    let dir = std::env::temp_dir().join(format!("zps-cli-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys.toml");
    std::fs::write(&keys, entry).unwrap();
    let gw = start_gateway(&[
        "--api-key",
        KEY,
        "--api-keys-file",
        keys.to_str().unwrap(),
        "--jwt-secret",
        SECRET,
    ]);
    let server = http(&gw);

    // Publish through the API with the file's key; the same id twice is one event.
    let publish = |id: &str, n: u32| {
        let payload = json!({"n": n}).to_string();
        run(
            &[
                "publish",
                "--server",
                &server,
                "--api-key",
                publish_key.trim(),
                "--room",
                "chat:1",
                "--type",
                "m",
                "--payload",
                &payload,
                "--id",
                id,
            ],
            &[],
        )
    };
    let (code, out, err) = publish("a", 1);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"id": "a", "room": "chat:1", "sequence": 1, "duplicate": false})
    );
    let (_, out, _) = publish("a", 1);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["duplicate"], true);
    assert_eq!(publish("b", 2).0, 0);
    // The publish-only key reads nothing.
    let (code, _, err) = run(
        &["rooms", "--server", &server, "--api-key", publish_key.trim()],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("4403"), "{err}");
    let (code, _, err) = run(
        &[
            "rooms",
            "--server",
            &server,
            "--api-key",
            "zps_unknown-key-0000000000000000",
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("4401"), "{err}");

    let (code, out, err) = cli(&server, &["history", "chat:1", "--json"]);
    assert_eq!(code, 0, "{err}");
    let seqs: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["sequence"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![1, 2]);
    let (_, table, _) = cli(&server, &["history", "chat:1", "--from", "1"]);
    assert!(table.starts_with("SEQ"), "{table}");
    assert_eq!(table.lines().count(), 2, "{table}");

    // A token minted by the CLI opens a socket; the socket shows in rooms and presence.
    let (code, token, err) = cli(&server, &["token", "alice", "--room", "chat:*"]);
    assert_eq!(code, 0, "{err}");
    let (mut ws, _) = ready_with(&gw.ws, "alice", token.trim()).await;
    subscribe(&mut ws, "chat:1").await;
    send(
        &mut ws,
        json!({"type": "presence_enter", "room": "chat:1", "metadata": {"name": "Alice"}}),
    )
    .await;
    let (_, rooms, _) = cli(&server, &["rooms", "--json"]);
    let rooms: Value = serde_json::from_str(&rooms).unwrap();
    assert_eq!(rooms["rooms"], json!([{"room": "chat:1", "subscribers": 1}]));
    let (_, one, _) = cli(&server, &["rooms", "chat:1", "--json"]);
    let one: Value = serde_json::from_str(&one).unwrap();
    assert_eq!(
        (one["lastSequence"].as_u64(), one["subscribers"].as_u64()),
        (Some(2), Some(1))
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, members, _) = cli(&server, &["presence", "chat:1", "--json"]);
        let members: Value = serde_json::from_str(&members).unwrap();
        if members.as_array().is_some_and(|m| m.len() == 1) {
            assert_eq!(members[0]["userId"], "alice");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice never showed in presence: {members}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // `tail --server` prints the history then live events, in order, once.
    let mut tail = Command::new(BIN)
        .args([
            "tail",
            "--server",
            &server,
            "--api-key",
            KEY,
            "--room",
            "chat:1",
            "--from",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let mut tailed = Vec::new();
    for _ in 0..2 {
        let line = lines.next().unwrap().unwrap();
        tailed.push(
            serde_json::from_str::<Value>(&line).unwrap()["sequence"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(publish("c", 3).0, 0);
    let line = lines.next().unwrap().unwrap();
    tailed.push(
        serde_json::from_str::<Value>(&line).unwrap()["sequence"]
            .as_u64()
            .unwrap(),
    );
    assert_eq!(tailed, vec![1, 2, 3]);
    let _ = tail.kill();
    let _ = tail.wait();

    // Kick with a reason: the socket hears it, then closes with 4403.
    let (code, out, err) = cli(
        &server,
        &[
            "kick",
            "--subscriber",
            "alice",
            "--reason",
            "bye",
            "--ban-seconds",
            "30",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "closed 1 connection(s)");
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut told = None;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "error" {
                    told = Some(v);
                }
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(close, Some(4403));
    assert_eq!(told.unwrap()["message"], "bye");
    let (code, _, err) = cli(&server, &["kick", "--connection", "no-such-connection"]);
    assert_ne!(code, 0);
    assert!(err.contains("4406"), "{err}");
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two gateways on one shared provider: counts and presence are the cluster's.
async fn cluster_counts(a: &Gateway, b: &Gateway) {
    let (sa, sb) = (http(a), http(b));
    let token = |sub: &str| {
        let (code, t, err) = cli(&sa, &["token", sub, "--room", "team:*"]);
        assert_eq!(code, 0, "{err}");
        t.trim().to_owned()
    };
    let mut sockets = Vec::new();
    for (i, node) in [a, b, b].into_iter().enumerate() {
        let sub = format!("member-{i}");
        let (mut ws, _) = ready_with(&node.ws, &sub, &token(&sub)).await;
        subscribe(&mut ws, "team:1").await;
        sockets.push(ws);
    }
    send(
        &mut sockets[2],
        json!({"type": "presence_enter", "room": "team:1"}),
    )
    .await;
    let admin = Admin::new(&sa, KEY).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let room = admin.room("team:1").await.unwrap();
        let list = admin.rooms(Some("team:"), None, None).await.unwrap();
        if room.subscribers == 3 && room.presence == 1 && list.nodes == 2 {
            assert_eq!(list.rooms.len(), 1);
            assert_eq!(list.rooms[0].subscribers, 3);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node A never saw the cluster's counts: {room:?} / {} nodes",
            list.nodes
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Asked on the other node, the same answer once node A's own report is in
    // (each node reports every few seconds: A can see B's report before B sees A's).
    let other_admin = Admin::new(&sb, KEY).unwrap();
    loop {
        let other = other_admin.room("team:1").await.unwrap();
        if (other.subscribers, other.presence) == (3, 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node B never saw the cluster's counts: {other:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let members = admin.presence("team:1").await.unwrap().members;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].user_id, "member-2");
}

/// A disconnect sent to node A closes the subscriber's connection on node B
/// (the reason, then close 4403) and bans it there too.
async fn cluster_disconnect(a: &Gateway, b: &Gateway) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let sa = http(a);
    let (code, token, err) = cli(&sa, &["token", "roamer", "--room", "team:*"]);
    assert_eq!(code, 0, "{err}");
    let (mut ws, _) = ready_with(&b.ws, "roamer", token.trim()).await;
    let (code, out, err) = cli(
        &sa,
        &[
            "kick",
            "--subscriber",
            "roamer",
            "--reason",
            "moved",
            "--ban-seconds",
            "60",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["closed"],
        0,
        "none on node A"
    );
    let mut told = None;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let m: Value = serde_json::from_str(t.as_str()).unwrap();
                if m["type"] == "error" {
                    told = Some(m);
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => {}
            other => panic!("node B did not close the connection: {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(4403));
    let told = told.unwrap_or_else(|| panic!("no reason before the close"));
    assert!(
        told["message"].as_str().unwrap_or_default().contains("moved"),
        "{told}"
    );
    // Banned on node B as well: a reconnection is refused.
    let (mut again, _) = tokio_tungstenite::connect_async(b.ws.as_str()).await.unwrap();
    send(
        &mut again,
        json!({"type": "init", "subscriberId": "roamer", "token": token.trim()}),
    )
    .await;
    let refused = recv(&mut again).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("4403")),
        "{refused}"
    );
}

fn cluster_node(provider: &[&str]) -> Gateway {
    let mut args = vec![
        "--api-key",
        KEY,
        "--jwt-secret",
        SECRET,
        "--cluster-report-interval-ms",
        "100",
    ];
    args.extend_from_slice(provider);
    start_gateway(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_counts_on_redis() {
    let prefix = format!("zps-cli-api-{}:", std::process::id());
    let redis = redis_url();
    let provider = [
        "--provider",
        "redis",
        "--connection",
        &redis,
        "--redis-prefix",
        &prefix,
    ];
    let (a, b) = (cluster_node(&provider), cluster_node(&provider));
    cluster_counts(&a, &b).await;
    cluster_disconnect(&a, &b).await;
    drop((a, b));
    use zps_redis::fred::prelude::*;
    let client = Builder::from_config(Config::from_url(&redis).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    zps_redis::delete_prefix(&client, &prefix).await.unwrap();
    client.quit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_counts_and_dead_letters_on_postgres() {
    let schema = format!("zps_cli_api_{}", std::process::id());
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
    let pg = pg_url();
    let provider = [
        "--provider",
        "postgres",
        "--connection",
        &pg,
        "--postgres-schema",
        &schema,
    ];
    let (a, b) = (cluster_node(&provider), cluster_node(&provider));
    cluster_counts(&a, &b).await;
    cluster_disconnect(&a, &b).await;

    // Dead letters written by a backend's engine, handled from the CLI.
    let config = zps_postgres::PostgresConfig {
        schema: Some(schema.clone()),
        ..Default::default()
    };
    let engine = zps_core::Realtime::new(std::sync::Arc::new(
        zps_postgres::PostgresTransport::connect(&pg, config)
            .await
            .unwrap(),
    ));
    let room = zps_core::Room::parse("billing:1").unwrap();
    let mut entries = Vec::new();
    for i in 1..=2 {
        let req = zps_core::PublishRequest::new(room.clone(), "invoice", &json!({"i": i})).unwrap();
        let event = engine.publish(req).await.unwrap();
        let entry = engine
            .dlq(room.clone())
            .write(zps_core::NewDlqEntry {
                event: (*event).clone(),
                error: "mailer down".into(),
                attempts: 5,
                subscriber_id: Some("mailer".into()),
                failed_at: zps_core::Timestamp::now(),
            })
            .await
            .unwrap();
        entries.push(entry.entry_id.to_string());
    }
    let server = http(&b);
    // Without a room: the rooms that hold dead letters, from the store.
    let (code, index, err) = cli(&server, &["dlq", "list", "--prefix", "billing:", "--json"]);
    assert_eq!(code, 0, "{err}");
    let index: Value = serde_json::from_str(&index).unwrap();
    assert_eq!(
        index["rooms"],
        json!([{"room": "billing:1", "size": 2}]),
        "{index}"
    );
    let (_, table, _) = cli(&server, &["dlq", "list"]);
    assert_eq!(
        table
            .lines()
            .nth(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["billing:1", "2"]),
        "{table}"
    );
    let (code, listed, err) = cli(&server, &["dlq", "list", "billing:1", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let (code, out, err) = cli(&server, &["dlq", "replay", "billing:1", &entries[0], "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["sequence"], 3);
    assert_eq!(cli(&server, &["dlq", "drop", "billing:1", &entries[1]]).0, 0);
    let (_, table, err) = cli(&server, &["dlq", "list", "billing:1"]);
    assert_eq!(table.lines().count(), 1, "only the header is left: {table}");
    assert!(err.contains("(0 in the queue)"), "{err}");
    engine.close().await.unwrap();
    drop((a, b));
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// `--redact-payload-fields` and `--require-tenant` from the command line:
/// the fields are gone from live events, catch-up and history; a publish
/// without a tenant is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_from_the_command_line() {
    let gw = start_gateway(&[
        "--api-key",
        KEY,
        "--redact-payload-fields",
        "secret,card.number",
        "--require-tenant",
    ]);
    let server = http(&gw);
    let (mut live, _) = tokio_tungstenite::connect_async(gw.ws.as_str()).await.unwrap();
    send(&mut live, json!({"type": "init", "subscriberId": "viewer"})).await;
    assert_eq!(recv(&mut live).await["type"], "ready");
    subscribe(&mut live, "shop:1").await;
    let payload =
        json!({"secret": "s3cr3t", "card": {"number": "4111111111111111", "brand": "visa"}, "ok": 1});
    let publisher = zps_client::http::Publisher::new(&server, KEY).unwrap();
    let untagged = zps_client::OutgoingEvent::new("shop:1", "order", &payload).unwrap();
    let refused = publisher.publish(untagged).await.unwrap_err();
    assert!(refused.to_string().contains("tenantId"), "{refused}");
    let tagged = zps_client::OutgoingEvent::new("shop:1", "order", &payload)
        .unwrap()
        .with_metadata("tenantId", json!("acme"));
    assert_eq!(publisher.publish(tagged).await.unwrap().sequence, 1);
    let redacted = json!({"card": {"brand": "visa"}, "ok": 1});
    let event = loop {
        let m = recv(&mut live).await;
        if m["type"] == "event" {
            break m;
        }
    };
    assert_eq!(event["data"]["payload"], redacted);
    let (_, history, err) = cli(&server, &["history", "shop:1", "--json"]);
    let first: Value =
        serde_json::from_str(history.lines().next().unwrap_or_else(|| panic!("{err}"))).unwrap();
    assert_eq!(first["payload"], redacted);
    let (mut later, _) = tokio_tungstenite::connect_async(gw.ws.as_str()).await.unwrap();
    send(&mut later, json!({"type": "init", "subscriberId": "late"})).await;
    assert_eq!(recv(&mut later).await["type"], "ready");
    send(
        &mut later,
        json!({"type": "subscribe", "room": "shop:1", "fromSequence": 0}),
    )
    .await;
    let caught_up = loop {
        let m = recv(&mut later).await;
        if m["type"] == "event" {
            break m;
        }
    };
    assert_eq!(caught_up["data"]["payload"], redacted);
}
