//! Room hubs: one per room (or `scope:*` pattern) per gateway process, shared
//! by every connection subscribed to it. A hub serializes each event once and
//! pushes the shared bytes to its members without waiting.
//!
//! A hub is fed one of two ways:
//! - a **live tap** ([`Realtime::tap_live`]), where the transport offers one
//!   (the embedded memory transport): the storing path itself pushes to the
//!   members, in sequence order, with no task or channel in between — the
//!   publish is answered after its frames are queued for every local
//!   subscriber, as a broadcast loop does;
//! - otherwise an ordered engine subscription (live only, gaps repaired from
//!   history by the engine) drained by a task of the hub's own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use std::hash::BuildHasher;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use zps_core::fast_hash::FastHash;
use zps_core::{
    Discontinuity, Envelope, PRESENCE_JOINED, PRESENCE_LEFT, Realtime, Room, RoomPattern, SubscribeOptions,
    SubscriptionItem, TapGuard,
};

use crate::conn::ConnShared;
use crate::frames::{EphemeralFrame, EventFrame};

/// What a hub carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum HubKind {
    /// Stored events (ordered).
    Events,
    /// Ephemeral events except presence announcements.
    Ephemeral,
    /// Presence announcements.
    Presence,
}

/// A hub's connections: a plain list (fan-out walks it; joins and leaves are rare).
type Members = RwLock<Vec<Arc<ConnShared>>>;

/// What keeps a hub's input running; stopped when the last member leaves.
enum Feed {
    Tap(TapGuard),
    Task(JoinHandle<()>),
}

struct Hub {
    /// The room of an exact-room hub, as members key their subscription by it
    /// (the same `Arc`, so member lookups compare pointers, not names).
    room: Option<Room>,
    members: Members,
    /// The last sequence pushed to members (exact-room event hubs).
    last: AtomicU64,
    /// `scope:*` hub: members filter by their own subscriptions.
    wild: bool,
    closed: AtomicBool,
    feed: Mutex<Option<Feed>>,
}

impl Hub {
    fn new(pattern: &RoomPattern) -> Self {
        Self {
            room: pattern.as_room().cloned(),
            wild: pattern.is_wildcard(),
            members: RwLock::new(Vec::new()),
            last: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            feed: Mutex::new(None),
        }
    }

    /// Pushes a stored event to every member.
    fn event(&self, e: &Arc<Envelope>) {
        let frame = Arc::new(EventFrame::new(e.clone()));
        let room = self.room.as_ref().unwrap_or(&e.room);
        let hash = FastHash.hash_one(room);
        // `last` moves under the read lock; `join` reads it under the write lock.
        let members = self.members.read();
        self.last.fetch_max(e.sequence, Ordering::AcqRel);
        for m in members.iter() {
            m.push_event(&frame, room, hash, self.wild);
        }
        crate::frame_counters::counters().fanout();
    }

    fn discontinuity(&self, d: &Discontinuity) {
        let members = self.members.read();
        self.last
            .store(d.earliest_sequence.saturating_sub(1), Ordering::Release);
        for m in members.iter() {
            m.push_discontinuity(d, self.wild);
        }
    }

    /// Stops the input. Called without any lock held: removing a tap waits for
    /// a tap call in progress, which takes the members lock.
    fn stop(&self) {
        let feed = self.feed.lock().take();
        match feed {
            Some(Feed::Task(task)) => task.abort(),
            Some(Feed::Tap(guard)) => drop(guard),
            None => {}
        }
    }
}

#[derive(Default)]
struct Slot {
    hub: OnceCell<Arc<Hub>>,
}

/// All hubs of one gateway.
pub(crate) struct Hubs {
    engine: Realtime,
    slots: Mutex<HashMap<(HubKind, RoomPattern), Arc<Slot>>>,
}

