//! [`MongoTransport`]: the [`Transport`] implementation over one MongoDB database.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use zps_core::transport::{DeadLetterStore, EphemeralBus, PresenceStore, Retention, SnapshotStore};

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::{ClientOptions, ReturnDocument};
use mongodb::{Client, Collection, Database};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zps_core::transport::{EphemeralStream, LiveStream};
use zps_core::{
    Capabilities, DlqEntry, DlqRoom, Envelope, EphemeralEvent, HealthStatus, NewDlqEntry, NewEvent,
    PresenceMember, PublishOutcome, ReplayPage, ReplayQuery, Room, RoomInfo, RoomPattern, Snapshot,
    Timestamp, Transport, TransportHealth,
};

use crate::config::{ChangeStreams, CollectionNames, MongoConfig, validate_database_name};
use crate::docs::{
    self, IndexTarget, META_ID, by_sequence, counter_key, cursor_filter, date, decode_event, dlq_counter_key,
    event_key, get_i64, get_u64, int, range_filter, replay_filter, skip_document,
};
use crate::error::{MongoError, MongoResult, is_duplicate_key};
use crate::holes::{HolePolicy, Slot, scan_holes};
use crate::live::{self, LiveHub, StreamState};

mod dead_letters;
mod presence;
mod read;
mod write;

/// Widest sequence range one replay page examines; a rarely matching type filter pages
/// through long histories in windows of this size instead of scanning them at once.
pub const SCAN_WINDOW: u64 = 10_000;
/// Publish attempts (each takes a new sequence) before giving up on a room whose
/// sequences keep being taken.
const MAX_PUBLISH_ATTEMPTS: usize = 8;

/// How live events reach this process's subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LiveMode {
    /// A change stream on the events collection (cross-process).
    ChangeStream,
    /// This process's publishes plus the head poller.
    InProcess,
}

struct Collections {
    events: Collection<Document>,
    counters: Collection<Document>,
    subscribers: Collection<Document>,
    snapshots: Collection<Document>,
    dlq: Collection<Document>,
    presence: Collection<Document>,
}

impl Collections {
    fn new(db: &Database, n: &CollectionNames) -> Self {
        Self {
            events: db.collection(&n.events),
            counters: db.collection(&n.counters),
            subscribers: db.collection(&n.subscribers),
            snapshots: db.collection(&n.snapshots),
            dlq: db.collection(&n.dlq),
            presence: db.collection(&n.presence),
        }
    }
}

struct Inner {
    client: Client,
    db: Database,
    names: CollectionNames,
    c: Collections,
    config: MongoConfig,
    policy: HolePolicy,
    owned: bool,
    mode: LiveMode,
    hub: Arc<LiveHub>,
    closed: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The database epoch, read (or created) once at start.
    epoch: Mutex<Option<String>>,
    /// Publishes in progress by event key: concurrent publishes of one id in this
    /// process wait for the first instead of racing it for a second sequence.
    inflight: Mutex<HashMap<String, watch::Receiver<Option<Arc<Envelope>>>>>,
}

/// Removes an in-flight entry when its publish ends, however it ends.
struct InflightGuard<'a> {
    map: &'a Mutex<HashMap<String, watch::Receiver<Option<Arc<Envelope>>>>>,
    key: String,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.map.lock().remove(&self.key);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().drain(..) {
            t.abort();
        }
    }
}

/// MongoDB storage with per-room counters and change-stream (or in-process) fan-out;
/// cheap to clone (shared state).
///
/// ```no_run
/// use std::sync::Arc;
/// use zps_core::Realtime;
/// use zps_mongo::{MongoConfig, MongoTransport};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let transport = MongoTransport::connect("mongodb://127.0.0.1:27017/app?replicaSet=rs0", MongoConfig::default()).await?;
/// let realtime = Realtime::new(Arc::new(transport));
/// // ... publish / subscribe ...
/// realtime.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MongoTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MongoTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoTransport")
            .field("database", &self.inner.db.name())
            .field("live", &self.inner.mode)
            .field("owned", &self.inner.owned)
            .finish()
    }
}

