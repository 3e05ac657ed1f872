//! [`MongoTransport`]: the [`Transport`] implementation over one MongoDB database.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

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

    /// Takes `count` consecutive sequences of `room`: returns the first and the time the
    /// sequence before it was allocated (ms).
    async fn allocate(&self, room: &Room, count: u64) -> MongoResult<(u64, i64)> {
        let sent = Timestamp::now().as_millis();
        let before = self
            .inner
            .c
            .counters
            .find_one_and_update(
                doc! { "_id": counter_key(room) },
                docs::allocation_update(count, sent),
            )
            .upsert(true)
            .return_document(ReturnDocument::Before)
            .await?;
        let prev_seq = before.as_ref().and_then(|d| get_u64(d, "seq")).unwrap_or(0);
        let prev_at = before.as_ref().and_then(|d| get_i64(d, "at")).unwrap_or(sent);
        Ok((prev_seq + 1, prev_at))
    }

    /// The counter: (head sequence, last allocation time ms, room epoch if reset).
    async fn read_counter(&self, room: &Room) -> MongoResult<(u64, Option<i64>, Option<String>)> {
        let d = self
            .inner
            .c
            .counters
            .find_one(doc! { "_id": counter_key(room) })
            .await?;
        Ok(match d {
            Some(d) => (
                get_u64(&d, "seq").unwrap_or(0),
                get_i64(&d, "at"),
                d.get_str("epoch").ok().map(str::to_owned),
            ),
            None => (0, None, None),
        })
    }

    async fn find_event(&self, key: &str) -> MongoResult<Option<Envelope>> {
        let Some(d) = self.inner.c.events.find_one(doc! { "_id": key }).await? else {
            return Ok(None);
        };
        decode_event(&d).map_err(|detail| MongoError::Corrupt {
            collection: "events",
            detail,
        })
    }

    /// Marks a consumed sequence as holding no event (best effort: readers claim it
    /// themselves after the grace if this fails).
    async fn write_skip(&self, room: &Room, sequence: u64, prev_at: i64) {
        let d = skip_document(room, sequence, prev_at, Timestamp::now());
        match self.inner.c.events.insert_one(d).await {
            Ok(_) => {
                tracing::debug!(%room, sequence, "sequence consumed by a duplicate publish; skip record written")
            }
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => tracing::warn!(%room, sequence, error = %e, "could not write a skip record"),
        }
    }

    /// Our insert hit the `{room, sequence}` index: a reader claimed the sequence (it
    /// waited past the grace) or the counter is behind the history (restored, deleted).
    async fn resolve_taken_sequence(&self, room: &Room, sequence: u64) -> MongoResult<()> {
        let events = &self.inner.c.events;
        let occupant = events
            .find_one(doc! { "room": room.as_str(), "sequence": int(sequence) })
            .await?;
        let is_event = occupant
            .as_ref()
            .is_some_and(|d| !d.get_bool("skip").unwrap_or(false));
        if is_event {
            let top = events
                .find_one(doc! { "room": room.as_str() })
                .sort(doc! { "sequence": -1 })
                .projection(doc! { "sequence": 1 })
                .await?
                .and_then(|d| get_u64(&d, "sequence"))
                .unwrap_or(sequence);
            tracing::warn!(%room, sequence, stored = top, "sequence counter was behind the stored history; raised it");
            self.inner
                .c
                .counters
                .update_one(
                    doc! { "_id": counter_key(room) },
                    docs::counter_repair_update(top),
                )
                .await?;
        } else {
            tracing::info!(%room, sequence, "a reader skipped this sequence while the publish was slow; taking a new one");
        }
        Ok(())
    }

    fn deliver(&self, e: &Arc<Envelope>) {
        if self.inner.mode == LiveMode::InProcess {
            self.inner.hub.deliver_local(e);
        }
    }

    async fn publish_one(&self, event: NewEvent) -> MongoResult<PublishOutcome> {
        let key = event_key(&event.room, &event.id);
        let waiting = {
            let mut map = self.inner.inflight.lock();
            match map.get(&key) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx);
                    Ok(tx)
                }
            }
        };
        let tx = match waiting {
            Ok(tx) => tx,
            Err(mut rx) => {
                // Another publish of this id is running here: its envelope is ours.
                if let Ok(stored) = rx.wait_for(Option::is_some).await
                    && let Some(e) = stored.clone()
                {
                    return Ok(duplicate_arc(e));
                }
                // It failed: publish normally (the id check below still applies).
                return self.publish_checked(event, &key).await;
            }
        };
        let _guard = InflightGuard {
            map: &self.inner.inflight,
            key: key.clone(),
        };
        let outcome = self.publish_checked(event, &key).await?;
        let _ = tx.send(Some(outcome.envelope.clone()));
        Ok(outcome)
    }

    async fn publish_checked(&self, event: NewEvent, key: &str) -> MongoResult<PublishOutcome> {
        // Check first: a repeated id must not consume a sequence.
        if let Some(stored) = self.find_event(key).await? {
            return Ok(duplicate(stored));
        }
        let room = event.room.clone();
        let mut envelope = event.into_envelope(0);
        let half_horizon = self.inner.config.purge_delay / 2;
        for _ in 0..MAX_PUBLISH_ATTEMPTS {
            let (sequence, prev_at) = self.allocate(&room, 1).await?;
            let allocated = Instant::now();
            envelope.sequence = sequence;
            let doc = docs::event_document(&envelope, prev_at);
            if allocated.elapsed() > half_horizon {
                // Far too late to insert safely (readers treat old holes as final).
                self.write_skip(&room, sequence, prev_at).await;
                continue;
            }
            match self.inner.c.events.insert_one(doc).await {
                Ok(_) => {
                    let envelope = Arc::new(envelope);
                    self.deliver(&envelope);
                    return Ok(PublishOutcome {
                        envelope,
                        duplicate: false,
                    });
                }
                Err(e) if is_duplicate_key(&e) => {
                    if let Some(stored) = self.find_event(key).await? {
                        // Lost a race with a concurrent publish of the same id (another process).
                        self.write_skip(&room, sequence, prev_at).await;
                        return Ok(duplicate(stored));
                    }
                    self.resolve_taken_sequence(&room, sequence).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(MongoError::Conflict {
            room: room.to_string(),
            detail: format!("every one of {MAX_PUBLISH_ATTEMPTS} allocated sequences was already taken"),
        })
    }

    /// One room's part of a batch: one duplicate check, one block allocation, one insert.
    async fn publish_room_batch(
        &self,
        room: &Room,
        batch: Vec<(usize, NewEvent)>,
    ) -> MongoResult<Vec<(usize, PublishOutcome)>> {
        let mut out = Vec::with_capacity(batch.len());
        let keys: Vec<String> = batch.iter().map(|(_, e)| event_key(room, &e.id)).collect();
        let mut stored: HashMap<String, Arc<Envelope>> = HashMap::new();
        let mut found = self
            .inner
            .c
            .events
            .find(doc! { "_id": { "$in": keys.clone() } })
            .await?;
        while let Some(d) = found.try_next().await? {
            if let Some(e) = decode_event(&d).map_err(|detail| MongoError::Corrupt {
                collection: "events",
                detail,
            })? {
                stored.insert(event_key(room, &e.id), Arc::new(e));
            }
        }
        // First occurrence of each new id is stored; repeats within the batch are duplicates of it.
        let mut fresh: Vec<(usize, NewEvent)> = Vec::new();
        let mut repeats: Vec<(usize, String)> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for ((i, e), key) in batch.into_iter().zip(keys) {
            if let Some(s) = stored.get(&key) {
                out.push((i, duplicate_arc(s.clone())));
            } else if !seen.insert(key.clone()) {
                repeats.push((i, key));
            } else {
                fresh.push((i, e));
            }
        }
        if !fresh.is_empty() {
            let (first, prev_at) = self.allocate(room, fresh.len() as u64).await?;
            let allocated_at = Timestamp::now().as_millis();
            let envelopes: Vec<(usize, Envelope)> = fresh
                .into_iter()
                .enumerate()
                .map(|(j, (i, e))| (i, e.into_envelope(first + j as u64)))
                .collect();
            let docs: Vec<Document> = envelopes
                .iter()
                .enumerate()
                .map(|(j, (_, e))| docs::event_document(e, if j == 0 { prev_at } else { allocated_at }))
                .collect();
            let failed: HashSet<usize> = match self.inner.c.events.insert_many(docs).ordered(false).await {
                Ok(_) => HashSet::new(),
                Err(e) => match e.kind.as_ref() {
                    mongodb::error::ErrorKind::InsertMany(m)
                        if m.write_concern_error.is_none()
                            && m.write_errors
                                .as_ref()
                                .is_some_and(|w| w.iter().all(|w| w.code == crate::error::DUPLICATE_KEY)) =>
                    {
                        m.write_errors.iter().flatten().map(|w| w.index).collect()
                    }
                    _ => return Err(e.into()),
                },
            };
            for (j, (i, envelope)) in envelopes.into_iter().enumerate() {
                if !failed.contains(&j) {
                    let envelope = Arc::new(envelope);
                    self.deliver(&envelope);
                    stored.insert(event_key(room, &envelope.id), envelope.clone());
                    out.push((
                        i,
                        PublishOutcome {
                            envelope,
                            duplicate: false,
                        },
                    ));
                    continue;
                }
                // A concurrent publish of the same id, or a taken sequence: settle it alone.
                let key = event_key(room, &envelope.id);
                let sequence = envelope.sequence;
                let slot_prev = if j == 0 { prev_at } else { allocated_at };
                if let Some(s) = self.find_event(&key).await? {
                    self.write_skip(room, sequence, slot_prev).await;
                    let s = Arc::new(s);
                    stored.insert(key, s.clone());
                    out.push((i, duplicate_arc(s)));
                } else {
                    self.resolve_taken_sequence(room, sequence).await?;
                    let outcome = self.publish_one(to_new_event(envelope)).await?;
                    stored.insert(key, outcome.envelope.clone());
                    out.push((i, outcome));
                }
            }
        }
        for (i, key) in repeats {
            if let Some(s) = stored.get(&key) {
                out.push((i, duplicate_arc(s.clone())));
            }
        }
        Ok(out)
    }

    /// Claims stale holes with skip records. True when another writer got to one of them
    /// first (maybe the late event itself): the caller must re-read.
    async fn claim_holes(&self, room: &Room, holes: &[(u64, i64)]) -> MongoResult<bool> {
        let now = Timestamp::now();
        let docs: Vec<Document> = holes
            .iter()
            .map(|&(seq, bound)| skip_document(room, seq, bound, now))
            .collect();
        tracing::warn!(
            %room,
            first = holes.first().map(|h| h.0),
            count = holes.len(),
            "sequences consumed without an event (crashed or stalled publisher); marking them skipped"
        );
        match self.inner.c.events.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(false),
            Err(e) if is_duplicate_key(&e) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    async fn replay_page(&self, q: &ReplayQuery) -> MongoResult<ReplayPage> {
        let inner = &self.inner;
        let limit = q.effective_limit();
        let from = q.from_sequence;
        let deadline = Instant::now() + inner.config.hole_grace * 2 + Duration::from_secs(5);
        let mut pause = Duration::from_millis(2);
        loop {
            let (head, last_alloc, _) = self.read_counter(&q.room).await?;
            let upper = q.to_sequence.map_or(head, |t| t.min(head));
            if upper <= from {
                return Ok(ReplayPage {
                    events: Vec::new(),
                    scanned_to: from,
                    exhausted: true,
                });
            }
            let window_end = upper.min(from.saturating_add(SCAN_WINDOW));
            let now = Timestamp::now();
            // With a type filter, count what is stored *before* reading the page: if the
            // range was complete then, the page read after it is authoritative.
            let complete_before = match &q.event_types {
                Some(_) => {
                    let present = inner
                        .c
                        .events
                        .count_documents(range_filter(&q.room, from, window_end))
                        .await?;
                    present >= window_end - from
                }
                None => false,
            };
            let found: Vec<Document> = inner
                .c
                .events
                .find(replay_filter(q, window_end, now))
                .sort(by_sequence())
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .await?
                .try_collect()
                .await?;
            let seqs: Vec<u64> = found.iter().filter_map(|d| get_u64(d, "sequence")).collect();
            let full = found.len() >= limit;
            let candidate = if full {
                seqs.last().copied().unwrap_or(window_end)
            } else {
                window_end
            };
            // Where a hole may start: without a type filter, the first sequence the page
            // skipped (an expired event or a hole); with one, anywhere unless the range was
            // complete before the page was read.
            let suspect = match &q.event_types {
                None => first_missing(from, candidate, &seqs),
                Some(_) if complete_before => None,
                Some(_) => Some(from + 1),
            };
            let mut scanned_to = candidate;
            if let Some(missing) = suspect {
                let lo = missing - 1;
                let stored: Vec<Document> = inner
                    .c
                    .events
                    .find(range_filter(&q.room, lo, candidate))
                    .projection(docs::slot_projection())
                    .sort(by_sequence())
                    .await?
                    .try_collect()
                    .await?;
                let slots: Vec<Slot> = stored
                    .iter()
                    .filter_map(|d| {
                        Some(Slot {
                            seq: get_u64(d, "sequence")?,
                            prev_at: get_i64(d, "prevAt"),
                        })
                    })
                    .collect();
                let tail_bound = self
                    .tail_bound(&q.room, &slots, candidate, head, last_alloc)
                    .await?;
                let scan = scan_holes(lo, candidate, &slots, tail_bound, now.as_millis(), inner.policy);
                if !scan.claim.is_empty() && self.claim_holes(&q.room, &scan.claim).await? {
                    continue;
                }
                if let Some((young, claimable_at)) = scan.young {
                    if young > from + 1 {
                        // Return what precedes the hole now; the next page waits for it.
                        scanned_to = young - 1;
                    } else {
                        if Instant::now() >= deadline {
                            return Err(MongoError::Unsettled {
                                room: q.room.to_string(),
                                sequence: young,
                            });
                        }
                        let until = u64::try_from(claimable_at - now.as_millis()).unwrap_or(1).max(1);
                        tokio::time::sleep(pause.min(Duration::from_millis(until))).await;
                        pause = (pause * 2).min(Duration::from_millis(50));
                        continue;
                    }
                }
                // An event the page should have returned but did not was stored while this
                // page was being read (it was a hole a moment ago): read the page again.
                let returned: HashSet<u64> = seqs.iter().copied().collect();
                let arrived = stored.iter().any(|d| {
                    get_u64(d, "sequence")
                        .is_some_and(|s| s > from && s <= scanned_to && !returned.contains(&s))
                        && !d.get_bool("skip").unwrap_or(false)
                        && d.get_str("type").is_ok_and(|t| q.accepts_type(t))
                        && docs::get_timestamp(d, "expiresAt").is_some_and(|t| t > now)
                });
                if arrived {
                    continue;
                }
            }
            let mut events = Vec::with_capacity(found.len());
            for d in &found {
                if get_u64(d, "sequence").is_some_and(|s| s > scanned_to) {
                    break;
                }
                match decode_event(d) {
                    Ok(Some(e)) if !e.is_expired_at(now) => events.push(Arc::new(e)),
                    Ok(_) => {}
                    Err(detail) => {
                        return Err(MongoError::Corrupt {
                            collection: "events",
                            detail,
                        });
                    }
                }
            }
            return Ok(ReplayPage {
                events,
                scanned_to,
                exhausted: scanned_to >= upper,
            });
        }
    }

    /// Bound on the allocation time of holes after the last stored slot of a range: the
    /// next stored document's `prevAt`, else the counter's last allocation.
    async fn tail_bound(
        &self,
        room: &Room,
        slots: &[Slot],
        candidate: u64,
        head: u64,
        last_alloc: Option<i64>,
    ) -> MongoResult<i64> {
        let fallback = last_alloc.unwrap_or_else(|| Timestamp::now().as_millis());
        if slots.last().is_some_and(|s| s.seq >= candidate) || candidate >= head {
            return Ok(fallback);
        }
        let next = self
            .inner
            .c
            .events
            .find_one(range_filter(room, candidate, head))
            .sort(by_sequence())
            .projection(docs::slot_projection())
            .await?;
        Ok(next.and_then(|d| get_i64(&d, "prevAt")).unwrap_or(fallback))
    }

    async fn room_info_inner(&self, room: &Room) -> MongoResult<RoomInfo> {
        let (head, last_alloc, room_epoch) = self.read_counter(room).await?;
        let epoch = match room_epoch {
            Some(e) => e,
            None => self.db_epoch().await?,
        };
        let now = Timestamp::now();
        let events = &self.inner.c.events;
        let (mut earliest, mut bound) = match self.first_unexpired(room, head, now).await? {
            Some((s, prev_at)) => (s, prev_at),
            None => (head + 1, last_alloc),
        };
        // Walk down over what is not lost history: skip records (consumed sequences that
        // never held an event) and holes allocated moments ago (an event may still land).
        for _ in 0..16 {
            if earliest <= 1 {
                break;
            }
            let below = events
                .find_one(doc! { "room": room.as_str(), "sequence": { "$gt": 0_i64, "$lt": int(earliest) } })
                .sort(doc! { "sequence": -1 })
                .projection(doc! { "_id": 0, "sequence": 1, "prevAt": 1, "skip": 1 })
                .await?;
            let below_seq = below.as_ref().and_then(|d| get_u64(d, "sequence")).unwrap_or(0);
            if below_seq + 1 < earliest {
                let young = bound.is_some_and(|b| now.as_millis() - b < self.inner.policy.grace_ms);
                if !young {
                    break;
                }
                earliest = below_seq + 1;
                continue;
            }
            match below {
                Some(d) if d.get_bool("skip").unwrap_or(false) => {
                    earliest = below_seq;
                    bound = get_i64(&d, "prevAt");
                }
                _ => break,
            }
        }
        Ok(RoomInfo {
            epoch,
            last_sequence: head,
            earliest_sequence: earliest,
        })
    }

    /// The first unexpired event of the room (sequence, `prevAt`), checked exactly.
    async fn first_unexpired(
        &self,
        room: &Room,
        head: u64,
        now: Timestamp,
    ) -> MongoResult<Option<(u64, Option<i64>)>> {
        let mut filter = docs::unexpired_filter(room, now);
        loop {
            let batch: Vec<Document> = self
                .inner
                .c
                .events
                .find(filter.clone())
                .sort(by_sequence())
                .projection(doc! { "_id": 0, "sequence": 1, "prevAt": 1, "expiresAt": 1 })
                .limit(32)
                .await?
                .try_collect()
                .await?;
            let mut last = None;
            for d in &batch {
                let Some(seq) = get_u64(d, "sequence") else {
                    continue;
                };
                if seq > head {
                    return Ok(None);
                }
                last = Some(seq);
                if docs::get_timestamp(d, "expiresAt").is_some_and(|t| t > now) {
                    return Ok(Some((seq, get_i64(d, "prevAt"))));
                }
            }
            match last {
                // A full batch expired within the current second: look further.
                Some(seq) if batch.len() == 32 => {
                    filter.insert("sequence", doc! { "$gt": int(seq) });
                }
                _ => return Ok(None),
            }
        }
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

/// The first sequence of `(from, to]` absent from `seqs` (sorted ascending), if any.
fn first_missing(from: u64, to: u64, seqs: &[u64]) -> Option<u64> {
    let mut expected = from + 1;
    for &s in seqs {
        if s > expected {
            return Some(expected);
        }
        expected = expected.max(s + 1);
    }
    (expected <= to).then_some(expected)
}

fn duplicate(stored: Envelope) -> PublishOutcome {
    duplicate_arc(Arc::new(stored))
}

fn duplicate_arc(envelope: Arc<Envelope>) -> PublishOutcome {
    PublishOutcome {
        envelope,
        duplicate: true,
    }
}

fn to_new_event(e: Envelope) -> NewEvent {
    NewEvent {
        id: e.id,
        event_type: e.event_type,
        room: e.room,
        emitted_at: e.emitted_at,
        expires_at: e.expires_at,
        payload: e.payload,
        metadata: e.metadata,
        encrypted: e.encrypted,
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

    async fn dlq_write(&self, room: &Room, entry: NewDlqEntry) -> zps_core::Result<DlqEntry> {
        self.check_open()?;
        let counter = self
            .inner
            .c
            .counters
            .find_one_and_update(
                doc! { "_id": dlq_counter_key(room) },
                doc! { "$inc": { "seq": 1_i64 } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await
            .map_err(MongoError::from)?;
        let entry_id = counter.and_then(|d| get_u64(&d, "seq")).unwrap_or(1);
        let stored = DlqEntry {
            entry_id,
            room: room.clone(),
            event: entry.event,
            error: entry.error,
            attempts: entry.attempts,
            subscriber_id: entry.subscriber_id,
            failed_at: entry.failed_at,
        };
        self.inner
            .c
            .dlq
            .insert_one(docs::dlq_document(&stored))
            .await
            .map_err(MongoError::from)?;
        Ok(stored)
    }

    async fn dlq_list(&self, room: &Room, after: u64, limit: usize) -> zps_core::Result<Vec<DlqEntry>> {
        self.check_open()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let found: Vec<Document> = self
            .inner
            .c
            .dlq
            .find(doc! { "room": room.as_str(), "entryId": { "$gt": int(after) } })
            .sort(doc! { "entryId": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(MongoError::from)?
            .try_collect()
            .await
            .map_err(MongoError::from)?;
        Ok(found
            .iter()
            .map(|d| docs::decode_dlq(d).map_err(corrupt("dlq")))
            .collect::<MongoResult<Vec<_>>>()?)
    }

    async fn dlq_remove(&self, room: &Room, entry_ids: &[u64]) -> zps_core::Result<u64> {
        self.check_open()?;
        if entry_ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Bson> = entry_ids.iter().map(|&i| int(i)).collect();
        let r = self
            .inner
            .c
            .dlq
            .delete_many(doc! { "room": room.as_str(), "entryId": { "$in": ids } })
            .await
            .map_err(MongoError::from)?;
        Ok(r.deleted_count)
    }

    async fn dlq_len(&self, room: &Room) -> zps_core::Result<u64> {
        self.check_open()?;
        Ok(self
            .inner
            .c
            .dlq
            .count_documents(doc! { "room": room.as_str() })
            .await
            .map_err(MongoError::from)?)
    }

    async fn dlq_rooms(
        &self,
        prefix: &str,
        after: Option<&Room>,
        limit: usize,
    ) -> zps_core::Result<Vec<DlqRoom>> {
        self.check_open()?;
        let filter = match after {
            Some(after) => doc! { "room": { "$gt": after.as_str() } },
            None => doc! {},
        };
        let names = self
            .inner
            .c
            .dlq
            .distinct("room", filter)
            .await
            .map_err(MongoError::from)?;
        let mut rooms: Vec<Room> = names
            .iter()
            .filter_map(Bson::as_str)
            .filter(|name| name.starts_with(prefix))
            .filter_map(|name| Room::parse(name).ok())
            .filter(|room| after.is_none_or(|a| room > a))
            .collect();
        rooms.sort_unstable();
        rooms.truncate(limit);
        let mut out = Vec::with_capacity(rooms.len());
        for room in rooms {
            let len = self
                .inner
                .c
                .dlq
                .count_documents(doc! { "room": room.as_str() })
                .await
                .map_err(MongoError::from)?;
            if len > 0 {
                out.push(DlqRoom { room, len });
            }
        }
        Ok(out)
    }

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

    async fn presence_enter(
        &self,
        room: &Room,
        member: PresenceMember,
        connection: &str,
        ttl: Duration,
    ) -> zps_core::Result<bool> {
        self.check_open()?;
        let live = self.presence_live(room, &member.user_id).await?;
        let joined = live.is_empty();
        let now = Timestamp::now();
        let expires = now.saturating_add(ttl);
        // Metadata belongs to the member: `None` keeps the newest one its live
        // connections hold; `Some` is written to all of them (the latest wins).
        let spread = member.metadata.as_ref().map(docs::map_to_document);
        let (metadata_at, member) = match &member.metadata {
            Some(_) => (Some(now), member),
            None => {
                let newest = live
                    .iter()
                    .filter_map(|d| match d.get("metadata") {
                        Some(Bson::Document(m)) => Some((docs::get_timestamp(d, "metadataAt"), m)),
                        _ => None,
                    })
                    .max_by_key(|(at, _)| *at);
                match newest {
                    Some((at, m)) => (
                        at,
                        PresenceMember {
                            metadata: Some(docs::document_to_map(m)),
                            ..member
                        },
                    ),
                    None => (None, member),
                }
            }
        };
        let mut document = docs::presence_document(room, &member, connection, expires);
        if let Some(at) = metadata_at {
            document.insert("metadataAt", date(at));
        }
        let user = doc! { "room": room.as_str(), "userId": member.user_id.as_str() };
        let mut filter = user.clone();
        filter.insert("connection", connection);
        let presence = &self.inner.c.presence;
        presence
            .replace_one(filter, document)
            .upsert(true)
            .await
            .map_err(MongoError::from)?;
        if let Some(metadata) = spread {
            presence
                .update_many(
                    user,
                    doc! { "$set": { "metadata": metadata, "metadataAt": date(now) } },
                )
                .await
                .map_err(MongoError::from)?;
        }
        Ok(joined)
    }

    async fn presence_leave(&self, room: &Room, user_id: &str, connection: &str) -> zps_core::Result<bool> {
        self.check_open()?;
        let r = self
            .inner
            .c
            .presence
            .delete_one(doc! { "room": room.as_str(), "userId": user_id, "connection": connection })
            .await
            .map_err(MongoError::from)?;
        if r.deleted_count == 0 {
            return Ok(false);
        }
        Ok(self.presence_live(room, user_id).await?.is_empty())
    }

    async fn presence_members(&self, room: &Room) -> zps_core::Result<Vec<PresenceMember>> {
        self.check_open()?;
        let now = Timestamp::now();
        let found: Vec<Document> = self
            .inner
            .c
            .presence
            .find(doc! { "room": room.as_str(), "expiresAt": docs::not_expired(now) })
            .await
            .map_err(MongoError::from)?
            .try_collect()
            .await
            .map_err(MongoError::from)?;
        // Several connections of one user are one member: the latest heartbeat,
        // and the metadata set last (older documents: by their heartbeat).
        let mut members: HashMap<String, (PresenceMember, Option<Timestamp>)> = HashMap::new();
        for d in &found {
            if docs::get_timestamp(d, "expiresAt").is_none_or(|t| t <= now) {
                continue;
            }
            let m = docs::decode_member(d).map_err(corrupt("presence"))?;
            let set_at = m
                .metadata
                .is_some()
                .then(|| docs::get_timestamp(d, "metadataAt").unwrap_or(m.last_seen_at));
            match members.get_mut(&m.user_id) {
                Some((existing, existing_at)) => {
                    existing.last_seen_at = existing.last_seen_at.max(m.last_seen_at);
                    if set_at > *existing_at {
                        existing.metadata = m.metadata;
                        *existing_at = set_at;
                    }
                }
                None => {
                    members.insert(m.user_id.clone(), (m, set_at));
                }
            }
        }
        let mut members: Vec<PresenceMember> = members.into_values().map(|(m, _)| m).collect();
        members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(members)
    }

    async fn presence_sweep(&self) -> zps_core::Result<Vec<(Room, String)>> {
        self.check_open()?;
        let presence = &self.inner.c.presence;
        let at = Timestamp::now();
        let now = date(at);
        let expired: Vec<Document> = presence
            .find(doc! { "expiresAt": { "$lte": now.clone() } })
            .projection(doc! { "_id": 1, "room": 1, "userId": 1, "expiresAt": 1 })
            .limit(10_000)
            .await
            .map_err(MongoError::from)?
            .try_collect()
            .await
            .map_err(MongoError::from)?;
        // Exact check (some servers compare dates to the second).
        let expired: Vec<Document> = expired
            .into_iter()
            .filter(|d| docs::get_timestamp(d, "expiresAt").is_some_and(|t| t <= at))
            .collect();
        if expired.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Bson> = expired.iter().filter_map(|d| d.get("_id").cloned()).collect();
        presence
            .delete_many(doc! { "_id": { "$in": ids }, "expiresAt": { "$lte": now } })
            .await
            .map_err(MongoError::from)?;
        let mut users: Vec<(String, String)> = expired
            .iter()
            .filter_map(|d| {
                Some((
                    d.get_str("room").ok()?.to_owned(),
                    d.get_str("userId").ok()?.to_owned(),
                ))
            })
            .collect();
        users.sort();
        users.dedup();
        let mut left = Vec::new();
        for (room, user) in users {
            let Ok(room) = Room::parse(&room) else { continue };
            if self.presence_live(&room, &user).await?.is_empty() {
                left.push((room, user));
            }
        }
        Ok(left)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_missing_finds_the_first_absent_sequence() {
        assert_eq!(first_missing(0, 3, &[1, 2, 3]), None);
        assert_eq!(first_missing(0, 3, &[1, 3]), Some(2));
        assert_eq!(first_missing(0, 3, &[2, 3]), Some(1));
        assert_eq!(first_missing(0, 3, &[1, 2]), Some(3));
        assert_eq!(first_missing(5, 8, &[]), Some(6));
        assert_eq!(first_missing(5, 5, &[]), None);
    }
}
