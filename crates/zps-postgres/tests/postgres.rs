//! PostgreSQL-specific behaviour on a real server: cross-process fan-out, listener
//! loss, large payloads, configuration errors, migrations, epochs and pruning.
//! Every test works in its own schema (or database) and removes it afterwards.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;
use zps_core::transport::Retention;

use common::{Cleanup, Schema, url};
use futures::StreamExt;
use serde_json::json;
use sqlx::postgres::PgListener;
use zps_conformance::{WAIT, seqs, take_events, unique_room};
use zps_core::{
    CatchUpOptions, DiscontinuityReason, EphemeralRequest, Error, HealthStatus, PublishRequest, Realtime,
    ReplayQuery, Room, SubscribeOptions, SubscriptionItem, Transport,
};
use zps_postgres::{MIGRATIONS, PostgresConfig, PostgresError, PostgresTransport, migrate, prune_expired};

fn req(room: &Room, payload: serde_json::Value) -> PublishRequest {
    PublishRequest::new(room.clone(), "t", &payload).unwrap()
}

async fn schema(prefix: &str) -> (Arc<Schema>, Cleanup) {
    let s = Arc::new(Schema::new(prefix).await.unwrap());
    (s.clone(), Cleanup(s))
}

async fn wait_until<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A never-analyzed events table gets planner statistics once 10 000 events were
/// published, so large catch-ups are planned as ordered index scans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grown_events_table_gets_planner_statistics() {
    let (s, _guard) = schema("stats").await;
    let t = s.transport().await;
    let room = unique_room("big");
    let now = zps_core::Timestamp::now();
    let analyzed = |admin: zps_postgres::PgPool, schema: String| async move {
        let row: (bool,) = sqlx::query_as(
            "SELECT last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL
             FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'realtime_events'",
        )
        .bind(schema)
        .fetch_one(&admin)
        .await
        .unwrap();
        row.0
    };
    for chunk in 0..10 {
        let events = (0..1000)
            .map(|i| {
                zps_core::NewEvent::from_request(
                    req(&room, json!({"i": chunk * 1000 + i})),
                    Duration::from_secs(600),
                    now,
                )
                .unwrap()
            })
            .collect();
        t.publish_batch(events).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while !analyzed(s.admin.clone(), s.name.clone()).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the events table was not analyzed after 10 000 events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let plan: Vec<(String,)> = sqlx::query_as(&format!(
        "EXPLAIN SELECT sequence FROM {}.realtime_events
         WHERE room = '{}' AND sequence > 5000 ORDER BY sequence LIMIT 500",
        s.name,
        room.as_str()
    ))
    .fetch_all(&s.admin)
    .await
    .unwrap();
    let plan: String = plan.into_iter().map(|(l,)| l + "\n").collect();
    assert!(
        plan.contains("Index") && !plan.contains("Bitmap") && !plan.contains("Sort"),
        "a page of a large room should be an ordered index scan:\n{plan}"
    );
    t.close().await.unwrap();
}

