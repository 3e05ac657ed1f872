//! A room's dead-letter queue: list, page through, remove, write.

use futures::StreamExt;
use futures::stream::BoxStream;

use crate::envelope::{DlqEntry, NewDlqEntry};
use crate::error::Result;
use crate::middleware::{Action, Context};
use crate::room::Room;

use super::Realtime;
use super::handler::dlq_write;

/// Handle on one room's dead letters (from [`Realtime::dlq`]).
pub struct Dlq {
    engine: Realtime,
    room: Room,
}

impl Dlq {
    pub(crate) fn new(engine: Realtime, room: Room) -> Self {
        Self { engine, room }
    }

    /// The oldest `limit` entries.
    pub async fn list(&self, limit: usize) -> Result<Vec<DlqEntry>> {
        self.list_after(0, limit).await
    }

    /// Entries after `entry_id`, oldest first.
    pub async fn list_after(&self, entry_id: u64, limit: usize) -> Result<Vec<DlqEntry>> {
        self.engine.inner.check_open()?;
        self.engine
            .inner
            .transport
            .dlq_list(&self.room, entry_id, limit.clamp(1, 10_000))
            .await
    }

    /// How many entries the queue holds.
    pub async fn len(&self) -> Result<u64> {
        self.engine.inner.check_open()?;
        self.engine.inner.transport.dlq_len(&self.room).await
    }

    /// Whether the queue is empty.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// Removes entries (e.g. after repairing them); returns how many existed.
    pub async fn remove(&self, entry_ids: &[u64]) -> Result<u64> {
        self.engine.inner.check_open()?;
        let n = self
            .engine
            .inner
            .transport
            .dlq_remove(&self.room, entry_ids)
            .await?;
        self.engine.inner.metrics.dlq_delta(-(n as i64));
        Ok(n)
    }

    /// Parks an event by hand (e.g. a worker that handles failures itself).
    pub async fn write(&self, entry: NewDlqEntry) -> Result<DlqEntry> {
        self.engine.inner.check_open()?;
        dlq_write(&self.engine.inner, &self.room, entry).await
    }

    /// Streams every entry, `page_size` per read, oldest first (entries stay queued).
    pub fn replay(&self, page_size: usize) -> BoxStream<'static, Result<DlqEntry>> {
        struct St {
            engine: Realtime,
            room: Room,
            after: u64,
            page: std::vec::IntoIter<DlqEntry>,
            started: bool,
            done: bool,
            page_size: usize,
        }
        let st = St {
            engine: self.engine.clone(),
            room: self.room.clone(),
            after: 0,
            page: Vec::new().into_iter(),
            started: false,
            done: false,
            page_size: page_size.clamp(1, 10_000),
        };
        futures::stream::unfold(st, |mut st| async move {
            loop {
                if let Some(e) = st.page.next() {
                    st.after = e.entry_id;
                    return Some((Ok(e), st));
                }
                if st.done {
                    return None;
                }
                if !st.started {
                    st.started = true;
                    let ctx = Context::new(Action::DlqReplay).with_room(st.room.clone());
                    if let Err(e) = st.engine.inner.run(ctx, |ctx| async move { Ok(ctx) }).await {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                }
                match st
                    .engine
                    .inner
                    .transport
                    .dlq_list(&st.room, st.after, st.page_size)
                    .await
                {
                    Ok(page) => {
                        st.done = page.len() < st.page_size;
                        st.page = page.into_iter();
                    }
                    Err(e) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                }
            }
        })
        .boxed()
    }
}
