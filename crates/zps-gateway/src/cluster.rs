//! Cluster-wide room counts. Each gateway reports its local subscriber counts
//! every few seconds as a presence entry of a reserved room in the shared
//! provider (`zps-cluster:nodes`, one member per node, with a TTL), so any
//! node can answer "how many subscribers does this room have" for the whole
//! cluster: Redis, PostgreSQL, MongoDB and hybrid share it, the memory
//! provider sees its own process. Clients cannot use the reserved scope.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zps_core::{Room, RoomPattern};

use crate::shared::Shared;

/// The scope no client may use.
pub(crate) const RESERVED_SCOPE: &str = "zps-cluster";

/// The room whose members are the gateway nodes.
pub(crate) fn nodes_room() -> Room {
    Room::parse("zps-cluster:nodes").expect("a constant, valid room name")
}

/// What one node reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeReport {
    /// Subscribers per exact room (`scope:*` subscriptions under their pattern).
    pub(crate) rooms: BTreeMap<String, u64>,
    /// Open connections.
    pub(crate) connections: u64,
}

/// This node's report now.
pub(crate) fn local_report(gw: &Shared) -> NodeReport {
    let mut rooms = BTreeMap::new();
    for pattern in gw.engine.active_rooms() {
        let count = match &pattern {
            RoomPattern::Exact(room) => gw.engine.subscriber_count(room) as u64,
            RoomPattern::Scope(_) => 1,
        };
        rooms.insert(pattern.to_string(), count);
    }
    NodeReport {
        rooms,
        connections: gw.connections() as u64,
    }
}

/// Every node's last report (this node's fresh), from the shared provider.
pub(crate) async fn reports(gw: &Shared) -> zps_core::Result<Vec<NodeReport>> {
    let members = gw.engine.presence(nodes_room()).members().await?;
    let mut out: Vec<NodeReport> = members
        .into_iter()
        .filter(|m| m.user_id != gw.node_id)
        .filter_map(|m| {
            let meta = serde_json::Value::Object(m.metadata?);
            serde_json::from_value(meta).ok()
        })
        .collect();
    out.push(local_report(gw));
    Ok(out)
}

/// Reports this node's counts every `every` until the gateway is gone.
pub(crate) fn start(gw: &Arc<Shared>, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let weak: Weak<Shared> = Arc::downgrade(gw);
    Some(handle.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(gw) = weak.upgrade() else { return };
            if gw.is_draining() {
                let _ = gw
                    .engine
                    .presence(nodes_room())
                    .leave(&gw.node_id, &gw.node_id)
                    .await;
                return;
            }
            let report = local_report(&gw);
            let metadata = match serde_json::to_value(&report) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => continue,
            };
            let presence = gw.engine.presence(nodes_room());
            if let Err(e) = presence.enter(&gw.node_id, Some(metadata), &gw.node_id).await {
                tracing::debug!(error = %e, "cluster report failed");
            }
        }
    }))
}
