//! State shared by every connection of one gateway.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};
use zps_core::Realtime;

use parking_lot::Mutex;
use zps_protocol::CloseCode;

use crate::auth::JwtVerifier;
use crate::config::GatewayConfig;
use crate::conn::ConnShared;
use crate::replay::ReplayCache;
use crate::room_hub::Hubs;

pub(crate) struct GatewayState {
    pub(crate) engine: Realtime,
    pub(crate) config: GatewayConfig,
    pub(crate) verifier: Option<JwtVerifier>,
    pub(crate) hubs: Hubs,
    pub(crate) replay: ReplayCache,
    pub(crate) node_id: String,
    next_id: AtomicU64,
    connections: AtomicUsize,
    pub(crate) draining: AtomicBool,
    pub(crate) drain: CancellationToken,
    /// Every connection and the tasks working for one (publish queues, SSE
    /// writers, kick timers): a drain closes it and waits until it is empty.
    pub(crate) tasks: TaskTracker,
    pub(crate) prometheus: Option<PrometheusHandle>,
    /// Open connections, so a drain (and an operator) can reach each one.
    open: Mutex<HashMap<u64, Weak<ConnShared>>>,
    /// Subscriber ids refused until an instant (operator bans).
    bans: Mutex<HashMap<String, std::time::Instant>>,
    /// Per-caller rate limits of the HTTP API.
    pub(crate) api_rate: crate::api::RateLimiter,
}

/// How long a kicked connection gets to write its reason before it is closed anyway.
const KICK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Keeps a connection listed in [`GatewayState`]; unlisted on drop.
pub(crate) struct Registration {
    shared: Arc<GatewayState>,
    id: u64,
    /// Counts the connection in [`GatewayState::tasks`] until it is gone.
    _task: TaskTrackerToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.open.lock().remove(&self.id);
    }
}

/// Holds one of `max_connections` places; released on drop.
pub(crate) struct ConnSlot {
    shared: Arc<GatewayState>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let now = self.shared.connections.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("zps_gateway_connections").set(now as f64);
    }
}

impl GatewayState {
    pub(crate) fn new(
        engine: Realtime,
        config: GatewayConfig,
        verifier: Option<JwtVerifier>,
        prometheus: Option<PrometheusHandle>,
    ) -> Self {
        Self {
            hubs: Hubs::new(engine.clone()),
            replay: ReplayCache::new(engine.clone()),
            engine,
            config,
            verifier,
            node_id: zps_core::envelope::generate_id(),
            next_id: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            drain: CancellationToken::new(),
            tasks: TaskTracker::new(),
            prometheus,
            open: Mutex::new(HashMap::new()),
            bans: Mutex::new(HashMap::new()),
            api_rate: crate::api::RateLimiter::default(),
        }
    }

    /// Takes a connection place, or `None` at `max_connections`.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<ConnSlot> {
        let max = self.config.limits.max_connections;
        let mut current = self.connections.load(Ordering::Acquire);
        loop {
            if current >= max {
                metrics::counter!("zps_gateway_rejected_connections_total", "reason" => "capacity")
                    .increment(1);
                return None;
            }
            match self.connections.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    metrics::gauge!("zps_gateway_connections").set((current + 1) as f64);
                    return Some(ConnSlot { shared: self.clone() });
                }
                Err(actual) => current = actual,
            }
        }
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Lists a connection until the returned registration drops; a connection
    /// opened while draining is told to close at once.
    pub(crate) fn register(self: &Arc<Self>, conn: &Arc<ConnShared>) -> Registration {
        self.open.lock().insert(conn.id, Arc::downgrade(conn));
        if self.is_draining() {
            conn.kill(CloseCode::ServiceRestart);
        }
        Registration {
            shared: self.clone(),
            id: conn.id,
            _task: self.tasks.token(),
        }
    }

    /// Asks every open connection to close with `code`.
    pub(crate) fn close_all(&self, code: CloseCode) {
        let open: Vec<Arc<ConnShared>> = self.open.lock().values().filter_map(Weak::upgrade).collect();
        for conn in open {
            conn.kill(code);
        }
    }

    /// One of this node's open connections, by its key (`<node>-<n>`).
    pub(crate) fn find_connection(&self, key: &str) -> Option<Arc<ConnShared>> {
        let id: u64 = key
            .strip_prefix(self.node_id.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()?;
        self.open.lock().get(&id).and_then(Weak::upgrade)
    }

    /// Closes (4403, after an `error` with `reason`) the connections `which` picks;
    /// returns how many.
    pub(crate) fn kick(&self, which: impl Fn(&ConnShared) -> bool, reason: &str) -> usize {
        let open: Vec<Arc<ConnShared>> = self.open.lock().values().filter_map(Weak::upgrade).collect();
        let mut n = 0;
        for conn in open.iter().filter(|c| which(c) && c.mark_kicked()) {
            // The task writes the reason after what is already queued, then closes.
            conn.command(crate::conn::Command::Kick {
                reason: reason.to_owned(),
            });
            // A peer that reads nothing would never see it: close regardless, soon.
            let weak = Arc::downgrade(conn);
            self.tasks.spawn(async move {
                tokio::time::sleep(KICK_GRACE).await;
                if let Some(conn) = weak.upgrade() {
                    conn.kill(CloseCode::Kicked);
                }
            });
            n += 1;
        }
        metrics::counter!("zps_gateway_kicks_total").increment(n as u64);
        n
    }

    /// Refuses `subscriber`'s connections for `for_how_long`.
    pub(crate) fn ban(&self, subscriber: &str, for_how_long: std::time::Duration) {
        let until = std::time::Instant::now() + for_how_long;
        let mut bans = self.bans.lock();
        bans.retain(|_, t| *t > std::time::Instant::now());
        bans.insert(subscriber.to_owned(), until);
    }

    /// Whether `subscriber` is banned now.
    pub(crate) fn banned(&self, subscriber: &str) -> bool {
        self.bans
            .lock()
            .get(subscriber)
            .is_some_and(|t| *t > std::time::Instant::now())
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}
