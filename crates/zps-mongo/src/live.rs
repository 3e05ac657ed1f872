//! Live fan-out: one in-process hub per transport, fed either by a MongoDB change
//! stream on the events collection (replica sets, sharded clusters, Atlas) or — when the
//! deployment has none — by this process's own publishes plus a head poller that picks up
//! events other processes stored in the rooms local subscribers listen to.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use futures::StreamExt;
use mongodb::Collection;
use mongodb::bson::{Bson, Document, doc};
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::error::ErrorKind;
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use zps_core::Backoff;
use zps_core::fanout::{FanoutItem, LocalFanout};
use zps_core::transport::{EphemeralStream, LiveStream};
use zps_core::{Envelope, EphemeralEvent, LiveSignal, Room, RoomPattern, Timestamp};

use crate::docs::{self, by_sequence, change_stream_pipeline, counter_key, decode_event, int};
use crate::error::MongoResult;

/// Change-stream reader state, for `health()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamState {
    /// No change stream (in-process fan-out).
    Off = 0,
    /// Open and reading.
    Connected = 1,
    /// Lost; being re-opened.
    Reconnecting = 2,
}

/// The in-process side of live delivery, shared by the transport and its background tasks.
pub(crate) struct LiveHub {
    pub(crate) events: LocalFanout<Arc<Envelope>>,
    pub(crate) ephemeral: LocalFanout<Arc<EphemeralEvent>>,
    /// Broadcasts "live messages may have been lost, re-read everything" (`Lagged(None)`).
    control: Mutex<Option<broadcast::Sender<()>>>,
    /// Without change streams: per listened room, the highest sequence already fanned out
    /// here (by a local publish or the poller).
    heads: Mutex<HashMap<Room, u64>>,
    state: AtomicU8,
}

impl LiveHub {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            events: LocalFanout::new(capacity),
            ephemeral: LocalFanout::new(capacity),
            control: Mutex::new(Some(broadcast::channel(16).0)),
            heads: Mutex::new(HashMap::new()),
            state: AtomicU8::new(StreamState::Off as u8),
        }
    }

    pub(crate) fn state(&self) -> StreamState {
        match self.state.load(Ordering::Acquire) {
            1 => StreamState::Connected,
            2 => StreamState::Reconnecting,
            _ => StreamState::Off,
        }
    }

    pub(crate) fn set_state(&self, s: StreamState) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// Tells every live stream that messages may have been lost.
    pub(crate) fn lagged_all(&self) {
        if let Some(tx) = self.control.lock().as_ref() {
            let _ = tx.send(());
        }
    }

    /// A live stream over `patterns` (events plus global lag notices).
    pub(crate) fn subscribe(&self, patterns: &[RoomPattern]) -> LiveStream {
        let events = self.events.live_signals(patterns);
        let control = self.control.lock().as_ref().map(broadcast::Sender::subscribe);
        match control {
            Some(rx) => {
                let lag = BroadcastStream::new(rx).map(|_| LiveSignal::Lagged(None));
                futures::stream::select(events, lag).boxed()
            }
            None => futures::stream::empty().boxed(),
        }
    }

    /// An ephemeral stream over `patterns`.
    pub(crate) fn subscribe_ephemeral(&self, patterns: &[RoomPattern]) -> EphemeralStream {
        self.ephemeral
            .subscribe(patterns)
            .filter_map(|item| async move {
                match item {
                    FanoutItem::Item(e) => Some(e),
                    // Ephemeral events are best-effort: a lagging reader skips.
                    FanoutItem::Lagged(_) => None,
                }
            })
            .boxed()
    }

    /// Fans out a locally stored event and records it as this room's head (under the
    /// heads lock, so the poller does not send it a second time).
    pub(crate) fn deliver_local(&self, e: &Arc<Envelope>) {
        let mut heads = self.heads.lock();
        self.events.send(&e.room, e.clone());
        if let Some(h) = heads.get_mut(&e.room) {
            *h = (*h).max(e.sequence);
        }
    }

    /// Rooms a new subscription listens to whose head is not tracked yet.
    pub(crate) fn untracked(&self, rooms: &[Room]) -> Vec<Room> {
        let heads = self.heads.lock();
        rooms
            .iter()
            .filter(|r| !heads.contains_key(*r))
            .cloned()
            .collect()
    }

    /// Starts tracking rooms at the given heads (keeps a lower head already tracked, so
    /// existing subscribers still get what lies between).
    pub(crate) fn track(&self, rooms: impl IntoIterator<Item = (Room, u64)>) {
        let mut heads = self.heads.lock();
        for (room, head) in rooms {
            heads.entry(room).or_insert(head);
        }
    }

    /// Ends every stream.
    pub(crate) fn close(&self) {
        self.events.close();
        self.ephemeral.close();
        self.control.lock().take();
        self.heads.lock().clear();
        self.set_state(StreamState::Off);
    }
}

/// Change-stream errors after which the resume token is useless (history rolled off the
/// oplog, token from another deployment, ...): the stream restarts without it.
fn token_is_lost(e: &mongodb::error::Error) -> bool {
    matches!(e.kind.as_ref(), ErrorKind::Command(c) if matches!(c.code, 136 | 260 | 280 | 286))
}

/// Opens the change stream on the events collection, resuming after `token` if given.
pub(crate) async fn open_change_stream(
    events: &Collection<Document>,
    token: Option<ResumeToken>,
) -> mongodb::error::Result<ChangeStream<ChangeStreamEvent<Document>>> {
    events
        .watch()
        .pipeline(change_stream_pipeline())
        .resume_after(token)
        .await
}

