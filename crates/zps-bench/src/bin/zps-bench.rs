//! `cargo xtask bench`: drives the real gateway (`zero-pub-sub`, release build)
//! over real WebSockets and, in the same run, a bare broadcast server on the same
//! socket library (the ceiling for this machine), then prints both and their
//! ratio. Every delivery is counted per subscriber, so loss, duplicates and
//! reordering are reported, not assumed.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use zps_bench::{Percentiles, latency_histogram, mib, rate, rss_of_pid, scan_u64};

#[derive(Parser)]
#[command(
    name = "zps-bench",
    about = "zero-pub-sub gateway benchmarks against a bare broadcast baseline"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios (all by default).
    Run(RunArgs),
    /// Serve the bare broadcast baseline (used by `run`).
    BaselineServer {
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Scenarios: fanout-1x1000, chat-1x10, rooms-100x10, rooms-1000x1, idle-10k, replay.
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// The gateway binary.
    #[arg(long, env = "ZPS_BENCH_GATEWAY_BIN")]
    gateway_bin: Option<PathBuf>,
    /// Append one JSON line per result here.
    #[arg(long, default_value = "bench-results.jsonl")]
    results: PathBuf,
    /// Smaller message counts (a smoke run).
    #[arg(long)]
    quick: bool,
    /// Extra arguments for the gateway (e.g. `--provider redis --connection ...`).
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    gateway_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Target {
    Gateway,
    Baseline,
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn rss(&self) -> u64 {
        rss_of_pid(self.pid()).unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(mut cmd: Command) -> anyhow::Result<Server> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env("RUST_LOG", "warn");
    let mut child = cmd.spawn().context("cannot start the server")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .split_whitespace()
        .find_map(|w| {
            let w = w.trim_start_matches("ws://").trim_start_matches("http://");
            w.split('/').next().and_then(|a| a.parse::<SocketAddr>().ok())
        })
        .with_context(|| format!("no address in the server's first line: {line:?}"))?;
    Ok(Server { child, addr })
}

fn spawn_gateway(args: &RunArgs) -> anyhow::Result<Server> {
    let bin = match &args.gateway_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("zero-pub-sub"),
    };
    if !bin.exists() {
        bail!(
            "gateway binary {} not found (build it: cargo build --release -p zps-cli)",
            bin.display()
        );
    }
    let mut cmd = Command::new(bin);
    cmd.args([
        "gateway",
        "--port",
        "0",
        "--allow-client-publish",
        "--max-messages-per-window",
        "100000000",
        "--max-connections",
        "20000",
        "--memory-max-events-per-room",
        "200000",
        // The load generator shares the cores: do not cut its connections as slow consumers.
        "--max-socket-buffered-bytes",
        "67108864",
        "--max-replay-limit",
        "10000",
    ]);
    cmd.args(&args.gateway_args);
    spawn(cmd)
}

fn spawn_baseline() -> anyhow::Result<Server> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["baseline-server", "--port", "0"]);
    spawn(cmd)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> anyhow::Result<Ws> {
    // No Nagle on the client side either: every frame is latency-sensitive.
    let connect = tokio_tungstenite::connect_async_with_config(url, None, true);
    let (ws, _) = tokio::time::timeout(Duration::from_secs(20), connect)
        .await
        .context("connect timed out")?
        .context("connect failed")?;
    Ok(ws)
}

async fn recv_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.to_string()),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => bail!("read failed: {e}"),
            Ok(None) => bail!("connection closed"),
            Err(_) => bail!("no message in 30 s"),
        }
    }
}

async fn send(ws: &mut Ws, text: String) -> anyhow::Result<()> {
    ws.send(Message::Text(text.into())).await.context("send failed")
}

