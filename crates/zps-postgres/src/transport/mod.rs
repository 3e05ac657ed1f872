//! [`PostgresTransport`]: the `Transport` implementation over a `PgPool` plus one
//! dedicated LISTEN connection.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use zps_core::transport::{DeadLetterStore, EphemeralBus, PresenceStore, Retention, SnapshotStore};

use async_trait::async_trait;
use futures::StreamExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool, Row};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::BroadcastStream;
use zps_core::fanout::FanoutItem;
use zps_core::transport::{EphemeralStream, LiveStream};
use zps_core::{
    Capabilities, DlqEntry, DlqRoom, Envelope, EphemeralEvent, Error, HealthStatus, LiveSignal, NewDlqEntry,
    NewEvent, PresenceMember, PublishOutcome, ReplayPage, ReplayQuery, Room, RoomInfo, RoomPattern, Snapshot,
    Timestamp, Transport, TransportHealth,
};

use crate::config::{Names, PostgresConfig};
use crate::error::{PgResult, PostgresError};
use crate::listener::{
    Incoming, ListenerSpec, QUEUE_CAPACITY, Shared, note_prefix, run_processor, run_reader,
};
use crate::migrate::{check_schema, migrate};
use crate::publish::{Core, NOTIFY_PAYLOAD_LIMIT, Pending, closed, run_publisher};
use crate::rows::{corrupt, event_from_row, metadata_from, metadata_text, payload_from, to_i64, to_u64};
use crate::sql::Queries;
use crate::stats::StatsBootstrap;

mod connect;
mod dead_letters;
mod presence;

use connect::{describe, listener_pool, parse_url, pool_options, probe};

const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Group-commit workers: one statement in flight while the next batch accumulates.
/// More workers split the queue into smaller batches that then queue on PostgreSQL's
/// NOTIFY commit lock anyway (measured: 2 beats 1 and 4).
const PUBLISH_WORKERS: usize = 2;

/// PostgreSQL storage with LISTEN/NOTIFY fan-out; cheap to clone (shared state).
///
/// ```no_run
/// use zps_core::{PublishRequest, Realtime, room};
/// use zps_postgres::{PostgresConfig, PostgresTransport};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let transport = PostgresTransport::connect("postgres://postgres@127.0.0.1/app", PostgresConfig::default()).await?;
/// let realtime = Realtime::new(std::sync::Arc::new(transport));
/// let e = realtime
///     .publish(PublishRequest::new(room("chat", "1")?, "message.created", &serde_json::json!({"text": "hi"}))?)
///     .await?;
/// println!("stored #{}", e.sequence);
/// realtime.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresTransport {
    inner: Arc<Inner>,
}

struct Inner {
    core: Arc<Core>,
    owns_pool: bool,
    listener_pool: PgPool,
    owns_listener_pool: bool,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Queue of the group-commit workers; `None` once closed.
    publisher: Mutex<Option<mpsc::Sender<Pending>>>,
    closed: AtomicBool,
}

impl std::ops::Deref for Inner {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

/// Opens a pool for `url` after checking the database answers, with the same clear
/// errors as [`PostgresTransport::connect`]; for `migrate` / `prune_expired` tooling.
pub async fn connect_pool(url: &str, config: &PostgresConfig) -> Result<PgPool, PostgresError> {
    config.validate()?;
    let options = parse_url(url, config)?;
    probe(&options, config.connect_timeout).await?;
    Ok(pool_options(config).connect_lazy_with(options))
}

/// Deletes expired events with the prune function of `config`'s schema; returns how many.
pub async fn prune_expired(pool: &PgPool, config: &PostgresConfig) -> Result<u64, PostgresError> {
    let names = Names::new(config)?;
    let removed: i64 = sqlx::query_scalar(&format!("SELECT {}()", names.prune_function))
        .fetch_one(pool)
        .await?;
    Ok(to_u64(removed))
}

impl PostgresTransport {
    /// Connects to `url`, creating and owning a pool and a LISTEN connection (both closed
    /// by `close()`); migrates or checks the schema per `config.auto_migrate`.
    pub async fn connect(url: &str, config: PostgresConfig) -> Result<Self, PostgresError> {
        let names = Names::new(&config)?;
        let options = parse_url(url, &config)?;
        probe(&options, config.connect_timeout).await?;
        let pool = pool_options(&config).connect_lazy_with(options.clone());
        let listener_pool = listener_pool(&options, &config);
        Self::start(pool, true, listener_pool, true, config, names).await
    }

