//! What a connection can do, independent of WebSocket or SSE: authorize,
//! subscribe (history first, then live, without gap or duplicate), presence,
//! ephemeral events, and cleanup.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use zps_core::{EphemeralRequest, ListenerGuard, Metadata, Room, RoomError, RoomPattern, check_continuity};
use zps_protocol::{ErrorCode, ServerMessage, Subscribed};

use crate::auth::{AuthAction, Identity};
use crate::conn::{ConnShared, RoomSub, notice_frame};
use crate::frames::EventFrame;
use crate::frames::control;
use crate::gateway_state::GatewayState;
use crate::room_hub::HubKind;
use crate::writer::{ConnWriter, Disconnected, Writer};
use zps_core::room_sync::Delivery;

/// History page size for catch-up.
const CATCH_UP_PAGE: usize = 500;

/// A refused request: its code and message go back to the client.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) room: Option<String>,
    pub(crate) request_id: Option<String>,
}

/// The wire code of an engine error (the engine's categories are coarser).
pub(crate) fn wire_code(e: &zps_core::Error) -> ErrorCode {
    use zps_core::ErrorCode as E;
    match e.code() {
        E::InvalidRoom | E::InvalidInput => ErrorCode::InvalidRoom,
        E::PayloadTooLarge => ErrorCode::PayloadTooLarge,
        E::Rejected => ErrorCode::Forbidden,
        E::Unsupported => ErrorCode::Unsupported,
        E::Overloaded | E::Unavailable => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            room: None,
            request_id: None,
        }
    }

    pub(crate) fn in_room(mut self, room: &str) -> Self {
        self.room = Some(room.to_owned());
        self
    }

    pub(crate) fn engine(e: &zps_core::Error) -> Self {
        let code = wire_code(e);
        let message = match code {
            // Storage details stay on the server.
            ErrorCode::Internal => "internal error".to_owned(),
            ErrorCode::Unavailable => "storage temporarily unavailable".to_owned(),
            _ => e.to_string(),
        };
        if matches!(code, ErrorCode::Internal | ErrorCode::Unavailable) {
            tracing::warn!(error = %e, "request failed");
        }
        Self::new(code, message)
    }

    pub(crate) fn with_request(mut self, request_id: Option<String>) -> Self {
        if request_id.is_some() {
            self.request_id = request_id;
        }
        self
    }

    pub(crate) fn to_message(&self) -> ServerMessage {
        let mut m = zps_protocol::ErrorMessage::new(self.code, &self.message);
        m.request_id = self.request_id.clone();
        m.room = self.room.clone();
        metrics::counter!("zps_gateway_errors_total", "code" => self.code.as_str()).increment(1);
        ServerMessage::Error(m)
    }
}

/// Why a request did not complete.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Refused: answer with an error and carry on.
    Refused(Refusal),
    /// The peer is gone: stop.
    Disconnected,
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        Self::Refused(r)
    }
}

impl From<Disconnected> for Failure {
    fn from(_: Disconnected) -> Self {
        Self::Disconnected
    }
}

fn room_refusal(e: &RoomError, raw: &str) -> Refusal {
    Refusal::new(ErrorCode::InvalidRoom, e.to_string()).in_room(&zps_protocol::bounded(raw))
}

/// Parses a room or pattern and applies the scope allow-list (4422).
pub(crate) fn parse_target(gw: &GatewayState, raw: &str) -> Result<RoomPattern, Refusal> {
    let target = RoomPattern::parse(raw).map_err(|e| room_refusal(&e, raw))?;
    if target.scope() == crate::cluster::RESERVED_SCOPE {
        return Err(Refusal::new(ErrorCode::InvalidRoom, "reserved scope").in_room(raw));
    }
    if let Some(scopes) = &gw.config.auth.scopes
        && !scopes.iter().any(|s| s == target.scope())
    {
        return Err(Refusal::new(
            ErrorCode::InvalidRoom,
            format!("scope not allowed: {}", target.scope()),
        )
        .in_room(raw));
    }
    Ok(target)
}

/// A `presence_state` message as the HTTP API answers it (without `type`).
fn state_json(msg: &ServerMessage) -> serde_json::Value {
    let mut v = serde_json::to_value(msg).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("type");
    }
    v
}

/// One connection's session.
pub(crate) struct Session {
    pub(crate) gw: Arc<GatewayState>,
    pub(crate) conn: Arc<ConnShared>,
    pub(crate) subscriber_id: Option<String>,
    pub(crate) identity: Identity,
    pub(crate) entered: HashSet<Room>,
    /// Rooms opened by room tokens.
    pub(crate) room_grants: crate::access::RoomGrants,
    guards: HashMap<RoomPattern, ListenerGuard>,
}

