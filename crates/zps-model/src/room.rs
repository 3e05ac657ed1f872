//! Rooms (`scope:resourceId`), scopes, and `scope:*` subscription patterns.
//!
//! A room is the delivery key: every event belongs to exactly one room, and
//! sequences are counted per room. Names are validated once, when a [`Room`] is
//! built, so the rest of the engine can pass them around as cheap clones.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted scope, in bytes (the scope grammar allows 1 + 63 characters).
pub const MAX_SCOPE_LEN: usize = 64;
/// Longest accepted resource id, in bytes; keeps database keys and channel names bounded.
pub const MAX_RESOURCE_LEN: usize = 256;

/// Why a room, scope or pattern string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// The string has no `:` separating scope from resource id.
    #[error("invalid room `{0}`: expected `scope:resourceId`")]
    MissingSeparator(String),
    /// The scope does not match `[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}`.
    #[error("invalid scope `{0}`: must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}")]
    InvalidScope(String),
    /// The resource id is empty.
    #[error("invalid room `{0}`: the resource id is empty")]
    EmptyResource(String),
    /// The resource id is longer than [`MAX_RESOURCE_LEN`] or contains control characters.
    #[error("invalid room `{0}`: the resource id is too long or contains control characters")]
    InvalidResource(String),
    /// `scope:*` was given where a concrete room is required (publish, replay, ack, ...).
    #[error("`{0}` is a wildcard pattern, not a room")]
    WildcardNotAllowed(String),
    /// A bare `*` (or any other global wildcard) was given.
    #[error("global wildcard `{0}` is not supported; use `scope:*`")]
    GlobalWildcard(String),
}

