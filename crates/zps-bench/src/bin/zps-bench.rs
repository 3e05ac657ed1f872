//! `cargo xtask bench`: drives the real gateway (`zero-pub-sub`, release build)
//! over real WebSockets and, in the same run with the same load generator, two
//! bare broadcast loops (small frames; frames of the gateway's size) and
//! nats-server. Prints them side by side with the server's and the load
//! generator's CPU and every target as a ratio, so a run shows whether it
//! measured the server or itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde::Serialize;
use tokio::sync::Semaphore;
use zps_bench::load::{self, Target};
use zps_bench::report::{self, Verdict};
use zps_bench::servers::{Launcher, Server};
use zps_bench::shape::{self, Durations, RunReport, Shape};
use zps_bench::wsclient::{self, Opcode};
use zps_bench::{mib, rate, scan_u64};

#[derive(Parser)]
#[command(
    name = "zps-bench",
    about = "zero-pub-sub gateway benchmarks against bare broadcast loops and nats-server"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios (all by default).
    Run(RunArgs),
    /// Serve the bare broadcast loop (used by `run`).
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
    /// Only these targets: zps-json, zps-compact, bare-small, bare-gw, nats.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// The gateway binary.
    #[arg(long, env = "ZPS_BENCH_GATEWAY_BIN")]
    gateway_bin: Option<PathBuf>,
    /// Append one JSON line per scenario here.
    #[arg(long, default_value = "bench-results.jsonl")]
    results: PathBuf,
    /// Shorter runs (1 s warm-up, 3 s measured; 2 000 idle connections): a smoke run.
    #[arg(long)]
    quick: bool,
    /// Warm-up seconds before the measured window.
    #[arg(long, default_value_t = 3)]
    warmup_secs: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    measure_secs: u64,
    /// Extra arguments for the gateway (e.g. `--provider redis --connection ...`).
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    gateway_args: Vec<String>,
}

const ALL: [&str; 6] = [
    "fanout-1x1000",
    "chat-1x10",
    "rooms-100x10",
    "rooms-1000x1",
    "idle-10k",
    "replay",
];

fn shape_of(name: &str) -> Option<(Shape, Vec<Target>)> {
    use Target::*;
    let every = vec![Zps, ZpsCompact, BareSmall, BareGw, Nats];
    let shape = |name: &str, rooms, subs_per_room, publishers, rate, window| Shape {
        name: name.into(),
        rooms,
        subs_per_room,
        publishers,
        rate,
        window,
    };
    Some(match name {
        "fanout-1x1000" => (shape(name, 1, 1000, 1, None, 64), every),
        // A chat room: 10 members, 1 000 messages/s — latency at a realistic load.
        "chat-1x10" => (
            shape("chat-1x10@1k/s", 1, 10, 1, Some(1_000.0), 64),
            vec![Zps, ZpsCompact, BareGw, Nats],
        ),
        "rooms-100x10" => (
            shape("rooms-100x10@20k/s", 100, 10, 4, Some(20_000.0), 64),
            vec![Zps, BareGw, Nats],
        ),
        "rooms-1000x1" => (shape(name, 1000, 1, 4, None, 64), every),
        _ => return None,
    })
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let chosen: Vec<String> = if args.scenarios.is_empty() {
        ALL.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenarios.clone()
    };
    let wanted = |t: Target| args.targets.is_empty() || args.targets.iter().any(|n| n == t.name());
    let launcher = Launcher {
        gateway_bin: zps_bench::servers::default_gateway_bin(args.gateway_bin.as_deref())?,
        gateway_args: args.gateway_args.clone(),
        nats_bin: zps_bench::nats::binary(),
    };
    let durations = if args.quick {
        Durations {
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs(3),
        }
    } else {
        Durations {
            warmup: Duration::from_secs(args.warmup_secs),
            measure: Duration::from_secs(args.measure_secs.max(1)),
        }
    };
    let mut results: BTreeMap<String, Vec<RunReport>> = BTreeMap::new();
    let mut idle: Vec<IdleReport> = Vec::new();
    report::header();
    for name in &chosen {
        if let Some((shape, targets)) = shape_of(name) {
            let mut runs = Vec::new();
            for t in targets.into_iter().filter(|t| wanted(*t)) {
                if t == Target::Nats && launcher.nats_bin.is_none() {
                    println!(
                        "{:<20} nats        skipped: nats-server not installed",
                        shape.name
                    );
                    continue;
                }
                let server = launcher.start(t)?;
                let r = shape::run(t, &server, &shape, durations)
                    .await
                    .with_context(|| format!("{} against {}", shape.name, t.name()))?;
                drop(server);
                runs.push(r);
            }
            let ratios = report::ratios(&runs);
            for (r, q) in runs.iter().zip(&ratios) {
                report::row(r, q);
            }
            let rows: Vec<_> = runs
                .iter()
                .zip(&ratios)
                .map(|(r, q)| serde_json::json!({"run": r, "ratios": q}))
                .collect();
            report::append(
                &args.results,
                &serde_json::json!({"kind": "shape", "scenario": shape.name, "runs": rows}),
            )?;
            results.insert(name.clone(), runs);
            continue;
        }
        match name.as_str() {
            "idle-10k" => {
                let n = if args.quick { 2_000 } else { 10_000 };
                for t in [Target::Zps, Target::BareSmall, Target::Nats] {
                    if !wanted(t) || (t == Target::Nats && launcher.nats_bin.is_none()) {
                        continue;
                    }
                    let server = launcher.start(t)?;
                    let r = run_idle(t, &server, n).await?;
                    println!(
                        "{:<20} {:<11} {} connections, each in its own room: server RSS {} -> {} = {:.1} KiB per connection",
                        r.scenario,
                        t.name(),
                        r.connections,
                        mib(r.rss_before_bytes),
                        mib(r.rss_after_bytes),
                        r.bytes_per_connection as f64 / 1024.0
                    );
                    idle.push(r);
                }
                report::append(&args.results, &serde_json::json!({"kind": "idle", "runs": idle}))?;
            }
            "replay" => {
                let server = launcher.start(Target::Zps)?;
                let r = run_replay(&server, if args.quick { 20_000 } else { 100_000 }).await?;
                println!(
                    "{:<20} zps-json    {} events caught up at {:.0} events/s; lost {} dup {}",
                    r.scenario, r.events, r.replay_per_sec, r.lost, r.duplicates_or_out_of_order,
                );
                report::append(&args.results, &serde_json::json!({"kind": "replay", "run": r}))?;
            }
            other => bail!("unknown scenario `{other}`; known: {}", ALL.join(", ")),
        }
    }
    report::print_verdicts(&verdicts(&results, &idle));
    Ok(())
}

