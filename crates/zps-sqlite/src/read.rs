//! Read connections for replays and lookups: WAL lets them read a committed
//! snapshot while the writer commits. Opened on demand, kept up to a bound.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};

use crate::error::{SqlResult, SqliteError};

/// A small pool of read-only connections.
pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    keep: usize,
    busy_timeout: Duration,
}

impl Readers {
    pub(crate) fn new(path: PathBuf, keep: usize, busy_timeout: Duration) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
            keep: keep.max(1),
            busy_timeout,
        }
    }

    fn open(&self) -> SqlResult<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.busy_timeout)?;
        Ok(conn)
    }

    /// Runs `f` on a read connection, off the async threads.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, f: F) -> SqlResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> SqlResult<T> + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match me.idle.lock().pop() {
                Some(c) => c,
                None => me.open()?,
            };
            let out = f(&conn);
            let mut idle = me.idle.lock();
            if idle.len() < me.keep {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|_| SqliteError::Closed)?
    }

    /// Closes the idle connections.
    pub(crate) fn close(&self) {
        self.idle.lock().clear();
    }
}