/// Two transports (separate pools and LISTEN connections), 8 publishers spread over
/// both, one room: every subscriber on both sides sees 1..=N once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_transports_many_publishers_one_ordered_history() {
    let (s, _guard) = schema("two").await;
    let (t1, t2) = (s.transport().await, s.transport().await);
    let (rt1, rt2) = (Realtime::new(Arc::new(t1)), Realtime::new(Arc::new(t2)));
    let chat = unique_room("chat");
    let mut subs = Vec::new();
    for rt in [&rt1, &rt2, &rt1, &rt2] {
        subs.push(
            rt.subscribe_stream(SubscribeOptions::room(chat.clone()))
                .await
                .unwrap(),
        );
    }
    let per = 300u64;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let rt = if i % 2 == 0 { rt1.clone() } else { rt2.clone() };
            let chat = chat.clone();
            tokio::spawn(async move {
                for n in 0..per {
                    rt.publish(req(&chat, json!({"p": i, "n": n}))).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let n = 8 * per;
    let expected: Vec<u64> = (1..=n).collect();
    for sub in &mut subs {
        assert_eq!(seqs(&take_events(sub, n as usize).await), expected);
    }
    assert_eq!(rt2.room_info(&chat).await.unwrap().last_sequence, n);
    rt1.close().await.unwrap();
    rt2.close().await.unwrap();
    s.drop_schema().await;
}

async fn listener_pid_of(s: &Schema, app: &str) -> Option<i32> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
        .bind(format!("{app}-listener"))
        .fetch_optional(&s.admin)
        .await
        .unwrap()
}

/// The subscriber's LISTEN connection is terminated twice mid-stream; it reconnects,
/// the engine re-reads history, and every event 1..=N still arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listener_connection_killed_mid_stream_loses_nothing() {
    let (s, _guard) = schema("kill").await;
    let app = format!("zps-test-{}", &s.name[9..]);
    let subscriber_side = s.transport_named(&app).await;
    let publisher_side = s.transport().await;
    let pid = listener_pid_of(&s, &app)
        .await
        .expect("listener visible in pg_stat_activity");
    assert_eq!(subscriber_side.listener_backend_pid(), Some(pid));
    let rt_sub = Realtime::new(Arc::new(subscriber_side.clone()));
    let rt_pub = Realtime::new(Arc::new(publisher_side));
    let chat = unique_room("chat");
    let mut sub = rt_sub
        .subscribe_stream(SubscribeOptions::room(chat.clone()))
        .await
        .unwrap();
    let n = 900u64;
    let publisher = {
        let (rt, chat) = (rt_pub.clone(), chat.clone());
        tokio::spawn(async move {
            for i in 1..=n {
                rt.publish(req(&chat, json!({"i": i}))).await.unwrap();
            }
        })
    };
    let mut got = take_events(&mut sub, 200).await;
    let mut killed = vec![pid];
    for round in 0..2 {
        let victim = *killed.last().unwrap();
        let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(victim)
            .fetch_one(&s.admin)
            .await
            .unwrap();
        assert!(done, "terminated listener {victim}");
        got.extend(take_events(&mut sub, 200).await);
        // Wait for the replacement connection before the next round.
        let t = subscriber_side.clone();
        wait_until("listener reconnect", || {
            t.listener_backend_pid().is_some_and(|p| !killed.contains(&p))
        })
        .await;
        killed.push(subscriber_side.listener_backend_pid().unwrap());
        assert_eq!(
            listener_pid_of(&s, &app).await,
            killed.last().copied(),
            "round {round}: the new listener is the one in pg_stat_activity"
        );
    }
    publisher.await.unwrap();
    got.extend(take_events(&mut sub, (n as usize) - got.len()).await);
    assert_eq!(seqs(&got), (1..=n).collect::<Vec<_>>());
    for e in &got {
        assert_eq!(e.payload_as::<serde_json::Value>().unwrap()["i"], e.sequence);
    }
    assert!(subscriber_side.listener_connected());
    let h = subscriber_side.health().await;
    assert_eq!(h.status, HealthStatus::Healthy);
    assert_eq!(h.details["listenerReconnects"], json!(2));
    rt_sub.close().await.unwrap();
    rt_pub.close().await.unwrap();
    s.drop_schema().await;
}

