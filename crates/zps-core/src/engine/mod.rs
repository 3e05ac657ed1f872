//! The engine: [`Realtime`] wraps a [`Transport`] with middleware, ordered
//! subscriptions (catch-up then live), paged drains, retries, dead letters,
//! flow control, presence and metrics.

mod catch_up;
mod deliver;
mod dlq;
mod ephemeral;
mod handler;
mod options;
mod presence;
mod publish;
mod subscription;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use crate::envelope::{
    Envelope, EphemeralEvent, Metadata, NewEvent, Payload, PublishRequest, Snapshot, to_payload,
};
use crate::error::{Error, Result};
use crate::memory::MemoryTransport;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::middleware::{self, Action, Chain, Context, Middleware};
use crate::room::{Room, RoomPattern};
use crate::time::Timestamp;
use crate::transport::{
    HealthStatus, MAX_REPLAY_LIMIT, PublishOutcome, ReplayPage, ReplayQuery, RoomInfo, Transport,
    TransportHealth,
};

pub use catch_up::CatchUpStream;
pub use dlq::Dlq;
pub use ephemeral::EphemeralRequest;
pub use handler::{HandlerError, SubscriptionHandle};
pub use options::{
    BackoffStrategy, CatchUp, CatchUpOptions, DEFAULT_BATCH_SIZE, DefaultStart, FlowControl, FlowStrategy,
    RetryPolicy, SubscribeOptions,
};
pub use presence::{Presence, PresenceChange, PresenceStream};
pub use subscription::{Discontinuity, DiscontinuityReason, RoomStart, SubscriptionItem, check_continuity};

use subscription::{Driver, live_lag_ms};

/// Default time to live of an event: 24 hours.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Ephemeral event type announcing a presence join (payload: the member).
pub const PRESENCE_JOINED: &str = "presence.member_added";
/// Ephemeral event type announcing a presence leave (payload: `{"userId": ...}`).
pub const PRESENCE_LEFT: &str = "presence.member_removed";

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// TTL of events published without one.
    pub default_ttl: Duration,
    /// How long a presence connection lives without a heartbeat.
    pub presence_ttl: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            default_ttl: DEFAULT_TTL,
            presence_ttl: Duration::from_secs(30),
        }
    }
}

/// Builds a [`Realtime`].
pub struct RealtimeBuilder {
    transport: Arc<dyn Transport>,
    config: EngineConfig,
    middleware: Vec<Arc<dyn Middleware>>,
}

impl RealtimeBuilder {
    /// Sets the default TTL.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.default_ttl = ttl;
        self
    }

    /// Sets the presence TTL (heartbeats should come at least twice per TTL).
    pub fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.config.presence_ttl = ttl;
        self
    }

    /// Appends a middleware (outermost first).
    pub fn middleware(mut self, m: Arc<dyn Middleware>) -> Self {
        self.middleware.push(m);
        self
    }

    /// Finishes the engine.
    pub fn build(self) -> Realtime {
        Realtime {
            inner: Arc::new(Inner {
                transport: self.transport,
                config: self.config,
                chain: RwLock::new(Arc::from(self.middleware)),
                metrics: Arc::new(Metrics::default()),
                listeners: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
                presence_sweeper: Mutex::new(None),
                live_taps: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) config: EngineConfig,
    chain: RwLock<Chain>,
    pub(crate) metrics: Arc<Metrics>,
    listeners: Mutex<HashMap<RoomPattern, usize>>,
    closed: AtomicBool,
    presence_sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Open live taps (see `Realtime::tap_live`).
    live_taps: std::sync::atomic::AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.presence_sweeper.get_mut().take() {
            task.abort();
        }
    }
}

/// The realtime engine; cheap to clone (shared state).
///
/// ```
/// use zps_core::{Realtime, PublishRequest, SubscribeOptions, SubscriptionItem, room};
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), zps_core::Error> {
/// let realtime = Realtime::memory();
/// let chat = room("chat", "123")?;
/// realtime.publish(PublishRequest::new(chat.clone(), "message.created", &serde_json::json!({"text": "hi"}))?).await?;
///
/// // Catch-up from sequence 0, then live, in order, without gaps.
/// let mut events = realtime.subscribe_stream(SubscribeOptions::room(chat.clone())).await?.into_stream();
/// if let Some(SubscriptionItem::Event(e)) = events.next().await {
///     assert_eq!(e.sequence, 1);
/// }
/// realtime.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Realtime {
    pub(crate) inner: Arc<Inner>,
}

