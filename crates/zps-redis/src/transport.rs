//! [`RedisTransport`]: the `Transport` implementation over Redis.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fred::bytes_utils::Str;
use fred::prelude::*;
use fred::types::sorted_sets::Ordering as ZOrdering;
use fred::types::streams::XID;
use fred::types::{ClusterHash, CustomCommand};
use futures::StreamExt;
use parking_lot::Mutex as SyncMutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zps_core::error::{Result, TransportError, TransportErrorKind};
use zps_core::transport::{
    Capabilities, DlqRoom, EphemeralStream, HealthStatus, LiveStream, PublishOutcome, ReplayPage,
    ReplayQuery, RoomInfo, Transport, TransportHealth,
};
use zps_core::{
    DlqEntry, Envelope, EphemeralEvent, Error, NewDlqEntry, NewEvent, PresenceMember, Room, RoomPattern,
    Snapshot, Timestamp,
};

use crate::codec::{self, StreamEntry};
use crate::config::{Keys, RedisConfig};
use crate::error::{RedisError, core, decode, redact_url};
use crate::live::{Hub, Target};
use crate::scripts::Scripts;

const PROVIDER: &str = "redis";
/// Stream entries examined per history read round trip, at most.
const REPLAY_CHUNK_MAX: u64 = 10_000;
/// Round trips one replay call may make before it returns a partial page.
const REPLAY_MAX_ROUNDS: usize = 4;
/// Entries examined per prune script call.
const PRUNE_BUDGET: u64 = 1_000;
/// Events per publish script call in `publish_batch`.
const BATCH_EVENTS: usize = 256;
/// Argument bytes per publish script call in `publish_batch` (keeps each call short).
const BATCH_BYTES: usize = 1 << 20;
/// Rooms of one batch published concurrently.
const BATCH_ROOMS_IN_FLIGHT: usize = 64;
/// Bound on each health probe.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Redis storage and fan-out: a stream per room for history, pub/sub for live
/// delivery, one script call per publish. Cheap to clone (shared state).
///
/// ```no_run
/// use std::sync::Arc;
/// use zps_redis::{RedisConfig, RedisTransport};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let transport = RedisTransport::connect("redis://127.0.0.1:6379", RedisConfig::default()).await?;
/// let realtime = zps_core::Realtime::new(Arc::new(transport));
/// realtime.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisTransport {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    subscriber: Client,
    owned: bool,
    keys: Keys,
    hub: Arc<Hub>,
    scripts: &'static Scripts,
    closed: AtomicBool,
    reader: SyncMutex<Option<JoinHandle<()>>>,
    node_id: String,
    /// Rooms with a publish script call in flight, and the publishes waiting behind it.
    queues: SyncMutex<HashMap<Room, VecDeque<Waiting>>>,
}

/// A publish waiting for its room's in-flight script call to finish.
type Waiting = (Prepared, oneshot::Sender<Result<PublishOutcome>>);

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.lock().take() {
            reader.abort();
        }
        self.hub.close();
        if self.owned
            && !self.closed.load(Ordering::Acquire)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (client, subscriber) = (self.client.clone(), self.subscriber.clone());
            rt.spawn(async move {
                let _ = subscriber.quit().await;
                let _ = client.quit().await;
            });
        }
    }
}

/// One event serialized for the publish script.
struct Prepared {
    idem_key: Key,
    /// Head and tail of the envelope JSON, idempotency TTL, expiresAt, type.
    args: [Value; 5],
    envelope: Envelope,
}

impl Prepared {
    /// Argument bytes this event adds to a script call.
    fn size(&self) -> usize {
        self.args
            .iter()
            .map(|a| a.as_bytes().map_or(0, <[u8]>::len))
            .sum()
    }
}

/// A fresh random epoch candidate (used only when the room has none yet).
fn new_epoch() -> String {
    // A thread-local CSPRNG: no syscall per publish.
    format!("{:032x}", rand::random::<u128>())
}

fn now_ms() -> i64 {
    Timestamp::now().as_millis()
}

fn bulk(s: impl Into<String>) -> Value {
    Value::String(Str::from(s.into()))
}

fn str_of(v: &Value) -> Option<String> {
    v.as_str().map(|s| s.into_owned())
}

fn u64_of(v: &Value) -> Option<u64> {
    match v {
        Value::Null => None,
        other => other.as_u64(),
    }
}

/// Version string from an `INFO server` reply.
fn redis_version(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(str::trim)
}

async fn connect_one(client: &Client, target: &str, timeout: Duration) -> Result<(), RedisError> {
    // fail_fast (the default) makes `init` report the first connection error instead of retrying.
    match tokio::time::timeout(timeout + Duration::from_millis(500), client.init()).await {
        Err(_) => Err(RedisError::ConnectTimeout {
            target: target.to_owned(),
            timeout,
        }),
        Ok(Err(source)) => Err(RedisError::Connect {
            target: target.to_owned(),
            source,
        }),
        Ok(Ok(_task)) => Ok(()),
    }
}

fn build_client(base: &Config, config: &RedisConfig, subscriber: bool) -> Result<Client, RedisError> {
    let mut builder = Builder::from_config(base.clone());
    builder
        .with_connection_config(|c| {
            c.connection_timeout = config.connect_timeout;
            c.internal_command_timeout = config.connect_timeout.max(Duration::from_secs(1));
            // CLIENT SETNAME on every connection, so operators can tell them apart in CLIENT LIST.
            c.auto_client_setname = true;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = config.command_timeout;
            if subscriber {
                p.broadcast_channel_capacity = config.subscriber_buffer.max(16);
            }
        })
        // Reconnect forever (after the first successful connect), backing off up to 1 s:
        // a Redis that is back (or a Cluster that finished a failover) is used again
        // within a second (with 5 s, the fault suite's cluster failover resumed after
        // 6.6 s instead of 5.8 s).
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 1_000, 2));
    builder
        .build()
        .map_err(|e| RedisError::InvalidConfig(format!("cannot build the client: {e}")))
}