/// Reads the change stream forever, fanning every stored event out in-process; re-opens
/// it with the last resume token after an error, or without one (announcing
/// `Lagged(None)`) when the token is no longer usable.
pub(crate) async fn run_change_stream(
    events: Collection<Document>,
    hub: Arc<LiveHub>,
    mut stream: ChangeStream<ChangeStreamEvent<Document>>,
) {
    let mut token = stream.resume_token();
    hub.set_state(StreamState::Connected);
    loop {
        match stream.next().await {
            Some(Ok(change)) => {
                token = stream.resume_token().or(token);
                let Some(doc) = change.full_document else { continue };
                match decode_event(&doc) {
                    Ok(Some(e)) => {
                        let room = e.room.clone();
                        hub.events.send(&room, Arc::new(e));
                    }
                    Ok(None) => {}
                    Err(detail) => tracing::warn!(%detail, "change stream: undecodable event skipped"),
                }
            }
            other => {
                if let Some(Err(e)) = &other {
                    tracing::warn!(error = %e, "MongoDB change stream failed; re-opening");
                } else {
                    tracing::warn!("MongoDB change stream ended; re-opening");
                }
                hub.set_state(StreamState::Reconnecting);
                let (reopened, lost) = reopen(&events, token.clone()).await;
                stream = reopened;
                token = stream.resume_token();
                hub.set_state(StreamState::Connected);
                if lost {
                    tracing::warn!(
                        "MongoDB change stream restarted without a resume token; subscribers re-read history"
                    );
                    hub.lagged_all();
                }
            }
        }
    }
}

/// Re-opens with backoff; the flag says whether the resume token had to be dropped.
async fn reopen(
    events: &Collection<Document>,
    mut token: Option<ResumeToken>,
) -> (ChangeStream<ChangeStreamEvent<Document>>, bool) {
    let mut lost = token.is_none();
    let backoff = Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(5),
        max_attempts: None,
    };
    let mut failures = 0u32;
    loop {
        match open_change_stream(events, token.clone()).await {
            Ok(s) => return (s, lost),
            Err(e) if token.is_some() && token_is_lost(&e) => {
                tracing::warn!(error = %e, "change stream resume token rejected; restarting without it");
                token = None;
                lost = true;
            }
            Err(e) => {
                let wait = backoff.ceiling(failures);
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, retry_ms = wait.as_millis() as u64, "cannot re-open the MongoDB change stream");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Largest page the poller fans out per room and tick.
const POLL_PAGE: i64 = 1_000;

/// One poll: for every exact room with local listeners, fans out the events other
/// processes stored above the room's known head.
pub(crate) async fn poll_heads(
    hub: &LiveHub,
    events: &Collection<Document>,
    counters: &Collection<Document>,
) -> MongoResult<()> {
    let listened: HashSet<Room> = hub.events.listened_rooms().into_iter().collect();
    let watched: Vec<(Room, u64)> = {
        let mut heads = hub.heads.lock();
        heads.retain(|r, _| listened.contains(r));
        heads.iter().map(|(r, h)| (r.clone(), *h)).collect()
    };
    for chunk in watched.chunks(500) {
        let rooms: Vec<Room> = chunk.iter().map(|(r, _)| r.clone()).collect();
        let stored: HashMap<Room, u64> = read_heads(counters, &rooms).await?.into_iter().collect();
        for (room, head) in chunk {
            let Some(&seq) = stored.get(room) else { continue };
            if seq <= *head {
                continue;
            }
            let filter = doc! {
                "room": room.as_str(),
                "sequence": { "$gt": int(*head), "$lte": int(seq) },
                "expiresAt": docs::not_expired(Timestamp::now()),
            };
            let mut found = events.find(filter).sort(by_sequence()).limit(POLL_PAGE).await?;
            while let Some(d) = found.next().await {
                let d = d?;
                match decode_event(&d) {
                    Ok(Some(e)) if !e.is_expired_at(Timestamp::now()) => {
                        // Emit only what is above the head right now (a local publish may
                        // have delivered it meanwhile), under the lock local delivery takes.
                        let mut heads = hub.heads.lock();
                        let Some(h) = heads.get_mut(room) else { break };
                        if e.sequence > *h {
                            *h = e.sequence;
                            hub.events.send(room, Arc::new(e));
                        }
                    }
                    Ok(_) => {}
                    Err(detail) => tracing::warn!(%room, %detail, "poller: undecodable event skipped"),
                }
            }
        }
    }
    Ok(())
}

/// Reads the current head of each room (its counter), 0 for rooms never published to.
pub(crate) async fn read_heads(
    counters: &Collection<Document>,
    rooms: &[Room],
) -> MongoResult<Vec<(Room, u64)>> {
    let mut out = Vec::with_capacity(rooms.len());
    for chunk in rooms.chunks(500) {
        let keys: Vec<Bson> = chunk.iter().map(|r| Bson::String(counter_key(r))).collect();
        let mut cursor = counters
            .find(doc! { "_id": { "$in": keys } })
            .projection(doc! { "seq": 1 })
            .await?;
        let mut stored: HashMap<String, u64> = HashMap::new();
        while let Some(d) = cursor.next().await {
            let d = d?;
            if let (Ok(id), Some(seq)) = (d.get_str("_id"), docs::get_u64(&d, "seq")) {
                stored.insert(id.to_owned(), seq);
            }
        }
        out.extend(
            chunk
                .iter()
                .map(|r| (r.clone(), stored.get(&counter_key(r)).copied().unwrap_or(0))),
        );
    }
    Ok(out)
}