impl Session {
    pub(crate) fn new(gw: Arc<GatewayState>, conn: Arc<ConnShared>) -> Self {
        Self {
            gw,
            conn,
            subscriber_id: None,
            identity: Identity::default(),
            entered: HashSet::new(),
            room_grants: crate::access::RoomGrants::new(),
            guards: HashMap::new(),
        }
    }

    /// The presence identity: the token's `sub`, else the subscriber id.
    pub(crate) fn user_id(&self) -> String {
        self.identity
            .subject
            .clone()
            .or_else(|| self.subscriber_id.clone())
            .unwrap_or_else(|| self.conn.key.to_string())
    }

    /// Parses a room or pattern and applies the scope allow-list (4422).
    pub(crate) fn target(&self, raw: &str) -> Result<RoomPattern, Refusal> {
        parse_target(&self.gw, raw)
    }

    /// Parses an exact room (no wildcard) and applies the scope allow-list.
    pub(crate) fn room(&self, raw: &str) -> Result<Room, Refusal> {
        match self.target(raw)? {
            RoomPattern::Exact(room) => Ok(room),
            RoomPattern::Scope(_) => Err(room_refusal(&RoomError::WildcardNotAllowed(raw.to_owned()), raw)),
        }
    }

    /// The rooms claim and the authorize hook (4408).
    pub(crate) async fn authorize(&self, target: &RoomPattern, action: AuthAction) -> Result<(), Refusal> {
        crate::access::authorize(
            &self.gw,
            &self.identity,
            self.subscriber_id.as_deref(),
            Some(&self.room_grants),
            target,
            action,
        )
        .await
    }

    fn check_capacity(&self, target: &RoomPattern) -> Result<(), Refusal> {
        let st = self.conn.state.lock();
        let already = match target {
            RoomPattern::Exact(r) => st.exact.contains_key(r),
            RoomPattern::Scope(s) => st.wild.contains_key(s),
        };
        if !already && st.subscription_count() >= self.gw.config.limits.max_subscriptions {
            return Err(Refusal::new(
                ErrorCode::TooManySubscriptions,
                format!(
                    "too many subscriptions (max {})",
                    self.gw.config.limits.max_subscriptions
                ),
            )
            .in_room(&target.to_string()));
        }
        Ok(())
    }

    /// Subscribes to a room (history from `from` first) or a `scope:*` pattern (live).
    pub(crate) async fn subscribe<W: Writer>(
        &mut self,
        pipe: &mut ConnWriter<W>,
        target: RoomPattern,
        from: Option<u64>,
        epoch: Option<String>,
        types: Option<Vec<String>>,
        request_id: Option<String>,
    ) -> Result<(), Failure> {
        self.check_capacity(&target)?;
        self.unsubscribe(&target);
        let types: Option<Arc<[String]>> = types.map(Arc::from);
        let room = match &target {
            RoomPattern::Scope(scope) => {
                self.conn.state.lock().wild.insert(scope.clone(), types);
                if let Err(e) = self.gw.hubs.join(HubKind::Events, &target, &self.conn).await {
                    self.conn.state.lock().wild.remove(scope);
                    return Err(Refusal::engine(&e).into());
                }
                self.guards
                    .insert(target.clone(), self.gw.engine.track_listener(target.clone()));
                let msg = ServerMessage::Subscribed(Subscribed {
                    room: target.to_string(),
                    request_id,
                    ..Default::default()
                });
                pipe.write(control(self.conn.kind, &msg)).await?;
                pipe.flush().await?;
                return Ok(());
            }
            RoomPattern::Exact(room) => room.clone(),
        };
        // Joined before the start is known, so nothing published meanwhile is missed:
        // the sync holds live frames until it is positioned.
        self.conn
            .state
            .lock()
            .exact
            .insert(room.clone(), RoomSub::starting(types));
        let started = async {
            let hub_last = self.gw.hubs.join(HubKind::Events, &target, &self.conn).await?;
            let info = self.gw.engine.room_info(&room).await?;
            let start = match (from, &self.subscriber_id) {
                (Some(f), _) => Some(f),
                (None, Some(id)) => self.gw.engine.cursor(&room, id).await?,
                (None, None) => None,
            };
            Ok::<_, zps_core::Error>((hub_last, info, start))
        }
        .await;
        let (hub_last, info, start) = match started {
            Ok(v) => v,
            Err(e) => {
                self.conn.state.lock().exact.remove(&room);
                self.gw.hubs.leave(HubKind::Events, &target, self.conn.id);
                return Err(Refusal::engine(&e).in_room(room.as_str()).into());
            }
        };
        self.guards
            .insert(target.clone(), self.gw.engine.track_listener(target.clone()));
        let (after, reason, recovered) = match start {
            Some(f) => {
                let (after, reason) = check_continuity(f, epoch.as_deref(), &info);
                (after, reason, Some(reason.is_none()))
            }
            // A browser does not get a room's whole history by default: live only.
            None => (info.last_sequence, None, None),
        };
        let msg = ServerMessage::Subscribed(Subscribed {
            room: room.to_string(),
            epoch: Some(info.epoch.clone()),
            last_sequence: Some(info.last_sequence),
            recovered,
            reason: reason.map(|r| r.as_str().to_owned()),
            earliest_sequence: reason.map(|_| info.earliest_sequence),
            start_after: Some(after),
            request_id,
        });
        pipe.write(control(self.conn.kind, &msg)).await?;
        if let Some(sub) = self.conn.state.lock().exact.get_mut(&room) {
            sub.sync.start_after(after);
            if start.is_some() || after < hub_last {
                // History after the start, at least up to what the hub has seen.
                sub.sync.expect_through(hub_last);
                sub.sync.catch_up();
            }
        }
        match self.catch_up(pipe, &room).await {
            Err(Failure::Refused(r)) => {
                // A half-switched room would stay silent: drop it so the client resubscribes.
                self.unsubscribe(&target);
                Err(Failure::Refused(r))
            }
            other => other,
        }
    }

