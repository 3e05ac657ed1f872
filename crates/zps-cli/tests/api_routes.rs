//! Every route of the HTTP API, read from the OpenAPI document the binary
//! serves, through the real binary on PostgreSQL over real HTTP: 401 without a
//! credential and with an unknown key, 403 (`4403`) for a key without the
//! route's scope, 403 (`4408`) for a key limited to other rooms (lists filter
//! instead), 400 for bad JSON and wrong types, 413 for an oversized body, 404
//! for unknown ids, and the answer with the right key. A route added to the
//! API without a row here fails the test, and so does a row for a route the
//! document no longer has.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use support::{BIN, Gateway, pg_url, recv, send, start_gateway};

const SECRET: &str = "routes-test-secret-0123456789abcdef";
const ADMIN: &str = "zps_routes-test-all-scopes-0123456789abcdef";
const NO_PUBLISH: &str = "zps_routes-test-no-publish-0123456789abcde";
const NO_READ: &str = "zps_routes-test-no-read-0123456789abcdefghi";
const NO_ADMIN: &str = "zps_routes-test-no-admin-0123456789abcdefgh";
const OTHER_ROOMS: &str = "zps_routes-test-other-rooms-0123456789abcd";
const UNKNOWN: &str = "zps_routes-test-unknown-0123456789abcdefgh";
const ROOM: &str = "chat:1";
const MAX_BODY: usize = 16 * 1024;

/// How a key limited to `other:*` is treated on a route.
#[derive(Clone, Copy, PartialEq)]
enum Limited {
    /// Refused with 4408: the route acts on a room the key may not touch, or
    /// beyond one room.
    Refused,
    /// Answered: the route lists, and shows only the key's rooms.
    Filtered,
}

/// One route: how to call it and what it needs.
struct Route {
    method: &'static str,
    /// The path as the document spells it.
    doc: &'static str,
    /// The concrete path (`{conn_a}`, `{conn_b}`, `{entry1}`, `{entry2}` filled in at run time).
    path: &'static str,
    scope: &'static str,
    limited: Limited,
    body: Option<Value>,
    /// The body with a field of the wrong type.
    wrong: Option<Value>,
    ok: u16,
    /// The path with an unknown id, answered 404.
    missing: Option<&'static str>,
}

