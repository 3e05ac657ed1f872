//! Paged history drains (`catch_up` / `stream_replay`): a bounded stream that
//! never holds the backlog in memory and advances by sequence, so a rarely
//! matching type filter never stalls it. The drain runs the `catchUp` action
//! once, then every event passes the `deliver` action (events it withholds
//! are skipped; the cursor still moves past them).

use std::collections::VecDeque;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;

use crate::envelope::Envelope;
use crate::error::Result;
use crate::middleware::{Action, Context};
use crate::transport::ReplayQuery;

use super::Realtime;
use super::options::{CatchUpOptions, clamp_batch};

/// A stream of stored events, oldest first, one page in memory at a time.
pub type CatchUpStream = BoxStream<'static, Result<Arc<Envelope>>>;

struct State {
    engine: Realtime,
    opts: CatchUpOptions,
    cursor: Option<u64>,
    batches: u32,
    buffer: VecDeque<Arc<Envelope>>,
    done: bool,
}

impl State {
    async fn start(&mut self) -> Result<u64> {
        let inner = &self.engine.inner;
        inner.check_open()?;
        let mut ctx = Context::new(Action::CatchUp)
            .with_room(self.opts.room.clone())
            .with_subscriber(self.opts.subscriber_id.clone());
        ctx.sequence = self.opts.from_sequence;
        inner.run(ctx, |ctx| async move { Ok(ctx) }).await?;
        Ok(match (self.opts.from_sequence, &self.opts.subscriber_id) {
            (Some(from), _) => from,
            (None, Some(id)) => inner.transport.cursor(&self.opts.room, id).await?.unwrap_or(0),
            (None, None) => 0,
        })
    }

    async fn next_page(&mut self, from: u64) -> Result<()> {
        let inner = &self.engine.inner;
        inner.check_open()?;
        let query = ReplayQuery {
            room: self.opts.room.clone(),
            from_sequence: from,
            to_sequence: self.opts.to_sequence,
            event_types: self.opts.event_types.clone(),
            limit: clamp_batch(self.opts.batch_size),
        };
        let started = std::time::Instant::now();
        let page = inner.transport.replay(&query).await?;
        inner.metrics.replay_latency(started.elapsed());
        inner.metrics.replayed(page.events.len() as u64);
        self.batches += 1;
        let reached_end = self.opts.to_sequence.is_some_and(|to| page.scanned_to >= to);
        let capped = self.opts.max_batches.is_some_and(|max| self.batches >= max);
        if page.exhausted || reached_end || capped || page.scanned_to <= from {
            self.done = true;
        }
        self.cursor = Some(page.scanned_to.max(from));
        let subscriber = self.opts.subscriber_id.as_deref();
        let events = super::deliver::deliver_page(inner, page.events, subscriber).await;
        self.buffer.extend(events);
        Ok(())
    }
}

impl Realtime {
    /// Drains a room's history page by page (`batch_size`, default 500, max 10 000).
    ///
    /// Starts after `from_sequence`, else after the subscriber's cursor, else at 0.
    pub fn catch_up(&self, opts: CatchUpOptions) -> CatchUpStream {
        let state = State {
            engine: self.clone(),
            opts,
            cursor: None,
            batches: 0,
            buffer: VecDeque::new(),
            done: false,
        };
        futures::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(e) = st.buffer.pop_front() {
                    return Some((Ok(e), st));
                }
                if st.done {
                    return None;
                }
                let from = match st.cursor {
                    Some(c) => c,
                    None => match st.start().await {
                        Ok(c) => c,
                        Err(e) => {
                            st.done = true;
                            return Some((Err(e), st));
                        }
                    },
                };
                if st.opts.to_sequence.is_some_and(|to| from >= to) {
                    return None;
                }
                if let Err(e) = st.next_page(from).await {
                    st.done = true;
                    st.engine.inner.metrics.error();
                    return Some((Err(e), st));
                }
            }
        })
        .boxed()
    }

    /// The same as [`Realtime::catch_up`], under the seed's other name.
    pub fn stream_replay(&self, opts: CatchUpOptions) -> CatchUpStream {
        self.catch_up(opts)
    }
}
