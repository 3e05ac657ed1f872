//! [`Admin`]: rooms, history, presence, cursors, connections, dead letters and
//! token minting over a gateway's HTTP API.

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use zps_model::{DlqEntry, Envelope, PresenceMember};

use super::{Api, HttpOptions, Retry, segment};
use crate::Result;

/// Operates a gateway over HTTP with an API key (`read` to look, `admin` to act).
#[derive(Debug, Clone)]
pub struct Admin {
    api: Api,
}

/// A room with its subscriber count across the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RoomCount {
    /// The room (or `scope:*` pattern).
    pub room: String,
    /// Subscribed connections on every gateway.
    pub subscribers: u64,
}

/// One page of active rooms.
#[derive(Debug, Clone, Deserialize)]
pub struct RoomList {
    /// Rooms by name.
    pub rooms: Vec<RoomCount>,
    /// The next page's `after`, when there is one.
    #[serde(default)]
    pub next: Option<String>,
    /// Gateways that reported.
    pub nodes: usize,
}

/// A room's state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomState {
    /// The room.
    pub room: String,
    /// History epoch.
    pub epoch: String,
    /// Newest sequence (0 when empty).
    pub last_sequence: u64,
    /// Oldest retained sequence.
    pub earliest_sequence: u64,
    /// Subscribed connections across the cluster.
    pub subscribers: u64,
    /// Present members.
    pub presence: usize,
}

/// Which part of a room's history to read.
#[derive(Debug, Clone, Default)]
pub struct EventsQuery {
    /// Events after this sequence.
    pub from_sequence: u64,
    /// Up to this sequence (inclusive).
    pub to_sequence: Option<u64>,
    /// Only these types.
    pub types: Vec<String>,
    /// Page size.
    pub limit: Option<usize>,
}

/// One page of history.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventsPage {
    /// The room.
    pub room: String,
    /// Events in sequence order.
    pub events: Vec<Envelope>,
    /// Every sequence up to this one was looked at.
    pub scanned_to: u64,
    /// More events after `scanned_to`.
    pub has_more: bool,
    /// The next page's `from_sequence`.
    #[serde(default)]
    pub next_from_sequence: Option<u64>,
}

/// A room's present members.
#[derive(Debug, Clone, Deserialize)]
pub struct PresenceList {
    /// The room.
    pub room: String,
    /// One entry per user.
    pub members: Vec<PresenceMember>,
}

/// How many connections an operator closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Closed {
    /// Connections closed on the gateway that took the request.
    pub closed: usize,
}

/// A page of dead letters.
#[derive(Debug, Clone, Deserialize)]
pub struct DlqPage {
    /// Oldest first.
    pub entries: Vec<DlqEntry>,
    /// Entries in the room's queue.
    pub total: u64,
}

/// A room whose dead-letter queue is not empty.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DlqRoom {
    /// The room.
    pub room: String,
    /// Dead letters it holds.
    pub size: u64,
}

/// One page of the rooms holding dead letters.
#[derive(Debug, Clone, Deserialize)]
pub struct DlqIndex {
    /// By room name.
    pub rooms: Vec<DlqRoom>,
    /// The next page's `after`, when there is one.
    #[serde(default)]
    pub next: Option<String>,
}

/// The event a dead-letter replay published.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Replayed {
    /// Its id.
    pub id: String,
    /// Its sequence.
    pub sequence: u64,
    /// True when the entry had been replayed before.
    pub duplicate: bool,
}

/// A client token minted by the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MintedToken {
    /// The JWT for `ClientOptions::token`.
    pub token: String,
    /// Its `exp` (Unix seconds).
    pub expires_at: u64,
}

#[derive(Serialize, Deserialize)]
struct Cursor {
    sequence: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Kick<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ban_seconds: Option<u64>,
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", segment(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

impl Admin {
    /// An admin client for the gateway at `base_url` with an API key.
    pub fn new(base_url: &str, api_key: &str) -> Result<Self> {
        Self::with_options(base_url, api_key, HttpOptions::default())
    }

    /// The same with explicit timeouts and retries.
    pub fn with_options(base_url: &str, api_key: &str, options: HttpOptions) -> Result<Self> {
        Ok(Self {
            api: Api::new(base_url, api_key, options)?,
        })
    }