    /// Makes the history reads `room`'s sync asks for and writes what they
    /// deliver, until it asks for none (it is live). Frames are written here,
    /// directly, before the queue the hubs fill is drained, so they always
    /// precede whatever the hub handed out after them.
    pub(crate) async fn catch_up<W: Writer>(
        &mut self,
        pipe: &mut ConnWriter<W>,
        room: &Room,
    ) -> Result<(), Failure> {
        let types: Option<Vec<String>> = {
            let st = self.conn.state.lock();
            match st.exact.get(room) {
                Some(sub) => sub.types.as_ref().map(|t| t.to_vec()),
                None => return Ok(()),
            }
        };
        loop {
            let (fetch, ready) = {
                let mut st = self.conn.state.lock();
                let Some(sub) = st.exact.get_mut(room) else {
                    return Ok(());
                };
                let fetch = sub.sync.poll_fetch(std::time::Instant::now());
                (fetch, st.take_ready(room))
            };
            self.write_deliveries(pipe, room, ready).await?;
            let Some(fetch) = fetch else {
                return pipe.drain_queue().await.map_err(Into::into);
            };
            let page = self
                .gw
                .replay
                .page(room, fetch.after, CATCH_UP_PAGE, types.clone(), fetch.reread)
                .await
                .map_err(|e| {
                    tracing::warn!(room = %room, error = %e, "catch-up read failed");
                    Refusal::new(ErrorCode::Unavailable, "history temporarily unavailable")
                        .in_room(room.as_str())
                })?;
            let ready = {
                let mut st = self.conn.state.lock();
                let Some(sub) = st.exact.get_mut(room) else {
                    return Ok(());
                };
                let answered = sub.sync.on_page(
                    fetch.id,
                    zps_core::room_sync::Page {
                        items: page.frames.clone(),
                        scanned_to: page.scanned_to,
                        has_more: !page.exhausted,
                    },
                );
                if !answered {
                    // A discontinuity restarted the room while we were reading.
                    return Ok(());
                }
                st.take_ready(room)
            };
            self.write_deliveries(pipe, room, ready).await?;
            pipe.drain_queue().await?;
        }
    }

    /// Writes what a room's sync handed out, in order.
    async fn write_deliveries<W: Writer>(
        &self,
        pipe: &mut ConnWriter<W>,
        room: &Room,
        ready: Vec<Delivery<Arc<EventFrame>>>,
    ) -> Result<(), Failure> {
        let kind = self.conn.kind;
        for d in ready {
            let out = match d {
                Delivery::Event(f, _) => f.encoded(kind),
                Delivery::Notice(n) => {
                    // A hole history never filled: the notice names the room's epoch.
                    let epoch = match &n.epoch {
                        Some(_) => String::new(),
                        None => self
                            .gw
                            .engine
                            .room_info(room)
                            .await
                            .map(|i| i.epoch)
                            .unwrap_or_default(),
                    };
                    notice_frame(kind, room, &n, &epoch)
                }
            };
            pipe.write(out).await?;
        }
        Ok(())
    }

