//! Scenario 1: two gateways behind a proxy (the load balancer); gateway A is
//! killed with SIGKILL under load; the proxy cuts A's connections and sends new
//! ones to B; clients reconnect and resume from their positions.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Outcome, gateway_args};
use crate::gateway::GatewayProcess;
use crate::proxy::FaultProxy;
use crate::services::Provider;
use crate::workload::{Size, Workload};

/// Runs it on `provider` (a shared-storage provider: both gateways see one history).
pub async fn gateway_kill(bin: &Path, provider: &Provider, size: Size, tag: &str) -> anyhow::Result<Outcome> {
    let args = gateway_args(&provider.args, &[]);
    let mut a = GatewayProcess::start(bin, &args)?;
    let b = GatewayProcess::start(bin, &args)?;
    let proxy = FaultProxy::start(a.addr).await?;
    let work = Workload::start(&format!("ws://{}/ws", proxy.addr()), size, tag).await?;
    tokio::time::sleep(size.phase).await;
    work.fault_started();
    a.kill();
    proxy.set_upstream(b.addr);
    proxy.cut_all();
    // Answers that A sent before it died may still arrive; count from the cut.
    let fault_at = Instant::now();
    work.fault_ended();
    tokio::time::sleep(size.phase).await;
    let recovery = work.first_ack_after(fault_at, Duration::ZERO);
    let done = work.finish(Duration::from_secs(30)).await;
    drop(b);
    provider.clean();
    Ok(Outcome::judge("gateway-kill", &provider.name, done, recovery))
}
