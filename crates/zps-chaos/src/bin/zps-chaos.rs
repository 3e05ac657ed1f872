//! `zps-chaos`: runs fault scenarios against the built `zero-pub-sub` binary and
//! writes `target/chaos/report.md` + `report.json`; exits non-zero when the
//! checker finds a lost, duplicated or reordered acknowledged event.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use zps_chaos::scenario::{self, Provider, Size};

#[derive(Parser)]
#[command(about = "Fault scenarios with an independent checker")]
struct Args {
    /// The `zero-pub-sub` binary under test.
    #[arg(long)]
    gateway_bin: PathBuf,
    /// CI-sized runs.
    #[arg(long)]
    quick: bool,
    /// Providers to run on.
    #[arg(long, value_delimiter = ',', default_value = "postgres,redis,hybrid")]
    providers: Vec<String>,
    /// Where the report goes.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Scenarios (default: all): gateway-kill, redis-restart.
    scenarios: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let size = if args.quick { Size::quick() } else { Size::full() };
    let wanted = |name: &str| args.scenarios.is_empty() || args.scenarios.iter().any(|s| s == name);
    let mut outcomes = Vec::new();
    for provider in &args.providers {
        if wanted("gateway-kill") {
            let tag = format!("chaos_{}_{provider}", std::process::id());
            let p = Provider::shared(provider, &tag)?;
            eprintln!("zps-chaos: gateway-kill on {provider}");
            let o = scenario::gateway_kill(&args.gateway_bin, &p, size, &tag).await?;
            eprintln!("  {:?}", o.verdict);
            outcomes.push(o);
        }
    }
    if wanted("redis-restart") && args.providers.iter().any(|p| p == "redis") {
        let tag = format!("chaos_{}_restart", std::process::id());
        eprintln!("zps-chaos: redis-restart");
        let o = scenario::redis_restart(&args.gateway_bin, size, &tag).await?;
        eprintln!("  {:?}", o.verdict);
        outcomes.push(o);
    }
    let report = scenario::write_report(&args.out, &outcomes)?;
    println!("{}", std::fs::read_to_string(&report)?);
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| !o.verdict.clean() || o.converged_ms.is_none())
        .collect();
    for o in &failed {
        eprintln!(
            "zps-chaos: {} on {} FAILED: {:?}",
            o.scenario, o.provider, o.verdict.examples
        );
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