impl Hubs {
    pub(crate) fn new(engine: Realtime) -> Self {
        Self {
            engine,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Adds `conn` to the hub of `pattern`, starting the hub if needed. Returns the
    /// last sequence the hub pushed before `conn` joined: every later event reaches
    /// `conn`, so history up to this position is all a catch-up must cover. An
    /// exact-room subscription is re-keyed with the hub's own `Room` (see `Hub::room`).
    pub(crate) async fn join(
        &self,
        kind: HubKind,
        pattern: &RoomPattern,
        conn: &Arc<ConnShared>,
    ) -> zps_core::Result<u64> {
        let key = (kind, pattern.clone());
        loop {
            let slot = self.slots.lock().entry(key.clone()).or_default().clone();
            let hub = slot
                .hub
                .get_or_try_init(|| start(self.engine.clone(), kind, pattern.clone()))
                .await?
                .clone();
            // Holding the map lock while joining excludes a concurrent teardown.
            let slots = self.slots.lock();
            if hub.closed.load(Ordering::Acquire) {
                continue;
            }
            let mut members = hub.members.write();
            // Read under the write lock: the hub moves `last` under the read lock.
            let last = hub.last.load(Ordering::Acquire);
            if !members.iter().any(|m| m.id == conn.id) {
                members.push(conn.clone());
            }
            drop(members);
            drop(slots);
            if kind == HubKind::Events
                && let Some(room) = &hub.room
            {
                conn.rekey(room);
            }
            return Ok(last);
        }
    }

    /// Removes `conn` from the hub of `pattern`; the last member stops the hub.
    pub(crate) fn leave(&self, kind: HubKind, pattern: &RoomPattern, conn_id: u64) {
        let key = (kind, pattern.clone());
        let stopped = {
            let mut slots = self.slots.lock();
            let Some(hub) = slots.get(&key).and_then(|s| s.hub.get().cloned()) else {
                return;
            };
            let mut members = hub.members.write();
            if let Some(i) = members.iter().position(|m| m.id == conn_id) {
                members.swap_remove(i);
            }
            if !members.is_empty() {
                return;
            }
            hub.closed.store(true, Ordering::Release);
            slots.remove(&key);
            drop(members);
            hub
        };
        stopped.stop();
    }

    /// Running hubs (for health and metrics).
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().len()
    }
}

async fn start(engine: Realtime, kind: HubKind, pattern: RoomPattern) -> zps_core::Result<Arc<Hub>> {
    let hub = Arc::new(Hub::new(&pattern));
    let feed = match kind {
        HubKind::Events => {
            let tapped = hub.clone();
            match engine.tap_live(&pattern, Arc::new(move |e: &Arc<Envelope>| tapped.event(e))) {
                Some(guard) => {
                    if let Some(room) = pattern.as_room() {
                        // Everything stored before the tap existed is history.
                        let info = engine.room_info(room).await?;
                        hub.last.fetch_max(info.last_sequence, Ordering::AcqRel);
                    }
                    Feed::Tap(guard)
                }
                None => Feed::Task(subscribed(&engine, &hub, pattern).await?),
            }
        }
        HubKind::Ephemeral | HubKind::Presence => Feed::Task(ephemeral(&engine, &hub, kind, pattern).await?),
    };
    *hub.feed.lock() = Some(feed);
    Ok(hub)
}

/// Feeds `hub` from an ordered engine subscription (providers without taps).
async fn subscribed(
    engine: &Realtime,
    hub: &Arc<Hub>,
    pattern: RoomPattern,
) -> zps_core::Result<JoinHandle<()>> {
    let mut opts = SubscribeOptions::room(pattern).live_only();
    opts.uncounted = true;
    let mut sub = engine.subscribe_stream(opts).await?;
    if let Some(start) = sub.starts().first() {
        hub.last.store(start.start_after, Ordering::Release);
    }
    let hub = hub.clone();
    Ok(tokio::spawn(async move {
        while let Some(item) = sub.next().await {
            match item {
                SubscriptionItem::Event(e) => hub.event(&e),
                SubscriptionItem::Discontinuity(d) => hub.discontinuity(&d),
            }
        }
    }))
}

/// Feeds `hub` with ephemeral events or presence announcements.
async fn ephemeral(
    engine: &Realtime,
    hub: &Arc<Hub>,
    kind: HubKind,
    pattern: RoomPattern,
) -> zps_core::Result<JoinHandle<()>> {
    let presence = kind == HubKind::Presence;
    let filter = presence.then(|| vec![PRESENCE_JOINED.to_owned(), PRESENCE_LEFT.to_owned()]);
    let mut stream = engine
        .subscribe_ephemeral(std::slice::from_ref(&pattern), filter)
        .await?;
    let hub = hub.clone();
    Ok(tokio::spawn(async move {
        while let Some(e) = stream.next().await {
            let announcement = e.event_type == PRESENCE_JOINED || e.event_type == PRESENCE_LEFT;
            if announcement != presence {
                continue;
            }
            let frame = EphemeralFrame::new(e);
            for m in hub.members.read().iter() {
                if presence {
                    m.push_presence(&frame);
                } else {
                    m.push_ephemeral(&frame, &pattern);
                }
            }
        }
    }))
}
