//! In-process fan-out by room and by scope. Every provider delivers to local
//! subscribers through a [`LocalFanout`]: the memory transport directly, the
//! database providers from their LISTEN / SUBSCRIBE / change-stream reader.
//!
//! Channels are bounded `tokio::sync::broadcast` queues, one per room and one
//! per wildcard scope that has subscribers. A slow reader never blocks a
//! publisher: it lags, and the lag is reported so the engine re-reads history.

use std::collections::HashMap;
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

/// Routes messages to local subscribers of a room or of its scope.
pub struct LocalFanout<T> {
    rooms: RwLock<HashMap<Room, broadcast::Sender<T>>>,
    scopes: RwLock<HashMap<Arc<str>, broadcast::Sender<T>>>,
    capacity: usize,
    closed: AtomicBool,
    created_since_sweep: AtomicUsize,
}

impl<T: Clone + Send + 'static> LocalFanout<T> {
    /// A hub whose channels hold `capacity` messages per room.
    pub fn new(capacity: usize) -> Self {
        Self {
            rooms: RwLock::new(HashMap::new()),
            scopes: RwLock::new(HashMap::new()),
            capacity: capacity.max(1),
            closed: AtomicBool::new(false),
            created_since_sweep: AtomicUsize::new(0),
        }
    }

    /// Delivers to subscribers of `room` and of `room`'s scope; returns how many
    /// channels had at least one receiver.
    pub fn send(&self, room: &Room, item: T) -> usize {
        let mut reached = 0;
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

    /// Whether anyone listens to `room` or its scope.
    pub fn has_listeners(&self, room: &Room) -> bool {
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
        self.rooms
            .read()
            .iter()
            .filter(|(_, tx)| tx.receiver_count() > 0)
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Opens a stream over the given patterns. Ends when the hub is closed.
    pub fn subscribe(&self, patterns: &[RoomPattern]) -> BoxStream<'static, FanoutItem<T>> {
        if self.closed.load(Ordering::Acquire) {
            return stream::empty().boxed();
        }
        let mut streams = Vec::with_capacity(patterns.len());
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

    /// Ends every stream and refuses new subscriptions.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
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
    map: &RwLock<HashMap<K, broadcast::Sender<T>>>,
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

impl<'a> From<&'a Room> for Room {
    fn from(r: &'a Room) -> Self {
        r.clone()
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