    /// Rooms with subscribers, by name, from `after` (paged), counts across the cluster.
    pub async fn rooms(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<RoomList> {
        let q = query(&[
            ("prefix", prefix.map(str::to_owned)),
            ("after", after.map(str::to_owned)),
            ("limit", limit.map(|l| l.to_string())),
        ]);
        self.api
            .json(Method::GET, &format!("/rooms{q}"), None, Retry::Safe)
            .await
    }

    /// A room's epoch, range, subscribers and presence count.
    pub async fn room(&self, room: &str) -> Result<RoomState> {
        let path = format!("/rooms/{}", segment(room));
        self.api.json(Method::GET, &path, None, Retry::Safe).await
    }

    /// A page of a room's history.
    pub async fn events(&self, room: &str, q: &EventsQuery) -> Result<EventsPage> {
        let qs = query(&[
            ("fromSequence", Some(q.from_sequence.to_string())),
            ("toSequence", q.to_sequence.map(|s| s.to_string())),
            ("types", (!q.types.is_empty()).then(|| q.types.join(","))),
            ("limit", q.limit.map(|l| l.to_string())),
        ]);
        let path = format!("/rooms/{}/events{qs}", segment(room));
        self.api.json(Method::GET, &path, None, Retry::Safe).await
    }

    /// Who is present in a room.
    pub async fn presence(&self, room: &str) -> Result<PresenceList> {
        let path = format!("/rooms/{}/presence", segment(room));
        self.api.json(Method::GET, &path, None, Retry::Safe).await
    }

    /// A subscriber's cursor in a room (`None` when it has none).
    pub async fn cursor(&self, subscriber: &str, room: &str) -> Result<Option<u64>> {
        let path = format!("/subscribers/{}/cursors/{}", segment(subscriber), segment(room));
        match self
            .api
            .json::<Cursor>(Method::GET, &path, None, Retry::Safe)
            .await
        {
            Ok(c) => Ok(Some(c.sequence)),
            Err(e) if e.error_code() == Some(zps_protocol::ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Moves a subscriber's cursor forward (never back); returns the stored cursor.
    pub async fn set_cursor(&self, subscriber: &str, room: &str, sequence: u64) -> Result<u64> {
        let path = format!("/subscribers/{}/cursors/{}", segment(subscriber), segment(room));
        let c: Cursor = self
            .api
            .json(Method::PUT, &path, Some(&Cursor { sequence }), Retry::Safe)
            .await?;
        Ok(c.sequence)
    }

    /// Closes every connection of a subscriber (close code 4403), optionally
    /// refusing its reconnections for `ban_seconds`.
    pub async fn disconnect_subscriber(
        &self,
        subscriber: &str,
        reason: Option<&str>,
        ban_seconds: Option<u64>,
    ) -> Result<Closed> {
        let path = format!("/subscribers/{}/disconnect", segment(subscriber));
        let body = Kick { reason, ban_seconds };
        self.api.json(Method::POST, &path, Some(&body), Retry::Safe).await
    }

    /// Closes one connection (its id from `ready`), optionally refusing its
    /// subscriber's reconnections for `ban_seconds`. Not retried: a retry
    /// after a lost answer would find the connection gone (404).
    pub async fn kick_connection(
        &self,
        connection: &str,
        reason: Option<&str>,
        ban_seconds: Option<u64>,
    ) -> Result<Closed> {
        let q = query(&[
            ("reason", reason.map(str::to_owned)),
            ("banSeconds", ban_seconds.map(|s| s.to_string())),
        ]);
        let path = format!("/connections/{}{q}", segment(connection));
        self.api.json(Method::DELETE, &path, None, Retry::Never).await
    }

    /// Rooms holding dead letters, by name, from `after` (paged), from the store.
    pub async fn dlq_rooms(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<DlqIndex> {
        let q = query(&[
            ("prefix", prefix.map(str::to_owned)),
            ("after", after.map(str::to_owned)),
            ("limit", limit.map(|l| l.to_string())),
        ]);
        self.api
            .json(Method::GET, &format!("/dlq{q}"), None, Retry::Safe)
            .await
    }

    /// A page of a room's dead letters after entry `after`.
    pub async fn dlq(&self, room: &str, after: u64, limit: Option<usize>) -> Result<DlqPage> {
        let q = query(&[
            ("after", Some(after.to_string())),
            ("limit", limit.map(|l| l.to_string())),
        ]);
        let path = format!("/rooms/{}/dlq{q}", segment(room));
        self.api.json(Method::GET, &path, None, Retry::Safe).await
    }

    /// Publishes a dead letter again and removes it.
    pub async fn dlq_replay(&self, room: &str, entry: u64) -> Result<Replayed> {
        let path = format!("/rooms/{}/dlq/{entry}/replay", segment(room));
        self.api.json(Method::POST, &path, None, Retry::Safe).await
    }

    /// Removes a dead letter.
    pub async fn dlq_remove(&self, room: &str, entry: u64) -> Result<()> {
        let path = format!("/rooms/{}/dlq/{entry}", segment(room));
        self.api.empty(Method::DELETE, &path, None, Retry::Never).await
    }

    /// A room's snapshot: `(last_sequence, state)`, `None` when it has none.
    pub async fn snapshot(&self, room: &str) -> Result<Option<(u64, Box<RawValue>)>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Snap {
            last_sequence: u64,
            state: Box<RawValue>,
        }
        let path = format!("/rooms/{}/snapshot", segment(room));
        match self.api.json::<Snap>(Method::GET, &path, None, Retry::Safe).await {
            Ok(s) => Ok(Some((s.last_sequence, s.state))),
            Err(e) if e.error_code() == Some(zps_protocol::ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores a room's snapshot.
    pub async fn set_snapshot<T: Serialize + Sync + ?Sized>(
        &self,
        room: &str,
        last_sequence: u64,
        state: &T,
    ) -> Result<()> {
        let path = format!("/rooms/{}/snapshot", segment(room));
        let body = serde_json::json!({"lastSequence": last_sequence, "state": state});
        self.api.empty(Method::PUT, &path, Some(&body), Retry::Safe).await
    }

    /// Deletes expired events now; returns how many.
    pub async fn prune(&self) -> Result<u64> {
        #[derive(Deserialize)]
        struct Pruned {
            removed: u64,
        }
        let p: Pruned = self.api.json(Method::POST, "/prune", None, Retry::Safe).await?;
        Ok(p.removed)
    }

    /// Mints a client token for `subject` limited to `rooms` (needs a gateway
    /// with an HS256 secret and a key with `read` covering the rooms).
    pub async fn mint_token(
        &self,
        subject: &str,
        rooms: &[&str],
        ttl_seconds: Option<u64>,
    ) -> Result<MintedToken> {
        let body = serde_json::json!({"subject": subject, "rooms": rooms, "ttlSeconds": ttl_seconds});
        self.api
            .json(Method::POST, "/tokens", Some(&body), Retry::Safe)
            .await
    }
}
