//! The embedded in-memory transport: the default provider.
//!
//! History is kept per room in a bounded ring (oldest events are evicted past
//! [`MemoryConfig::max_events_per_room`]); sequences, ack cursors, snapshots,
//! dead letters and presence live in this process and vanish with it — which
//! is why every room reports the process's random epoch, so a client resuming
//! against a restarted server is told its position is gone.

use crate::transport::{DeadLetterStore, EphemeralBus, PresenceStore, Retention, SnapshotStore};
use std::collections::{HashMap, VecDeque};

use crate::fast_hash::FastMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use crate::envelope::{DlqEntry, Envelope, EphemeralEvent, NewDlqEntry, NewEvent, PresenceMember, Snapshot};
use crate::error::{Error, Result};
use crate::fanout::{DEFAULT_CHANNEL_CAPACITY, LocalFanout, TapGuard};
use crate::room::{Room, RoomPattern};
use crate::time::Timestamp;
use crate::transport::{
    Capabilities, DlqRoom, EphemeralStream, LiveStream, LiveTap, PublishOutcome, ReplayPage, ReplayQuery,
    RoomInfo, Transport, TransportHealth,
};

/// Settings of the in-memory transport.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// History kept per room; older events are evicted (and their ids forgotten).
    pub max_events_per_room: usize,
    /// Dead letters kept per room; the oldest is dropped past this.
    pub max_dlq_per_room: usize,
    /// Depth of each room's live channel; a subscriber further behind re-reads history.
    pub channel_capacity: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_events_per_room: 10_000,
            max_dlq_per_room: 10_000,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
        }
    }
}

#[derive(Default)]
struct RoomLog {
    last_sequence: u64,
    events: VecDeque<Arc<Envelope>>,
    /// Idempotency index: a 64-bit keyed hash of the id → its sequence, so
    /// storing an event copies no id; a hit is confirmed against the stored
    /// event's id.
    ids: FastMap<u64, u64>,
    /// Live taps of this room, run under the room lock (see `Transport::tap`).
    taps: Vec<(u64, LiveTap)>,
    /// Cursors, snapshot and dead letters: most rooms have none, so they live
    /// out of line and only once used.
    extras: Option<Box<RoomExtras>>,
}

#[derive(Default)]
struct RoomExtras {
    cursors: FastMap<String, u64>,
    snapshot: Option<Snapshot>,
    dlq: VecDeque<DlqEntry>,
    next_dlq_id: u64,
}

impl RoomLog {
    fn extras(&mut self) -> &mut RoomExtras {
        self.extras.get_or_insert_with(Box::default)
    }

    fn find(&self, sequence: u64) -> Option<&Arc<Envelope>> {
        let idx = self.events.binary_search_by_key(&sequence, |e| e.sequence).ok()?;
        self.events.get(idx)
    }

    fn evict_front(&mut self, ids: &ahash::RandomState) {
        if let Some(old) = self.events.pop_front() {
            self.forget_id(ids, &old);
        }
    }

    fn forget_id(&mut self, ids: &ahash::RandomState, e: &Envelope) {
        let key = ids.hash_one(&e.id);
        if self.ids.get(&key) == Some(&e.sequence) {
            self.ids.remove(&key);
        }
    }

    /// The stored event with this id, if it is still retained.
    fn by_id(&self, ids: &ahash::RandomState, id: &str) -> Option<&Arc<Envelope>> {
        let seq = *self.ids.get(&ids.hash_one(id))?;
        self.find(seq).filter(|e| e.id == id)
    }

    /// Drops expired events at the front so the retained range starts at a live event.
    fn trim_expired_front(&mut self, ids: &ahash::RandomState, now: Timestamp) {
        while self.events.front().is_some_and(|e| e.is_expired_at(now)) {
            self.evict_front(ids);
        }
    }

    fn info(&self, epoch: &str) -> RoomInfo {
        RoomInfo {
            epoch: epoch.to_owned(),
            last_sequence: self.last_sequence,
            earliest_sequence: self.events.front().map_or(self.last_sequence + 1, |e| e.sequence),
        }
    }
}

#[derive(Default)]
struct MemberState {
    member: Option<PresenceMember>,
    connections: HashMap<String, Instant>,
}

/// Room logs are spread over this many maps, so publishers on different
/// cores rarely meet on one lock word.
const ROOM_SHARDS: usize = 16;

struct Inner {
    config: MemoryConfig,
    epoch: String,
    rooms: [RwLock<FastMap<Room, Arc<Mutex<RoomLog>>>>; ROOM_SHARDS],
    /// Picks a room's shard; also keys the idempotency index.
    shard_hasher: ahash::RandomState,
    next_tap: std::sync::atomic::AtomicU64,
    live: LocalFanout<Arc<Envelope>>,
    ephemeral: LocalFanout<Arc<EphemeralEvent>>,
    presence: Mutex<HashMap<Room, HashMap<String, MemberState>>>,
    closed: AtomicBool,
}

