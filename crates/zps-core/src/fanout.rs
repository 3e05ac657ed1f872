//! In-process fan-out by room and by scope. Every provider delivers to local
//! subscribers through a [`LocalFanout`]: the memory transport directly, the
//! database providers from their LISTEN / SUBSCRIBE / change-stream reader.
//!
//! Channels are bounded `tokio::sync::broadcast` queues, one per room and one
//! per wildcard scope that has subscribers. A slow reader never blocks a
//! publisher: it lags, and the lag is reported so the engine re-reads history.
//!
//! Beside channels, a room or scope can have *taps*: callbacks run on the
//! sending path itself, in send order, with no task hop and no channel to
//! overflow. A tap must be quick and must never block or call back into the
//! transport (the gateway's tap only queues bytes for its connections).

use crate::fast_hash::FastMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use parking_lot::RwLock;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::room::{Room, RoomPattern};

/// Default per-room channel depth.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 128;

/// What a fan-out stream yields.
#[derive(Debug, Clone)]
pub enum FanoutItem<T> {
    /// A message.
    Item(T),
    /// The reader fell behind on this pattern and missed messages.
    Lagged(RoomPattern),
}

/// A callback run synchronously, in send order, for every message of a room or scope.
pub type Tap<T> = Arc<dyn Fn(&T) + Send + Sync>;

struct TapList<T> {
    rooms: FastMap<Room, Vec<(u64, Tap<T>)>>,
    scopes: FastMap<Arc<str>, Vec<(u64, Tap<T>)>>,
    next_id: u64,
}

/// Keeps a tap registered; dropping it removes the tap (after any call in progress).
#[must_use = "dropping the guard removes the tap"]
pub struct TapGuard {
    remove: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl TapGuard {
    /// A guard that runs `remove` when dropped (for transports wrapping another's taps).
    pub fn new(remove: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self {
            remove: Some(Box::new(remove)),
        }
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        if let Some(remove) = self.remove.take() {
            remove();
        }
    }
}

impl std::fmt::Debug for TapGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TapGuard")
    }
}

/// Routes messages to local subscribers of a room or of its scope.
pub struct LocalFanout<T> {
    rooms: RwLock<FastMap<Room, broadcast::Sender<T>>>,
    scopes: RwLock<FastMap<Arc<str>, broadcast::Sender<T>>>,
    taps: Arc<RwLock<TapList<T>>>,
    /// Registered taps; `send` skips the tap lock while zero.
    tap_count: Arc<AtomicUsize>,
    /// Set once a channel exists; `send` skips the channel locks until then.
    has_channels: AtomicBool,
    capacity: usize,
    closed: AtomicBool,
    created_since_sweep: AtomicUsize,
}

