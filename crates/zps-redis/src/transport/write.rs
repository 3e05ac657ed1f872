//! Storing events: one script call per batch (sequence, idempotency, stream
//! entry and fan-out together; the rooms of a batch share calls except on a
//! Cluster, where a call holds one room), and the per-room publish queue that
//! batches what waits while a call is in flight.

use super::*;

impl RedisTransport {
    /// Serializes one event for the publish script.
    pub(super) fn prepare(&self, event: NewEvent) -> Result<Prepared> {
        self.prepare_envelope(event.into_envelope(0))
    }

    /// Serializes one envelope (not numbered yet) for the publish script.
    fn prepare_envelope(&self, envelope: Envelope) -> Result<Prepared> {
        let keys = &self.inner.keys;
        let expires_ms = envelope.expires_at.as_millis();
        let remaining = u64::try_from(expires_ms.saturating_sub(now_ms()))
            .unwrap_or(0)
            .max(1);
        // The record never outlives the event it points to.
        let idem_ttl = u64::try_from(keys.config().idempotency_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .min(remaining);
        let idem_key = Key::from(keys.idempotency(&envelope.room, &envelope.id));
        let split = codec::split_envelope(&envelope).map_err(Error::InvalidEvent)?;
        Ok(Prepared {
            idem_key,
            args: [
                bulk(split.head),
                bulk(split.tail),
                bulk(idem_ttl.to_string()),
                bulk(expires_ms.to_string()),
                bulk(envelope.event_type.clone()),
            ],
            envelope,
        })
    }

    /// Publishes events of one room in one script call (atomic, in order).
    pub(super) async fn publish_room(
        &self,
        room: &Room,
        events: Vec<Prepared>,
    ) -> Result<Vec<PublishOutcome>> {
        self.publish_rooms(vec![(room.clone(), events)]).await
    }

    /// Publishes the events of several rooms in one script call (atomic; each
    /// room's events in order). Outcomes come back rooms in call order.
    pub(super) async fn publish_rooms(
        &self,
        rooms: Vec<(Room, Vec<Prepared>)>,
    ) -> Result<Vec<PublishOutcome>> {
        let shape: Vec<(Room, usize)> = rooms.iter().map(|(r, e)| (r.clone(), e.len())).collect();
        let (redis_keys, args, envelopes) = self.publish_args(rooms);
        let script = &self.inner.scripts.publish;
        let client = &self.inner.client;
        let reply: Value = match script.run_cached(client, redis_keys, args).await.map_err(core)? {
            Some(reply) => reply,
            None => {
                // The server lost the script (flush, restart, failover): the same
                // call again, with the source, from the envelopes kept for the reply.
                let mut again = envelopes.iter().cloned();
                let mut rooms = Vec::with_capacity(shape.len());
                for (room, n) in shape {
                    let prepared = again
                        .by_ref()
                        .take(n)
                        .map(|e| self.prepare_envelope(e))
                        .collect::<Result<Vec<_>>>()?;
                    rooms.push((room, prepared));
                }
                let (redis_keys, args, _) = self.publish_args(rooms);
                script.eval(client, redis_keys, args).await.map_err(core)?
            }
        };
        let items = reply.into_array();
        if items.len() != 2 * envelopes.len() {
            return Err(decode("publish script returned an unexpected reply"));
        }
        let mut items = items.into_iter();
        let mut out = Vec::with_capacity(envelopes.len());
        for mut envelope in envelopes {
            let (Some(flag), Some(body)) = (items.next(), items.next()) else {
                return Err(decode("publish script returned an unexpected reply"));
            };
            out.push(match flag.as_i64() {
                Some(0) => {
                    envelope.sequence =
                        u64_of(&body).ok_or_else(|| decode("publish script returned no sequence"))?;
                    PublishOutcome {
                        envelope: Arc::new(envelope),
                        duplicate: false,
                    }
                }
                Some(1) => {
                    let bytes = body
                        .as_bytes()
                        .ok_or_else(|| decode("publish script returned no stored envelope"))?;
                    PublishOutcome {
                        envelope: Arc::new(codec::decode_envelope(bytes).map_err(decode)?),
                        duplicate: true,
                    }
                }
                _ => return Err(decode("publish script returned an unknown status")),
            });
        }
        Ok(out)
    }

    /// The publish script's keys and arguments for these rooms' events (see
    /// `PUBLISH_BODY`), and the envelopes in call order.
    fn publish_args(&self, rooms: Vec<(Room, Vec<Prepared>)>) -> (Vec<Key>, Vec<Value>, Vec<Envelope>) {
        let keys = &self.inner.keys;
        let config = keys.config();
        let events: usize = rooms.iter().map(|(_, e)| e.len()).sum();
        let mut redis_keys = Vec::with_capacity(2 * rooms.len() + events);
        let mut args = Vec::with_capacity(3 + 3 * rooms.len() + 5 * events);
        args.push(bulk(if config.persist_streams { "1" } else { "0" }));
        args.push(bulk(config.max_stream_len.unwrap_or(0).to_string()));
        args.push(bulk(if config.sharded_pubsub {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }));
        let mut envelopes = Vec::with_capacity(events);
        for (room, prepared) in rooms {
            redis_keys.push(Key::from(keys.meta(&room)));
            redis_keys.push(Key::from(keys.stream(&room)));
            args.push(bulk(new_epoch()));
            args.push(bulk(keys.event_channel(&room)));
            args.push(bulk(prepared.len().to_string()));
            for p in prepared {
                redis_keys.push(p.idem_key);
                args.extend(p.args);
                envelopes.push(p.envelope);
            }
        }
        (redis_keys, args, envelopes)
    }

    /// All events of one room, chunked into script calls that run one after another.
    pub(super) async fn publish_room_chunks(
        &self,
        room: Room,
        events: Vec<(usize, Prepared)>,
    ) -> Result<Vec<(usize, PublishOutcome)>> {
        let mut out = Vec::with_capacity(events.len());
        let mut rest = events.into_iter().peekable();
        while rest.peek().is_some() {
            let mut chunk = Vec::new();
            let mut bytes = 0;
            while let Some((_, p)) = rest.peek() {
                let size = p.size();
                if !chunk.is_empty() && (chunk.len() >= BATCH_EVENTS || bytes + size > BATCH_BYTES) {
                    break;
                }
                bytes += size;
                if let Some(next) = rest.next() {
                    chunk.push(next);
                }
            }
            let (indices, prepared): (Vec<usize>, Vec<Prepared>) = chunk.into_iter().unzip();
            let outcomes = self.publish_room(&room, prepared).await?;
            out.extend(indices.into_iter().zip(outcomes));
        }
        Ok(out)
    }

    pub(super) async fn publish_stored(&self, event: NewEvent) -> Result<PublishOutcome> {
        self.check_open()?;
        let room = event.room.clone();
        let mut prepared = Some(self.prepare(event)?);
        // One script call in flight per room: publishes arriving meanwhile queue up and
        // go together in the next call (in arrival order), which keeps a hot room's
        // throughput from being bounded by one round trip per event.
        let follower = {
            let mut queues = self.inner.queues.lock();
            match queues.get_mut(&room) {
                Some(waiting) => {
                    let (tx, rx) = oneshot::channel();
                    if let Some(p) = prepared.take() {
                        waiting.push_back((p, tx));
                    }
                    Some(rx)
                }
                None => {
                    queues.insert(room.clone(), VecDeque::new());
                    None
                }
            }
        };
        if let Some(rx) = follower {
            return rx.await.unwrap_or(Err(Error::Closed));
        }
        // Hands the queue on (even if this future is dropped midway).
        let _handoff = Handoff {
            transport: self.clone(),
            room: room.clone(),
        };
        let prepared = prepared.ok_or_else(|| decode("publish lost its event"))?;
        self.publish_room(&room, vec![prepared])
            .await?
            .pop()
            .ok_or_else(|| decode("publish script returned no outcome"))
    }

    pub(super) async fn publish_batch_stored(&self, events: Vec<NewEvent>) -> Result<Vec<PublishOutcome>> {
        self.check_open()?;
        let total = events.len();
        // Group by room, keeping each room's order: one script call per room chunk,
        // rooms in parallel (fred pipelines them on the connection).
        let mut by_room: Vec<(Room, Vec<(usize, Prepared)>)> = Vec::new();
        let mut slot_of: HashMap<Room, usize> = HashMap::new();
        for (i, event) in events.into_iter().enumerate() {
            let room = event.room.clone();
            let prepared = self.prepare(event)?;
            let slot = *slot_of.entry(room.clone()).or_insert_with(|| {
                by_room.push((room, Vec::new()));
                by_room.len() - 1
            });
            by_room[slot].1.push((i, prepared));
        }
        let mut results: Vec<Option<PublishOutcome>> = (0..total).map(|_| None).collect();
        if !self.inner.client.is_clustered() {
            self.publish_shared_calls(by_room, &mut results).await?;
            return results
                .into_iter()
                .map(|o| o.ok_or_else(|| decode("a batched publish got no outcome")))
                .collect();
        }
        let mut calls = futures::stream::iter(
            by_room
                .into_iter()
                .map(|(room, events)| self.publish_room_chunks(room, events)),
        )
        .buffer_unordered(BATCH_ROOMS_IN_FLIGHT);
        while let Some(done) = calls.next().await {
            for (i, outcome) in done? {
                results[i] = Some(outcome);
            }
        }
        results
            .into_iter()
            .map(|o| o.ok_or_else(|| decode("a batched publish got no outcome")))
            .collect()
    }

    /// Where one script may touch several rooms (not a Cluster): the rooms of a
    /// batch share script calls, up to [`BATCH_EVENTS`] events and
    /// [`BATCH_BYTES`] each, run one after another — one round trip, one
    /// flush and one script run for many rooms instead of one per room.
    async fn publish_shared_calls(
        &self,
        by_room: Vec<(Room, Vec<(usize, Prepared)>)>,
        results: &mut [Option<PublishOutcome>],
    ) -> Result<()> {
        let mut call: Vec<(Room, Vec<Prepared>)> = Vec::new();
        let mut indices = Vec::new();
        let mut bytes = 0;
        for (room, events) in by_room {
            for (i, prepared) in events {
                let size = prepared.size();
                if !indices.is_empty() && (indices.len() >= BATCH_EVENTS || bytes + size > BATCH_BYTES) {
                    // A room cut here continues in the next call, which runs after this one.
                    let outcomes = self.publish_rooms(std::mem::take(&mut call)).await?;
                    place(results, std::mem::take(&mut indices), outcomes)?;
                    bytes = 0;
                }
                bytes += size;
                match call.last_mut() {
                    Some((last, list)) if *last == room => list.push(prepared),
                    _ => call.push((room.clone(), vec![prepared])),
                }
                indices.push(i);
            }
        }
        if !indices.is_empty() {
            let outcomes = self.publish_rooms(call).await?;
            place(results, indices, outcomes)?;
        }
        Ok(())
    }
}

/// Puts a call's outcomes at their places in the batch.
fn place(
    results: &mut [Option<PublishOutcome>],
    indices: Vec<usize>,
    outcomes: Vec<PublishOutcome>,
) -> Result<()> {
    if indices.len() != outcomes.len() {
        return Err(decode("publish script returned an unexpected reply"));
    }
    for (i, outcome) in indices.into_iter().zip(outcomes) {
        if let Some(slot) = results.get_mut(i) {
            *slot = Some(outcome);
        }
    }
    Ok(())
}

/// Passes a room's publish queue on when the call in flight finishes: to a drain
/// task when publishes are waiting, otherwise the room is idle again.
struct Handoff {
    transport: RedisTransport,
    room: Room,
}

impl Drop for Handoff {
    fn drop(&mut self) {
        let waiting = {
            let mut queues = self.transport.inner.queues.lock();
            match queues.get(&self.room) {
                Some(waiting) if !waiting.is_empty() => true,
                _ => {
                    queues.remove(&self.room);
                    false
                }
            }
        };
        if !waiting {
            return;
        }
        let (transport, room) = (self.transport.clone(), self.room.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(drain(transport, room));
            }
            Err(_) => {
                // No runtime left to publish on: fail the waiting publishes.
                let waiting = transport.inner.queues.lock().remove(&room).unwrap_or_default();
                for (_, tx) in waiting {
                    let _ = tx.send(Err(Error::Closed));
                }
            }
        }
    }
}

