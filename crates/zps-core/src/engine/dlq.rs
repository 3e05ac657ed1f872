//! A room's dead-letter queue: list, page through, remove, write.

use futures::StreamExt;
use futures::stream::BoxStream;

use crate::envelope::{DlqEntry, NewDlqEntry};
use crate::error::{Error, Result};
use crate::middleware::{Action, Context};
use crate::room::Room;
use crate::transport::DlqRoom;

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

    /// Entries after `entry_id`, oldest first. Runs the `dlqReplay` middleware
    /// action (`ctx.sequence` = `entry_id`, `ctx.count` = entries read).
    pub async fn list_after(&self, entry_id: u64, limit: usize) -> Result<Vec<DlqEntry>> {
        read_page(&self.engine, &self.room, entry_id, limit).await
    }

    /// How many entries the queue holds.
    pub async fn len(&self) -> Result<u64> {
        self.engine.inner.check_open()?;
        self.engine
            .inner
            .transport
            .require_dead_letters()?
            .dlq_len(&self.room)
            .await
    }

    /// Whether the queue is empty.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// Removes entries (e.g. after repairing them); returns how many existed.
    /// Runs the `dlqRemove` middleware action (`ctx.count` = entries removed).
    pub async fn remove(&self, entry_ids: &[u64]) -> Result<u64> {
        let inner = &self.engine.inner;
        inner.check_open()?;
        let transport = inner.transport.clone();
        let ids = entry_ids.to_vec();
        let ctx = Context::new(Action::DlqRemove).with_room(self.room.clone());
        let (_, n) = inner
            .call(ctx, move |mut ctx| async move {
                let Some(room) = &ctx.room else {
                    return Err(Error::Rejected("middleware removed the room".into()));
                };
                let n = transport.require_dead_letters()?.dlq_remove(room, &ids).await?;
                ctx.count = Some(usize::try_from(n).unwrap_or(usize::MAX));
                Ok((ctx, n))
            })
            .await?;
        inner.metrics.dlq_delta(-(n as i64));
        Ok(n)
    }

    /// Parks an event by hand (e.g. a worker that handles failures itself).
    pub async fn write(&self, entry: NewDlqEntry) -> Result<DlqEntry> {
        self.engine.inner.check_open()?;
        dlq_write(&self.engine.inner, &self.room, entry).await
    }

    /// Streams every entry, `page_size` per read, oldest first (entries stay queued);
    /// every read runs the `dlqReplay` middleware action, as [`Dlq::list_after`] does.
    pub fn replay(&self, page_size: usize) -> BoxStream<'static, Result<DlqEntry>> {
        struct St {
            engine: Realtime,
            room: Room,
            after: u64,
            page: std::vec::IntoIter<DlqEntry>,
            done: bool,
            page_size: usize,
        }
        let st = St {
            engine: self.engine.clone(),
            room: self.room.clone(),
            after: 0,
            page: Vec::new().into_iter(),
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
                match read_page(&st.engine, &st.room, st.after, st.page_size).await {
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

impl Realtime {
    /// Rooms holding dead letters whose name starts with `prefix`, in name order
    /// after `after`, at most `limit` (1–1 000): the operator's index of the
    /// dead-letter queues, from the store, so cluster-wide on shared providers.
    /// Runs the `dlqRooms` middleware action (`ctx.extensions["prefix"]`).
    pub async fn dlq_rooms(&self, prefix: &str, after: Option<&Room>, limit: usize) -> Result<Vec<DlqRoom>> {
        let inner = &self.inner;
        inner.check_open()?;
        let transport = inner.transport.clone();
        let (prefix, after, limit) = (prefix.to_owned(), after.cloned(), limit.clamp(1, 1_000));
        let mut ctx = Context::new(Action::DlqRooms);
        ctx.extensions.insert("prefix".into(), prefix.clone().into());
        let (_, rooms) = inner
            .call(ctx, move |mut ctx| async move {
                let rooms = transport
                    .require_dead_letters()?
                    .dlq_rooms(&prefix, after.as_ref(), limit)
                    .await?;
                ctx.count = Some(rooms.len());
                Ok((ctx, rooms))
            })
            .await?;
        Ok(rooms)
    }
}

/// One page of dead letters through the `dlqReplay` middleware action.
async fn read_page(engine: &Realtime, room: &Room, after: u64, limit: usize) -> Result<Vec<DlqEntry>> {
    let inner = &engine.inner;
    inner.check_open()?;
    let transport = inner.transport.clone();
    let limit = limit.clamp(1, 10_000);
    let mut ctx = Context::new(Action::DlqReplay).with_room(room.clone());
    ctx.sequence = Some(after);
    let (_, entries) = inner
        .call(ctx, move |mut ctx| async move {
            let Some(room) = &ctx.room else {
                return Err(Error::Rejected("middleware removed the room".into()));
            };
            let entries = transport
                .require_dead_letters()?
                .dlq_list(room, after, limit)
                .await?;
            ctx.count = Some(entries.len());
            Ok((ctx, entries))
        })
        .await?;
    Ok(entries)
}
