//! [`SqliteTransport`]: the provider, tying the writer thread, the read pool
//! and the in-process fan-out together.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use zps_core::transport::{DeadLetterStore, EphemeralBus, PresenceStore, Retention, SnapshotStore};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use rusqlite::Connection;
use zps_core::envelope::{
    DlqEntry, Envelope, EphemeralEvent, NewDlqEntry, NewEvent, PresenceMember, Snapshot,
};
use zps_core::error::Result;
use zps_core::fanout::LocalFanout;
use zps_core::transport::{
    Capabilities, DlqRoom, EphemeralStream, LiveStream, PublishOutcome, ReplayPage, ReplayQuery, RoomInfo,
    Transport, TransportHealth,
};
use zps_core::{MemoryConfig, MemoryTransport, Room, RoomPattern, Timestamp};

use crate::config::SqliteConfig;
use crate::error::{SqlResult, SqliteError};
use crate::lock::FileLock;
use crate::read::Readers;
use crate::writer::{Queue, Task};
use crate::{schema, store};

struct Inner {
    config: SqliteConfig,
    path: PathBuf,
    epoch: String,
    writer: RwLock<Option<Queue>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Arc<Readers>,
    live: LocalFanout<Arc<Envelope>>,
    /// Presence and ephemeral events: in-process, like the connections they belong to.
    side: MemoryTransport,
    closed: AtomicBool,
    _lock: Arc<FileLock>,
}

/// The SQLite provider; cheap to clone.
#[derive(Clone)]
pub struct SqliteTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTransport")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// `path` made absolute without requiring the file to exist (its folder is created).
fn absolute(path: &Path) -> SqlResult<PathBuf> {
    let open_err = |source| SqliteError::Open {
        path: path.display().to_string(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(open_err)?;
    let file = path.file_name().ok_or_else(|| {
        open_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no file name",
        ))
    })?;
    Ok(dir.canonicalize().map_err(open_err)?.join(file))
}

fn open_writer(path: &Path, config: &SqliteConfig) -> SqlResult<(Connection, String)> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(config.busy_timeout)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "SQLite did not switch to WAL mode");
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {}; PRAGMA temp_store = MEMORY;",
        config.synchronous.pragma()
    ))?;
    let epoch = schema::migrate(&mut conn)?;
    Ok((conn, epoch))
}

impl SqliteTransport {
    /// Opens (creating when missing) the database at `config.path` and starts the
    /// writer. Fails when another process holds the file.
    pub async fn open(config: SqliteConfig) -> std::result::Result<Self, SqliteError> {
        let path = absolute(&config.path)?;
        let lock = crate::lock::acquire(&path)?;
        let (conn, epoch) = {
            let (path, config) = (path.clone(), config.clone());
            tokio::task::spawn_blocking(move || open_writer(&path, &config))
                .await
                .map_err(|_| SqliteError::Closed)??
        };
        let (queue, thread) =
            crate::writer::spawn(conn, config.batch_max).map_err(|source| SqliteError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let inner = Arc::new(Inner {
            readers: Arc::new(Readers::new(path.clone(), config.readers, config.busy_timeout)),
            live: LocalFanout::new(config.channel_capacity),
            side: MemoryTransport::new(MemoryConfig {
                channel_capacity: config.channel_capacity,
                ..MemoryConfig::default()
            }),
            writer: RwLock::new(Some(queue)),
            writer_thread: Mutex::new(Some(thread)),
            closed: AtomicBool::new(false),
            _lock: lock,
            epoch,
            path,
            config,
        });
        if let Some(every) = inner.config.prune_interval {
            start_pruning(Arc::downgrade(&inner), every);
        }
        tracing::info!(path = %inner.path.display(), "SQLite store open");
        Ok(Self { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn check_open(&self) -> SqlResult<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(SqliteError::Closed)
        } else {
            Ok(())
        }
    }

    async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> SqlResult<T> + Send + 'static,
    {
        write_then(&self.inner, work, |_: &T| {}).await
    }

    async fn read<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> SqlResult<T> + Send + 'static,
    {
        self.check_open()?;
        Ok(self.inner.readers.run(work).await?)
    }
}

async fn write_then<T, F, A>(inner: &Inner, work: F, after_commit: A) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> SqlResult<T> + Send + 'static,
    A: FnOnce(&T) + Send + 'static,
{
    let (job, reply) = Task::new(work, after_commit);
    {
        let writer = inner.writer.read();
        let queue = writer.as_ref().ok_or(SqliteError::Closed)?;
        queue.send(job).map_err(|_| SqliteError::Closed)?;
    }
    Ok(reply.await.map_err(|_| SqliteError::Closed)??)
}

/// Deletes expired events on a schedule while the transport lives.
fn start_pruning(inner: Weak<Inner>, every: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            if inner.closed.load(Ordering::Acquire) {
                return;
            }
            match write_then(&inner, |c| store::prune(c, Timestamp::now()), |_| {}).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(events = n, "pruned expired events"),
                Err(e) => tracing::warn!(error = %e, "scheduled prune failed"),
            }
        }
    });
}