/// Engine health: the transport's report plus key figures.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// Overall status (the transport's, or unhealthy once closed).
    pub status: HealthStatus,
    /// The transport's report.
    pub transport: TransportHealth,
    /// Counters.
    pub metrics: MetricsSnapshot,
}

/// Unregisters a listener when dropped.
pub struct ListenerGuard {
    inner: Arc<Inner>,
    pattern: Option<RoomPattern>,
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        if let Some(p) = self.pattern.take() {
            self.inner.remove_listener(&p);
        }
    }
}

impl Inner {
    pub(crate) fn chain(&self) -> Chain {
        self.chain.read().clone()
    }

    fn add_listener(self: &Arc<Self>, pattern: RoomPattern) -> ListenerGuard {
        *self.listeners.lock().entry(pattern.clone()).or_insert(0) += 1;
        self.metrics.listeners_delta(1);
        ListenerGuard {
            inner: self.clone(),
            pattern: Some(pattern),
        }
    }

    fn remove_listener(&self, pattern: &RoomPattern) {
        let mut listeners = self.listeners.lock();
        if let Some(n) = listeners.get_mut(pattern) {
            *n -= 1;
            if *n == 0 {
                listeners.remove(pattern);
            }
        }
        drop(listeners);
        self.metrics.listeners_delta(-1);
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Runs `core` through the middleware chain and returns its output with the
    /// final context; a middleware that never called `next` yields `Rejected`.
    pub(crate) async fn call<T, F, Fut>(&self, ctx: Context, core: F) -> Result<(Context, T)>
    where
        T: Send + 'static,
        F: FnOnce(Context) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(Context, T)>> + Send + 'static,
    {
        let slot = Arc::new(Mutex::new(None));
        let out = slot.clone();
        let action = ctx.action;
        let ctx = self
            .run(ctx, move |ctx| async move {
                let (ctx, value) = core(ctx).await?;
                *out.lock() = Some(value);
                Ok(ctx)
            })
            .await?;
        let value = slot.lock().take();
        let value =
            value.ok_or_else(|| Error::Rejected(format!("middleware skipped the {action} operation")))?;
        Ok((ctx, value))
    }

    /// Runs `core` through the middleware chain (or directly when there is none).
    pub(crate) async fn run<F, Fut>(&self, ctx: Context, core: F) -> Result<Context>
    where
        F: FnOnce(Context) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Context>> + Send + 'static,
    {
        let chain = self.chain();
        let out = if chain.is_empty() {
            core(ctx).await
        } else {
            middleware::run(chain, ctx, Box::new(move |ctx| Box::pin(core(ctx)))).await
        };
        if out.is_err() {
            self.metrics.error();
        }
        out
    }
}

impl Realtime {
    /// Starts building an engine over `transport`.
    pub fn builder(transport: Arc<dyn Transport>) -> RealtimeBuilder {
        RealtimeBuilder {
            transport,
            config: EngineConfig::default(),
            middleware: Vec::new(),
        }
    }

    /// An engine over `transport` with default settings.
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Self::builder(transport).build()
    }

    /// An engine over the embedded in-memory transport (the default provider).
    pub fn memory() -> Self {
        Self::new(Arc::new(MemoryTransport::default()))
    }