impl<T: Clone + Send + 'static> LocalFanout<T> {
    /// A hub whose channels hold `capacity` messages per room.
    pub fn new(capacity: usize) -> Self {
        Self {
            rooms: RwLock::new(FastMap::default()),
            scopes: RwLock::new(FastMap::default()),
            taps: Arc::new(RwLock::new(TapList {
                rooms: FastMap::default(),
                scopes: FastMap::default(),
                next_id: 0,
            })),
            tap_count: Arc::new(AtomicUsize::new(0)),
            has_channels: AtomicBool::new(false),
            capacity: capacity.max(1),
            closed: AtomicBool::new(false),
            created_since_sweep: AtomicUsize::new(0),
        }
    }

    /// Delivers to subscribers of `room` and of `room`'s scope; returns how many
    /// channels and taps were reached. Taps run before this returns.
    pub fn send(&self, room: &Room, item: T) -> usize {
        let mut reached = 0;
        if self.tap_count.load(Ordering::Acquire) > 0 {
            let taps = self.taps.read();
            for (_, tap) in taps.rooms.get(room).into_iter().flatten() {
                tap(&item);
                reached += 1;
            }
            for (_, tap) in taps.scopes.get(room.scope()).into_iter().flatten() {
                tap(&item);
                reached += 1;
            }
        }
        if !self.has_channels.load(Ordering::Acquire) {
            return reached;
        }
        if let Some(tx) = self.rooms.read().get(room)
            && tx.send(item.clone()).is_ok()
        {
            reached += 1;
        }
        if let Some(tx) = self.scopes.read().get(room.scope())
            && tx.send(item).is_ok()
        {
            reached += 1;
        }
        reached
    }

    /// Runs `tap` for every message of `pattern` sent from now on, synchronously
    /// on the sending path, until the guard drops.
    pub fn tap(&self, pattern: &RoomPattern, tap: Tap<T>) -> TapGuard {
        let mut taps = self.taps.write();
        let id = taps.next_id;
        taps.next_id += 1;
        match pattern {
            RoomPattern::Exact(room) => taps.rooms.entry(room.clone()).or_default().push((id, tap)),
            RoomPattern::Scope(scope) => taps.scopes.entry(scope.clone()).or_default().push((id, tap)),
        }
        self.tap_count.fetch_add(1, Ordering::AcqRel);
        drop(taps);
        let list = Arc::downgrade(&self.taps);
        let count = self.tap_count.clone();
        let pattern = pattern.clone();
        TapGuard::new(move || {
            let Some(list) = list.upgrade() else { return };
            let mut taps = list.write();
            let mut removed = false;
            let mut remove = |map: &mut Vec<(u64, Tap<T>)>| {
                let before = map.len();
                map.retain(|(i, _)| *i != id);
                removed = map.len() < before;
                map.is_empty()
            };
            match &pattern {
                RoomPattern::Exact(room) => {
                    if taps.rooms.get_mut(room).is_some_and(&mut remove) {
                        taps.rooms.remove(room);
                    }
                }
                RoomPattern::Scope(scope) => {
                    if taps.scopes.get_mut(scope).is_some_and(&mut remove) {
                        taps.scopes.remove(scope);
                    }
                }
            }
            if removed {
                count.fetch_sub(1, Ordering::AcqRel);
            }
        })
    }

    /// Whether anyone listens to `room` or its scope.
    pub fn has_listeners(&self, room: &Room) -> bool {
        {
            let taps = self.taps.read();
            if taps.rooms.contains_key(room) || taps.scopes.contains_key(room.scope()) {
                return true;
            }
        }
        let direct = self
            .rooms
            .read()
            .get(room)
            .is_some_and(|tx| tx.receiver_count() > 0);
        direct
            || self
                .scopes
                .read()
                .get(room.scope())
                .is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Rooms (exact, not wildcard) that currently have local receivers.
    pub fn listened_rooms(&self) -> Vec<Room> {
        let mut rooms: Vec<Room> = self
            .rooms
            .read()
            .iter()
            .filter(|(_, tx)| tx.receiver_count() > 0)
            .map(|(r, _)| r.clone())
            .collect();
        rooms.extend(self.taps.read().rooms.keys().cloned());
        rooms.sort();
        rooms.dedup();
        rooms
    }

    /// Opens a stream over the given patterns. Ends when the hub is closed.
    pub fn subscribe(&self, patterns: &[RoomPattern]) -> BoxStream<'static, FanoutItem<T>> {
        if self.closed.load(Ordering::Acquire) {
            return stream::empty().boxed();
        }
        let mut streams = Vec::with_capacity(patterns.len());
        self.has_channels.store(true, Ordering::Release);
        for pattern in patterns {
            let rx = match pattern {
                RoomPattern::Exact(room) => subscribe_in(&self.rooms, room, self.capacity),
                RoomPattern::Scope(scope) => subscribe_in(&self.scopes, scope, self.capacity),
            };
            let pattern = pattern.clone();
            streams.push(
                BroadcastStream::new(rx)
                    .map(move |r| match r {
                        Ok(item) => FanoutItem::Item(item),
                        Err(BroadcastStreamRecvError::Lagged(_)) => FanoutItem::Lagged(pattern.clone()),
                    })
                    .boxed(),
            );
        }
        self.maybe_sweep(patterns.len());
        stream::select_all(streams).boxed()
    }

    /// Like [`LocalFanout::subscribe`] for best-effort traffic (ephemeral events):
    /// a lagging reader silently skips what it missed.
    pub fn subscribe_lossy(&self, patterns: &[RoomPattern]) -> BoxStream<'static, T> {
        self.subscribe(patterns)
            .filter_map(|item| async move {
                match item {
                    FanoutItem::Item(e) => Some(e),
                    FanoutItem::Lagged(_) => None,
                }
            })
            .boxed()
    }

    /// Ends every stream, removes every tap and refuses new subscriptions.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        {
            let mut taps = self.taps.write();
            taps.rooms.clear();
            taps.scopes.clear();
            self.tap_count.store(0, Ordering::Release);
        }
        self.rooms.write().clear();
        self.scopes.write().clear();
    }

    fn maybe_sweep(&self, created: usize) {
        // Drop channels nobody listens to, amortized over subscriptions so
        // abandoned rooms do not accumulate forever.
        let n = self.created_since_sweep.fetch_add(created, Ordering::Relaxed) + created;
        if n < 1024 {
            return;
        }
        self.created_since_sweep.store(0, Ordering::Relaxed);
        self.rooms.write().retain(|_, tx| tx.receiver_count() > 0);
        self.scopes.write().retain(|_, tx| tx.receiver_count() > 0);
    }
}

