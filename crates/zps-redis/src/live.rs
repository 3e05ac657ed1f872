//! The live path: one subscriber connection per transport, routed in-process
//! through [`LocalFanout`].
//!
//! * The first local subscription of a room SUBSCRIBEs its channel (SSUBSCRIBE in
//!   sharded mode); the last one to go UNSUBSCRIBEs it. `scope:*` maps to one
//!   PSUBSCRIBE per scope. Changes are reconciled under one async lock, so an
//!   UNSUBSCRIBE can never overtake a later SUBSCRIBE of the same channel.
//! * Publishing never delivers locally by itself. Every delivery, to this
//!   process and to others, arrives through the subscriber connection, in the
//!   order the publish script (which runs atomically, in sequence order)
//!   published it. There is therefore no echo to suppress and no node id on the
//!   wire, unlike room adapters that deliver locally first and drop their own
//!   message when Redis hands it back.
//! * Exact-room messages (`message`/`smessage`) feed one hub and pattern
//!   messages (`pmessage`) another, so a process subscribed to both `chat:1` and
//!   `chat:*` does not hand the doubly-received message to each stream twice.
//! * Each live stream remembers the last epoch it saw per room. A message with
//!   a different epoch is preceded by [`LiveSignal::Reset`].
//! * When the subscriber connection comes back (connection killed, Redis
//!   restarted, failover), every channel is subscribed again, every subscribed
//!   room's epoch is re-read (persisting mode), and then every stream gets
//!   [`LiveSignal::Lagged`]`(None)` so the engine re-reads history from its
//!   cursors: whatever was published while the connection was down is found there.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use fred::clients::Client;
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::types::config::Options;
use fred::types::{ClusterHash, Value};
use fred::types::{Message, MessageKind};

use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use zps_core::fanout::{FanoutItem, LocalFanout};
use zps_core::{Envelope, EphemeralEvent, LiveSignal, Room, RoomPattern};

use crate::codec;
use crate::config::Keys;

/// What travels through the in-process event hubs.
#[derive(Debug)]
pub(crate) enum HubMsg {
    /// A stored event and the epoch it was stored under (none for envelopes fanned
    /// out on behalf of another transport).
    Event {
        epoch: Option<Arc<str>>,
        envelope: Arc<Envelope>,
    },
    /// The room's current epoch, re-read after a reconnect.
    Epoch { room: Room, epoch: Arc<str> },
}

/// A Redis subscription this process needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    /// A room's event channel.
    EventRoom(Room),
    /// Every event channel of a scope.
    EventScope(Arc<str>),
    /// A room's ephemeral channel.
    EphemeralRoom(Room),
    /// Every ephemeral channel of a scope.
    EphemeralScope(Arc<str>),
}

impl Target {
    fn is_pattern(&self) -> bool {
        matches!(self, Self::EventScope(_) | Self::EphemeralScope(_))
    }
}

/// In-process hubs and the set of Redis subscriptions they need.
pub(crate) struct Hub {
    pub(crate) events_exact: LocalFanout<Arc<HubMsg>>,
    pub(crate) events_scope: LocalFanout<Arc<HubMsg>>,
    pub(crate) ephemeral_exact: LocalFanout<Arc<EphemeralEvent>>,
    pub(crate) ephemeral_scope: LocalFanout<Arc<EphemeralEvent>>,
    /// "Everything may have been missed" notices; `None` once closed.
    control: Mutex<Option<broadcast::Sender<()>>>,
    /// How many local streams want each target.
    wanted: Mutex<HashMap<Target, usize>>,
    /// What the subscriber connection is subscribed to; the lock serializes changes.
    active: tokio::sync::Mutex<HashSet<Target>>,
    keys: Keys,
    subscriber: Client,
}

