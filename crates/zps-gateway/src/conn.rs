//! Per-connection shared state: what the connection subscribed to, where each
//! room stands (catching up or live), and its bounded outbound queue.
//!
//! Hubs push into a connection without ever waiting: a connection whose
//! backlog exceeds `max_socket_buffered_bytes` (or whose queue is full) is
//! marked for closing as a slow consumer, and nobody else is slowed down.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use zps_core::{Discontinuity, Room, RoomPattern};
use zps_protocol::{CloseCode, DiscontinuityNotice, ServerMessage};

use crate::frames::{ConnKind, EphemeralFrame, EventFrame, Outbound, control};

/// Frames a catching-up room may buffer before it re-reads history instead.
pub(crate) const MAX_CATCHUP_BUFFER: usize = 4096;
/// Own publishes remembered for `excludeSelf`.
const MAX_SKIP_IDS: usize = 256;
/// Queue depth (items); the byte limit usually trips first.
pub(crate) const OUTBOUND_CAPACITY: usize = 4096;

/// Where one exact-room subscription stands.
pub(crate) enum Mode {
    /// History is being written by the connection task; live frames wait here.
    CatchingUp {
        buffer: VecDeque<Arc<EventFrame>>,
        overflowed: bool,
    },
    /// Live: the next frame must be `last + 1`.
    Live,
}

/// One exact-room subscription.
pub(crate) struct RoomSub {
    pub(crate) types: Option<Arc<[String]>>,
    /// Highest sequence delivered (live mode) or where catch-up resumes.
    pub(crate) last: u64,
    pub(crate) mode: Mode,
}

impl RoomSub {
    /// A subscription that starts by catching up.
    pub(crate) fn catching_up(types: Option<Arc<[String]>>, last: u64) -> Self {
        Self {
            types,
            last,
            mode: Mode::CatchingUp {
                buffer: VecDeque::new(),
                overflowed: false,
            },
        }
    }
}

/// Everything a connection listens to.
#[derive(Default)]
pub(crate) struct ConnState {
    pub(crate) exact: HashMap<Room, RoomSub>,
    pub(crate) wild: HashMap<Arc<str>, Option<Arc<[String]>>>,
    pub(crate) ephemeral: HashMap<RoomPattern, Option<Arc<[String]>>>,
    pub(crate) presence: HashSet<Room>,
    skip_ids: VecDeque<Arc<str>>,
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

    fn take_skip(&mut self, id: &str) -> bool {
        match self.skip_ids.iter().position(|s| &**s == id) {
            Some(i) => {
                self.skip_ids.remove(i);
                true
            }
            None => false,
        }
    }
}

/// Whether a type filter passes an event type.
pub(crate) fn types_ok(types: &Option<Arc<[String]>>, event_type: &str) -> bool {
    types.as_ref().is_none_or(|t| t.iter().any(|t| t == event_type))
}

/// The part of a connection that hubs can reach.
pub(crate) struct ConnShared {
    pub(crate) id: u64,
    /// Globally unique key (node + connection), used for presence and `excludeSelf`.
    pub(crate) key: Arc<str>,
    pub(crate) kind: ConnKind,
    tx: mpsc::Sender<Outbound>,
    queued: AtomicUsize,
    limit: usize,
    closing: AtomicBool,
    close_code: AtomicU16,
    kill: Notify,
    /// Rooms whose live stream showed a hole; the task re-reads their history.
    resync: Mutex<Vec<Room>>,
    wake: Notify,
    pub(crate) state: Mutex<ConnState>,
}

impl ConnShared {
    pub(crate) fn new(
        id: u64,
        key: Arc<str>,
        kind: ConnKind,
        limit: usize,
    ) -> (Arc<Self>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let conn = Arc::new(Self {
            id,
            key,
            kind,
            tx,
            queued: AtomicUsize::new(0),
            limit,
            closing: AtomicBool::new(false),
            close_code: AtomicU16::new(0),
            kill: Notify::new(),
            resync: Mutex::new(Vec::new()),
            wake: Notify::new(),
            state: Mutex::new(ConnState::default()),
        });
        (conn, rx)
    }

    /// Queues an item without waiting; a connection that cannot keep up is cut off.
    pub(crate) fn enqueue(&self, out: Outbound) {
        if self.closing.load(Ordering::Relaxed) {
            return;
        }
        let len = out.len();
        let backlog = self.queued.fetch_add(len, Ordering::Relaxed) + len;
        if backlog > self.limit {
            self.kill(CloseCode::SlowConsumer);
            return;
        }
        match self.tx.try_send(out) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.kill(CloseCode::SlowConsumer),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Records that the writer sent `n` queued bytes.
    pub(crate) fn written(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    /// Asks the connection task to close with `code` (first reason wins).
    pub(crate) fn kill(&self, code: CloseCode) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            self.close_code.store(code.code(), Ordering::Release);
            if code == CloseCode::SlowConsumer {
                metrics::counter!("zps_gateway_slow_consumers_total").increment(1);
            }
            self.kill.notify_one();
        }
    }

