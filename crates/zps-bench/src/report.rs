//! Printing runs side by side with their ratios to the baselines and to
//! nats-server, and checking the performance targets against one run.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::load::Target;
use crate::shape::RunReport;

/// Ratios of one run to the other targets of the same scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratios {
    /// Deliveries/s ÷ the bare loop with gateway-sized frames.
    pub to_bare_gw: Option<f64>,
    /// Deliveries/s ÷ the bare loop with small frames.
    pub to_bare_small: Option<f64>,
    /// Deliveries/s ÷ nats-server.
    pub to_nats: Option<f64>,
    /// p99 latency ÷ the bare gateway-sized loop's p99.
    pub p99_to_bare_gw: Option<f64>,
}

/// Computes every run's ratios within one scenario.
pub fn ratios(runs: &[RunReport]) -> Vec<Ratios> {
    let by: HashMap<Target, &RunReport> = runs.iter().map(|r| (r.target, r)).collect();
    let rate = |t: Target, r: &RunReport| {
        by.get(&t)
            .filter(|b| b.deliver_per_sec > 0.0 && t != r.target)
            .map(|b| r.deliver_per_sec / b.deliver_per_sec)
    };
    runs.iter()
        .map(|r| Ratios {
            to_bare_gw: rate(Target::BareGw, r),
            to_bare_small: rate(Target::BareSmall, r),
            to_nats: rate(Target::Nats, r),
            p99_to_bare_gw: by
                .get(&Target::BareGw)
                .filter(|b| b.latency.p99_us > 0 && r.target != Target::BareGw)
                .map(|b| r.latency.p99_us as f64 / b.latency.p99_us as f64),
        })
        .collect()
}

/// The table header.
pub fn header() {
    println!(
        "{:<20} {:<11} {:>9} {:>11} {:>7} {:>7} {:>8} {:>5} {:>4} {:>6} {:>6} {:>6} {:>6} {:>8} {:>7} {:>7} {:>7} {:>7}",
        "scenario",
        "target",
        "pub/s",
        "deliver/s",
        "p50µs",
        "p99µs",
        "p99.9µs",
        "lost",
        "dup",
        "srv%",
        "gen%",
        "oth%",
        "µs/dlv",
        "srv RSS",
        "×bareGw",
        "×bareSm",
        "×nats",
        "p99×bGw",
    );
}

fn ratio(x: Option<f64>) -> String {
    x.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into())
}

/// One table row.
pub fn row(r: &RunReport, q: &Ratios) {
    println!(
        "{:<20} {:<11} {:>9.0} {:>11.0} {:>7} {:>7} {:>8} {:>5} {:>4} {:>6.0} {:>6.0} {:>6.0} {:>6.2} {:>8} {:>7} {:>7} {:>7} {:>7}",
        r.scenario,
        r.target.name(),
        r.publish_per_sec,
        r.deliver_per_sec,
        r.latency.p50_us,
        r.latency.p99_us,
        r.latency.p999_us,
        r.lost,
        r.duplicates_or_out_of_order,
        r.server_cpu_pct,
        r.loadgen_cpu_pct,
        r.others_cpu_pct,
        r.server_us_per_delivery,
        crate::mib(r.server_rss_bytes),
        ratio(q.to_bare_gw),
        ratio(q.to_bare_small),
        ratio(q.to_nats),
        ratio(q.p99_to_bare_gw),
    );
}

/// Appends one JSON line (with the time and core count) to `path`.
pub fn append(path: &Path, line: &impl Serialize) -> anyhow::Result<()> {
    let mut v = serde_json::to_value(line)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("unix_time".into(), zps_core::Timestamp::now().as_millis().into());
        o.insert(
            "cores".into(),
            std::thread::available_parallelism().map_or(0, |n| n.get()).into(),
        );
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{v}")?;
    Ok(())
}

/// One performance target and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// What is required.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met?
    pub met: bool,
}

impl Verdict {
    /// A verdict line.
    pub fn new(target: impl Into<String>, measured: impl Into<String>, met: bool) -> Self {
        Self {
            target: target.into(),
            measured: measured.into(),
            met,
        }
    }
}

/// Prints the verdicts.
pub fn print_verdicts(verdicts: &[Verdict]) {
    if verdicts.is_empty() {
        return;
    }
    println!("\ntargets (this run, this machine; the median when it had several rounds):");
    for v in verdicts {
        println!(
            "  [{}] {:<62} {}",
            if v.met { "met" } else { "MISSED" },
            v.target,
            v.measured
        );
    }
}