/// Publishes a room's waiting events, a batch per script call, until none are left.
async fn drain(transport: RedisTransport, room: Room) {
    loop {
        let batch: Vec<Waiting> = {
            let mut queues = transport.inner.queues.lock();
            let Some(waiting) = queues.get_mut(&room) else {
                return;
            };
            if waiting.is_empty() {
                queues.remove(&room);
                return;
            }
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some((p, _)) = waiting.front() {
                let size = p.size();
                if !batch.is_empty() && (batch.len() >= BATCH_EVENTS || bytes + size > BATCH_BYTES) {
                    break;
                }
                bytes += size;
                if let Some(next) = waiting.pop_front() {
                    batch.push(next);
                }
            }
            batch
        };
        let (prepared, senders): (Vec<Prepared>, Vec<_>) = batch.into_iter().unzip();
        match transport.publish_room(&room, prepared).await {
            Ok(outcomes) => {
                for (tx, outcome) in senders.into_iter().zip(outcomes) {
                    let _ = tx.send(Ok(outcome));
                }
            }
            Err(e) => {
                for tx in senders {
                    let _ = tx.send(Err(replicate(&e)));
                }
            }
        }
    }
}

/// The same failure for every publish of a failed batch (`Error` is not `Clone`).
fn replicate(e: &Error) -> Error {
    match e {
        Error::Transport(t) => {
            Error::Transport(TransportError::new(t.provider, t.kind, t.source.to_string()))
        }
        Error::Closed => Error::Closed,
        other => Error::Transport(TransportError::new(
            PROVIDER,
            TransportErrorKind::Other,
            other.to_string(),
        )),
    }
}