    /// Re-reads history for rooms whose live stream showed a hole. A room whose
    /// history cannot be read is dropped (error with its name) so the client resubscribes.
    pub(crate) async fn resync<W: Writer>(&mut self, pipe: &mut ConnWriter<W>) -> Result<(), Failure> {
        for room in self.conn.take_resync() {
            match self.catch_up(pipe, &room).await {
                Ok(()) => {}
                Err(Failure::Disconnected) => return Err(Failure::Disconnected),
                Err(Failure::Refused(r)) => {
                    self.unsubscribe(&RoomPattern::Exact(room.clone()));
                    let msg = r.in_room(room.as_str()).to_message();
                    pipe.write(control(self.conn.kind, &msg)).await?;
                    pipe.flush().await?;
                }
            }
        }
        Ok(())
    }

    /// Does what the HTTP API asked of this connection and answers it.
    pub(crate) async fn run_command(&mut self, command: crate::conn::Command) {
        use crate::conn::Command;
        match command {
            Command::PresenceEnter {
                room,
                metadata,
                reply,
            } => {
                let result = match self
                    .authorize(&RoomPattern::Exact(room.clone()), AuthAction::Subscribe)
                    .await
                {
                    Ok(()) => self
                        .presence_enter(&room, metadata)
                        .await
                        .map(|state| state_json(&state)),
                    Err(r) => Err(r),
                };
                let _ = reply.send(result.map_err(Into::into));
            }
            Command::PresenceLeave { room, reply } => {
                let result = self.presence_leave(&room).await.map(|()| serde_json::Value::Null);
                let _ = reply.send(result.map_err(Into::into));
            }
            // The connection task handles kicks itself (it owns the socket).
            Command::Kick { .. } => {}
        }
    }

    /// Stops watching a room's presence.
    pub(crate) fn unwatch_presence(&mut self, room: &Room) -> bool {
        let existed = self.conn.state.lock().presence.remove(room);
        if existed {
            self.gw
                .hubs
                .leave(HubKind::Presence, &RoomPattern::Exact(room.clone()), self.conn.id);
        }
        existed
    }

    /// Removes a room or pattern subscription; returns whether it existed.
    pub(crate) fn unsubscribe(&mut self, target: &RoomPattern) -> bool {
        let existed = {
            let mut st = self.conn.state.lock();
            match target {
                RoomPattern::Exact(room) => st.exact.remove(room).is_some(),
                RoomPattern::Scope(scope) => st.wild.remove(scope).is_some(),
            }
        };
        if existed {
            self.gw.hubs.leave(HubKind::Events, target, self.conn.id);
            self.guards.remove(target);
        }
        existed
    }

    /// Ephemeral events of a room or pattern.
    pub(crate) async fn subscribe_ephemeral(
        &mut self,
        target: RoomPattern,
        types: Option<Vec<String>>,
    ) -> Result<(), Refusal> {
        {
            let st = self.conn.state.lock();
            if !st.ephemeral.contains_key(&target)
                && st.subscription_count() >= self.gw.config.limits.max_subscriptions
            {
                return Err(Refusal::new(
                    ErrorCode::TooManySubscriptions,
                    "too many subscriptions",
                ));
            }
        }
        let fresh = self
            .conn
            .state
            .lock()
            .ephemeral
            .insert(target.clone(), types.map(Arc::from))
            .is_none();
        if fresh && let Err(e) = self.gw.hubs.join(HubKind::Ephemeral, &target, &self.conn).await {
            self.conn.state.lock().ephemeral.remove(&target);
            return Err(Refusal::engine(&e));
        }
        Ok(())
    }

    /// Stops ephemeral events of a room or pattern.
    pub(crate) fn unsubscribe_ephemeral(&mut self, target: &RoomPattern) -> bool {
        let existed = self.conn.state.lock().ephemeral.remove(target).is_some();
        if existed {
            self.gw.hubs.leave(HubKind::Ephemeral, target, self.conn.id);
        }
        existed
    }

