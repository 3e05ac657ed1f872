//! Scenario 3: a gateway cut off from Redis for a few seconds (a fault proxy
//! between the gateway and the machine's Redis, paused: nothing moves, nothing
//! is lost), then healed — either the same TCP connections carry on, or the
//! partition ends with every connection reset, as a long one does.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Outcome, gateway_args};
use crate::gateway::GatewayProcess;
use crate::proxy::{Fault, FaultProxy};
use crate::services::{Provider, shared_postgres_url, shared_redis_url};
use crate::workload::{Size, Workload};

/// How a partition ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heal {
    /// The connections survive and carry what waited.
    Resume,
    /// Every connection is reset; the gateway reconnects.
    Reset,
}

/// Runs it on `provider` (`redis` or `hybrid`).
pub async fn redis_partition(
    bin: &Path,
    provider: &str,
    heal: Heal,
    size: Size,
    tag: &str,
) -> anyhow::Result<Outcome> {
    let redis: std::net::SocketAddr = shared_redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .map_err(|e| anyhow::anyhow!("ZPS_TEST_REDIS_URL must be redis://IP:PORT here: {e}"))?;
    let proxy = FaultProxy::start(redis).await?;
    let through = Provider::on(
        provider,
        tag,
        &shared_postgres_url(),
        &format!("redis://{}", proxy.addr()),
    )?;
    let gateway = GatewayProcess::start(bin, &gateway_args(&through.args, &[]))?;
    let work = Workload::start(&format!("ws://{}/ws", gateway.addr), size, tag).await?;
    tokio::time::sleep(size.phase).await;
    let cut_for = if size.phase >= Duration::from_secs(5) {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(2)
    };
    work.fault_started();
    proxy.set_fault(Fault::Pause);
    tokio::time::sleep(cut_for).await;
    if heal == Heal::Reset {
        proxy.cut_all();
    }
    proxy.set_fault(Fault::None);
    let healed_at = Instant::now();
    work.fault_ended();
    tokio::time::sleep(size.phase.max(Duration::from_secs(6))).await;
    let recovery = work.first_ack_after(healed_at, Duration::ZERO);
    let done = work.finish(Duration::from_secs(30)).await;
    drop(gateway);
    Provider::shared(provider, tag)?.clean();
    let name = match heal {
        Heal::Resume => "redis-partition",
        Heal::Reset => "redis-partition-reset",
    };
    let mut o = Outcome::judge(name, provider, done, recovery);
    o.notes
        .push(format!("partitioned for {} ms", cut_for.as_millis()));
    Ok(o)
}
