//! Storing events: sequence allocation from the room counter, idempotent
//! single and batched publishes, holes left by failed writes, local delivery.

use super::*;

impl MongoTransport {
    /// Takes `count` consecutive sequences of `room`: returns the first and the time the
    /// sequence before it was allocated (ms).
    pub(super) async fn allocate(&self, room: &Room, count: u64) -> MongoResult<(u64, i64)> {
        let sent = Timestamp::now().as_millis();
        let before = self
            .inner
            .c
            .counters
            .find_one_and_update(
                doc! { "_id": counter_key(room) },
                docs::allocation_update(count, sent),
            )
            .upsert(true)
            .return_document(ReturnDocument::Before)
            .await?;
        let prev_seq = before.as_ref().and_then(|d| get_u64(d, "seq")).unwrap_or(0);
        let prev_at = before.as_ref().and_then(|d| get_i64(d, "at")).unwrap_or(sent);
        Ok((prev_seq + 1, prev_at))
    }

    /// The counter: (head sequence, last allocation time ms, room epoch if reset).
    pub(super) async fn read_counter(&self, room: &Room) -> MongoResult<(u64, Option<i64>, Option<String>)> {
        let d = self
            .inner
            .c
            .counters
            .find_one(doc! { "_id": counter_key(room) })
            .await?;
        Ok(match d {
            Some(d) => (
                get_u64(&d, "seq").unwrap_or(0),
                get_i64(&d, "at"),
                d.get_str("epoch").ok().map(str::to_owned),
            ),
            None => (0, None, None),
        })
    }

    pub(super) async fn find_event(&self, key: &str) -> MongoResult<Option<Envelope>> {
        let Some(d) = self.inner.c.events.find_one(doc! { "_id": key }).await? else {
            return Ok(None);
        };
        decode_event(&d).map_err(|detail| MongoError::Corrupt {
            collection: "events",
            detail,
        })
    }

    /// Marks a consumed sequence as holding no event (best effort: readers claim it
    /// themselves after the grace if this fails).
    pub(super) async fn write_skip(&self, room: &Room, sequence: u64, prev_at: i64) {
        let d = skip_document(room, sequence, prev_at, Timestamp::now());
        match self.inner.c.events.insert_one(d).await {
            Ok(_) => {
                tracing::debug!(%room, sequence, "sequence consumed by a duplicate publish; skip record written")
            }
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => tracing::warn!(%room, sequence, error = %e, "could not write a skip record"),
        }
    }

    /// Our insert hit the `{room, sequence}` index: a reader claimed the sequence (it
    /// waited past the grace) or the counter is behind the history (restored, deleted).
    pub(super) async fn resolve_taken_sequence(&self, room: &Room, sequence: u64) -> MongoResult<()> {
        let events = &self.inner.c.events;
        let occupant = events
            .find_one(doc! { "room": room.as_str(), "sequence": int(sequence) })
            .await?;
        let is_event = occupant
            .as_ref()
            .is_some_and(|d| !d.get_bool("skip").unwrap_or(false));
        if is_event {
            let top = events
                .find_one(doc! { "room": room.as_str() })
                .sort(doc! { "sequence": -1 })
                .projection(doc! { "sequence": 1 })
                .await?
                .and_then(|d| get_u64(&d, "sequence"))
                .unwrap_or(sequence);
            tracing::warn!(%room, sequence, stored = top, "sequence counter was behind the stored history; raised it");
            self.inner
                .c
                .counters
                .update_one(
                    doc! { "_id": counter_key(room) },
                    docs::counter_repair_update(top),
                )
                .await?;
        } else {
            tracing::info!(%room, sequence, "a reader skipped this sequence while the publish was slow; taking a new one");
        }
        Ok(())
    }

    pub(super) fn deliver(&self, e: &Arc<Envelope>) {
        if self.inner.mode == LiveMode::InProcess {
            self.inner.hub.deliver_local(e);
        }
    }