    /// Resolves once [`ConnShared::kill`] was called; yields the close code.
    pub(crate) async fn killed(&self) -> CloseCode {
        loop {
            if self.closing.load(Ordering::Acquire) {
                return CloseCode::from_code(self.close_code.load(Ordering::Acquire))
                    .unwrap_or(CloseCode::InternalError);
            }
            self.kill.notified().await;
        }
    }

    /// Resolves when some room needs a history re-read.
    pub(crate) async fn resync_needed(&self) {
        loop {
            if !self.resync.lock().is_empty() {
                return;
            }
            self.wake.notified().await;
        }
    }

    /// Rooms to re-read (drained).
    pub(crate) fn take_resync(&self) -> Vec<Room> {
        std::mem::take(&mut *self.resync.lock())
    }

    /// A live event from a room hub (`via_wildcard` for `scope:*` hubs).
    pub(crate) fn push_event(&self, frame: &Arc<EventFrame>, via_wildcard: bool) {
        let e = &frame.envelope;
        let mut st = self.state.lock();
        if via_wildcard {
            // An exact subscription of the same room delivers it (in order, once).
            if st.exact.contains_key(&e.room) {
                return;
            }
            let Some(types) = st.wild.get(e.room.scope()) else {
                return;
            };
            if !types_ok(types, &e.event_type) || st.take_skip(&e.id) {
                return;
            }
            drop(st);
            self.enqueue(frame.encoded(self.kind));
            return;
        }
        let Some(sub) = st.exact.get_mut(&e.room) else {
            return;
        };
        match &mut sub.mode {
            Mode::CatchingUp { buffer, overflowed } => {
                if buffer.len() < MAX_CATCHUP_BUFFER {
                    buffer.push_back(frame.clone());
                } else {
                    *overflowed = true;
                }
            }
            Mode::Live => {
                if e.sequence <= sub.last {
                    return;
                }
                if e.sequence > sub.last + 1 {
                    // This connection's history was behind the hub (a stale shared read):
                    // fetch the hole, then continue from the buffer.
                    let mut buffer = VecDeque::new();
                    buffer.push_back(frame.clone());
                    sub.mode = Mode::CatchingUp {
                        buffer,
                        overflowed: false,
                    };
                    drop(st);
                    self.resync.lock().push(e.room.clone());
                    self.wake.notify_one();
                    return;
                }
                sub.last = e.sequence;
                let pass = types_ok(&sub.types, &e.event_type);
                if !pass || st.take_skip(&e.id) {
                    return;
                }
                drop(st);
                self.enqueue(frame.encoded(self.kind));
            }
        }
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
            sub.last = d.earliest_sequence.saturating_sub(1);
            sub.mode = Mode::Live;
        }
        drop(st);
        self.enqueue(control(
            self.kind,
            &ServerMessage::Discontinuity(DiscontinuityNotice {
                room: d.room.to_string(),
                reason: d.reason.as_str().to_owned(),
                epoch: d.epoch.clone(),
                earliest_sequence: d.earliest_sequence,
            }),
        ));
    }

    /// An ephemeral event from the hub of `pattern`.
    pub(crate) fn push_ephemeral(&self, frame: &EphemeralFrame, pattern: &RoomPattern) {
        if frame.event.origin.as_deref() == Some(&*self.key) {
            return;
        }
        let st = self.state.lock();
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
        drop(st);
        self.enqueue(frame.encoded(self.kind, false));
    }

    /// A presence change of a room this connection watches.
    pub(crate) fn push_presence(&self, frame: &EphemeralFrame) {
        if !self.state.lock().presence.contains(&frame.event.room) {
            return;
        }
        self.enqueue(frame.encoded(self.kind, true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zps_core::{DiscontinuityReason, EphemeralEvent, Timestamp};

    fn conn() -> (Arc<ConnShared>, mpsc::Receiver<Outbound>) {
        ConnShared::new(1, Arc::from("node-1"), ConnKind::Ws, 1 << 20)
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
            .insert(room("chat:1"), RoomSub::catching_up(None, 0));
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

    #[test]
    fn a_backlog_over_the_limit_cuts_the_connection() {
        let (c, _rx) = ConnShared::new(1, Arc::from("n"), ConnKind::Ws, 10);
        c.enqueue(Outbound::Ws("0123456789".into()));
        assert!(!c.closing.load(Ordering::Relaxed));
        c.enqueue(Outbound::Ws("x".into()));
        assert_eq!(
            c.close_code.load(Ordering::Relaxed),
            CloseCode::SlowConsumer.code()
        );
    }
}