/// Connects a subscriber of `room` and waits until it is subscribed.
async fn open_subscriber(target: Target, addr: SocketAddr, room: &str, id: usize) -> anyhow::Result<Ws> {
    match target {
        Target::Gateway => {
            let mut ws = connect(&format!("ws://{addr}/ws")).await?;
            send(&mut ws, format!(r#"{{"type":"init","subscriberId":"sub-{id}"}}"#)).await?;
            recv_text(&mut ws).await?;
            send(&mut ws, format!(r#"{{"type":"subscribe","room":"{room}"}}"#)).await?;
            let answer = recv_text(&mut ws).await?;
            if !answer.contains("\"subscribed\"") {
                bail!("subscribe failed: {answer}");
            }
            Ok(ws)
        }
        Target::Baseline => connect(&format!("ws://{addr}/ws?room={room}")).await,
    }
}

struct SubResult {
    received: u64,
    bad: u64,
    hist: Histogram<u64>,
    last_us: u64,
}

impl SubResult {
    fn new() -> Self {
        Self {
            received: 0,
            bad: 0,
            hist: latency_histogram(),
            last_us: 0,
        }
    }
}

/// Counts one subscriber's deliveries into `out` until `expected` arrived or
/// the socket closed. The caller aborts it at the deadline, so the per-message
/// path holds no shared lock and arms no timer (both would weigh on the
/// latency it measures, for the gateway and the baseline alike).
async fn run_subscriber(
    mut ws: Ws,
    target: Target,
    expected: u64,
    warmup: u64,
    epoch: Instant,
    out: Arc<parking_lot::Mutex<SubResult>>,
) {
    let mut next_i = 0u64;
    loop {
        let msg = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            _ => break,
        };
        let text = msg.as_str();
        if target == Target::Gateway && !text.starts_with(r#"{"type":"event""#) {
            continue;
        }
        let now = epoch.elapsed().as_micros() as u64;
        let mut r = out.lock();
        let (Some(i), Some(sent)) = (scan_u64(text, "\"i\":"), scan_u64(text, "\"t\":")) else {
            r.bad += 1;
            continue;
        };
        if i != next_i {
            r.bad += 1;
        }
        next_i = i + 1;
        if i >= warmup {
            let _ = r.hist.record(now.saturating_sub(sent).max(1));
        }
        r.received += 1;
        r.last_us = now;
        if r.received >= expected {
            break;
        }
    }
}

struct PubResult {
    sent: u64,
    first_us: u64,
    done_us: u64,
}

/// One publisher's job.
struct PubSpec {
    target: Target,
    addr: SocketAddr,
    rooms: Vec<String>,
    per_room: u64,
    rate_per_sec: Option<f64>,
    window: usize,
    id: usize,
}

/// Publishes `per_room` messages to each room, at most `window` unanswered, paced to `rate`.
async fn run_publisher(spec: PubSpec, epoch: Instant) -> anyhow::Result<PubResult> {
    let PubSpec {
        target,
        addr,
        rooms,
        per_room,
        rate_per_sec,
        window,
        id,
    } = spec;
    let url = match target {
        Target::Gateway => format!("ws://{addr}/ws"),
        Target::Baseline => format!("ws://{addr}/publish"),
    };
    let mut ws = connect(&url).await?;
    if target == Target::Gateway {
        send(&mut ws, format!(r#"{{"type":"init","subscriberId":"pub-{id}"}}"#)).await?;
        recv_text(&mut ws).await?;
    }
    let (mut sink, mut stream) = ws.split();
    let permits = Arc::new(Semaphore::new(window));
    let total = per_room * rooms.len() as u64;
    let acks = {
        let permits = permits.clone();
        tokio::spawn(async move {
            let mut acked = 0u64;
            while acked < total {
                match stream.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let t = t.as_str();
                        if t == "ok" || t.starts_with(r#"{"type":"published""#) {
                            acked += 1;
                            permits.add_permits(1);
                        } else if t.starts_with(r#"{"type":"error""#) {
                            eprintln!("publisher error: {t}");
                            acked += 1;
                            permits.add_permits(1);
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            acked
        })
    };
    let started = Instant::now();
    let first_us = epoch.elapsed().as_micros() as u64;
    let mut n = 0u64;
    for i in 0..per_room {
        for room in &rooms {
            if let Some(rate) = rate_per_sec {
                let due = started + Duration::from_secs_f64(n as f64 / rate);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            permits.acquire().await?.forget();
            let t = epoch.elapsed().as_micros() as u64;
            let frame = match target {
                Target::Gateway => format!(
                    r#"{{"type":"publish","event":{{"type":"bench","room":"{room}","payload":{{"t":{t},"i":{i}}}}}}}"#
                ),
                // The same shape and size as the gateway's event frame.
                Target::Baseline => format!(
                    r#"{{"type":"event","data":{{"id":"01935b9e-0000-7000-8000-{i:012}","type":"bench","room":"{room}","sequence":{},"emittedAt":"2026-11-22T00:00:00.000Z","expiresAt":"2026-11-23T00:00:00.000Z","payload":{{"t":{t},"i":{i}}}}}}}"#,
                    i + 1
                ),
            };
            sink.feed(Message::Text(frame.into())).await?;
            n += 1;
            if permits.available_permits() == 0 || rate_per_sec.is_some() {
                sink.flush().await?;
            }
        }
    }
    sink.flush().await?;
    let acked = tokio::time::timeout(Duration::from_secs(120), acks).await??;
    Ok(PubResult {
        sent: acked,
        first_us,
        done_us: epoch.elapsed().as_micros() as u64,
    })
}

#[derive(Debug, Clone, Serialize)]
struct FanoutReport {
    scenario: String,
    target: Target,
    rooms: usize,
    subscribers: usize,
    publishers: usize,
    published: u64,
    publish_per_sec: f64,
    delivered: u64,
    deliver_per_sec: f64,
    latency: Percentiles,
    lost: u64,
    duplicates_or_out_of_order: u64,
    server_rss_bytes: u64,
}

#[derive(Clone)]
struct Fanout {
    name: String,
    rooms: usize,
    subs_per_room: usize,
    publishers: usize,
    per_room: u64,
    rate: Option<f64>,
    window: usize,
}

async fn run_fanout(target: Target, server: &Server, f: &Fanout) -> anyhow::Result<FanoutReport> {
    let epoch = Instant::now();
    let rooms: Vec<String> = (0..f.rooms).map(|r| format!("bench:{r}")).collect();
    let warmup = (f.per_room / 10).min(200);
    let mut subs = Vec::new();
    let connect_limit = Arc::new(Semaphore::new(64));
    let mut opened = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        for s in 0..f.subs_per_room {
            let room = room.clone();
            let limit = connect_limit.clone();
            let addr = server.addr;
            opened.push(tokio::spawn(async move {
                let _p = limit.acquire_owned().await?;
                open_subscriber(target, addr, &room, r * 100_000 + s).await
            }));
        }
    }
    for o in opened {
        let ws = o.await??;
        let out = Arc::new(parking_lot::Mutex::new(SubResult::new()));
        let task = tokio::spawn(run_subscriber(ws, target, f.per_room, warmup, epoch, out.clone()));
        subs.push((task, out));
    }
    let mut pubs = Vec::new();
    for p in 0..f.publishers {
        let mine: Vec<String> = rooms.iter().skip(p).step_by(f.publishers).cloned().collect();
        let rate = f.rate.map(|r| r / f.publishers as f64);
        let spec = PubSpec {
            target,
            addr: server.addr,
            rooms: mine,
            per_room: f.per_room,
            rate_per_sec: rate,
            window: f.window,
            id: p,
        };
        pubs.push(tokio::spawn(run_publisher(spec, epoch)));
    }
    let mut published = 0;
    let (mut first_us, mut done_us) = (u64::MAX, 0);
    for p in pubs {
        let r = p.await??;
        published += r.sent;
        first_us = first_us.min(r.first_us);
        done_us = done_us.max(r.done_us);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let rss = server.rss();
    let mut hist = latency_histogram();
    let (mut delivered, mut bad, mut lost, mut last_us) = (0, 0, 0, 0);
    for (mut task, out) in subs {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            // Whatever did not arrive by now is reported as lost.
            task.abort();
        }
        let r = out.lock();
        delivered += r.received;
        bad += r.bad;
        lost += f.per_room.saturating_sub(r.received);
        last_us = last_us.max(r.last_us);
        hist.add(&r.hist)?;
    }
    Ok(FanoutReport {
        scenario: f.name.clone(),
        target,
        rooms: f.rooms,
        subscribers: f.rooms * f.subs_per_room,
        publishers: f.publishers,
        published,
        publish_per_sec: rate(published, Duration::from_micros(done_us.saturating_sub(first_us))),
        delivered,
        deliver_per_sec: rate(delivered, Duration::from_micros(last_us.saturating_sub(first_us))),
        latency: Percentiles::of(&hist),
        lost,
        duplicates_or_out_of_order: bad,
        server_rss_bytes: rss,
    })
}

#[derive(Debug, Serialize)]
struct IdleReport {
    scenario: &'static str,
    target: Target,
    connections: usize,
    rss_before_bytes: u64,
    rss_after_bytes: u64,
    bytes_per_connection: u64,
}

async fn run_idle(target: Target, server: &Server, n: usize, rooms: usize) -> anyhow::Result<IdleReport> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss();
    let limit = Arc::new(Semaphore::new(128));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let limit = limit.clone();
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let _p = limit.acquire_owned().await?;
            open_subscriber(target, addr, &format!("idle:{}", i % rooms), i).await
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        conns.push(t.await??);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss();
    drop(conns);
    Ok(IdleReport {
        scenario: "idle-10k",
        target,
        connections: n,
        rss_before_bytes: before,
        rss_after_bytes: after,
        bytes_per_connection: after.saturating_sub(before) / n as u64,
    })
}

#[derive(Debug, Serialize)]
struct ReplayReport {
    scenario: &'static str,
    target: Target,
    events: u64,
    replay_per_sec: f64,
    lost: u64,
    duplicates_or_out_of_order: u64,
    server_rss_growth_bytes: u64,
}

async fn run_replay(server: &Server, n: u64) -> anyhow::Result<ReplayReport> {
    let epoch = Instant::now();
    let spec = PubSpec {
        target: Target::Gateway,
        addr: server.addr,
        rooms: vec!["replay:1".into()],
        per_room: n,
        rate_per_sec: None,
        window: 256,
        id: 0,
    };
    run_publisher(spec, epoch).await?;
    let rss_before = server.rss();
    let mut ws = connect(&format!("ws://{}/ws", server.addr)).await?;
    send(&mut ws, r#"{"type":"init","subscriberId":"replayer"}"#.into()).await?;
    recv_text(&mut ws).await?;
    let started = Instant::now();
    send(
        &mut ws,
        r#"{"type":"subscribe","room":"replay:1","fromSequence":0}"#.into(),
    )
    .await?;
    let (mut got, mut bad, mut next) = (0u64, 0u64, 1u64);
    let mut peak = rss_before;
    while got < n {
        let text = recv_text(&mut ws).await?;
        if !text.starts_with(r#"{"type":"event""#) {
            continue;
        }
        let seq = scan_u64(&text, "\"sequence\":").unwrap_or(0);
        if seq != next {
            bad += 1;
        }
        next = seq + 1;
        got += 1;
        if got % 10_000 == 0 {
            peak = peak.max(server.rss());
        }
    }
    let elapsed = started.elapsed();
    Ok(ReplayReport {
        scenario: "replay",
        target: Target::Gateway,
        events: got,
        replay_per_sec: rate(got, elapsed),
        lost: n - got,
        duplicates_or_out_of_order: bad,
        server_rss_growth_bytes: peak.saturating_sub(rss_before),
    })
}

fn append(results: &PathBuf, line: &impl Serialize) -> anyhow::Result<()> {
    let mut v = serde_json::to_value(line)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("unix_time".into(), zps_core::Timestamp::now().as_millis().into());
        o.insert(
            "cores".into(),
            std::thread::available_parallelism().map_or(0, |n| n.get()).into(),
        );
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(results)?;
    writeln!(f, "{v}")?;
    Ok(())
}

fn print_fanout(r: &FanoutReport, ratio: Option<f64>) {
    println!(
        "{:<22} {:<9} {:>9} {:>10.0} {:>10} {:>11.0} {:>7} {:>7} {:>7} {:>8} {:>8} {:>5} {:>4} {:>10} {}",
        r.scenario,
        format!("{:?}", r.target).to_lowercase(),
        r.published,
        r.publish_per_sec,
        r.delivered,
        r.deliver_per_sec,
        r.latency.p50_us,
        r.latency.p90_us,
        r.latency.p99_us,
        r.latency.p999_us,
        r.latency.max_us,
        r.lost,
        r.duplicates_or_out_of_order,
        mib(r.server_rss_bytes),
        ratio.map(|x| format!("{:.0}%", x * 100.0)).unwrap_or_default(),
    );
}

async fn fanout_pair(args: &RunArgs, f: &Fanout) -> anyhow::Result<(FanoutReport, FanoutReport)> {
    let gw = {
        let server = spawn_gateway(args)?;
        run_fanout(Target::Gateway, &server, f).await?
    };
    let base = {
        let server = spawn_baseline()?;
        run_fanout(Target::Baseline, &server, f).await?
    };
    let ratio = gw.deliver_per_sec / base.deliver_per_sec.max(1.0);
    print_fanout(&gw, Some(ratio));
    print_fanout(&base, None);
    append(
        &args.results,
        &serde_json::json!({"kind": "fanout", "gateway": gw, "baseline": base, "deliver_ratio": ratio}),
    )?;
    Ok((gw, base))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let all = [
        "fanout-1x1000",
        "chat-1x10",
        "rooms-100x10",
        "rooms-1000x1",
        "idle-10k",
        "replay",
    ];
    let chosen: Vec<String> = if args.scenarios.is_empty() {
        all.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenarios.clone()
    };
    let q = if args.quick { 5 } else { 1 };
    println!(
        "{:<22} {:<9} {:>9} {:>10} {:>10} {:>11} {:>7} {:>7} {:>7} {:>8} {:>8} {:>5} {:>4} {:>10} ratio",
        "scenario",
        "target",
        "published",
        "pub/s",
        "delivered",
        "deliver/s",
        "p50µs",
        "p90µs",
        "p99µs",
        "p99.9µs",
        "maxµs",
        "lost",
        "dup",
        "server RSS"
    );
    for name in &chosen {
        match name.as_str() {
            "fanout-1x1000" => {
                let f = Fanout {
                    name: "fanout-1x1000".into(),
                    rooms: 1,
                    subs_per_room: 1000,
                    publishers: 1,
                    per_room: 2000 / q,
                    rate: None,
                    window: 64,
                };
                let (gw, _) = fanout_pair(&args, &f).await?;
                // Latency below saturation: fractions of the gateway's delivery capacity,
                // converted to messages per second for 1 000 subscribers (~5 s per point).
                let max_rate = gw.deliver_per_sec / (f.rooms * f.subs_per_room) as f64;
                for pct in [10u32, 25, 50] {
                    let rate = (max_rate * f64::from(pct) / 100.0).max(5.0);
                    let point = Fanout {
                        name: format!("fanout-1x1000@{pct}%"),
                        rate: Some(rate),
                        per_room: ((rate * 5.0) as u64).clamp(50, 2000) / q,
                        ..f.clone()
                    };
                    fanout_pair(&args, &point).await?;
                }
            }
            "chat-1x10" => {
                // A chat room: 10 members, 1 000 messages/s — latency at a realistic load.
                let f = Fanout {
                    name: "chat-1x10@1k/s".into(),
                    rooms: 1,
                    subs_per_room: 10,
                    publishers: 1,
                    per_room: 5000 / q,
                    rate: Some(1_000.0),
                    window: 64,
                };
                fanout_pair(&args, &f).await?;
            }
            "rooms-100x10" => {
                let f = Fanout {
                    name: "rooms-100x10@20k/s".into(),
                    rooms: 100,
                    subs_per_room: 10,
                    publishers: 4,
                    per_room: 600 / q,
                    rate: Some(20_000.0),
                    window: 256,
                };
                fanout_pair(&args, &f).await?;
            }
            "rooms-1000x1" => {
                let f = Fanout {
                    name: "rooms-1000x1".into(),
                    rooms: 1000,
                    subs_per_room: 1,
                    publishers: 4,
                    per_room: 100 / q,
                    rate: None,
                    window: 256,
                };
                fanout_pair(&args, &f).await?;
            }
            "idle-10k" => {
                let n = (10_000 / q) as usize;
                let gw = {
                    let server = spawn_gateway(&args)?;
                    run_idle(Target::Gateway, &server, n, 1000).await?
                };
                let base = {
                    let server = spawn_baseline()?;
                    run_idle(Target::Baseline, &server, n, 1000).await?
                };
                for r in [&gw, &base] {
                    println!(
                        "{:<22} {:<9} {} connections: server RSS {} -> {} = {:.1} KiB per connection",
                        r.scenario,
                        format!("{:?}", r.target).to_lowercase(),
                        r.connections,
                        mib(r.rss_before_bytes),
                        mib(r.rss_after_bytes),
                        r.bytes_per_connection as f64 / 1024.0
                    );
                }
                append(
                    &args.results,
                    &serde_json::json!({"kind": "idle", "gateway": gw, "baseline": base}),
                )?;
            }
            "replay" => {
                let server = spawn_gateway(&args)?;
                let r = run_replay(&server, 100_000 / q).await?;
                println!(
                    "{:<22} gateway   {} events caught up at {:.0} events/s; lost {} dup {}; server RSS growth {}",
                    r.scenario,
                    r.events,
                    r.replay_per_sec,
                    r.lost,
                    r.duplicates_or_out_of_order,
                    mib(r.server_rss_growth_bytes)
                );
                append(
                    &args.results,
                    &serde_json::json!({"kind": "replay", "gateway": r}),
                )?;
            }
            other => bail!("unknown scenario `{other}`; known: {}", all.join(", ")),
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::Run(args) => run(args).await,
            Cmd::BaselineServer { port } => {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
                println!("baseline listening on http://{}", listener.local_addr()?);
                zps_bench::baseline::serve(listener).await?;
                Ok(())
            }
        }
    })
}