#[async_trait]
impl Transport for SqliteTransport {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            history: true,
            cross_process: false,
            reorder_window: Duration::ZERO,
        }
    }

    zps_core::offer_every_capability!();

    async fn publish(&self, event: NewEvent) -> Result<PublishOutcome> {
        self.check_open()?;
        let live = self.inner.clone();
        let (envelope, duplicate) = write_then(
            &self.inner,
            move |c| store::publish(c, event).map(|(e, dup)| (Arc::new(e), dup)),
            // After the commit, on the writer thread, in commit order.
            move |(e, dup): &(Arc<Envelope>, bool)| {
                if !dup {
                    live.live.send(&e.room, e.clone());
                }
            },
        )
        .await?;
        Ok(PublishOutcome { envelope, duplicate })
    }

    fn batches_publishes(&self) -> bool {
        true
    }

    /// One write job (one savepoint) for the whole batch, in order; if any event
    /// fails, none is stored and the engine retries them one by one.
    async fn publish_batch(&self, events: Vec<NewEvent>) -> Result<Vec<PublishOutcome>> {
        self.check_open()?;
        let live = self.inner.clone();
        let stored = write_then(
            &self.inner,
            move |c| {
                events
                    .into_iter()
                    .map(|e| store::publish(c, e).map(|(e, dup)| (Arc::new(e), dup)))
                    .collect::<SqlResult<Vec<_>>>()
            },
            move |stored: &Vec<(Arc<Envelope>, bool)>| {
                for (e, dup) in stored {
                    if !dup {
                        live.live.send(&e.room, e.clone());
                    }
                }
            },
        )
        .await?;
        Ok(stored
            .into_iter()
            .map(|(envelope, duplicate)| PublishOutcome { envelope, duplicate })
            .collect())
    }

    async fn subscribe(&self, patterns: &[RoomPattern]) -> Result<LiveStream> {
        self.check_open()?;
        Ok(self.inner.live.live_signals(patterns))
    }

    async fn replay(&self, query: &ReplayQuery) -> Result<ReplayPage> {
        let q = query.clone();
        self.read(move |c| store::replay(c, &q, Timestamp::now())).await
    }

    async fn room_info(&self, room: &Room) -> Result<RoomInfo> {
        let (room, epoch) = (room.clone(), self.inner.epoch.clone());
        self.read(move |c| store::room_info(c, &room, &epoch, Timestamp::now()))
            .await
    }

    async fn ack(&self, room: &Room, subscriber_id: &str, sequence: u64) -> Result<u64> {
        self.check_open()?;
        let (room, sub) = (room.clone(), subscriber_id.to_owned());
        self.write(move |c| store::ack(c, &room, &sub, sequence)).await
    }

    async fn cursor(&self, room: &Room, subscriber_id: &str) -> Result<Option<u64>> {
        let (room, sub) = (room.clone(), subscriber_id.to_owned());
        self.read(move |c| store::cursor(c, &room, &sub)).await
    }

    async fn health(&self) -> TransportHealth {
        let mut report = TransportHealth::healthy("sqlite");
        report
            .details
            .insert("path".into(), self.inner.path.display().to_string().into());
        report
            .details
            .insert("schemaVersion".into(), schema::current_version().into());
        report.details.insert(
            "synchronous".into(),
            self.inner.config.synchronous.pragma().to_lowercase().into(),
        );
        if let Err(e) = self
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM zps_rooms", [], |r| r.get::<_, i64>(0))?))
            .await
            .map(|rooms| report.details.insert("rooms".into(), rooms.into()))
        {
            report.fail(e.to_string());
        }
        report
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Queued writes finish; then the writer checkpoints and ends.
        drop(self.inner.writer.write().take());
        let thread = self.inner.writer_thread.lock().take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        self.inner.readers.close();
        self.inner.live.close();
        self.inner.side.close().await
    }
}

