//! Shared helpers of the NATS integration tests: URL, isolated prefixes, cleanup.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use zps_nats::{NatsConfig, NatsTransport, async_nats};

/// The test server's URL.
pub fn nats_url() -> String {
    std::env::var("ZPS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A prefix no other test (or test process) uses.
pub fn unique_prefix() -> String {
    format!("zpstest_{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

/// A prefix whose streams and buckets are deleted when it is dropped, even when the test failed.
pub struct Prefix {
    pub name: String,
    pub url: String,
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let (prefix, url) = (self.name.clone(), self.url.clone());
        // Drop may run on a runtime thread (or while unwinding): clean up on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = async_nats::connect(&url).await.unwrap();
                zps_nats::delete_prefix(&client, &prefix).await.unwrap();
            });
        })
        .join();
    }
}

/// Default settings under a fresh prefix (memory storage: tests need no disk).
pub fn config() -> (Prefix, NatsConfig) {
    let prefix = Prefix {
        name: unique_prefix(),
        url: nats_url(),
    };
    let mut config = NatsConfig::default().with_prefix(&prefix.name);
    config.file_storage = false;
    (prefix, config)
}

/// A transport with its own connection; panics (loudly) when no NATS is reachable.
pub async fn connect(config: NatsConfig) -> NatsTransport {
    NatsTransport::connect(&nats_url(), config)
        .await
        .unwrap_or_else(|e| panic!("NATS with JetStream must be reachable at {}: {e}", nats_url()))
}
