//! Subject-safe names: how a room becomes NATS subject tokens and KV keys.
//!
//! A NATS subject token may not hold `.`, `*`, `>` or whitespace, and KV keys
//! allow only `[-/_=.A-Za-z0-9]`, while a room's resource id may hold almost
//! anything. Each part of a room (scope, resource id) is encoded on its own:
//! `[A-Za-z0-9_-]` stays as it is, every other byte becomes `=XX` (upper-case
//! hex). The encoding is reversible and keeps names readable in `nats` tools;
//! `chat:lobby` is `chat.lobby`, `chat:a.b c` is `chat.a=2Eb=20c`. Because
//! the scope is its own token, `scope:*` is the subject wildcard `scope.*`.

use zps_core::{Room, RoomPattern};

/// Encodes one part (scope, resource id, subscriber id, ...) as a token.
pub(crate) fn encode_token(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push('=');
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0x0f));
        }
    }
    if out.is_empty() {
        // An empty part is never a valid token; `=` alone never comes out of
        // the encoding above, so it cannot collide with a real name.
        out.push('=');
    }
    out
}

/// Reverses [`encode_token`]; `None` for anything it never produces.
pub(crate) fn decode_token(token: &str) -> Option<String> {
    if token == "=" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hi = from_hex(*bytes.get(i + 1)?)?;
            let lo = from_hex(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_digit(n: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(n & 0x0f)])
}

fn from_hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A room as two tokens, `scope.resource`.
pub(crate) fn room_tokens(room: &Room) -> String {
    format!("{}.{}", encode_token(room.scope()), encode_token(room.resource()))
}

/// The room whose two tokens end `subject` (after a fixed prefix of `skip` tokens).
pub(crate) fn room_from_tokens(tokens: &str) -> Option<Room> {
    let (scope, resource) = tokens.split_once('.')?;
    if resource.contains('.') {
        return None;
    }
    Room::new(&decode_token(scope)?, &decode_token(resource)?).ok()
}

/// Subject names under one prefix: events, dead letters, ephemeral events, presence.
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    prefix: String,
}

impl Subjects {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// `{prefix}.ev.{scope}.{resource}`: where a room's events are stored.
    pub(crate) fn event(&self, room: &Room) -> String {
        format!("{}.ev.{}", self.prefix, room_tokens(room))
    }

    /// Every room's events.
    pub(crate) fn all_events(&self) -> String {
        format!("{}.ev.>", self.prefix)
    }

    /// `{prefix}.epoch`: the marker naming the history's epoch (in the events stream).
    pub(crate) fn epoch(&self) -> String {
        format!("{}.epoch", self.prefix)
    }

    /// `{prefix}.dlq.{scope}.{resource}`: a room's dead letters.
    pub(crate) fn dead_letter(&self, room: &Room) -> String {
        format!("{}.dlq.{}", self.prefix, room_tokens(room))
    }

    /// Every room's dead letters.
    pub(crate) fn all_dead_letters(&self) -> String {
        format!("{}.dlq.>", self.prefix)
    }

    /// The room a dead-letter subject names.
    pub(crate) fn dead_letter_room(&self, subject: &str) -> Option<Room> {
        self.room_of("dlq", subject)
    }

    /// `{prefix}.eph.{scope}.{resource}`: a room's ephemeral events (core NATS, never stored).
    pub(crate) fn ephemeral(&self, room: &Room) -> String {
        format!("{}.eph.{}", self.prefix, room_tokens(room))
    }

    /// The subject filter for an ephemeral pattern.
    pub(crate) fn ephemeral_filter(&self, pattern: &RoomPattern) -> String {
        self.filter("eph", pattern)
    }

    /// `{prefix}.cur.{scope}.{resource}.{subscriber}`: a subscriber's cursor.
    pub(crate) fn cursor(&self, room: &Room, subscriber_id: &str) -> String {
        format!(
            "{}.cur.{}.{}",
            self.prefix,
            room_tokens(room),
            encode_token(subscriber_id)
        )
    }