// One row per route, kept one call per route for reading as a table.
#[rustfmt::skip]
fn routes() -> Vec<Route> {
    use Limited::{Filtered, Refused};
    let r = |method, doc, path, scope, limited, body: Option<Value>, wrong: Option<Value>, ok, missing| Route {
        method, doc, path, scope, limited, body, wrong, ok, missing,
    };
    // In the order they run: writes before the reads that need them, kicks last.
    vec![
        r("POST", "/publish", "/publish", "publish", Refused,
          Some(json!({"room": ROOM, "type": "m", "payload": {"n": 1}, "id": "route-1"})),
          Some(json!({"room": 5, "type": "m"})), 200, None),
        r("POST", "/broadcast", "/broadcast", "publish", Refused,
          Some(json!({"rooms": [ROOM, "chat:2"], "type": "m", "payload": {}, "id": "route-b"})),
          Some(json!({"rooms": ROOM, "type": "m"})), 207, None),
        r("POST", "/ephemeral", "/ephemeral", "publish", Refused,
          Some(json!({"room": ROOM, "type": "typing"})),
          Some(json!({"room": ROOM, "type": 7})), 202, None),
        r("GET", "/rooms", "/rooms", "read", Filtered, None, None, 200, None),
        r("GET", "/rooms/{room}", "/rooms/chat:1", "read", Refused, None, None, 200, None),
        r("GET", "/rooms/{room}/events", "/rooms/chat:1/events?fromSequence=0&toSequence=2", "read", Refused,
          None, None, 200, None),
        r("PUT", "/rooms/{room}/snapshot", "/rooms/chat:1/snapshot", "admin", Refused,
          Some(json!({"lastSequence": 1, "state": {"n": 1}})),
          Some(json!({"lastSequence": "one", "state": {}})), 200, None),
        r("GET", "/rooms/{room}/snapshot", "/rooms/chat:1/snapshot", "read", Refused, None, None, 200,
          Some("/rooms/chat:404/snapshot")),
        r("PUT", "/subscribers/{id}/cursors/{room}", "/subscribers/sub-1/cursors/chat:1", "admin", Refused,
          Some(json!({"sequence": 1})), Some(json!({"sequence": -1})), 200, None),
        r("GET", "/subscribers/{id}/cursors/{room}", "/subscribers/sub-1/cursors/chat:1", "read", Refused,
          None, None, 200, Some("/subscribers/nobody/cursors/chat:1")),
        r("PUT", "/rooms/{room}/presence/{connection}", "/rooms/chat:1/presence/{conn_a}", "admin", Refused,
          Some(json!({"metadata": {"name": "Ann"}})), Some(json!({"metadata": "Ann"})), 200,
          Some("/rooms/chat:1/presence/no-such-connection")),
        r("GET", "/rooms/{room}/presence", "/rooms/chat:1/presence", "read", Refused, None, None, 200, None),
        r("DELETE", "/rooms/{room}/presence/{connection}", "/rooms/chat:1/presence/{conn_a}", "admin", Refused,
          None, None, 204, Some("/rooms/chat:1/presence/no-such-connection")),
        r("GET", "/dlq", "/dlq", "read", Filtered, None, None, 200, None),
        r("GET", "/rooms/{room}/dlq", "/rooms/chat:1/dlq", "read", Refused, None, None, 200, None),
        r("POST", "/rooms/{room}/dlq/{entry}/replay", "/rooms/chat:1/dlq/{entry1}/replay", "admin", Refused,
          None, None, 200, Some("/rooms/chat:1/dlq/999999/replay")),
        r("DELETE", "/rooms/{room}/dlq/{entry}", "/rooms/chat:1/dlq/{entry2}", "admin", Refused,
          None, None, 204, Some("/rooms/chat:1/dlq/999999")),
        r("POST", "/prune", "/prune", "admin", Refused, None, None, 200, None),
        r("POST", "/tokens", "/tokens", "read", Refused,
          Some(json!({"subject": "user-9", "rooms": [ROOM]})),
          Some(json!({"subject": 9, "rooms": []})), 200, None),
        r("POST", "/room-tokens", "/room-tokens", "admin", Refused,
          Some(json!({"room": ROOM, "actions": ["subscribe"]})),
          Some(json!({"room": ROOM, "actions": "subscribe"})), 200, None),
        r("POST", "/subscribers/{id}/disconnect", "/subscribers/sub-1/disconnect", "admin", Refused,
          Some(json!({"reason": "route test"})), Some(json!({"banSeconds": "long"})), 200, None),
        r("DELETE", "/connections/{id}", "/connections/{conn_b}", "admin", Refused, None, None, 200,
          Some("/connections/no-such-connection")),
    ]
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn raw(&self, method: &str, path: &str, key: Option<&str>, body: Option<String>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn call(&self, method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> (u16, Value) {
        self.raw(method, path, key, body.map(Value::to_string)).await
    }
}

/// Asserts a refusal of a route: the one error shape with `code`, or — on
/// `/broadcast`, which answers per room — a 207 whose every result is refused
/// with `code` (authentication still fails the whole request).
fn refused_by(route: &Route, what: &str, answer: &(u16, Value), status: u16, code: &str) {
    if route.doc != "/broadcast" || status == 401 {
        return refused(what, answer, status, code);
    }
    assert_eq!(answer.0, 207, "{what}: {answer:?}");
    let results = answer.1["results"].as_array().unwrap();
    assert!(
        !results.is_empty() && results.iter().all(|r| r["error"]["code"] == code),
        "{what}: {answer:?}"
    );
}

/// Asserts the API's one error shape with `code`.
fn refused(what: &str, answer: &(u16, Value), status: u16, code: &str) {
    assert_eq!(answer.0, status, "{what}: {answer:?}");
    assert_eq!(answer.1["error"]["code"], code, "{what}: {answer:?}");
    assert!(
        answer.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {answer:?}"
    );
}

fn hash(key: &str) -> String {
    let mut child = Command::new(BIN)
        .args(["api-key", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned()
}

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A WebSocket client of `sub`, subscribed to the room; its connection id.
async fn connection(gw: &Gateway, sub: &str) -> (support::Ws, String) {
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws.as_str()).await.unwrap();
    send(
        &mut ws,
        json!({"type": "init", "subscriberId": sub, "token": token(sub)}),
    )
    .await;
    let ready = recv(&mut ws).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    let id = ready["connectionId"].as_str().unwrap().to_owned();
    (ws, id)
}

struct Schema {
    name: String,
    pool: sqlx::PgPool,
}

impl Schema {
    async fn new() -> Self {
        let name = format!("zps_cli_routes_{}", std::process::id());
        let pool = zps_postgres::connect_pool(&pg_url(), &zps_postgres::PostgresConfig::default())
            .await
            .unwrap();
        for sql in [
            format!("DROP SCHEMA IF EXISTS {name} CASCADE"),
            format!("CREATE SCHEMA {name}"),
        ] {
            sqlx::query(&sql).execute(&pool).await.unwrap();
        }
        Self { name, pool }
    }

    async fn drop(self) {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .execute(&self.pool)
            .await
            .unwrap();
        self.pool.close().await;
    }
}

/// Two dead letters in the room, written as a backend's engine would; their entry ids.
async fn dead_letters(schema: &str) -> (zps_core::Realtime, Vec<String>) {
    let config = zps_postgres::PostgresConfig {
        schema: Some(schema.to_owned()),
        ..Default::default()
    };
    let engine = zps_core::Realtime::new(std::sync::Arc::new(
        zps_postgres::PostgresTransport::connect(&pg_url(), config)
            .await
            .unwrap(),
    ));
    let room = zps_core::Room::parse(ROOM).unwrap();
    let mut ids = Vec::new();
    for i in 0..2 {
        let req = zps_core::PublishRequest::new(room.clone(), "job", &json!({"i": i})).unwrap();
        let event = engine.publish(req).await.unwrap();
        let entry = engine
            .dlq(room.clone())
            .write(zps_core::NewDlqEntry {
                event: (*event).clone(),
                error: "worker down".into(),
                attempts: 3,
                subscriber_id: Some("worker".into()),
                failed_at: zps_core::Timestamp::now(),
            })
            .await
            .unwrap();
        ids.push(entry.entry_id.to_string());
    }
    (engine, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_answers_and_refuses_as_documented() {
    let schema = Schema::new().await;
    let dir = std::env::temp_dir().join(format!("zps-cli-routes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nname = \"other-rooms\"\nhash = \"{}\"\nscopes = [\"publish\", \"read\", \"admin\"]\nrooms = [\"other:*\"]\n",
            hash(OTHER_ROOMS)
        ),
    )
    .unwrap();
    let pg = pg_url();
    let max_body = MAX_BODY.to_string();
    let gw = start_gateway(&[
        "--provider",
        "postgres",
        "--connection",
        &pg,
        "--postgres-schema",
        &schema.name,
        "--jwt-secret",
        SECRET,
        "--api-key",
        ADMIN,
        "--api-key",
        &format!("{NO_PUBLISH}@read+admin"),
        "--api-key",
        &format!("{NO_READ}@publish+admin"),
        "--api-key",
        &format!("{NO_ADMIN}@publish+read"),
        "--api-keys-file",
        keys.to_str().unwrap(),
        "--api-max-body-bytes",
        &max_body,
    ]);
    let api = Api {
        base: gw
            .ws
            .replace("ws://", "http://")
            .trim_end_matches("/ws")
            .to_owned()
            + "/api/v1",
        client: reqwest::Client::new(),
    };
    let (engine, entries) = dead_letters(&schema.name).await;
    let (_a, conn_a) = connection(&gw, "sub-1").await;
    let (_b, conn_b) = connection(&gw, "sub-2").await;

    // The document and the table name the same routes.
    let (status, doc) = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            let path = path.trim_start_matches("/api/v1").to_owned();
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let table = routes();
    let tested: BTreeSet<(String, String)> = table
        .iter()
        .map(|r| (r.method.to_owned(), r.doc.to_owned()))
        .collect();
    assert_eq!(
        documented, tested,
        "every documented route has a row, and no row is undocumented"
    );

    let oversized = json!({"pad": "x".repeat(MAX_BODY + 1)});
    for route in &table {
        let what = format!("{} {}", route.method, route.doc);
        let path = route
            .path
            .replace("{conn_a}", &conn_a)
            .replace("{conn_b}", &conn_b)
            .replace("{entry1}", &entries[0])
            .replace("{entry2}", &entries[1]);
        let body = route.body.as_ref();
        let m = route.method;
        refused_by(route, &what, &api.call(m, &path, None, body).await, 401, "4401");
        refused_by(
            route,
            &what,
            &api.call(m, &path, Some(UNKNOWN), body).await,
            401,
            "4401",
        );
        let lacking = match route.scope {
            "publish" => NO_PUBLISH,
            "read" => NO_READ,
            _ => NO_ADMIN,
        };
        refused_by(
            route,
            &what,
            &api.call(m, &path, Some(lacking), body).await,
            403,
            "4403",
        );
        let limited = api.call(m, &path, Some(OTHER_ROOMS), body).await;
        match route.limited {
            Limited::Refused => refused_by(route, &what, &limited, 403, "4408"),
            Limited::Filtered => assert_eq!(limited.0, 200, "{what}: {limited:?}"),
        }
        if let Some(wrong) = &route.wrong {
            refused(
                &what,
                &api.raw(m, &path, Some(ADMIN), Some("{".into())).await,
                400,
                "4400",
            );
            refused(
                &what,
                &api.call(m, &path, Some(ADMIN), Some(wrong)).await,
                400,
                "4400",
            );
            refused(
                &what,
                &api.call(m, &path, Some(ADMIN), Some(&oversized)).await,
                413,
                "4413",
            );
        }
        if let Some(missing) = route.missing {
            refused(&what, &api.call(m, missing, Some(ADMIN), body).await, 404, "4406");
        }
        let ok = api.call(m, &path, Some(ADMIN), body).await;
        assert_eq!(ok.0, route.ok, "{what}: {ok:?}");
        check_answer(route, &ok.1, &entries);
    }

    // Idempotent retries: the same id is one event.
    let again = api
        .call("POST", "/publish", Some(ADMIN), table[0].body.as_ref())
        .await;
    assert_eq!(again.0, 200, "{again:?}");
    assert_eq!(
        (again.1["sequence"].as_u64(), again.1["duplicate"].as_bool()),
        (Some(3), Some(true))
    );
    let again = api
        .call("POST", "/broadcast", Some(ADMIN), table[1].body.as_ref())
        .await;
    assert!(
        again.1["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["duplicate"] == true),
        "{again:?}"
    );
    // A dead letter replayed is gone: replaying it again is a 404, not a second event.
    let replay = format!("/rooms/chat:1/dlq/{}/replay", entries[0]);
    refused(
        "replay twice",
        &api.call("POST", &replay, Some(ADMIN), None).await,
        404,
        "4406",
    );
    // Bad query values are refused too.
    refused(
        "bad query",
        &api.call("GET", "/rooms/chat:1/events?fromSequence=abc", Some(ADMIN), None)
            .await,
        400,
        "4400",
    );

    engine.close().await.unwrap();
    drop(gw);
    schema.drop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// What the successful answers hold (beyond their status).
fn check_answer(route: &Route, answer: &Value, entries: &[String]) {
    let what = format!("{} {}: {answer}", route.method, route.doc);
    match (route.method, route.doc) {
        // Two events of the engine's own, then this one.
        ("POST", "/publish") => assert_eq!(answer["sequence"], 3, "{what}"),
        ("GET", "/rooms/{room}") => {
            assert_eq!(answer["lastSequence"], 4, "{what}");
            assert_eq!(answer["subscribers"], 0, "{what}");
        }
        ("GET", "/rooms/{room}/events") => {
            let seqs: Vec<_> = answer["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["sequence"].as_u64().unwrap())
                .collect();
            assert_eq!(seqs, [1, 2], "toSequence bounds the page: {what}");
        }
        ("GET", "/rooms/{room}/snapshot") => assert_eq!(answer["state"], json!({"n": 1}), "{what}"),
        ("GET", "/subscribers/{id}/cursors/{room}") => assert_eq!(answer["sequence"], 1, "{what}"),
        ("PUT", "/rooms/{room}/presence/{connection}") => {
            assert_eq!(answer["members"][0]["userId"], "sub-1", "{what}")
        }
        ("GET", "/dlq") => assert_eq!(answer["rooms"], json!([{"room": ROOM, "size": 2}]), "{what}"),
        ("GET", "/rooms/{room}/dlq") => {
            let ids: Vec<String> = answer["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["entryId"].to_string())
                .collect();
            assert_eq!(ids, entries, "{what}");
        }
        ("POST", "/rooms/{room}/dlq/{entry}/replay") => assert_eq!(answer["duplicate"], false, "{what}"),
        ("POST", "/subscribers/{id}/disconnect") | ("DELETE", "/connections/{id}") => {
            assert_eq!(answer["closed"], 1, "{what}")
        }
        ("POST", "/tokens") | ("POST", "/room-tokens") => {
            assert!(
                answer["token"]
                    .as_str()
                    .is_some_and(|t| t.split('.').count() == 3),
                "{what}"
            )
        }
        _ => {}
    }
}

/// `GET /rooms` pages by name with `after` and `next`, over the cluster's counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_lists_page_by_name() {
    let gw = start_gateway(&["--api-key", ADMIN, "--cluster-report-interval-ms", "100"]);
    let api = Api {
        base: gw
            .ws
            .replace("ws://", "http://")
            .trim_end_matches("/ws")
            .to_owned()
            + "/api/v1",
        client: reqwest::Client::new(),
    };
    let mut sockets = Vec::new();
    for room in ["page:a", "page:b", "page:c"] {
        let mut ws = support::ready(&gw.ws, &format!("s-{room}")).await;
        send(&mut ws, json!({"type": "subscribe", "room": room})).await;
        while recv(&mut ws).await["type"] != "subscribed" {}
        sockets.push(ws);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let first = loop {
        let page = api
            .call("GET", "/rooms?prefix=page:&limit=2", Some(ADMIN), None)
            .await;
        if page.1["rooms"].as_array().is_some_and(|r| r.len() == 2) || std::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        first.1["rooms"],
        json!([{"room": "page:a", "subscribers": 1}, {"room": "page:b", "subscribers": 1}]),
        "{first:?}"
    );
    assert_eq!(first.1["next"], "page:b");
    let second = api
        .call(
            "GET",
            "/rooms?prefix=page:&limit=2&after=page:b",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(
        second.1["rooms"],
        json!([{"room": "page:c", "subscribers": 1}]),
        "{second:?}"
    );
    assert!(
        second.1.get("next").is_none(),
        "the last page has no next: {second:?}"
    );
}
