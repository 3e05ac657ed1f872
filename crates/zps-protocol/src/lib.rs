//! The zero-pub-sub wire protocol: one JSON object per WebSocket text frame,
//! discriminated by `type`. The seed subset (`init`, `subscribe`,
//! `unsubscribe`, `publish`, `ack`, `replay_request` → `ready`, `subscribed`,
//! `event`, `replay`, `ack`, `unsubscribed`, `error`) is fixed; everything
//! else is an extension in the same style. `docs/protocol.md` documents every
//! message with an example.
//!
//! ```
//! use zps_protocol::{ClientMessage, parse_client};
//! let msg = parse_client(r#"{"type":"subscribe","room":"chat:1","fromSequence":0}"#).unwrap();
//! assert!(matches!(msg, ClientMessage::Subscribe(s) if s.from_sequence == Some(0)));
//! ```

mod client;
mod codes;
pub mod compact;
mod server;

pub use client::*;
pub use codes::{CloseCode, ErrorCode};
pub use server::*;

/// Longest error `message` text sent to a client (keeps echoes of bad input bounded).
pub const MAX_ERROR_TEXT: usize = 300;

#[cfg(test)]
mod tests {
    use super::*;
    use zps_model::Envelope;

    #[test]
    fn seed_messages_parse() {
        let cases = [
            r#"{"type":"init","subscriberId":"device-1","token":"jwt"}"#,
            r#"{"type":"subscribe","room":"chat:123","eventTypes":["message.created"],"fromSequence":0}"#,
            r#"{"type":"unsubscribe","room":"chat:123"}"#,
            r#"{"type":"publish","event":{"type":"message.created","room":"chat:123","payload":{"text":"Hello"}}}"#,
            r#"{"type":"ack","room":"chat:123","sequence":10}"#,
            r#"{"type":"replay_request","room":"chat:123","fromSequence":10,"limit":100}"#,
        ];
        for c in cases {
            parse_client(c).unwrap_or_else(|e| panic!("{c}: {e}"));
        }
        match parse_client(cases[3]).unwrap() {
            ClientMessage::Publish(p) => {
                assert_eq!(p.event.payload.get(), r#"{"text":"Hello"}"#);
                assert_eq!(p.event.room, "chat:123");
                assert!(!p.exclude_self);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        for bad in [
            "",
            "{",
            "[]",
            "null",
            r#"{"type":"nope"}"#,
            r#"{"type":"ack","room":"chat:1","sequence":"ten"}"#,
            r#"{"type":"ack","room":5,"sequence":1}"#,
            r#"{"type":"init"}"#,
            r#"{"room":"chat:1"}"#,
            r#"{"type":"ack","room":"chat:1","sequence":-1}"#,
        ] {
            assert!(parse_client(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_messages_have_seed_shapes() {
        let ready = ServerMessage::Ready(Ready {
            subscriber_id: "device-1".into(),
            connection_id: None,
            heartbeat_interval_ms: None,
            token_expires_at: None,
        });
        assert_eq!(ready.to_json(), r#"{"type":"ready","subscriberId":"device-1"}"#);
        let sub = ServerMessage::Subscribed(Subscribed {
            room: "chat:123".into(),
            ..Default::default()
        });
        assert_eq!(sub.to_json(), r#"{"type":"subscribed","room":"chat:123"}"#);
        let err = ServerMessage::error(ErrorCode::AccessDenied, "Access denied for room: chat:123");
        assert_eq!(
            err.to_json(),
            r#"{"type":"error","message":"Access denied for room: chat:123","code":"4408"}"#
        );
        let unsub = ServerMessage::Unsubscribed {
            room: "chat:1".into(),
        };
        assert_eq!(unsub.to_json(), r#"{"type":"unsubscribed","room":"chat:1"}"#);
        let ack = ServerMessage::Ack(Ack {
            room: "chat:123".into(),
            sequence: 1,
        });
        assert_eq!(ack.to_json(), r#"{"type":"ack","room":"chat:123","sequence":1}"#);
    }

    #[test]
    fn server_messages_round_trip_through_parse_server() {
        let env: Envelope = serde_json::from_str(
            r#"{"id":"e1","type":"t","room":"chat:1","sequence":3,"emittedAt":"2026-01-01T00:00:00.000Z","expiresAt":"2026-01-02T00:00:00.000Z","payload":{"a":[1,2]}}"#,
        )
        .unwrap();
        let frame = event_frame(&env.to_json());
        match parse_server(&frame).unwrap() {
            ServerMessage::Event { data } => {
                assert_eq!(data.sequence, 3);
                assert_eq!(data.payload.get(), r#"{"a":[1,2]}"#);
            }
            other => panic!("{other:?}"),
        }
        let msgs = [
            ServerMessage::error(ErrorCode::RateLimited, "slow down"),
            ServerMessage::Unsubscribed {
                room: "chat:1".into(),
            },
            ServerMessage::Replay(Replay {
                room: "chat:1".into(),
                events: vec![env],
                has_more: true,
                scanned_to: 3,
                request_id: Some("r".into()),
            }),
            ServerMessage::TokenExpiring { expires_at: 5 },
            ServerMessage::Pong(Ping { id: Some(7.into()) }),
        ];
        for m in msgs {
            let json = m.to_json();
            let back = parse_server(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(back.to_json(), json);
        }
        assert!(parse_server(r#"{"type":"bogus"}"#).is_err());
    }

    #[test]
    fn unknown_types_are_named_in_the_error() {
        let e = parse_client(r#"{"type":"bogus"}"#).unwrap_err();
        assert!(e.contains("unknown message type `bogus`"), "{e}");
        let e = parse_client(r#"{"type":"ack","room":"chat:1"}"#).unwrap_err();
        assert!(e.contains("invalid `ack` message"), "{e}");
    }

    #[test]
    fn the_leading_type_shortcut_agrees_with_a_full_parse() {
        assert_eq!(leading_type(r#"{"type":"publish","event":{}}"#), Some("publish"));
        assert_eq!(leading_type(r#"{ "type": "publish"}"#), None);
        assert_eq!(leading_type(r#"{"type":"pub\"lish"}"#), None);
        assert_eq!(leading_type(r#"{"room":"x","type":"ack"}"#), None);
        // Either way the same message and the same refusals.
        for text in [
            r#"{"type":"ack","room":"chat:1","sequence":3}"#,
            r#"{"room":"chat:1","sequence":3,"type":"ack"}"#,
        ] {
            assert!(matches!(parse_client(text), Ok(ClientMessage::Ack(a)) if a.sequence == 3));
        }
        assert!(
            parse_client(r#"{"type":"nope"}"#)
                .unwrap_err()
                .contains("unknown message type")
        );
        assert!(
            parse_client(r#"{"type":"ack","room":"chat:1"}"#)
                .unwrap_err()
                .contains("invalid `ack` message")
        );
        assert!(parse_client(r#"{"type":"ack","room":"chat:1","sequence":1"#).is_err());
    }

    #[test]
    fn published_is_written_as_serde_would() {
        for (request_id, id, duplicate) in [(Some("r\"1"), "m-1", false), (None, "0193-\u{7}-é", true)] {
            let p = Published {
                request_id: request_id.map(str::to_owned),
                id: id.to_owned(),
                room: "chat:1".into(),
                sequence: 42,
                duplicate,
            };
            let msg = ServerMessage::Published(p);
            assert_eq!(msg.to_json(), serde_json::to_string(&msg).unwrap());
        }
    }

    #[test]
    fn event_frame_wraps_the_envelope() {
        let frame = event_frame(r#"{"id":"e1","sequence":1}"#);
        assert_eq!(frame, r#"{"type":"event","data":{"id":"e1","sequence":1}}"#);
        assert!(serde_json::from_str::<serde_json::Value>(&frame).is_ok());
    }

    #[test]
    fn error_text_is_bounded() {
        let m = ErrorMessage::new(ErrorCode::Malformed, "é".repeat(1000));
        assert!(m.message.len() <= MAX_ERROR_TEXT + 3);
    }
}
