//! Live subscriptions: event and ephemeral streams over the shared subscriber
//! connection, and the reader that feeds them and resyncs after a reconnect.

use super::*;

impl RedisTransport {
    pub(super) async fn subscribe_live(&self, patterns: &[RoomPattern]) -> Result<LiveStream> {
        self.check_open()?;
        self.refuse_wildcards_if_sharded(patterns)?;
        let mut targets: Vec<Target> = patterns
            .iter()
            .map(|p| match p {
                RoomPattern::Exact(r) => Target::EventRoom(r.clone()),
                RoomPattern::Scope(s) => Target::EventScope(s.clone()),
            })
            .collect();
        targets.sort_by_key(|t| format!("{t:?}"));
        targets.dedup();
        let hub = &self.inner.hub;
        let guard = hub.acquire(targets).await.map_err(core)?;
        // Seed each room's epoch, so a reset that happens before the first message is noticed.
        let mut known = HashMap::new();
        if self.config().persist_streams {
            let rooms: Vec<&Room> = patterns.iter().filter_map(RoomPattern::as_room).collect();
            let reads = rooms.iter().map(|room| {
                let meta = self.inner.keys.meta(room);
                async move {
                    let epoch: std::result::Result<Option<String>, _> =
                        self.inner.client.hget(meta, "epoch").await;
                    epoch
                }
            });
            for (room, epoch) in rooms.iter().zip(futures::future::join_all(reads).await) {
                if let Some(epoch) = epoch.map_err(core)? {
                    known.insert((*room).clone(), Arc::from(epoch));
                }
            }
        }
        let stream = hub.live_stream(patterns, guard, known);
        Ok(stream.boxed())
    }

    pub(super) async fn subscribe_ephemeral_live(&self, patterns: &[RoomPattern]) -> Result<EphemeralStream> {
        self.check_open()?;
        self.refuse_wildcards_if_sharded(patterns)?;
        let mut targets: Vec<Target> = patterns
            .iter()
            .map(|p| match p {
                RoomPattern::Exact(r) => Target::EphemeralRoom(r.clone()),
                RoomPattern::Scope(s) => Target::EphemeralScope(s.clone()),
            })
            .collect();
        targets.sort_by_key(|t| format!("{t:?}"));
        targets.dedup();
        let hub = &self.inner.hub;
        let guard = hub.acquire(targets).await.map_err(core)?;
        Ok(hub.ephemeral_stream(patterns, guard))
    }
}

/// Reads the subscriber connection until the transport closes.
pub(super) async fn run_reader(hub: Arc<Hub>, client: Client, subscriber: Client) {
    use tokio::sync::broadcast::error::RecvError;
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    loop {
        tokio::select! {
            msg = messages.recv() => match msg {
                Ok(msg) => hub.route(&msg),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "live reader fell behind the subscriber connection; re-reading history");
                    hub.lagged_all();
                }
                Err(RecvError::Closed) => return,
            },
            event = reconnects.recv() => match event {
                Ok(_) | Err(RecvError::Lagged(_)) => resync(&hub, &client).await,
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// After the subscriber connection came back: subscribe again, re-read epochs, and
/// make every stream re-read history for what passed while it was down.
async fn resync(hub: &Hub, client: &Client) {
    match hub.resubscribe().await {
        Ok(rooms) => {
            tracing::info!(
                rooms = rooms.len(),
                "subscriber connection re-established; resubscribed"
            );
            if hub.keys().config().persist_streams {
                let scripts = Scripts::get();
                let reads = rooms.iter().map(|room| {
                    let keys = vec![
                        Key::from(hub.keys().meta(room)),
                        Key::from(hub.keys().stream(room)),
                    ];
                    async move {
                        let epoch: std::result::Result<String, _> =
                            scripts.epoch.run(client, keys, vec![bulk(new_epoch())]).await;
                        (room, epoch)
                    }
                });
                for (room, epoch) in futures::future::join_all(reads).await {
                    match epoch {
                        Ok(epoch) => hub.announce_epoch(room, Arc::from(epoch)),
                        Err(e) => tracing::warn!(room = %room, error = %e, "cannot re-read the room's epoch"),
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "resubscribing after a reconnect failed; waiting for the next one")
        }
    }
    hub.lagged_all();
}