    /// The transport underneath (for provider-specific calls).
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.transport
    }

    /// Engine settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Hands the per-event counters to the `metrics` facade; call it before
    /// rendering metrics when [`crate::metrics::export_on_scrape`] is on (the
    /// gateway's `/metrics` does).
    pub fn export_metrics(&self) {
        self.inner.metrics.export();
    }

    /// Adds a middleware after the existing ones. Install middleware before
    /// opening subscriptions: live taps opened earlier ([`Realtime::tap_live`])
    /// keep delivering without the `deliver` action until they are reopened.
    pub fn use_middleware(&self, m: Arc<dyn Middleware>) {
        let taps = self.inner.live_taps.load(std::sync::atomic::Ordering::Acquire);
        if taps > 0 {
            tracing::warn!(
                taps,
                "middleware added while live taps are open; they skip the deliver action until reopened"
            );
        }
        let mut chain = self.inner.chain.write();
        let mut list: Vec<_> = chain.iter().cloned().collect();
        list.push(m);
        *chain = Arc::from(list);
    }

    /// Counts a publish's result in the engine metrics.
    fn count_publish(&self, outcome: &Result<PublishOutcome>, count_error: bool) {
        match outcome {
            Ok(o) if o.duplicate => self.inner.metrics.duplicates_dropped(1),
            Ok(_) => self.inner.metrics.published(),
            Err(_) if count_error => self.inner.metrics.error(),
            Err(_) => {}
        }
    }

    async fn publish_through_middleware(&self, event: NewEvent) -> Result<PublishOutcome> {
        let transport = self.inner.transport.clone();
        let mut ctx = Context::new(Action::Publish).with_room(event.room.clone());
        ctx.event = Some(event);
        let (ctx, outcome) = self
            .inner
            .call(ctx, move |mut ctx| async move {
                let event = ctx
                    .event
                    .take()
                    .ok_or_else(|| Error::Rejected("middleware removed the event".into()))?;
                let outcome = transport.publish(event).await?;
                ctx.envelope = Some(outcome.envelope.clone());
                Ok((ctx, outcome))
            })
            .await?;
        // A middleware may replace the envelope it reports (e.g. redact it for callers).
        Ok(PublishOutcome {
            envelope: ctx.envelope.unwrap_or(outcome.envelope),
            duplicate: outcome.duplicate,
        })
    }

    /// Reads one page of history (`sequence > from`, `<= to`, type filter, limit ≤ 10 000).
    ///
    /// The read runs the `replay` middleware action; then every event of the page
    /// passes the `deliver` action like a live delivery (no subscriber id), and
    /// events it withholds are left out. `scanned_to` still covers them, so a
    /// reader advancing by it sees no gap.
    pub async fn replay(&self, query: ReplayQuery) -> Result<ReplayPage> {
        self.inner.check_open()?;
        if query.limit > MAX_REPLAY_LIMIT {
            return Err(Error::InvalidEvent(format!(
                "limit must be at most {MAX_REPLAY_LIMIT}"
            )));
        }
        if query.to_sequence.is_some_and(|to| to < query.from_sequence) {
            return Err(Error::InvalidEvent("toSequence is below fromSequence".into()));
        }
        let transport = self.inner.transport.clone();
        let metrics = self.inner.metrics.clone();
        let mut ctx = Context::new(Action::Replay).with_room(query.room.clone());
        ctx.sequence = Some(query.from_sequence);
        let (_, page) = self
            .inner
            .call(ctx, move |mut ctx| async move {
                let started = std::time::Instant::now();
                let page = transport.replay(&query).await?;
                metrics.replay_latency(started.elapsed());
                metrics.replayed(page.events.len() as u64);
                ctx.count = Some(page.events.len());
                Ok((ctx, page))
            })
            .await?;
        let events = deliver::deliver_page(&self.inner, page.events, None).await;
        Ok(ReplayPage { events, ..page })
    }

    /// The room's epoch and retained range.
    pub async fn room_info(&self, room: &Room) -> Result<RoomInfo> {
        self.inner.check_open()?;
        self.inner.transport.room_info(room).await
    }

    /// Runs `tap` for every event of `pattern` stored from now on, on the storing
    /// path itself: synchronously, in sequence order, none missing, with no task
    /// or channel in between — how the gateway fans out at the machine's limit.
    /// `None` when the transport cannot promise that (only the embedded memory
    /// transport can; use [`Realtime::subscribe_stream`] then) or when middleware
    /// is installed (the `deliver` action is async). Counted like a delivery.
    pub fn tap_live(
        &self,
        pattern: &RoomPattern,
        tap: crate::transport::LiveTap,
    ) -> Option<crate::fanout::TapGuard> {
        use std::sync::atomic::Ordering;
        if self.inner.check_open().is_err() || !self.inner.chain().is_empty() {
            return None;
        }
        let metrics = self.inner.metrics.clone();
        let counted: crate::transport::LiveTap = Arc::new(move |e: &Arc<Envelope>| {
            metrics.received(Some(live_lag_ms(e)));
            tap(e)
        });
        let guard = self.inner.transport.tap(pattern, counted)?;
        self.inner.live_taps.fetch_add(1, Ordering::AcqRel);
        let inner = self.inner.clone();
        Some(crate::fanout::TapGuard::new(move || {
            drop(guard);
            inner.live_taps.fetch_sub(1, Ordering::AcqRel);
        }))
    }

    /// Opens an ordered subscription (catch-up, then live) as a pull-based stream.
    pub async fn subscribe_stream(&self, options: SubscribeOptions) -> Result<Subscription> {
        self.inner.check_open()?;
        if options.rooms.is_empty() {
            return Err(Error::InvalidEvent("subscribe needs at least one room".into()));
        }
        let mut ctx = Context::new(Action::Subscribe).with_subscriber(options.subscriber_id.clone());
        ctx.patterns = options.rooms.clone();
        ctx.room = options.rooms.iter().find_map(|p| p.as_room().cloned());
        self.inner.run(ctx, |ctx| async move { Ok(ctx) }).await?;
        let (driver, starts) =
            Driver::start(self.inner.transport.clone(), self.inner.metrics.clone(), &options).await?;
        let guards = if options.uncounted {
            Vec::new()
        } else {
            options
                .rooms
                .iter()
                .map(|p| self.inner.add_listener(p.clone()))
                .collect()
        };
        Ok(Subscription {
            driver,
            starts,
            inner: self.inner.clone(),
            subscriber_id: options.subscriber_id,
            _guards: guards,
        })
    }

    /// Moves `subscriber_id`'s cursor in `room` to `sequence` (never backwards).
    pub async fn ack(&self, room: &Room, sequence: u64, subscriber_id: &str) -> Result<u64> {
        self.inner.check_open()?;
        crate::envelope::validate_token("subscriber id", subscriber_id)?;
        let transport = self.inner.transport.clone();
        let mut ctx = Context::new(Action::Ack)
            .with_room(room.clone())
            .with_subscriber(Some(subscriber_id.to_owned()));
        ctx.sequence = Some(sequence);
        let ctx = self
            .inner
            .run(ctx, move |mut ctx| async move {
                let (Some(room), Some(sub), Some(seq)) = (&ctx.room, &ctx.subscriber_id, ctx.sequence) else {
                    return Err(Error::Rejected("middleware removed the ack target".into()));
                };
                ctx.sequence = Some(transport.ack(room, sub, seq).await?);
                Ok(ctx)
            })
            .await?;
        self.inner.metrics.acked();
        Ok(ctx.sequence.unwrap_or(sequence))
    }

    /// The subscriber's cursor in `room`.
    pub async fn cursor(&self, room: &Room, subscriber_id: &str) -> Result<Option<u64>> {
        self.inner.check_open()?;
        self.inner.transport.cursor(room, subscriber_id).await
    }

    /// Stores the room's consolidated state as of `last_sequence`.
    pub async fn snapshot<T: Serialize + ?Sized>(
        &self,
        room: &Room,
        last_sequence: u64,
        state: &T,
    ) -> Result<Snapshot> {
        self.inner.check_open()?;
        let snapshot = Snapshot {
            room: room.clone(),
            last_sequence,
            state: to_payload(state)?,
            created_at: Timestamp::now(),
        };
        let stored = snapshot.clone();
        let transport = self.inner.transport.clone();
        let mut ctx = Context::new(Action::Snapshot).with_room(room.clone());
        ctx.sequence = Some(last_sequence);
        self.inner
            .run(ctx, move |ctx| async move {
                transport.require_snapshots()?.put_snapshot(snapshot).await?;
                Ok(ctx)
            })
            .await?;
        self.inner.metrics.snapshot_used();
        Ok(stored)
    }

    /// The room's latest snapshot.
    pub async fn get_snapshot(&self, room: &Room) -> Result<Option<Snapshot>> {
        self.inner.check_open()?;
        let transport = self.inner.transport.clone();
        let ctx = Context::new(Action::GetSnapshot).with_room(room.clone());
        let (_, snapshot) = self
            .inner
            .call(ctx, move |ctx| async move {
                let Some(room) = &ctx.room else {
                    return Err(Error::Rejected("middleware removed the room".into()));
                };
                let snapshot = transport.require_snapshots()?.get_snapshot(room).await?;
                Ok((ctx, snapshot))
            })
            .await?;
        self.inner.metrics.snapshot_used();
        Ok(snapshot)
    }

    /// The dead-letter queue of `room`.
    pub fn dlq(&self, room: Room) -> Dlq {
        Dlq::new(self.clone(), room)
    }

    /// Presence of `room`.
    pub fn presence(&self, room: Room) -> Presence {
        Presence::new(self.clone(), room)
    }

    /// Registers a listener of `pattern` for counts and `active_rooms` (the gateway does
    /// this per connection subscription); it is removed when the guard drops.
    pub fn track_listener(&self, pattern: RoomPattern) -> ListenerGuard {
        self.inner.add_listener(pattern)
    }

    /// Local listeners of `room`, including `scope:*` listeners of its scope.
    pub fn subscriber_count(&self, room: &Room) -> usize {
        let listeners = self.inner.listeners.lock();
        let exact = listeners
            .get(&RoomPattern::Exact(room.clone()))
            .copied()
            .unwrap_or(0);
        let wild = listeners
            .get(&RoomPattern::Scope(Arc::from(room.scope())))
            .copied()
            .unwrap_or(0);
        exact + wild
    }

    /// Whether `room` has any local listener.
    pub fn has_subscribers(&self, room: &Room) -> bool {
        self.subscriber_count(room) > 0
    }

    /// Rooms and patterns with at least one local listener.
    pub fn active_rooms(&self) -> Vec<RoomPattern> {
        let mut rooms: Vec<_> = self.inner.listeners.lock().keys().cloned().collect();
        rooms.sort_by_key(|p| p.to_string());
        rooms
    }

    /// Counters (`published`, `received`, `replayed`, ...).
    pub fn metrics(&self) -> MetricsSnapshot {
        let active = self.inner.listeners.lock().len() as u64;
        self.inner.metrics.snapshot(active)
    }

    /// Shared counters, for components (like the gateway) that add to them.
    pub fn metrics_handle(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    /// Transport health plus counters.
    pub async fn health(&self) -> Health {
        let transport = self.inner.transport.health().await;
        let status = if self.inner.closed.load(Ordering::Acquire) {
            HealthStatus::Unhealthy
        } else {
            transport.status
        };
        Health {
            status,
            transport,
            metrics: self.metrics(),
        }
    }

    /// Deletes expired events from the transport; returns how many. Runs the
    /// `prune` middleware action (`ctx.count` = events removed).
    pub async fn prune_expired(&self) -> Result<u64> {
        self.inner.check_open()?;
        let transport = self.inner.transport.clone();
        let (_, removed) = self
            .inner
            .call(Context::new(Action::Prune), move |mut ctx| async move {
                let removed = match transport.retention() {
                    Some(r) => r.prune_expired().await?,
                    None => 0,
                };
                ctx.count = Some(usize::try_from(removed).unwrap_or(usize::MAX));
                Ok((ctx, removed))
            })
            .await?;
        Ok(removed)
    }

    /// Runs the middleware chain around no operation of the engine's own: how
    /// callers outside it (the gateway's HTTP API reading room info, cursors
    /// and presence lists, kicking clients, minting tokens) let the same policy
    /// middleware see each request by its action name and refuse it.
    ///
    /// ```
    /// # async fn demo(rt: zps_core::Realtime, room: zps_core::Room) -> zps_core::Result<()> {
    /// use zps_core::middleware::{Action, Context};
    /// rt.check(Context::new(Action::RoomInfo).with_room(room.clone())).await?;
    /// let info = rt.room_info(&room).await?;
    /// # let _ = info; Ok(()) }
    /// ```
    pub async fn check(&self, ctx: Context) -> Result<Context> {
        self.inner.check_open()?;
        self.inner.run(ctx, |ctx| async move { Ok(ctx) }).await
    }

    /// Whether [`Realtime::close`] ran.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Stops the engine and closes the transport (live streams end). Idempotent.
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(task) = self.inner.presence_sweeper.lock().take() {
            task.abort();
        }
        let transport = self.inner.transport.clone();
        self.inner
            .run(Context::new(Action::Close), move |ctx| async move {
                transport.close().await?;
                Ok(ctx)
            })
            .await?;
        Ok(())
    }
}

