//! A connection's outbound queue and its signals to the connection task, kept
//! under the connection's one lock (see `conn.rs`).
//!
//! Hubs push frames without waiting; the connection task takes everything
//! queued at once and writes it with one flush. The task is woken only when
//! the queue goes from "nothing signalled" to "something to do", so a burst of
//! N frames costs one wake-up, not N. A backlog over the byte limit (or the
//! item limit) marks the connection for closing as a slow consumer: nobody
//! else is slowed down.

use std::collections::VecDeque;
use std::task::{Context, Waker};

use zps_core::Room;
use zps_protocol::CloseCode;

use crate::frames::Outbound;

/// Items a queue may hold; the byte limit usually trips first.
pub(crate) const MAX_ITEMS: usize = 4096;

/// What the connection task is asked to do.
#[derive(Debug)]
pub(crate) enum Signal {
    /// Close with this code.
    Close(CloseCode),
    /// Some rooms' live streams showed a hole: re-read their history.
    Resync,
    /// Something asked of the connection from outside (the HTTP API).
    Command(crate::conn::Command),
    /// Write the frames now in the caller's buffer (`bytes` in total), then flush.
    Frames {
        /// Their size.
        bytes: usize,
    },
}

/// The queue and the task's wake-up state.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: VecDeque<Outbound>,
    /// Queued bytes plus bytes taken by the task and not yet written.
    bytes: usize,
    close: Option<CloseCode>,
    resync: Vec<Room>,
    commands: VecDeque<crate::conn::Command>,
    waker: Option<Waker>,
    /// A wake-up was issued that the task has not acted on yet.
    signalled: bool,
    /// While this connection's own publishes are being stored, frames wait here
    /// so that each `published` answer goes out before the event it announces.
    held: Option<VecDeque<Outbound>>,
}

impl Outbox {
    /// Queues a frame; returns the waker to wake (after the lock is released).
    pub(crate) fn push(&mut self, out: Outbound, byte_limit: usize) -> Option<Waker> {
        if self.close.is_some() {
            return None;
        }
        let len = out.len();
        if self.bytes + len > byte_limit || self.queue.len() >= MAX_ITEMS {
            return self.close(CloseCode::SlowConsumer);
        }
        self.bytes += len;
        if let Some(held) = &mut self.held {
            held.push_back(out);
            return None;
        }
        self.queue.push_back(out);
        self.signal()
    }

    /// Holds frames back until [`Outbox::answer`] (see `held`).
    pub(crate) fn hold(&mut self) {
        if self.held.is_none() {
            self.held = Some(VecDeque::new());
        }
    }

    /// Queues publish answers, then whatever was held; returns the waker to wake.
    pub(crate) fn answer(
        &mut self,
        answers: impl IntoIterator<Item = Outbound>,
        byte_limit: usize,
    ) -> Option<Waker> {
        let held = self.held.take().unwrap_or_default();
        let mut wake = None;
        for a in answers {
            wake = self.push(a, byte_limit).or(wake);
        }
        if self.close.is_some() || held.is_empty() {
            return wake;
        }
        // Held bytes were counted when they were pushed.
        self.queue.extend(held);
        self.signal().or(wake)
    }

    /// Asks the task to close (the first reason wins); returns the waker to wake.
    pub(crate) fn close(&mut self, code: CloseCode) -> Option<Waker> {
        if self.close.is_some() {
            return None;
        }
        if code == CloseCode::SlowConsumer {
            metrics::counter!("zps_gateway_slow_consumers_total").increment(1);
        }
        self.close = Some(code);
        // Nothing queued will be written any more.
        self.queue = VecDeque::new();
        self.held = None;
        self.signalled = false;
        self.signal()
    }

    /// Whether the connection is closing, and why.
    #[cfg(test)]
    pub(crate) fn closing(&self) -> Option<CloseCode> {
        self.close
    }

    /// Asks the task to re-read `room`'s history; returns the waker to wake.
    pub(crate) fn resync(&mut self, room: Room) -> Option<Waker> {
        if !self.resync.contains(&room) {
            self.resync.push(room);
        }
        self.signal()
    }

    /// Queues a command for the task; returns the waker to wake.
    pub(crate) fn command(&mut self, c: crate::conn::Command) -> Option<Waker> {
        self.commands.push_back(c);
        self.signal()
    }

    /// Rooms to re-read (drained).
    pub(crate) fn take_resync(&mut self) -> Vec<Room> {
        std::mem::take(&mut self.resync)
    }

    /// Records that the task wrote `n` bytes it had taken.
    pub(crate) fn written(&mut self, n: usize) {
        self.bytes = self.bytes.saturating_sub(n);
    }

