//! A fault-injecting transport wrapper for tests: lose, hold back or reorder
//! live signals and fan-out messages, and make history reads fail on demand.
//! Every other call goes to the wrapped transport unchanged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use zps_core::transport::{DeadLetterStore, EphemeralBus, PresenceStore, Retention, SnapshotStore};

use async_trait::async_trait;
use futures::StreamExt;
use zps_core::transport::{EphemeralStream, LiveStream};
use zps_core::{
    Capabilities, DlqEntry, DlqRoom, Envelope, EphemeralEvent, Error, LiveSignal, NewDlqEntry, NewEvent,
    PresenceMember, PublishOutcome, ReplayPage, ReplayQuery, Result, Room, RoomInfo, RoomPattern, Snapshot,
    Transport, TransportError, TransportErrorKind, TransportHealth,
};

/// Rewrites one live stream: each signal in, any number of signals out (state allowed).
pub type LiveRewrite = Box<dyn FnMut(LiveSignal) -> Vec<LiveSignal> + Send>;
/// Makes a [`LiveRewrite`] for each new live stream.
pub type LiveRewriteFactory = Arc<dyn Fn() -> LiveRewrite + Send + Sync>;
/// Decides what a `fanout` call delivers: the envelopes to pass on, in order.
pub type FanoutRewrite = Arc<parking_lot::Mutex<dyn FnMut(Arc<Envelope>) -> Vec<Arc<Envelope>> + Send>>;

/// Wraps a transport and injects faults.
pub struct FaultyTransport {
    inner: Arc<dyn Transport>,
    live: Option<LiveRewriteFactory>,
    fanout: Option<FanoutRewrite>,
    reorder_window: Option<Duration>,
    cross_process: Option<bool>,
    history: Option<bool>,
    failing_replays: AtomicU32,
    stalled_fanout: tokio::sync::watch::Sender<bool>,
}

impl FaultyTransport {
    /// A wrapper that injects nothing yet.
    pub fn new(inner: Arc<dyn Transport>) -> Self {
        Self {
            inner,
            live: None,
            fanout: None,
            reorder_window: None,
            cross_process: None,
            history: None,
            failing_replays: AtomicU32::new(0),
            stalled_fanout: tokio::sync::watch::channel(false).0,
        }
    }

    /// While `true`, `fanout` calls hang (a fan-out server failing over or
    /// partitioned away); they carry on when it is set back to `false`.
    pub fn stall_fanout(&self, stalled: bool) {
        self.stalled_fanout.send_replace(stalled);
    }

    /// Rewrites every live stream.
    pub fn rewrite_live(mut self, factory: impl Fn() -> LiveRewrite + Send + Sync + 'static) -> Self {
        self.live = Some(Arc::new(factory));
        self
    }

    /// Rewrites fan-out calls (the hybrid provider's realtime leg).
    pub fn rewrite_fanout(
        mut self,
        f: impl FnMut(Arc<Envelope>) -> Vec<Arc<Envelope>> + Send + 'static,
    ) -> Self {
        self.fanout = Some(Arc::new(parking_lot::Mutex::new(f)));
        self
    }

    /// Declares a reorder window (as out-of-order providers do).
    pub fn reorder_window(mut self, window: Duration) -> Self {
        self.reorder_window = Some(window);
        self
    }

    /// Declares cross-process fan-out.
    pub fn cross_process(mut self, yes: bool) -> Self {
        self.cross_process = Some(yes);
        self
    }

    /// Declares whether history is kept (a fan-out-only provider says no).
    pub fn history(mut self, yes: bool) -> Self {
        self.history = Some(yes);
        self
    }

    /// Makes the next `n` history reads fail with an "unavailable" transport error.
    pub fn fail_next_replays(&self, n: u32) {
        self.failing_replays.store(n, Ordering::SeqCst);
    }
}

