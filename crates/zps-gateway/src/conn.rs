//! Per-connection shared state: what the connection subscribed to, where each
//! room stands (catching up or live), and its outbound queue — all under one
//! lock, so a hub's push costs one uncontended lock, one lookup and one queue
//! push, and wakes the connection task only when it was idle.
//!
//! Hubs push into a connection without ever waiting: a connection whose
//! backlog exceeds `max_socket_buffered_bytes` (or whose queue is full) is
//! marked for closing as a slow consumer, and nobody else is slowed down.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::task::{Poll, Waker};

use std::time::Duration;

use parking_lot::Mutex;
use zps_core::room_sync::{Delivery, Notice, RoomSync, SyncConfig};
use zps_core::{Discontinuity, Room, RoomPattern};
use zps_protocol::{CloseCode, DiscontinuityNotice, ServerMessage};

use crate::frames::{ConnKind, EphemeralFrame, EventFrame, Outbound, control};
use crate::outbox::{Outbox, Signal};

/// Frames a room may hold behind a hole or a catch-up before it re-reads history instead.
pub(crate) const MAX_CATCHUP_BUFFER: usize = 4096;
/// Own publishes remembered for `excludeSelf`.
const MAX_SKIP_IDS: usize = 256;

use zps_core::fast_hash::{FastHash, FastMap as RoomMap, FastSet};

/// The ordering rule tuned for the gateway: the hub feeds each room in order, so
/// a hole (a stale shared read) is read back at once; reads are direct calls.
pub(crate) const SYNC: SyncConfig = SyncConfig {
    max_buffer: MAX_CATCHUP_BUFFER,
    reorder_window: Duration::ZERO,
    fetch_spacing: Duration::ZERO,
    fetch_timeout: None,
    retry: zps_core::Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_secs(5),
        max_attempts: None,
    },
    history: true,
};

/// One exact-room subscription: its type filter and where its delivery stands.
pub(crate) struct RoomSub {
    pub(crate) types: Option<Arc<[String]>>,
    /// Boxed: the hub's per-event lookup stays on a small entry.
    pub(crate) sync: Box<RoomSync<Arc<EventFrame>>>,
}

impl RoomSub {
    /// A subscription whose start is being worked out: live frames are held.
    pub(crate) fn starting(types: Option<Arc<[String]>>) -> Self {
        Self {
            types,
            sync: Box::new(RoomSync::unpositioned(SYNC)),
        }
    }
}

/// Everything a connection listens to, and its outbound queue.
#[derive(Default)]
pub(crate) struct ConnState {
    /// Exact rooms (hashbrown's map: hubs look up with a hash computed once per event).
    pub(crate) exact: hashbrown::HashMap<Room, RoomSub, FastHash>,
    pub(crate) wild: RoomMap<Arc<str>, Option<Arc<[String]>>>,
    pub(crate) ephemeral: RoomMap<RoomPattern, Option<Arc<[String]>>>,
    pub(crate) presence: FastSet<Room>,
    skip_ids: VecDeque<Arc<str>>,
    pub(crate) out: Outbox,
}

impl ConnState {
    /// Subscriptions counted against `max_subscriptions`.
    pub(crate) fn subscription_count(&self) -> usize {
        self.exact.len() + self.wild.len() + self.ephemeral.len() + self.presence.len()
    }

    /// Remembers an id this connection published with `excludeSelf`.
    pub(crate) fn skip_id(&mut self, id: Arc<str>) {
        if self.skip_ids.len() == MAX_SKIP_IDS {
            self.skip_ids.pop_front();
        }
        self.skip_ids.push_back(id);
    }

    /// What `room`'s sync has ready to hand out, in order, type filter applied.
    pub(crate) fn take_ready(&mut self, room: &Room) -> Vec<Delivery<Arc<EventFrame>>> {
        let Some(sub) = self.exact.get_mut(room) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some(d) = sub.sync.poll_deliver() {
            match &d {
                Delivery::Event(f, _) if !types_ok(&sub.types, &f.envelope.event_type) => {}
                _ => out.push(d),
            }
        }
        out
    }

    fn take_skip(&mut self, id: &str) -> bool {
        if self.skip_ids.is_empty() {
            return false;
        }
        match self.skip_ids.iter().position(|s| &**s == id) {
            Some(i) => {
                self.skip_ids.remove(i);
                true
            }
            None => false,
        }
    }
}

