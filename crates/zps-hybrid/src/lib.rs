//! The hybrid provider: a durable **storage** transport (PostgreSQL or MongoDB)
//! is the source of truth and the sequence allocator; a **realtime** transport
//! (Redis, fan-out only) carries live events between gateway nodes.
//!
//! Publishing stores first (that assigns the sequence), then fans out. The two
//! steps are separate, so two nodes' fan-out messages can reach a subscriber out
//! of sequence order, and a message can be lost if a node dies between commit
//! and fan-out. The transport therefore declares a non-zero
//! [`reorder_window`](HybridConfig::reorder_window): the engine parks an
//! out-of-order event for that long, and if the hole has not filled, reads the
//! missing range from storage (`zps_gaps_filled_total`). A periodic resync
//! bounds how long a lost *last* event (with nothing after it to reveal the
//! hole) can stay undelivered. Nobody sees a gap or a duplicate.
//!
//! With the realtime leg down, publishes still commit; the leg's reconnection
//! signals a lag and subscribers catch up from storage.
//!
//! ```
//! use std::sync::Arc;
//! use zps_core::{MemoryTransport, Realtime};
//! use zps_hybrid::{HybridConfig, HybridTransport};
//! // Real deployments pass a PostgresTransport and a RedisTransport (persist_streams: false).
//! let hybrid = HybridTransport::new(
//!     Arc::new(MemoryTransport::default()),
//!     Arc::new(MemoryTransport::default()),
//!     HybridConfig::default(),
//! );
//! let realtime = Realtime::new(Arc::new(hybrid));
//! # let _ = realtime;
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use zps_core::transport::{DeadLetterStore, EphemeralBus, PresenceStore, Retention, SnapshotStore};

use async_trait::async_trait;
use futures::StreamExt;
use zps_core::transport::{EphemeralStream, LiveStream};
use zps_core::{
    Capabilities, DlqEntry, DlqRoom, Envelope, EphemeralEvent, HealthStatus, LiveSignal, NewDlqEntry,
    NewEvent, PresenceMember, PublishOutcome, ReplayPage, ReplayQuery, Result, Room, RoomInfo, RoomPattern,
    Snapshot, Transport, TransportHealth,
};

/// Hybrid settings.
#[derive(Debug, Clone)]
pub struct HybridConfig {
    /// How long an out-of-order live event waits for the hole before it to fill
    /// (from another node's fan-out) before the hole is read from storage.
    pub reorder_window: Duration,
    /// Every live stream re-reads storage this often, so an event whose fan-out
    /// was lost is delivered even if no later event reveals the hole. `None` disables.
    pub resync_interval: Option<Duration>,
    /// Longest a publish waits for its fan-out before it is answered anyway: the
    /// event is stored, so a fan-out leg that hangs (Redis failing over,
    /// partitioned) must not stop publishing; subscribers read it from storage.
    pub fanout_timeout: Duration,
}

impl Default for HybridConfig {
    fn default() -> Self {
        Self {
            reorder_window: Duration::from_millis(100),
            resync_interval: Some(Duration::from_secs(30)),
            fanout_timeout: Duration::from_millis(250),
        }
    }
}

/// Storage leg + realtime leg behind one [`Transport`].
pub struct HybridTransport {
    storage: Arc<dyn Transport>,
    realtime: Arc<dyn Transport>,
    config: HybridConfig,
    fanout_failures: AtomicU64,
}

impl HybridTransport {
    /// Composes the two legs (the realtime leg should not keep its own history).
    pub fn new(storage: Arc<dyn Transport>, realtime: Arc<dyn Transport>, config: HybridConfig) -> Self {
        Self {
            storage,
            realtime,
            config,
            fanout_failures: AtomicU64::new(0),
        }
    }

    /// The storage leg.
    pub fn storage(&self) -> &Arc<dyn Transport> {
        &self.storage
    }

    /// The realtime leg.
    pub fn realtime(&self) -> &Arc<dyn Transport> {
        &self.realtime
    }