#[async_trait]
impl Transport for FaultyTransport {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        let mut c = self.inner.capabilities();
        if let Some(w) = self.reorder_window {
            c.reorder_window = w;
        }
        if let Some(x) = self.cross_process {
            c.cross_process = x;
        }
        if let Some(h) = self.history {
            c.history = h;
        }
        c
    }

    zps_core::offer_every_capability!();
    async fn publish(&self, event: NewEvent) -> Result<PublishOutcome> {
        self.inner.publish(event).await
    }
    async fn fanout(&self, envelope: Arc<Envelope>) -> Result<()> {
        let mut stalled = self.stalled_fanout.subscribe();
        // The sender lives as long as `self`: waiting cannot fail while we run.
        let _ = stalled.wait_for(|s| !*s).await;
        let Some(rewrite) = &self.fanout else {
            return self.inner.fanout(envelope).await;
        };
        let out = (rewrite.lock())(envelope);
        for e in out {
            self.inner.fanout(e).await?;
        }
        Ok(())
    }
    async fn subscribe(&self, patterns: &[RoomPattern]) -> Result<LiveStream> {
        let live = self.inner.subscribe(patterns).await?;
        Ok(match &self.live {
            None => live,
            Some(factory) => {
                let mut rewrite = factory();
                live.flat_map(move |s| futures::stream::iter(rewrite(s))).boxed()
            }
        })
    }
    async fn replay(&self, q: &ReplayQuery) -> Result<ReplayPage> {
        let failing = self
            .failing_replays
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(Error::Transport(TransportError::new(
                "faulty",
                TransportErrorKind::Unavailable,
                "injected history read failure",
            )));
        }
        self.inner.replay(q).await
    }
    async fn room_info(&self, room: &Room) -> Result<RoomInfo> {
        self.inner.room_info(room).await
    }
    async fn ack(&self, room: &Room, s: &str, seq: u64) -> Result<u64> {
        self.inner.ack(room, s, seq).await
    }
    async fn cursor(&self, room: &Room, s: &str) -> Result<Option<u64>> {
        self.inner.cursor(room, s).await
    }
    async fn health(&self) -> TransportHealth {
        self.inner.health().await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

#[async_trait]
impl SnapshotStore for FaultyTransport {
    async fn put_snapshot(&self, s: Snapshot) -> Result<()> {
        self.inner.require_snapshots()?.put_snapshot(s).await
    }

    async fn get_snapshot(&self, room: &Room) -> Result<Option<Snapshot>> {
        self.inner.require_snapshots()?.get_snapshot(room).await
    }
}

#[async_trait]
impl DeadLetterStore for FaultyTransport {
    async fn dlq_write(&self, room: &Room, e: NewDlqEntry) -> Result<DlqEntry> {
        self.inner.require_dead_letters()?.dlq_write(room, e).await
    }

    async fn dlq_list(&self, room: &Room, after: u64, limit: usize) -> Result<Vec<DlqEntry>> {
        self.inner
            .require_dead_letters()?
            .dlq_list(room, after, limit)
            .await
    }

    async fn dlq_remove(&self, room: &Room, ids: &[u64]) -> Result<u64> {
        self.inner.require_dead_letters()?.dlq_remove(room, ids).await
    }

    async fn dlq_len(&self, room: &Room) -> Result<u64> {
        self.inner.require_dead_letters()?.dlq_len(room).await
    }

    async fn dlq_rooms(&self, prefix: &str, after: Option<&Room>, limit: usize) -> Result<Vec<DlqRoom>> {
        self.inner
            .require_dead_letters()?
            .dlq_rooms(prefix, after, limit)
            .await
    }
}

#[async_trait]
impl EphemeralBus for FaultyTransport {
    async fn publish_ephemeral(&self, e: Arc<EphemeralEvent>) -> Result<()> {
        self.inner.require_ephemeral()?.publish_ephemeral(e).await
    }

    async fn subscribe_ephemeral(&self, p: &[RoomPattern]) -> Result<EphemeralStream> {
        self.inner.require_ephemeral()?.subscribe_ephemeral(p).await
    }
}

#[async_trait]
impl PresenceStore for FaultyTransport {
    async fn presence_enter(&self, r: &Room, m: PresenceMember, c: &str, ttl: Duration) -> Result<bool> {
        self.inner.require_presence()?.presence_enter(r, m, c, ttl).await
    }

    async fn presence_leave(&self, r: &Room, u: &str, c: &str) -> Result<bool> {
        self.inner.require_presence()?.presence_leave(r, u, c).await
    }

    async fn presence_members(&self, r: &Room) -> Result<Vec<PresenceMember>> {
        self.inner.require_presence()?.presence_members(r).await
    }

    async fn presence_sweep(&self) -> Result<Vec<(Room, String)>> {
        self.inner.require_presence()?.presence_sweep().await
    }
}

#[async_trait]
impl Retention for FaultyTransport {
    async fn prune_expired(&self) -> Result<u64> {
        match self.inner.retention() {
            Some(r) => r.prune_expired().await,
            None => Ok(0),
        }
    }
}
