//! Scenarios: a workload of recording clients around a fault, judged by the
//! [`checker`](crate::checker).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;
use zps_client::{Backoff, Client, ClientEvent, ClientOptions, OutgoingEvent, SubscribeOptions};

use crate::checker::{self, History, Seen, Verdict};
use crate::gateway::GatewayProcess;
use crate::proxy::FaultProxy;

/// Where the gateways store events, with its flags and its cleanup.
#[derive(Debug, Clone)]
pub struct Provider {
    /// `postgres`, `redis`, …
    pub name: String,
    /// Gateway flags selecting it (with a schema / key prefix of this run).
    pub args: Vec<String>,
    /// Shell command that removes this run's data afterwards.
    pub cleanup: Option<String>,
}

impl Provider {
    /// The shared-storage providers a two-gateway scenario can use, from the test URLs.
    pub fn shared(name: &str, tag: &str) -> anyhow::Result<Self> {
        let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        let pg = env(
            "ZPS_TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
        let redis = env("ZPS_TEST_REDIS_URL", "redis://127.0.0.1:6379");
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        Ok(match name {
            "postgres" => Self {
                name: name.into(),
                args: s(&[
                    "--provider",
                    "postgres",
                    "--connection",
                    &pg,
                    "--postgres-schema",
                    tag,
                ]),
                cleanup: Some(format!("psql '{pg}' -qc 'DROP SCHEMA IF EXISTS {tag} CASCADE'")),
            },
            "redis" => Self {
                name: name.into(),
                args: s(&[
                    "--provider",
                    "redis",
                    "--connection",
                    &redis,
                    "--redis-prefix",
                    &format!("{tag}:"),
                ]),
                cleanup: Some(format!(
                    "redis-cli -u '{redis}' --scan --pattern '{tag}:*' | xargs -r redis-cli -u '{redis}' del >/dev/null"
                )),
            },
            "hybrid" => Self {
                name: name.into(),
                args: s(&[
                    "--provider",
                    "hybrid",
                    "--storage-provider",
                    "postgres",
                    "--storage-connection",
                    &pg,
                    "--postgres-schema",
                    tag,
                    "--realtime-provider",
                    "redis",
                    "--realtime-connection",
                    &redis,
                    "--redis-prefix",
                    &format!("{tag}:"),
                ]),
                cleanup: Some(format!(
                    "psql '{pg}' -qc 'DROP SCHEMA IF EXISTS {tag} CASCADE'; \
                     redis-cli -u '{redis}' --scan --pattern '{tag}:*' | xargs -r redis-cli -u '{redis}' del >/dev/null"
                )),
            },
            other => anyhow::bail!("no two-gateway setup for provider {other} (postgres, redis, hybrid)"),
        })
    }

    fn clean(&self) {
        if let Some(cmd) = &self.cleanup {
            let _ = std::process::Command::new("sh")
                .args(["-c", cmd])
                .env("PGOPTIONS", "--client-min-messages=warning")
                .status();
        }
    }
}

/// One scenario run, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Scenario name.
    pub scenario: String,
    /// Provider name.
    pub provider: String,
    /// Publish attempts (answered or not).
    pub attempts: u64,
    /// From the fault to the first acknowledged publish after it.
    pub recovery_ms: Option<u64>,
    /// From the end of publishing until every subscriber had every acknowledged event.
    pub converged_ms: Option<u64>,
    /// What the checker found.
    pub verdict: Verdict,
}

/// How big a run is.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Subscribing clients (each on every room).
    pub subscribers: usize,
    /// Publishing clients.
    pub publishers: usize,
    /// Rooms.
    pub rooms: usize,
    /// Load before the fault, and again after it.
    pub phase: Duration,
}

impl Size {
    /// CI-sized.
    pub fn quick() -> Self {
        Self {
            subscribers: 4,
            publishers: 2,
            rooms: 4,
            phase: Duration::from_millis(1500),
        }
    }

    /// The full run.
    pub fn full() -> Self {
        Self {
            subscribers: 20,
            publishers: 4,
            rooms: 8,
            phase: Duration::from_secs(5),
        }
    }
}

fn options(id: String) -> ClientOptions {
    let mut o = ClientOptions::default();
    o.subscriber_id = id;
    o.reconnect = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(500),
        max_attempts: None,
    };
    o.request_timeout = Duration::from_secs(5);
    o.connect_timeout = Duration::from_secs(2);
    o
}