    /// Fans out an ephemeral event from this connection.
    pub(crate) async fn publish_ephemeral(
        &self,
        room: Room,
        event_type: String,
        payload: Box<serde_json::value::RawValue>,
        echo: bool,
    ) -> Result<(), Refusal> {
        let mut req = EphemeralRequest {
            room,
            event_type,
            payload,
            metadata: None,
            origin: None,
        };
        if !echo {
            req.origin = Some(self.conn.key.to_string());
        }
        self.gw
            .engine
            .publish_ephemeral(req)
            .await
            .map_err(|e| Refusal::engine(&e))
    }

    /// The room's current members, as a `presence_state` answer.
    pub(crate) async fn presence_state(&self, room: &Room) -> Result<ServerMessage, Refusal> {
        let members = self
            .gw
            .engine
            .presence(room.clone())
            .members()
            .await
            .map_err(|e| Refusal::engine(&e))?;
        Ok(ServerMessage::PresenceState {
            room: room.to_string(),
            members,
        })
    }

    /// Starts receiving a room's presence changes; answers with the member list.
    pub(crate) async fn watch_presence(&mut self, room: &Room) -> Result<ServerMessage, Refusal> {
        let target = RoomPattern::Exact(room.clone());
        let fresh = {
            let mut st = self.conn.state.lock();
            if !st.presence.contains(room)
                && st.subscription_count() >= self.gw.config.limits.max_subscriptions
            {
                return Err(Refusal::new(
                    ErrorCode::TooManySubscriptions,
                    "too many subscriptions",
                ));
            }
            st.presence.insert(room.clone())
        };
        if fresh && let Err(e) = self.gw.hubs.join(HubKind::Presence, &target, &self.conn).await {
            self.conn.state.lock().presence.remove(room);
            return Err(Refusal::engine(&e));
        }
        self.presence_state(room).await
    }

    /// Enters a room's presence (and watches it).
    pub(crate) async fn presence_enter(
        &mut self,
        room: &Room,
        metadata: Option<Metadata>,
    ) -> Result<ServerMessage, Refusal> {
        self.watch_presence(room).await?;
        let metadata = crate::attest::stamp(
            metadata,
            crate::attest::VERIFIED_KEY,
            crate::attest::attested(&self.gw, &self.identity),
        );
        self.gw
            .engine
            .presence(room.clone())
            .enter(&self.user_id(), metadata, &self.conn.key)
            .await
            .map_err(|e| Refusal::engine(&e))?;
        self.entered.insert(room.clone());
        // The list now includes this user.
        self.presence_state(room).await
    }

    /// Leaves a room's presence.
    pub(crate) async fn presence_leave(&mut self, room: &Room) -> Result<(), Refusal> {
        if self.entered.remove(room) {
            self.gw
                .engine
                .presence(room.clone())
                .leave(&self.user_id(), &self.conn.key)
                .await
                .map_err(|e| Refusal::engine(&e))?;
        }
        Ok(())
    }

    /// Heartbeat for every entered room (keeps this connection present).
    pub(crate) async fn presence_refresh(&self) {
        let user = self.user_id();
        for room in &self.entered {
            // Only renews the TTL (metadata is kept); a re-join after expiry is announced.
            if let Err(e) = self
                .gw
                .engine
                .presence(room.clone())
                .refresh(&user, &self.conn.key)
                .await
            {
                tracing::debug!(room = %room, error = %e, "presence refresh failed");
            }
        }
    }

    /// Leaves every hub and presence; called once when the connection ends.
    pub(crate) async fn cleanup(&mut self) {
        let (exact, wild, ephemeral, presence) = {
            let mut st = self.conn.state.lock();
            (
                std::mem::take(&mut st.exact),
                std::mem::take(&mut st.wild),
                std::mem::take(&mut st.ephemeral),
                std::mem::take(&mut st.presence),
            )
        };
        let hubs = &self.gw.hubs;
        for room in exact.into_keys() {
            hubs.leave(HubKind::Events, &RoomPattern::Exact(room), self.conn.id);
        }
        for scope in wild.into_keys() {
            hubs.leave(HubKind::Events, &RoomPattern::Scope(scope), self.conn.id);
        }
        for pattern in ephemeral.into_keys() {
            hubs.leave(HubKind::Ephemeral, &pattern, self.conn.id);
        }
        for room in presence {
            hubs.leave(HubKind::Presence, &RoomPattern::Exact(room), self.conn.id);
        }
        let user = self.user_id();
        for room in std::mem::take(&mut self.entered) {
            if let Err(e) = self
                .gw
                .engine
                .presence(room.clone())
                .leave(&user, &self.conn.key)
                .await
            {
                tracing::debug!(room = %room, error = %e, "presence leave on close failed");
            }
        }
        self.guards.clear();
    }
}
