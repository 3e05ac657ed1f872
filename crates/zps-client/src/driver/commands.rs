//! Commands from [`crate::Client`] handles: subscribe and unsubscribe, requests
//! (publish, presence, snapshots, tokens) with their in-flight window and queue,
//! and the sinks consumers drop.

use super::*;

impl Driver {
    pub(super) fn on_command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Subscribe {
                sink,
                targets,
                start,
                positions,
                reply,
            } => self.subscribe(sink, targets, &start, &positions, reply, now),
            Command::Unsubscribe { sink, reply } => {
                self.remove_sink(sink);
                let _ = reply.send(());
            }
            Command::Request { req, reply } => self.request(req, reply),
            Command::EphemeralSubscribe {
                id,
                pattern,
                types,
                tx,
            } => {
                let fresh = !self.ephemeral.values().any(|e| e.pattern == pattern);
                if fresh && self.online {
                    self.push(&ClientMessage::SubscribeEphemeral(SubscribeEphemeral {
                        room: Some(pattern.to_string()),
                        rooms: None,
                        event_types: None,
                    }));
                }
                self.ephemeral.insert(id, EphemeralSink { pattern, types, tx });
            }
            Command::PresenceEnter {
                room,
                metadata,
                reply,
            } => {
                let p = self.presence.entry(room.clone()).or_default();
                p.entered = Some(metadata.clone());
                p.enter_waiters.push(reply);
                if self.online {
                    p.slots.push_back(Slot::Enter);
                    self.push(&ClientMessage::PresenceEnter(PresenceEnter { room, metadata }));
                }
            }
            Command::PresenceLeave { room, reply } => {
                let online = self.online;
                let p = self.presence.entry(room.clone()).or_default();
                p.entered = None;
                if online {
                    p.slots.push_back(Slot::Leave);
                    p.leave_waiters.push(reply);
                    self.push(&ClientMessage::PresenceLeave(RoomRef {
                        room,
                        request_id: None,
                    }));
                } else {
                    // Offline: the server already forgot this connection's presence.
                    let _ = reply.send(Ok(()));
                }
            }
            Command::PresenceWatch { id, room, tx, reply } => {
                let online = self.online;
                let p = self.presence.entry(room.clone()).or_default();
                p.watchers.push((id, tx));
                p.watch_waiters.push(reply);
                if online {
                    p.slots.push_back(Slot::Watch);
                    self.push(&ClientMessage::PresenceSubscribe(RoomRef {
                        room,
                        request_id: None,
                    }));
                }
            }
            Command::RefreshToken(token) => {
                if self.online {
                    self.push(&ClientMessage::RefreshToken(RefreshToken { token }));
                }
            }
            Command::Positions(reply) => {
                let map = self
                    .rooms
                    .iter()
                    .map(|(room, t)| (room.to_string(), t.position()))
                    .collect();
                let _ = reply.send(map);
            }
            Command::Close(reply) => {
                self.closing = true;
                self.close_waiters.push(reply);
            }
        }
    }

    pub(super) fn subscribe(
        &mut self,
        sink: Sink,
        targets: Vec<String>,
        start: &StartAt,
        positions: &HashMap<String, StartAt>,
        reply: oneshot::Sender<Result<(), ClientError>>,
        now: Instant,
    ) {
        // Targets were validated by the handle; sort them into rooms and scopes.
        let mut exact: Vec<Arc<str>> = Vec::new();
        let mut scopes: Vec<String> = Vec::new();
        for t in &targets {
            match RoomPattern::parse(t) {
                Ok(RoomPattern::Exact(_)) => {
                    let taken = self.rooms.get(t.as_str()).is_some_and(|r| !r.via_wildcard);
                    if taken || exact.iter().any(|r| **r == **t) {
                        let _ = reply.send(Err(ClientError::AlreadySubscribed(t.clone())));
                        return;
                    }
                    exact.push(Arc::from(t.as_str()));
                }
                Ok(RoomPattern::Scope(scope)) => {
                    if self.patterns.contains_key(&*scope) || scopes.iter().any(|s| **s == *scope) {
                        let _ = reply.send(Err(ClientError::AlreadySubscribed(t.clone())));
                        return;
                    }
                    scopes.push(scope.to_string());
                }
                Err(e) => {
                    let _ = reply.send(Err(ClientError::InvalidRoom {
                        room: t.clone(),
                        reason: e.to_string(),
                    }));
                    return;
                }
            }
        }
        for room in &exact {
            if let Some(old) = self.rooms.remove(room)
                && old.via_wildcard
            {
                // An exact subscription takes the room over from a wildcard one.
                self.wild_rooms = self.wild_rooms.saturating_sub(1);
            }
            let s = positions.get(&**room).unwrap_or(start);
            let track = RoomTrack::exact(room.clone(), sink.clone(), s, &self.tune, now);
            self.rooms.insert(room.clone(), track);
        }
        for scope in &scopes {
            self.patterns.insert(scope.clone(), sink.id);
        }
        self.sinks.insert(
            sink.id,
            SinkEntry {
                sink: sink.clone(),
                exact,
                scopes,
            },
        );
        self.confirms.push(Confirm {
            sink: sink.id,
            waiting: targets.iter().cloned().collect(),
            reply,
        });
        if self.online {
            self.send_subscribe(&targets);
        }
    }

    /// Sends `subscribe` frames for these targets, each exact room with its position.
    pub(super) fn send_subscribe(&mut self, targets: &[String]) {
        for chunk in targets.chunks(TARGETS_PER_FRAME) {
            let mut positions = HashMap::new();
            let mut epochs = HashMap::new();
            for t in chunk {
                if let Some(track) = self.rooms.get_mut(t.as_str())
                    && !track.via_wildcard
                {
                    track.confirmed = false;
                    track.sent_position = None;
                    if let Some((seq, epoch)) = track.resume_position() {
                        positions.insert(t.clone(), seq);
                        if let Some(e) = epoch {
                            epochs.insert(t.clone(), e.to_owned());
                        }
                        track.sent_position = Some(seq);
                    }
                }
            }
            self.push(&ClientMessage::Subscribe(Subscribe {
                rooms: Some(chunk.to_vec()),
                positions: (!positions.is_empty()).then_some(positions),
                epochs: (!epochs.is_empty()).then_some(epochs),
                ..Default::default()
            }));
        }
    }

    pub(super) fn remove_sink(&mut self, id: SinkId) {
        let Some(entry) = self.sinks.remove(&id) else {
            return;
        };
        // The application's last position is not lost with the subscription.
        self.flush_acks();
        let mut targets: Vec<String> = Vec::new();
        for room in &entry.exact {
            if self.rooms.remove(room).is_some() {
                targets.push(room.to_string());
            }
            self.acked.remove(&**room);
            self.blocked.remove(room);
            self.timed.remove(room);
            self.resubscribe.remove(room);
        }
        for scope in &entry.scopes {
            self.patterns.remove(scope);
            targets.push(format!("{scope}:*"));
        }
        if !entry.scopes.is_empty() {
            let before = self.rooms.len();
            let gone: Vec<Arc<str>> = self
                .rooms
                .iter()
                .filter(|(_, t)| t.via_wildcard && t.sink.id == id)
                .map(|(r, _)| r.clone())
                .collect();
            for r in &gone {
                self.rooms.remove(r);
                self.blocked.remove(r);
                self.timed.remove(r);
                self.acked.remove(&**r);
            }
            self.wild_rooms = self.wild_rooms.saturating_sub(before - self.rooms.len());
        }
        self.confirms.retain(|c| c.sink != id);
        self.refresh_blocked_flag();
        if self.online && !targets.is_empty() {
            for chunk in targets.chunks(TARGETS_PER_FRAME) {
                self.push(&ClientMessage::Unsubscribe(Unsubscribe {
                    room: None,
                    rooms: Some(chunk.to_vec()),
                }));
            }
        }
        drop(entry.sink);
    }

    /// Drops one room of a subscription (refused by the server after a reconnect).
    pub(super) fn drop_room(&mut self, room: &str) {
        let Some(track) = self.rooms.remove(room) else {
            return;
        };
        if let Some(entry) = self.sinks.get_mut(&track.sink.id) {
            entry.exact.retain(|r| &**r != room);
        }
        self.blocked.remove(room);
        self.timed.remove(room);
        self.resubscribe.remove(room);
    }

    pub(super) fn on_dropped(&mut self, d: Dropped) {
        match d {
            Dropped::Sink(id) => self.remove_sink(id),
            Dropped::Ephemeral(id) => {
                if let Some(e) = self.ephemeral.remove(&id)
                    && self.online
                    && !self.ephemeral.values().any(|o| o.pattern == e.pattern)
                {
                    self.push(&ClientMessage::UnsubscribeEphemeral(Unsubscribe {
                        room: Some(e.pattern.to_string()),
                        rooms: None,
                    }));
                }
            }
            Dropped::Presence { id, room } => {
                if let Some(p) = self.presence.get_mut(&room) {
                    p.watchers.retain(|(w, _)| *w != id);
                    if p.is_idle() && p.slots.is_empty() {
                        self.presence.remove(&room);
                    }
                }
            }
        }
    }

    pub(super) fn request(&mut self, req: Outgoing, reply: Reply) {
        let n = self.next_id();
        let id = format!("c{n}");
        let msg = match req {
            Outgoing::Publish(mut p) => {
                p.request_id = Some(id.clone());
                ClientMessage::Publish(p)
            }
            Outgoing::Snapshot(room) => ClientMessage::SnapshotRequest(RoomRef {
                room,
                request_id: Some(id.clone()),
            }),
            Outgoing::Ping => ClientMessage::Ping(zps_protocol::Ping {
                id: Some(serde_json::Value::String(id.clone())),
            }),
            Outgoing::Ephemeral(mut e) => {
                e.request_id = Some(id.clone());
                ClientMessage::PublishEphemeral(e)
            }
        };
        let Some(frame) = to_frame(&msg) else {
            reply.fail(ClientError::Payload("message could not be serialized".into()));
            return;
        };
        if self.online && self.in_flight >= self.opts.max_in_flight {
            self.sweep_abandoned();
        }
        let can_send = self.online && self.queue.is_empty() && self.in_flight < self.opts.max_in_flight;
        if let Reply::Accepted(tx) = reply {
            if can_send {
                self.outbox.push(frame);
            } else if self.queue.len() < self.opts.max_queued_messages {
                self.queue.push_back(Queued { id: None, frame });
            } else {
                let _ = tx.send(Err(ClientError::QueueFull {
                    limit: self.opts.max_queued_messages,
                }));
                return;
            }
            let _ = tx.send(Ok(()));
            return;
        }
        if !can_send && self.queue.len() >= self.opts.max_queued_messages {
            self.sweep_abandoned();
            if self.queue.len() >= self.opts.max_queued_messages {
                reply.fail(ClientError::QueueFull {
                    limit: self.opts.max_queued_messages,
                });
                return;
            }
        }
        if can_send {
            self.outbox.push(frame.clone());
            self.in_flight += 1;
        } else {
            self.queue.push_back(Queued {
                id: Some(id.clone()),
                frame: String::new(),
            });
        }
        self.pending.insert(
            id,
            Pending {
                order: n,
                frame,
                reply,
                sent: can_send,
            },
        );
    }

    /// Forgets requests whose callers gave up (timed out, dropped), queued or in flight,
    /// so an answer the server never sends (a rate-limited request) cannot hold the
    /// in-flight window forever.
    pub(super) fn sweep_abandoned(&mut self) {
        let before = self.pending.len();
        let mut freed = 0;
        self.pending.retain(|_, p| {
            let keep = !p.reply.is_closed();
            if !keep && p.sent {
                freed += 1;
            }
            keep
        });
        self.in_flight = self.in_flight.saturating_sub(freed);
        if before == self.pending.len() {
            return;
        }
        let pending = &mut self.pending;
        self.queue.retain(|q| match &q.id {
            Some(id) => match pending.get(id) {
                Some(p) if p.reply.is_closed() => {
                    pending.remove(id);
                    false
                }
                Some(_) => true,
                None => false,
            },
            None => true,
        });
    }

    /// Sends queued requests while the in-flight window allows.
    pub(super) fn pump(&mut self) {
        while self.online && self.in_flight < self.opts.max_in_flight {
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            match q.id {
                None => self.outbox.push(q.frame),
                Some(id) => match self.pending.get_mut(&id) {
                    Some(p) if !p.reply.is_closed() => {
                        p.sent = true;
                        self.in_flight += 1;
                        self.outbox.push(p.frame.clone());
                    }
                    Some(_) => {
                        self.pending.remove(&id);
                    }
                    None => {}
                },
            }
        }
    }

    pub(super) fn take_pending(&mut self, id: &str) -> Option<Pending> {
        let p = self.pending.remove(id)?;
        if p.sent {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        Some(p)
    }
}