/// In-process storage and fan-out; cheap to clone (shared state).
#[derive(Clone)]
pub struct MemoryTransport {
    inner: Arc<Inner>,
}

impl Default for MemoryTransport {
    fn default() -> Self {
        Self::new(MemoryConfig::default())
    }
}

impl MemoryTransport {
    /// A transport with the given bounds.
    pub fn new(config: MemoryConfig) -> Self {
        let capacity = config.channel_capacity;
        Self {
            inner: Arc::new(Inner {
                epoch: format!("mem-{}", uuid::Uuid::now_v7().simple()),
                config,
                rooms: std::array::from_fn(|_| RwLock::new(FastMap::default())),
                shard_hasher: ahash::RandomState::new(),
                next_tap: std::sync::atomic::AtomicU64::new(0),
                live: LocalFanout::new(capacity),
                ephemeral: LocalFanout::new(capacity),
                presence: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// This process's epoch (every room shares it).
    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    fn shard(&self, room: &Room) -> &RwLock<FastMap<Room, Arc<Mutex<RoomLog>>>> {
        let i = self.inner.shard_hasher.hash_one(room) as usize % ROOM_SHARDS;
        &self.inner.rooms[i]
    }

    fn log(&self, room: &Room) -> Arc<Mutex<RoomLog>> {
        let shard = self.shard(room);
        if let Some(log) = shard.read().get(room) {
            return log.clone();
        }
        shard.write().entry(room.clone()).or_default().clone()
    }

    fn existing_log(&self, room: &Room) -> Option<Arc<Mutex<RoomLog>>> {
        self.shard(room).read().get(room).cloned()
    }

    fn all_logs(&self) -> Vec<Arc<Mutex<RoomLog>>> {
        self.inner
            .rooms
            .iter()
            .flat_map(|shard| shard.read().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: false,
            history: true,
            cross_process: false,
            reorder_window: Duration::ZERO,
        }
    }

    crate::offer_every_capability!();

    async fn publish(&self, event: NewEvent) -> Result<PublishOutcome> {
        self.check_open()?;
        let log = self.log(&event.room);
        let mut log = log.lock();
        let ids = &self.inner.shard_hasher;
        if let Some(original) = log.by_id(ids, &event.id) {
            return Ok(PublishOutcome {
                envelope: original.clone(),
                duplicate: true,
            });
        }
        log.last_sequence += 1;
        let envelope = Arc::new(event.into_envelope(log.last_sequence));
        log.ids.insert(ids.hash_one(&envelope.id), envelope.sequence);
        log.events.push_back(envelope.clone());
        while log.events.len() > self.inner.config.max_events_per_room {
            log.evict_front(ids);
        }
        // Sent while the room lock is held, so live order equals sequence order.
        for (_, tap) in &log.taps {
            tap(&envelope);
        }
        self.inner.live.send(&envelope.room, envelope.clone());
        Ok(PublishOutcome {
            envelope,
            duplicate: false,
        })
    }

    async fn fanout(&self, envelope: Arc<Envelope>) -> Result<()> {
        self.check_open()?;
        let room = envelope.room.clone();
        self.inner.live.send(&room, envelope);
        Ok(())
    }

    async fn subscribe(&self, patterns: &[RoomPattern]) -> Result<LiveStream> {
        self.check_open()?;
        Ok(self.inner.live.live_signals(patterns))
    }

    fn tap(&self, pattern: &RoomPattern, tap: LiveTap) -> Option<TapGuard> {
        // Called under the room lock, in sequence order, nothing in between to overflow.
        self.check_open().ok()?;
        let RoomPattern::Exact(room) = pattern else {
            return Some(self.inner.live.tap(pattern, tap));
        };
        let id = self.inner.next_tap.fetch_add(1, Ordering::Relaxed);
        let log = self.log(room);
        log.lock().taps.push((id, tap));
        Some(TapGuard::new(move || log.lock().taps.retain(|(i, _)| *i != id)))
    }

    async fn replay(&self, query: &ReplayQuery) -> Result<ReplayPage> {
        self.check_open()?;
        let Some(log) = self.existing_log(&query.room) else {
            return Ok(ReplayPage {
                events: Vec::new(),
                scanned_to: query.from_sequence,
                exhausted: true,
            });
        };
        let now = Timestamp::now();
        let limit = query.effective_limit();
        let upper = query.to_sequence.unwrap_or(u64::MAX);
        let mut log = log.lock();
        log.trim_expired_front(&self.inner.shard_hasher, now);
        let start = log.events.partition_point(|e| e.sequence <= query.from_sequence);
        let mut page = ReplayPage {
            events: Vec::new(),
            scanned_to: query.from_sequence,
            exhausted: true,
        };
        for e in log.events.range(start..) {
            if e.sequence > upper {
                break;
            }
            if page.events.len() == limit {
                page.exhausted = false;
                break;
            }
            page.scanned_to = e.sequence;
            if !e.is_expired_at(now) && query.accepts_type(&e.event_type) {
                page.events.push(e.clone());
            }
        }
        // Everything up to the room's head (within bounds) has been looked at.
        if page.exhausted {
            page.scanned_to = page
                .scanned_to
                .max(log.last_sequence.min(upper))
                .max(query.from_sequence);
        }
        Ok(page)
    }

    async fn room_info(&self, room: &Room) -> Result<RoomInfo> {
        self.check_open()?;
        Ok(match self.existing_log(room) {
            Some(log) => {
                let mut log = log.lock();
                log.trim_expired_front(&self.inner.shard_hasher, Timestamp::now());
                log.info(&self.inner.epoch)
            }
            None => RoomLog::default().info(&self.inner.epoch),
        })
    }

    async fn ack(&self, room: &Room, subscriber_id: &str, sequence: u64) -> Result<u64> {
        self.check_open()?;
        let log = self.log(room);
        let mut log = log.lock();
        let cursor = log.extras().cursors.entry(subscriber_id.to_owned()).or_insert(0);
        *cursor = (*cursor).max(sequence);
        Ok(*cursor)
    }

    async fn cursor(&self, room: &Room, subscriber_id: &str) -> Result<Option<u64>> {
        self.check_open()?;
        Ok(self
            .existing_log(room)
            .and_then(|log| log.lock().extras.as_ref()?.cursors.get(subscriber_id).copied()))
    }

    async fn health(&self) -> TransportHealth {
        let mut h = TransportHealth::healthy("memory");
        if self.inner.closed.load(Ordering::Acquire) {
            h.fail("closed");
        }
        h.details.insert(
            "rooms".into(),
            self.inner
                .rooms
                .iter()
                .map(|s| s.read().len())
                .sum::<usize>()
                .into(),
        );
        h.details.insert("epoch".into(), self.inner.epoch.clone().into());
        h
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.live.close();
        self.inner.ephemeral.close();
        Ok(())
    }
}

#[async_trait]
impl SnapshotStore for MemoryTransport {
    async fn put_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.check_open()?;
        let log = self.log(&snapshot.room);
        log.lock().extras().snapshot = Some(snapshot);
        Ok(())
    }

    async fn get_snapshot(&self, room: &Room) -> Result<Option<Snapshot>> {
        self.check_open()?;
        Ok(self
            .existing_log(room)
            .and_then(|log| log.lock().extras.as_ref()?.snapshot.clone()))
    }
}

#[async_trait]
impl DeadLetterStore for MemoryTransport {
    async fn dlq_write(&self, room: &Room, entry: NewDlqEntry) -> Result<DlqEntry> {
        self.check_open()?;
        let log = self.log(room);
        let mut log = log.lock();
        let log = log.extras();
        log.next_dlq_id += 1;
        let stored = DlqEntry {
            entry_id: log.next_dlq_id,
            room: room.clone(),
            event: entry.event,
            error: entry.error,
            attempts: entry.attempts,
            subscriber_id: entry.subscriber_id,
            failed_at: entry.failed_at,
        };
        log.dlq.push_back(stored.clone());
        while log.dlq.len() > self.inner.config.max_dlq_per_room {
            log.dlq.pop_front();
        }
        Ok(stored)
    }

    async fn dlq_list(&self, room: &Room, after: u64, limit: usize) -> Result<Vec<DlqEntry>> {
        self.check_open()?;
        Ok(self.existing_log(room).map_or_else(Vec::new, |log| {
            let log = log.lock();
            let Some(extras) = &log.extras else {
                return Vec::new();
            };
            extras
                .dlq
                .iter()
                .filter(|e| e.entry_id > after)
                .take(limit)
                .cloned()
                .collect()
        }))
    }

    async fn dlq_remove(&self, room: &Room, entry_ids: &[u64]) -> Result<u64> {
        self.check_open()?;
        let Some(log) = self.existing_log(room) else {
            return Ok(0);
        };
        let mut log = log.lock();
        let Some(extras) = &mut log.extras else {
            return Ok(0);
        };
        let before = extras.dlq.len();
        extras.dlq.retain(|e| !entry_ids.contains(&e.entry_id));
        Ok((before - extras.dlq.len()) as u64)
    }

    async fn dlq_len(&self, room: &Room) -> Result<u64> {
        self.check_open()?;
        Ok(self.existing_log(room).map_or(0, |log| {
            log.lock().extras.as_ref().map_or(0, |x| x.dlq.len() as u64)
        }))
    }

    async fn dlq_rooms(&self, prefix: &str, after: Option<&Room>, limit: usize) -> Result<Vec<DlqRoom>> {
        self.check_open()?;
        let mut rooms: Vec<DlqRoom> = self
            .inner
            .rooms
            .iter()
            .flat_map(|shard| {
                shard
                    .read()
                    .iter()
                    .filter(|(room, _)| room.as_str().starts_with(prefix) && after.is_none_or(|a| *room > a))
                    .filter_map(|(room, log)| {
                        let len = log.lock().extras.as_ref().map_or(0, |x| x.dlq.len() as u64);
                        (len > 0).then(|| DlqRoom {
                            room: room.clone(),
                            len,
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        rooms.sort_unstable_by(|a, b| a.room.cmp(&b.room));
        rooms.truncate(limit);
        Ok(rooms)
    }
}

#[async_trait]
impl EphemeralBus for MemoryTransport {
    async fn publish_ephemeral(&self, event: Arc<EphemeralEvent>) -> Result<()> {
        self.check_open()?;
        let room = event.room.clone();
        self.inner.ephemeral.send(&room, event);
        Ok(())
    }

    async fn subscribe_ephemeral(&self, patterns: &[RoomPattern]) -> Result<EphemeralStream> {
        self.check_open()?;
        Ok(self.inner.ephemeral.subscribe_lossy(patterns))
    }
}

#[async_trait]
impl PresenceStore for MemoryTransport {
    async fn presence_enter(
        &self,
        room: &Room,
        member: PresenceMember,
        connection: &str,
        ttl: Duration,
    ) -> Result<bool> {
        self.check_open()?;
        let now = Instant::now();
        let mut presence = self.inner.presence.lock();
        let state = presence
            .entry(room.clone())
            .or_default()
            .entry(member.user_id.clone())
            .or_default();
        state.connections.retain(|_, deadline| *deadline > now);
        let joined = state.connections.is_empty();
        state.connections.insert(connection.to_owned(), now + ttl);
        // Metadata belongs to the member: `None` keeps what a live member has.
        let kept = if joined {
            None
        } else {
            state.member.take().and_then(|m| m.metadata)
        };
        state.member = Some(PresenceMember {
            metadata: member.metadata.or(kept),
            ..member
        });
        Ok(joined)
    }

    async fn presence_leave(&self, room: &Room, user_id: &str, connection: &str) -> Result<bool> {
        self.check_open()?;
        let mut presence = self.inner.presence.lock();
        let Some(members) = presence.get_mut(room) else {
            return Ok(false);
        };
        let Some(state) = members.get_mut(user_id) else {
            return Ok(false);
        };
        let had = state.connections.remove(connection).is_some();
        let now = Instant::now();
        state.connections.retain(|_, deadline| *deadline > now);
        let left = had && state.connections.is_empty();
        if state.connections.is_empty() {
            members.remove(user_id);
        }
        if members.is_empty() {
            presence.remove(room);
        }
        Ok(left)
    }

    async fn presence_members(&self, room: &Room) -> Result<Vec<PresenceMember>> {
        self.check_open()?;
        let now = Instant::now();
        let presence = self.inner.presence.lock();
        let mut members: Vec<PresenceMember> = presence
            .get(room)
            .map(|m| {
                m.values()
                    .filter(|s| s.connections.values().any(|d| *d > now))
                    .filter_map(|s| s.member.clone())
                    .collect()
            })
            .unwrap_or_default();
        members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(members)
    }

    async fn presence_sweep(&self) -> Result<Vec<(Room, String)>> {
        self.check_open()?;
        let now = Instant::now();
        let mut left = Vec::new();
        let mut presence = self.inner.presence.lock();
        for (room, members) in presence.iter_mut() {
            members.retain(|user, state| {
                state.connections.retain(|_, d| *d > now);
                let alive = !state.connections.is_empty();
                if !alive {
                    left.push((room.clone(), user.clone()));
                }
                alive
            });
        }
        presence.retain(|_, m| !m.is_empty());
        Ok(left)
    }
}

#[async_trait]
impl Retention for MemoryTransport {
    async fn prune_expired(&self) -> Result<u64> {
        self.check_open()?;
        let now = Timestamp::now();
        let logs = self.all_logs();
        let mut removed = 0u64;
        for log in logs {
            let mut log = log.lock();
            let before = log.events.len();
            let hasher = &self.inner.shard_hasher;
            let RoomLog { events, ids, .. } = &mut *log;
            events.retain(|e| {
                let keep = !e.is_expired_at(now);
                if !keep {
                    let key = hasher.hash_one(&e.id);
                    if ids.get(&key) == Some(&e.sequence) {
                        ids.remove(&key);
                    }
                }
                keep
            });
            removed += (before - log.events.len()) as u64;
        }
        Ok(removed)
    }
}
