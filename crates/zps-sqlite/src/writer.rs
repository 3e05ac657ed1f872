//! The one writer: a thread that owns the write connection and commits whatever
//! is queued as one transaction (group commit). Each write runs in a savepoint,
//! so one failing statement does not undo its neighbours; its caller is answered
//! only after the commit, and the after-commit hook (the live fan-out) runs in
//! queue order — sequence order per room.

use std::sync::mpsc::{Receiver, Sender};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use crate::error::{SqlResult, SqliteError};

/// One queued write.
pub(crate) trait WriteJob: Send {
    /// Runs the statements; false when they failed (the savepoint is rolled back).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the transaction committed (or did not).
    fn finish(self: Box<Self>, commit: Result<(), String>);
}

/// A write with its reply channel and after-commit hook.
pub(crate) struct Task<T, F, A> {
    work: Option<F>,
    out: Option<SqlResult<T>>,
    reply: oneshot::Sender<SqlResult<T>>,
    after_commit: A,
}

impl<T, F, A> Task<T, F, A> {
    /// A job for `work`; `after_commit` sees the result of a committed write first.
    pub(crate) fn new(work: F, after_commit: A) -> (Box<Self>, oneshot::Receiver<SqlResult<T>>) {
        let (reply, rx) = oneshot::channel();
        (
            Box::new(Self {
                work: Some(work),
                out: None,
                reply,
                after_commit,
            }),
            rx,
        )
    }
}

impl<T, F, A> WriteJob for Task<T, F, A>
where
    T: Send,
    F: FnOnce(&Connection) -> SqlResult<T> + Send,
    A: FnOnce(&T) + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let out = work(conn);
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), String>) {
        let result = match (self.out, commit) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => {
                (self.after_commit)(&v);
                Ok(v)
            }
            (_, Err(e)) => Err(SqliteError::Commit(e)),
            (None, Ok(())) => Err(SqliteError::Commit("the write did not run".into())),
        };
        let _ = self.reply.send(result);
    }
}

/// The queue's sending side.
pub(crate) type Queue = Sender<Box<dyn WriteJob>>;

/// Starts the writer thread on `conn`; it ends when every sender is dropped.
pub(crate) fn spawn(
    conn: Connection,
    batch_max: usize,
) -> std::io::Result<(Queue, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("zps-sqlite-writer".into())
        .spawn(move || run(conn, rx, batch_max.max(1)))?;
    Ok((tx, handle))
}

fn run(mut conn: Connection, rx: Receiver<Box<dyn WriteJob>>, batch_max: usize) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < batch_max {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        trace_batch(jobs.len());
        commit_batch(&mut conn, jobs);
    }
    // Closed: fold the WAL back so the file alone holds everything.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "SQLite checkpoint at close failed");
    }
}

fn trace_batch(n: usize) {
    tracing::trace!(writes = n, "SQLite group commit");
}

fn commit_batch(conn: &mut Connection, mut jobs: Vec<Box<dyn WriteJob>>) {
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let msg = e.to_string();
            for job in jobs {
                job.finish(Err(msg.clone()));
            }
            return;
        }
    };
    for job in &mut jobs {
        match tx.savepoint() {
            Ok(mut sp) => {
                if job.run(&sp) {
                    if let Err(e) = sp.commit() {
                        tracing::warn!(error = %e, "SQLite savepoint release failed");
                    }
                } else if let Err(e) = sp.rollback() {
                    tracing::warn!(error = %e, "SQLite savepoint rollback failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "SQLite savepoint failed; the write is not run"),
        }
    }
    let commit = tx.commit().map_err(|e| e.to_string());
    for job in jobs {
        job.finish(commit.clone());
    }
}
