//! The binary on the SQLite provider: history and cursors survive a restart;
//! a second process on the same data folder is refused; and kill -9 while ten
//! publishers write loses no acknowledged event, duplicates none, leaves no gap.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::pki::temp_dir;
use support::{Gateway, recv, run, send, start_gateway};

const KEY: &str = "zps_sqlite-test-key-0123456789abcdefghijklmnop";

fn start(dir: &std::path::Path) -> Gateway {
    start_gateway(&[
        "--data-dir",
        dir.to_str().unwrap(),
        "--allow-client-publish",
        "--api-key",
        KEY,
    ])
}

fn http_base(gw: &Gateway) -> String {
    gw.ws
        .replace("ws://", "http://")
        .trim_end_matches("/ws")
        .to_owned()
}

async fn get(url: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null),
    )
}

/// The whole history of `room`: (sequence, id) in order.
async fn history(gw: &Gateway, room: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut from = 0u64;
    loop {
        let (status, page) = get(&format!(
            "{}/api/v1/rooms/{room}/events?fromSequence={from}&limit=1000",
            http_base(gw)
        ))
        .await;
        assert_eq!(status, 200, "{page}");
        for e in page["events"].as_array().unwrap() {
            out.push((
                e["sequence"].as_u64().unwrap(),
                e["id"].as_str().unwrap().to_owned(),
            ));
        }
        match page["nextFromSequence"].as_u64() {
            Some(next) if page["hasMore"] == true => from = next,
            _ => return out,
        }
    }
}

async fn cursor(gw: &Gateway, subscriber: &str, room: &str) -> Option<u64> {
    let (status, body) = get(&format!(
        "{}/api/v1/subscribers/{subscriber}/cursors/{room}",
        http_base(gw)
    ))
    .await;
    (status == 200).then(|| body["sequence"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_cursors_survive_a_restart_and_a_second_process_is_refused() {
    let dir = temp_dir("sqlite-restart");
    let gw = start(&dir);
    let (mut ws, _) = tokio_tungstenite::connect_async(&gw.ws).await.unwrap();
    send(&mut ws, json!({"type": "init", "subscriberId": "reader"})).await;
    assert_eq!(recv(&mut ws).await["type"], "ready");
    send(&mut ws, json!({"type": "subscribe", "room": "chat:1"})).await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    for i in 0..3 {
        send(&mut ws, json!({"type": "publish", "requestId": i.to_string(), "event": {"id": format!("e{i}"), "type": "t", "room": "chat:1", "payload": {"i": i}}})).await;
    }
    let mut seen = 0;
    while seen < 3 {
        if recv(&mut ws).await["type"] == "event" {
            seen += 1;
        }
    }
    send(&mut ws, json!({"type": "ack", "room": "chat:1", "sequence": 2})).await;
    while cursor(&gw, "reader", "chat:1").await != Some(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The data folder belongs to this gateway: another process is refused.
    let d = dir.clone();
    let (code, _, stderr) = tokio::task::spawn_blocking(move || {
        run(
            &["gateway", "--port", "0", "--data-dir", d.to_str().unwrap()],
            &[],
        )
    })
    .await
    .unwrap();
    assert_ne!(code, 0);
    assert!(stderr.contains("in use by another process"), "{stderr}");

    drop(ws);
    drop(gw); // kill -9
    let gw = start(&dir);
    let ids: Vec<(u64, String)> = (0..3).map(|i| (i + 1, format!("e{i}"))).collect();
    assert_eq!(history(&gw, "chat:1").await, ids);
    assert_eq!(cursor(&gw, "reader", "chat:1").await, Some(2));
    // Sequences go on after the restart; an old id is still a duplicate.
    let (mut ws, _) = tokio_tungstenite::connect_async(&gw.ws).await.unwrap();
    send(&mut ws, json!({"type": "init", "subscriberId": "w"})).await;
    recv(&mut ws).await;
    send(&mut ws, json!({"type": "publish", "requestId": "dup", "event": {"id": "e1", "type": "t", "room": "chat:1", "payload": {}}})).await;
    let reply = recv(&mut ws).await;
    assert_eq!(
        (reply["sequence"].as_u64(), reply["duplicate"].as_bool()),
        (Some(2), Some(true)),
        "{reply}"
    );
    send(&mut ws, json!({"type": "publish", "requestId": "new", "event": {"type": "t", "room": "chat:1", "payload": {}}})).await;
    assert_eq!(recv(&mut ws).await["sequence"], 4);
    drop(gw);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_ten_publishers_keeps_every_acknowledged_event_once_and_gap_free() {
    let dir = temp_dir("sqlite-kill9");
    let mut gw = start(&dir);
    let room = "chat:crash";
    // (id → acknowledged sequence), filled by the publishers as answers arrive.
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut publishers = Vec::new();
    for p in 0..10 {
        let (url, acked) = (gw.ws.clone(), acked.clone());
        publishers.push(tokio::spawn(async move {
            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else { return };
            send(&mut ws, json!({"type": "init", "subscriberId": format!("p{p}")})).await;
            recv(&mut ws).await;
            for n in 0.. {
                let id = format!("p{p}-{n}");
                let msg = json!({"type": "publish", "requestId": id, "event": {"id": id, "type": "t", "room": room, "payload": {"n": n}}});
                if futures::SinkExt::send(&mut ws, tokio_tungstenite::tungstenite::Message::Text(msg.to_string().into())).await.is_err() {
                    return;
                }
                // Until the socket dies: every `published` is an acknowledged, stored event.
                loop {
                    let Some(Ok(frame)) = futures::StreamExt::next(&mut ws).await else { return };
                    let Ok(text) = frame.to_text() else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(text) else { continue };
                    if v["type"] == "published" {
                        acked.lock().unwrap().insert(v["id"].as_str().unwrap().to_owned(), v["sequence"].as_u64().unwrap());
                        break;
                    }
                    if v["type"] == "error" {
                        return;
                    }
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 400 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.child.kill().unwrap(); // SIGKILL, mid-stream
    gw.child.wait().unwrap();
    for p in publishers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let gw = start(&dir);
    let stored = history(&gw, room).await;
    let n = stored.len() as u64;
    assert!(
        n >= acked.len() as u64,
        "{n} stored < {} acknowledged",
        acked.len()
    );
    assert_eq!(
        stored.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "gap-free"
    );
    let mut by_id: HashMap<&str, u64> = HashMap::new();
    for (seq, id) in &stored {
        assert!(by_id.insert(id, *seq).is_none(), "{id} stored twice");
    }
    for (id, seq) in &acked {
        assert_eq!(by_id.get(id.as_str()), Some(seq), "acknowledged {id} at {seq}");
    }
    drop(gw);
    let _ = std::fs::remove_dir_all(dir);
}
