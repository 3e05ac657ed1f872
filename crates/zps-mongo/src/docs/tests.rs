//! Documents exactly as stored: events, skips, filters, updates, index specs, and round trips of snapshots, dead letters and presence.

use super::*;
use zps_core::{NewEvent, PublishRequest};

fn room() -> Room {
    Room::parse("chat:1").unwrap()
}

fn new_event() -> NewEvent {
    NewEvent::from_request(
        PublishRequest::new(
            room(),
            "message.created",
            &serde_json::json!({"text": "hi", "n": 1.5}),
        )
        .unwrap()
        .with_id("msg-1")
        .with_metadata("tenantId", "t1".into())
        .with_metadata("big", serde_json::json!(u64::MAX))
        .encrypted(),
        Duration::from_secs(60),
        Timestamp::from_millis(1_000),
    )
    .unwrap()
}

#[test]
fn keys_are_disjoint_per_room() {
    assert_eq!(event_key(&room(), "msg-1"), "chat:1\u{0}msg-1");
    assert_eq!(skip_key(&room(), 7), "chat:1\u{0}\u{0}7");
    assert_eq!(counter_key(&room()), "seq:chat:1");
    assert_eq!(dlq_counter_key(&room()), "dlq:chat:1");
    // The same id in two rooms is two documents.
    assert_ne!(
        event_key(&room(), "x"),
        event_key(&Room::parse("chat:2").unwrap(), "x")
    );
}

