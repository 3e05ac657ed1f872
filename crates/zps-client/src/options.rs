//! Client settings with documented defaults, and per-subscription options.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::error::ClientError;
use zps_model::Backoff;

/// Supplies a fresh token on every (re)connect and when the server warns that the
/// current one expires; an error counts as a failed connection attempt.
pub type TokenProvider = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// When the client acknowledges events to the server (moves its durable cursor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// After the consumer took the event from its stream, or after the callback returned;
    /// acks are coalesced (at most one per room per `ack_interval`).
    #[default]
    Auto,
    /// Only when the application calls [`crate::Client::ack`] / [`crate::Subscription::ack`].
    Manual,
}

/// How the gateway sends events to this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// JSON text frames (the default protocol).
    #[default]
    Json,
    /// Events as compact MessagePack frames (`zps.compact.v1`), about half the
    /// bytes; everything else stays JSON. Falls back to JSON, with the same
    /// guarantees, when the gateway does not offer it.
    Compact,
}

/// Everything configurable on a [`crate::Client`]; build with `ClientOptions::default()` and
/// the `with_*` methods.
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Durable id of this consumer: the server keeps ack cursors per subscriber id.
    /// Default: a random `zps-client-…` id (so cursors are per client instance).
    pub subscriber_id: String,
    /// A static token sent in `init` (used when no provider is set).
    pub token: Option<String>,
    /// Called on every (re)connect and on `token_expiring`; wins over `token`.
    pub token_provider: Option<TokenProvider>,
    /// Reconnect delays and attempt limit. Default: base 250 ms, cap 30 s, forever.
    pub reconnect: Backoff,
    /// Outbound requests (publish, snapshot, ping, ephemeral) waiting to be sent while
    /// disconnected or while `max_in_flight` requests await answers. Default 1024.
    pub max_queued_messages: usize,
    /// Requests sent but not yet answered. Default 256.
    pub max_in_flight: usize,
    /// Out-of-order events held per room while a gap is repaired; past it the client drops
    /// them and re-reads history from the last delivered event. Default 1000.
    pub max_buffered_events_per_room: usize,
    /// Wait before requesting a replay for a gap (reorder window), and the minimum spacing
    /// of replay requests per room. Default 100 ms.
    pub replay_throttle: Duration,
    /// Events per `replay_request` page. Default 500 (the gateway may cap it lower).
    pub replay_page_size: usize,
    /// How long a request (publish, snapshot, subscribe confirmation, ping, presence) may
    /// wait for its answer, including time spent disconnected. Default 10 s.
    pub request_timeout: Duration,
    /// How long one WebSocket connect + handshake may take. Default 10 s.
    pub connect_timeout: Duration,
    /// Ack mode. Default [`AckMode::Auto`].
    pub ack_mode: AckMode,
    /// Longest delay before a taken event's ack is sent (acks are coalesced per room). Default 100 ms.
    pub ack_interval: Duration,
    /// Events queued per subscription between the client task and the consumer. Default 256.
    pub delivery_buffer: usize,
    /// Rooms tracked per client through `scope:*` subscriptions (least recently seen are
    /// forgotten past this). Default 10 000.
    pub max_wildcard_rooms: usize,
    /// Largest server message accepted. Default 16 MiB.
    pub max_message_bytes: usize,
    /// Silence (no frame, not even a ping) after which the connection counts as dead.
    /// Default `None`: twice the server's heartbeat interval plus 10 s.
    pub idle_timeout: Option<Duration>,
    /// How events travel. Default [`Encoding::Json`].
    pub encoding: Encoding,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            subscriber_id: format!("zps-client-{:016x}", rand::random::<u64>()),
            token: None,
            token_provider: None,
            reconnect: Backoff::default(),
            max_queued_messages: 1024,
            max_in_flight: 256,
            max_buffered_events_per_room: 1000,
            replay_throttle: Duration::from_millis(100),
            replay_page_size: 500,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            ack_mode: AckMode::Auto,
            ack_interval: Duration::from_millis(100),
            delivery_buffer: 256,
            max_wildcard_rooms: 10_000,
            max_message_bytes: 16 << 20,
            idle_timeout: None,
            encoding: Encoding::Json,
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("subscriber_id", &self.subscriber_id)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_provider", &self.token_provider.as_ref().map(|_| "<fn>"))
            .field("reconnect", &self.reconnect)
            .field("max_queued_messages", &self.max_queued_messages)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_buffered_events_per_room", &self.max_buffered_events_per_room)
            .field("replay_throttle", &self.replay_throttle)
            .field("replay_page_size", &self.replay_page_size)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("ack_mode", &self.ack_mode)
            .field("ack_interval", &self.ack_interval)
            .field("delivery_buffer", &self.delivery_buffer)
            .field("max_wildcard_rooms", &self.max_wildcard_rooms)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("idle_timeout", &self.idle_timeout)
            .field("encoding", &self.encoding)
            .finish()
    }
}

impl ClientOptions {
    /// Asks for compact event frames (see [`Encoding::Compact`]).
    pub fn with_encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// Sets the durable subscriber id (ack cursors are kept per id).
    pub fn with_subscriber_id(mut self, id: impl Into<String>) -> Self {
        self.subscriber_id = id.into();
        self
    }

    /// Sets a static token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets an async token provider, called on every (re)connect and before expiry.
    pub fn with_token_provider<F, Fut, E>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: fmt::Display,
    {
        self.token_provider = Some(Arc::new(move || {
            let fut = provider();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        }));
        self
    }