/// The host list of a URI's options, for error messages (never credentials).
fn target_of(opts: &ClientOptions) -> String {
    opts.hosts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a URI into client options with the provider's defaults applied: bounded server
/// selection and connection timeouts (unless the URI sets them) and an application name.
pub async fn client_options(uri: &str, config: &MongoConfig) -> Result<ClientOptions, MongoError> {
    // Parsing resolves `mongodb+srv://` through DNS: bound it like a connection.
    let parsed = tokio::time::timeout(config.connect_timeout, ClientOptions::parse(uri)).await;
    let mut opts = match parsed {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(MongoError::InvalidUri(e.to_string())),
        Err(_) => {
            return Err(MongoError::ConnectTimeout {
                target: "(resolving the URI)".into(),
                timeout_ms: config.connect_timeout.as_millis(),
            });
        }
    };
    opts.server_selection_timeout
        .get_or_insert(config.connect_timeout);
    opts.connect_timeout.get_or_insert(config.connect_timeout);
    opts.app_name.get_or_insert_with(|| "zero-pub-sub".into());
    if let (Some(ca), Some(mongodb::options::Tls::Enabled(tls))) = (&config.tls_ca_file, &mut opts.tls) {
        tls.ca_file_path.get_or_insert_with(|| ca.clone());
    }
    Ok(opts)
}

impl MongoTransport {
    /// Connects to `uri`, creating (and owning) a `mongodb::Client`: the database is
    /// `config.database`, else the URI's path, else `zero_realtime`. Fails within
    /// `config.connect_timeout` when no server answers.
    pub async fn connect(uri: &str, config: MongoConfig) -> Result<Self, MongoError> {
        config.validate()?;
        let opts = client_options(uri, &config).await?;
        let target = target_of(&opts);
        let db_name = config.database_name(opts.default_database.as_deref());
        validate_database_name(&db_name)?;
        let client = Client::with_options(opts).map_err(|e| MongoError::InvalidUri(e.to_string()))?;
        let db = client.database(&db_name);
        let bound = config.connect_timeout + Duration::from_secs(1);
        match tokio::time::timeout(bound, db.run_command(doc! { "ping": 1 })).await {
            Ok(Ok(_)) => {}
            Ok(Err(source)) => {
                client.shutdown().immediate(true).await;
                return Err(MongoError::Unreachable { target, source });
            }
            Err(_) => {
                client.shutdown().immediate(true).await;
                return Err(MongoError::ConnectTimeout {
                    target,
                    timeout_ms: bound.as_millis(),
                });
            }
        }
        Self::start(client, db, config, true).await
    }

    /// Uses an injected database (and its client), which stays the caller's: `close()`
    /// does not shut the client down unless `config.close_client` says so.
    pub async fn from_database(db: Database, config: MongoConfig) -> Result<Self, MongoError> {
        config.validate()?;
        let client = db.client().clone();
        Self::start(client, db, config, false).await
    }

    async fn start(client: Client, db: Database, config: MongoConfig, owned: bool) -> MongoResult<Self> {
        let names = config.collections()?;
        let c = Collections::new(&db, &names);
        if config.creates_indexes() {
            create_indexes(&db, &names, config.ttl_index.then_some(config.purge_delay)).await?;
        }
        let hub = Arc::new(LiveHub::new(config.channel_capacity));
        let mut stream = None;
        if config.change_streams == ChangeStreams::Auto {
            let hello = client
                .database("admin")
                .run_command(doc! { "hello": 1 })
                .await
                .unwrap_or_default();
            if docs::supports_change_streams(&hello) {
                match live::open_change_stream(&c.events, None).await {
                    Ok(s) => stream = Some(s),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "MongoDB change streams unavailable; live fan-out is in-process (plus head polling)"
                    ),
                }
            }
        }
        let mode = if stream.is_some() {
            LiveMode::ChangeStream
        } else {
            LiveMode::InProcess
        };
        let grace_ms = i64::try_from(config.hole_grace.as_millis()).unwrap_or(i64::MAX);
        let horizon_ms = i64::try_from(config.purge_delay.as_millis()).unwrap_or(i64::MAX);
        let inner = Arc::new(Inner {
            client,
            names,
            c,
            policy: HolePolicy { grace_ms, horizon_ms },
            owned,
            mode,
            hub: hub.clone(),
            closed: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            epoch: Mutex::new(None),
            inflight: Mutex::new(HashMap::new()),
            config,
            db,
        });
        let mut tasks = Vec::new();
        match stream {
            Some(s) => {
                tracing::info!(
                    database = inner.db.name(),
                    "MongoDB live fan-out: change streams (cross-process)"
                );
                tasks.push(tokio::spawn(live::run_change_stream(
                    inner.c.events.clone(),
                    hub,
                    s,
                )));
            }
            None => {
                let poll = inner.config.poll_interval;
                tracing::info!(
                    database = inner.db.name(),
                    poll_ms = poll.map(|p| p.as_millis() as u64),
                    "MongoDB live fan-out: in-process only (no change streams: standalone server or disabled); \
                     other processes' events reach local subscribers of exact rooms by head polling"
                );
                if let Some(every) = poll {
                    tasks.push(tokio::spawn(run_poller(Arc::downgrade(&inner), every)));
                }
            }
        }
        *inner.tasks.lock() = tasks;
        let transport = Self { inner };
        transport.db_epoch().await?;
        Ok(transport)
    }

    /// The database in use.
    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    /// Whether live events come from a change stream (and so reach other processes).
    pub fn uses_change_streams(&self) -> bool {
        self.inner.mode == LiveMode::ChangeStream
    }

    /// The collection names in use.
    pub fn collection_names(&self) -> &CollectionNames {
        &self.inner.names
    }

    fn check_open(&self) -> MongoResult<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(MongoError::Closed)
        } else {
            Ok(())
        }
    }

    /// The database epoch from the meta document, created on first use.
    async fn db_epoch(&self) -> MongoResult<String> {
        if let Some(e) = self.inner.epoch.lock().clone() {
            return Ok(e);
        }
        let counters = &self.inner.c.counters;
        for _ in 0..3 {
            if let Some(d) = counters.find_one(doc! { "_id": META_ID }).await?
                && let Ok(epoch) = d.get_str("epoch")
            {
                *self.inner.epoch.lock() = Some(epoch.to_owned());
                return Ok(epoch.to_owned());
            }
            let epoch = format!("mongo-{}", uuid::Uuid::new_v4().simple());
            let meta = doc! { "_id": META_ID, "epoch": epoch.as_str(), "createdAt": date(Timestamp::now()) };
            match counters.insert_one(meta).await {
                Ok(_) => {
                    *self.inner.epoch.lock() = Some(epoch.clone());
                    return Ok(epoch);
                }
                // Another process created it first: read theirs.
                Err(e) if is_duplicate_key(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(MongoError::Corrupt {
            collection: "counters",
            detail: "meta document without an epoch".into(),
        })
    }

    async fn ack_inner(&self, room: &Room, subscriber_id: &str, sequence: u64) -> MongoResult<u64> {
        let subs = &self.inner.c.subscribers;
        for attempt in 0..2 {
            let result = subs
                .find_one_and_update(
                    cursor_filter(room, subscriber_id),
                    docs::ack_update(sequence, Timestamp::now()),
                )
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await;
            match result {
                Ok(d) => return Ok(d.and_then(|d| get_u64(&d, "sequence")).unwrap_or(sequence)),
                // Two first acks raced on the unique index: the second one updates.
                Err(e) if attempt == 0 && is_duplicate_key(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(sequence)
    }

    /// The live connections of a user: `{metadata, metadataAt}` of each.
    async fn presence_live(&self, room: &Room, user_id: &str) -> MongoResult<Vec<Document>> {
        let now = Timestamp::now();
        let found: Vec<Document> = self
            .inner
            .c
            .presence
            .find(doc! { "room": room.as_str(), "userId": user_id, "expiresAt": docs::not_expired(now) })
            .projection(doc! { "_id": 0, "expiresAt": 1, "metadata": 1, "metadataAt": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(found
            .into_iter()
            .filter(|d| docs::get_timestamp(d, "expiresAt").is_some_and(|t| t > now))
            .collect())
    }

    async fn close_inner(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let tasks: Vec<JoinHandle<()>> = self.inner.tasks.lock().drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        self.inner.hub.close();
        let close_client = self.inner.config.close_client.unwrap_or(self.inner.owned);
        if close_client {
            self.inner.client.clone().shutdown().immediate(true).await;
        }
    }
}

/// Issues `createIndexes` for every collection (idempotent; an existing index with other
/// options is reported and left alone).
async fn create_indexes(db: &Database, names: &CollectionNames, ttl: Option<Duration>) -> MongoResult<()> {
    for (target, indexes) in docs::index_specs(ttl) {
        let collection = match target {
            IndexTarget::Events => &names.events,
            IndexTarget::Subscribers => &names.subscribers,
            IndexTarget::Dlq => &names.dlq,
            IndexTarget::Presence => &names.presence,
        };
        let command = doc! { "createIndexes": collection.as_str(), "indexes": indexes };
        match db.run_command(command).await {
            Ok(_) => {}
            Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if matches!(c.code, 85 | 86)) =>
            {
                tracing::warn!(collection = collection.as_str(), error = %e, "index exists with other options; left as is");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn run_poller(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = live::poll_heads(&inner.hub, &inner.c.events, &inner.c.counters).await {
            tracing::debug!(error = %e, "head poll failed; retrying next tick");
        }
    }
}

fn corrupt(collection: &'static str) -> impl Fn(String) -> MongoError {
    move |detail| MongoError::Corrupt { collection, detail }
}

#[async_trait]
impl Transport for MongoTransport {
    fn name(&self) -> &'static str {
        "mongo"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            history: true,
            cross_process: self.inner.mode == LiveMode::ChangeStream,
            reorder_window: self.inner.config.reorder_window,
        }
    }

    zps_core::offer_every_capability!();

    async fn publish(&self, event: NewEvent) -> zps_core::Result<PublishOutcome> {
        self.check_open()?;
        Ok(self.publish_one(event).await?)
    }

    fn batches_publishes(&self) -> bool {
        true
    }

    async fn publish_batch(&self, events: Vec<NewEvent>) -> zps_core::Result<Vec<PublishOutcome>> {
        self.check_open()?;
        let total = events.len();
        let mut groups: Vec<(Room, Vec<(usize, NewEvent)>)> = Vec::new();
        let mut index: HashMap<Room, usize> = HashMap::new();
        for (i, e) in events.into_iter().enumerate() {
            let g = *index.entry(e.room.clone()).or_insert_with(|| {
                groups.push((e.room.clone(), Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push((i, e));
        }
        let mut out: Vec<Option<PublishOutcome>> = (0..total).map(|_| None).collect();
        for (room, batch) in groups {
            for (i, o) in self.publish_room_batch(&room, batch).await? {
                out[i] = Some(o);
            }
        }
        out.into_iter()
            .map(|o| {
                o.ok_or_else(|| {
                    MongoError::Conflict {
                        room: String::new(),
                        detail: "a batched event got no outcome".into(),
                    }
                    .into()
                })
            })
            .collect()
    }

    async fn subscribe(&self, patterns: &[RoomPattern]) -> zps_core::Result<LiveStream> {
        self.check_open()?;
        let stream = self.inner.hub.subscribe(patterns);
        if self.inner.mode == LiveMode::InProcess && self.inner.config.poll_interval.is_some() {
            let rooms: Vec<Room> = patterns
                .iter()
                .filter_map(RoomPattern::as_room)
                .cloned()
                .collect();
            let untracked = self.inner.hub.untracked(&rooms);
            if !untracked.is_empty() {
                let heads = live::read_heads(&self.inner.c.counters, &untracked).await?;
                self.inner.hub.track(heads);
            }
        }
        Ok(stream)
    }

    async fn replay(&self, query: &ReplayQuery) -> zps_core::Result<ReplayPage> {
        self.check_open()?;
        Ok(self.replay_page(query).await?)
    }

    async fn room_info(&self, room: &Room) -> zps_core::Result<RoomInfo> {
        self.check_open()?;
        Ok(self.room_info_inner(room).await?)
    }

    async fn ack(&self, room: &Room, subscriber_id: &str, sequence: u64) -> zps_core::Result<u64> {
        self.check_open()?;
        Ok(self.ack_inner(room, subscriber_id, sequence).await?)
    }

    async fn cursor(&self, room: &Room, subscriber_id: &str) -> zps_core::Result<Option<u64>> {
        self.check_open()?;
        let d = self
            .inner
            .c
            .subscribers
            .find_one(cursor_filter(room, subscriber_id))
            .await
            .map_err(MongoError::from)?;
        Ok(d.and_then(|d| get_u64(&d, "sequence")))
    }

    async fn health(&self) -> TransportHealth {
        let mut h = TransportHealth::healthy("mongo");
        let inner = &self.inner;
        h.details.insert("database".into(), inner.db.name().into());
        h.details.insert("ownsClient".into(), inner.owned.into());
        let live = match inner.mode {
            LiveMode::ChangeStream => "change_streams",
            LiveMode::InProcess => "in_process",
        };
        h.details.insert("live".into(), live.into());
        h.details.insert(
            "crossProcess".into(),
            (inner.mode == LiveMode::ChangeStream).into(),
        );
        if inner.mode == LiveMode::InProcess {
            h.details.insert(
                "liveNote".into(),
                "no change streams (standalone server or disabled): live fan-out is in-process; \
                 other processes' events reach local subscribers of exact rooms by head polling"
                    .into(),
            );
            h.details.insert(
                "pollIntervalMs".into(),
                inner
                    .config
                    .poll_interval
                    .map_or(serde_json::Value::Null, |p| (p.as_millis() as u64).into()),
            );
        }
        if inner.closed.load(Ordering::Acquire) {
            h.fail("closed");
            return h;
        }
        if inner.mode == LiveMode::ChangeStream {
            let state = inner.hub.state();
            h.details
                .insert("changeStream".into(), format!("{state:?}").to_lowercase().into());
            if state == StreamState::Reconnecting {
                h.status = HealthStatus::Degraded;
            }
        }
        let ping =
            tokio::time::timeout(Duration::from_secs(5), inner.db.run_command(doc! { "ping": 1 })).await;
        match ping {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => h.fail(e.to_string()),
            Err(_) => h.fail("ping timed out after 5 s"),
        }
        h
    }

    async fn close(&self) -> zps_core::Result<()> {
        self.close_inner().await;
        Ok(())
    }
}

#[async_trait]
impl SnapshotStore for MongoTransport {
    async fn put_snapshot(&self, snapshot: Snapshot) -> zps_core::Result<()> {
        self.check_open()?;
        self.inner
            .c
            .snapshots
            .replace_one(
                doc! { "_id": snapshot.room.as_str() },
                docs::snapshot_document(&snapshot),
            )
            .upsert(true)
            .await
            .map_err(MongoError::from)?;
        Ok(())
    }

    async fn get_snapshot(&self, room: &Room) -> zps_core::Result<Option<Snapshot>> {
        self.check_open()?;
        let d = self
            .inner
            .c
            .snapshots
            .find_one(doc! { "_id": room.as_str() })
            .await
            .map_err(MongoError::from)?;
        Ok(d.map(|d| docs::decode_snapshot(&d).map_err(corrupt("snapshots")))
            .transpose()?)
    }
}

#[async_trait]
impl EphemeralBus for MongoTransport {
    async fn publish_ephemeral(&self, event: Arc<EphemeralEvent>) -> zps_core::Result<()> {
        self.check_open()?;
        let room = event.room.clone();
        self.inner.hub.ephemeral.send(&room, event);
        Ok(())
    }

    async fn subscribe_ephemeral(&self, patterns: &[RoomPattern]) -> zps_core::Result<EphemeralStream> {
        self.check_open()?;
        Ok(self.inner.hub.subscribe_ephemeral(patterns))
    }
}

#[async_trait]
impl Retention for MongoTransport {
    async fn prune_expired(&self) -> zps_core::Result<u64> {
        self.check_open()?;
        // The same delay as the TTL index: holes are judged by age, so expired events
        // (invisible to replays already) stay on disk for `purge_delay`.
        let cutoff = Timestamp::now().as_millis() - self.inner.policy.horizon_ms;
        let r = self
            .inner
            .c
            .events
            .delete_many(doc! { "expiresAt": { "$lt": date(Timestamp::from_millis(cutoff)) } })
            .await
            .map_err(MongoError::from)?;
        Ok(r.deleted_count)
    }
}
