//! The bare broadcast loop: the ceiling a WebSocket fan-out server can reach on
//! this machine with the same socket library as the gateway (tokio +
//! tungstenite). No protocol, no storage, no ordering: each published frame is
//! written as-is to every subscriber of its room. Rooms map to per-connection
//! bounded queues; the same bytes are handed to every subscriber; each writer
//! feeds everything queued and then flushes once (one system call per batch,
//! not per frame).
//!
//! Subscribers connect to `/ws?room=NAME`; publishers to `/publish` and send
//! frames that carry `"room":"NAME"`; each publish is answered with `ok`.
//! Whether frames are small or gateway-sized is the publisher's choice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{SinkExt, StreamExt};
use parking_lot::RwLock;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Rooms = Arc<RwLock<HashMap<String, Vec<(u64, mpsc::Sender<Utf8Bytes>)>>>>;

/// Frames a subscriber's queue holds (a reader this far behind is not waited for).
const QUEUE: usize = 4096;

/// Serves the baseline on `listener` forever.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let rooms = Rooms::default();
    let next = Arc::new(AtomicU64::new(0));
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let (rooms, next) = (rooms.clone(), next.clone());
        tokio::spawn(async move {
            let _ = connection(tcp, rooms, next).await;
        });
    }
}

fn config() -> WebSocketConfig {
    // The gateway's read buffer, so idle memory compares like for like; the
    // write buffer coalesces everything fed before a flush.
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(64 * 1024)
}

// The callback's signature is tungstenite's.
#[allow(clippy::result_large_err)]
async fn connection(tcp: TcpStream, rooms: Rooms, next: Arc<AtomicU64>) -> anyhow::Result<()> {
    let mut path = String::new();
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        tcp,
        |req: &Request, res: Response| {
            path = req.uri().to_string();
            Ok(res)
        },
        Some(config()),
    )
    .await?;
    match path.split_once("?room=") {
        Some((_, room)) => subscriber(ws, room.to_owned(), rooms, next).await,
        None => publisher(ws, rooms).await,
    }
}

type Socket = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn subscriber(ws: Socket, room: String, rooms: Rooms, next: Arc<AtomicU64>) -> anyhow::Result<()> {
    let id = next.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(QUEUE);
    rooms.write().entry(room.clone()).or_default().push((id, tx));
    let (mut sink, mut stream) = ws.split();
    let result = async {
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(text) => {
                        sink.feed(Message::Text(text)).await?;
                        while let Ok(more) = rx.try_recv() {
                            sink.feed(Message::Text(more)).await?;
                        }
                        sink.flush().await?;
                    }
                    None => return Ok(()),
                },
                incoming = stream.next() => match incoming {
                    Some(Ok(_)) => {}
                    _ => return Ok(()),
                },
            }
        }
    }
    .await;
    if let Some(list) = rooms.write().get_mut(&room) {
        list.retain(|(i, _)| *i != id);
    }
    result
}

async fn publisher(mut ws: Socket, rooms: Rooms) -> anyhow::Result<()> {
    use futures::FutureExt;
    while let Some(msg) = ws.next().await {
        publish(&mut ws, &rooms, msg?).await?;
        // Answer in batches too: everything already readable, then one flush.
        while let Some(Some(msg)) = ws.next().now_or_never() {
            publish(&mut ws, &rooms, msg?).await?;
        }
        ws.flush().await?;
    }
    Ok(())
}

async fn publish(ws: &mut Socket, rooms: &Rooms, msg: Message) -> anyhow::Result<()> {
    let Message::Text(text) = msg else { return Ok(()) };
    let room = crate::scan_str(text.as_str(), "\"room\":\"").unwrap_or_default();
    if let Some(list) = rooms.read().get(room) {
        for (_, tx) in list {
            let _ = tx.try_send(text.clone());
        }
    }
    ws.feed(Message::Text(Utf8Bytes::from_static("ok"))).await?;
    Ok(())
}
