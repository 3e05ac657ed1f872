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
    /// Rounds: every target of a scenario runs once per round, targets
    /// interleaved, and the targets are checked against the median of the
    /// per-round ratios (this machine drifts by ±15 % over minutes, for every
    /// server alike).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
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
    let mut results: BTreeMap<String, Vec<Vec<RunReport>>> = BTreeMap::new();
    let mut idle: Vec<IdleReport> = Vec::new();
    let rounds = args.rounds.max(1);
    report::header();
    for name in &chosen {
        if let Some((shape, targets)) = shape_of(name) {
            let mut every_round = Vec::with_capacity(rounds);
            for round in 1..=rounds {
                if rounds > 1 {
                    println!("-- {} round {round}/{rounds}", shape.name);
                }
                let mut runs = Vec::new();
                for &t in targets.iter().filter(|t| wanted(**t)) {
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
                    &serde_json::json!({"kind": "shape", "scenario": shape.name, "round": round, "rounds": rounds, "runs": rows}),
                )?;
                every_round.push(runs);
            }
            results.insert(name.clone(), every_round);
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

/// A target's run in one round.
fn find(runs: &[RunReport], t: Target) -> Option<&RunReport> {
    runs.iter().find(|r| r.target == t)
}

/// `value` in every round of `scenario` that has it, and its median.
fn across_rounds(
    results: &BTreeMap<String, Vec<Vec<RunReport>>>,
    scenario: &str,
    value: impl Fn(&[RunReport]) -> Option<f64>,
) -> Option<(f64, Vec<f64>)> {
    let values: Vec<f64> = results.get(scenario)?.iter().filter_map(|r| value(r)).collect();
    if values.is_empty() {
        return None;
    }
    Some((median(&values), values))
}

/// The middle value (the mean of the middle two for an even count); 0 for none.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[mid],
        _ => (sorted[mid - 1] + sorted[mid]) / 2.0,
    }
}

/// How a checked figure is shown: the value, and each round's when there were several.
fn shown(median: f64, values: &[f64], unit: &str) -> String {
    if values.len() == 1 {
        return format!("{median:.2}{unit}");
    }
    let each: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
    format!(
        "{median:.2}{unit} (median of {} rounds: {})",
        values.len(),
        each.join(", ")
    )
}

/// Deliveries/s of `a` ÷ deliveries/s of `b` within one round.
fn rate_ratio(a: Target, b: Target) -> impl Fn(&[RunReport]) -> Option<f64> {
    move |runs| {
        let (x, y) = (find(runs, a)?, find(runs, b)?);
        Some(x.deliver_per_sec / y.deliver_per_sec.max(1.0))
    }
}

/// The issue's targets, checked against this run (the median over its rounds).
fn verdicts(results: &BTreeMap<String, Vec<Vec<RunReport>>>, idle: &[IdleReport]) -> Vec<Verdict> {
    let mut out = Vec::new();
    if let Some((x, each)) = across_rounds(
        results,
        "fanout-1x1000",
        rate_ratio(Target::BareSmall, Target::Nats),
    ) {
        let ok = x >= 1.0;
        out.push(Verdict::new(
            "harness: bare-small loop ≥ nats-server on fanout-1x1000",
            format!(
                "{} nats-server's deliveries/s{}",
                shown(x, &each, "×"),
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
        if let Some((x, each)) = across_rounds(results, s, rate_ratio(Target::Zps, Target::BareGw)) {
            out.push(Verdict::new(
                format!("{s}: zps-json ≥ 0.9× bare-gw"),
                shown(x, &each, "×"),
                x >= 0.9,
            ));
        }
    }
    if let Some((x, each)) = across_rounds(
        results,
        "fanout-1x1000",
        rate_ratio(Target::ZpsCompact, Target::Nats),
    ) {
        out.push(Verdict::new(
            "fanout-1x1000: zps-compact above nats-server",
            shown(x, &each, "×"),
            x > 1.0,
        ));
    }
    let p99_ratio = |runs: &[RunReport]| {
        let (gw, base) = (find(runs, Target::Zps)?, find(runs, Target::BareGw)?);
        Some(gw.latency.p99_us as f64 / base.latency.p99_us.max(1) as f64)
    };
    if let Some((x, each)) = across_rounds(results, "rooms-100x10", p99_ratio) {
        out.push(Verdict::new(
            "rooms-100x10@20k/s: zps-json p99 ≤ 1.2× bare-gw p99",
            shown(x, &each, "×"),
            x <= 1.2,
        ));
    }
    let chat_p99 = |runs: &[RunReport]| find(runs, Target::Zps).map(|r| r.latency.p99_us as f64 / 1000.0);
    if let Some((ms, each)) = across_rounds(results, "chat-1x10", chat_p99) {
        out.push(Verdict::new(
            "chat-1x10@1k/s: zps-json p99 ≤ 1 ms",
            shown(ms, &each, " ms"),
            ms <= 1.0,
        ));
    }
    let idle_of = |t: Target| idle.iter().find(|r| r.target == t);
    if let Some(gw) = idle_of(Target::Zps) {
        let bare = idle_of(Target::BareSmall).map(|b| b.bytes_per_connection);
        out.push(Verdict::new(
            "idle-10k: ≤ 10 KB server RSS per connection, ≤ the bare loop",
            format!(
                "{:.1} KB ({})",
                gw.bytes_per_connection as f64 / 1000.0,
                bare.map_or("bare loop not measured".to_owned(), |b| format!(
                    "bare {:.1} KB",
                    b as f64 / 1000.0
                ))
            ),
            gw.bytes_per_connection <= 10_000 && bare.is_none_or(|b| gw.bytes_per_connection <= b),
        ));
    }
    let (lost, dup): (u64, u64) = results
        .values()
        .flatten()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[0.97, 0.81, 0.93]), 0.93);
        assert!((median(&[0.8, 1.0, 0.9, 0.7]) - 0.85).abs() < 1e-12);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn shows_each_round_only_when_there_were_several() {
        assert_eq!(shown(0.93, &[0.93], "×"), "0.93×");
        assert_eq!(
            shown(0.93, &[0.97, 0.81, 0.93], "×"),
            "0.93× (median of 3 rounds: 0.97, 0.81, 0.93)"
        );
    }
}
