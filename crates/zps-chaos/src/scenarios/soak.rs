//! Scenario 7: a memory soak. Under steady publishing, churners connect,
//! subscribe, read for a moment and leave, over and over, for a long time; the
//! gateway's RSS, sampled every second, must stay flat after the warm-up (no
//! per-connection or per-subscription state left behind), while the steady
//! subscribers still receive everything exactly once.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use zps_client::{Client, SubscribeOptions};

use super::{Outcome, gateway_args};
use crate::gateway::GatewayProcess;
use crate::services::Provider;
use crate::workload::{Size, Workload, options};

/// Churning clients at any moment.
const CHURNERS: usize = 40;
/// RSS growth tolerated from the end of the warm-up to the end (allocator noise):
/// the unscraped-metrics leak grew 9 MiB in 30 min, flat after the fix.
const TOLERATED_GROWTH: f64 = 0.05;
/// Plus this much, absolute (KiB).
const TOLERATED_KIB: u64 = 4 * 1024;

/// One churner: connect, subscribe to a room, read for a moment, close; again.
async fn churn(url: String, rooms: Vec<String>, me: usize, stop: Arc<AtomicBool>, sessions: Arc<AtomicU64>) {
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let Ok(client) = Client::connect(&url, options(format!("churn-{me}-{n}"))) else {
            return;
        };
        let room = rooms[(me + n) % rooms.len()].clone();
        if let Ok(mut sub) = client
            .subscribe_with_options(vec![room], SubscribeOptions::new())
            .await
        {
            let linger = Duration::from_millis(100 + (me as u64 * 37 + n as u64 * 11) % 400);
            let _ = tokio::time::timeout(linger, async { while sub.next().await.is_some() {} }).await;
        }
        client.close().await;
        sessions.fetch_add(1, Ordering::Relaxed);
        n += 1;
    }
}

/// Runs it for `duration` on `provider` (one whose history is not in the
/// gateway's memory, so RSS measures the gateway's own state).
pub async fn memory_soak(
    bin: &Path,
    provider: &Provider,
    size: Size,
    duration: Duration,
    tag: &str,
) -> anyhow::Result<Outcome> {
    let gateway = GatewayProcess::start(bin, &gateway_args(&provider.args, &[]))?;
    let url = format!("ws://{}/ws", gateway.addr);
    let mut work = Workload::new(size.rooms, tag);
    work.subscribe(&url, size.subscribers).await?;
    work.publish_every(&url, size.publishers, Duration::from_millis(10))?;
    let stop = Arc::new(AtomicBool::new(false));
    let sessions = Arc::new(AtomicU64::new(0));
    let rooms: Vec<String> = (0..size.rooms).map(|i| format!("chaos:{tag}-{i}")).collect();
    let churners: Vec<_> = (0..CHURNERS)
        .map(|me| {
            tokio::spawn(churn(
                url.clone(),
                rooms.clone(),
                me,
                stop.clone(),
                sessions.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    work.fault_started();
    let warm_up = duration / 4;
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(kib) = gateway.rss_kib() {
            samples.push((started.elapsed(), kib));
        }
    }
    stop.store(true, Ordering::Relaxed);
    work.fault_ended();
    for c in churners {
        let _ = c.await;
    }
    let recovery = work.first_ack_after(started, Duration::ZERO);
    let done = work.finish(Duration::from_secs(30)).await;
    drop(gateway);
    provider.clean();
    let mut o = Outcome::judge("memory-soak", &provider.name, done, recovery);
    let after_warm_up = samples.iter().find(|(t, _)| *t >= warm_up).map(|(_, kib)| *kib);
    let end = samples.last().map(|(_, kib)| *kib);
    let peak = samples.iter().map(|(_, kib)| *kib).max();
    let churned = sessions.load(Ordering::Relaxed);
    // The shape of the curve: flat, a step, or a slope.
    let quarters: Vec<String> = [0.25, 0.5, 0.75, 1.0]
        .iter()
        .filter_map(|q| {
            let i = ((samples.len() as f64 * q) as usize).min(samples.len().checked_sub(1)?);
            Some(format!("{} MiB", samples[i].1 / 1024))
        })
        .collect();
    o.notes.push(format!(
        "{} s, {churned} churned sessions ({CHURNERS} at a time); gateway RSS {} MiB after the warm-up ({} s), {} MiB at the end, peak {} MiB; by quarter of the run: {}",
        duration.as_secs(),
        after_warm_up.map_or("?".into(), |k| (k / 1024).to_string()),
        warm_up.as_secs(),
        end.map_or("?".into(), |k| (k / 1024).to_string()),
        peak.map_or("?".into(), |k| (k / 1024).to_string()),
        quarters.join(", "),
    ));
    let grew = match (after_warm_up, end) {
        (Some(w), Some(e)) => e > w + (w as f64 * TOLERATED_GROWTH) as u64 + TOLERATED_KIB,
        _ => true,
    };
    if grew {
        o.notes.push("RSS grew after the warm-up: FAILED".into());
        o.leaked = true;
    }
    Ok(o)
}
