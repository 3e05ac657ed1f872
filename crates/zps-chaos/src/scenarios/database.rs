//! Scenario 2: the gateway's database is crashed under load and started again
//! on the same data; the gateway must recover by itself (no restart),
//! publishers retry unanswered publishes with the same ids, subscribers repair
//! what they missed from history.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Outcome, gateway_args};
use crate::gateway::GatewayProcess;
use crate::services::{OwnPostgres, OwnServer, Provider, shared_postgres_url, shared_redis_url};
use crate::workload::{Size, Workload};

/// How long the database stays down.
const DOWN: Duration = Duration::from_secs(1);

/// Redis (the `redis` provider's only store, `hybrid`'s fan-out) killed with
/// SIGKILL and restarted a second later: a Redis of the scenario's own (AOF,
/// `appendfsync always`).
pub async fn redis_restart(bin: &Path, provider: &str, size: Size, tag: &str) -> anyhow::Result<Outcome> {
    let mut redis = OwnServer::redis(tag)?;
    let p = Provider::on(provider, tag, &shared_postgres_url(), &redis.url())?;
    let gateway = GatewayProcess::start(bin, &gateway_args(&p.args, &[]))?;
    let work = Workload::start(&format!("ws://{}/ws", gateway.addr), size, tag).await?;
    tokio::time::sleep(size.phase).await;
    work.fault_started();
    redis.kill();
    let down_at = Instant::now();
    tokio::time::sleep(DOWN).await;
    redis.restart()?;
    work.fault_ended();
    // Time for the gateway's Redis client to reconnect (it backs off up to 1 s) and acks to resume.
    tokio::time::sleep(size.phase.max(Duration::from_secs(6))).await;
    let recovery = work.first_ack_after(down_at, DOWN);
    let done = work.finish(Duration::from_secs(30)).await;
    drop(gateway);
    p.clean();
    Ok(Outcome::judge("redis-restart", provider, done, recovery))
}

/// PostgreSQL (the `postgres` provider, `hybrid`'s store) crashed with an
/// immediate shutdown and started again a second later: a throwaway cluster of
/// the scenario's own.
pub async fn postgres_restart(bin: &Path, provider: &str, size: Size, tag: &str) -> anyhow::Result<Outcome> {
    let pg = OwnPostgres::start(tag)?;
    let p = Provider::on(provider, tag, &pg.url(), &shared_redis_url())?;
    let gateway = GatewayProcess::start(bin, &gateway_args(&p.args, &[]))?;
    let work = Workload::start(&format!("ws://{}/ws", gateway.addr), size, tag).await?;
    tokio::time::sleep(size.phase).await;
    work.fault_started();
    pg.crash()?;
    let down_at = Instant::now();
    tokio::time::sleep(DOWN).await;
    pg.start_again()?;
    work.fault_ended();
    tokio::time::sleep(size.phase.max(Duration::from_secs(4))).await;
    let recovery = work.first_ack_after(down_at, DOWN);
    let done = work.finish(Duration::from_secs(30)).await;
    drop(gateway);
    p.clean();
    Ok(Outcome::judge("postgres-restart", provider, done, recovery))
}

/// NATS (the `nats` provider's only server) killed with SIGKILL and restarted
/// a second later on the same JetStream store: a server of the scenario's own.
pub async fn nats_restart(bin: &Path, size: Size, tag: &str) -> anyhow::Result<Outcome> {
    let mut nats = OwnServer::nats(tag)?;
    let p = Provider::nats(tag, &nats.url());
    let gateway = GatewayProcess::start(bin, &gateway_args(&p.args, &[]))?;
    let work = Workload::start(&format!("ws://{}/ws", gateway.addr), size, tag).await?;
    tokio::time::sleep(size.phase).await;
    work.fault_started();
    nats.kill();
    let down_at = Instant::now();
    tokio::time::sleep(DOWN).await;
    nats.restart()?;
    work.fault_ended();
    // The client reconnects (backing off), JetStream recovers its store, the live consumer is re-created.
    tokio::time::sleep(size.phase.max(Duration::from_secs(6))).await;
    let recovery = work.first_ack_after(down_at, DOWN);
    let done = work.finish(Duration::from_secs(30)).await;
    drop(gateway);
    drop(nats); // its store goes with it: nothing to clean on a shared server
    Ok(Outcome::judge("nats-restart", "nats", done, recovery))
}
