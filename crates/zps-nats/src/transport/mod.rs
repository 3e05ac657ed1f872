//! [`NatsTransport`]: the [`Transport`] implementation over NATS JetStream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use zps_core::fanout::LocalFanout;
use zps_core::transport::LiveStream;
use zps_core::{
    Capabilities, Envelope, HealthStatus, NewEvent, PublishOutcome, ReplayPage, ReplayQuery, Room, RoomInfo,
    RoomPattern, Transport, TransportHealth,
};

use crate::config::NatsConfig;
use crate::error::{NatsError, NatsResult};
use crate::subject::Subjects;

mod batch;
mod dead_letters;
mod ephemeral;
mod ids;
mod live;
mod presence;
mod read;
mod records;
mod retention;
mod state;
mod write;

/// Where a room's newest event sits: its room sequence and its stream position.
#[derive(Debug, Clone, Copy, Default)]
struct Head {
    room_seq: u64,
    stream_seq: u64,
}

/// Rooms whose head this process remembers before it forgets idle ones.
const MAX_CACHED_HEADS: usize = 100_000;

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    events: stream::Stream,
    dead_letters: stream::Stream,
    presence: stream::Stream,
    /// Cursors and snapshots: one record per subject.
    state: stream::Stream,
    /// The durable id index: one record per event id, kept for `id_retention`.
    ids: stream::Stream,
    subjects: Subjects,
    config: NatsConfig,
    /// The events stream's creation time: a recreated stream is a new history.
    epoch: String,
    /// Per room: a lock that orders this process's publishes, and the head it last saw.
    heads: Mutex<HashMap<Room, Arc<tokio::sync::Mutex<Option<Head>>>>>,
    live: LocalFanout<Arc<Envelope>>,
    live_task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    /// Publishes that lost the race for a sequence to another publisher.
    conflicts: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.live_task.get_mut().take() {
            task.abort();
        }
    }
}

/// Events, cursors and the rest in NATS JetStream; cheap to clone (shared state).
///
/// ```no_run
/// use std::sync::Arc;
/// use zps_core::Realtime;
/// use zps_nats::{NatsConfig, NatsTransport};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let transport = NatsTransport::connect("nats://127.0.0.1:4222", NatsConfig::default()).await?;
/// let realtime = Realtime::new(Arc::new(transport));
/// // ... publish / subscribe ...
/// realtime.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("prefix", &self.inner.config.prefix)
            .field("replicas", &self.inner.config.replicas)
            .field("epoch", &self.inner.epoch)
            .finish()
    }
}