fn truncate_for_error(s: &str) -> String {
    // Error messages travel back to clients; never echo an unbounded string.
    const MAX: usize = 96;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Checks a scope against `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
pub fn is_valid_scope(scope: &str) -> bool {
    let bytes = scope.as_bytes();
    match bytes.first() {
        Some(first) if first.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    bytes.len() <= MAX_SCOPE_LEN
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_valid_resource(resource: &str) -> bool {
    resource.len() <= MAX_RESOURCE_LEN && !resource.chars().any(char::is_control)
}

/// A validated room name `scope:resourceId`; cloning is a reference-count bump.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Room {
    name: Arc<str>,
    colon: usize,
}

impl Room {
    /// Builds `scope:resource` from its two parts.
    pub fn new(scope: &str, resource: &str) -> Result<Self, RoomError> {
        Self::parse(&format!("{scope}:{resource}"))
    }

    /// Parses and validates a room name; `scope:*` and `*` are refused (they are patterns).
    pub fn parse(name: &str) -> Result<Self, RoomError> {
        if name == "*" {
            return Err(RoomError::GlobalWildcard(name.to_owned()));
        }
        let colon = name
            .find(':')
            .ok_or_else(|| RoomError::MissingSeparator(truncate_for_error(name)))?;
        let (scope, resource) = (&name[..colon], &name[colon + 1..]);
        if !is_valid_scope(scope) {
            return Err(RoomError::InvalidScope(truncate_for_error(scope)));
        }
        if resource.is_empty() {
            return Err(RoomError::EmptyResource(truncate_for_error(name)));
        }
        if resource == "*" {
            return Err(RoomError::WildcardNotAllowed(truncate_for_error(name)));
        }
        if !is_valid_resource(resource) {
            return Err(RoomError::InvalidResource(truncate_for_error(name)));
        }
        Ok(Self {
            name: Arc::from(name),
            colon,
        })
    }

    /// The full name, `scope:resourceId`.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The part before the first `:`; wildcard patterns and scope allow-lists match on it.
    pub fn scope(&self) -> &str {
        &self.name[..self.colon]
    }

    /// Everything after the first `:` (may itself contain `:`).
    pub fn resource(&self) -> &str {
        &self.name[self.colon + 1..]
    }
}

/// Shorthand for [`Room::new`], mirroring the seed's `room('chat', '123')`.
///
/// ```
/// let r = zps_model::room("chat", "123").unwrap();
/// assert_eq!(r.as_str(), "chat:123");
/// assert_eq!(r.scope(), "chat");
/// ```
pub fn room(scope: &str, resource: &str) -> Result<Room, RoomError> {
    Room::new(scope, resource)
}

impl fmt::Debug for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.name, f)
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl FromStr for Room {
    type Err = RoomError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for Room {
    type Error = RoomError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Room {
    type Error = RoomError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl AsRef<str> for Room {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

impl Borrow<str> for Room {
    fn borrow(&self) -> &str {
        &self.name
    }
}

impl Serialize for Room {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for Room {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Room::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What a subscription asks for: one room, or every room of a scope (`scope:*`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum RoomPattern {
    /// Exactly this room.
    Exact(Room),
    /// Every room whose scope equals this string.
    Scope(Arc<str>),
}

impl RoomPattern {
    /// Parses `scope:resource` (exact) or `scope:*` (wildcard); a bare `*` is refused.
    ///
    /// ```
    /// use zps_model::{Room, RoomPattern};
    /// let p = RoomPattern::parse("chat:*").unwrap();
    /// assert!(p.matches(&Room::parse("chat:1").unwrap()));
    /// assert!(!p.matches(&Room::parse("order:1").unwrap()));
    /// assert!(RoomPattern::parse("*").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, RoomError> {
        if s == "*" || s == "*:*" {
            return Err(RoomError::GlobalWildcard(s.to_owned()));
        }
        if let Some(scope) = s.strip_suffix(":*") {
            if !is_valid_scope(scope) {
                return Err(RoomError::InvalidScope(truncate_for_error(scope)));
            }
            return Ok(Self::Scope(Arc::from(scope)));
        }
        Room::parse(s).map(Self::Exact)
    }

    /// Whether an event of `room` is delivered to a subscription with this pattern.
    pub fn matches(&self, room: &Room) -> bool {
        match self {
            Self::Exact(r) => r == room,
            Self::Scope(scope) => room.scope() == &**scope,
        }
    }

    /// The scope this pattern lives in (for scope allow-lists).
    pub fn scope(&self) -> &str {
        match self {
            Self::Exact(r) => r.scope(),
            Self::Scope(s) => s,
        }
    }

    /// The exact room, when this is not a wildcard.
    pub fn as_room(&self) -> Option<&Room> {
        match self {
            Self::Exact(r) => Some(r),
            Self::Scope(_) => None,
        }
    }

    /// Whether this is a `scope:*` wildcard.
    pub fn is_wildcard(&self) -> bool {
        matches!(self, Self::Scope(_))
    }
}

impl fmt::Display for RoomPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(r) => f.write_str(r.as_str()),
            Self::Scope(s) => write!(f, "{s}:*"),
        }
    }
}

impl fmt::Debug for RoomPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl From<Room> for RoomPattern {
    fn from(r: Room) -> Self {
        Self::Exact(r)
    }
}

impl FromStr for RoomPattern {
    type Err = RoomError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for RoomPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RoomPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        RoomPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl<'a> From<&'a Room> for Room {
    fn from(r: &'a Room) -> Self {
        r.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scope_and_resource_with_extra_colons() {
        let r = Room::parse("order:eu:42").unwrap();
        assert_eq!(r.scope(), "order");
        assert_eq!(r.resource(), "eu:42");
        assert_eq!(r.to_string(), "order:eu:42");
    }

    #[test]
    fn refuses_bad_rooms_with_the_right_reason() {
        assert!(matches!(Room::parse("chat"), Err(RoomError::MissingSeparator(_))));
        assert!(matches!(Room::parse("chat:"), Err(RoomError::EmptyResource(_))));
        assert!(matches!(Room::parse(":1"), Err(RoomError::InvalidScope(_))));
        assert!(matches!(Room::parse("-x:1"), Err(RoomError::InvalidScope(_))));
        assert!(matches!(Room::parse("a b:1"), Err(RoomError::InvalidScope(_))));
        assert!(matches!(
            Room::parse("chat:*"),
            Err(RoomError::WildcardNotAllowed(_))
        ));
        assert!(matches!(Room::parse("*"), Err(RoomError::GlobalWildcard(_))));
        assert!(matches!(
            Room::parse("chat:a\nb"),
            Err(RoomError::InvalidResource(_))
        ));
        let long = format!("chat:{}", "x".repeat(MAX_RESOURCE_LEN + 1));
        assert!(matches!(Room::parse(&long), Err(RoomError::InvalidResource(_))));
    }

    #[test]
    fn scope_length_limit_is_64() {
        let ok = format!("{}:1", "a".repeat(64));
        let too_long = format!("{}:1", "a".repeat(65));
        assert!(Room::parse(&ok).is_ok());
        assert!(matches!(Room::parse(&too_long), Err(RoomError::InvalidScope(_))));
        assert!(Room::parse("A9._-:1").is_ok());
    }

    #[test]
    fn patterns_match_only_their_scope() {
        let p = RoomPattern::parse("chat:*").unwrap();
        assert!(p.is_wildcard());
        assert!(p.matches(&Room::parse("chat:1").unwrap()));
        assert!(p.matches(&Room::parse("chat:a:b").unwrap()));
        assert!(!p.matches(&Room::parse("chats:1").unwrap()));
        let e = RoomPattern::parse("chat:1").unwrap();
        assert!(e.matches(&Room::parse("chat:1").unwrap()));
        assert!(!e.matches(&Room::parse("chat:10").unwrap()));
        assert!(matches!(
            RoomPattern::parse("*"),
            Err(RoomError::GlobalWildcard(_))
        ));
        assert!(matches!(
            RoomPattern::parse("*:*"),
            Err(RoomError::GlobalWildcard(_))
        ));
        assert!(matches!(
            RoomPattern::parse("bad scope:*"),
            Err(RoomError::InvalidScope(_))
        ));
        assert_eq!(p.to_string(), "chat:*");
    }

    #[test]
    fn serde_validates() {
        let r: Room = serde_json::from_str("\"chat:1\"").unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"chat:1\"");
        assert!(serde_json::from_str::<Room>("\"chat\"").is_err());
        let p: RoomPattern = serde_json::from_str("\"chat:*\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"chat:*\"");
    }

    #[test]
    fn error_messages_are_bounded() {
        let huge = "x".repeat(10_000);
        let msg = Room::parse(&huge).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
    }

    proptest::proptest! {
        #[test]
        fn valid_rooms_round_trip(scope in "[A-Za-z0-9][A-Za-z0-9._-]{0,63}", res in "[a-z0-9:_-]{1,40}") {
            proptest::prop_assume!(res != "*");
            let r = Room::new(&scope, &res).unwrap();
            proptest::prop_assert_eq!(r.scope(), scope.as_str());
            proptest::prop_assert_eq!(r.resource(), res.as_str());
            let again = Room::parse(r.as_str()).unwrap();
            proptest::prop_assert_eq!(again, r);
        }

        #[test]
        fn parse_never_panics(s in ".{0,300}") {
            let _ = Room::parse(&s);
            let _ = RoomPattern::parse(&s);
        }
    }
}
