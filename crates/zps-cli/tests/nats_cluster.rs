//! Two gateways on a three-node JetStream cluster (streams with 3 replicas):
//! publishers on both gateways publish to one room while the stream's leader
//! node is killed (`kill -9`) and restarted. Every acknowledged event reaches
//! every subscriber on both gateways exactly once, in order, with the
//! sequence its publisher was told; no event is stored twice.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::tls_servers::free_port;
use support::{Ws, ready, recv, start_gateway};

/// One `nats-server` of the cluster; killed when dropped.
struct Node {
    name: String,
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        let child = Command::new("nats-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("nats-server must be installed for the cluster test: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {}",
                self.name,
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL: no goodbye to the cluster
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cluster(dir: &Path) -> Vec<Node> {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let routes = ports
        .iter()
        .map(|(_, c)| format!("nats://127.0.0.1:{c}"))
        .collect::<Vec<_>>()
        .join(",");
    ports
        .iter()
        .enumerate()
        .map(|(i, (port, cluster_port))| {
            let name = format!("n{i}");
            let store: PathBuf = dir.join(&name);
            let args = [
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-n",
                &name,
                "-js",
                "-sd",
                &store.display().to_string(),
                "--cluster_name",
                "zps-test",
                "--cluster",
                &format!("nats://127.0.0.1:{cluster_port}"),
                "--routes",
                &routes,
            ]
            .map(String::from)
            .to_vec();
            Node {
                name,
                port: *port,
                args,
                child: None,
            }
        })
        .collect()
}

/// Connects a transport once the cluster has a JetStream leader; it creates the streams.
async fn wait_for_jetstream(urls: &str, prefix: &str) -> zps_nats::NatsTransport {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let config = zps_nats::NatsConfig::default()
            .with_prefix(prefix)
            .with_replicas(3);
        match zps_nats::NatsTransport::connect(urls, config).await {
            Ok(t) => return t,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the cluster never served JetStream: {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Publishes `count` events with ids `{name}-{i}`, retrying each (same id) until acknowledged.
async fn publish_all(
    url: String,
    name: String,
    count: usize,
    progress: Arc<AtomicUsize>,
) -> HashMap<String, u64> {
    let mut acked = HashMap::new();
    let mut ws = ready(&url, &name).await;
    for i in 0..count {
        let id = format!("{name}-{i}");
        loop {
            let msg = json!({"type": "publish", "requestId": id, "event": {"id": id, "type": "t", "room": "cluster:1", "payload": {"i": i}}});
            ws.send(Message::Text(msg.to_string().into())).await.unwrap();
            let answer = recv(&mut ws).await;
            if answer["type"] == "published" {
                acked.insert(id.clone(), answer["sequence"].as_u64().unwrap());
                progress.fetch_add(1, Ordering::SeqCst);
                break;
            }
            // Refused while the cluster elects a leader: the same id again.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    acked
}

/// Reads a subscriber's events until `stop` says every acked sequence is known.
async fn collect(mut ws: Ws, mut stop: tokio::sync::watch::Receiver<u64>) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    loop {
        let want = *stop.borrow();
        if want > 0 && seen.last().is_some_and(|(s, _): &(u64, String)| *s >= want) {
            return seen;
        }
        tokio::select! {
            msg = tokio::time::timeout(Duration::from_secs(90), ws.next()) => {
                let msg = msg.expect("no event within 90 s").unwrap().unwrap();
                if let Message::Text(t) = msg {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == "event" {
                        seen.push((v["data"]["sequence"].as_u64().unwrap(), v["data"]["id"].as_str().unwrap().to_owned()));
                    }
                }
            }
            _ = stop.changed() => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_survive_a_killed_jetstream_leader() {
    let dir = std::env::temp_dir().join(format!("zps-nats-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut nodes = cluster(&dir);
    for node in &mut nodes {
        node.start();
    }
    let urls = nodes
        .iter()
        .map(|n| format!("nats://127.0.0.1:{}", n.port))
        .collect::<Vec<_>>()
        .join(",");
    let prefix = "zps_cluster";
    let admin = wait_for_jetstream(&urls, prefix).await;
    let args = [
        "--provider",
        "nats",
        "--connection",
        &urls,
        "--nats-prefix",
        prefix,
        "--nats-replicas",
        "3",
        "--allow-client-publish",
        "--max-messages-per-window",
        "100000",
    ];
    let gateways = [start_gateway(&args), start_gateway(&args)];
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(0u64);
    let mut readers = Vec::new();
    for (i, gw) in [&gateways[0], &gateways[1], &gateways[0], &gateways[1]]
        .into_iter()
        .enumerate()
    {
        let mut ws = ready(&gw.ws, &format!("sub-{i}")).await;
        ws.send(Message::Text(
            json!({"type": "subscribe", "room": "cluster:1"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        assert_eq!(recv(&mut ws).await["type"], "subscribed");
        readers.push(tokio::spawn(collect(ws, stop_rx.clone())));
    }
    let per = 150;
    let progress = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = gateways
        .iter()
        .enumerate()
        .map(|(g, gw)| {
            tokio::spawn(publish_all(
                gw.ws.clone(),
                format!("pub{g}"),
                per,
                progress.clone(),
            ))
        })
        .collect();

    // Kill the node leading the events stream mid-stream, then bring it back.
    while progress.load(Ordering::SeqCst) < per / 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let js = zps_nats::async_nats::jetstream::new(admin.client().clone());
    let mut stream = js.get_stream(admin.config().events_stream()).await.unwrap();
    let leader = stream
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .unwrap();
    let victim = nodes.iter_mut().find(|n| n.name == leader).unwrap();
    victim.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked_while_down = progress.load(Ordering::SeqCst);
    victim.start();

    let mut acked = HashMap::new();
    for p in publishers {
        acked.extend(p.await.unwrap());
    }
    let total = acked.len() as u64;
    assert!(
        (acked_while_down as u64) < total,
        "publishing went on after the node came back ({acked_while_down} of {total} acknowledged before)"
    );
    assert_eq!(total, 2 * per as u64);
    let mut by_seq: Vec<(u64, String)> = acked.iter().map(|(id, s)| (*s, id.clone())).collect();
    by_seq.sort();
    assert_eq!(
        by_seq.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "acknowledged sequences are 1..=N: no gap, none twice"
    );
    stop_tx.send(total).unwrap();
    for reader in readers {
        let seen = reader.await.unwrap();
        assert_eq!(
            seen, by_seq,
            "every subscriber: each acknowledged event once, in order"
        );
    }
    let room = zps_core::Room::parse("cluster:1").unwrap();
    // The test's own connection may still be finding its way back to the cluster.
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        match zps_core::Transport::room_info(&admin, &room).await {
            Ok(info) => break info,
            Err(e) => assert!(Instant::now() < deadline, "room info: {e}"),
        }
    };
    assert_eq!(
        info.last_sequence, total,
        "nothing stored beyond what was acknowledged"
    );
    drop(gateways);
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
