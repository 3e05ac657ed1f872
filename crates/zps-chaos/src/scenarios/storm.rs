//! Scenario 5: a reconnect storm. Thousands of clients, each subscribed to one
//! of a few rooms, lose their gateway at once (SIGKILL) and reconnect to its
//! replacement on the same address; their jittered backoff must spread the
//! storm, the new gateway must take them all without running out of file
//! descriptors, and every client must resume from its position.

use std::path::Path;
use std::time::{Duration, Instant};

use zps_client::ConnectionState;

use super::{Outcome, gateway_args};
use crate::gateway::GatewayProcess;
use crate::services::Provider;
use crate::workload::{Size, Workload};

/// Rooms the clients spread over.
const ROOMS: usize = 50;

/// Runs it with `clients` subscribers on `provider` (a durable one: the history
/// must outlive the gateway).
pub async fn reconnect_storm(
    bin: &Path,
    provider: &Provider,
    size: Size,
    clients: usize,
    tag: &str,
) -> anyhow::Result<Outcome> {
    let args = gateway_args(&provider.args, &["--max-connections", "100000"]);
    let mut a = GatewayProcess::start(bin, &args)?;
    let port = a.addr.port();
    let url = format!("ws://{}/ws", a.addr);
    let mut work = Workload::new(ROOMS, tag);
    let connected_at = Instant::now();
    let group = work.subscribe_spread(&url, clients, true).await?;
    let connect_ms = connected_at.elapsed().as_millis();
    // A modest event rate: the storm is the fault, not the fan-out.
    work.publish_every(&url, size.publishers, Duration::from_millis(20))?;
    tokio::time::sleep(size.phase).await;

    // Each client's state as of now: a reconnect shows as a change, however
    // quickly it went (a client back within one poll interval still counts).
    let mut states: Vec<_> = work
        .group(group)
        .clients
        .iter()
        .map(|c| {
            let mut rx = c.state();
            rx.borrow_and_update();
            rx
        })
        .collect();
    work.fault_started();
    a.kill();
    let killed_at = Instant::now();
    let b = GatewayProcess::start_on(bin, port, &args)?;
    let restarted_ms = killed_at.elapsed().as_millis();
    work.fault_ended();
    // Every client back: connected to B after its state went through a reconnect.
    let mut back: Vec<Option<Duration>> = vec![None; states.len()];
    let deadline = killed_at + Duration::from_secs(60);
    while back.iter().any(Option::is_none) && Instant::now() < deadline {
        for (i, rx) in states.iter_mut().enumerate() {
            if back[i].is_none()
                && rx.has_changed().unwrap_or(false)
                && matches!(*rx.borrow_and_update(), ConnectionState::Connected)
            {
                back[i] = Some(killed_at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut times: Vec<Duration> = back.iter().flatten().copied().collect();
    times.sort();
    let (fds, rss_kb) = (b.open_files(), b.rss_kib());
    tokio::time::sleep(size.phase).await;
    let recovery = work.first_ack_after(killed_at, Duration::ZERO);
    let done = work.finish(Duration::from_secs(60)).await;
    drop(b);
    provider.clean();
    let mut o = Outcome::judge("reconnect-storm", &provider.name, done, recovery);
    let pct = |q: f64| {
        times
            .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
            .map_or("-".into(), |d| format!("{} ms", d.as_millis()))
    };
    o.notes.push(format!(
        "{clients} clients ({connect_ms} ms to connect them); after the kill the new gateway listened in {restarted_ms} ms; \
         {} of {clients} clients back (10 %: {}, 50 %: {}, 99 %: {}, all: {}); the new gateway then held {} open files and {} MiB RSS",
        times.len(),
        pct(0.10),
        pct(0.50),
        pct(0.99),
        pct(1.0),
        fds.map_or("?".into(), |n| n.to_string()),
        rss_kb.map_or("?".into(), |kb| (kb / 1024).to_string()),
    ));
    if times.len() < clients {
        // Counted as a failure: a client that never came back saw nothing after the kill.
        o.converged_ms = None;
    }
    Ok(o)
}