fn subscribe_in<K, T, Q>(
    map: &RwLock<FastMap<K, broadcast::Sender<T>>>,
    key: &Q,
    capacity: usize,
) -> broadcast::Receiver<T>
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq + for<'a> From<&'a Q>,
    Q: std::hash::Hash + Eq + ?Sized,
    T: Clone,
{
    if let Some(tx) = map.read().get(key) {
        return tx.subscribe();
    }
    map.write()
        .entry(K::from(key))
        .or_insert_with(|| broadcast::channel(capacity).0)
        .subscribe()
}

impl LocalFanout<Arc<crate::envelope::Envelope>> {
    /// The stream as the engine reads it from a transport: events, and a lag notice
    /// per pattern whose channel overflowed (the engine then re-reads history).
    pub fn live_signals(&self, patterns: &[RoomPattern]) -> crate::transport::LiveStream {
        use crate::transport::LiveSignal;
        self.subscribe(patterns)
            .map(|item| match item {
                FanoutItem::Item(e) => LiveSignal::Event(e),
                FanoutItem::Lagged(p) => LiveSignal::Lagged(Some(p)),
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> Room {
        Room::parse(s).unwrap()
    }

    #[tokio::test]
    async fn routes_by_room_and_scope() {
        let hub = LocalFanout::<u32>::new(8);
        let mut exact = hub.subscribe(&[RoomPattern::parse("chat:1").unwrap()]);
        let mut wild = hub.subscribe(&[RoomPattern::parse("chat:*").unwrap()]);
        assert_eq!(hub.send(&room("chat:1"), 1), 2);
        assert_eq!(hub.send(&room("chat:2"), 2), 1);
        assert_eq!(hub.send(&room("order:1"), 3), 0);
        assert!(matches!(exact.next().await, Some(FanoutItem::Item(1))));
        assert!(matches!(wild.next().await, Some(FanoutItem::Item(1))));
        assert!(matches!(wild.next().await, Some(FanoutItem::Item(2))));
        assert!(hub.has_listeners(&room("chat:9")));
        assert!(!hub.has_listeners(&room("order:1")));
        hub.close();
        assert!(exact.next().await.is_none());
        assert!(wild.next().await.is_none());
    }

    #[test]
    fn taps_run_in_send_order_until_their_guard_drops() {
        let hub = LocalFanout::<u32>::new(8);
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let tap = |tag: &'static str| {
            let seen = seen.clone();
            Arc::new(move |i: &u32| seen.lock().push((tag, *i))) as Tap<u32>
        };
        let exact = hub.tap(&RoomPattern::parse("chat:1").unwrap(), tap("exact"));
        let wild = hub.tap(&RoomPattern::parse("chat:*").unwrap(), tap("wild"));
        assert_eq!(hub.send(&room("chat:1"), 1), 2);
        assert_eq!(hub.send(&room("chat:2"), 2), 1);
        assert_eq!(hub.send(&room("order:1"), 3), 0);
        drop(exact);
        hub.send(&room("chat:1"), 4);
        drop(wild);
        assert_eq!(hub.send(&room("chat:1"), 5), 0);
        assert_eq!(
            *seen.lock(),
            [("exact", 1), ("wild", 1), ("wild", 2), ("wild", 4)]
        );
    }

    #[tokio::test]
    async fn slow_reader_lags_instead_of_blocking() {
        let hub = LocalFanout::<u32>::new(2);
        let mut s = hub.subscribe(&[RoomPattern::parse("chat:1").unwrap()]);
        for i in 0..5 {
            hub.send(&room("chat:1"), i);
        }
        assert!(matches!(s.next().await, Some(FanoutItem::Lagged(_))));
        assert!(matches!(s.next().await, Some(FanoutItem::Item(3))));
        assert!(matches!(s.next().await, Some(FanoutItem::Item(4))));
    }
}
