//! Test support: an in-process gateway on a real port (memory provider), a TCP
//! relay that cuts connections on command, and a WebSocket relay that drops,
//! holds back and duplicates `event` frames.

#![allow(dead_code, unused_imports, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;
use zps_client::{ClientEvent, ClientOptions, ConnectionState, Subscription};
use zps_core::{PublishRequest, Realtime, Room};
use zps_gateway::{Gateway, GatewayConfig, JwtKey};

pub use zps_test_support::{
    SECRET, TestGateway, WAIT, event, hs256, hs256_config, init_tracing, now_secs, publish_config, publish_n,
};

/// Fast reconnects for tests.
pub fn fast_options(subscriber: &str) -> ClientOptions {
    ClientOptions::default()
        .with_subscriber_id(subscriber)
        .with_reconnect(Duration::from_millis(5), Duration::from_millis(100), None)
        .with_replay_throttle(Duration::from_millis(20))
        .with_request_timeout(Duration::from_secs(10))
}

/// The next `n` items of a subscription (bounded wait).
pub async fn next_items(sub: &mut Subscription, n: usize) -> Vec<ClientEvent> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let item = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} items arrived", out.len()))
            .expect("subscription ended");
        out.push(item);
    }
    out
}

/// The next `n` items, which must all be events; returns their sequences.
pub async fn next_seqs(sub: &mut Subscription, n: usize) -> Vec<u64> {
    next_items(sub, n)
        .await
        .into_iter()
        .map(|i| match i {
            ClientEvent::Event(e) => e.sequence,
            other => panic!("expected an event, got {other:?}"),
        })
        .collect()
}