impl Hub {
    pub(crate) fn new(keys: Keys, subscriber: Client) -> Self {
        let capacity = keys.config().channel_capacity;
        Self {
            events_exact: LocalFanout::new(capacity),
            events_scope: LocalFanout::new(capacity),
            ephemeral_exact: LocalFanout::new(capacity),
            ephemeral_scope: LocalFanout::new(capacity),
            control: Mutex::new(Some(broadcast::channel(16).0)),
            wanted: Mutex::new(HashMap::new()),
            active: tokio::sync::Mutex::new(HashSet::new()),
            keys,
            subscriber,
        }
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    fn sharded(&self) -> bool {
        self.keys.config().sharded_pubsub
    }

    fn channel_of(&self, target: &Target) -> String {
        match target {
            Target::EventRoom(r) => self.keys.event_channel(r),
            Target::EventScope(s) => self.keys.event_pattern(s),
            Target::EphemeralRoom(r) => self.keys.ephemeral_channel(r),
            Target::EphemeralScope(s) => self.keys.ephemeral_pattern(s),
        }
    }

    /// Tells every live stream that messages may have been missed.
    pub(crate) fn lagged_all(&self) {
        if let Some(tx) = self.control.lock().as_ref() {
            let _ = tx.send(());
        }
    }

    fn control_stream(&self) -> BoxStream<'static, ()> {
        match self.control.lock().as_ref() {
            Some(tx) => BroadcastStream::new(tx.subscribe()).map(|_| ()).boxed(),
            None => stream::empty().boxed(),
        }
    }

    /// Ends every stream.
    pub(crate) fn close(&self) {
        self.control.lock().take();
        self.events_exact.close();
        self.events_scope.close();
        self.ephemeral_exact.close();
        self.ephemeral_scope.close();
    }

    /// Number of Redis subscriptions in place.
    pub(crate) fn active_count(&self) -> usize {
        self.wanted.lock().len()
    }

    /// Registers interest in `targets` and subscribes whatever is not subscribed yet.
    /// Returns once the server confirmed every subscription.
    pub(crate) async fn acquire(self: &Arc<Self>, targets: Vec<Target>) -> Result<Guard, fred::error::Error> {
        {
            let mut wanted = self.wanted.lock();
            for t in &targets {
                *wanted.entry(t.clone()).or_insert(0) += 1;
            }
        }
        let guard = Guard {
            hub: self.clone(),
            targets,
        };
        let mut active = self.active.lock().await;
        let missing: Vec<Target> = guard
            .targets
            .iter()
            .filter(|t| !active.contains(*t))
            .cloned()
            .collect();
        // On error the guard drops and releases the interest it registered.
        self.subscribe_targets(&missing).await?;
        active.extend(missing);
        Ok(guard)
    }

    /// Subscribes `targets` and returns once the server has processed the subscriptions.
    async fn subscribe_targets(&self, targets: &[Target]) -> Result<(), fred::error::Error> {
        let (patterns, exact): (Vec<&Target>, Vec<&Target>) = targets.iter().partition(|t| t.is_pattern());
        let mut classic = false;
        if !patterns.is_empty() {
            let names: Vec<String> = patterns.iter().map(|t| self.channel_of(t)).collect();
            self.subscriber.psubscribe(names).await?;
            classic = true;
        }
        if !exact.is_empty() {
            let names: Vec<String> = exact.iter().map(|t| self.channel_of(t)).collect();
            if self.sharded() {
                // Shard channels of different rooms live in different slots: one command
                // each. fred resolves SSUBSCRIBE on the server's confirmation.
                for name in names {
                    self.subscriber.ssubscribe(name).await?;
                }
            } else {
                self.subscriber.subscribe(names).await?;
                classic = true;
            }
        }
        if classic {
            self.barrier().await?;
        }
        Ok(())
    }

    /// fred resolves SUBSCRIBE / PSUBSCRIBE once they are written, not once the server
    /// processed them. A PING on the same connection is answered only after everything
    /// sent before it, so once it returns the subscriptions are in place and every
    /// message published from then on reaches this connection.
    async fn barrier(&self) -> Result<(), fred::error::Error> {
        let mut options = Options::default();
        if self.subscriber.is_clustered() {
            // fred sends classic (P)SUBSCRIBE to the node owning the client id's slot.
            options.cluster_hash = Some(ClusterHash::Custom(fred::util::redis_keyslot(
                self.subscriber.id().as_bytes(),
            )));
        }
        let _: Value = self.subscriber.with_options(&options).ping(None).await?;
        Ok(())
    }

    async fn unsubscribe_targets(&self, targets: &[Target]) -> Result<(), fred::error::Error> {
        let (patterns, exact): (Vec<&Target>, Vec<&Target>) = targets.iter().partition(|t| t.is_pattern());
        // Never call these with an empty list: that would mean "everything".
        if !patterns.is_empty() {
            let names: Vec<String> = patterns.iter().map(|t| self.channel_of(t)).collect();
            self.subscriber.punsubscribe(names).await?;
        }
        if exact.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = exact.iter().map(|t| self.channel_of(t)).collect();
        if self.sharded() {
            for name in names {
                self.subscriber.sunsubscribe(name).await?;
            }
            Ok(())
        } else {
            self.subscriber.unsubscribe(names).await
        }
    }

