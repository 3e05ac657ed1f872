//! The connection task's output side: a writer (WebSocket sink or SSE body)
//! plus the connection's queue, so direct writes (answers, history) and queued
//! live frames share one ordered path, and everything queued goes out with one
//! flush.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::SinkExt;
use futures::stream::SplitSink;
use tokio::sync::mpsc;
use zps_protocol::CloseCode;

use crate::conn::ConnShared;
use crate::frames::Outbound;
use crate::outbox::Signal;

/// The peer went away (or the body was dropped).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Disconnected;

/// Where a connection's bytes go.
pub(crate) trait Writer: Send {
    /// Writes (possibly buffered) one item.
    fn write(&mut self, out: Outbound) -> impl Future<Output = Result<(), Disconnected>> + Send;
    /// Pushes buffered bytes to the peer.
    fn flush(&mut self) -> impl Future<Output = Result<(), Disconnected>> + Send;
    /// How long a write may make no progress before the peer is given up.
    fn stall(&self) -> Duration;
}

/// A WebSocket sink. A write that makes no progress for `stall` means the peer
/// stopped reading (or died): the connection is given up.
pub(crate) struct WsWriter {
    pub(crate) sink: SplitSink<WebSocket, Message>,
    pub(crate) stall: Duration,
}

impl Writer for WsWriter {
    async fn write(&mut self, out: Outbound) -> Result<(), Disconnected> {
        let msg = match out {
            Outbound::Ws(text) => Message::Text(text),
            Outbound::WsBinary(bytes) => Message::Binary(bytes),
            Outbound::Sse(_) => return Ok(()),
            Outbound::Close(code) => Message::Close(Some(close_frame(code))),
        };
        // Buffered: the socket is written when the buffer fills or on flush.
        // The stall limit applies to the whole batch (see `ConnWriter::forward`).
        self.sink.feed(msg).await.map_err(|_| Disconnected)
    }

    async fn flush(&mut self) -> Result<(), Disconnected> {
        self.sink.flush().await.map_err(|_| Disconnected)
    }

    fn stall(&self) -> Duration {
        self.stall
    }
}

/// The close frame for a close code.
pub(crate) fn close_frame(code: CloseCode) -> CloseFrame {
    CloseFrame {
        code: code.code(),
        reason: code.reason().into(),
    }
}

/// An SSE response body (a bounded channel the HTTP response drains).
pub(crate) struct SseWriter {
    pub(crate) tx: mpsc::Sender<Result<Bytes, Infallible>>,
    pub(crate) stall: Duration,
}

impl Writer for SseWriter {
    async fn write(&mut self, out: Outbound) -> Result<(), Disconnected> {
        match out {
            Outbound::Sse(bytes) => self.tx.send(Ok(bytes)).await.map_err(|_| Disconnected),
            Outbound::Ws(_) | Outbound::WsBinary(_) => Ok(()),
            // Ending the body is how an SSE stream closes.
            Outbound::Close(_) => Err(Disconnected),
        }
    }

    async fn flush(&mut self) -> Result<(), Disconnected> {
        Ok(())
    }

    fn stall(&self) -> Duration {
        self.stall
    }
}

/// Writer plus the connection whose queue it drains.
pub(crate) struct ConnWriter<W> {
    pub(crate) writer: W,
    pub(crate) conn: Arc<ConnShared>,
    /// Frames taken from the queue, being written.
    taken: VecDeque<Outbound>,
    /// Bytes written since the queue was last looked at; settled on the next
    /// look, under the same lock (one lock per batch, not two).
    unsettled: usize,
}

impl<W: Writer> ConnWriter<W> {
    pub(crate) fn new(writer: W, conn: Arc<ConnShared>) -> Self {
        Self {
            writer,
            conn,
            taken: VecDeque::new(),
            unsettled: 0,
        }
    }

    /// Writes an item directly (not through the queue); it reaches the peer
    /// with the next flush.
    pub(crate) async fn write(&mut self, out: Outbound) -> Result<(), Disconnected> {
        crate::frame_counters::counters().sent(1);
        let stall = self.writer.stall();
        within(stall, self.writer.write(out)).await
    }

    /// Waits for the connection's next job. Cancel-safe: frames are only taken
    /// when it completes.
    pub(crate) async fn next(&mut self) -> Signal {
        let written = std::mem::take(&mut self.unsettled);
        self.conn.next_signal(&mut self.taken, written).await
    }

    /// Writes the frames [`ConnWriter::next`] took (`bytes` in total) and flushes
    /// once: one system call per batch, not per frame.
    pub(crate) async fn write_taken(&mut self, bytes: usize) -> Result<(), Disconnected> {
        let stall = self.writer.stall();
        let frames = self.taken.len() as u64;
        let batch = async {
            for out in self.taken.drain(..) {
                self.writer.write(out).await?;
            }
            self.writer.flush().await
        };
        let result = within(stall, batch).await;
        self.unsettled += bytes;
        crate::frame_counters::counters().sent(frames);
        // A buffer that grew for a burst does not keep its memory while idle.
        if self.taken.capacity() > 256 {
            self.taken = VecDeque::new();
        }
        result
    }

    /// Writes whatever is queued right now and flushes (between history pages).
    pub(crate) async fn drain_queue(&mut self) -> Result<(), Disconnected> {
        let mut bytes = 0;
        let mut result = Ok(());
        while let Some(out) = self.conn.pop_queued() {
            bytes += out.len();
            result = self.write(out).await;
            if result.is_err() {
                break;
            }
        }
        self.conn.written(bytes);
        result?;
        self.flush().await
    }

    /// Flushes buffered writes.
    pub(crate) async fn flush(&mut self) -> Result<(), Disconnected> {
        let stall = self.writer.stall();
        within(stall, self.writer.flush()).await
    }
}

/// Runs a write, giving the peer up if it makes no progress for `stall`. The
/// timer is only armed when the write cannot complete at once (a full socket),
/// so the common case reads no clock and touches no timer wheel.
async fn within(
    stall: Duration,
    write: impl Future<Output = Result<(), Disconnected>>,
) -> Result<(), Disconnected> {
    use futures::FutureExt;
    let mut write = std::pin::pin!(write);
    if let Some(done) = write.as_mut().now_or_never() {
        return done;
    }
    match tokio::time::timeout(stall, write).await {
        Ok(r) => r,
        Err(_) => Err(Disconnected),
    }
}