    /// Uses an application's pool (left open on `close()`); the LISTEN connection is
    /// opened from the pool's connect options and owned by the transport.
    pub async fn from_pool(pool: PgPool, config: PostgresConfig) -> Result<Self, PostgresError> {
        let names = Names::new(&config)?;
        let options = (*pool.connect_options()).clone();
        let listener_pool = listener_pool(&options, &config);
        Self::start(pool, false, listener_pool, true, config, names).await
    }

    /// Uses an application's pool for queries and takes the LISTEN connection from
    /// `listener_pool` (it holds one connection permanently); both are left open on `close()`.
    pub async fn from_pools(
        pool: PgPool,
        listener_pool: PgPool,
        config: PostgresConfig,
    ) -> Result<Self, PostgresError> {
        let names = Names::new(&config)?;
        Self::start(pool, false, listener_pool, false, config, names).await
    }

    async fn start(
        pool: PgPool,
        owns_pool: bool,
        listener_pool: PgPool,
        owns_listener_pool: bool,
        config: PostgresConfig,
        names: Names,
    ) -> PgResult<Self> {
        let started = Self::start_inner(
            pool.clone(),
            owns_pool,
            listener_pool.clone(),
            owns_listener_pool,
            config,
            names,
        )
        .await;
        if started.is_err() {
            if owns_listener_pool {
                listener_pool.close().await;
            }
            if owns_pool {
                pool.close().await;
            }
        }
        started
    }

