//! Server frames and the connection's lifecycle: `ready` restores what the
//! client had (subscriptions from their positions, ephemeral, presence), a
//! disconnect re-queues unanswered requests, and each server message is routed
//! to its room, request or stream.

use super::*;

impl Driver {
    pub(super) fn on_ready(&mut self, ready: &zps_protocol::Ready, conn: &mut Conn, now: Instant) {
        conn.ready = true;
        conn.idle = self.opts.idle_timeout.unwrap_or_else(|| {
            ready
                .heartbeat_interval_ms
                .map_or(Duration::from_secs(60), |ms| Duration::from_millis(ms) * 2)
                + IDLE_SLACK
        });
        self.online = true;
        self.shared.set_state(ConnectionState::Connected);
        tracing::debug!(connection = ?ready.connection_id, "zps-client ready");
        // Durable subscriptions, each exact room from its last delivered event.
        let mut targets: Vec<String> = self
            .rooms
            .values()
            .filter(|t| !t.via_wildcard)
            .map(|t| t.room.to_string())
            .collect();
        targets.extend(self.patterns.keys().map(|s| format!("{s}:*")));
        self.send_subscribe(&targets);
        // Ephemeral subscriptions.
        let mut eph: Vec<String> = self.ephemeral.values().map(|e| e.pattern.to_string()).collect();
        eph.sort();
        eph.dedup();
        for chunk in eph.chunks(TARGETS_PER_FRAME) {
            self.push(&ClientMessage::SubscribeEphemeral(SubscribeEphemeral {
                room: None,
                rooms: Some(chunk.to_vec()),
                event_types: None,
            }));
        }
        // Presence: re-enter, re-watch.
        let rooms: Vec<String> = self.presence.keys().cloned().collect();
        for room in rooms {
            self.send_presence_restore(&room);
        }
        self.resubscribe.clear();
        self.pump();
        if self.shared.has_acks() {
            self.ack_due = Some(now);
        }
    }

    pub(super) fn on_disconnect(&mut self) {
        self.online = false;
        self.outbox.clear();
        for t in self.rooms.values_mut() {
            t.on_disconnect();
        }
        self.timed.clear();
        self.resubscribe.clear();
        for p in self.presence.values_mut() {
            p.slots.clear();
            // The server dropped this connection's presence with it.
            for w in p.leave_waiters.drain(..) {
                let _ = w.send(Ok(()));
            }
        }
        self.presence.retain(|_, p| !p.is_idle());
        // Requests without an answer go out again, in their original order; a publish
        // carries its event id, so a re-send is stored once.
        let mut resend: Vec<(u64, String)> = self
            .pending
            .iter_mut()
            .filter(|(_, p)| p.sent)
            .map(|(id, p)| {
                p.sent = false;
                (p.order, id.clone())
            })
            .collect();
        resend.sort_unstable();
        for (_, id) in resend.into_iter().rev() {
            self.queue.push_front(Queued {
                id: Some(id),
                frame: String::new(),
            });
        }
        self.in_flight = 0;
    }