impl RedisTransport {
    /// Connects to `url` (`redis://[user:pass@]host:port[/db]`, `rediss://` with the
    /// `tls` feature, `redis-cluster://`, `redis-sentinel://`) with two connections it
    /// owns: one for commands and one for SUBSCRIBE. Both are closed by [`Transport::close`].
    ///
    /// Fails with a clear error, without retrying, when the server cannot be reached
    /// within [`RedisConfig::connect_timeout`]; after that, lost connections are re-established
    /// in the background.
    pub async fn connect(url: &str, config: RedisConfig) -> Result<Self, RedisError> {
        config.validate()?;
        let target = redact_url(url);
        let wants_tls = url.starts_with("rediss") || url.starts_with("valkeys");
        if wants_tls && !cfg!(feature = "tls") {
            return Err(RedisError::InvalidConfig(format!(
                "{target}: TLS URLs need zps-redis built with its `tls` feature"
            )));
        }
        #[allow(unused_mut)] // mutated only with the `tls` feature
        let mut base =
            Config::from_url(url).map_err(|e| RedisError::InvalidConfig(format!("{target}: {e}")))?;
        #[cfg(feature = "tls")]
        if wants_tls {
            base.tls = Some(crate::tls::connector(config.tls_ca_pem.as_deref())?.into());
        } else if config.tls_ca_pem.is_some() {
            tracing::debug!("a CA certificate is configured but the Redis URL is not rediss://");
        }
        let client = build_client(&base, &config, false)?;
        let subscriber = build_client(&base, &config, true)?;
        let ready = async {
            connect_one(&client, &target, config.connect_timeout).await?;
            connect_one(&subscriber, &target, config.connect_timeout).await?;
            let info: String = client
                .custom(
                    CustomCommand::new_static("INFO", ClusterHash::Random, false),
                    vec!["server"],
                )
                .await?;
            let version = redis_version(&info).unwrap_or("unknown").to_owned();
            let major: u32 = version
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            if major < 7 {
                return Err(RedisError::UnsupportedServer { found: version });
            }
            let loads = Scripts::get().all().map(|script| script.load(&client));
            for loaded in futures::future::join_all(loads).await {
                loaded?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = ready {
            let _ = subscriber.quit().await;
            let _ = client.quit().await;
            return Err(e);
        }
        Self::assemble(client, subscriber, config, true)
    }

    /// Uses clients the application already created and connected. `subscriber` must be a
    /// separate client (its connection enters subscribed mode). Neither is closed by
    /// [`Transport::close`]: they stay with their owner. Must be called inside a tokio runtime.
    pub fn from_clients(client: Client, subscriber: Client, config: RedisConfig) -> Result<Self, RedisError> {
        config.validate()?;
        if client.id() == subscriber.id() {
            return Err(RedisError::InvalidConfig(
                "the subscriber must be a separate client: a connection in subscribed mode cannot run other commands"
                    .into(),
            ));
        }
        Self::assemble(client, subscriber, config, false)
    }

    fn assemble(
        client: Client,
        subscriber: Client,
        config: RedisConfig,
        owned: bool,
    ) -> Result<Self, RedisError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| {
            RedisError::InvalidConfig("the redis transport must be created inside a tokio runtime".into())
        })?;
        let keys = Keys::new(config);
        let hub = Arc::new(Hub::new(keys.clone(), subscriber.clone()));
        let reader = rt.spawn(run_reader(hub.clone(), client.clone(), subscriber.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                subscriber,
                owned,
                keys,
                hub,
                scripts: Scripts::get(),
                closed: AtomicBool::new(false),
                reader: SyncMutex::new(Some(reader)),
                node_id: new_epoch(),
                queues: SyncMutex::new(HashMap::new()),
            }),
        })
    }

    /// The command client (for operations this transport does not wrap).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The subscriber client (its connection is in subscribed mode).
    pub fn subscriber(&self) -> &Client {
        &self.inner.subscriber
    }

    /// The configuration in use.
    pub fn config(&self) -> &RedisConfig {
        self.inner.keys.config()
    }

    /// Fans out an envelope that was stored elsewhere, as is (no sequence, no
    /// stream, no idempotency record): the building block of a hybrid provider whose
    /// storage owns sequences and epochs. Subscribers see `epoch` as the room's
    /// epoch, so a change of it is announced as [`zps_core::LiveSignal::Reset`].
    pub async fn fanout_stored(&self, envelope: &Envelope, epoch: &str) -> Result<()> {
        self.check_open()?;
        let channel = self.inner.keys.event_channel(&envelope.room);
        let message = codec::wire_event(Some(epoch), &envelope.to_json());
        self.send_pubsub(channel, message).await
    }

    async fn send_pubsub(&self, channel: String, message: String) -> Result<()> {
        let client = &self.inner.client;
        let sent: Result<Value, _> = if self.config().sharded_pubsub {
            client.spublish(channel, message).await
        } else {
            client.publish(channel, message).await
        };
        sent.map(|_| ()).map_err(core)
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn require_history(&self, what: &str) -> Result<()> {
        if self.config().persist_streams {
            Ok(())
        } else {
            Err(Error::Unsupported {
                provider: PROVIDER,
                what: format!(
                    "{what}: this Redis transport runs with persist_streams = false (fan-out only) and keeps no history"
                ),
            })
        }
    }

    fn refuse_wildcards_if_sharded(&self, patterns: &[RoomPattern]) -> Result<()> {
        if self.config().sharded_pubsub
            && let Some(p) = patterns.iter().find(|p| p.is_wildcard())
        {
            return Err(Error::Unsupported {
                provider: PROVIDER,
                what: format!(
                    "wildcard subscription `{p}`: sharded pub/sub (SSUBSCRIBE) has no pattern subscribe; \
                     subscribe to rooms or turn sharded_pubsub off"
                ),
            });
        }
        Ok(())
    }

    /// Serializes one event for the publish script.
    fn prepare(&self, event: NewEvent) -> Result<Prepared> {
        let keys = &self.inner.keys;
        let expires_ms = event.expires_at.as_millis();
        let remaining = u64::try_from(expires_ms.saturating_sub(now_ms()))
            .unwrap_or(0)
            .max(1);
        // The record never outlives the event it points to.
        let idem_ttl = u64::try_from(keys.config().idempotency_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .min(remaining);
        let idem_key = Key::from(keys.idempotency(&event.room, &event.id));
        let envelope = event.into_envelope(0);
        let split = codec::split_envelope(&envelope).map_err(Error::InvalidEvent)?;
        Ok(Prepared {
            idem_key,
            args: [
                bulk(split.head),
                bulk(split.tail),
                bulk(idem_ttl.to_string()),
                bulk(expires_ms.to_string()),
                bulk(envelope.event_type.clone()),
            ],
            envelope,
        })
    }

    /// Publishes events of one room in one script call (atomic, in order).
    async fn publish_room(&self, room: &Room, events: Vec<Prepared>) -> Result<Vec<PublishOutcome>> {
        let keys = &self.inner.keys;
        let config = keys.config();
        let mut redis_keys = Vec::with_capacity(2 + events.len());
        redis_keys.push(Key::from(keys.meta(room)));
        redis_keys.push(Key::from(keys.stream(room)));
        let mut args = Vec::with_capacity(5 + 5 * events.len());
        args.push(bulk(new_epoch()));
        args.push(bulk(if config.persist_streams { "1" } else { "0" }));
        args.push(bulk(config.max_stream_len.unwrap_or(0).to_string()));
        args.push(bulk(keys.event_channel(room)));
        args.push(bulk(if config.sharded_pubsub {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }));
        let mut envelopes = Vec::with_capacity(events.len());
        for p in events {
            redis_keys.push(p.idem_key);
            args.extend(p.args);
            envelopes.push(p.envelope);
        }
        let reply: Value = self
            .inner
            .scripts
            .publish
            .run(&self.inner.client, redis_keys, args)
            .await
            .map_err(core)?;
        let items = reply.into_array();
        if items.len() != 2 * envelopes.len() {
            return Err(decode("publish script returned an unexpected reply"));
        }
        let mut items = items.into_iter();
        let mut out = Vec::with_capacity(envelopes.len());
        for mut envelope in envelopes {
            let (Some(flag), Some(body)) = (items.next(), items.next()) else {
                return Err(decode("publish script returned an unexpected reply"));
            };
            out.push(match flag.as_i64() {
                Some(0) => {
                    envelope.sequence =
                        u64_of(&body).ok_or_else(|| decode("publish script returned no sequence"))?;
                    PublishOutcome {
                        envelope: Arc::new(envelope),
                        duplicate: false,
                    }
                }
                Some(1) => {
                    let bytes = body
                        .as_bytes()
                        .ok_or_else(|| decode("publish script returned no stored envelope"))?;
                    PublishOutcome {
                        envelope: Arc::new(codec::decode_envelope(bytes).map_err(decode)?),
                        duplicate: true,
                    }
                }
                _ => return Err(decode("publish script returned an unknown status")),
            });
        }
        Ok(out)
    }

    /// All events of one room, chunked into script calls that run one after another.
    async fn publish_room_chunks(
        &self,
        room: Room,
        events: Vec<(usize, Prepared)>,
    ) -> Result<Vec<(usize, PublishOutcome)>> {
        let mut out = Vec::with_capacity(events.len());
        let mut rest = events.into_iter().peekable();
        while rest.peek().is_some() {
            let mut chunk = Vec::new();
            let mut bytes = 0;
            while let Some((_, p)) = rest.peek() {
                let size = p.size();
                if !chunk.is_empty() && (chunk.len() >= BATCH_EVENTS || bytes + size > BATCH_BYTES) {
                    break;
                }
                bytes += size;
                if let Some(next) = rest.next() {
                    chunk.push(next);
                }
            }
            let (indices, prepared): (Vec<usize>, Vec<Prepared>) = chunk.into_iter().unzip();
            let outcomes = self.publish_room(&room, prepared).await?;
            out.extend(indices.into_iter().zip(outcomes));
        }
        Ok(out)
    }

    async fn read_entries(
        &self,
        stream: &str,
        start: String,
        end: &str,
        count: u64,
    ) -> Result<Vec<StreamEntry>> {
        let reply: Value = self
            .inner
            .client
            .xrange(stream, start, end, Some(count))
            .await
            .map_err(core)?;
        codec::parse_entries(reply).map_err(decode)
    }

    async fn read_head_and_entries(
        &self,
        meta: &str,
        stream: &str,
        start: String,
        end: &str,
        count: u64,
    ) -> Result<(u64, Vec<StreamEntry>)> {
        // One MULTI: the head is read before the entries, atomically, so every
        // sequence up to it that the XRANGE did not return is final.
        let trx = self.inner.client.multi();
        let _: () = trx.hget(meta, "seq").await.map_err(core)?;
        let _: () = trx.xrange(stream, start, end, Some(count)).await.map_err(core)?;
        let reply: Value = trx.exec(true).await.map_err(core)?;
        let mut parts = reply.into_array().into_iter();
        let (Some(head), Some(entries)) = (parts.next(), parts.next()) else {
            return Err(decode("MULTI returned an unexpected reply"));
        };
        let head = u64_of(&head).unwrap_or(0);
        Ok((head, codec::parse_entries(entries).map_err(decode)?))
    }

    async fn prune_stream(&self, stream: &str) -> Result<u64> {
        let mut removed = 0;
        loop {
            let reply: Value = self
                .inner
                .scripts
                .prune
                .run(
                    &self.inner.client,
                    vec![Key::from(stream)],
                    vec![bulk(now_ms().to_string()), bulk(PRUNE_BUDGET.to_string())],
                )
                .await
                .map_err(core)?;
            let mut parts = reply.into_array().into_iter();
            let (Some(n), Some(settled)) = (parts.next(), parts.next()) else {
                return Err(decode("prune script returned an unexpected reply"));
            };
            removed += u64_of(&n).unwrap_or(0);
            if settled.as_i64() != Some(0) {
                return Ok(removed);
            }
        }
    }

    async fn stream_keys(&self) -> Result<Vec<String>> {
        let pattern = self.inner.keys.stream_scan_pattern();
        Ok(crate::admin::keys_matching(&self.inner.client, pattern).await?)
    }

    async fn ping(client: &Client) -> std::result::Result<(), String> {
        match tokio::time::timeout(HEALTH_TIMEOUT, client.ping::<Value>(None)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {HEALTH_TIMEOUT:?}")),
        }
    }
}

/// Passes a room's publish queue on when the call in flight finishes: to a drain
/// task when publishes are waiting, otherwise the room is idle again.
struct Handoff {
    transport: RedisTransport,
    room: Room,
}

impl Drop for Handoff {
    fn drop(&mut self) {
        let waiting = {
            let mut queues = self.transport.inner.queues.lock();
            match queues.get(&self.room) {
                Some(waiting) if !waiting.is_empty() => true,
                _ => {
                    queues.remove(&self.room);
                    false
                }
            }
        };
        if !waiting {
            return;
        }
        let (transport, room) = (self.transport.clone(), self.room.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(drain(transport, room));
            }
            Err(_) => {
                // No runtime left to publish on: fail the waiting publishes.
                let waiting = transport.inner.queues.lock().remove(&room).unwrap_or_default();
                for (_, tx) in waiting {
                    let _ = tx.send(Err(Error::Closed));
                }
            }
        }
    }
}