/// The issue's targets, checked against this run.
fn verdicts(results: &BTreeMap<String, Vec<RunReport>>, idle: &[IdleReport]) -> Vec<Verdict> {
    let get = |s: &str, t: Target| {
        results
            .get(s)
            .and_then(|runs| runs.iter().find(|r| r.target == t))
    };
    let mut out = Vec::new();
    if let (Some(bare), Some(nats)) = (
        get("fanout-1x1000", Target::BareSmall),
        get("fanout-1x1000", Target::Nats),
    ) {
        let ok = bare.deliver_per_sec >= nats.deliver_per_sec;
        out.push(Verdict::new(
            "harness: bare-small loop ≥ nats-server on fanout-1x1000",
            format!(
                "{:.0} vs {:.0} deliveries/s{}",
                bare.deliver_per_sec,
                nats.deliver_per_sec,
                if ok {
                    ""
                } else {
                    " — the load generator may be the bottleneck"
                }
            ),
            ok,
        ));
    }
    for s in ["fanout-1x1000", "rooms-1000x1"] {
        if let (Some(gw), Some(base)) = (get(s, Target::Zps), get(s, Target::BareGw)) {
            let x = gw.deliver_per_sec / base.deliver_per_sec.max(1.0);
            out.push(Verdict::new(
                format!("{s}: zps-json ≥ 0.9× bare-gw"),
                format!(
                    "{x:.2}× ({:.0} vs {:.0} deliveries/s)",
                    gw.deliver_per_sec, base.deliver_per_sec
                ),
                x >= 0.9,
            ));
        }
    }
    if let (Some(gw), Some(nats)) = (
        get("fanout-1x1000", Target::ZpsCompact),
        get("fanout-1x1000", Target::Nats),
    ) {
        let x = gw.deliver_per_sec / nats.deliver_per_sec.max(1.0);
        out.push(Verdict::new(
            "fanout-1x1000: zps-compact above nats-server",
            format!(
                "{x:.2}× ({:.0} vs {:.0} deliveries/s)",
                gw.deliver_per_sec, nats.deliver_per_sec
            ),
            x > 1.0,
        ));
    }
    if let (Some(gw), Some(base)) = (
        get("rooms-100x10", Target::Zps),
        get("rooms-100x10", Target::BareGw),
    ) {
        let x = gw.latency.p99_us as f64 / base.latency.p99_us.max(1) as f64;
        out.push(Verdict::new(
            "rooms-100x10@20k/s: zps-json p99 ≤ 1.2× bare-gw p99",
            format!("{x:.2}× ({} µs vs {} µs)", gw.latency.p99_us, base.latency.p99_us),
            x <= 1.2,
        ));
    }
    if let Some(gw) = get("chat-1x10", Target::Zps) {
        out.push(Verdict::new(
            "chat-1x10@1k/s: zps-json p99 ≤ 1 ms",
            format!("{} µs", gw.latency.p99_us),
            gw.latency.p99_us <= 1_000,
        ));
    }
    let idle_of = |t: Target| idle.iter().find(|r| r.target == t);
    if let Some(gw) = idle_of(Target::Zps) {
        let bare = idle_of(Target::BareSmall).map_or(u64::MAX, |b| b.bytes_per_connection);
        out.push(Verdict::new(
            "idle-10k: ≤ 10 KB server RSS per connection, ≤ the bare loop",
            format!(
                "{:.1} KB (bare {:.1} KB)",
                gw.bytes_per_connection as f64 / 1000.0,
                bare as f64 / 1000.0
            ),
            gw.bytes_per_connection <= 10_000 && gw.bytes_per_connection <= bare,
        ));
    }
    let (lost, dup): (u64, u64) = results
        .values()
        .flatten()
        .fold((0, 0), |(l, d), r| (l + r.lost, d + r.duplicates_or_out_of_order));
    if !results.is_empty() {
        out.push(Verdict::new(
            "zero loss, zero duplicates, in order (every run)",
            format!("{lost} lost, {dup} duplicated or out of order"),
            lost == 0 && dup == 0,
        ));
    }
    out
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

async fn run_idle(target: Target, server: &Server, n: usize) -> anyhow::Result<IdleReport> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss();
    let limit = Arc::new(Semaphore::new(128));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let limit = limit.clone();
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let _p = limit.acquire_owned().await?;
            load::open_subscriber(target, addr, &format!("idle:{i}"), i, 4096).await
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
    events: u64,
    replay_per_sec: f64,
    lost: u64,
    duplicates_or_out_of_order: u64,
}

