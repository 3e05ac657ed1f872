//! `zps-chaos`: runs fault scenarios against the built `zero-pub-sub` binary and
//! writes `target/chaos/report.md` + `report.json`; exits non-zero when the
//! checker finds a lost, duplicated or reordered acknowledged event, when a
//! subscriber never catches up, or when publishing never resumes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use zps_chaos::scenarios::{self, Heal, Outcome};
use zps_chaos::services::Provider;
use zps_chaos::workload::Size;

/// Every scenario with the providers it applies to.
const SCENARIOS: &[(&str, &[&str])] = &[
    ("gateway-kill", &["postgres", "redis", "hybrid", "nats"]),
    ("redis-restart", &["redis", "hybrid"]),
    ("postgres-restart", &["postgres", "hybrid"]),
    ("nats-restart", &["nats"]),
    ("redis-partition", &["redis", "hybrid"]),
    ("redis-partition-reset", &["redis", "hybrid"]),
    ("redis-cluster-failover", &["redis", "hybrid"]),
    ("slow-clients", &["memory"]),
    ("reconnect-storm", &["redis", "sqlite", "mongo", "nats"]),
    ("memory-soak", &["redis"]),
];

#[derive(Parser)]
#[command(about = "Fault scenarios with an independent checker")]
struct Args {
    /// The `zero-pub-sub` binary under test.
    #[arg(long)]
    gateway_bin: PathBuf,
    /// CI-sized runs.
    #[arg(long)]
    quick: bool,
    /// Providers to run on (each scenario runs on those of them it applies to).
    /// `mongo` (the stand-in) is opt-in: it saturates at the full storm's 10 000 clients.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "memory,sqlite,postgres,redis,hybrid,nats"
    )]
    providers: Vec<String>,
    /// How long the memory soak runs [default: 1800, 120 with --quick].
    #[arg(long)]
    soak_secs: Option<u64>,
    /// Where the report goes.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Scenarios (default: all): gateway-kill, redis-restart, postgres-restart, nats-restart,
    /// redis-partition, redis-partition-reset, redis-cluster-failover, slow-clients,
    /// reconnect-storm, memory-soak.
    scenarios: Vec<String>,
}

async fn run_one(args: &Args, scenario: &str, provider: &str, size: Size) -> anyhow::Result<Outcome> {
    let tag = format!(
        "chaos_{}_{}_{provider}",
        std::process::id(),
        scenario.replace('-', "_")
    );
    let bin = &args.gateway_bin;
    match scenario {
        "gateway-kill" => scenarios::gateway_kill(bin, &Provider::shared(provider, &tag)?, size, &tag).await,
        "redis-restart" => scenarios::redis_restart(bin, provider, size, &tag).await,
        "postgres-restart" => scenarios::postgres_restart(bin, provider, size, &tag).await,
        "nats-restart" => scenarios::nats_restart(bin, size, &tag).await,
        "redis-partition" => scenarios::redis_partition(bin, provider, Heal::Resume, size, &tag).await,
        "redis-partition-reset" => scenarios::redis_partition(bin, provider, Heal::Reset, size, &tag).await,
        "redis-cluster-failover" => scenarios::redis_cluster_failover(bin, provider, size, &tag).await,
        "slow-clients" => scenarios::slow_clients(bin, &Provider::shared(provider, &tag)?, size, &tag).await,
        "reconnect-storm" => {
            let p = Provider::shared(provider, &tag)?;
            scenarios::reconnect_storm(bin, &p, size, size.storm_clients, &tag).await
        }
        "memory-soak" => {
            let secs = args.soak_secs.unwrap_or(if args.quick { 120 } else { 1800 });
            let p = Provider::shared(provider, &tag)?;
            scenarios::memory_soak(bin, &p, size, std::time::Duration::from_secs(secs), &tag).await
        }
        other => anyhow::bail!("unknown scenario {other}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    for s in &args.scenarios {
        anyhow::ensure!(
            SCENARIOS.iter().any(|(name, _)| name == s),
            "unknown scenario {s}; known: {}",
            SCENARIOS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        );
    }
    let size = if args.quick { Size::quick() } else { Size::full() };
    let mut outcomes = Vec::new();
    for (scenario, applies) in SCENARIOS {
        if !args.scenarios.is_empty() && !args.scenarios.iter().any(|s| s == scenario) {
            continue;
        }
        for provider in applies.iter().filter(|p| args.providers.iter().any(|q| q == *p)) {
            eprintln!("zps-chaos: {scenario} on {provider}");
            let o = run_one(&args, scenario, provider, size).await?;
            eprintln!("  {:?}", o.verdict);
            outcomes.push(o);
        }
    }
    let report = zps_chaos::report::write(&args.out, &outcomes)?;
    println!("{}", std::fs::read_to_string(&report)?);
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed()).collect();
    for o in &failed {
        eprintln!(
            "zps-chaos: {} on {} FAILED (converged: {:?}, first ack after the fault: {:?}): {:?}",
            o.scenario, o.provider, o.converged_ms, o.recovery_ms, o.verdict.examples
        );
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
