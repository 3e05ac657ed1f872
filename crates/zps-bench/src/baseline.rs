//! The bare-bones ceiling: a broadcast server on the same socket library as the
//! gateway (axum + tungstenite), with no protocol, no storage, no ordering —
//! each published frame is written as-is to every subscriber of its room.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use parking_lot::RwLock;
use tokio::sync::mpsc;

type Rooms = Arc<RwLock<HashMap<String, Vec<(u64, mpsc::Sender<Utf8Bytes>)>>>>;

#[derive(Clone, Default)]
struct St {
    rooms: Rooms,
    next: Arc<AtomicU64>,
}

#[derive(serde::Deserialize)]
struct RoomQuery {
    room: String,
}

/// Serves the baseline on `listener` forever.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let app = Router::new()
        .route("/ws", get(subscribe))
        .route("/publish", get(publish))
        .with_state(St::default());
    // The same socket options as the gateway.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}

async fn subscribe(State(st): State<St>, Query(q): Query<RoomQuery>, ws: WebSocketUpgrade) -> Response {
    // The same buffer sizes as the gateway, so memory is compared like for like.
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            let id = st.next.fetch_add(1, Ordering::Relaxed);
            let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(4096);
            st.rooms.write().entry(q.room.clone()).or_default().push((id, tx));
            let (mut sink, mut stream) = socket.split();
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(text) => {
                            if sink.feed(Message::Text(text)).await.is_err() { break; }
                            while let Ok(more) = rx.try_recv() {
                                if sink.feed(Message::Text(more)).await.is_err() { break; }
                            }
                            if sink.flush().await.is_err() { break; }
                        }
                        None => break,
                    },
                    incoming = stream.next() => if incoming.is_none_or(|m| m.is_err()) { break },
                }
            }
            if let Some(list) = st.rooms.write().get_mut(&q.room) {
                list.retain(|(i, _)| *i != id);
            }
        })
}

async fn publish(State(st): State<St>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |mut socket: WebSocket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            let Message::Text(text) = msg else { continue };
            let room = crate::scan_str(text.as_str(), "\"room\":\"")
                .unwrap_or_default()
                .to_owned();
            if let Some(list) = st.rooms.read().get(&room) {
                for (_, tx) in list {
                    let _ = tx.try_send(text.clone());
                }
            }
            if socket
                .send(Message::Text(Utf8Bytes::from_static("ok")))
                .await
                .is_err()
            {
                break;
            }
        }
    })
}