/// 100 KB payloads exceed NOTIFY's limit: they travel as a pointer, are fetched by the
/// listener, and arrive live in order with the small ones around them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_payloads_are_fetched_and_stay_in_order() {
    let (s, _guard) = schema("large").await;
    let config = s.config();
    // Watch the raw channel to see which path each event took.
    let mut raw = PgListener::connect(&url()).await.unwrap();
    raw.listen(&config.notify_channel).await.unwrap();
    let t_sub = s.transport().await;
    let t_pub = s.transport().await;
    let rt_sub = Realtime::new(Arc::new(t_sub));
    let rt_pub = Realtime::new(Arc::new(t_pub));
    let chat = unique_room("chat");
    let mut live = rt_sub
        .subscribe_stream(SubscribeOptions::room(chat.clone()).live_only())
        .await
        .unwrap();
    let big = "x".repeat(100 * 1024);
    let n = 40u64;
    for i in 1..=n {
        let payload = if i % 3 == 0 {
            json!({"i": i, "big": big})
        } else {
            json!({"i": i})
        };
        rt_pub.publish(req(&chat, payload)).await.unwrap();
    }
    let got = take_events(&mut live, n as usize).await;
    assert_eq!(seqs(&got), (1..=n).collect::<Vec<_>>());
    for e in &got {
        let p: serde_json::Value = e.payload_as().unwrap();
        assert_eq!(p["i"], e.sequence);
        if e.sequence % 3 == 0 {
            assert_eq!(p["big"].as_str().unwrap().len(), 100 * 1024);
        }
    }
    for i in 1..=n {
        let note = tokio::time::timeout(WAIT, raw.recv()).await.unwrap().unwrap();
        let kind = note.payload().chars().next().unwrap();
        assert_eq!(kind, if i % 3 == 0 { 'R' } else { 'E' }, "event {i}");
        assert!(note.payload().len() < 8000);
    }
    rt_sub.close().await.unwrap();
    rt_pub.close().await.unwrap();
    s.drop_schema().await;
}

/// Racing duplicates from two transports store one event and consume one sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_duplicates_never_consume_a_sequence() {
    let (s, _guard) = schema("dup").await;
    let (rt1, rt2) = (
        Realtime::new(Arc::new(s.transport().await)),
        Realtime::new(Arc::new(s.transport().await)),
    );
    let chat = unique_room("chat");
    for round in 1..=5u64 {
        let id = format!("same-{round}");
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let rt = if i % 2 == 0 { rt1.clone() } else { rt2.clone() };
                let (chat, id) = (chat.clone(), id.clone());
                tokio::spawn(async move { rt.publish_outcome(req(&chat, json!({"i": i})).with_id(id)).await })
            })
            .collect();
        let mut fresh = 0;
        for t in tasks {
            let o = t.await.unwrap().unwrap();
            assert_eq!(o.envelope.sequence, round);
            fresh += usize::from(!o.duplicate);
        }
        assert_eq!(fresh, 1);
    }
    let next = rt1.publish(req(&chat, json!({}))).await.unwrap();
    assert_eq!(next.sequence, 6, "no sequence was consumed by a duplicate");
    rt1.close().await.unwrap();
    rt2.close().await.unwrap();
    s.drop_schema().await;
}

/// A batch is one transaction over several rooms; duplicates inside it resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_batch_spans_rooms_in_one_transaction() {
    let (s, _guard) = schema("batch").await;
    let t = s.transport().await;
    let (a, b) = (unique_room("chat"), unique_room("chat"));
    let now = zps_core::Timestamp::now();
    let ev = |room: &Room, id: &str| {
        zps_core::NewEvent::from_request(
            req(room, json!({"id": id})).with_id(id),
            Duration::from_secs(60),
            now,
        )
        .unwrap()
    };
    let out = t
        .publish_batch(vec![ev(&a, "1"), ev(&b, "1"), ev(&a, "2"), ev(&a, "1")])
        .await
        .unwrap();
    let got: Vec<_> = out
        .iter()
        .map(|o| (o.envelope.room.clone(), o.envelope.sequence, o.duplicate))
        .collect();
    assert_eq!(
        got,
        vec![
            (a.clone(), 1, false),
            (b.clone(), 1, false),
            (a.clone(), 2, false),
            (a.clone(), 1, true)
        ]
    );
    // Two concurrent batches over the same rooms in opposite orders do not deadlock.
    let (t1, t2) = (t.clone(), s.transport().await);
    let ids = |p: &'static str| (0..50).map(move |i| format!("{p}{i}"));
    let batch1: Vec<_> = ids("x").flat_map(|i| [ev(&a, &i), ev(&b, &i)]).collect();
    let batch2: Vec<_> = ids("y").flat_map(|i| [ev(&b, &i), ev(&a, &i)]).collect();
    let (r1, r2) = tokio::join!(t1.publish_batch(batch1), t2.publish_batch(batch2));
    assert_eq!(r1.unwrap().len(), 100);
    assert_eq!(r2.unwrap().len(), 100);
    assert_eq!(t.room_info(&a).await.unwrap().last_sequence, 102);
    assert_eq!(t.room_info(&b).await.unwrap().last_sequence, 101);
    let page = t
        .replay(&ReplayQuery::new(a.clone(), 0).limit(1000))
        .await
        .unwrap();
    assert_eq!(seqs(&page.events), (1..=102).collect::<Vec<_>>());
    t.close().await.unwrap();
    t2.close().await.unwrap();
    s.drop_schema().await;
}

