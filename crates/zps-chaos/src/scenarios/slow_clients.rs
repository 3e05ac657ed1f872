//! Scenario 4: slow and half-open client links. Some subscribers reach the
//! gateway through a proxy that adds latency, some through one that goes
//! silent (bytes dropped both ways, sockets left open); the rest connect
//! directly and must keep their latency. The gateway's heartbeat ends the
//! silent links; when the links heal, everyone catches up.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Outcome, gateway_args};
use crate::gateway::GatewayProcess;
use crate::proxy::{Fault, FaultProxy};
use crate::services::Provider;
use crate::workload::{Size, Workload, p99_ms};

/// Runs it on `provider` (any: the fault is between clients and the gateway).
pub async fn slow_clients(bin: &Path, provider: &Provider, size: Size, tag: &str) -> anyhow::Result<Outcome> {
    // Heartbeat: a silent peer is noticed within ~2 s instead of 40.
    let args = gateway_args(
        &provider.args,
        &[
            "--heartbeat-interval-ms",
            "1000",
            "--heartbeat-timeout-ms",
            "1000",
        ],
    );
    let gateway = GatewayProcess::start(bin, &args)?;
    let slow = FaultProxy::start(gateway.addr).await?;
    let silent = FaultProxy::start(gateway.addr).await?;
    let mut work = Workload::new(size.rooms, tag);
    let direct = work
        .subscribe(&format!("ws://{}/ws", gateway.addr), size.subscribers)
        .await?;
    let n = (size.subscribers / 2).max(1);
    work.subscribe(&format!("ws://{}/ws", slow.addr()), n).await?;
    work.subscribe(&format!("ws://{}/ws", silent.addr()), n).await?;
    work.publish(&format!("ws://{}/ws", gateway.addr), size.publishers)?;
    tokio::time::sleep(size.phase).await;
    let before = work.group(direct).latency.lock().clone();
    work.group(direct).latency.lock().reset();
    work.fault_started();
    slow.set_fault(Fault::Latency(Duration::from_millis(300)));
    silent.set_fault(Fault::Blackhole);
    let fault_at = Instant::now();
    tokio::time::sleep(size.phase.max(Duration::from_secs(4))).await;
    let during = work.group(direct).latency.lock().clone();
    slow.set_fault(Fault::None);
    silent.set_fault(Fault::None);
    work.fault_ended();
    tokio::time::sleep(size.phase).await;
    let recovery = work.first_ack_after(fault_at, Duration::ZERO);
    let done = work.finish(Duration::from_secs(30)).await;
    drop(gateway);
    provider.clean();
    let mut o = Outcome::judge("slow-clients", &provider.name, done, recovery);
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} ms"));
    o.notes.push(format!(
        "direct subscribers' p99: {} before the fault, {} during it",
        ms(p99_ms(&before)),
        ms(p99_ms(&during))
    ));
    Ok(o)
}