    /// Publishes whose fan-out failed (they were stored; subscribers get them from storage).
    pub fn fanout_failures(&self) -> u64 {
        self.fanout_failures.load(Ordering::Relaxed)
    }

    async fn fan_out(&self, envelope: Arc<Envelope>) {
        let sent =
            tokio::time::timeout(self.config.fanout_timeout, self.realtime.fanout(envelope.clone())).await;
        let error = match sent {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.config.fanout_timeout),
        };
        self.fanout_failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("zps_hybrid_fanout_failures_total").increment(1);
        tracing::warn!(room = %envelope.room, sequence = envelope.sequence, error = %error,
            "fan-out failed; the event is stored and subscribers will read it from storage");
    }
}

#[async_trait]
impl Transport for HybridTransport {
    fn name(&self) -> &'static str {
        "hybrid"
    }

    fn capabilities(&self) -> Capabilities {
        let storage = self.storage.capabilities();
        Capabilities {
            durable: storage.durable,
            history: storage.history,
            cross_process: self.realtime.capabilities().cross_process,
            reorder_window: self.config.reorder_window,
        }
    }

    zps_core::offer_every_capability!();

    async fn publish(&self, event: NewEvent) -> Result<PublishOutcome> {
        let outcome = self.storage.publish(event).await?;
        if !outcome.duplicate {
            self.fan_out(outcome.envelope.clone()).await;
        }
        Ok(outcome)
    }

    fn batches_publishes(&self) -> bool {
        true
    }

    async fn publish_batch(&self, events: Vec<NewEvent>) -> Result<Vec<PublishOutcome>> {
        let outcomes = self.storage.publish_batch(events).await?;
        // Issued together (in sequence order) so the realtime leg can pipeline them:
        // one round trip for the batch instead of one per event.
        futures::future::join_all(
            outcomes
                .iter()
                .filter(|o| !o.duplicate)
                .map(|o| self.fan_out(o.envelope.clone())),
        )
        .await;
        Ok(outcomes)
    }

    async fn fanout(&self, envelope: Arc<Envelope>) -> Result<()> {
        self.realtime.fanout(envelope).await
    }

    async fn subscribe(&self, patterns: &[RoomPattern]) -> Result<LiveStream> {
        let live = self
            .realtime
            .subscribe(patterns)
            .await?
            .map(|signal| match signal {
                // Storage is the source of truth: a reset of the fan-out leg (e.g. Redis
                // flushed) only means messages may have been lost; re-read storage.
                LiveSignal::Reset { room, .. } => LiveSignal::Lagged(Some(RoomPattern::Exact(room))),
                other => other,
            });
        let Some(every) = self.config.resync_interval else {
            return Ok(live.boxed());
        };
        let ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // Ends when the live stream ends (the transport closed).
        Ok(
            futures::stream::unfold((live.boxed(), ticks), |(mut live, mut ticks)| async move {
                tokio::select! {
                    signal = live.next() => signal.map(|s| (s, (live, ticks))),
                    _ = ticks.tick() => Some((LiveSignal::Lagged(None), (live, ticks))),
                }
            })
            .boxed(),
        )
    }

    async fn replay(&self, query: &ReplayQuery) -> Result<ReplayPage> {
        self.storage.replay(query).await
    }

    async fn room_info(&self, room: &Room) -> Result<RoomInfo> {
        self.storage.room_info(room).await
    }

    async fn ack(&self, room: &Room, subscriber_id: &str, sequence: u64) -> Result<u64> {
        self.storage.ack(room, subscriber_id, sequence).await
    }

    async fn cursor(&self, room: &Room, subscriber_id: &str) -> Result<Option<u64>> {
        self.storage.cursor(room, subscriber_id).await
    }

    async fn health(&self) -> TransportHealth {
        let (storage, realtime) = futures::join!(self.storage.health(), self.realtime.health());
        let status = match (storage.status, realtime.status) {
            (HealthStatus::Unhealthy, _) => HealthStatus::Unhealthy,
            (HealthStatus::Healthy, HealthStatus::Healthy) => HealthStatus::Healthy,
            // Fan-out down: publishes still commit, subscribers recover from storage.
            _ => HealthStatus::Degraded,
        };
        let mut details = serde_json::Map::new();
        details.insert(
            "storage".into(),
            serde_json::to_value(&storage).unwrap_or_default(),
        );
        details.insert(
            "realtime".into(),
            serde_json::to_value(&realtime).unwrap_or_default(),
        );
        details.insert("fanoutFailures".into(), self.fanout_failures().into());
        details.insert(
            "reorderWindowMs".into(),
            (self.config.reorder_window.as_millis() as u64).into(),
        );
        TransportHealth {
            provider: "hybrid".into(),
            status,
            details,
        }
    }

    async fn close(&self) -> Result<()> {
        let (a, b) = futures::join!(self.realtime.close(), self.storage.close());
        a.and(b)
    }
}