    /// `{prefix}.snap.{scope}.{resource}`: a room's snapshot.
    pub(crate) fn snapshot(&self, room: &Room) -> String {
        format!("{}.snap.{}", self.prefix, room_tokens(room))
    }

    /// The subjects of the state stream (cursors and snapshots).
    pub(crate) fn all_state(&self) -> Vec<String> {
        vec![
            format!("{}.cur.>", self.prefix),
            format!("{}.snap.>", self.prefix),
        ]
    }

    /// `{prefix}.id.{scope}.{resource}.{id}`: the durable record of an event id.
    pub(crate) fn event_id(&self, room: &Room, id: &str) -> String {
        format!("{}.id.{}.{}", self.prefix, room_tokens(room), encode_token(id))
    }

    /// Every event id record.
    pub(crate) fn all_ids(&self) -> String {
        format!("{}.id.>", self.prefix)
    }

    /// `{prefix}.pr.{scope}.{resource}`: the prefix of a room's presence records.
    pub(crate) fn presence_room(&self, room: &Room) -> String {
        format!("{}.pr.{}", self.prefix, room_tokens(room))
    }

    /// Every presence record.
    pub(crate) fn all_presence(&self) -> String {
        format!("{}.pr.>", self.prefix)
    }

    /// Splits a presence subject into its room and the tokens after it.
    pub(crate) fn presence_parts<'s>(&self, subject: &'s str) -> Option<(Room, Vec<&'s str>)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".pr.")?;
        let mut tokens = rest.split('.');
        let scope = tokens.next()?;
        let resource = tokens.next()?;
        let room = Room::new(&decode_token(scope)?, &decode_token(resource)?).ok()?;
        Some((room, tokens.collect()))
    }

    fn filter(&self, kind: &str, pattern: &RoomPattern) -> String {
        match pattern {
            RoomPattern::Exact(room) => format!("{}.{kind}.{}", self.prefix, room_tokens(room)),
            RoomPattern::Scope(scope) => format!("{}.{kind}.{}.*", self.prefix, encode_token(scope)),
        }
    }

    fn room_of(&self, kind: &str, subject: &str) -> Option<Room> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        let rest = rest.strip_prefix(kind)?.strip_prefix('.')?;
        room_from_tokens(rest)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_subject_safe() {
        for part in [
            "lobby",
            "a.b c",
            "*",
            ">",
            "ünï",
            "=3A",
            "x/y:z",
            "tab\tnot-allowed-anyway",
            "",
        ] {
            let token = encode_token(part);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'='),
                "{token}"
            );
            assert_eq!(decode_token(&token).as_deref(), Some(part));
        }
        assert_eq!(encode_token("a.b c"), "a=2Eb=20c");
    }

    #[test]
    fn subjects_name_rooms_and_patterns() {
        let s = Subjects::new("zps");
        let room = Room::parse("chat:a.b").unwrap();
        assert_eq!(s.event(&room), "zps.ev.chat.a=2Eb");
        assert_eq!(s.dead_letter_room("zps.ev.chat.a=2Eb"), None);
        assert_eq!(s.dead_letter_room("zps.dlq.chat.a.b"), None);
        assert_eq!(
            s.ephemeral_filter(&RoomPattern::parse("chat:*").unwrap()),
            "zps.eph.chat.*"
        );
        assert_eq!(s.dead_letter_room(&s.dead_letter(&room)), Some(room.clone()));
        let subject = format!("{}.u1.c1", s.presence_room(&room));
        let (r, rest) = s.presence_parts(&subject).unwrap();
        assert_eq!((r, rest), (room, vec!["u1", "c1"]));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        assert_eq!(decode_token("a=4"), None);
        assert_eq!(decode_token("a=zz"), None);
        assert_eq!(decode_token("=FF"), None, "not UTF-8");
    }
}
