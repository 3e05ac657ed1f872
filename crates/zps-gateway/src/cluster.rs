//! Cluster-wide room counts. Each gateway reports its local subscriber counts
//! every few seconds as a presence entry of a reserved room in the shared
//! provider (`zps-cluster:nodes`, one member per node, with a TTL), so any
//! node can answer "how many subscribers does this room have" for the whole
//! cluster: Redis, PostgreSQL, MongoDB and hybrid share it, the memory
//! provider sees its own process. Clients cannot use the reserved scope.
//!
//! Operator disconnects reach every node the same way: the node that takes
//! `POST /subscribers/{id}/disconnect` kicks (and bans) locally and sends a
//! [`KickOrder`] as an ephemeral event of `zps-cluster:kicks`; every other node
//! follows it. Ephemeral events cross nodes on Redis, PostgreSQL and hybrid;
//! on MongoDB and the memory provider the order stays on its node.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zps_core::{Room, RoomPattern};

use crate::gateway_state::GatewayState;

/// The scope no client may use.
pub(crate) const RESERVED_SCOPE: &str = "zps-cluster";

/// The room whose members are the gateway nodes.
pub(crate) fn nodes_room() -> Room {
    Room::parse("zps-cluster:nodes").expect("a constant, valid room name")
}

/// The room on which nodes pass operator disconnects to each other.
pub(crate) fn kicks_room() -> Room {
    Room::parse("zps-cluster:kicks").expect("a constant, valid room name")
}

/// An operator's disconnect of a subscriber, for every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KickOrder {
    /// Whose connections close.
    pub(crate) subscriber: String,
    /// Told to the client before the close.
    pub(crate) reason: String,
    /// Refuse the subscriber's reconnections for this long.
    pub(crate) ban_seconds: Option<u64>,
}

impl KickOrder {
    /// Carries the order out on this node; how many connections closed.
    fn apply(&self, gw: &GatewayState) -> usize {
        if let Some(secs) = self.ban_seconds {
            gw.ban(&self.subscriber, Duration::from_secs(secs));
        }
        gw.kick(
            |c| c.subscriber().as_deref() == Some(self.subscriber.as_str()),
            &self.reason,
        )
    }
}

/// Disconnects (and bans) a subscriber here and tells the other nodes to do
/// the same; the count is this node's.
pub(crate) async fn disconnect_everywhere(gw: &GatewayState, order: KickOrder) -> usize {
    let closed = order.apply(gw);
    let sent = match serde_json::value::to_raw_value(&order) {
        Ok(payload) => gw
            .engine
            .publish_ephemeral(zps_core::EphemeralRequest {
                room: kicks_room(),
                event_type: "kick".into(),
                payload,
                metadata: None,
                origin: Some(gw.node_id.clone()),
            })
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, subscriber = %order.subscriber, "could not pass a disconnect to the other nodes");
    }
    closed
}

/// Follows the other nodes' disconnect orders until the gateway is gone.
pub(crate) fn follow_kicks(gw: &Arc<GatewayState>) -> Option<tokio::task::JoinHandle<()>> {
    use futures::StreamExt;
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let weak: Weak<GatewayState> = Arc::downgrade(gw);
    let (engine, node) = (gw.engine.clone(), gw.node_id.clone());
    Some(handle.spawn(async move {
        let mut orders = match engine
            .subscribe_ephemeral(&[RoomPattern::Exact(kicks_room())], None)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "operator disconnects stay on this node");
                return;
            }
        };
        while let Some(event) = orders.next().await {
            if event.origin.as_deref() == Some(node.as_str()) {
                continue;
            }
            let Some(gw) = weak.upgrade() else { return };
            match serde_json::from_str::<KickOrder>(event.payload.get()) {
                Ok(order) => {
                    let closed = order.apply(&gw);
                    tracing::info!(subscriber = %order.subscriber, closed, "disconnect from another node");
                }
                Err(e) => tracing::warn!(error = %e, "unreadable disconnect order"),
            }
        }
    }))
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
pub(crate) fn local_report(gw: &GatewayState) -> NodeReport {
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
pub(crate) async fn reports(gw: &GatewayState) -> zps_core::Result<Vec<NodeReport>> {
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
pub(crate) fn start(gw: &Arc<GatewayState>, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let weak: Weak<GatewayState> = Arc::downgrade(gw);
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
