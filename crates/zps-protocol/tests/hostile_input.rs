//! Hostile input for the decoders and validators: arbitrary text, arbitrary
//! JSON shaped like client frames, arbitrary bytes for compact frames. None
//! may panic; refusals stay short. A fixed corpus keeps the nasty cases found
//! (and the classic ones) running on every build; proptest keeps its own
//! regressions in `hostile_input.proptest-regressions` when one fails.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::{Value, json};
use zps_model::{Room, RoomPattern};
use zps_protocol::compact::EventView;
use zps_protocol::{parse_client, parse_server};

/// Client message types the decoder knows (and some it does not).
const TYPES: &[&str] = &[
    "init",
    "subscribe",
    "unsubscribe",
    "publish",
    "ack",
    "replay_request",
    "publish_ephemeral",
    "subscribe_ephemeral",
    "unsubscribe_ephemeral",
    "presence_enter",
    "presence_leave",
    "presence_subscribe",
    "presence_unsubscribe",
    "snapshot_request",
    "refresh_token",
    "ping",
    "",
    "INIT",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A frame with a known `type` and arbitrary other fields (the shapes the
/// decoder actually branches on).
fn client_frame() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(TYPES),
        prop::collection::btree_map(
            prop::sample::select(
                &[
                    "room",
                    "rooms",
                    "subscriberId",
                    "token",
                    "event",
                    "fromSequence",
                    "sequence",
                    "requestId",
                    "payload",
                    "metadata",
                    "positions",
                    "epoch",
                    "roomToken",
                    "id",
                    "eventTypes",
                ][..],
            ),
            json_value(),
            0..6,
        ),
    )
        .prop_map(|(t, fields)| {
            let mut o: serde_json::Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            o.insert("type".into(), json!(t));
            Value::Object(o)
        })
}

fn refusal_is_bounded(r: Result<impl Sized, String>) {
    if let Err(message) = r {
        assert!(message.len() <= 1024, "refusal of {} bytes", message.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn any_text_is_decoded_or_refused(text in ".{0,400}") {
        refusal_is_bounded(parse_client(&text));
        let _ = parse_server(&text);
    }

    #[test]
    fn any_frame_shape_is_decoded_or_refused(frame in client_frame()) {
        refusal_is_bounded(parse_client(&frame.to_string()));
    }

    #[test]
    fn any_bytes_are_a_compact_event_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(view) = EventView::decode(&bytes) {
            let _ = view.to_envelope();
        }
    }

    #[test]
    fn room_names_parse_to_what_they_print(name in ".{0,80}") {
        if let Ok(room) = Room::parse(&name) {
            prop_assert_eq!(Room::parse(room.as_str()).unwrap(), room);
        }
        if let Ok(p) = RoomPattern::parse(&name) {
            prop_assert_eq!(RoomPattern::parse(&p.to_string()).unwrap(), p);
        }
    }
}

/// Cases kept for good: deep nesting, huge numbers, lone surrogates, nulls
/// where strings go, enormous strings, wrong types everywhere.
#[test]
fn the_corpus_is_refused_cleanly() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!(
        r#"{{"type":"subscribe","room":{}1{}}}"#,
        "{\"a\":".repeat(5_000),
        "}".repeat(5_000)
    );
    let long = format!(r#"{{"type":"init","subscriberId":"{}"}}"#, "x".repeat(2_000_000));
    let corpus: Vec<String> = vec![
        deep,
        deep_object,
        long,
        r#"{"type":"ack","room":"chat:1","sequence":1e400}"#.into(),
        r#"{"type":"ack","room":"chat:1","sequence":-1}"#.into(),
        r#"{"type":"ack","room":"chat:1","sequence":18446744073709551616}"#.into(),
        r#"{"type":"init","subscriberId":"\ud800"}"#.into(),
        r#"{"type":"init","subscriberId":null}"#.into(),
        r#"{"type":"subscribe","rooms":[null,1,{}]}"#.into(),
        r#"{"type":"publish","event":"not an object"}"#.into(),
        r#"{"type":"publish","event":{"room":"chat:1","type":"t","payload":}}"#.into(),
        r#"{"type":"type","type":"init"}"#.into(),
        r#"{"type":["init"]}"#.into(),
        "\u{0}\u{1}\u{2}".into(),
        "{".into(),
        String::new(),
    ];
    for text in &corpus {
        refusal_is_bounded(parse_client(text));
        let _ = parse_server(text);
    }
    for room in [
        "",
        ":",
        "a:",
        ":b",
        "a:b:c",
        "a:*:b",
        "*:x",
        "a b:c",
        "chat:\u{0}",
        &"x".repeat(10_000),
    ] {
        let _ = Room::parse(room);
        let _ = RoomPattern::parse(room);
    }
    for bytes in [
        &[][..],
        &[0x9f][..],
        &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
        &[0x9a, 0xc0, 0xc0][..],
    ] {
        assert!(EventView::decode(bytes).is_err());
    }
}