#[tokio::test]
async fn unreachable_database_is_a_clear_error_within_the_timeout() {
    let config = PostgresConfig {
        connect_timeout: Duration::from_secs(2),
        ..PostgresConfig::default()
    };
    // Nothing listens on port 1: refused (retried by nobody), reported with the target.
    let refused = tokio::time::timeout(
        WAIT,
        PostgresTransport::connect("postgres://postgres@127.0.0.1:1/postgres", config.clone()),
    )
    .await
    .expect("connect gives up within its timeout");
    match refused {
        Err(e @ (PostgresError::Unreachable { .. } | PostgresError::ConnectTimeout { .. })) => {
            let msg = e.to_string();
            assert!(msg.contains("127.0.0.1:1/postgres"), "{msg}");
            let engine_error: Error = e.into();
            assert_eq!(engine_error.code(), zps_core::ErrorCode::Unavailable);
        }
        other => panic!("expected unreachable, got {:?}", other.err()),
    }
    // A database that does not exist: the server's own reason.
    let missing_db = url().rsplit_once('/').unwrap().0.to_owned() + "/zps_no_such_database";
    match PostgresTransport::connect(&missing_db, config.clone()).await {
        Err(e @ PostgresError::Unreachable { .. }) => {
            assert!(e.to_string().contains("zps_no_such_database"), "{e}")
        }
        other => panic!("expected unreachable, got {:?}", other.err()),
    }
    // Not a PostgreSQL URL.
    for bad in [
        "mysql://nope/x",
        "postgres://postgres@127.0.0.1:notaport/x",
        "127.0.0.1",
    ] {
        assert!(
            matches!(
                PostgresTransport::connect(bad, config.clone()).await,
                Err(PostgresError::InvalidUrl(_))
            ),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn invalid_identifiers_are_refused_before_connecting() {
    for (config, field) in [
        (
            PostgresConfig {
                events_table: "events; DROP TABLE users".into(),
                ..PostgresConfig::default()
            },
            "events_table",
        ),
        (
            PostgresConfig {
                schema: Some("a-b".into()),
                ..PostgresConfig::default()
            },
            "schema",
        ),
        (
            PostgresConfig {
                notify_channel: "x".repeat(64),
                ..PostgresConfig::default()
            },
            "notify_channel",
        ),
    ] {
        // Port 1 is never contacted: validation comes first.
        match PostgresTransport::connect("postgres://postgres@127.0.0.1:1/postgres", config).await {
            Err(PostgresError::InvalidIdentifier { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected invalid identifier, got {:?}", other.err()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_schema_with_auto_migrate_off_names_the_migration() {
    let (s, _guard) = schema("nomig").await;
    let config = PostgresConfig {
        auto_migrate: Some(false),
        ..s.config()
    };
    let err = PostgresTransport::connect(&url(), config.clone())
        .await
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        matches!(
            &err,
            PostgresError::MissingSchema {
                kind: "table",
                migration: "001_postgres_initial",
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains(&format!("{}.realtime_events", s.name)), "{msg}");
    assert!(msg.contains("migrations/001_postgres_initial.sql"), "{msg}");

    // Tables created by hand from the plain file (as psql would), without 002.
    let file = MIGRATIONS[0].1;
    let mut conn = s.admin.acquire().await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA \"{0}\"; SET search_path TO \"{0}\"",
        s.name
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::raw_sql(file).execute(&mut *conn).await.unwrap();
    sqlx::raw_sql("RESET search_path")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let err = PostgresTransport::connect(&url(), config.clone())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            &err,
            PostgresError::MissingSchema {
                kind: "function",
                migration: "002_postgres_prune_function",
                ..
            }
        ),
        "{err}"
    );

    // After 002 by hand too, a transport starts without migrating, and `migrate` finds
    // both files recorded.
    let mut conn = s.admin.acquire().await.unwrap();
    sqlx::raw_sql(&format!("SET search_path TO \"{}\"", s.name))
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::raw_sql(MIGRATIONS[1].1).execute(&mut *conn).await.unwrap();
    sqlx::raw_sql("RESET search_path")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let t = PostgresTransport::connect(&url(), config.clone()).await.unwrap();
    let e = t
        .publish(
            zps_core::NewEvent::from_request(
                req(&unique_room("chat"), json!({})),
                Duration::from_secs(60),
                zps_core::Timestamp::now(),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(e.envelope.sequence, 1);
    let report = migrate(t.pool(), &config).await.unwrap();
    assert!(report.applied.is_empty(), "{report:?}");
    assert_eq!(report.already_applied.len(), 2);
    t.close().await.unwrap();
    s.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_are_idempotent_and_safe_concurrently() {
    let (s, _guard) = schema("mig").await;
    let config = s.config();
    let mut pools = Vec::new();
    for _ in 0..4 {
        pools.push(common::admin_pool().await.unwrap());
    }
    let mut tasks = Vec::new();
    for pool in pools {
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            // Four "processes" (own pools) migrating the same schema at once.
            let report = migrate(&pool, &config).await.unwrap();
            pool.close().await;
            report
        }));
    }
    let mut applied = Vec::new();
    for t in tasks {
        applied.extend(t.await.unwrap().applied);
    }
    applied.sort_unstable();
    assert_eq!(
        applied,
        vec!["001_postgres_initial", "002_postgres_prune_function"]
    );
    let again = migrate(&s.admin, &config).await.unwrap();
    assert!(again.applied.is_empty());
    let recorded: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT name FROM \"{}\".realtime_migrations ORDER BY name",
        s.name
    ))
    .fetch_all(&s.admin)
    .await
    .unwrap();
    assert_eq!(
        recorded,
        vec!["001_postgres_initial", "002_postgres_prune_function"]
    );
    // The database epoch was set once.
    let epochs: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{}\".realtime_meta", s.name))
        .fetch_one(&s.admin)
        .await
        .unwrap();
    assert_eq!(epochs, 1);
    s.drop_schema().await;
}

/// Custom (mixed-case) names work end to end: quoting and substitution are consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_table_names_work_end_to_end() {
    let (s, _guard) = schema("names").await;
    let config = PostgresConfig {
        events_table: "Ev".into(),
        counters_table: "Counters".into(),
        prune_function: "PruneEv".into(),
        migrations_table: "Mig".into(),
        ..s.config()
    };
    let t = PostgresTransport::connect(&url(), config.clone()).await.unwrap();
    let rt = Realtime::new(Arc::new(t.clone()));
    let chat = unique_room("chat");
    rt.publish(req(&chat, json!({"a": 1})).with_ttl(Duration::from_millis(1)))
        .await
        .unwrap();
    rt.publish(req(&chat, json!({"a": 2}))).await.unwrap();
    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{}\".\"Ev\"", s.name))
        .fetch_one(&s.admin)
        .await
        .unwrap();
    assert_eq!(n, 2);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(prune_expired(t.pool(), &config).await.unwrap(), 1);
    let page = rt.replay(ReplayQuery::new(chat.clone(), 0)).await.unwrap();
    assert_eq!(seqs(&page.events), vec![2]);
    rt.close().await.unwrap();
    s.drop_schema().await;
}

