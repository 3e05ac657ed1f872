//! Scenario 6: two gateways on one Redis Cluster, publishers and subscribers on
//! both, publishing concurrently to the same rooms; a primary is killed with
//! SIGKILL, its replica takes over, and the old primary comes back as a
//! replica. Every acknowledged event must reach every subscriber once, in order.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Outcome, gateway_args};
use crate::gateway::GatewayProcess;
use crate::services::{OwnRedisCluster, Provider, shared_postgres_url};
use crate::workload::{Size, Workload};

/// Runs it on `provider`: `redis` (the cluster stores and fans out) or
/// `hybrid` (the machine's PostgreSQL stores, the cluster fans out).
pub async fn redis_cluster_failover(
    bin: &Path,
    provider: &str,
    size: Size,
    tag: &str,
) -> anyhow::Result<Outcome> {
    let mut cluster = tokio::task::block_in_place(|| OwnRedisCluster::start(tag))?;
    let p = Provider::on(provider, tag, &shared_postgres_url(), &cluster.url())?;
    let args = gateway_args(&p.args, &[]);
    let a = GatewayProcess::start(bin, &args)?;
    let b = GatewayProcess::start(bin, &args)?;
    let (ua, ub) = (format!("ws://{}/ws", a.addr), format!("ws://{}/ws", b.addr));
    let mut work = Workload::new(size.rooms, tag);
    work.subscribe(&ua, size.subscribers.div_ceil(2)).await?;
    work.subscribe(&ub, size.subscribers / 2).await?;
    work.publish(&ua, size.publishers.div_ceil(2))?;
    work.publish(&ub, (size.publishers / 2).max(1))?;
    tokio::time::sleep(size.phase).await;
    // The primary of the first room's slot: its publishes must wait for the failover.
    let victim = cluster
        .primary_of(&format!("chaos:{tag}-0"))
        .ok_or_else(|| anyhow::anyhow!("no primary serves the first room's slot"))?;
    work.fault_started();
    cluster.kill(victim);
    let killed_at = Instant::now();
    // Node timeout 1 s: the replica is promoted within a few seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| cluster.restart(victim))?;
    work.fault_ended();
    tokio::time::sleep(size.phase.max(Duration::from_secs(6))).await;
    let recovery = work.first_ack_after(killed_at, Duration::ZERO);
    let stalled = work.longest_ack_gap_after(killed_at);
    let done = work.finish(Duration::from_secs(30)).await;
    drop((a, b));
    p.clean();
    let mut o = Outcome::judge("redis-cluster-failover", provider, done, recovery);
    o.notes.push(format!(
        "3 primaries + 3 replicas, node timeout 1 s; the primary of a room's slot killed, restarted 3 s later; \
         longest wait between two acknowledgements after the kill: {stalled} ms (the failover)"
    ));
    Ok(o)
}