/// A `discontinuity` frame for a notice of a room's sync (`epoch` when the notice
/// does not carry one).
pub(crate) fn notice_frame(kind: ConnKind, room: &Room, n: &Notice, epoch: &str) -> Outbound {
    control(
        kind,
        &ServerMessage::Discontinuity(DiscontinuityNotice {
            room: room.to_string(),
            reason: n.reason.as_str().to_owned(),
            epoch: n.epoch.clone().unwrap_or_else(|| epoch.to_owned()),
            earliest_sequence: n.earliest_sequence,
        }),
    )
}

/// Whether a type filter passes an event type.
pub(crate) fn types_ok(types: &Option<Arc<[String]>>, event_type: &str) -> bool {
    types.as_ref().is_none_or(|t| t.iter().any(|t| t == event_type))
}

fn wake(w: Option<Waker>) {
    if let Some(w) = w {
        w.wake();
    }
}

/// A request to a connection from outside its task (the HTTP API), answered
/// on `reply` once the connection did it.
#[derive(Debug)]
pub(crate) enum Command {
    /// Enter a room's presence as this connection (kept alive and left by it).
    PresenceEnter {
        room: Room,
        metadata: Option<zps_core::Metadata>,
        reply: tokio::sync::oneshot::Sender<Result<serde_json::Value, crate::api::ApiError>>,
    },
    /// Leave a room's presence.
    PresenceLeave {
        room: Room,
        reply: tokio::sync::oneshot::Sender<Result<serde_json::Value, crate::api::ApiError>>,
    },
    /// An operator closes the connection: tell the client why, then close (4403).
    Kick { reason: String },
}

/// Who a connection belongs to, once known (after `init`, or at SSE start).
#[derive(Debug, Clone, Default)]
pub(crate) struct Owner {
    /// The token's `sub`.
    pub(crate) subject: Option<String>,
    /// The subscriber id the connection uses.
    pub(crate) subscriber: Option<String>,
}

/// The part of a connection that hubs can reach.
pub(crate) struct ConnShared {
    pub(crate) id: u64,
    /// Globally unique key (node + connection), used for presence and `excludeSelf`.
    pub(crate) key: Arc<str>,
    pub(crate) kind: ConnKind,
    limit: usize,
    pub(crate) state: Mutex<ConnState>,
    owner: std::sync::OnceLock<Owner>,
    /// An operator closed it (counted once, even while it is still closing).
    kicked: std::sync::atomic::AtomicBool,
}