/// The servers of a URL list, without credentials, for messages and logs.
fn redact(urls: &str) -> String {
    urls.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => format!("{}{}", &u[..scheme + 3], &u[at + 1..]),
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl NatsTransport {
    /// Connects to `urls` (`nats://host:port`, comma-separated for several
    /// servers of one cluster) and creates the streams and buckets it needs.
    pub async fn connect(urls: &str, config: NatsConfig) -> Result<Self, NatsError> {
        config.validate()?;
        let target = redact(urls);
        let options = async_nats::ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .retry_on_initial_connect()
            .name("zero-pub-sub");
        let servers = urls
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NatsError::InvalidConfig(format!("connection URL {target}: {e}")))?;
        let connecting = options.connect(servers);
        let client = match tokio::time::timeout(config.connect_timeout, connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(source)) => return Err(NatsError::Connect { target, source }),
            Err(_) => {
                return Err(NatsError::Request {
                    op: "connect",
                    message: format!(
                        "no server at {target} answered within {:?}",
                        config.connect_timeout
                    ),
                    unavailable: true,
                });
            }
        };
        Self::with_client(client, config).await
    }

    /// Uses an existing client (its own options, credentials, TLS).
    pub async fn with_client(client: async_nats::Client, config: NatsConfig) -> Result<Self, NatsError> {
        config.validate()?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        let subjects = Subjects::new(&config.prefix);
        let storage = if config.file_storage {
            stream::StorageType::File
        } else {
            stream::StorageType::Memory
        };
        let events = ensure_stream(
            &js,
            stream::Config {
                name: config.events_stream(),
                subjects: vec![subjects.all_events(), subjects.epoch()],
                storage,
                num_replicas: config.replicas,
                duplicate_window: config.duplicate_window,
                max_age: config.max_age.unwrap_or_default(),
                ..Default::default()
            },
        )
        .await?;
        let epoch = read_or_create_epoch(&js, &events, &subjects.epoch()).await?;
        let dead_letters = ensure_stream(
            &js,
            stream::Config {
                name: config.dead_letter_stream(),
                subjects: vec![subjects.all_dead_letters()],
                storage,
                num_replicas: config.replicas,
                ..Default::default()
            },
        )
        .await?;
        let presence = ensure_stream(
            &js,
            stream::Config {
                name: config.presence_stream(),
                subjects: vec![subjects.all_presence()],
                storage: stream::StorageType::Memory,
                num_replicas: config.replicas,
                max_messages_per_subject: 1,
                ..Default::default()
            },
        )
        .await?;
        let record_stream =
            |name: String, subjects: Vec<String>, max_age: Option<std::time::Duration>| stream::Config {
                name,
                subjects,
                storage,
                num_replicas: config.replicas,
                max_messages_per_subject: 1,
                max_age: max_age.unwrap_or_default(),
                ..Default::default()
            };
        let state = ensure_stream(
            &js,
            record_stream(config.state_stream(), subjects.all_state(), None),
        )
        .await?;
        let ids = ensure_stream(
            &js,
            record_stream(config.id_stream(), vec![subjects.all_ids()], config.id_retention),
        )
        .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                js,
                events,
                dead_letters,
                presence,
                state,
                ids,
                subjects,
                config,
                epoch,
                heads: Mutex::new(HashMap::new()),
                live: LocalFanout::new(zps_core::fanout::DEFAULT_CHANNEL_CAPACITY),
                live_task: tokio::sync::Mutex::new(None),
                closed: AtomicBool::new(false),
                conflicts: AtomicU64::new(0),
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// The client, for callers that also use NATS directly.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Publishes that had to re-read a room's head because another publisher
    /// took the sequence first: the cost of optimistic sequencing.
    pub fn sequence_conflicts(&self) -> u64 {
        self.inner.conflicts.load(Ordering::Relaxed)
    }

    fn check_open(&self) -> zps_core::Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(zps_core::Error::Closed)
        } else {
            Ok(())
        }
    }

    /// The lock and cached head of a room.
    fn head_slot(&self, room: &Room) -> Arc<tokio::sync::Mutex<Option<Head>>> {
        let mut heads = self.inner.heads.lock();
        if heads.len() >= MAX_CACHED_HEADS && !heads.contains_key(room) {
            // Forget heads nobody is publishing to right now; they are re-read on demand.
            heads.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        heads.entry(room.clone()).or_default().clone()
    }
}

fn setup_error(what: &str, e: impl std::fmt::Display) -> NatsError {
    NatsError::Setup {
        what: what.to_owned(),
        message: e.to_string(),
    }
}

/// The history's epoch: a marker message in the events stream, written by the
/// first gateway to find none. Deleting, recreating or purging the stream
/// removes it, so the next gateway writes a new one: a new epoch.
async fn read_or_create_epoch(
    js: &jetstream::Context,
    events: &stream::Stream,
    subject: &str,
) -> NatsResult<String> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    for _ in 0..8 {
        match events.get_last_raw_message_by_subject(subject).await {
            Ok(msg) => {
                return String::from_utf8(msg.payload.to_vec())
                    .map_err(|_| NatsError::Decode("the epoch marker is not UTF-8".into()));
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(NatsError::request("epoch read", e, true)),
        }
        let epoch = format!("nats-{}", uuid::Uuid::new_v4().simple());
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(epoch.clone().into())
            .expected_last_subject_sequence(0);
        let ack = match js.send_publish(subject.to_owned(), message).await {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(_) => return Ok(epoch),
            // Another gateway wrote it first: read theirs.
            Err(e) if e.kind() == async_nats::jetstream::context::PublishErrorKind::WrongLastSequence => {}
            Err(e) => return Err(NatsError::request("epoch write", e, true)),
        }
    }
    Err(NatsError::Setup {
        what: subject.to_owned(),
        message: "the epoch marker kept changing".into(),
    })
}

