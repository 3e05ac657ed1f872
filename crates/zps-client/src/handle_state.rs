//! State shared by the connection task, the [`crate::Client`] handles and the
//! consumer streams: positions taken by consumers (acks to send), a wake-up
//! for the task, the error broadcast and the connection state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::sync::{Notify, broadcast, watch};

use crate::error::ClientError;
use crate::types::ConnectionState;

/// Errors kept for slow readers of [`crate::Client::errors`]; older ones are skipped.
pub(crate) const ERROR_BACKLOG: usize = 64;

pub(crate) struct Shared {
    /// Per room, the newest position the application is done with (acks to send).
    acks: Mutex<HashMap<String, u64>>,
    /// Set when `acks` gained something since the task last looked.
    ack_flag: AtomicBool,
    /// Some room waits for its consumer's channel to have room.
    pub(crate) any_blocked: AtomicBool,
    /// Wakes the connection task.
    pub(crate) wake: Notify,
    pub(crate) errors: broadcast::Sender<ClientError>,
    pub(crate) state: watch::Sender<ConnectionState>,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            acks: Mutex::new(HashMap::new()),
            ack_flag: AtomicBool::new(false),
            any_blocked: AtomicBool::new(false),
            wake: Notify::new(),
            errors: broadcast::channel(ERROR_BACKLOG).0,
            state: watch::channel(ConnectionState::Connecting).0,
        }
    }

    /// The application is done with `room` up to `sequence`: ack it (coalesced).
    pub(crate) fn taken(&self, room: &str, sequence: u64) {
        {
            let mut acks = self.acks.lock().unwrap_or_else(PoisonError::into_inner);
            match acks.get_mut(room) {
                Some(v) => *v = sequence,
                None => {
                    acks.insert(room.to_owned(), sequence);
                }
            }
        }
        if !self.ack_flag.swap(true, Ordering::SeqCst) {
            self.wake.notify_one();
        }
        self.consumed();
    }

    /// A consumer took an item: a blocked room may continue.
    pub(crate) fn consumed(&self) {
        if self.any_blocked.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// Whether acks wait to be sent (clears the flag).
    pub(crate) fn ack_signal(&self) -> bool {
        self.ack_flag.swap(false, Ordering::SeqCst)
    }

    /// Takes the acks to send.
    pub(crate) fn take_acks(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.acks.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts back acks that could not be sent (offline); newer values win.
    pub(crate) fn restore_acks(&self, old: HashMap<String, u64>) {
        if old.is_empty() {
            return;
        }
        let mut acks = self.acks.lock().unwrap_or_else(PoisonError::into_inner);
        for (room, seq) in old {
            acks.entry(room).or_insert(seq);
        }
    }

    /// Whether any ack waits.
    pub(crate) fn has_acks(&self) -> bool {
        !self
            .acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Broadcasts an error to [`crate::Client::errors`] readers (none is fine).
    pub(crate) fn report(&self, e: ClientError) {
        tracing::debug!(error = %e, "zps-client error");
        let _ = self.errors.send(e);
    }

    pub(crate) fn set_state(&self, s: ConnectionState) {
        self.state.send_replace(s);
    }
}