/// Recording clients on `url`: subscribers from the start of every room, publishers in a loop.
struct Workload {
    history: Arc<Mutex<History>>,
    seen: Vec<Arc<Mutex<Vec<Seen>>>>,
    clients: Vec<Client>,
    stop: Arc<AtomicBool>,
    publishers: Vec<tokio::task::JoinHandle<u64>>,
    ack_times: Arc<Mutex<Vec<Instant>>>,
}

impl Workload {
    async fn start(url: &str, size: Size, tag: &str) -> anyhow::Result<Self> {
        let rooms: Vec<String> = (0..size.rooms).map(|i| format!("chaos:{tag}-{i}")).collect();
        let mut w = Self {
            history: Arc::default(),
            seen: Vec::new(),
            clients: Vec::new(),
            stop: Arc::default(),
            publishers: Vec::new(),
            ack_times: Arc::default(),
        };
        for s in 0..size.subscribers {
            let client = Client::connect(url, options(format!("sub-{tag}-{s}")))?;
            let mut sub = client
                .subscribe_with_options(rooms.clone(), SubscribeOptions::new().after(0))
                .await
                .context("subscribe")?;
            let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
            let log = seen.clone();
            tokio::spawn(async move {
                while let Some(item) = sub.next().await {
                    log.lock().push(match item {
                        ClientEvent::Event(e) => Seen::Event {
                            room: e.room.as_str().to_owned(),
                            sequence: e.sequence,
                            id: e.id.clone(),
                        },
                        ClientEvent::Discontinuity {
                            room,
                            reason,
                            earliest_sequence,
                            last_delivered,
                            ..
                        } => Seen::Discontinuity {
                            room,
                            reason: reason.as_str().to_owned(),
                            last_delivered,
                            earliest: earliest_sequence,
                        },
                        _ => continue,
                    });
                }
            });
            w.seen.push(seen);
            w.clients.push(client);
        }
        for p in 0..size.publishers {
            let client = Client::connect(url, options(format!("pub-{tag}-{p}")))?;
            let (history, stop, rooms, ack_times) = (
                w.history.clone(),
                w.stop.clone(),
                rooms.clone(),
                w.ack_times.clone(),
            );
            w.clients.push(client.clone());
            w.publishers.push(tokio::spawn(async move {
                let mut attempts = 0u64;
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let room = &rooms[(p + n) % rooms.len()];
                    let id = format!("p{p}-{n}");
                    // Retry the same id until answered: the id makes it idempotent.
                    loop {
                        attempts += 1;
                        let Ok(event) = OutgoingEvent::new(room.clone(), "chaos", &json!({"n": n})) else {
                            break;
                        };
                        match client.publish(event.with_id(id.clone())).await {
                            Ok(done) => {
                                history.lock().ack(room, done.sequence, &id);
                                ack_times.lock().push(Instant::now());
                                break;
                            }
                            Err(_) if stop.load(Ordering::Relaxed) => break,
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                attempts
            }));
        }
        Ok(w)
    }

    /// Stops publishing, waits until every subscriber has every acknowledged event
    /// (or `bound` passes), closes the clients and returns the history.
    async fn finish(self, bound: Duration) -> (History, u64, Option<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut attempts = 0;
        for p in self.publishers {
            attempts += p.await.unwrap_or(0);
        }
        let started = Instant::now();
        let heads: HashMap<String, u64> = self
            .history
            .lock()
            .acked
            .iter()
            .map(|(r, m)| (r.clone(), m.keys().next_back().copied().unwrap_or(0)))
            .collect();
        let mut converged = None;
        while started.elapsed() < bound {
            let done = self.seen.iter().all(|seen| {
                let seen = seen.lock();
                heads.iter().all(|(room, head)| {
                    seen.iter().any(|s| matches!(s, Seen::Event { room: r, sequence, .. } if r == room && sequence >= head))
                })
            });
            if done {
                converged = Some(started.elapsed().as_millis() as u64);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for c in &self.clients {
            c.close().await;
        }
        let mut history = self.history.lock().clone();
        history.subscribers = self
            .seen
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("sub-{i}"), s.lock().clone()))
            .collect();
        (history, attempts, converged)
    }
}

/// Scenario 1: two gateways behind a proxy (the load balancer); gateway A is
/// killed with SIGKILL under load; the proxy cuts A's connections and sends new
/// ones to B; clients reconnect and resume from their positions.
pub async fn gateway_kill(bin: &Path, provider: &Provider, size: Size, tag: &str) -> anyhow::Result<Outcome> {
    let mut args = provider.args.clone();
    args.push("--allow-client-publish".into());
    let mut a = GatewayProcess::start(bin, &args)?;
    let b = GatewayProcess::start(bin, &args)?;
    let proxy = FaultProxy::start(a.addr).await?;
    let url = format!("ws://{}/ws", proxy.addr());
    let work = Workload::start(&url, size, tag).await?;
    tokio::time::sleep(size.phase).await;
    a.kill();
    proxy.set_upstream(b.addr);
    proxy.cut_all();
    // Answers that A sent before it died may still arrive; count from the cut.
    let fault_at = Instant::now();
    tokio::time::sleep(size.phase).await;
    let ack_times = work.ack_times.clone();
    let (history, attempts, converged) = work.finish(Duration::from_secs(30)).await;
    let recovery = ack_times
        .lock()
        .iter()
        .find(|t| **t > fault_at)
        .map(|t| t.duration_since(fault_at).as_millis() as u64);
    let verdict = checker::check(&history);
    drop(b);
    provider.clean();
    Ok(Outcome {
        scenario: "gateway-kill".into(),
        provider: provider.name.clone(),
        attempts,
        recovery_ms: recovery,
        converged_ms: converged,
        verdict,
    })
}

/// A `redis-server` of the scenario's own (AOF with `appendfsync always`, so an
/// acknowledged write survives its SIGKILL), restartable on the same port and data.
pub struct OwnRedis {
    dir: PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    /// Starts it in a fresh folder on a free port.
    pub fn start(tag: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("zps-chaos-redis-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut r = Self {
            dir,
            port,
            child: None,
        };
        r.up()?;
        Ok(r)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) -> anyhow::Result<()> {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("redis-server is needed for the database-restart scenario")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "redis-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.up()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Scenario 2 (Redis): the gateway's Redis is killed with SIGKILL under load and
/// restarted a second later on the same data; the gateway must recover by itself
/// (no restart), publishers retry with the same ids, subscribers repair what the
/// lost pub/sub messages missed from the streams.
pub async fn redis_restart(bin: &Path, size: Size, tag: &str) -> anyhow::Result<Outcome> {
    let mut redis = OwnRedis::start(tag)?;
    let args: Vec<String> = [
        "--provider",
        "redis",
        "--connection",
        &redis.url(),
        "--allow-client-publish",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let gateway = GatewayProcess::start(bin, &args)?;
    let url = format!("ws://{}/ws", gateway.addr);
    let work = Workload::start(&url, size, tag).await?;
    tokio::time::sleep(size.phase).await;
    redis.kill();
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart()?;
    // The gateway's Redis client backs off up to 5 s between reconnects: give acks time to resume.
    tokio::time::sleep(size.phase.max(Duration::from_secs(6))).await;
    let ack_times = work.ack_times.clone();
    let (history, attempts, converged) = work.finish(Duration::from_secs(30)).await;
    let recovery = ack_times
        .lock()
        .iter()
        .find(|t| t.duration_since(down_at) > Duration::from_secs(1))
        .map(|t| t.duration_since(down_at).as_millis() as u64);
    drop(gateway);
    Ok(Outcome {
        scenario: "redis-restart".into(),
        provider: "redis".into(),
        attempts,
        recovery_ms: recovery,
        converged_ms: converged,
        verdict: checker::check(&history),
    })
}

/// The report files.
pub fn write_report(dir: &Path, outcomes: &[Outcome]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(outcomes)?)?;
    let mut md = String::from(
        "| scenario | provider | acked | delivered | lost | duplicated | out of order | discontinuities | first ack after the fault | converged after |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let v = &o.verdict;
        let disc = if v.discontinuities.is_empty() {
            "0".to_owned()
        } else {
            v.discontinuities
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            o.scenario,
            o.provider,
            v.acked,
            v.delivered,
            v.lost,
            v.duplicated,
            v.out_of_order,
            disc,
            o.recovery_ms.map_or("never".into(), |ms| format!("{ms} ms")),
            o.converged_ms.map_or("never".into(), |ms| format!("{ms} ms")),
        ));
    }
    let path = dir.join("report.md");
    std::fs::write(&path, md)?;
    Ok(path)
}