/// An open ordered subscription. Pull with [`Subscription::next`] or turn it
/// into a `Stream` with [`Subscription::into_stream`].
pub struct Subscription {
    driver: Driver,
    starts: Vec<RoomStart>,
    inner: Arc<Inner>,
    subscriber_id: Option<String>,
    _guards: Vec<ListenerGuard>,
}

impl Subscription {
    /// Where each exact room started (epoch, latest sequence, recovered?).
    pub fn starts(&self) -> &[RoomStart] {
        &self.starts
    }

    /// The next event or discontinuity notice; `None` once the engine closed.
    pub async fn next(&mut self) -> Option<SubscriptionItem> {
        loop {
            let (item, from_history) = self.driver.next().await?;
            let SubscriptionItem::Event(envelope) = item else {
                return Some(item);
            };
            let Some(envelope) =
                deliver::deliver_one(&self.inner, envelope, self.subscriber_id.clone()).await
            else {
                // Withheld by middleware: the tracker already moved past it, no gap.
                continue;
            };
            let lag = (!from_history).then(|| live_lag_ms(&envelope));
            self.inner.metrics.received(lag);
            return Some(SubscriptionItem::Event(envelope));
        }
    }

    /// A `Stream` of items (the subscription moves into it).
    pub fn into_stream(self) -> BoxStream<'static, SubscriptionItem> {
        futures::stream::unfold(self, |mut s| async move { s.next().await.map(|item| (item, s)) }).boxed()
    }

    /// A `Stream` of events only; discontinuities are logged and skipped.
    pub fn into_events(self) -> BoxStream<'static, Arc<Envelope>> {
        self.into_stream()
            .filter_map(|item| async move {
                match item {
                    SubscriptionItem::Event(e) => Some(e),
                    SubscriptionItem::Discontinuity(d) => {
                        tracing::warn!(room = %d.room, reason = d.reason.as_str(), "history discontinuity");
                        None
                    }
                }
            })
            .boxed()
    }
}
