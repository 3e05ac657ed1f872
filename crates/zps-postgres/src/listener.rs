//! The LISTEN side: one dedicated connection per transport, fanned out in-process.
//!
//! Two tasks: the *reader* owns the `PgListener`, forwards every notification in
//! arrival order and reconnects (with backoff) when the connection drops; the
//! *processor* turns notifications into live signals, fetching rows whose payload
//! was too large for NOTIFY. Fetches run concurrently but results are delivered in
//! arrival order (`FuturesOrdered`), so one room's events reach the fan-out in
//! sequence order — NOTIFY arrives in commit order, which equals sequence order.
//!
//! After a reconnect the reader emits `Resync` *after* LISTEN is active again, which
//! every live stream sees as `LiveSignal::Lagged(None)`: the engine then re-reads each
//! room from its cursor, so notifications lost while disconnected are recovered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use parking_lot::Mutex;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, mpsc, watch};
use zps_core::Backoff;
use zps_core::fanout::LocalFanout;
use zps_core::{Envelope, EphemeralEvent, LiveSignal, Room, RoomPattern};

use crate::rows::{event_from_row, to_i64};

/// Notifications queued between reader and processor before the reader starts
/// dropping them (and asks every subscriber to re-read history instead).
pub(crate) const QUEUE_CAPACITY: usize = 65_536;
/// Row fetches in flight at once.
const MAX_IN_FLIGHT: usize = 256;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// State shared by the transport, the reader and the processor.
pub(crate) struct Shared {
    pub(crate) live: LocalFanout<LiveSignal>,
    pub(crate) ephemeral: LocalFanout<Arc<EphemeralEvent>>,
    /// Broadcasts "re-read everything"; `None` once closed (ends the streams).
    pub(crate) resync: Mutex<Option<broadcast::Sender<()>>>,
    pub(crate) connected: AtomicBool,
    pub(crate) reconnects: AtomicU64,
    pub(crate) backend_pid: AtomicI32,
    pub(crate) tag: String,
}

impl Shared {
    pub(crate) fn new(capacity: usize, tag: String) -> Self {
        Self {
            live: LocalFanout::new(capacity),
            ephemeral: LocalFanout::new(capacity),
            resync: Mutex::new(Some(broadcast::channel(16).0)),
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            backend_pid: AtomicI32::new(0),
            tag,
        }
    }
}

/// How to (re)open the LISTEN connection.
#[derive(Clone)]
pub(crate) struct ListenerSpec {
    pub(crate) pool: PgPool,
    pub(crate) channels: [String; 2],
}

impl ListenerSpec {
    pub(crate) async fn open(&self) -> Result<(PgListener, i32), sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        // We notice the loss ourselves and reconnect, then announce the resync.
        listener.eager_reconnect(false);
        listener
            .listen_all(self.channels.iter().map(String::as_str))
            .await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut listener)
            .await?;
        Ok((listener, pid))
    }
}

/// What the reader hands to the processor.
pub(crate) enum Incoming {
    Notification { channel: String, payload: String },
    Resync,
}

