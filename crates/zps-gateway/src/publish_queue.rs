//! A connection's publish queue. A producer sending many events over one socket
//! would otherwise wait one storage round trip per event; the queue stores the
//! publishes queued behind each other as one ordered batch
//! ([`Realtime::publish_batch`]).
//!
//! The queue is a task of its own, for every transport, even in-process
//! storage that never waits: storing on the connection task itself saves a
//! hop but serializes reading, storing, fanning out and answering, and the
//! 1 000-subscriber fan-out measured 0.76× instead of 0.88× of the baseline
//! that way (docs/performance.md).
//!
//! Order is kept: one queue per connection, batches in arrival order, and the
//! engine numbers a batch's events of one room in the order given. Any other
//! message of the connection waits until its earlier publishes are answered
//! ([`PublishQueue::settled`]), so a replay or subscribe sent after a publish
//! sees it stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc};
use zps_core::{PublishRequest, Realtime, Room};

use crate::conn::ConnShared;
use crate::frames::{control, control_json};
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
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// The sending side, owned by the connection task; dropping it ends the queue
/// once the queued publishes are stored.
pub(crate) struct PublishQueue {
    tx: mpsc::Sender<Pending>,
    in_flight: Arc<InFlight>,
}

impl PublishQueue {
    /// Starts the queue's task (on a connection's first publish).
    /// The task is one of `tasks`, so a drain waits for the publishes in it.
    pub(crate) fn start(
        engine: Realtime,
        conn: Arc<ConnShared>,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let in_flight = Arc::new(InFlight::default());
        tasks.spawn(run(engine, conn, rx, in_flight.clone()));
        Self { tx, in_flight }
    }

    /// Queues a publish; waits while [`MAX_IN_FLIGHT`] are queued.
    pub(crate) async fn submit(&self, pending: Pending) {
        self.in_flight.count.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(pending).await.is_err() {
            // The task is gone only if it panicked; nothing will answer this one.
            self.in_flight.count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Resolves once every publish submitted so far has been answered.
    pub(crate) async fn settled(&self) {
        loop {
            let idle = self.in_flight.idle.notified();
            tokio::pin!(idle);
            // Registered before the check: a wake-up between the two is not lost.
            idle.as_mut().enable();
            if self.in_flight.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
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
        let answer = match result {
            Ok(outcome) => {
                let e = &outcome.envelope;
                let json = zps_protocol::published_json(
                    request_id.as_deref(),
                    &e.id,
                    e.room.as_str(),
                    e.sequence,
                    outcome.duplicate,
                );
                control_json(conn.kind, "published", json)
            }
            Err(e) => control(
                conn.kind,
                &Refusal::engine(&e)
                    .in_room(room.as_str())
                    .with_request(request_id)
                    .to_message(),
            ),
        };
        answers.push(answer);
    }
    conn.answer(answers);
}
