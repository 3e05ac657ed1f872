//! Shared history reads. Many clients resuming the same room at once (a
//! reconnect storm after a deploy) ask for the same pages; identical reads in
//! flight are coalesced into one engine call, and recent pages are reused, with
//! their frames serialized once for everyone.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use zps_core::{Realtime, ReplayQuery, Room};

use crate::frames::EventFrame;

/// A page of history with its frames.
pub(crate) struct CachedPage {
    pub(crate) frames: Vec<Arc<EventFrame>>,
    pub(crate) scanned_to: u64,
    pub(crate) exhausted: bool,
}

type Key = (Room, u64, usize, Option<Vec<String>>);
type PageFuture = Shared<BoxFuture<'static, Result<Arc<CachedPage>, Arc<str>>>>;

const RECENT_CAPACITY: usize = 256;
const RECENT_TTL: Duration = Duration::from_secs(2);

/// Coalesces identical history reads.
pub(crate) struct ReplayCache {
    engine: Realtime,
    inflight: Mutex<HashMap<Key, PageFuture>>,
    recent: Mutex<VecDeque<(Key, Instant, Arc<CachedPage>)>>,
}

impl ReplayCache {
    pub(crate) fn new(engine: Realtime) -> Self {
        Self {
            engine,
            inflight: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// One page after `from` (shared with concurrent identical reads). `fresh`
    /// skips reuse, for callers that need a read started after some point.
    pub(crate) async fn page(
        &self,
        room: &Room,
        from: u64,
        limit: usize,
        types: Option<Vec<String>>,
        fresh: bool,
    ) -> Result<Arc<CachedPage>, Arc<str>> {
        let key: Key = (room.clone(), from, limit, types);
        if !fresh {
            let now = Instant::now();
            let mut recent = self.recent.lock();
            recent.retain(|(_, at, _)| now.duration_since(*at) < RECENT_TTL);
            if let Some((_, _, page)) = recent.iter().find(|(k, _, _)| *k == key) {
                metrics::counter!("zps_gateway_replay_coalesced_total").increment(1);
                return Ok(page.clone());
            }
        }
        let (fut, leader) = {
            let mut inflight = self.inflight.lock();
            match inflight.get(&key).filter(|_| !fresh) {
                Some(f) => {
                    metrics::counter!("zps_gateway_replay_coalesced_total").increment(1);
                    (f.clone(), false)
                }
                None => {
                    let engine = self.engine.clone();
                    let query = ReplayQuery {
                        room: key.0.clone(),
                        from_sequence: from,
                        to_sequence: None,
                        event_types: key.3.clone(),
                        limit,
                    };
                    let f = async move {
                        let page = engine
                            .replay(query)
                            .await
                            .map_err(|e| Arc::<str>::from(e.to_string()))?;
                        Ok(Arc::new(CachedPage {
                            frames: page
                                .events
                                .into_iter()
                                .map(|e| Arc::new(EventFrame::new(e)))
                                .collect(),
                            scanned_to: page.scanned_to,
                            exhausted: page.exhausted,
                        }))
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key.clone(), f.clone());
                    (f, true)
                }
            }
        };
        let out = fut.await;
        if leader {
            self.inflight.lock().remove(&key);
            if let Ok(page) = &out {
                let mut recent = self.recent.lock();
                if recent.len() == RECENT_CAPACITY {
                    recent.pop_front();
                }
                recent.push_back((key, Instant::now(), page.clone()));
            }
        }
        out
    }
}