/// Forwards notifications; on loss, reconnects with backoff and queues a resync.
pub(crate) async fn run_reader(
    spec: ListenerSpec,
    initial: PgListener,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Incoming>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut listener = Some(initial);
    let backoff = Backoff {
        base: MIN_BACKOFF,
        cap: MAX_BACKOFF,
        max_attempts: None,
    };
    let mut failures = 0u32;
    let mut overflowed = false;
    loop {
        let Some(active) = listener.as_mut() else {
            tokio::select! {
                _ = shutdown.changed() => break,
                opened = spec.open() => match opened {
                    Ok((l, pid)) => {
                        listener = Some(l);
                        failures = 0;
                        shared.backend_pid.store(pid, Ordering::Release);
                        shared.connected.store(true, Ordering::Release);
                        shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(pid, "PostgreSQL LISTEN connection re-established; resyncing subscribers");
                        // LISTEN is active again: anything committed from now on is notified,
                        // anything before is in history, which the resync makes everyone re-read.
                        forward(&tx, Incoming::Resync, &mut overflowed);
                    }
                    Err(sqlx::Error::PoolClosed) => {
                        tracing::warn!("LISTEN pool was closed by its owner; live fan-out stopped");
                        break;
                    }
                    Err(e) => {
                        let wait = backoff.ceiling(failures);
                        failures = failures.saturating_add(1);
                        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64,
                            "cannot re-open the PostgreSQL LISTEN connection");
                        tokio::select! {
                            _ = shutdown.changed() => break,
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                },
            }
            continue;
        };
        tokio::select! {
            _ = shutdown.changed() => break,
            received = active.try_recv() => match received {
                Ok(Some(n)) => {
                    let msg = Incoming::Notification {
                        channel: n.channel().to_owned(),
                        payload: n.payload().to_owned(),
                    };
                    forward(&tx, msg, &mut overflowed);
                }
                Ok(None) | Err(_) => {
                    let error = match received {
                        Err(e) => e.to_string(),
                        _ => "connection closed".to_owned(),
                    };
                    tracing::warn!(%error, "PostgreSQL LISTEN connection lost; reconnecting");
                    shared.connected.store(false, Ordering::Release);
                    shared.backend_pid.store(0, Ordering::Release);
                    listener = None;
                }
            },
        }
    }
    shared.connected.store(false, Ordering::Release);
    shared.backend_pid.store(0, Ordering::Release);
    // Dropping the listener UNLISTENs and returns its connection to the listener pool.
    drop(listener);
}

/// Queues `msg`; when the queue is full, drops it and remembers to resync once there is
/// room again. Returns whether `msg` was queued.
fn forward(tx: &mpsc::Sender<Incoming>, msg: Incoming, overflowed: &mut bool) -> bool {
    if *overflowed {
        if tx.try_send(Incoming::Resync).is_err() {
            return false;
        }
        *overflowed = false;
    }
    match tx.try_send(msg) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            if !*overflowed {
                tracing::warn!("live notification queue is full; subscribers will re-read history");
            }
            *overflowed = true;
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// A parsed notification of the events channel.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EventNote<'a> {
    /// The whole envelope (serialized with sequence 0).
    Full {
        sequence: u64,
        room: &'a str,
        json: &'a str,
    },
    /// Too large for NOTIFY: fetch `(room, sequence)`.
    Fetch { sequence: u64, room: &'a str },
    /// The room's history was reset to a new epoch.
    Reset { epoch: &'a str, room: &'a str },
}

/// Builds the NOTIFY text prefix `K{tag}:` the SQL completes with `{sequence}\n{rest}`.
pub(crate) fn note_prefix(kind: char, tag: &str) -> String {
    format!("{kind}{tag}:")
}

/// Parses `E{tag}:{seq}\n{room}\n{json}`, `R{tag}:{seq}\n{room}`, `X{tag}:{epoch}\n{room}`;
/// `None` for malformed payloads or another deployment's tag.
pub(crate) fn parse_event_note<'a>(payload: &'a str, tag: &str) -> Option<EventNote<'a>> {
    let kind = payload.chars().next()?;
    let rest = payload.get(1..)?;
    let (their_tag, rest) = rest.split_once(':')?;
    if their_tag != tag {
        return None;
    }
    let (head, rest) = rest.split_once('\n')?;
    match kind {
        'E' => {
            let (room, json) = rest.split_once('\n')?;
            Some(EventNote::Full {
                sequence: head.parse().ok()?,
                room,
                json,
            })
        }
        'R' => Some(EventNote::Fetch {
            sequence: head.parse().ok()?,
            room: rest,
        }),
        'X' => Some(EventNote::Reset {
            epoch: head,
            room: rest,
        }),
        _ => None,
    }
}

/// Parses an ephemeral notification `{tag}\n{room}\n{json}`.
pub(crate) fn parse_ephemeral_note<'a>(payload: &'a str, tag: &str) -> Option<(&'a str, &'a str)> {
    let (their_tag, rest) = payload.split_once('\n')?;
    if their_tag != tag {
        return None;
    }
    rest.split_once('\n')
}

enum Out {
    Live(Room, LiveSignal),
    Ephemeral(Room, Arc<EphemeralEvent>),
    Resync,
    Nothing,
}

/// Turns notifications into signals, in arrival order.
pub(crate) async fn run_processor(
    mut rx: mpsc::Receiver<Incoming>,
    shared: Arc<Shared>,
    pool: PgPool,
    fetch_sql: Arc<str>,
    events_channel: String,
) {
    let mut ordered: FuturesOrdered<BoxFuture<'static, Out>> = FuturesOrdered::new();
    loop {
        tokio::select! {
            biased;
            Some(out) = ordered.next(), if !ordered.is_empty() => deliver(&shared, out),
            msg = rx.recv(), if ordered.len() < MAX_IN_FLIGHT => match msg {
                Some(msg) => ordered.push_back(handle(&shared, &pool, &fetch_sql, &events_channel, msg)),
                None => break,
            },
            else => break,
        }
    }
}

fn deliver(shared: &Shared, out: Out) {
    match out {
        Out::Live(room, signal) => {
            shared.live.send(&room, signal);
        }
        Out::Ephemeral(room, event) => {
            shared.ephemeral.send(&room, event);
        }
        Out::Resync => {
            if let Some(tx) = shared.resync.lock().as_ref() {
                let _ = tx.send(());
            }
        }
        Out::Nothing => {}
    }
}

