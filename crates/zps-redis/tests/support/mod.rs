//! Shared helpers of the Redis integration tests: URL, isolated prefixes, cleanup.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use fred::prelude::*;
use zps_redis::{RedisConfig, RedisTransport, fred};

/// The test server's URL.
pub fn redis_url() -> String {
    std::env::var("ZPS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A prefix no other test (or test process) uses.
pub fn unique_prefix() -> String {
    format!("zpstest:{}:", uuid::Uuid::new_v4().simple())
}

/// A key prefix whose keys are deleted when it is dropped, even when the test failed.
pub struct Prefix(String);

impl std::ops::Deref for Prefix {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let prefix = self.0.clone();
        // Drop may run on a runtime thread (or while unwinding): clean up on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(cleanup(&prefix));
        })
        .join();
    }
}

/// Default settings under a fresh prefix.
pub fn config() -> (Prefix, RedisConfig) {
    let prefix = unique_prefix();
    let config = RedisConfig::with_prefix(&prefix);
    (Prefix(prefix), config)
}

/// A connected plain client for test-side inspection.
pub async fn raw_client() -> Client {
    let client = Builder::from_config(Config::from_url(&redis_url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

/// A transport owning its own clients, or `None` (with a message) when no Redis is reachable.
pub async fn connect(config: RedisConfig) -> RedisTransport {
    RedisTransport::connect(&redis_url(), config).await.unwrap()
}

/// Every key under `prefix`.
pub async fn keys_under(client: &Client, prefix: &str) -> Vec<String> {
    zps_redis::keys_with_prefix(client, prefix).await.unwrap()
}

/// Deletes every key under `prefix`.
pub async fn cleanup(prefix: &str) {
    let client = raw_client().await;
    zps_redis::delete_prefix(&client, prefix).await.unwrap();
    client.quit().await.unwrap();
}