    fn signal(&mut self) -> Option<Waker> {
        if self.signalled {
            return None;
        }
        self.signalled = true;
        self.waker.take()
    }

    /// The task's next job, or `None` after registering `cx` to be woken. For
    /// frames, the queue is swapped with the caller's empty `buffer`: two
    /// buffers alternate, so a busy connection does not reallocate.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, buffer: &mut VecDeque<Outbound>) -> Option<Signal> {
        self.signalled = false;
        if let Some(code) = self.close {
            return Some(Signal::Close(code));
        }
        if !self.resync.is_empty() {
            return Some(Signal::Resync);
        }
        if let Some(c) = self.commands.pop_front() {
            return Some(Signal::Command(c));
        }
        if !self.queue.is_empty() {
            buffer.clear();
            std::mem::swap(&mut self.queue, buffer);
            // A buffer that grew for a burst does not keep its memory while idle.
            if self.queue.capacity() > 256 {
                self.queue = VecDeque::new();
            }
            let bytes = buffer.iter().map(Outbound::len).sum();
            return Some(Signal::Frames { bytes });
        }
        self.register(cx);
        None
    }

    /// The close code once closing, else `None` after registering `cx`.
    pub(crate) fn poll_close(&mut self, cx: &mut Context<'_>) -> Option<CloseCode> {
        if self.close.is_none() {
            self.signalled = false;
            self.register(cx);
        }
        self.close
    }

    /// Takes the next queued frame without waiting (writes between history pages).
    pub(crate) fn pop(&mut self) -> Option<Outbound> {
        self.queue.pop_front()
    }

    fn register(&mut self, cx: &mut Context<'_>) {
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn frame(s: &'static str) -> Outbound {
        Outbound::Ws(s.into())
    }

    #[test]
    fn a_burst_wakes_the_task_once_and_is_taken_whole() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut out = Outbox::default();
        let mut spare = VecDeque::new();
        assert!(out.poll(&mut cx, &mut spare).is_none());
        for _ in 0..10 {
            if let Some(w) = out.push(frame("abc"), 1_000) {
                w.wake();
            }
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake-up for the burst");
        match out.poll(&mut cx, &mut spare) {
            Some(Signal::Frames { bytes }) => assert_eq!((spare.len(), bytes), (10, 30)),
            other => panic!("{other:?}"),
        }
        out.written(30);
        // Nothing left: the task registers again and the next push wakes it.
        assert!(out.poll(&mut cx, &mut spare).is_none());
        out.push(frame("x"), 1_000).expect("registered waker").wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_backlog_over_the_limit_closes_as_slow_consumer() {
        let mut out = Outbox::default();
        assert!(out.push(frame("0123456789"), 10).is_none());
        assert_eq!(out.closing(), None);
        out.push(frame("x"), 10);
        assert_eq!(out.closing(), Some(CloseCode::SlowConsumer));
        // Closing drops the queue and refuses more.
        out.push(frame("y"), 10);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(matches!(
            out.poll(&mut cx, &mut VecDeque::new()),
            Some(Signal::Close(CloseCode::SlowConsumer))
        ));
    }

    #[test]
    fn bytes_being_written_still_count() {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Outbox::default();
        out.push(frame("01234"), 10);
        assert!(matches!(
            out.poll(&mut cx, &mut VecDeque::new()),
            Some(Signal::Frames { .. })
        ));
        // Taken but not written: the limit still sees those 5 bytes.
        out.push(frame("012345"), 10);
        assert_eq!(out.closing(), Some(CloseCode::SlowConsumer));
    }

    #[test]
    fn held_frames_follow_the_answers() {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Outbox::default();
        out.push(frame("before"), 100);
        out.hold();
        out.push(frame("event"), 100);
        out.answer([frame("published")], 100);
        let mut taken = VecDeque::new();
        assert!(matches!(
            out.poll(&mut cx, &mut taken),
            Some(Signal::Frames { bytes: 20 })
        ));
        let order: Vec<String> = taken
            .iter()
            .map(|o| match o {
                Outbound::Ws(t) => t.as_str().to_owned(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(order, ["before", "published", "event"]);
    }

    #[test]
    fn close_wins_over_resync_and_frames() {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Outbox::default();
        out.push(frame("a"), 100);
        out.resync(Room::parse("chat:1").expect("room"));
        assert!(matches!(
            out.poll(&mut cx, &mut VecDeque::new()),
            Some(Signal::Resync)
        ));
        assert_eq!(out.take_resync().len(), 1);
        out.close(CloseCode::ServiceRestart);
        assert!(matches!(
            out.poll(&mut cx, &mut VecDeque::new()),
            Some(Signal::Close(CloseCode::ServiceRestart))
        ));
    }
}