/// Publishes a room's waiting events, a batch per script call, until none are left.
async fn drain(transport: RedisTransport, room: Room) {
    loop {
        let batch: Vec<Waiting> = {
            let mut queues = transport.inner.queues.lock();
            let Some(waiting) = queues.get_mut(&room) else {
                return;
            };
            if waiting.is_empty() {
                queues.remove(&room);
                return;
            }
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some((p, _)) = waiting.front() {
                let size = p.size();
                if !batch.is_empty() && (batch.len() >= BATCH_EVENTS || bytes + size > BATCH_BYTES) {
                    break;
                }
                bytes += size;
                if let Some(next) = waiting.pop_front() {
                    batch.push(next);
                }
            }
            batch
        };
        let (prepared, senders): (Vec<Prepared>, Vec<_>) = batch.into_iter().unzip();
        match transport.publish_room(&room, prepared).await {
            Ok(outcomes) => {
                for (tx, outcome) in senders.into_iter().zip(outcomes) {
                    let _ = tx.send(Ok(outcome));
                }
            }
            Err(e) => {
                for tx in senders {
                    let _ = tx.send(Err(replicate(&e)));
                }
            }
        }
    }
}

/// The same failure for every publish of a failed batch (`Error` is not `Clone`).
fn replicate(e: &Error) -> Error {
    match e {
        Error::Transport(t) => {
            Error::Transport(TransportError::new(t.provider, t.kind, t.source.to_string()))
        }
        Error::Closed => Error::Closed,
        other => Error::Transport(TransportError::new(
            PROVIDER,
            TransportErrorKind::Other,
            other.to_string(),
        )),
    }
}