#[async_trait]
impl SnapshotStore for HybridTransport {
    async fn put_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.storage.require_snapshots()?.put_snapshot(snapshot).await
    }

    async fn get_snapshot(&self, room: &Room) -> Result<Option<Snapshot>> {
        self.storage.require_snapshots()?.get_snapshot(room).await
    }
}

#[async_trait]
impl DeadLetterStore for HybridTransport {
    async fn dlq_write(&self, room: &Room, entry: NewDlqEntry) -> Result<DlqEntry> {
        self.storage.require_dead_letters()?.dlq_write(room, entry).await
    }

    async fn dlq_list(&self, room: &Room, after: u64, limit: usize) -> Result<Vec<DlqEntry>> {
        self.storage
            .require_dead_letters()?
            .dlq_list(room, after, limit)
            .await
    }

    async fn dlq_remove(&self, room: &Room, entry_ids: &[u64]) -> Result<u64> {
        self.storage
            .require_dead_letters()?
            .dlq_remove(room, entry_ids)
            .await
    }

    async fn dlq_len(&self, room: &Room) -> Result<u64> {
        self.storage.require_dead_letters()?.dlq_len(room).await
    }

    async fn dlq_rooms(&self, prefix: &str, after: Option<&Room>, limit: usize) -> Result<Vec<DlqRoom>> {
        self.storage
            .require_dead_letters()?
            .dlq_rooms(prefix, after, limit)
            .await
    }
}

#[async_trait]
impl EphemeralBus for HybridTransport {
    async fn publish_ephemeral(&self, event: Arc<EphemeralEvent>) -> Result<()> {
        self.realtime.require_ephemeral()?.publish_ephemeral(event).await
    }

    async fn subscribe_ephemeral(&self, patterns: &[RoomPattern]) -> Result<EphemeralStream> {
        self.realtime
            .require_ephemeral()?
            .subscribe_ephemeral(patterns)
            .await
    }
}

#[async_trait]
impl PresenceStore for HybridTransport {
    async fn presence_enter(
        &self,
        room: &Room,
        member: PresenceMember,
        connection: &str,
        ttl: Duration,
    ) -> Result<bool> {
        self.realtime
            .require_presence()?
            .presence_enter(room, member, connection, ttl)
            .await
    }

    async fn presence_leave(&self, room: &Room, user_id: &str, connection: &str) -> Result<bool> {
        self.realtime
            .require_presence()?
            .presence_leave(room, user_id, connection)
            .await
    }

    async fn presence_members(&self, room: &Room) -> Result<Vec<PresenceMember>> {
        self.realtime.require_presence()?.presence_members(room).await
    }

    async fn presence_sweep(&self) -> Result<Vec<(Room, String)>> {
        self.realtime.require_presence()?.presence_sweep().await
    }
}

#[async_trait]
impl Retention for HybridTransport {
    async fn prune_expired(&self) -> Result<u64> {
        match self.storage.retention() {
            Some(r) => r.prune_expired().await,
            None => Ok(0),
        }
    }
}