    fn release(self: &Arc<Self>, targets: &[Target]) {
        let mut idle = Vec::new();
        {
            let mut wanted = self.wanted.lock();
            for t in targets {
                if let Some(n) = wanted.get_mut(t) {
                    *n -= 1;
                    if *n == 0 {
                        wanted.remove(t);
                        idle.push(t.clone());
                    }
                }
            }
        }
        if idle.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let hub = self.clone();
        rt.spawn(async move {
            let mut active = hub.active.lock().await;
            // Re-check under the lock: someone may have wanted it again meanwhile.
            let gone: Vec<Target> = {
                let wanted = hub.wanted.lock();
                idle.into_iter()
                    .filter(|t| !wanted.contains_key(t) && active.contains(t))
                    .collect()
            };
            if gone.is_empty() {
                return;
            }
            for t in &gone {
                active.remove(t);
            }
            if let Err(e) = hub.unsubscribe_targets(&gone).await {
                tracing::debug!(error = %e, "unsubscribe failed (the connection may be gone)");
            }
        });
    }

    /// Drops every Redis subscription of this transport (closing over an injected client).
    pub(crate) async fn unsubscribe_all(&self) {
        let mut active = self.active.lock().await;
        let all: Vec<Target> = active.drain().collect();
        self.wanted.lock().clear();
        if !all.is_empty()
            && let Err(e) = self.unsubscribe_targets(&all).await
        {
            tracing::debug!(error = %e, "unsubscribe on close failed");
        }
    }