impl ConnShared {
    pub(crate) fn new(id: u64, key: Arc<str>, kind: ConnKind, limit: usize) -> Arc<Self> {
        Arc::new(Self {
            id,
            key,
            kind,
            limit,
            state: Mutex::new(ConnState::default()),
            owner: std::sync::OnceLock::new(),
            kicked: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Marks the connection kicked; false when it already was.
    pub(crate) fn mark_kicked(&self) -> bool {
        !self.kicked.swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Records who the connection belongs to (once).
    pub(crate) fn set_owner(&self, owner: Owner) {
        let _ = self.owner.set(owner);
    }

    /// The token subject of the connection's owner.
    pub(crate) fn owner(&self) -> Option<String> {
        self.owner.get().and_then(|o| o.subject.clone())
    }

    /// The connection's subscriber id.
    pub(crate) fn subscriber(&self) -> Option<String> {
        self.owner.get().and_then(|o| o.subscriber.clone())
    }

    /// Hands a command to the connection task.
    pub(crate) fn command(&self, c: Command) {
        let w = self.state.lock().out.command(c);
        wake(w);
    }

    /// Holds frames back while this connection's own publishes are stored.
    pub(crate) fn hold(&self) {
        self.state.lock().out.hold();
    }

    /// Queues publish answers, then the frames held since [`ConnShared::hold`].
    pub(crate) fn answer(&self, answers: Vec<Outbound>) {
        let w = self.state.lock().out.answer(answers, self.limit);
        wake(w);
    }

    /// Records that the writer sent `n` bytes it took from the queue.
    pub(crate) fn written(&self, n: usize) {
        self.state.lock().out.written(n);
    }

    /// Asks the connection task to close with `code` (first reason wins).
    pub(crate) fn kill(&self, code: CloseCode) {
        let w = self.state.lock().out.close(code);
        wake(w);
    }

    /// The connection task's next job, after settling `written` bytes of the
    /// previous batch. Frames land in `buffer`.
    pub(crate) fn next_signal<'a>(
        &'a self,
        buffer: &'a mut VecDeque<Outbound>,
        mut written: usize,
    ) -> impl Future<Output = Signal> + 'a {
        poll_fn(move |cx| {
            let mut st = self.state.lock();
            st.out.written(std::mem::take(&mut written));
            match st.out.poll(cx, buffer) {
                Some(s) => Poll::Ready(s),
                None => Poll::Pending,
            }
        })
    }

    /// Resolves once [`ConnShared::kill`] was called; yields the close code.
    pub(crate) fn killed(&self) -> impl Future<Output = CloseCode> + '_ {
        poll_fn(move |cx| match self.state.lock().out.poll_close(cx) {
            Some(code) => Poll::Ready(code),
            None => Poll::Pending,
        })
    }

    /// The next queued item, without waiting.
    pub(crate) fn pop_queued(&self) -> Option<Outbound> {
        self.state.lock().out.pop()
    }

    /// Keys `room`'s subscription with this `Room` (a hub's own, so the hub's
    /// lookups match by pointer).
    pub(crate) fn rekey(&self, room: &Room) {
        let mut st = self.state.lock();
        if let Some(sub) = st.exact.remove(room) {
            st.exact.insert(room.clone(), sub);
        }
    }

    /// Rooms to re-read (drained).
    pub(crate) fn take_resync(&self) -> Vec<Room> {
        self.state.lock().out.take_resync()
    }

    /// A live event from a room hub. `room` is the event's room as the hub
    /// holds it and `hash` its [`FastHash`] hash, both computed once per event
    /// for every member; `via_wildcard` for `scope:*` hubs.
    pub(crate) fn push_event(&self, frame: &Arc<EventFrame>, room: &Room, hash: u64, via_wildcard: bool) {
        let e = &frame.envelope;
        let mut st = self.state.lock();
        if via_wildcard {
            // An exact subscription of the same room delivers it (in order, once).
            if st.exact.raw_entry().from_key_hashed_nocheck(hash, room).is_some() {
                return;
            }
            let Some(types) = st.wild.get(e.room.scope()) else {
                return;
            };
            if !types_ok(types, &e.event_type) || st.take_skip(&e.id) {
                return;
            }
            let w = st.out.push(frame.encoded(self.kind), self.limit);
            drop(st);
            return wake(w);
        }
        let hashbrown::hash_map::RawEntryMut::Occupied(entry) =
            st.exact.raw_entry_mut().from_key_hashed_nocheck(hash, room)
        else {
            return;
        };
        let sub = entry.into_mut();
        let Some(frame) = sub.sync.on_live(frame.clone()) else {
            // Held behind a hole or a read in progress; a hole nobody reads yet is
            // the connection task's to read (a stale shared read was behind the hub).
            if sub.sync.needs_fetch() && !sub.sync.is_catching_up() {
                let w = st.out.resync(e.room.clone());
                drop(st);
                wake(w);
            }
            return;
        };
        let more = sub.sync.buffered() > 0;
        let pass = types_ok(&sub.types, &e.event_type);
        let w = if pass && !st.take_skip(&e.id) {
            st.out.push(frame.encoded(self.kind), self.limit)
        } else {
            None
        };
        // It filled a hole: what waited behind it follows.
        let w = if more {
            w.or(self.deliver_held(&mut st, room))
        } else {
            w
        };
        drop(st);
        wake(w);
    }

    /// Queues what `room`'s sync has ready (under the connection's lock, so it
    /// lands after everything handed out before).
    fn deliver_held(&self, st: &mut ConnState, room: &Room) -> Option<Waker> {
        let mut waker = None;
        for d in st.take_ready(room) {
            let out = match d {
                Delivery::Event(f, _) => f.encoded(self.kind),
                Delivery::Notice(n) => notice_frame(self.kind, room, &n, ""),
            };
            waker = waker.or(st.out.push(out, self.limit));
        }
        waker
    }

    /// A room's history was reset while subscribed (directly or through `scope:*`).
    pub(crate) fn push_discontinuity(&self, d: &Discontinuity, via_wildcard: bool) {
        let mut st = self.state.lock();
        if via_wildcard {
            // Pattern subscribers hear about resets of the rooms they receive.
            if st.exact.contains_key(&d.room) || !st.wild.contains_key(d.room.scope()) {
                return;
            }
        } else {
            let Some(sub) = st.exact.get_mut(&d.room) else {
                return;
            };
            // The hub restarts the room at the new epoch's first event.
            sub.sync
                .on_discontinuity(d.reason, d.earliest_sequence, Some(d.epoch.clone()));
            let w = self.deliver_held(&mut st, &d.room);
            drop(st);
            return wake(w);
        }
        let notice = control(
            self.kind,
            &ServerMessage::Discontinuity(DiscontinuityNotice {
                room: d.room.to_string(),
                reason: d.reason.as_str().to_owned(),
                epoch: d.epoch.clone(),
                earliest_sequence: d.earliest_sequence,
            }),
        );
        let w = st.out.push(notice, self.limit);
        drop(st);
        wake(w);
    }

    /// An ephemeral event from the hub of `pattern`.
    pub(crate) fn push_ephemeral(&self, frame: &EphemeralFrame, pattern: &RoomPattern) {
        if frame.event.origin.as_deref() == Some(&*self.key) {
            return;
        }
        let mut st = self.state.lock();
        // An exact subscription of the same room delivers it once.
        if pattern.is_wildcard()
            && st
                .ephemeral
                .contains_key(&RoomPattern::Exact(frame.event.room.clone()))
        {
            return;
        }
        let Some(types) = st.ephemeral.get(pattern) else {
            return;
        };
        if !types_ok(types, &frame.event.event_type) {
            return;
        }
        let w = st.out.push(frame.encoded(self.kind, false), self.limit);
        drop(st);
        wake(w);
    }

    /// A presence change of a room this connection watches.
    pub(crate) fn push_presence(&self, frame: &EphemeralFrame) {
        let mut st = self.state.lock();
        if !st.presence.contains(&frame.event.room) {
            return;
        }
        let w = st.out.push(frame.encoded(self.kind, true), self.limit);
        drop(st);
        wake(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zps_core::{DiscontinuityReason, EphemeralEvent, Timestamp};

    fn conn() -> (Arc<ConnShared>, Queue) {
        let c = ConnShared::new(1, Arc::from("node-1"), ConnKind::Ws, 1 << 20);
        (c.clone(), Queue(c))
    }

    /// Reads what was queued, as the connection task would.
    struct Queue(Arc<ConnShared>);

    impl Queue {
        fn try_recv(&mut self) -> Result<Outbound, ()> {
            self.0.pop_queued().ok_or(())
        }
    }

    fn text(o: Outbound) -> String {
        match o {
            Outbound::Ws(t) => t.as_str().to_owned(),
            other => panic!("{other:?}"),
        }
    }

    fn room(s: &str) -> Room {
        Room::parse(s).unwrap()
    }

    #[test]
    fn wildcard_subscribers_hear_about_resets_once() {
        let (c, mut rx) = conn();
        c.state.lock().wild.insert(Arc::from("chat"), None);
        let d = Discontinuity {
            room: room("chat:1"),
            reason: DiscontinuityReason::StreamReset,
            epoch: "e2".into(),
            earliest_sequence: 1,
            requested_from: 9,
        };
        c.push_discontinuity(&d, true);
        let got = text(rx.try_recv().unwrap());
        assert!(
            got.contains(r#""type":"discontinuity""#) && got.contains(r#""epoch":"e2""#),
            "{got}"
        );
        // With an exact subscription too, only the exact hub reports it.
        c.state
            .lock()
            .exact
            .insert(room("chat:1"), RoomSub::starting(None));
        c.push_discontinuity(&d, true);
        assert!(rx.try_recv().is_err());
        c.push_discontinuity(&d, false);
        assert!(rx.try_recv().is_ok());
        // Another scope hears nothing.
        c.push_discontinuity(
            &Discontinuity {
                room: room("order:1"),
                ..d
            },
            true,
        );
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn an_exact_and_a_wildcard_ephemeral_subscription_deliver_once() {
        let (c, mut rx) = conn();
        let exact = RoomPattern::parse("chat:1").unwrap();
        let wild = RoomPattern::parse("chat:*").unwrap();
        c.state.lock().ephemeral.insert(exact.clone(), None);
        c.state.lock().ephemeral.insert(wild.clone(), None);
        let frame = EphemeralFrame::new(Arc::new(EphemeralEvent {
            event_type: "typing".into(),
            room: room("chat:1"),
            payload: zps_core::envelope::null_payload(),
            emitted_at: Timestamp::now(),
            metadata: None,
            origin: None,
        }));
        c.push_ephemeral(&frame, &wild);
        c.push_ephemeral(&frame, &exact);
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err(), "delivered twice");
    }
}