async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> NatsResult<stream::Stream> {
    let name = config.name.clone();
    js.get_or_create_stream(config)
        .await
        .map_err(|e| setup_error(&name, e))
}

/// Deletes every stream and bucket of `prefix` (tests and `reset` tooling).
pub async fn delete_prefix(client: &async_nats::Client, prefix: &str) -> Result<(), NatsError> {
    let config = NatsConfig::default().with_prefix(prefix);
    config.validate()?;
    let js = jetstream::new(client.clone());
    for name in config.all_streams() {
        if let Err(e) = js.delete_stream(&name).await {
            let text = e.to_string();
            if !text.contains("not found") {
                return Err(NatsError::request("delete stream", text, false));
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Transport for NatsTransport {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: self.inner.config.file_storage,
            history: true,
            cross_process: true,
            // The live consumer delivers in stream order, which is sequence order per room.
            reorder_window: std::time::Duration::ZERO,
        }
    }

    zps_core::offer_every_capability!();

    async fn publish(&self, event: NewEvent) -> zps_core::Result<PublishOutcome> {
        self.check_open()?;
        Ok(self.store(event).await?)
    }

    fn batches_publishes(&self) -> bool {
        true
    }

    async fn publish_batch(&self, events: Vec<NewEvent>) -> zps_core::Result<Vec<PublishOutcome>> {
        self.check_open()?;
        Ok(self.store_batch(events).await?)
    }

    async fn subscribe(&self, patterns: &[RoomPattern]) -> zps_core::Result<LiveStream> {
        self.check_open()?;
        let stream = self.inner.live.live_signals(patterns);
        self.ensure_live().await?;
        Ok(stream)
    }

    async fn replay(&self, query: &ReplayQuery) -> zps_core::Result<ReplayPage> {
        self.check_open()?;
        Ok(self.read_page(query).await?)
    }

    async fn room_info(&self, room: &Room) -> zps_core::Result<RoomInfo> {
        self.check_open()?;
        Ok(self.read_room_info(room).await?)
    }

    async fn ack(&self, room: &Room, subscriber_id: &str, sequence: u64) -> zps_core::Result<u64> {
        self.check_open()?;
        Ok(self.advance_cursor(room, subscriber_id, sequence).await?)
    }

    async fn cursor(&self, room: &Room, subscriber_id: &str) -> zps_core::Result<Option<u64>> {
        self.check_open()?;
        Ok(self.read_cursor(room, subscriber_id).await?)
    }

    async fn health(&self) -> TransportHealth {
        let mut health = TransportHealth::healthy("nats");
        let state = self.inner.client.connection_state();
        health
            .details
            .insert("connection".into(), format!("{state}").into());
        health
            .details
            .insert("prefix".into(), self.inner.config.prefix.clone().into());
        health
            .details
            .insert("replicas".into(), self.inner.config.replicas.into());
        health
            .details
            .insert("sequenceConflicts".into(), self.sequence_conflicts().into());
        if self.inner.closed.load(Ordering::Acquire) {
            health.fail("closed");
            return health;
        }
        match self.inner.events.get_info().await {
            Ok(info) => {
                health
                    .details
                    .insert("storedEvents".into(), info.state.messages.into());
            }
            Err(e) => {
                health.fail(format!("events stream: {e}"));
                return health;
            }
        }
        let marker = self
            .last_record(&self.inner.events, &self.inner.subjects.epoch(), "epoch read")
            .await;
        match marker {
            Ok(Some(msg)) if msg.payload == self.inner.epoch.as_bytes() => {}
            Ok(_) => {
                health.status = HealthStatus::Unhealthy;
                health.details.insert(
                    "error".into(),
                    "the events stream was purged or recreated: a new epoch; restart this gateway to serve it".into(),
                );
            }
            Err(e) => health.fail(format!("epoch marker: {e}")),
        }
        health
    }

    async fn close(&self) -> zps_core::Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(task) = self.inner.live_task.lock().await.take() {
            task.abort();
        }
        self.inner.live.close();
        // Sends what is buffered; the connection closes when the last clone drops.
        let _ = self.inner.client.flush().await;
        Ok(())
    }
}