/// `reset_room` wipes the room and gives it a new epoch: an old-epoch resume is told
/// `stream_reset`, live subscribers get a reset, and sequences restart at 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reset_room_changes_the_epoch() {
    let (s, _guard) = schema("reset").await;
    let t = s.transport().await;
    let rt = Realtime::new(Arc::new(t.clone()));
    let (chat, other) = (unique_room("chat"), unique_room("chat"));
    for _ in 0..5 {
        rt.publish(req(&chat, json!({}))).await.unwrap();
    }
    rt.publish(req(&other, json!({}))).await.unwrap();
    rt.ack(&chat, 3, "device").await.unwrap();
    rt.snapshot(&chat, 5, &json!({"n": 5})).await.unwrap();
    let before = rt.room_info(&chat).await.unwrap();
    let db_epoch = rt.room_info(&other).await.unwrap().epoch;
    assert_eq!(before.epoch, db_epoch, "rooms start with the database epoch");
    let mut live = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()).live_only())
        .await
        .unwrap();

    let new_epoch = t.reset_room(&chat).await.unwrap();
    let after = rt.room_info(&chat).await.unwrap();
    assert_eq!(after.epoch, new_epoch);
    assert_ne!(after.epoch, before.epoch);
    assert_eq!((after.last_sequence, after.earliest_sequence), (0, 1));
    assert_eq!(rt.cursor(&chat, "device").await.unwrap(), None);
    assert!(rt.get_snapshot(&chat).await.unwrap().is_none());
    assert_eq!(
        rt.room_info(&other).await.unwrap().epoch,
        db_epoch,
        "other rooms untouched"
    );

    match tokio::time::timeout(WAIT, live.next()).await.unwrap() {
        Some(SubscriptionItem::Discontinuity(d)) => {
            assert_eq!(d.reason, DiscontinuityReason::StreamReset);
            assert_eq!(d.epoch, new_epoch);
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    let first = rt.publish(req(&chat, json!({"after": true}))).await.unwrap();
    assert_eq!(first.sequence, 1);
    assert_eq!(zps_conformance::next_event(&mut live).await.sequence, 1);

    // A client resuming with the old epoch is told the stream was reset.
    let mut resumed = rt
        .subscribe_stream(
            SubscribeOptions::room(chat.clone())
                .from_sequence(4)
                .epoch(before.epoch.clone()),
        )
        .await
        .unwrap();
    assert_eq!(resumed.starts()[0].reason, Some(DiscontinuityReason::StreamReset));
    match tokio::time::timeout(WAIT, resumed.next()).await.unwrap() {
        Some(SubscriptionItem::Discontinuity(d)) => {
            assert_eq!(d.reason, DiscontinuityReason::StreamReset);
            assert_eq!(d.epoch, new_epoch);
        }
        other => panic!("expected a discontinuity, got {other:?}"),
    }
    assert_eq!(zps_conformance::next_event(&mut resumed).await.sequence, 1);
    rt.close().await.unwrap();
    s.drop_schema().await;
}

/// The SQL function and `prune_expired` remove exactly the expired rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_removes_exactly_the_expired_rows() {
    let (s, _guard) = schema("prune").await;
    let t = s.transport().await;
    let rt = Realtime::new(Arc::new(t.clone()));
    let (a, b) = (unique_room("chat"), unique_room("chat"));
    let short = Duration::from_millis(200);
    for i in 0..10u64 {
        let room = if i % 2 == 0 { &a } else { &b };
        let r = req(room, json!({"i": i}));
        rt.publish(if i % 3 == 0 { r.with_ttl(short) } else { r })
            .await
            .unwrap();
    }
    // i = 0, 3, 6, 9 are short-lived.
    let count = |sql: String| {
        let admin = s.admin.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&sql)
                .fetch_one(&admin)
                .await
                .unwrap()
        }
    };
    let events = format!("\"{}\".realtime_events", s.name);
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    let expired = count(format!("SELECT count(*) FROM {events} WHERE expires_at <= now()")).await;
    assert_eq!(expired, 4);
    let removed = count(format!("SELECT \"{}\".realtime_prune_expired_events()", s.name)).await;
    assert_eq!(removed, 4);
    assert_eq!(count(format!("SELECT count(*) FROM {events}")).await, 6);
    assert_eq!(rt.prune_expired().await.unwrap(), 0);
    // More expire: the trait method and the free function count them too.
    for room in [&a, &b] {
        rt.publish(req(room, json!({})).with_ttl(short)).await.unwrap();
    }
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    assert_eq!(t.prune_expired().await.unwrap(), 2);
    assert_eq!(prune_expired(t.pool(), t.config()).await.unwrap(), 0);
    assert_eq!(count(format!("SELECT count(*) FROM {events}")).await, 6);
    let left: Vec<_> = rt
        .catch_up(CatchUpOptions::new(a.clone()))
        .map(|e| {
            e.unwrap().payload_as::<serde_json::Value>().unwrap()["i"]
                .as_u64()
                .unwrap()
        })
        .collect()
        .await;
    assert_eq!(left, vec![2, 4, 8]);
    rt.close().await.unwrap();
    s.drop_schema().await;
}