/// Waits until the state satisfies `f`.
pub async fn wait_state(rx: &mut watch::Receiver<ConnectionState>, f: impl Fn(&ConnectionState) -> bool) {
    tokio::time::timeout(WAIT, async {
        loop {
            if f(&rx.borrow_and_update()) {
                return;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("state not reached in time");
}

/// Loss / duplicate / disorder counts of a received sequence list against 1..=n.
#[derive(Debug, PartialEq, Eq)]
pub struct Tally {
    pub lost: usize,
    pub duplicates: usize,
    pub out_of_order: usize,
}

pub fn tally(got: &[u64], n: u64) -> Tally {
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = 0;
    for s in got {
        if !seen.insert(*s) {
            duplicates += 1;
        }
    }
    let lost = (1..=n).filter(|s| !seen.contains(s)).count();
    let out_of_order = got.windows(2).filter(|w| w[1] <= w[0]).count();
    Tally {
        lost,
        duplicates,
        out_of_order,
    }
}

// ---- TCP relay ------------------------------------------------------------------------

/// A byte-level TCP proxy in front of the gateway that can cut every connection at an
/// arbitrary point, refuse new ones, and count them.
pub struct Relay {
    pub addr: SocketAddr,
    cut: watch::Sender<u64>,
    accepting: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(0u64);
        let accepting = Arc::new(AtomicBool::new(true));
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let cut = cut.clone();
            let accepting = accepting.clone();
            let accepted = accepted.clone();
            async move {
                while let Ok((mut down, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    if !accepting.load(Ordering::SeqCst) {
                        drop(down);
                        continue;
                    }
                    let mut cut_rx = cut.subscribe();
                    cut_rx.borrow_and_update();
                    tokio::spawn(async move {
                        let Ok(mut up) = TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                            _ = cut_rx.changed() => {}
                        }
                    });
                }
            }
        });
        Self {
            addr,
            cut,
            accepting,
            accepted,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Drops every open connection wherever it is (mid-frame included).
    pub fn cut_all(&self) {
        self.cut.send_modify(|g| *g += 1);
    }

    /// New connections are accepted (true) or dropped at once (false).
    pub fn set_accepting(&self, on: bool) {
        self.accepting.store(on, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_all();
    }
}

// ---- WebSocket chaos relay ---------------------------------------------------------

/// What the WebSocket relay does to server → client `event` frames.
#[derive(Debug, Clone, Copy)]
pub struct Chaos {
    pub drop: f64,
    pub hold: f64,
    pub duplicate: f64,
    /// Events with a sequence above this pass untouched (a dropped tail is undetectable
    /// on a live connection that never sees a later event).
    pub protect_after: u64,
    pub seed: u64,
}

/// Counts of what the relay did.
#[derive(Debug, Default)]
pub struct ChaosStats {
    pub dropped: AtomicUsize,
    pub held: AtomicUsize,
    pub duplicated: AtomicUsize,
}

/// A WebSocket proxy that parses frames and reorders, drops and duplicates `event`s.
pub struct WsRelay {
    pub addr: SocketAddr,
    pub stats: Arc<ChaosStats>,
    task: tokio::task::JoinHandle<()>,
}

impl WsRelay {
    pub async fn start(target_url: String, chaos: Chaos) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ChaosStats::default());
        let task = tokio::spawn({
            let stats = stats.clone();
            async move {
                let mut conn_no = 0u64;
                while let Ok((tcp, _)) = listener.accept().await {
                    conn_no += 1;
                    let url = target_url.clone();
                    let stats = stats.clone();
                    let seed = chaos.seed.wrapping_add(conn_no);
                    tokio::spawn(async move {
                        let Ok(down) = tokio_tungstenite::accept_async(tcp).await else {
                            return;
                        };
                        let Ok((up, _)) = tokio_tungstenite::connect_async(url).await else {
                            return;
                        };
                        relay_ws(down, up, chaos, seed, stats).await;
                    });
                }
            }
        });
        Self { addr, stats, task }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for WsRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay_ws<D, U>(down: D, up: U, chaos: Chaos, seed: u64, stats: Arc<ChaosStats>)
where
    D: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + futures::Sink<Message>
        + Unpin,
    U: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + futures::Sink<Message>
        + Unpin,
{
    let (mut down_tx, mut down_rx) = down.split();
    let (mut up_tx, mut up_rx) = up.split();
    let mut rng = StdRng::seed_from_u64(seed);
    // Held frames: (release after this many later frames, release at, frame).
    let mut held: VecDeque<(u32, Instant, String)> = VecDeque::new();
    loop {
        let next_release = held.iter().map(|h| h.1).min();
        tokio::select! {
            m = down_rx.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if up_tx.send(Message::Text(t)).await.is_err() { return; }
                }
                Some(Ok(Message::Close(f))) => { let _ = up_tx.send(Message::Close(f)).await; return; }
                Some(Ok(_)) => {}
                _ => return,
            },
            m = up_rx.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let text = t.as_str().to_owned();
                    let seq = serde_json::from_str::<Value>(&text)
                        .ok()
                        .filter(|v| v["type"] == "event")
                        .and_then(|v| v["data"]["sequence"].as_u64());
                    let mut out = Vec::new();
                    // Every later frame counts down the held ones.
                    for h in held.iter_mut() {
                        h.0 = h.0.saturating_sub(1);
                    }
                    match seq {
                        Some(s) if s > 1 && s <= chaos.protect_after => {
                            let r: f64 = rng.random();
                            if r < chaos.drop {
                                stats.dropped.fetch_add(1, Ordering::Relaxed);
                            } else if r < chaos.drop + chaos.hold {
                                stats.held.fetch_add(1, Ordering::Relaxed);
                                let after = rng.random_range(1..6);
                                held.push_back((after, Instant::now() + Duration::from_millis(30), text));
                            } else if r < chaos.drop + chaos.hold + chaos.duplicate {
                                stats.duplicated.fetch_add(1, Ordering::Relaxed);
                                out.push(text.clone());
                                out.push(text);
                            } else {
                                out.push(text);
                            }
                        }
                        _ => out.push(text),
                    }
                    // Release held frames whose countdown ran out (after this frame).
                    let now = Instant::now();
                    let (release, keep): (Vec<_>, Vec<_>) =
                        held.drain(..).partition(|h| h.0 == 0 || h.1 <= now);
                    held = keep.into();
                    out.extend(release.into_iter().map(|h| h.2));
                    for f in out {
                        if down_tx.send(Message::Text(f.into())).await.is_err() { return; }
                    }
                }
                Some(Ok(Message::Close(f))) => { let _ = down_tx.send(Message::Close(f)).await; return; }
                Some(Ok(_)) => {}
                _ => return,
            },
            () = sleep_until(next_release.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if next_release.is_some() => {
                let now = Instant::now();
                let (release, keep): (Vec<_>, Vec<_>) = held.drain(..).partition(|h| h.1 <= now);
                held = keep.into();
                for h in release {
                    if down_tx.send(Message::Text(h.2.into())).await.is_err() { return; }
                }
            }
        }
    }
}