    pub(super) async fn publish_one(&self, event: NewEvent) -> MongoResult<PublishOutcome> {
        let key = event_key(&event.room, &event.id);
        let waiting = {
            let mut map = self.inner.inflight.lock();
            match map.get(&key) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx);
                    Ok(tx)
                }
            }
        };
        let tx = match waiting {
            Ok(tx) => tx,
            Err(mut rx) => {
                // Another publish of this id is running here: its envelope is ours.
                if let Ok(stored) = rx.wait_for(Option::is_some).await
                    && let Some(e) = stored.clone()
                {
                    return Ok(duplicate_arc(e));
                }
                // It failed: publish normally (the id check below still applies).
                return self.publish_checked(event, &key).await;
            }
        };
        let _guard = InflightGuard {
            map: &self.inner.inflight,
            key: key.clone(),
        };
        let outcome = self.publish_checked(event, &key).await?;
        let _ = tx.send(Some(outcome.envelope.clone()));
        Ok(outcome)
    }

    pub(super) async fn publish_checked(&self, event: NewEvent, key: &str) -> MongoResult<PublishOutcome> {
        // Check first: a repeated id must not consume a sequence.
        if let Some(stored) = self.find_event(key).await? {
            return Ok(duplicate(stored));
        }
        let room = event.room.clone();
        let mut envelope = event.into_envelope(0);
        let half_horizon = self.inner.config.purge_delay / 2;
        for _ in 0..MAX_PUBLISH_ATTEMPTS {
            let (sequence, prev_at) = self.allocate(&room, 1).await?;
            let allocated = Instant::now();
            envelope.sequence = sequence;
            let doc = docs::event_document(&envelope, prev_at);
            if allocated.elapsed() > half_horizon {
                // Far too late to insert safely (readers treat old holes as final).
                self.write_skip(&room, sequence, prev_at).await;
                continue;
            }
            match self.inner.c.events.insert_one(doc).await {
                Ok(_) => {
                    let envelope = Arc::new(envelope);
                    self.deliver(&envelope);
                    return Ok(PublishOutcome {
                        envelope,
                        duplicate: false,
                    });
                }
                Err(e) if is_duplicate_key(&e) => {
                    if let Some(stored) = self.find_event(key).await? {
                        // Lost a race with a concurrent publish of the same id (another process).
                        self.write_skip(&room, sequence, prev_at).await;
                        return Ok(duplicate(stored));
                    }
                    self.resolve_taken_sequence(&room, sequence).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(MongoError::Conflict {
            room: room.to_string(),
            detail: format!("every one of {MAX_PUBLISH_ATTEMPTS} allocated sequences was already taken"),
        })
    }

    /// One room's part of a batch: one duplicate check, one block allocation, one insert.
    pub(super) async fn publish_room_batch(
        &self,
        room: &Room,
        batch: Vec<(usize, NewEvent)>,
    ) -> MongoResult<Vec<(usize, PublishOutcome)>> {
        let mut out = Vec::with_capacity(batch.len());
        let keys: Vec<String> = batch.iter().map(|(_, e)| event_key(room, &e.id)).collect();
        let mut stored: HashMap<String, Arc<Envelope>> = HashMap::new();
        let mut found = self
            .inner
            .c
            .events
            .find(doc! { "_id": { "$in": keys.clone() } })
            .await?;
        while let Some(d) = found.try_next().await? {
            if let Some(e) = decode_event(&d).map_err(|detail| MongoError::Corrupt {
                collection: "events",
                detail,
            })? {
                stored.insert(event_key(room, &e.id), Arc::new(e));
            }
        }
        // First occurrence of each new id is stored; repeats within the batch are duplicates of it.
        let mut fresh: Vec<(usize, NewEvent)> = Vec::new();
        let mut repeats: Vec<(usize, String)> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for ((i, e), key) in batch.into_iter().zip(keys) {
            if let Some(s) = stored.get(&key) {
                out.push((i, duplicate_arc(s.clone())));
            } else if !seen.insert(key.clone()) {
                repeats.push((i, key));
            } else {
                fresh.push((i, e));
            }
        }
        if !fresh.is_empty() {
            let (first, prev_at) = self.allocate(room, fresh.len() as u64).await?;
            let allocated_at = Timestamp::now().as_millis();
            let envelopes: Vec<(usize, Envelope)> = fresh
                .into_iter()
                .enumerate()
                .map(|(j, (i, e))| (i, e.into_envelope(first + j as u64)))
                .collect();
            let docs: Vec<Document> = envelopes
                .iter()
                .enumerate()
                .map(|(j, (_, e))| docs::event_document(e, if j == 0 { prev_at } else { allocated_at }))
                .collect();
            let failed: HashSet<usize> = match self.inner.c.events.insert_many(docs).ordered(false).await {
                Ok(_) => HashSet::new(),
                Err(e) => match e.kind.as_ref() {
                    mongodb::error::ErrorKind::InsertMany(m)
                        if m.write_concern_error.is_none()
                            && m.write_errors
                                .as_ref()
                                .is_some_and(|w| w.iter().all(|w| w.code == crate::error::DUPLICATE_KEY)) =>
                    {
                        m.write_errors.iter().flatten().map(|w| w.index).collect()
                    }
                    _ => return Err(e.into()),
                },
            };
            for (j, (i, envelope)) in envelopes.into_iter().enumerate() {
                if !failed.contains(&j) {
                    let envelope = Arc::new(envelope);
                    self.deliver(&envelope);
                    stored.insert(event_key(room, &envelope.id), envelope.clone());
                    out.push((
                        i,
                        PublishOutcome {
                            envelope,
                            duplicate: false,
                        },
                    ));
                    continue;
                }
                // A concurrent publish of the same id, or a taken sequence: settle it alone.
                let key = event_key(room, &envelope.id);
                let sequence = envelope.sequence;
                let slot_prev = if j == 0 { prev_at } else { allocated_at };
                if let Some(s) = self.find_event(&key).await? {
                    self.write_skip(room, sequence, slot_prev).await;
                    let s = Arc::new(s);
                    stored.insert(key, s.clone());
                    out.push((i, duplicate_arc(s)));
                } else {
                    self.resolve_taken_sequence(room, sequence).await?;
                    let outcome = self.publish_one(to_new_event(envelope)).await?;
                    stored.insert(key, outcome.envelope.clone());
                    out.push((i, outcome));
                }
            }
        }
        for (i, key) in repeats {
            if let Some(s) = stored.get(&key) {
                out.push((i, duplicate_arc(s.clone())));
            }
        }
        Ok(out)
    }

    /// Claims stale holes with skip records. True when another writer got to one of them
    /// first (maybe the late event itself): the caller must re-read.
    pub(super) async fn claim_holes(&self, room: &Room, holes: &[(u64, i64)]) -> MongoResult<bool> {
        let now = Timestamp::now();
        let docs: Vec<Document> = holes
            .iter()
            .map(|&(seq, bound)| skip_document(room, seq, bound, now))
            .collect();
        tracing::warn!(
            %room,
            first = holes.first().map(|h| h.0),
            count = holes.len(),
            "sequences consumed without an event (crashed or stalled publisher); marking them skipped"
        );
        match self.inner.c.events.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(false),
            Err(e) if is_duplicate_key(&e) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }
}

pub(super) fn duplicate(stored: Envelope) -> PublishOutcome {
    duplicate_arc(Arc::new(stored))
}

pub(super) fn duplicate_arc(envelope: Arc<Envelope>) -> PublishOutcome {
    PublishOutcome {
        envelope,
        duplicate: true,
    }
}

pub(super) fn to_new_event(e: Envelope) -> NewEvent {
    NewEvent {
        id: e.id,
        event_type: e.event_type,
        room: e.room,
        emitted_at: e.emitted_at,
        expires_at: e.expires_at,
        payload: e.payload,
        metadata: e.metadata,
        encrypted: e.encrypted,
    }
}
