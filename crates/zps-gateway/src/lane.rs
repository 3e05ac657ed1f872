//! A connection's publish lane. A producer sending many events over one socket
//! would otherwise wait one storage round trip per event; the lane stores the
//! publishes queued behind each other as one ordered batch
//! ([`Realtime::publish_batch`]).
//!
//! Two shapes, chosen by the transport:
//! - **task**, for storage with round trips (databases): a task of its own
//!   stores batches while the connection keeps reading;
//! - **inline**, for in-process storage (the memory transport, which stores
//!   without waiting): the connection collects the publishes it has already
//!   read and stores them itself when its burst of input ends — no task hop,
//!   and the answers leave in one write.
//!
//! Order is kept: one lane per connection, batches in arrival order, and the
//! engine numbers a batch's events of one room in the order given. Any other
//! message of the connection waits until its earlier publishes are answered
//! ([`PublishLane::settled`]), so a replay or subscribe sent after a publish
//! sees it stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc};
use zps_core::{PublishRequest, Realtime, Room};
use zps_protocol::{Published, ServerMessage};

use crate::conn::ConnShared;
use crate::frames::control;
use crate::session::Refusal;

/// Publishes accepted from one connection and not yet answered. A client that
/// sends more waits (its socket is not read) until the oldest are stored.
pub(crate) const MAX_IN_FLIGHT: usize = 256;
/// Most publishes stored in one batch.
const MAX_BATCH: usize = 64;

/// One accepted publish.
pub(crate) struct Pending {
    pub(crate) request: PublishRequest,
    pub(crate) request_id: Option<String>,
}

/// Counts publishes between submit and answer, and wakes waiters at zero.
#[derive(Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// The lane, owned by the connection task; dropping it ends a task lane once
/// its queued publishes are stored.
pub(crate) enum PublishLane {
    /// Stores in a task of its own.
    Task {
        tx: mpsc::Sender<Pending>,
        in_flight: Arc<InFlight>,
    },
    /// Stores on the connection task when [`PublishLane::flush`] is called.
    Inline {
        engine: Realtime,
        conn: Arc<ConnShared>,
        batch: Vec<Pending>,
    },
}

impl PublishLane {
    /// The lane for this engine's transport (on a connection's first publish).
    pub(crate) fn start(engine: Realtime, conn: Arc<ConnShared>) -> Self {
        if stores_in_process(&engine) {
            return Self::Inline {
                engine,
                conn,
                batch: Vec::with_capacity(MAX_BATCH),
            };
        }
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let in_flight = Arc::new(InFlight::default());
        tokio::spawn(run(engine, conn, rx, in_flight.clone()));
        Self::Task { tx, in_flight }
    }

    /// Queues a publish; waits while [`MAX_IN_FLIGHT`] are queued (task) or
    /// stores a full batch (inline).
    pub(crate) async fn submit(&mut self, pending: Pending) {
        match self {
            Self::Task { tx, in_flight } => {
                in_flight.count.fetch_add(1, Ordering::AcqRel);
                if tx.send(pending).await.is_err() {
                    // The task is gone only if it panicked; nothing will answer this one.
                    in_flight.count.fetch_sub(1, Ordering::AcqRel);
                }
            }
            Self::Inline { batch, .. } => {
                batch.push(pending);
                if batch.len() >= MAX_BATCH {
                    self.flush().await;
                }
            }
        }
    }

    /// Stores what an inline lane collected (a task lane stores on its own).
    pub(crate) async fn flush(&mut self) {
        if let Self::Inline { engine, conn, batch } = self
            && !batch.is_empty()
        {
            let taken = std::mem::replace(batch, Vec::with_capacity(MAX_BATCH));
            store(engine, conn, taken).await;
        }
    }

    /// Resolves once every publish submitted so far has been answered.
    pub(crate) async fn settled(&mut self) {
        let in_flight = match self {
            Self::Inline { .. } => return self.flush().await,
            Self::Task { in_flight, .. } => in_flight,
        };
        loop {
            let idle = in_flight.idle.notified();
            tokio::pin!(idle);
            // Registered before the check: a wake-up between the two is not lost.
            idle.as_mut().enable();
            if in_flight.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Storage that answers without waiting on anything outside the process (and
/// no middleware that might).
fn stores_in_process(engine: &Realtime) -> bool {
    let transport = engine.transport();
    !transport.batches_publishes() && !transport.capabilities().cross_process && !engine.has_middleware()
}

async fn run(
    engine: Realtime,
    conn: Arc<ConnShared>,
    mut rx: mpsc::Receiver<Pending>,
    in_flight: Arc<InFlight>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let n = batch.len();
        store(&engine, &conn, std::mem::take(&mut batch)).await;
        if in_flight.count.fetch_sub(n, Ordering::AcqRel) == n {
            in_flight.idle.notify_waiters();
        }
    }
}

/// Stores one batch and queues its answers.
async fn store(engine: &Realtime, conn: &ConnShared, batch: Vec<Pending>) {
    let (requests, request_ids): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|p| (p.request, p.request_id)).unzip();
    let rooms: Vec<Room> = requests.iter().map(|r| r.room.clone()).collect();
    // Events stored now may reach this connection while the batch is stored
    // (synchronous fan-out): they go out after the answers.
    conn.hold();
    let results = engine.publish_batch(requests).await;
    let mut answers = Vec::with_capacity(results.len());
    for ((result, request_id), room) in results.into_iter().zip(request_ids).zip(rooms) {
        let reply = match result {
            Ok(outcome) => {
                let e = &outcome.envelope;
                ServerMessage::Published(Published {
                    request_id,
                    id: e.id.clone(),
                    room: e.room.to_string(),
                    sequence: e.sequence,
                    duplicate: outcome.duplicate,
                })
            }
            Err(e) => Refusal::engine(&e)
                .in_room(room.as_str())
                .with_request(request_id)
                .to_message(),
        };
        answers.push(control(conn.kind, &reply));
    }
    conn.answer(answers);
}