fn ready(out: Out) -> BoxFuture<'static, Out> {
    Box::pin(std::future::ready(out))
}

fn handle(
    shared: &Shared,
    pool: &PgPool,
    fetch_sql: &Arc<str>,
    events_channel: &str,
    msg: Incoming,
) -> BoxFuture<'static, Out> {
    let (channel, payload) = match msg {
        Incoming::Resync => return ready(Out::Resync),
        Incoming::Notification { channel, payload } => (channel, payload),
    };
    if channel != events_channel {
        return ready(ephemeral(shared, &payload));
    }
    let Some(note) = parse_event_note(&payload, &shared.tag) else {
        return ready(Out::Nothing);
    };
    let room_name = match &note {
        EventNote::Full { room, .. } | EventNote::Fetch { room, .. } | EventNote::Reset { room, .. } => *room,
    };
    let Ok(room) = Room::parse(room_name) else {
        return ready(Out::Nothing);
    };
    if !shared.live.has_listeners(&room) {
        return ready(Out::Nothing);
    }
    match note {
        EventNote::Full { sequence, json, .. } => ready(match serde_json::from_str::<Envelope>(json) {
            Ok(mut envelope) if envelope.room == room => {
                envelope.sequence = sequence;
                Out::Live(room, LiveSignal::Event(Arc::new(envelope)))
            }
            Ok(_) | Err(_) => {
                tracing::warn!(room = %room, sequence, "undecodable event notification; re-reading the room");
                let pattern = RoomPattern::from(room.clone());
                Out::Live(room, LiveSignal::Lagged(Some(pattern)))
            }
        }),
        EventNote::Reset { epoch, .. } => ready(Out::Live(
            room.clone(),
            LiveSignal::Reset {
                room,
                epoch: epoch.to_owned(),
            },
        )),
        EventNote::Fetch { sequence, .. } => {
            let (pool, sql) = (pool.clone(), fetch_sql.clone());
            Box::pin(async move {
                let fetched = sqlx::query(&sql)
                    .bind(room.as_str())
                    .bind(to_i64(sequence))
                    .fetch_optional(&pool)
                    .await;
                match fetched {
                    Ok(Some(row)) => match event_from_row(&row, &room) {
                        Ok(Some(e)) => return Out::Live(room, LiveSignal::Event(Arc::new(e))),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(room = %room, sequence, error = %e, "undecodable event row"),
                    },
                    // Pruned or reset in the meantime: history has the truth.
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(room = %room, sequence, error = %e, "cannot fetch a large event")
                    }
                }
                let pattern = RoomPattern::from(room.clone());
                Out::Live(room, LiveSignal::Lagged(Some(pattern)))
            })
        }
    }
}

fn ephemeral(shared: &Shared, payload: &str) -> Out {
    let Some((room, json)) = parse_ephemeral_note(payload, &shared.tag) else {
        return Out::Nothing;
    };
    let Ok(room) = Room::parse(room) else {
        return Out::Nothing;
    };
    if !shared.ephemeral.has_listeners(&room) {
        return Out::Nothing;
    }
    match serde_json::from_str::<EphemeralEvent>(json) {
        Ok(event) if event.room == room => Out::Ephemeral(room, Arc::new(event)),
        _ => Out::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_parse() {
        let tag = "0badc0de";
        assert_eq!(
            parse_event_note("E0badc0de:12\nchat:a:b\n{\"x\":1}\n", tag),
            Some(EventNote::Full {
                sequence: 12,
                room: "chat:a:b",
                json: "{\"x\":1}\n"
            })
        );
        assert_eq!(
            parse_event_note("R0badc0de:7\nchat:1", tag),
            Some(EventNote::Fetch {
                sequence: 7,
                room: "chat:1"
            })
        );
        assert_eq!(
            parse_event_note("X0badc0de:abc\nchat:1", tag),
            Some(EventNote::Reset {
                epoch: "abc",
                room: "chat:1"
            })
        );
        assert_eq!(
            parse_event_note("Rffffffff:7\nchat:1", tag),
            None,
            "other deployment"
        );
        assert_eq!(parse_event_note("R0badc0de:x\nchat:1", tag), None);
        assert_eq!(parse_event_note("", tag), None);
        assert_eq!(parse_event_note("Q0badc0de:1\nchat:1", tag), None);
        assert_eq!(note_prefix('E', tag), "E0badc0de:");
    }

    #[test]
    fn ephemeral_notes_parse() {
        assert_eq!(parse_ephemeral_note("t\nchat:1\n{}", "t"), Some(("chat:1", "{}")));
        assert_eq!(parse_ephemeral_note("u\nchat:1\n{}", "t"), None);
    }
}