#[test]
fn event_document_is_exact_and_round_trips() {
    let d = event_document(&new_event().into_envelope(7), 900);
    let expected = doc! {
        "_id": "chat:1\u{0}msg-1",
        "room": "chat:1",
        "sequence": 7_i64,
        "type": "message.created",
        "emittedAt": DateTime::from_millis(1_000),
        "expiresAt": DateTime::from_millis(61_000),
        "payload": r#"{"text":"hi","n":1.5}"#,
        "metadata": { "tenantId": "t1", "big": u64::MAX as f64 },
        "encrypted": true,
        "prevAt": 900_i64,
    };
    assert_eq!(d, expected);
    let e = decode_event(&d).unwrap().unwrap();
    assert_eq!(e.id, "msg-1");
    assert_eq!(e.sequence, 7);
    assert_eq!(e.payload.get(), r#"{"text":"hi","n":1.5}"#);
    assert_eq!(e.emitted_at, Timestamp::from_millis(1_000));
    assert_eq!(e.expires_at, Timestamp::from_millis(61_000));
    assert!(e.encrypted);
    assert_eq!(
        e.metadata.unwrap().get("tenantId"),
        Some(&serde_json::json!("t1"))
    );
}

#[test]
fn small_integers_from_the_server_decode() {
    let mut d = event_document(&new_event().into_envelope(7), 900);
    d.insert("sequence", 7_i32);
    assert_eq!(decode_event(&d).unwrap().unwrap().sequence, 7);
    d.insert("sequence", -1_i32);
    assert!(decode_event(&d).is_err());
    d.insert("sequence", 7_i64);
    d.insert("_id", "chat:2\u{0}msg-1");
    assert!(decode_event(&d).is_err(), "an _id of another room is corrupt");
}

#[test]
fn skip_records_are_exact_and_never_events() {
    let d = skip_document(&room(), 5, 800, Timestamp::from_millis(2_000));
    assert_eq!(
        d,
        doc! {
            "_id": "chat:1\u{0}\u{0}5",
            "room": "chat:1",
            "sequence": 5_i64,
            "skip": true,
            "prevAt": 800_i64,
            "expiresAt": DateTime::from_millis(2_000),
        }
    );
    assert!(decode_event(&d).unwrap().is_none());
}

#[test]
fn replay_filter_and_sort_are_exact() {
    let q = ReplayQuery::new(room(), 5).types(["a", "b"]);
    let f = replay_filter(&q, 40, Timestamp::from_millis(3_456));
    assert_eq!(
        f,
        doc! {
            "room": "chat:1",
            "sequence": { "$gt": 5_i64, "$lte": 40_i64 },
            "type": { "$in": ["a", "b"] },
            "expiresAt": { "$gte": DateTime::from_millis(3_000) },
        }
    );
    let untyped = replay_filter(&ReplayQuery::new(room(), 0), 9, Timestamp::from_millis(1_999));
    assert_eq!(
        untyped,
        doc! {
            "room": "chat:1",
            "sequence": { "$gt": 0_i64, "$lte": 9_i64 },
            "expiresAt": { "$gte": DateTime::from_millis(1_000) },
        }
    );
    assert_eq!(by_sequence(), doc! { "sequence": 1 });
    assert_eq!(
        range_filter(&room(), 2, 8),
        doc! { "room": "chat:1", "sequence": { "$gt": 2_i64, "$lte": 8_i64 } }
    );
    assert_eq!(
        slot_projection(),
        doc! { "_id": 0, "sequence": 1, "prevAt": 1, "type": 1, "expiresAt": 1, "skip": 1 }
    );
    assert_eq!(
        unexpired_filter(&room(), Timestamp::from_millis(5)),
        doc! { "room": "chat:1", "sequence": { "$gt": 0_i64 }, "expiresAt": { "$gte": DateTime::from_millis(0) } }
    );
}

#[test]
fn update_documents_are_exact() {
    assert_eq!(
        allocation_update(1, 42),
        doc! { "$inc": { "seq": 1_i64 }, "$max": { "at": 42_i64 } }
    );
    assert_eq!(
        allocation_update(300, 42),
        doc! { "$inc": { "seq": 300_i64 }, "$max": { "at": 42_i64 } }
    );
    assert_eq!(counter_repair_update(17), doc! { "$max": { "seq": 17_i64 } });
    assert_eq!(
        ack_update(9, Timestamp::from_millis(7)),
        doc! { "$max": { "sequence": 9_i64 }, "$set": { "updatedAt": DateTime::from_millis(7) } }
    );
    assert_eq!(
        cursor_filter(&room(), "device-1"),
        doc! { "room": "chat:1", "subscriberId": "device-1" }
    );
}

#[test]
fn index_specs_are_exact() {
    let specs = index_specs(Some(Duration::from_secs(300)));
    assert_eq!(specs.len(), 4);
    assert_eq!(specs[0].0, IndexTarget::Events);
    assert_eq!(
        specs[0].1,
        vec![
            doc! { "key": { "room": 1, "sequence": 1 }, "name": "room_sequence", "unique": true },
            doc! { "key": { "expiresAt": 1 }, "name": "expiresAt_ttl", "expireAfterSeconds": 300_i64 },
        ]
    );
    assert_eq!(
        specs[1].1,
        vec![doc! { "key": { "room": 1, "subscriberId": 1 }, "name": "room_subscriber", "unique": true }]
    );
    assert_eq!(
        specs[2].1,
        vec![doc! { "key": { "room": 1, "entryId": 1 }, "name": "room_entry", "unique": true }]
    );
    assert_eq!(specs[3].0, IndexTarget::Presence);
    assert_eq!(
        specs[3].1,
        vec![
            doc! { "key": { "room": 1, "userId": 1, "connection": 1 }, "name": "room_user_connection", "unique": true },
            doc! { "key": { "expiresAt": 1 }, "name": "expiresAt_ttl", "expireAfterSeconds": 300_i64 },
        ]
    );
    let no_ttl = index_specs(None);
    assert_eq!(no_ttl[0].1.len(), 1);
    assert_eq!(no_ttl[3].1.len(), 1);
}

#[test]
fn snapshot_dlq_and_presence_round_trip() {
    let s = Snapshot {
        room: room(),
        last_sequence: 100,
        state: RawValue::from_string(r#"{"n":2}"#.into()).unwrap(),
        created_at: Timestamp::from_millis(5),
    };
    let d = snapshot_document(&s);
    assert_eq!(
        d,
        doc! { "_id": "chat:1", "room": "chat:1", "lastSequence": 100_i64, "state": r#"{"n":2}"#,
        "createdAt": DateTime::from_millis(5) }
    );
    let back = decode_snapshot(&d).unwrap();
    assert_eq!((back.last_sequence, back.state.get()), (100, r#"{"n":2}"#));

    let entry = DlqEntry {
        entry_id: 3,
        room: room(),
        event: new_event().into_envelope(4),
        error: "boom".into(),
        attempts: 3,
        subscriber_id: Some("worker".into()),
        failed_at: Timestamp::from_millis(9),
    };
    let d = dlq_document(&entry);
    assert_eq!(d.get_document("event").unwrap().get_str("id").unwrap(), "msg-1");
    let back = decode_dlq(&d).unwrap();
    assert_eq!(back.entry_id, 3);
    assert_eq!(back.event.sequence, 4);
    assert_eq!(back.event.id, "msg-1");
    assert_eq!(back.subscriber_id.as_deref(), Some("worker"));
    assert_eq!(back.attempts, 3);

    let member = PresenceMember {
        user_id: "u1".into(),
        metadata: serde_json::json!({"name": "Ana"}).as_object().cloned(),
        last_seen_at: Timestamp::from_millis(10),
    };
    let d = presence_document(&room(), &member, "c1", Timestamp::from_millis(20));
    assert_eq!(
        d,
        doc! { "room": "chat:1", "userId": "u1", "connection": "c1",
        "lastSeenAt": DateTime::from_millis(10), "expiresAt": DateTime::from_millis(20),
        "metadata": { "name": "Ana" } }
    );
    assert_eq!(decode_member(&d).unwrap(), member);
}

#[test]
fn json_bson_conversion() {
    let v = serde_json::json!({"a": 1, "b": [1.5, null, true, "s"], "c": {"d": -2}});
    let b = json_to_bson(&v);
    assert_eq!(
        b,
        Bson::Document(doc! { "a": 1_i64, "b": [1.5, Bson::Null, true, "s"], "c": { "d": -2_i64 } })
    );
    assert_eq!(bson_to_json(&b), v);
    assert_eq!(bson_to_json(&Bson::Int32(3)), serde_json::json!(3));
    assert_eq!(
        bson_to_json(&Bson::DateTime(DateTime::from_millis(1_000))),
        serde_json::json!("1970-01-01T00:00:01.000Z")
    );
}

#[test]
fn change_stream_support_detection() {
    assert!(supports_change_streams(
        &doc! { "isWritablePrimary": true, "setName": "rs0" }
    ));
    assert!(supports_change_streams(&doc! { "msg": "isdbgrid" }));
    assert!(!supports_change_streams(&doc! { "isWritablePrimary": true }));
    assert_eq!(
        change_stream_pipeline(),
        vec![doc! { "$match": { "operationType": "insert", "fullDocument.type": { "$exists": true } } }]
    );
}

#[test]
fn numeric_helpers() {
    let d = doc! { "a": 5_i32, "b": 6_i64, "c": 7.0, "d": 7.5, "e": "x", "f": -1_i64 };
    assert_eq!(get_i64(&d, "a"), Some(5));
    assert_eq!(get_i64(&d, "b"), Some(6));
    assert_eq!(get_i64(&d, "c"), Some(7));
    assert_eq!(get_i64(&d, "d"), None);
    assert_eq!(get_i64(&d, "e"), None);
    assert_eq!(get_u64(&d, "f"), None);
    assert_eq!(get_u64(&d, "missing"), None);
}
