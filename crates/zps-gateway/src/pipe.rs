//! The connection task's output side: a writer (WebSocket sink or SSE body)
//! plus the connection's queue, so direct writes (answers, history) and queued
//! live frames share one ordered path.

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
            Outbound::Sse(_) => return Ok(()),
            Outbound::Close(code) => Message::Close(Some(close_frame(code))),
        };
        // Buffered: the socket is written when the buffer fills or on flush.
        // The stall limit applies to the whole batch (see `Pipe::forward`).
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
            Outbound::Ws(_) => Ok(()),
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

/// Writer plus queue.
pub(crate) struct Pipe<W> {
    pub(crate) writer: W,
    pub(crate) rx: mpsc::Receiver<Outbound>,
    pub(crate) conn: Arc<ConnShared>,
}

impl<W: Writer> Pipe<W> {
    /// Writes an item directly (not through the queue); it reaches the peer
    /// with the next flush.
    pub(crate) async fn write(&mut self, out: Outbound) -> Result<(), Disconnected> {
        crate::hot::hot().frames_sent.increment(1);
        let stall = self.writer.stall();
        // A timeout whose future completes on the first poll never arms its timer.
        match tokio::time::timeout(stall, self.writer.write(out)).await {
            Ok(r) => r,
            Err(_) => Err(Disconnected),
        }
    }

    /// Writes one queued item and everything else already queued, then flushes
    /// once: one system call per batch, not per frame. Returns the close code if
    /// a close was queued.
    pub(crate) async fn forward(&mut self, first: Outbound) -> Result<Option<CloseCode>, Disconnected> {
        let stall = self.writer.stall();
        let (mut frames, mut bytes) = (0u64, 0usize);
        let batch = async {
            let mut next = Some(first);
            while let Some(out) = next.take().or_else(|| self.rx.try_recv().ok()) {
                if let Outbound::Close(code) = out {
                    return Ok(Some(code));
                }
                bytes += out.len();
                frames += 1;
                self.writer.write(out).await?;
            }
            self.writer.flush().await?;
            Ok(None)
        };
        let result = match tokio::time::timeout(stall, batch).await {
            Ok(r) => r,
            Err(_) => Err(Disconnected),
        };
        self.conn.written(bytes);
        crate::hot::hot().frames_sent.increment(frames);
        result
    }

    /// Writes whatever is queued right now (used between history pages).
    pub(crate) async fn drain_queue(&mut self) -> Result<(), Disconnected> {
        match self.rx.try_recv() {
            Ok(out) => match self.forward(out).await? {
                Some(code) => {
                    self.conn.kill(code);
                    Ok(())
                }
                None => Ok(()),
            },
            Err(_) => self.flush().await,
        }
    }

    /// Flushes buffered writes.
    pub(crate) async fn flush(&mut self) -> Result<(), Disconnected> {
        match tokio::time::timeout(self.writer.stall(), self.writer.flush()).await {
            Ok(r) => r,
            Err(_) => Err(Disconnected),
        }
    }
}