#[async_trait]
impl SnapshotStore for SqliteTransport {
    async fn put_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.check_open()?;
        self.write(move |c| store::put_snapshot(c, &snapshot)).await
    }

    async fn get_snapshot(&self, room: &Room) -> Result<Option<Snapshot>> {
        let room = room.clone();
        self.read(move |c| store::get_snapshot(c, &room)).await
    }
}

#[async_trait]
impl DeadLetterStore for SqliteTransport {
    async fn dlq_write(&self, room: &Room, entry: NewDlqEntry) -> Result<DlqEntry> {
        self.check_open()?;
        let (room, max) = (room.clone(), self.inner.config.max_dlq_per_room.max(1));
        self.write(move |c| store::dlq_write(c, &room, entry, max)).await
    }

    async fn dlq_list(&self, room: &Room, after: u64, limit: usize) -> Result<Vec<DlqEntry>> {
        let room = room.clone();
        self.read(move |c| store::dlq_list(c, &room, after, limit)).await
    }

    async fn dlq_remove(&self, room: &Room, entry_ids: &[u64]) -> Result<u64> {
        self.check_open()?;
        let (room, ids) = (room.clone(), entry_ids.to_vec());
        self.write(move |c| store::dlq_remove(c, &room, &ids)).await
    }

    async fn dlq_len(&self, room: &Room) -> Result<u64> {
        let room = room.clone();
        self.read(move |c| store::dlq_len(c, &room)).await
    }

    async fn dlq_rooms(&self, prefix: &str, after: Option<&Room>, limit: usize) -> Result<Vec<DlqRoom>> {
        let (prefix, after) = (prefix.to_owned(), after.cloned());
        self.read(move |c| store::dlq_rooms(c, &prefix, after.as_ref(), limit))
            .await
    }
}

#[async_trait]
impl EphemeralBus for SqliteTransport {
    async fn publish_ephemeral(&self, event: Arc<EphemeralEvent>) -> Result<()> {
        self.check_open()?;
        self.inner.side.publish_ephemeral(event).await
    }

    async fn subscribe_ephemeral(&self, patterns: &[RoomPattern]) -> Result<EphemeralStream> {
        self.check_open()?;
        self.inner.side.subscribe_ephemeral(patterns).await
    }
}

#[async_trait]
impl PresenceStore for SqliteTransport {
    async fn presence_enter(
        &self,
        room: &Room,
        member: PresenceMember,
        connection: &str,
        ttl: Duration,
    ) -> Result<bool> {
        self.check_open()?;
        self.inner
            .side
            .presence_enter(room, member, connection, ttl)
            .await
    }

    async fn presence_leave(&self, room: &Room, user_id: &str, connection: &str) -> Result<bool> {
        self.check_open()?;
        self.inner.side.presence_leave(room, user_id, connection).await
    }

    async fn presence_members(&self, room: &Room) -> Result<Vec<PresenceMember>> {
        self.check_open()?;
        self.inner.side.presence_members(room).await
    }

    async fn presence_sweep(&self) -> Result<Vec<(Room, String)>> {
        self.check_open()?;
        self.inner.side.presence_sweep().await
    }
}

#[async_trait]
impl Retention for SqliteTransport {
    async fn prune_expired(&self) -> Result<u64> {
        self.check_open()?;
        self.write(|c| store::prune(c, Timestamp::now())).await
    }
}