    /// Sets the reconnect backoff.
    pub fn with_reconnect(mut self, base: Duration, cap: Duration, max_attempts: Option<u32>) -> Self {
        self.reconnect = Backoff {
            base,
            cap,
            max_attempts,
        };
        self
    }

    /// Sets the outbound queue bound.
    pub fn with_max_queued_messages(mut self, n: usize) -> Self {
        self.max_queued_messages = n;
        self
    }

    /// Sets the per-room out-of-order buffer bound.
    pub fn with_max_buffered_events_per_room(mut self, n: usize) -> Self {
        self.max_buffered_events_per_room = n;
        self
    }

    /// Sets the replay throttle (reorder window and per-room request spacing).
    pub fn with_replay_throttle(mut self, d: Duration) -> Self {
        self.replay_throttle = d;
        self
    }

    /// Sets the request timeout.
    pub fn with_request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Sets the ack mode.
    pub fn with_ack_mode(mut self, mode: AckMode) -> Self {
        self.ack_mode = mode;
        self
    }

    /// Sets the longest delay of a coalesced ack.
    pub fn with_ack_interval(mut self, d: Duration) -> Self {
        self.ack_interval = d;
        self
    }

    /// Checks ranges; called by [`crate::Client::connect`].
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        if let Err(e) = zps_model::envelope::validate_token("subscriberId", &self.subscriber_id) {
            return Err(ClientError::InvalidOption(e.to_string()));
        }
        let positive = [
            ("max_queued_messages", self.max_queued_messages),
            ("max_in_flight", self.max_in_flight),
            ("max_buffered_events_per_room", self.max_buffered_events_per_room),
            ("replay_page_size", self.replay_page_size),
            ("delivery_buffer", self.delivery_buffer),
            ("max_wildcard_rooms", self.max_wildcard_rooms),
            ("max_message_bytes", self.max_message_bytes),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ClientError::InvalidOption(format!("{name} must be at least 1")));
            }
        }
        if self.replay_page_size > 10_000 {
            return Err(ClientError::InvalidOption(
                "replay_page_size must be at most 10000".into(),
            ));
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(ClientError::InvalidOption(
                "request_timeout and connect_timeout must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Where a new subscription starts in each exact room.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The server decides: after this subscriber's acked cursor when it has one, else live
    /// (only events published from now on).
    #[default]
    Default,
    /// After `sequence` (0 = the whole retained history). With the `epoch` it belongs to,
    /// a reset history is reported as a discontinuity instead of being mixed in.
    After {
        /// The last sequence the application already has.
        sequence: u64,
        /// The epoch that sequence belongs to, when known.
        epoch: Option<String>,
    },
}

impl StartAt {
    /// The whole retained history.
    pub fn beginning() -> Self {
        Self::After {
            sequence: 0,
            epoch: None,
        }
    }
}

/// Per-subscription options.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Where every exact room starts (unless `positions` names it).
    pub start: StartAt,
    /// Per-room starting points that override `start`.
    pub positions: HashMap<String, StartAt>,
    /// Deliver only these event types to this subscription. Filtering happens in the client
    /// (every event still advances the room's position), so gaps stay detectable.
    pub event_types: Option<Vec<String>>,
}

impl SubscribeOptions {
    /// Defaults: server-chosen start, every type.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts every room after `sequence`.
    pub fn after(mut self, sequence: u64) -> Self {
        self.start = StartAt::After {
            sequence,
            epoch: None,
        };
        self
    }

    /// Starts every room after `sequence` of `epoch` (a resume).
    pub fn resume(mut self, sequence: u64, epoch: impl Into<String>) -> Self {
        self.start = StartAt::After {
            sequence,
            epoch: Some(epoch.into()),
        };
        self
    }

    /// Starts every room at its oldest retained event.
    pub fn from_beginning(mut self) -> Self {
        self.start = StartAt::beginning();
        self
    }

    /// Starts one room at its own position.
    pub fn position(mut self, room: impl Into<String>, start: StartAt) -> Self {
        self.positions.insert(room.into(), start);
        self
    }

    /// Delivers only these event types.
    pub fn event_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.event_types = Some(types.into_iter().map(Into::into).collect());
        self
    }
}

/// One or more rooms and/or `scope:*` patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(pub Vec<String>);

impl From<&str> for Targets {
    fn from(s: &str) -> Self {
        Self(vec![s.to_owned()])
    }
}

impl From<String> for Targets {
    fn from(s: String) -> Self {
        Self(vec![s])
    }
}

impl From<&String> for Targets {
    fn from(s: &String) -> Self {
        Self(vec![s.clone()])
    }
}

impl From<Vec<String>> for Targets {
    fn from(v: Vec<String>) -> Self {
        Self(v)
    }
}

impl From<Vec<&str>> for Targets {
    fn from(v: Vec<&str>) -> Self {
        Self(v.into_iter().map(str::to_owned).collect())
    }
}

impl From<&[&str]> for Targets {
    fn from(v: &[&str]) -> Self {
        Self(v.iter().map(|s| (*s).to_owned()).collect())
    }
}

impl<const N: usize> From<[&str; N]> for Targets {
    fn from(v: [&str; N]) -> Self {
        Self(v.iter().map(|s| (*s).to_owned()).collect())
    }
}