    async fn start_inner(
        pool: PgPool,
        owns_pool: bool,
        listener_pool: PgPool,
        owns_listener_pool: bool,
        config: PostgresConfig,
        names: Names,
    ) -> PgResult<Self> {
        let target = describe(&pool.connect_options());
        let unreachable = |e: PostgresError| match e {
            PostgresError::Database(source @ (sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)) => {
                PostgresError::Unreachable {
                    target: target.clone(),
                    source,
                }
            }
            other => other,
        };
        if config.auto_migrate_enabled() {
            migrate(&pool, &config).await.map_err(unreachable)?;
        } else {
            check_schema(&pool, &config, &names).await.map_err(unreachable)?;
        }
        let q = Queries::new(&names, &config.events_table);
        // A schema created by hand may lack the database epoch row; add it once.
        let epoch: Option<String> = sqlx::query_scalar(&q.read_epoch).fetch_optional(&pool).await?;
        if epoch.is_none() {
            sqlx::query(&q.init_epoch)
                .bind(uuid::Uuid::new_v4().simple().to_string())
                .execute(&pool)
                .await?;
        }

        let shared = Arc::new(Shared::new(config.channel_capacity, names.tag.clone()));
        let spec = ListenerSpec {
            pool: listener_pool.clone(),
            channels: [config.notify_channel.clone(), config.ephemeral_channel.clone()],
        };
        let listener_target = describe(&listener_pool.connect_options());
        let (listener, pid) = match tokio::time::timeout(config.connect_timeout, spec.open()).await {
            Err(_) => {
                return Err(PostgresError::ConnectTimeout {
                    target: listener_target,
                    timeout_ms: config.connect_timeout.as_millis(),
                });
            }
            Ok(Err(source)) => {
                return Err(PostgresError::Unreachable {
                    target: listener_target,
                    source,
                });
            }
            Ok(Ok(opened)) => opened,
        };
        shared.backend_pid.store(pid, Ordering::Release);
        shared.connected.store(true, Ordering::Release);

        let (shutdown, shutdown_rx) = watch::channel(false);
        let (tx, rx) = mpsc::channel::<Incoming>(QUEUE_CAPACITY);
        let reader = tokio::spawn(run_reader(spec, listener, shared.clone(), tx, shutdown_rx));
        let processor = tokio::spawn(run_processor(
            rx,
            shared.clone(),
            pool.clone(),
            Arc::from(q.fetch_event.as_str()),
            config.notify_channel.clone(),
        ));
        let tag = names.tag.clone();
        let batch_max = config.publish_batch_max;
        let workers = PUBLISH_WORKERS;
        let core = Arc::new(Core {
            q,
            pool,
            event_prefix: note_prefix('E', &tag),
            fetch_prefix: note_prefix('R', &tag),
            reset_prefix: note_prefix('X', &tag),
            stats: Arc::new(StatsBootstrap::new(
                &names.events,
                &names.counters,
                names
                    .plain
                    .iter()
                    .find(|(role, _)| *role == "events")
                    .map_or(names.events.as_str(), |(_, t)| t.as_str()),
            )),
            config,
        });
        let mut tasks = vec![reader, processor];
        let publisher = if batch_max > 1 {
            let (queue, rx) = mpsc::channel::<Pending>(batch_max * workers * 4);
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            for _ in 0..workers {
                tasks.push(tokio::spawn(run_publisher(core.clone(), rx.clone(), batch_max)));
            }
            Some(queue)
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(Inner {
                core,
                owns_pool,
                listener_pool,
                owns_listener_pool,
                shared,
                shutdown,
                tasks: Mutex::new(tasks),
                publisher: Mutex::new(publisher),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The query pool (for tooling and diagnostics).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The configuration in force.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// Server process id of the LISTEN connection (`None` while reconnecting), to find it
    /// in `pg_stat_activity`.
    pub fn listener_backend_pid(&self) -> Option<i32> {
        match self.inner.shared.backend_pid.load(Ordering::Acquire) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Whether the LISTEN connection is currently up.
    pub fn listener_connected(&self) -> bool {
        self.inner.shared.connected.load(Ordering::Acquire)
    }

    /// Deletes a room's history, ack cursors and snapshot, restarts its sequence at 1
    /// and gives it a new random epoch (returned), so resuming clients are told
    /// `stream_reset` and live subscribers get `LiveSignal::Reset`.
    pub async fn reset_room(&self, room: &Room) -> Result<String, PostgresError> {
        // Boxed with an explicit `Send` bound (see `migrate`).
        let fut: BoxFuture<'_, PgResult<String>> = Box::pin(self.reset_room_in_transaction(room));
        fut.await
    }

    async fn reset_room_in_transaction(&self, room: &Room) -> PgResult<String> {
        self.check_open()?;
        let q = &self.inner.q;
        let epoch = uuid::Uuid::new_v4().simple().to_string();
        let mut tx = self.inner.pool.begin().await?;
        // The counter row lock first: publishers of this room wait until we commit.
        sqlx::query(&q.reset_counter)
            .bind(room.as_str())
            .bind(&epoch)
            .execute(&mut *tx)
            .await?;
        for sql in [&q.reset_events, &q.reset_cursors, &q.reset_snapshot] {
            sqlx::query(sql).bind(room.as_str()).execute(&mut *tx).await?;
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.inner.config.notify_channel)
            .bind(format!("{}{epoch}\n{room}", self.inner.reset_prefix))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(room = %room, %epoch, "room history reset");
        Ok(epoch)
    }

    fn check_open(&self) -> PgResult<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(PostgresError::Closed)
        } else {
            Ok(())
        }
    }

    async fn publish_inner(&self, event: NewEvent) -> PgResult<PublishOutcome> {
        self.check_open()?;
        let draft = self.inner.draft(event);
        let queue = self.inner.publisher.lock().clone();
        let outcome = match queue {
            None => self.inner.publish_one(draft).await?,
            Some(queue) => {
                let (pending, answer) = Pending::new(draft);
                queue.send(pending).await.map_err(closed)?;
                answer.await.map_err(closed)??
            }
        };
        if !outcome.duplicate {
            self.inner.stats.published(1, &self.inner.pool);
        }
        Ok(outcome)
    }

    async fn replay_inner(&self, query: &ReplayQuery) -> PgResult<ReplayPage> {
        self.check_open()?;
        let limit = query.effective_limit();
        // Planned per call (not a cached generic plan): with its parameters unknown, a
        // plan cached while the table was small reads every later event and sorts them.
        let rows = sqlx::query(&self.inner.q.replay)
            .persistent(false)
            .bind(query.room.as_str())
            .bind(to_i64(query.from_sequence))
            .bind(query.to_sequence.map_or(i64::MAX, to_i64))
            .bind(query.event_types.as_deref())
            .bind(to_i64(limit as u64 + 1))
            .fetch_all(&self.inner.pool)
            .await?;
        let head = match rows.first() {
            Some(row) => to_u64(row.try_get::<i64, _>("head")?),
            None => 0,
        };
        let mut events = Vec::with_capacity(rows.len().min(limit));
        for row in &rows {
            if let Some(e) = event_from_row(row, &query.room)? {
                events.push(Arc::new(e));
            }
        }
        if events.len() > limit {
            // A full page: everything up to its last event is final, more may follow.
            events.truncate(limit);
            let scanned_to = events.last().map_or(query.from_sequence, |e| e.sequence);
            return Ok(ReplayPage {
                events,
                scanned_to,
                exhausted: false,
            });
        }
        // A short page saw everything up to the head read in the same snapshot.
        let upper = query.to_sequence.unwrap_or(u64::MAX);
        let last = events.last().map_or(query.from_sequence, |e| e.sequence);
        Ok(ReplayPage {
            scanned_to: last.max(head.min(upper)).max(query.from_sequence),
            events,
            exhausted: true,
        })
    }

    async fn room_info_inner(&self, room: &Room) -> PgResult<RoomInfo> {
        self.check_open()?;
        let row = sqlx::query(&self.inner.q.room_info)
            .bind(room.as_str())
            .fetch_one(&self.inner.pool)
            .await?;
        let epoch: Option<String> = row.try_get("epoch")?;
        let last = to_u64(row.try_get::<i64, _>("last_sequence")?);
        let earliest: Option<i64> = row.try_get("earliest")?;
        Ok(RoomInfo {
            epoch: epoch.ok_or_else(|| corrupt("meta", "the database epoch row is missing"))?,
            last_sequence: last,
            earliest_sequence: earliest.map_or(last + 1, to_u64),
        })
    }

    async fn close_inner(&self) {
        let inner = &*self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Read before shutdown: the reader clears it when it stops.
        let listener_pid = inner.shared.backend_pid.load(Ordering::Acquire);
        // Mark our listener pool closed *before* the reader drops its listener: sqlx hands
        // the connection back on a task of its own, and a connection handed back to a pool
        // that is not yet closed can land in the idle queue after `close()` swept it, where
        // it would stay open until the process exits.
        let listener_pool_closed = inner.owns_listener_pool.then(|| inner.listener_pool.close());
        let _ = inner.shutdown.send(true);
        // Publishes already queued are still written; the workers end once drained.
        inner.publisher.lock().take();
        let tasks: Vec<_> = std::mem::take(&mut *inner.tasks.lock());
        for task in tasks {
            if tokio::time::timeout(CLOSE_TIMEOUT, task).await.is_err() {
                tracing::warn!("listener task did not stop in time");
            }
        }
        inner.shared.live.close();
        inner.shared.ephemeral.close();
        inner.shared.resync.lock().take();
        let listener_pool_stalled = match listener_pool_closed {
            Some(closed) => tokio::time::timeout(CLOSE_TIMEOUT, closed).await.is_err(),
            None => false,
        };
        if listener_pool_stalled {
            // sqlx un-listens a dropped listener on a task of its own before handing the
            // connection back; if that stalls, the connection would linger until the
            // process exits. End it from the server side instead.
            tracing::warn!(
                pid = listener_pid,
                "LISTEN connection did not close in time; terminating it"
            );
            if listener_pid != 0 {
                let terminate = sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(listener_pid)
                    .execute(&inner.pool);
                if !matches!(tokio::time::timeout(CLOSE_TIMEOUT, terminate).await, Ok(Ok(_))) {
                    tracing::warn!(pid = listener_pid, "could not terminate the LISTEN connection");
                }
            }
        }
        if inner.owns_pool
            && tokio::time::timeout(CLOSE_TIMEOUT, inner.pool.close())
                .await
                .is_err()
        {
            tracing::warn!("pooled connections did not close in time");
        }
    }
}

#[async_trait]
impl Transport for PostgresTransport {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            history: true,
            cross_process: true,
            reorder_window: Duration::ZERO,
        }
    }

    zps_core::offer_every_capability!();

    async fn publish(&self, event: NewEvent) -> zps_core::Result<PublishOutcome> {
        Ok(self.publish_inner(event).await?)
    }

    fn batches_publishes(&self) -> bool {
        true
    }

    async fn publish_batch(&self, events: Vec<NewEvent>) -> zps_core::Result<Vec<PublishOutcome>> {
        self.check_open()?;
        let outcomes = self.inner.publish_batch(events).await?;
        let stored = outcomes.iter().filter(|o| !o.duplicate).count() as u64;
        self.inner.stats.published(stored, &self.inner.pool);
        Ok(outcomes)
    }

    async fn subscribe(&self, patterns: &[RoomPattern]) -> zps_core::Result<LiveStream> {
        self.check_open()?;
        let shared = &self.inner.shared;
        let live = shared.live.subscribe(patterns).map(|item| match item {
            FanoutItem::Item(signal) => signal,
            FanoutItem::Lagged(pattern) => LiveSignal::Lagged(Some(pattern)),
        });
        // Listener reconnects (and queue overflows) make every stream re-read history.
        let resync = match shared.resync.lock().as_ref() {
            Some(tx) => BroadcastStream::new(tx.subscribe())
                .map(|_| LiveSignal::Lagged(None))
                .boxed(),
            None => futures::stream::empty().boxed(),
        };
        Ok(futures::stream::select(live, resync).boxed())
    }

    async fn replay(&self, query: &ReplayQuery) -> zps_core::Result<ReplayPage> {
        Ok(self.replay_inner(query).await?)
    }

    async fn room_info(&self, room: &Room) -> zps_core::Result<RoomInfo> {
        Ok(self.room_info_inner(room).await?)
    }

    async fn ack(&self, room: &Room, subscriber_id: &str, sequence: u64) -> zps_core::Result<u64> {
        self.check_open()?;
        let stored: i64 = sqlx::query_scalar(&self.inner.q.ack)
            .bind(room.as_str())
            .bind(subscriber_id)
            .bind(to_i64(sequence))
            .fetch_one(&self.inner.pool)
            .await
            .map_err(PostgresError::from)?;
        Ok(to_u64(stored))
    }

    async fn cursor(&self, room: &Room, subscriber_id: &str) -> zps_core::Result<Option<u64>> {
        self.check_open()?;
        let stored: Option<i64> = sqlx::query_scalar(&self.inner.q.cursor)
            .bind(room.as_str())
            .bind(subscriber_id)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(PostgresError::from)?;
        Ok(stored.map(to_u64))
    }

    async fn health(&self) -> TransportHealth {
        let inner = &*self.inner;
        let mut h = TransportHealth::healthy("postgres");
        let d = &mut h.details;
        d.insert("poolSize".into(), inner.pool.size().into());
        d.insert("poolIdle".into(), inner.pool.num_idle().into());
        d.insert(
            "poolMax".into(),
            inner.pool.options().get_max_connections().into(),
        );
        let connected = inner.shared.connected.load(Ordering::Acquire);
        d.insert("listenerConnected".into(), connected.into());
        d.insert(
            "listenerReconnects".into(),
            inner.shared.reconnects.load(Ordering::Relaxed).into(),
        );
        if let Some(schema) = &inner.config.schema {
            d.insert("schema".into(), schema.clone().into());
        }
        if inner.closed.load(Ordering::Acquire) {
            h.fail("closed");
            return h;
        }
        let ping = tokio::time::timeout(
            inner.config.connect_timeout,
            sqlx::query("SELECT 1").execute(&inner.pool),
        )
        .await;
        match ping {
            Ok(Ok(_)) if connected => {}
            Ok(Ok(_)) => h.status = HealthStatus::Degraded,
            Ok(Err(e)) => h.fail(e.to_string()),
            Err(_) => h.fail("database did not answer in time"),
        }
        h
    }

    async fn close(&self) -> zps_core::Result<()> {
        self.close_inner().await;
        Ok(())
    }
}

#[async_trait]
impl SnapshotStore for PostgresTransport {
    async fn put_snapshot(&self, snapshot: Snapshot) -> zps_core::Result<()> {
        self.check_open()?;
        sqlx::query(&self.inner.q.put_snapshot)
            .bind(snapshot.room.as_str())
            .bind(to_i64(snapshot.last_sequence))
            .bind(snapshot.state.get())
            .bind(snapshot.created_at.to_datetime())
            .execute(&self.inner.pool)
            .await
            .map_err(PostgresError::from)?;
        Ok(())
    }