async fn run_replay(server: &Server, n: u64) -> anyhow::Result<ReplayReport> {
    // Publish n events, 256 in flight.
    let mut ws = wsclient::connect(server.addr, "/ws", None, 64 * 1024).await?;
    ws.send(Opcode::Text, br#"{"type":"init","subscriberId":"writer"}"#)
        .await?;
    ws.recv().await?;
    let (mut reader, mut writer) = ws.split();
    let answers = tokio::spawn(async move {
        let mut got = 0u64;
        let mut pings = Vec::new();
        while got < n {
            let open = reader
                .read_batch(
                    |_, d| got += u64::from(d.starts_with(br#"{"type":"published""#)),
                    &mut pings,
                )
                .await?;
            if !open {
                bail!("closed after {got} answers");
            }
        }
        anyhow::Ok(())
    });
    for i in 0..n {
        let frame = format!(
            r#"{{"type":"publish","event":{{"type":"bench","room":"replay:1","payload":{{"i":{i}}}}}}}"#
        );
        writer.queue(Opcode::Text, frame.as_bytes());
        if writer.queued() > 32 * 1024 {
            writer.flush().await?;
        }
    }
    writer.flush().await?;
    tokio::time::timeout(Duration::from_secs(120), answers).await???;
    let mut ws = wsclient::connect(server.addr, "/ws", None, 64 * 1024).await?;
    ws.send(Opcode::Text, br#"{"type":"init","subscriberId":"replayer"}"#)
        .await?;
    ws.recv().await?;
    let started = Instant::now();
    ws.send(
        Opcode::Text,
        br#"{"type":"subscribe","room":"replay:1","fromSequence":0}"#,
    )
    .await?;
    let (mut got, mut bad, mut next) = (0u64, 0u64, 1u64);
    while got < n {
        let open = tokio::time::timeout(
            Duration::from_secs(30),
            ws.read_batch(|_, d| {
                let Ok(text) = std::str::from_utf8(d) else { return };
                if !text.starts_with(r#"{"type":"event""#) {
                    return;
                }
                let seq = scan_u64(text, "\"sequence\":").unwrap_or(0);
                if seq != next {
                    bad += 1;
                }
                next = seq + 1;
                got += 1;
            }),
        )
        .await
        .context("replay stalled for 30 s")??;
        if !open {
            bail!("closed during replay after {got} events");
        }
    }
    Ok(ReplayReport {
        scenario: "replay",
        events: got,
        replay_per_sec: rate(got, started.elapsed()),
        lost: n - got,
        duplicates_or_out_of_order: bad,
    })
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