/// An injected pool is left to its owner; the transport's own LISTEN connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_pool_is_left_open_on_close() {
    let (s, _guard) = schema("inject").await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url())
        .await
        .unwrap();
    let t = PostgresTransport::from_pool(pool.clone(), s.config())
        .await
        .unwrap();
    let pid = t.listener_backend_pid().unwrap();
    let rt = Realtime::new(Arc::new(t.clone()));
    let chat = unique_room("chat");
    let mut live = rt
        .subscribe_stream(SubscribeOptions::room(chat.clone()))
        .await
        .unwrap();
    rt.publish(req(&chat, json!({}))).await.unwrap();
    assert_eq!(zps_conformance::next_event(&mut live).await.sequence, 1);
    rt.close().await.unwrap();
    assert!(!pool.is_closed());
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await.unwrap();
    assert_eq!(one, 1);
    let admin = s.admin.clone();
    // The LISTEN connection is gone from the server.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let alive: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(&admin)
            .await
            .unwrap();
        if alive == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener connection still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(live.next().await.is_none(), "live streams end on close");
    assert_eq!(t.health().await.status, HealthStatus::Unhealthy);
    assert!(matches!(
        rt.transport()
            .publish(
                zps_core::NewEvent::from_request(
                    req(&chat, json!({})),
                    Duration::from_secs(1),
                    zps_core::Timestamp::now()
                )
                .unwrap()
            )
            .await,
        Err(Error::Closed)
    ));
    pool.close().await;
    s.drop_schema().await;
}

