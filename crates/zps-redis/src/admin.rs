//! Finding and removing a deployment's keys. Tests, benchmarks and operators
//! decommissioning a key prefix share one correct way to do it: the prefix is
//! glob-escaped, SCAN walks every primary in pages, DEL goes in chunks (one key
//! per command on a cluster, where keys of different slots cannot share one).

use fred::prelude::*;
use fred::types::scan::Scanner;
use futures::StreamExt;

use crate::config::glob_escape;
use crate::error::RedisError;

/// Keys matching a SCAN `pattern`, from every primary on a cluster.
pub(crate) async fn keys_matching(client: &Client, pattern: String) -> Result<Vec<String>, RedisError> {
    let mut pages = if client.is_clustered() {
        client.scan_cluster(pattern, Some(1_000), None).boxed()
    } else {
        client.scan(pattern, Some(1_000), None).boxed()
    };
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let mut page = page.map_err(RedisError::Command)?;
        if let Some(keys) = page.take_results() {
            out.extend(keys.iter().filter_map(|k| k.as_str().map(str::to_owned)));
        }
        page.next();
    }
    Ok(out)
}

/// Every key whose name starts with `prefix`.
pub async fn keys_with_prefix(client: &Client, prefix: &str) -> Result<Vec<String>, RedisError> {
    keys_matching(client, format!("{}*", glob_escape(prefix))).await
}

/// Deletes every key whose name starts with `prefix`; returns how many were removed.
///
/// ```no_run
/// # async fn demo(client: &zps_redis::fred::prelude::Client) -> Result<(), zps_redis::RedisError> {
/// let removed = zps_redis::delete_prefix(client, "staging:").await?;
/// println!("removed {removed} keys");
/// # Ok(()) }
/// ```
pub async fn delete_prefix(client: &Client, prefix: &str) -> Result<u64, RedisError> {
    let keys = keys_with_prefix(client, prefix).await?;
    let chunk = if client.is_clustered() { 1 } else { 500 };
    let mut removed = 0u64;
    for keys in keys.chunks(chunk) {
        let n: i64 = client.del(keys.to_vec()).await.map_err(RedisError::Command)?;
        removed += u64::try_from(n).unwrap_or(0);
    }
    Ok(removed)
}