/// Reads the subscriber connection until the transport closes.
async fn run_reader(hub: Arc<Hub>, client: Client, subscriber: Client) {
    use tokio::sync::broadcast::error::RecvError;
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    loop {
        tokio::select! {
            msg = messages.recv() => match msg {
                Ok(msg) => hub.route(&msg),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "live reader fell behind the subscriber connection; re-reading history");
                    hub.lagged_all();
                }
                Err(RecvError::Closed) => return,
            },
            event = reconnects.recv() => match event {
                Ok(_) | Err(RecvError::Lagged(_)) => resync(&hub, &client).await,
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// After the subscriber connection came back: subscribe again, re-read epochs, and
/// make every stream re-read history for what passed while it was down.
async fn resync(hub: &Hub, client: &Client) {
    match hub.resubscribe().await {
        Ok(rooms) => {
            tracing::info!(
                rooms = rooms.len(),
                "subscriber connection re-established; resubscribed"
            );
            if hub.keys().config().persist_streams {
                let scripts = Scripts::get();
                let reads = rooms.iter().map(|room| {
                    let keys = vec![
                        Key::from(hub.keys().meta(room)),
                        Key::from(hub.keys().stream(room)),
                    ];
                    async move {
                        let epoch: std::result::Result<String, _> =
                            scripts.epoch.run(client, keys, vec![bulk(new_epoch())]).await;
                        (room, epoch)
                    }
                });
                for (room, epoch) in futures::future::join_all(reads).await {
                    match epoch {
                        Ok(epoch) => hub.announce_epoch(room, Arc::from(epoch)),
                        Err(e) => tracing::warn!(room = %room, error = %e, "cannot re-read the room's epoch"),
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "resubscribing after a reconnect failed; waiting for the next one")
        }
    }
    hub.lagged_all();
}

#[async_trait]
impl Transport for RedisTransport {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // Redis may run without persistence; with AOF/RDB history survives restarts,
            // and epochs make a lost history visible either way.
            durable: false,
            history: self.config().persist_streams,
            cross_process: true,
            // One ordered path per room: the script publishes in sequence order.
            reorder_window: Duration::ZERO,
        }
    }

    async fn publish(&self, event: NewEvent) -> Result<PublishOutcome> {
        self.check_open()?;
        let room = event.room.clone();
        let mut prepared = Some(self.prepare(event)?);
        // One script call in flight per room: publishes arriving meanwhile queue up and
        // go together in the next call (in arrival order), which keeps a hot room's
        // throughput from being bounded by one round trip per event.
        let follower = {
            let mut queues = self.inner.queues.lock();
            match queues.get_mut(&room) {
                Some(waiting) => {
                    let (tx, rx) = oneshot::channel();
                    if let Some(p) = prepared.take() {
                        waiting.push_back((p, tx));
                    }
                    Some(rx)
                }
                None => {
                    queues.insert(room.clone(), VecDeque::new());
                    None
                }
            }
        };
        if let Some(rx) = follower {
            return rx.await.unwrap_or(Err(Error::Closed));
        }
        // Hands the queue on (even if this future is dropped midway).
        let _handoff = Handoff {
            transport: self.clone(),
            room: room.clone(),
        };
        let prepared = prepared.ok_or_else(|| decode("publish lost its event"))?;
        self.publish_room(&room, vec![prepared])
            .await?
            .pop()
            .ok_or_else(|| decode("publish script returned no outcome"))
    }

    async fn fanout(&self, envelope: Arc<Envelope>) -> Result<()> {
        // An envelope stored elsewhere: published as is, without an epoch (live streams
        // then neither compare nor record one; the storing transport owns epochs).
        self.check_open()?;
        let channel = self.inner.keys.event_channel(&envelope.room);
        let message = codec::wire_event(None, &envelope.to_json());
        self.send_pubsub(channel, message).await
    }

    fn batches_publishes(&self) -> bool {
        true
    }

    async fn publish_batch(&self, events: Vec<NewEvent>) -> Result<Vec<PublishOutcome>> {
        self.check_open()?;
        let total = events.len();
        // Group by room, keeping each room's order: one script call per room chunk,
        // rooms in parallel (fred pipelines them on the connection).
        let mut by_room: Vec<(Room, Vec<(usize, Prepared)>)> = Vec::new();
        let mut slot_of: HashMap<Room, usize> = HashMap::new();
        for (i, event) in events.into_iter().enumerate() {
            let room = event.room.clone();
            let prepared = self.prepare(event)?;
            let slot = *slot_of.entry(room.clone()).or_insert_with(|| {
                by_room.push((room, Vec::new()));
                by_room.len() - 1
            });
            by_room[slot].1.push((i, prepared));
        }
        let mut results: Vec<Option<PublishOutcome>> = (0..total).map(|_| None).collect();
        let mut calls = futures::stream::iter(
            by_room
                .into_iter()
                .map(|(room, events)| self.publish_room_chunks(room, events)),
        )
        .buffer_unordered(BATCH_ROOMS_IN_FLIGHT);
        while let Some(done) = calls.next().await {
            for (i, outcome) in done? {
                results[i] = Some(outcome);
            }
        }
        results
            .into_iter()
            .map(|o| o.ok_or_else(|| decode("a batched publish got no outcome")))
            .collect()
    }

    async fn subscribe(&self, patterns: &[RoomPattern]) -> Result<LiveStream> {
        self.check_open()?;
        self.refuse_wildcards_if_sharded(patterns)?;
        let mut targets: Vec<Target> = patterns
            .iter()
            .map(|p| match p {
                RoomPattern::Exact(r) => Target::EventRoom(r.clone()),
                RoomPattern::Scope(s) => Target::EventScope(s.clone()),
            })
            .collect();
        targets.sort_by_key(|t| format!("{t:?}"));
        targets.dedup();
        let hub = &self.inner.hub;
        let guard = hub.acquire(targets).await.map_err(core)?;
        // Seed each room's epoch, so a reset that happens before the first message is noticed.
        let mut known = HashMap::new();
        if self.config().persist_streams {
            let rooms: Vec<&Room> = patterns.iter().filter_map(RoomPattern::as_room).collect();
            let reads = rooms.iter().map(|room| {
                let meta = self.inner.keys.meta(room);
                async move {
                    let epoch: std::result::Result<Option<String>, _> =
                        self.inner.client.hget(meta, "epoch").await;
                    epoch
                }
            });
            for (room, epoch) in rooms.iter().zip(futures::future::join_all(reads).await) {
                if let Some(epoch) = epoch.map_err(core)? {
                    known.insert((*room).clone(), Arc::from(epoch));
                }
            }
        }
        let stream = hub.live_stream(patterns, guard, known);
        Ok(stream.boxed())
    }

    async fn replay(&self, query: &ReplayQuery) -> Result<ReplayPage> {
        self.check_open()?;
        self.require_history("replay")?;
        let limit = query.effective_limit();
        let upper = query.to_sequence.unwrap_or(u64::MAX);
        let mut page = ReplayPage {
            events: Vec::new(),
            scanned_to: query.from_sequence,
            exhausted: true,
        };
        if query.from_sequence >= upper {
            return Ok(page);
        }
        let keys = &self.inner.keys;
        let (meta, stream) = (keys.meta(&query.room), keys.stream(&query.room));
        let end = query.to_sequence.map_or_else(|| "+".to_owned(), codec::stream_id);
        let chunk = (limit as u64).clamp(64, REPLAY_CHUNK_MAX);
        let now = now_ms();
        let mut cursor = query.from_sequence;
        let mut head = 0;
        for round in 0..REPLAY_MAX_ROUNDS {
            let start = codec::stream_id(cursor + 1);
            let entries = if round == 0 {
                let (h, entries) = self
                    .read_head_and_entries(&meta, &stream, start, &end, chunk)
                    .await?;
                head = h;
                entries
            } else {
                self.read_entries(&stream, start, &end, chunk).await?
            };
            let read = entries.len() as u64;
            for entry in entries {
                if page.events.len() == limit {
                    page.exhausted = false;
                    return Ok(page);
                }
                page.scanned_to = entry.sequence;
                cursor = entry.sequence;
                if entry.expires_at_ms <= now {
                    continue;
                }
                if let Some(types) = &query.event_types {
                    let t = entry.event_type.as_bytes().unwrap_or_default();
                    if !types.iter().any(|want| want.as_bytes() == t) {
                        continue;
                    }
                }
                let bytes = entry.data.as_bytes().unwrap_or_default();
                page.events
                    .push(Arc::new(codec::decode_envelope(bytes).map_err(decode)?));
            }
            if read < chunk || cursor >= upper {
                // The end of the stream (or of the range): everything up to the head
                // read before this scan is final.
                page.scanned_to = page.scanned_to.max(head.min(upper));
                page.exhausted = true;
                return Ok(page);
            }
            if page.events.len() == limit {
                page.exhausted = false;
                return Ok(page);
            }
        }
        page.exhausted = false;
        Ok(page)
    }

    async fn room_info(&self, room: &Room) -> Result<RoomInfo> {
        self.check_open()?;
        let keys = &self.inner.keys;
        let reply: Value = self
            .inner
            .scripts
            .room_info
            .run(
                &self.inner.client,
                vec![Key::from(keys.meta(room)), Key::from(keys.stream(room))],
                vec![
                    bulk(new_epoch()),
                    bulk(now_ms().to_string()),
                    bulk(if self.config().persist_streams { "1" } else { "0" }),
                ],
            )
            .await
            .map_err(core)?;
        let parts = reply.into_array();
        let (Some(epoch), Some(last), Some(first)) = (
            parts.first().and_then(str_of),
            parts.get(1).and_then(u64_of),
            parts.get(2).and_then(str_of),
        ) else {
            return Err(decode("room info script returned an unexpected reply"));
        };
        let earliest = if first.is_empty() {
            last + 1
        } else {
            codec::parse_stream_id(&first).ok_or_else(|| decode(format!("unexpected stream id `{first}`")))?
        };
        Ok(RoomInfo {
            epoch,
            last_sequence: last,
            earliest_sequence: earliest,
        })
    }

    async fn ack(&self, room: &Room, subscriber_id: &str, sequence: u64) -> Result<u64> {
        self.check_open()?;
        let stored: String = self
            .inner
            .scripts
            .ack
            .run(
                &self.inner.client,
                vec![Key::from(self.inner.keys.cursors(room))],
                vec![bulk(subscriber_id), bulk(sequence.to_string())],
            )
            .await
            .map_err(core)?;
        stored
            .parse()
            .map_err(|_| decode(format!("stored cursor `{stored}` is not a number")))
    }

    async fn cursor(&self, room: &Room, subscriber_id: &str) -> Result<Option<u64>> {
        self.check_open()?;
        let stored: Option<String> = self
            .inner
            .client
            .hget(self.inner.keys.cursors(room), subscriber_id)
            .await
            .map_err(core)?;
        stored
            .map(|s| {
                s.parse()
                    .map_err(|_| decode(format!("stored cursor `{s}` is not a number")))
            })
            .transpose()
    }

    async fn put_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.check_open()?;
        let json = serde_json::to_string(&snapshot).map_err(|e| Error::InvalidEvent(e.to_string()))?;
        let _: () = self
            .inner
            .client
            .set(self.inner.keys.snapshot(&snapshot.room), json, None, None, false)
            .await
            .map_err(core)?;
        Ok(())
    }

    async fn get_snapshot(&self, room: &Room) -> Result<Option<Snapshot>> {
        self.check_open()?;
        let stored: Option<String> = self
            .inner
            .client
            .get(self.inner.keys.snapshot(room))
            .await
            .map_err(core)?;
        stored
            .map(|s| {
                serde_json::from_str(&s).map_err(|e| decode(format!("stored snapshot is not valid: {e}")))
            })
            .transpose()
    }

    async fn dlq_write(&self, room: &Room, entry: NewDlqEntry) -> Result<DlqEntry> {
        self.check_open()?;
        let mut stored = DlqEntry {
            entry_id: 0,
            room: room.clone(),
            event: entry.event,
            error: entry.error,
            attempts: entry.attempts,
            subscriber_id: entry.subscriber_id,
            failed_at: entry.failed_at,
        };
        let json = serde_json::to_string(&stored).map_err(|e| Error::InvalidEvent(e.to_string()))?;
        let cap = i64::try_from(self.config().max_dlq_len.max(1)).unwrap_or(i64::MAX);
        // `0-*`: the server numbers entries 0-1, 0-2, ... so the sequence part is the entry id.
        let id: String = self
            .inner
            .client
            .xadd(
                self.inner.keys.dlq(room),
                false,
                ("MAXLEN", "~", cap),
                XID::Manual(Str::from("0-*")),
                vec![("e", json)],
            )
            .await
            .map_err(core)?;
        stored.entry_id = id
            .strip_prefix("0-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| decode(format!("unexpected dead-letter id `{id}`")))?;
        Ok(stored)
    }

    async fn dlq_list(&self, room: &Room, after: u64, limit: usize) -> Result<Vec<DlqEntry>> {
        self.check_open()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let reply: Value = self
            .inner
            .client
            .xrange(
                self.inner.keys.dlq(room),
                format!("(0-{after}"),
                "+",
                Some(limit as u64),
            )
            .await
            .map_err(core)?;
        let Value::Array(rows) = reply else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut parts = row.into_array().into_iter();
            let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
                return Err(decode("malformed dead-letter entry"));
            };
            let id = str_of(&id).unwrap_or_default();
            let entry_id: u64 = id
                .strip_prefix("0-")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| decode(format!("unexpected dead-letter id `{id}`")))?;
            let fields = fields.into_array();
            let json = fields
                .chunks(2)
                .find(|pair| pair.first().and_then(Value::as_bytes) == Some(b"e"))
                .and_then(|pair| pair.get(1))
                .and_then(Value::as_bytes)
                .ok_or_else(|| decode(format!("dead letter {id} has no body")))?;
            let mut entry: DlqEntry = serde_json::from_slice(json)
                .map_err(|e| decode(format!("dead letter {id} is not valid: {e}")))?;
            entry.entry_id = entry_id;
            out.push(entry);
        }
        Ok(out)
    }

    async fn dlq_remove(&self, room: &Room, entry_ids: &[u64]) -> Result<u64> {
        self.check_open()?;
        if entry_ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = entry_ids.iter().map(|id| format!("0-{id}")).collect();
        self.inner
            .client
            .xdel(self.inner.keys.dlq(room), ids)
            .await
            .map_err(core)
    }

    async fn dlq_len(&self, room: &Room) -> Result<u64> {
        self.check_open()?;
        self.inner
            .client
            .xlen(self.inner.keys.dlq(room))
            .await
            .map_err(core)
    }

    async fn dlq_rooms(&self, prefix: &str, after: Option<&Room>, limit: usize) -> Result<Vec<DlqRoom>> {
        self.check_open()?;
        let keys =
            crate::admin::keys_matching(&self.inner.client, self.inner.keys.dlq_scan_pattern(prefix)).await?;
        let mut rooms: Vec<Room> = keys
            .iter()
            .filter_map(|key| self.inner.keys.dlq_room(key))
            .filter(|room| after.is_none_or(|a| room > a))
            .collect();
        rooms.sort_unstable();
        rooms.dedup();
        let mut out = Vec::new();
        for room in rooms {
            if out.len() >= limit {
                break;
            }
            // A stream whose entries were all removed stays behind, empty.
            let len: u64 = self
                .inner
                .client
                .xlen(self.inner.keys.dlq(&room))
                .await
                .map_err(core)?;
            if len > 0 {
                out.push(DlqRoom { room, len });
            }
        }
        Ok(out)
    }

    async fn publish_ephemeral(&self, event: Arc<EphemeralEvent>) -> Result<()> {
        self.check_open()?;
        let json = serde_json::to_string(&*event).map_err(|e| Error::InvalidEvent(e.to_string()))?;
        let channel = self.inner.keys.ephemeral_channel(&event.room);
        self.send_pubsub(channel, json).await
    }

    async fn subscribe_ephemeral(&self, patterns: &[RoomPattern]) -> Result<EphemeralStream> {
        self.check_open()?;
        self.refuse_wildcards_if_sharded(patterns)?;
        let mut targets: Vec<Target> = patterns
            .iter()
            .map(|p| match p {
                RoomPattern::Exact(r) => Target::EphemeralRoom(r.clone()),
                RoomPattern::Scope(s) => Target::EphemeralScope(s.clone()),
            })
            .collect();
        targets.sort_by_key(|t| format!("{t:?}"));
        targets.dedup();
        let hub = &self.inner.hub;
        let guard = hub.acquire(targets).await.map_err(core)?;
        Ok(hub.ephemeral_stream(patterns, guard))
    }

    async fn presence_enter(
        &self,
        room: &Room,
        member: PresenceMember,
        connection: &str,
        ttl: Duration,
    ) -> Result<bool> {
        self.check_open()?;
        let invalid = |e: serde_json::Error| Error::InvalidEvent(e.to_string());
        // Metadata is stored apart from the member so that `None` can keep it.
        let metadata = match &member.metadata {
            Some(m) => serde_json::to_string(m).map_err(invalid)?,
            None => String::new(),
        };
        let bare = PresenceMember {
            metadata: None,
            ..member.clone()
        };
        let json = serde_json::to_string(&bare).map_err(invalid)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let reply: Value = self
            .inner
            .scripts
            .presence_enter
            .run(
                &self.inner.client,
                vec![Key::from(self.inner.keys.presence(room))],
                vec![
                    bulk(member.user_id.clone()),
                    bulk(connection),
                    bulk(ttl_ms.to_string()),
                    bulk(json),
                    bulk(metadata),
                ],
            )
            .await
            .map_err(core)?;
        let parts = reply.into_array();
        let joined = parts.first().and_then(Value::as_i64) == Some(1);
        let expiry = parts.get(1).and_then(Value::as_i64).unwrap_or(0);
        // The index only lets the sweeper find rooms; LT keeps the earliest expiry.
        let _: Value = self
            .inner
            .client
            .zadd(
                self.inner.keys.presence_index(),
                None,
                Some(ZOrdering::LessThan),
                false,
                false,
                (expiry as f64, room.as_str()),
            )
            .await
            .map_err(core)?;
        Ok(joined)
    }

    async fn presence_leave(&self, room: &Room, user_id: &str, connection: &str) -> Result<bool> {
        self.check_open()?;
        let left: i64 = self
            .inner
            .scripts
            .presence_leave
            .run(
                &self.inner.client,
                vec![Key::from(self.inner.keys.presence(room))],
                vec![bulk(user_id), bulk(connection)],
            )
            .await
            .map_err(core)?;
        Ok(left == 1)
    }

    async fn presence_members(&self, room: &Room) -> Result<Vec<PresenceMember>> {
        self.check_open()?;
        let reply: Value = self
            .inner
            .scripts
            .presence_members
            .run(
                &self.inner.client,
                vec![Key::from(self.inner.keys.presence(room))],
                Vec::new(),
            )
            .await
            .map_err(core)?;
        let mut members = Vec::new();
        let mut values = reply.into_array().into_iter();
        while let (Some(member), Some(metadata)) = (values.next(), values.next()) {
            let Some(bytes) = member.as_bytes() else { continue };
            let mut member: PresenceMember = serde_json::from_slice(bytes)
                .map_err(|e| decode(format!("stored presence member is not valid: {e}")))?;
            if let Some(bytes) = metadata.as_bytes().filter(|b| !b.is_empty()) {
                member.metadata = Some(
                    serde_json::from_slice(bytes)
                        .map_err(|e| decode(format!("stored presence metadata is not valid: {e}")))?,
                );
            }
            members.push(member);
        }
        members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(members)
    }

    async fn presence_sweep(&self) -> Result<Vec<(Room, String)>> {
        self.check_open()?;
        let client = &self.inner.client;
        let index = self.inner.keys.presence_index();
        let (secs, micros): (String, String) = client
            .custom(
                CustomCommand::new_static("TIME", ClusterHash::Random, false),
                Vec::<String>::new(),
            )
            .await
            .map_err(core)?;
        let now = secs.parse::<i64>().unwrap_or(0) * 1000 + micros.parse::<i64>().unwrap_or(0) / 1000;
        let due: Vec<String> = client
            .zrangebyscore(&index, "-inf", now as f64, false, Some((0, 1_000)))
            .await
            .map_err(core)?;
        let mut left = Vec::new();
        for name in due {
            let Ok(room) = Room::parse(&name) else {
                let _: Value = client.zrem(&index, name).await.map_err(core)?;
                continue;
            };
            let reply: Value = self
                .inner
                .scripts
                .presence_sweep
                .run(
                    client,
                    vec![Key::from(self.inner.keys.presence(&room))],
                    Vec::new(),
                )
                .await
                .map_err(core)?;
            let mut parts = reply.into_array().into_iter();
            let earliest = parts.next().and_then(|v| v.as_i64()).unwrap_or(0);
            for user in parts.next().map(Value::into_array).unwrap_or_default() {
                if let Some(user) = str_of(&user) {
                    left.push((room.clone(), user));
                }
            }
            if earliest > 0 {
                let _: Value = client
                    .zadd(&index, None, None, false, false, (earliest as f64, room.as_str()))
                    .await
                    .map_err(core)?;
            } else {
                let _: Value = client.zrem(&index, room.as_str()).await.map_err(core)?;
                // A concurrent enter may have landed between the sweep and the removal.
                let still: u64 = client.hlen(self.inner.keys.presence(&room)).await.map_err(core)?;
                if still > 0 {
                    let _: Value = client
                        .zadd(&index, None, None, false, false, (now as f64, room.as_str()))
                        .await
                        .map_err(core)?;
                }
            }
        }
        Ok(left)
    }

    async fn prune_expired(&self) -> Result<u64> {
        self.check_open()?;
        if !self.config().persist_streams {
            return Ok(0);
        }
        let mut removed = 0;
        for stream in self.stream_keys().await? {
            removed += self.prune_stream(&stream).await?;
        }
        Ok(removed)
    }

    async fn health(&self) -> TransportHealth {
        let mut health = TransportHealth::healthy(PROVIDER);
        if self.inner.closed.load(Ordering::Acquire) {
            health.fail("closed");
            return health;
        }
        let (client, subscriber) =
            tokio::join!(Self::ping(&self.inner.client), Self::ping(&self.inner.subscriber));
        let state = |r: &std::result::Result<(), String>| match r {
            Ok(()) => serde_json::Value::from("ok"),
            Err(e) => serde_json::Value::from(e.clone()),
        };
        health.details.insert("client".into(), state(&client));
        health.details.insert("subscriber".into(), state(&subscriber));
        health
            .details
            .insert("subscriptions".into(), self.inner.hub.active_count().into());
        health
            .details
            .insert("persistStreams".into(), self.config().persist_streams.into());
        health
            .details
            .insert("shardedPubsub".into(), self.config().sharded_pubsub.into());
        health
            .details
            .insert("node".into(), self.inner.node_id.clone().into());
        health.status = match (client.is_ok(), subscriber.is_ok()) {
            (true, true) => HealthStatus::Healthy,
            // Commands work but live delivery does not.
            (true, false) => HealthStatus::Degraded,
            _ => HealthStatus::Unhealthy,
        };
        health
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(reader) = self.inner.reader.lock().take() {
            reader.abort();
        }
        self.inner.hub.close();
        if self.inner.owned {
            let _ = self.inner.subscriber.quit().await;
            let _ = self.inner.client.quit().await;
        } else {
            // Leave the injected subscriber as we found it: drop our subscriptions.
            self.inner.hub.unsubscribe_all().await;
        }
        Ok(())
    }
}