/// Ephemeral events cross transports; ones over the NOTIFY limit are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_events_cross_transports_and_are_bounded() {
    let (s, _guard) = schema("eph").await;
    let (rt1, rt2) = (
        Realtime::new(Arc::new(s.transport().await)),
        Realtime::new(Arc::new(s.transport().await)),
    );
    let chat = unique_room("chat");
    let mut typing = rt2
        .subscribe_ephemeral(&[chat.clone().into()], None)
        .await
        .unwrap();
    rt1.publish_ephemeral(EphemeralRequest::new(chat.clone(), "typing", &json!({"u": 1})).unwrap())
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, typing.next()).await.unwrap().unwrap();
    assert_eq!(got.payload.get(), r#"{"u":1}"#);
    let big = EphemeralRequest::new(chat.clone(), "typing", &json!({"x": "y".repeat(8000)})).unwrap();
    assert!(matches!(
        rt1.publish_ephemeral(big).await,
        Err(Error::PayloadTooLarge { limit: 7900, .. })
    ));
    rt1.close().await.unwrap();
    rt2.close().await.unwrap();
    s.drop_schema().await;
}

/// In a database of its own: health is healthy, then unhealthy (and the listener
/// down) once the database refuses connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_an_unreachable_database() {
    let admin = common::admin_pool().await.unwrap();
    let db = common::unique_schema("db");
    sqlx::query(&format!("CREATE DATABASE \"{db}\""))
        .execute(&admin)
        .await
        .unwrap();
    let _guard = common::DropDatabase(db.clone());
    let db_url = url().rsplit_once('/').unwrap().0.to_owned() + "/" + &db;
    let config = PostgresConfig {
        connect_timeout: Duration::from_secs(2),
        max_connections: 2,
        ..PostgresConfig::default()
    };
    let t = PostgresTransport::connect(&db_url, config).await.unwrap();
    let h = t.health().await;
    assert_eq!(h.status, HealthStatus::Healthy, "{h:?}");
    assert_eq!(h.details["listenerConnected"], json!(true));

    sqlx::query(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&db)
        .execute(&admin)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let h = t.health().await;
        // The listener notices its loss on its own; wait for both.
        if h.status == HealthStatus::Unhealthy && h.details["listenerConnected"] == json!(false) {
            assert!(h.details.contains_key("error"), "{h:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {h:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = t.room_info(&unique_room("chat")).await.unwrap_err();
    assert_eq!(err.code(), zps_core::ErrorCode::Unavailable, "{err:?}");
    t.close().await.unwrap();
    sqlx::query(&format!("DROP DATABASE \"{db}\" WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

/// Group commit under load: 32 concurrent callers over 4 rooms, every id published
/// twice by different callers. Each id is stored once, each room is numbered 1..=N
/// without gaps, every duplicate answer carries the stored envelope, and live
/// subscribers see every room in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_keeps_rooms_gap_free_and_ids_unique() {
    let (s, _guard) = schema("group").await;
    let t = s.transport().await;
    let rt = Realtime::new(Arc::new(t.clone()));
    let rooms: Vec<Room> = (0..4).map(|_| unique_room("chat")).collect();
    let patterns: Vec<zps_core::RoomPattern> = rooms.iter().cloned().map(Into::into).collect();
    let mut live = rt
        .subscribe_stream(SubscribeOptions::rooms(patterns).live_only())
        .await
        .unwrap();
    let per_caller = 40usize;
    let tasks: Vec<_> = (0..32usize)
        .map(|caller| {
            let (rt, rooms) = (rt.clone(), rooms.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                for n in 0..per_caller {
                    // Callers 2k and 2k+1 publish the same ids: one of each pair is a duplicate.
                    let id = format!("c{}-{n}", caller / 2);
                    let room = &rooms[(caller / 2 + n) % rooms.len()];
                    let o = rt
                        .publish_outcome(req(room, json!({"id": id})).with_id(id.clone()))
                        .await
                        .unwrap();
                    out.push((id, o));
                }
                out
            })
        })
        .collect();
    let mut by_id: std::collections::HashMap<String, Vec<zps_core::PublishOutcome>> = Default::default();
    for task in tasks {
        for (id, o) in task.await.unwrap() {
            by_id.entry(id).or_default().push(o);
        }
    }
    assert_eq!(by_id.len(), 16 * per_caller);
    for (id, outcomes) in &by_id {
        assert_eq!(outcomes.len(), 2);
        assert_eq!(outcomes.iter().filter(|o| !o.duplicate).count(), 1, "{id}");
        let (a, b) = (&outcomes[0].envelope, &outcomes[1].envelope);
        assert_eq!((a.sequence, &a.room, &a.id), (b.sequence, &b.room, &b.id));
        assert_eq!(a.payload.get(), b.payload.get());
        assert_eq!(a.emitted_at, b.emitted_at);
    }
    let total = 16 * per_caller;
    let mut per_room = std::collections::HashMap::new();
    for _ in 0..total {
        let e = zps_conformance::next_event(&mut live).await;
        let last = per_room.entry(e.room.clone()).or_insert(0u64);
        assert_eq!(e.sequence, *last + 1, "room {} in order", e.room);
        *last = e.sequence;
    }
    for room in &rooms {
        let info = rt.room_info(room).await.unwrap();
        assert_eq!(Some(&info.last_sequence), per_room.get(room));
        let page = rt
            .replay(ReplayQuery::new(room.clone(), 0).limit(10_000))
            .await
            .unwrap();
        assert_eq!(seqs(&page.events), (1..=info.last_sequence).collect::<Vec<_>>());
    }
    assert_eq!(per_room.values().sum::<u64>(), total as u64);
    rt.close().await.unwrap();
    s.drop_schema().await;
}
