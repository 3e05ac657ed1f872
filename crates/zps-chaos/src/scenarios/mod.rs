//! Scenarios: the recording [`Workload`](crate::workload::Workload) around one
//! fault, judged by the [`checker`](crate::checker).

mod cluster;
mod database;
mod gateway_kill;
mod partition;
mod slow_clients;
mod soak;
mod storm;

pub use cluster::redis_cluster_failover;
pub use database::{nats_restart, postgres_restart, redis_restart};
pub use gateway_kill::gateway_kill;
pub use partition::{Heal, redis_partition};
pub use slow_clients::slow_clients;
pub use soak::memory_soak;
pub use storm::reconnect_storm;

use serde::Serialize;

use crate::checker::{self, Verdict};
use crate::workload::Finished;

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
    /// Delivery latency p99 over every subscriber and the whole run (publish call → application).
    pub p99_ms: Option<f64>,
    /// The same for events published before, during and after the fault.
    pub p99_by_phase_ms: [Option<f64>; 3],
    /// What the scenario measured beyond the common columns.
    pub notes: Vec<String>,
    /// The gateway's memory grew after the warm-up (the soak).
    pub leaked: bool,
    /// What the checker found.
    pub verdict: Verdict,
}

impl Outcome {
    fn judge(scenario: &str, provider: &str, done: Finished, recovery_ms: Option<u64>) -> Self {
        Self {
            scenario: scenario.into(),
            provider: provider.into(),
            attempts: done.attempts,
            recovery_ms,
            converged_ms: done.converged_ms,
            p99_ms: done.p99_ms,
            p99_by_phase_ms: done.p99_by_phase_ms,
            notes: Vec::new(),
            leaked: false,
            verdict: checker::check(&done.history),
        }
    }

    /// Passed: nothing lost, doubled or reordered, every subscriber caught up,
    /// publishing resumed after the fault, and memory stayed flat.
    pub fn passed(&self) -> bool {
        self.verdict.clean() && self.converged_ms.is_some() && self.recovery_ms.is_some() && !self.leaked
    }
}

/// Gateway flags for a scenario: the provider's, plus client publishing.
fn gateway_args(provider: &[String], extra: &[&str]) -> Vec<String> {
    let mut args = provider.to_vec();
    args.push("--allow-client-publish".into());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}
