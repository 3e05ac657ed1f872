//! Room hubs: one engine subscription per room (or `scope:*` pattern) per
//! gateway process, shared by every connection subscribed to it. The engine
//! delivers each room in order without gaps; the hub serializes each event
//! once and pushes the shared bytes to its members without waiting.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use zps_core::{PRESENCE_JOINED, PRESENCE_LEFT, Realtime, RoomPattern, SubscribeOptions, SubscriptionItem};

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

type Members = Arc<RwLock<HashMap<u64, Arc<ConnShared>>>>;

struct Hub {
    members: Members,
    /// The last sequence pushed to members (exact-room event hubs).
    last: Arc<AtomicU64>,
    closed: AtomicBool,
    task: JoinHandle<()>,
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
    /// `conn`, so history up to this position is all a catch-up must cover.
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
            // Read under the write lock: the hub updates `last` under the read lock.
            let last = hub.last.load(Ordering::Acquire);
            members.insert(conn.id, conn.clone());
            drop(members);
            drop(slots);
            return Ok(last);
        }
    }

    /// Removes `conn` from the hub of `pattern`; the last member stops the hub.
    pub(crate) fn leave(&self, kind: HubKind, pattern: &RoomPattern, conn_id: u64) {
        let key = (kind, pattern.clone());
        let mut slots = self.slots.lock();
        let Some(hub) = slots.get(&key).and_then(|s| s.hub.get().cloned()) else {
            return;
        };
        let mut members = hub.members.write();
        members.remove(&conn_id);
        if members.is_empty() {
            hub.closed.store(true, Ordering::Release);
            hub.task.abort();
            slots.remove(&key);
        }
    }

    /// Running hubs (for health and metrics).
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().len()
    }
}

async fn start(engine: Realtime, kind: HubKind, pattern: RoomPattern) -> zps_core::Result<Arc<Hub>> {
    let members: Members = Arc::default();
    let last = Arc::new(AtomicU64::new(0));
    let task = match kind {
        HubKind::Events => {
            let mut opts = SubscribeOptions::room(pattern.clone()).live_only();
            opts.uncounted = true;
            let mut sub = engine.subscribe_stream(opts).await?;
            if let Some(start) = sub.starts().first() {
                last.store(start.start_after, Ordering::Release);
            }
            let (members, last) = (members.clone(), last.clone());
            let wild = pattern.is_wildcard();
            tokio::spawn(async move {
                while let Some(item) = sub.next().await {
                    match item {
                        SubscriptionItem::Event(e) => {
                            let frame = Arc::new(EventFrame::new(e));
                            let members = members.read();
                            last.store(frame.sequence(), Ordering::Release);
                            for m in members.values() {
                                m.push_event(&frame, wild);
                            }
                            crate::hot::hot().fanouts.increment(1);
                        }
                        SubscriptionItem::Discontinuity(d) => {
                            let members = members.read();
                            last.store(d.earliest_sequence.saturating_sub(1), Ordering::Release);
                            for m in members.values() {
                                m.push_discontinuity(&d, wild);
                            }
                        }
                    }
                }
            })
        }
        HubKind::Ephemeral | HubKind::Presence => {
            let presence = kind == HubKind::Presence;
            let filter = presence.then(|| vec![PRESENCE_JOINED.to_owned(), PRESENCE_LEFT.to_owned()]);
            let mut stream = engine
                .subscribe_ephemeral(std::slice::from_ref(&pattern), filter)
                .await?;
            let members = members.clone();
            tokio::spawn(async move {
                while let Some(e) = stream.next().await {
                    let announcement = e.event_type == PRESENCE_JOINED || e.event_type == PRESENCE_LEFT;
                    if announcement != presence {
                        continue;
                    }
                    let frame = EphemeralFrame::new(e);
                    for m in members.read().values() {
                        if presence {
                            m.push_presence(&frame);
                        } else {
                            m.push_ephemeral(&frame, &pattern);
                        }
                    }
                }
            })
        }
    };
    Ok(Arc::new(Hub {
        members,
        last,
        closed: AtomicBool::new(false),
        task,
    }))
}