    async fn get_snapshot(&self, room: &Room) -> zps_core::Result<Option<Snapshot>> {
        self.check_open()?;
        let row = sqlx::query(&self.inner.q.get_snapshot)
            .bind(room.as_str())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(PostgresError::from)?;
        let Some(row) = row else { return Ok(None) };
        let decode = || -> PgResult<Snapshot> {
            Ok(Snapshot {
                room: room.clone(),
                last_sequence: to_u64(row.try_get::<i64, _>("last_sequence")?),
                state: payload_from("snapshots", row.try_get::<String, _>("state")?)?,
                created_at: Timestamp::from(row.try_get::<chrono::DateTime<chrono::Utc>, _>("created_at")?),
            })
        };
        Ok(Some(decode()?))
    }
}

#[async_trait]
impl EphemeralBus for PostgresTransport {
    async fn publish_ephemeral(&self, event: Arc<EphemeralEvent>) -> zps_core::Result<()> {
        self.check_open()?;
        let json = serde_json::to_string(&*event)
            .map_err(|e| Error::InvalidEvent(format!("ephemeral event is not serializable: {e}")))?;
        let text = format!("{}\n{}\n{json}", self.inner.shared.tag, event.room);
        if text.len() > NOTIFY_PAYLOAD_LIMIT {
            return Err(Error::PayloadTooLarge {
                size: text.len(),
                limit: NOTIFY_PAYLOAD_LIMIT,
            });
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.inner.config.ephemeral_channel)
            .bind(text)
            .execute(&self.inner.pool)
            .await
            .map_err(PostgresError::from)?;
        Ok(())
    }

    async fn subscribe_ephemeral(&self, patterns: &[RoomPattern]) -> zps_core::Result<EphemeralStream> {
        self.check_open()?;
        Ok(self.inner.shared.ephemeral.subscribe_lossy(patterns))
    }
}

#[async_trait]
impl Retention for PostgresTransport {
    async fn prune_expired(&self) -> zps_core::Result<u64> {
        self.check_open()?;
        let removed: i64 = sqlx::query_scalar(&self.inner.q.prune)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(PostgresError::from)?;
        Ok(to_u64(removed))
    }
}