    /// The upgrade request, offering the compact subprotocol when asked for.
    pub(super) fn upgrade_request(
        &self,
    ) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::HeaderValue;
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if self.opts.encoding == Encoding::Compact && !self.compact_refused {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(zps_protocol::compact::COMPACT_SUBPROTOCOL),
            );
        }
        Ok(request)
    }

    /// A binary frame: a compact event.
    pub(super) fn on_binary(&mut self, bytes: &[u8], conn: &Conn, now: Instant) {
        let decoded = zps_protocol::compact::EventView::decode(bytes).and_then(|v| v.to_envelope());
        match decoded {
            Ok(envelope) if conn.ready => self.on_event(Arc::new(envelope), now),
            Ok(_) => {}
            Err(e) => self
                .shared
                .report(ClientError::Protocol(zps_protocol::bounded(&e.to_string()))),
        }
    }

    pub(super) fn on_text(&mut self, text: &str, conn: &mut Conn, now: Instant) {
        let msg = match parse_server(text) {
            Ok(m) => m,
            Err(e) => {
                self.shared
                    .report(ClientError::Protocol(zps_protocol::bounded(&e.to_string())));
                return;
            }
        };
        if !conn.ready {
            match msg {
                ServerMessage::Ready(r) => self.on_ready(&r, conn, now),
                ServerMessage::Error(e) => {
                    if e.error_code() == Some(ErrorCode::Unauthorized) {
                        conn.auth_error = true;
                    }
                    self.shared.report(ClientError::server(&e));
                }
                _ => {}
            }
            return;
        }
        match msg {
            ServerMessage::Event { data } => self.on_event(Arc::from(data), now),
            ServerMessage::Subscribed(s) => self.on_subscribed(&s, now),
            ServerMessage::Replay(r) => {
                let room = r.room.clone();
                if let Some(t) = self.rooms.get_mut(room.as_str())
                    && t.on_replay(r, now)
                {
                    self.after_room_op(&room);
                }
            }
            ServerMessage::Discontinuity(d) => {
                if let Some(t) = self.rooms.get_mut(d.room.as_str()) {
                    t.on_discontinuity(&d, now);
                    self.after_room_op(&d.room);
                }
            }
            ServerMessage::Published(p) => {
                if let Some(id) = &p.request_id
                    && let Some(pending) = self.take_pending(id)
                    && let Reply::Publish(tx) = pending.reply
                {
                    let _ = tx.send(Ok(Published {
                        id: p.id,
                        room: p.room,
                        sequence: p.sequence,
                        duplicate: p.duplicate,
                    }));
                }
                self.pump();
            }
            ServerMessage::Snapshot {
                snapshot, request_id, ..
            } => {
                if let Some(id) = &request_id
                    && let Some(pending) = self.take_pending(id)
                    && let Reply::Snapshot(tx) = pending.reply
                {
                    let _ = tx.send(Ok(snapshot.map(|s| *s)));
                }
                self.pump();
            }
            ServerMessage::Pong(p) => {
                if let Some(serde_json::Value::String(id)) = &p.id
                    && let Some(pending) = self.take_pending(id)
                    && let Reply::Ping(tx) = pending.reply
                {
                    let _ = tx.send(Ok(()));
                }
                self.pump();
            }
            ServerMessage::Error(e) => self.on_error(&e, now),
            ServerMessage::Ephemeral { data } => self.on_ephemeral(*data),
            ServerMessage::PresenceState { room, members } => self.on_presence_state(room, members),
            ServerMessage::Presence(n) => {
                let event = match n.action.as_str() {
                    "member_added" => PresenceEvent::Joined {
                        room: n.room.clone(),
                        user_id: n.user_id,
                        member: n.member,
                    },
                    "member_removed" => PresenceEvent::Left {
                        room: n.room.clone(),
                        user_id: n.user_id,
                    },
                    _ => return,
                };
                self.route_presence(&n.room, &event);
            }
            ServerMessage::TokenExpiring { expires_at } => {
                tracing::debug!(expires_at, "token expiring; refreshing");
                self.spawn_refresh();
            }
            ServerMessage::Ready(_)
            | ServerMessage::Ack(_)
            | ServerMessage::Unsubscribed { .. }
            | ServerMessage::SubscribedEphemeral { .. }
            | ServerMessage::TokenRefreshed { .. } => {}
        }
    }

    pub(super) fn on_event(&mut self, env: Arc<Envelope>, now: Instant) {
        let key = env.room.as_str();
        if let Some(t) = self.rooms.get_mut(key) {
            if !t.confirmed {
                // From before this connection's `subscribed`: the catch-up re-sends it.
                return;
            }
            t.on_event(env.clone(), now);
            self.after_room_op(env.room.as_str());
            return;
        }
        let Some(&sink_id) = self.patterns.get(env.room.scope()) else {
            return;
        };
        let Some(entry) = self.sinks.get(&sink_id) else {
            return;
        };
        let sink = entry.sink.clone();
        if self.wild_rooms >= self.opts.max_wildcard_rooms {
            self.evict_wildcard_room();
        }
        let room: Arc<str> = Arc::from(key);
        let mut track = RoomTrack::wildcard(room.clone(), sink, &self.tune, now);
        track.on_event(env, now);
        self.rooms.insert(room.clone(), track);
        self.wild_rooms += 1;
        self.after_room_op(&room);
    }

    pub(super) fn evict_wildcard_room(&mut self) {
        let oldest = self
            .rooms
            .iter()
            .filter(|(_, t)| t.via_wildcard)
            .min_by_key(|(_, t)| t.last_seen)
            .map(|(r, _)| r.clone());
        if let Some(r) = oldest {
            self.rooms.remove(&r);
            self.blocked.remove(&r);
            self.timed.remove(&r);
            self.acked.remove(&*r);
            self.wild_rooms = self.wild_rooms.saturating_sub(1);
        }
    }

    pub(super) fn on_subscribed(&mut self, s: &zps_protocol::Subscribed, now: Instant) {
        if let Some(scope) = s.room.strip_suffix(":*") {
            if self.patterns.contains_key(scope) {
                self.confirm(&s.room);
            }
            return;
        }
        let Some(t) = self.rooms.get_mut(s.room.as_str()) else {
            return;
        };
        if t.via_wildcard {
            return;
        }
        t.on_subscribed(s, now);
        self.after_room_op(&s.room);
        self.confirm(&s.room);
    }

    pub(super) fn confirm(&mut self, target: &str) {
        let mut i = 0;
        while i < self.confirms.len() {
            self.confirms[i].waiting.remove(target);
            if self.confirms[i].waiting.is_empty() {
                let c = self.confirms.swap_remove(i);
                let _ = c.reply.send(Ok(()));
            } else {
                i += 1;
            }
        }
    }

    pub(super) fn on_error(&mut self, e: &zps_protocol::ErrorMessage, now: Instant) {
        let err = ClientError::server(e);
        self.shared.report(err.clone());
        if let Some(rid) = &e.request_id {
            if let Some(p) = self.take_pending(rid) {
                p.reply.fail(err);
                self.pump();
                return;
            }
            if let Some(room) = &e.room
                && let Some(t) = self.rooms.get_mut(room.as_str())
                && t.on_replay_error(rid, now)
            {
                self.after_room_op(room);
                return;
            }
        }
        let Some(room) = e.room.as_deref() else {
            return;
        };
        let code = e.error_code();
        let refused = matches!(
            code,
            Some(
                ErrorCode::AccessDenied
                    | ErrorCode::InvalidRoom
                    | ErrorCode::TooManySubscriptions
                    | ErrorCode::Forbidden
                    | ErrorCode::Unauthorized
                    | ErrorCode::Malformed
            )
        );
        let transient = matches!(code, Some(ErrorCode::Internal | ErrorCode::Unavailable));
        // A first subscribe that the server refused fails as a whole.
        if let Some(i) = self.confirms.iter().position(|c| c.waiting.contains(room))
            && (refused || transient)
        {
            let c = self.confirms.swap_remove(i);
            self.remove_sink(c.sink);
            let _ = c.reply.send(Err(err));
            return;
        }
        let key: Arc<str> = Arc::from(room);
        let subscribed = self.rooms.get(room).is_some_and(|t| !t.via_wildcard)
            || room
                .strip_suffix(":*")
                .is_some_and(|s| self.patterns.contains_key(s));
        if subscribed {
            let unconfirmed = self.rooms.get(room).is_some_and(|t| !t.confirmed);
            if transient {
                // Storage trouble while (re)subscribing or catching up: try again shortly.
                self.resubscribe.insert(key, now + RESUBSCRIBE_DELAY);
                return;
            }
            if refused && (unconfirmed || room.ends_with(":*")) {
                self.refuse_target(room, err, now);
                return;
            }
        }
        if let Some(p) = self.presence.get_mut(room)
            && (refused || transient)
            && let Some(slot) = p.slots.pop_front()
        {
            match slot {
                Slot::Enter => {
                    p.entered = None;
                    for w in p.enter_waiters.drain(..) {
                        let _ = w.send(Err(err.clone()));
                    }
                }
                Slot::Leave => {
                    for w in p.leave_waiters.drain(..) {
                        let _ = w.send(Err(err.clone()));
                    }
                }
                Slot::Watch => {
                    for w in p.watch_waiters.drain(..) {
                        let _ = w.send(Err(err.clone()));
                    }
                }
            }
        }
    }

    /// A resubscribe was refused: tell the subscription, stop tracking the target.
    pub(super) fn refuse_target(&mut self, target: &str, error: ClientError, now: Instant) {
        let notice = ClientEvent::Refused {
            room: target.to_owned(),
            error,
        };
        if let Some(scope) = target.strip_suffix(":*") {
            if let Some(id) = self.patterns.remove(scope) {
                if let Some(entry) = self.sinks.get_mut(&id) {
                    entry.scopes.retain(|s| s != scope);
                    let _ = entry.sink.tx.try_send(notice);
                }
                let gone: Vec<Arc<str>> = self
                    .rooms
                    .iter()
                    .filter(|(r, t)| t.via_wildcard && t.sink.id == id && r.split(':').next() == Some(scope))
                    .map(|(r, _)| r.clone())
                    .collect();
                for r in gone {
                    self.drop_room(&r);
                    self.acked.remove(&*r);
                    self.wild_rooms = self.wild_rooms.saturating_sub(1);
                }
            }
            return;
        }
        if let Some(t) = self.rooms.get_mut(target) {
            t.push_notice(notice, now);
        }
        self.drop_room(target);
    }

    pub(super) fn on_ephemeral(&mut self, data: zps_protocol::EphemeralData) {
        let Ok(room) = zps_model::Room::parse(&data.room) else {
            return;
        };
        let msg = EphemeralMessage {
            event_type: data.event_type,
            room: data.room,
            payload: data.payload,
            emitted_at: data.emitted_at,
            metadata: data.metadata,
        };
        for e in self.ephemeral.values() {
            let wanted = e.types.as_ref().is_none_or(|t| t.contains(&msg.event_type));
            if wanted && e.pattern.matches(&room) && e.tx.try_send(msg.clone()).is_err() {
                tracing::debug!(room = %msg.room, "ephemeral consumer full; event dropped");
            }
        }
    }

    pub(super) fn on_presence_state(&mut self, room: String, members: Vec<PresenceMember>) {
        if let Some(p) = self.presence.get_mut(&room) {
            match p.slots.pop_front() {
                Some(Slot::Enter) => {
                    for w in p.enter_waiters.drain(..) {
                        let _ = w.send(Ok(members.clone()));
                    }
                }
                Some(Slot::Leave) => {
                    for w in p.leave_waiters.drain(..) {
                        let _ = w.send(Ok(()));
                    }
                }
                Some(Slot::Watch) => {
                    for w in p.watch_waiters.drain(..) {
                        let _ = w.send(Ok(members.clone()));
                    }
                }
                None => {}
            }
        }
        let event = PresenceEvent::Members {
            room: room.clone(),
            members,
        };
        self.route_presence(&room, &event);
        if let Some(p) = self.presence.get(&room)
            && p.is_idle()
            && p.slots.is_empty()
        {
            self.presence.remove(&room);
        }
    }

    pub(super) fn route_presence(&mut self, room: &str, event: &PresenceEvent) {
        if let Some(p) = self.presence.get_mut(room) {
            p.watchers.retain(|(_, tx)| !tx.is_closed());
            for (_, tx) in &p.watchers {
                if tx.try_send(event.clone()).is_err() {
                    tracing::debug!(room, "presence consumer full; change dropped");
                }
            }
        }
    }

    pub(super) fn send_presence_restore(&mut self, room: &str) {
        let Some(p) = self.presence.get_mut(room) else {
            return;
        };
        let msg = if let Some(metadata) = &p.entered {
            p.slots.push_back(Slot::Enter);
            ClientMessage::PresenceEnter(PresenceEnter {
                room: room.to_owned(),
                metadata: metadata.clone(),
            })
        } else if !p.watchers.is_empty() || !p.watch_waiters.is_empty() {
            p.slots.push_back(Slot::Watch);
            ClientMessage::PresenceSubscribe(RoomRef {
                room: room.to_owned(),
                request_id: None,
            })
        } else {
            return;
        };
        self.push(&msg);
        // Entering also watches: a pending watch is answered by the same state.
        if let Some(p) = self.presence.get_mut(room)
            && p.entered.is_some()
            && !p.watch_waiters.is_empty()
        {
            p.slots.push_back(Slot::Watch);
            self.push(&ClientMessage::PresenceSubscribe(RoomRef {
                room: room.to_owned(),
                request_id: None,
            }));
        }
    }

    pub(super) fn spawn_refresh(&self) {
        let Some(provider) = self.opts.token_provider.clone() else {
            return;
        };
        let weak = self.cmd_weak.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            match provider().await {
                Ok(token) => {
                    if let Some(tx) = weak.upgrade() {
                        let _ = tx.send(Command::RefreshToken(token)).await;
                    }
                }
                Err(e) => shared.report(ClientError::Token(e)),
            }
        });
    }
}