    /// Subscribes everything wanted again (after the subscriber connection came back).
    pub(crate) async fn resubscribe(&self) -> Result<Vec<Room>, fred::error::Error> {
        let mut active = self.active.lock().await;
        let wanted: Vec<Target> = self.wanted.lock().keys().cloned().collect();
        active.clear();
        self.subscribe_targets(&wanted).await?;
        let rooms = wanted
            .iter()
            .filter_map(|t| match t {
                Target::EventRoom(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        active.extend(wanted);
        Ok(rooms)
    }

    /// Routes one message from the subscriber connection.
    pub(crate) fn route(&self, msg: &Message) {
        let channel: &str = &msg.channel;
        let Some(bytes) = msg.value.as_bytes() else {
            return;
        };
        let from_pattern = matches!(msg.kind, MessageKind::PMessage);
        if self.keys.is_event_channel(channel) {
            match codec::decode_wire_event(bytes) {
                Ok(wire) => {
                    let room = wire.event.room.clone();
                    let item = Arc::new(HubMsg::Event {
                        epoch: wire.epoch.map(Arc::from),
                        envelope: Arc::new(wire.event),
                    });
                    if from_pattern {
                        self.events_scope.send(&room, item);
                    } else {
                        self.events_exact.send(&room, item);
                    }
                }
                Err(e) => tracing::warn!(%channel, error = %e, "dropping an undecodable live message"),
            }
        } else if self.keys.is_ephemeral_channel(channel) {
            match codec::decode_ephemeral(bytes) {
                Ok(event) => {
                    let room = event.room.clone();
                    if from_pattern {
                        self.ephemeral_scope.send(&room, event);
                    } else {
                        self.ephemeral_exact.send(&room, event);
                    }
                }
                Err(e) => tracing::warn!(%channel, error = %e, "dropping an undecodable ephemeral message"),
            }
        }
    }

    /// Announces a room's current epoch to every stream that follows it.
    pub(crate) fn announce_epoch(&self, room: &Room, epoch: Arc<str>) {
        let item = Arc::new(HubMsg::Epoch {
            room: room.clone(),
            epoch,
        });
        self.events_exact.send(room, item.clone());
        self.events_scope.send(room, item);
    }

    /// A live stream over `patterns` (its Redis subscriptions are taken by [`Hub::acquire`]).
    pub(crate) fn live_stream(
        &self,
        patterns: &[RoomPattern],
        guard: Guard,
        known: HashMap<Room, Arc<str>>,
    ) -> LiveAdapter {
        let (scopes, exact): (Vec<RoomPattern>, Vec<RoomPattern>) =
            patterns.iter().cloned().partition(RoomPattern::is_wildcard);
        // Two or three inputs merged by `select` (polled in turn, inline): unlike
        // `select_all`, no FuturesUnordered task and waker per input, which cost a
        // room's hub ~5 % of the gateway's CPU per event (docs/performance.md).
        let mut inputs: BoxStream<'static, Input> = self.control_stream().map(|()| Input::Control).boxed();
        if !scopes.is_empty() {
            let scoped = self.events_scope.subscribe(&scopes).map(Input::Fanout);
            inputs = stream::select(scoped, inputs).boxed();
        }
        if !exact.is_empty() {
            let exact = self.events_exact.subscribe(&exact).map(Input::Fanout);
            inputs = stream::select(exact, inputs).boxed();
        }
        LiveAdapter {
            inputs,
            known,
            pending: None,
            _guard: guard,
        }
    }

    /// An ephemeral stream over `patterns`.
    pub(crate) fn ephemeral_stream(
        &self,
        patterns: &[RoomPattern],
        guard: Guard,
    ) -> BoxStream<'static, Arc<EphemeralEvent>> {
        let (scopes, exact): (Vec<RoomPattern>, Vec<RoomPattern>) =
            patterns.iter().cloned().partition(RoomPattern::is_wildcard);
        let mut inputs = Vec::with_capacity(2);
        if !exact.is_empty() {
            inputs.push(self.ephemeral_exact.subscribe(&exact));
        }
        if !scopes.is_empty() {
            inputs.push(self.ephemeral_scope.subscribe(&scopes));
        }
        stream::select_all(inputs)
            .filter_map(move |item| {
                // The guard lives as long as the stream.
                let _ = &guard;
                futures::future::ready(match item {
                    FanoutItem::Item(e) => Some(e),
                    // Ephemeral events are best-effort: a lagging reader skips.
                    FanoutItem::Lagged(_) => None,
                })
            })
            .boxed()
    }
}

/// Keeps a stream's Redis subscriptions alive; dropping it releases them.
pub(crate) struct Guard {
    hub: Arc<Hub>,
    targets: Vec<Target>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.hub.release(&self.targets);
    }
}

enum Input {
    Fanout(FanoutItem<Arc<HubMsg>>),
    Control,
}

/// Turns hub messages into [`LiveSignal`]s, announcing epoch changes per room.
pub(crate) struct LiveAdapter {
    inputs: BoxStream<'static, Input>,
    known: HashMap<Room, Arc<str>>,
    pending: Option<LiveSignal>,
    _guard: Guard,
}

impl LiveAdapter {
    /// Records `epoch` for `room`; true when it differs from a previously seen one.
    fn epoch_changed(&mut self, room: &Room, epoch: &Arc<str>) -> bool {
        match self.known.get_mut(room) {
            Some(known) if known == epoch => false,
            Some(known) => {
                *known = epoch.clone();
                true
            }
            None => {
                self.known.insert(room.clone(), epoch.clone());
                false
            }
        }
    }
}

impl Stream for LiveAdapter {
    type Item = LiveSignal;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LiveSignal>> {
        let this = self.get_mut();
        if let Some(signal) = this.pending.take() {
            return Poll::Ready(Some(signal));
        }
        loop {
            let input = match this.inputs.poll_next_unpin(cx) {
                Poll::Ready(Some(input)) => input,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            let msg = match input {
                Input::Control => return Poll::Ready(Some(LiveSignal::Lagged(None))),
                Input::Fanout(FanoutItem::Lagged(p)) => {
                    return Poll::Ready(Some(LiveSignal::Lagged(Some(p))));
                }
                Input::Fanout(FanoutItem::Item(msg)) => msg,
            };
            match &*msg {
                HubMsg::Event { epoch, envelope } => {
                    let event = LiveSignal::Event(envelope.clone());
                    if let Some(epoch) = epoch
                        && this.epoch_changed(&envelope.room, epoch)
                    {
                        this.pending = Some(event);
                        return Poll::Ready(Some(LiveSignal::Reset {
                            room: envelope.room.clone(),
                            epoch: epoch.to_string(),
                        }));
                    }
                    return Poll::Ready(Some(event));
                }
                HubMsg::Epoch { room, epoch } => {
                    if this.epoch_changed(room, epoch) {
                        return Poll::Ready(Some(LiveSignal::Reset {
                            room: room.clone(),
                            epoch: epoch.to_string(),
                        }));
                    }
                }
            }
        }
    }
}
