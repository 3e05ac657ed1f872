//! [`RedisTransport`]: the `Transport` implementation over Redis.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use zps_core::transport::{DeadLetterStore, EphemeralBus, PresenceStore, Retention, SnapshotStore};

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

mod dead_letters;
mod presence;
mod read;
mod subscribe;
mod write;

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
        let reader = rt.spawn(subscribe::run_reader(
            hub.clone(),
            client.clone(),
            subscriber.clone(),
        ));
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

    zps_core::offer_every_capability!();

    async fn publish(&self, event: NewEvent) -> Result<PublishOutcome> {
        self.publish_stored(event).await
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
        self.publish_batch_stored(events).await
    }

    async fn subscribe(&self, patterns: &[RoomPattern]) -> Result<LiveStream> {
        self.subscribe_live(patterns).await
    }

    async fn replay(&self, query: &ReplayQuery) -> Result<ReplayPage> {
        self.replay_stored(query).await
    }

    async fn room_info(&self, room: &Room) -> Result<RoomInfo> {
        self.room_info_stored(room).await
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

#[async_trait]
impl SnapshotStore for RedisTransport {
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
}

#[async_trait]
impl EphemeralBus for RedisTransport {
    async fn publish_ephemeral(&self, event: Arc<EphemeralEvent>) -> Result<()> {
        self.check_open()?;
        let json = serde_json::to_string(&*event).map_err(|e| Error::InvalidEvent(e.to_string()))?;
        let channel = self.inner.keys.ephemeral_channel(&event.room);
        self.send_pubsub(channel, json).await
    }

    async fn subscribe_ephemeral(&self, patterns: &[RoomPattern]) -> Result<EphemeralStream> {
        self.subscribe_ephemeral_live(patterns).await
    }
}

#[async_trait]
impl Retention for RedisTransport {
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
}
