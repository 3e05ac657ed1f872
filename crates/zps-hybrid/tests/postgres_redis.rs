//! The production shape: PostgreSQL storage + Redis fan-out (history off).
//! The shared conformance suite, two nodes with lost fan-out messages, and the
//! Redis subscriber connection killed mid-stream.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use zps_conformance::fault::FaultyTransport;
use zps_conformance::{Factory, Fixture, seqs, take_events, unique_room};
use zps_core::{PublishRequest, Realtime, SubscribeOptions, Transport};
use zps_hybrid::{HybridConfig, HybridTransport};
use zps_redis::fred::prelude::*;
use zps_redis::fred::types::{ClusterHash, CustomCommand};

fn pg_url() -> String {
    std::env::var("ZPS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn redis_url() -> String {
    std::env::var("ZPS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn config() -> HybridConfig {
    HybridConfig {
        reorder_window: Duration::from_millis(30),
        resync_interval: Some(Duration::from_secs(2)),
        ..HybridConfig::default()
    }
}

/// A PostgreSQL schema and a Redis key prefix of this fixture alone.
struct Deployment {
    schema: String,
    prefix: String,
}

impl Deployment {
    async fn new() -> Self {
        let id = zps_core::envelope::generate_id().replace('-', "");
        let d = Self {
            schema: format!("zps_hybrid_{}", &id[id.len() - 12..]),
            prefix: format!("zps-hybrid-{}:", &id[id.len() - 12..]),
        };
        let pool = pool().await;
        sqlx::query(&format!("CREATE SCHEMA {}", d.schema))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        d
    }

    async fn storage(&self) -> Arc<dyn Transport> {
        let config = zps_postgres::PostgresConfig {
            schema: Some(self.schema.clone()),
            ..Default::default()
        };
        Arc::new(
            zps_postgres::PostgresTransport::connect(&pg_url(), config)
                .await
                .unwrap(),
        )
    }

    async fn fanout(&self) -> zps_redis::RedisTransport {
        let config = zps_redis::RedisConfig::with_prefix(&self.prefix).fanout_only();
        zps_redis::RedisTransport::connect(&redis_url(), config)
            .await
            .unwrap()
    }

    async fn node(&self) -> Arc<dyn Transport> {
        Arc::new(HybridTransport::new(
            self.storage().await,
            Arc::new(self.fanout().await),
            config(),
        ))
    }

    async fn drop_all(&self) {
        let pool = pool().await;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let client = admin().await;
        zps_redis::delete_prefix(&client, &self.prefix).await.unwrap();
        client.quit().await.unwrap();
    }
}

async fn pool() -> zps_postgres::PgPool {
    zps_postgres::connect_pool(&pg_url(), &zps_postgres::PostgresConfig::default())
        .await
        .unwrap()
}

async fn admin() -> Client {
    let client = Builder::from_config(Config::from_url(&redis_url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

#[async_trait]
impl Fixture for Deployment {
    async fn connect(&self) -> Arc<dyn Transport> {
        self.node().await
    }
    async fn cleanup(&self) {
        self.drop_all().await;
    }
}

struct PgRedis;

#[async_trait]
impl Factory for PgRedis {
    async fn fixture(&self) -> Result<Arc<dyn Fixture>, String> {
        Ok(Arc::new(Deployment::new().await))
    }
}

zps_conformance::conformance_suite!(PgRedis);

async fn publish_from(nodes: &[Realtime], room: &zps_core::Room, per_node: usize) {
    let tasks: Vec<_> = nodes
        .iter()
        .cloned()
        .map(|rt| {
            let room = room.clone();
            tokio::spawn(async move {
                for i in 0..per_node {
                    rt.publish(PublishRequest::new(room.clone(), "t", &json!({ "i": i })).unwrap())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_fanout_between_two_nodes_is_filled_from_storage() {
    let d = Deployment::new().await;
    // Each node's fan-out leg loses every 4th message it sends.
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut n = 0u64;
        let leg = FaultyTransport::new(Arc::new(d.fanout().await)).rewrite_fanout(move |e| {
            n += 1;
            if n.is_multiple_of(4) { vec![] } else { vec![e] }
        });
        nodes.push(Realtime::new(Arc::new(HybridTransport::new(
            d.storage().await,
            Arc::new(leg),
            config(),
        ))));
    }
    let room = unique_room("orders");
    let readers: Vec<_> = {
        let mut subs = Vec::new();
        for rt in &nodes {
            subs.push(
                rt.subscribe_stream(SubscribeOptions::room(room.clone()).live_only())
                    .await
                    .unwrap(),
            );
        }
        subs.into_iter()
            .map(|mut s| tokio::spawn(async move { seqs(&take_events(&mut s, 400).await) }))
            .collect()
    };
    publish_from(&nodes, &room, 200).await;
    for r in readers {
        assert_eq!(r.await.unwrap(), (1..=400).collect::<Vec<u64>>());
    }
    let filled: u64 = nodes.iter().map(|rt| rt.metrics().gaps_filled).sum();
    let replayed: u64 = nodes.iter().map(|rt| rt.metrics().replayed).sum();
    println!("gaps filled from storage: {filled}; events read from storage: {replayed}");
    assert!(
        filled > 0 && replayed >= 2 * 100,
        "a quarter of the fan-out was lost: {filled} / {replayed}"
    );
    for rt in nodes {
        rt.close().await.unwrap();
    }
    d.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_subscriber_killed_mid_stream_loses_nothing() {
    let d = Deployment::new().await;
    let leg = Arc::new(d.fanout().await);
    let victim = leg.subscriber().clone();
    let receiver = Realtime::new(Arc::new(HybridTransport::new(d.storage().await, leg, config())));
    let sender = Realtime::new(d.node().await);
    let room = unique_room("orders");
    let mut sub = receiver
        .subscribe_stream(SubscribeOptions::room(room.clone()).live_only())
        .await
        .unwrap();
    let reader = tokio::spawn(async move { seqs(&take_events(&mut sub, 600).await) });
    let publisher = {
        let (sender, room) = (sender.clone(), room.clone());
        tokio::spawn(async move { publish_from(&[sender], &room, 600).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Kill the receiving node's Redis subscriber connection while events flow.
    let admin = admin().await;
    let list: String = admin
        .custom(
            CustomCommand::new_static("CLIENT", ClusterHash::Random, false),
            vec!["LIST"],
        )
        .await
        .unwrap();
    let name = format!("name={}", victim.id());
    let id = list
        .lines()
        .find(|l| l.split(' ').any(|f| f == name))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .unwrap()
        .to_owned();
    let killed: i64 = admin
        .custom(
            CustomCommand::new_static("CLIENT", ClusterHash::Random, false),
            vec!["KILL", "ID", id.as_str()],
        )
        .await
        .unwrap();
    assert_eq!(killed, 1);
    admin.quit().await.unwrap();
    publisher.await.unwrap();
    assert_eq!(reader.await.unwrap(), (1..=600).collect::<Vec<u64>>());
    receiver.close().await.unwrap();
    sender.close().await.unwrap();
    d.drop_all().await;
}
