//! Handling one client message: what each message of the protocol does on a
//! WebSocket connection (the run loop and timers are in `mod.rs`).

use std::sync::Arc;
use std::time::Duration;

use zps_core::{PublishRequest, ReplayQuery, RoomPattern};
use zps_protocol::{Ack, ClientMessage, CloseCode, ErrorCode, Ping, Ready, ServerMessage};

use super::{Conn, Next};
use crate::auth::{AuthAction, TokenError};
use crate::frames::{Outbound, ReplayOut};
use crate::publish_queue::{Pending, PublishQueue};
use crate::session::{Failure, Refusal};
use crate::writer::Disconnected;

impl Conn {
    pub(super) async fn dispatch(&mut self, msg: ClientMessage) -> Result<Next, Disconnected> {
        if !self.initialized {
            return match msg {
                ClientMessage::Init(init) => self.init(init).await,
                _ => {
                    self.refuse(
                        ErrorCode::Unauthorized,
                        "not initialised: the first message must be init",
                    )
                    .await?;
                    Ok(Next::Close(CloseCode::Unauthorized))
                }
            };
        }
        if !matches!(msg, ClientMessage::Publish(_))
            && let Some(queue) = &self.publish_queue
        {
            // Whatever follows a publish sees it stored, and its answer goes out first.
            queue.settled().await;
            self.pipe.drain_queue().await?;
        }
        let result = match msg {
            ClientMessage::Init(_) => Err(Failure::Refused(Refusal::new(
                ErrorCode::AlreadyInitialised,
                "already initialised",
            ))),
            ClientMessage::Subscribe(s) => self.subscribe(s).await,
            ClientMessage::Unsubscribe(u) => self.unsubscribe(u.room, u.rooms, false).await,
            ClientMessage::Publish(p) => {
                let request_id = p.request_id.clone();
                self.publish(p).await.map_err(|f| with_request(f, request_id))
            }
            ClientMessage::Ack(a) => self.ack(a).await,
            ClientMessage::ReplayRequest(r) => {
                let request_id = r.request_id.clone();
                self.replay(r).await.map_err(|f| with_request(f, request_id))
            }
            ClientMessage::PublishEphemeral(e) => {
                let request_id = e.request_id.clone();
                self.publish_ephemeral(e)
                    .await
                    .map_err(|f| with_request(f, request_id))
            }
            ClientMessage::SubscribeEphemeral(s) => self.subscribe_ephemeral(s).await,
            ClientMessage::UnsubscribeEphemeral(u) => self.unsubscribe(u.room, u.rooms, true).await,
            ClientMessage::PresenceEnter(p) => self.presence_enter(p).await,
            ClientMessage::PresenceLeave(r) => self.presence_leave(r).await,
            ClientMessage::PresenceSubscribe(r) => self.presence_subscribe(r).await,
            ClientMessage::PresenceUnsubscribe(r) => self.presence_unsubscribe(r).await,
            ClientMessage::SnapshotRequest(r) => {
                let request_id = r.request_id.clone();
                self.snapshot(r).await.map_err(|f| with_request(f, request_id))
            }
            ClientMessage::RefreshToken(t) => self.refresh_token(&t.token).await,
            ClientMessage::Ping(p) => self
                .reply(ServerMessage::Pong(Ping { id: p.id }))
                .await
                .map_err(Into::into),
        };
        match result {
            Ok(()) => Ok(Next::Continue),
            Err(Failure::Disconnected) => Err(Disconnected),
            Err(Failure::Refused(r)) => {
                self.reply(r.to_message()).await?;
                Ok(Next::Continue)
            }
        }
    }

    async fn init(&mut self, init: zps_protocol::Init) -> Result<Next, Disconnected> {
        if let Err(e) = zps_core::envelope::validate_token("subscriberId", &init.subscriber_id) {
            self.refuse(ErrorCode::Malformed, &e.to_string()).await?;
            return Ok(Next::Close(CloseCode::Unauthorized));
        }
        if let Some(verifier) = &self.session.gw.verifier {
            let verified = match init.token.as_deref() {
                None | Some("") => Err(TokenError::Missing),
                Some(token) => verifier.verify(token).await,
            };
            match verified.and_then(|i| crate::access::check_connection_token(&i).map(|()| i)) {
                Ok(identity) => self.session.identity = identity,
                Err(e) => {
                    metrics::counter!("zps_gateway_auth_failures_total").increment(1);
                    self.refuse(ErrorCode::Unauthorized, &e.to_string()).await?;
                    return Ok(Next::Close(CloseCode::Unauthorized));
                }
            }
        }
        // With token verification the subscriber id is the token's `sub` (or a device of it).
        if let Err(r) = crate::access::bind_subscriber(
            &self.session.gw,
            &self.session.identity,
            Some(&init.subscriber_id),
        ) {
            metrics::counter!("zps_gateway_auth_failures_total").increment(1);
            self.reply(r.to_message()).await?;
            return Ok(Next::Close(CloseCode::Unauthorized));
        }
        if self.session.gw.banned(&init.subscriber_id) {
            self.refuse(
                ErrorCode::Forbidden,
                "this subscriber was disconnected by an operator; retry later",
            )
            .await?;
            return Ok(Next::Close(CloseCode::Kicked));
        }
        self.session.conn.set_owner(crate::conn::Owner {
            subject: self.session.identity.subject.clone(),
            subscriber: Some(init.subscriber_id.clone()),
        });
        self.session.subscriber_id = Some(init.subscriber_id.clone());
        self.initialized = true;
        self.arm_expiry();
        let heartbeat_ms = self.session.gw.config.limits.heartbeat_interval.as_millis() as u64;
        self.reply(ServerMessage::Ready(Ready {
            subscriber_id: init.subscriber_id,
            connection_id: Some(self.session.conn.key.to_string()),
            heartbeat_interval_ms: Some(heartbeat_ms),
            token_expires_at: self.session.identity.expires_at,
        }))
        .await?;
        Ok(Next::Continue)
    }

    async fn refresh_token(&mut self, token: &str) -> Result<(), Failure> {
        let Some(verifier) = &self.session.gw.verifier else {
            return Err(Refusal::new(ErrorCode::Forbidden, "this gateway does not verify tokens").into());
        };
        let identity = verifier
            .verify(token)
            .await
            .and_then(|i| crate::access::check_connection_token(&i).map(|()| i))
            .map_err(|e| Refusal::new(ErrorCode::Unauthorized, e.to_string()))?;
        if identity.subject != self.session.identity.subject {
            return Err(Refusal::new(
                ErrorCode::Unauthorized,
                "a refreshed token must keep the same subject",
            )
            .into());
        }
        let expires_at = identity.expires_at;
        self.session.identity = identity;
        self.expiry_noticed = false;
        self.arm_expiry();
        self.reply(ServerMessage::TokenRefreshed { expires_at }).await?;
        Ok(())
    }

    async fn subscribe(&mut self, s: zps_protocol::Subscribe) -> Result<(), Failure> {
        let targets = targets(s.room, s.rooms)?;
        if let Some(token) = &s.room_token {
            // One token opens one room: it rides on a single-room subscribe.
            let [raw] = targets.as_slice() else {
                return Err(Refusal::new(ErrorCode::Malformed, "roomToken goes with one `room`").into());
            };
            let room = self.session.room(raw)?;
            let (room, grant) = crate::access::verify_room_token(
                &self.session.gw,
                &self.session.identity,
                Some(&room),
                token,
            )
            .await?;
            self.session.room_grants.insert(room, grant);
        }
        for raw in targets {
            let outcome = async {
                let target = self.session.target(&raw)?;
                self.session.authorize(&target, AuthAction::Subscribe).await?;
                let from = s
                    .positions
                    .as_ref()
                    .and_then(|p| p.get(&raw).copied())
                    .or(s.from_sequence);
                let epoch = s
                    .epochs
                    .as_ref()
                    .and_then(|e| e.get(&raw).cloned())
                    .or_else(|| s.epoch.clone());
                self.session
                    .subscribe(
                        &mut self.pipe,
                        target,
                        from,
                        epoch,
                        s.event_types.clone(),
                        s.request_id.clone(),
                    )
                    .await
            }
            .await;
            match outcome {
                Ok(()) => {}
                Err(Failure::Disconnected) => return Err(Failure::Disconnected),
                Err(Failure::Refused(r)) => {
                    let r = r.in_room(&raw).with_request(s.request_id.clone());
                    self.reply(r.to_message()).await?
                }
            }
        }
        Ok(())
    }

    async fn unsubscribe(
        &mut self,
        room: Option<String>,
        rooms: Option<Vec<String>>,
        ephemeral: bool,
    ) -> Result<(), Failure> {
        for raw in targets(room, rooms)? {
            let outcome = match self.session.target(&raw) {
                Ok(target) => {
                    let existed = if ephemeral {
                        self.session.unsubscribe_ephemeral(&target)
                    } else {
                        self.session.unsubscribe(&target)
                    };
                    if existed {
                        Ok(())
                    } else {
                        Err(Refusal::new(
                            ErrorCode::NotSubscribed,
                            format!("not subscribed to {raw}"),
                        ))
                    }
                }
                Err(r) => Err(r),
            };
            match outcome {
                Ok(()) => self.reply(ServerMessage::Unsubscribed { room: raw }).await?,
                Err(r) => self.reply(r.in_room(&raw).to_message()).await?,
            }
        }
        Ok(())
    }

    async fn publish(&mut self, p: zps_protocol::Publish) -> Result<(), Failure> {
        let gw = self.session.gw.clone();
        let room = self.session.room(&p.event.room)?;
        let s = &self.session;
        if !crate::access::may_publish(&gw, &s.identity, Some(&s.room_grants), &room, true) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "client publishing is disabled on this gateway",
            )
            .into());
        }
        self.session
            .authorize(&RoomPattern::Exact(room.clone()), AuthAction::Publish)
            .await?;
        check_payload(p.event.payload.get().len(), gw.config.limits.max_payload_bytes)?;
        let id = p.event.id.unwrap_or_else(zps_core::envelope::generate_id);
        if p.exclude_self {
            self.session.conn.state.lock().skip_id(Arc::from(id.as_str()));
        }
        let mut req = PublishRequest::raw(room, p.event.event_type, p.event.payload).with_id(id);
        req.ttl = p.event.ttl_ms.map(Duration::from_millis);
        req.encrypted = p.event.encrypted;
        req.metadata = crate::attest::stamp(
            p.event.metadata,
            crate::attest::PUBLISHER_KEY,
            crate::attest::attested(&gw, &self.session.identity),
        );
        let engine = &gw.engine;
        let conn = &self.session.conn;
        self.publish_queue
            .get_or_insert_with(|| PublishQueue::start(engine.clone(), conn.clone(), &gw.tasks))
            .submit(Pending {
                request: req,
                request_id: p.request_id,
            })
            .await;
        Ok(())
    }

    async fn ack(&mut self, a: Ack) -> Result<(), Failure> {
        let room = self.session.room(&a.room)?;
        self.session
            .authorize(&RoomPattern::Exact(room.clone()), AuthAction::Ack)
            .await?;
        let subscriber = self.session.subscriber_id.clone().unwrap_or_default();
        let stored = self
            .session
            .gw
            .engine
            .ack(&room, a.sequence, &subscriber)
            .await
            .map_err(|e| Refusal::engine(&e).in_room(room.as_str()))?;
        self.reply(ServerMessage::Ack(Ack {
            room: a.room,
            sequence: stored,
        }))
        .await?;
        Ok(())
    }

    async fn replay(&mut self, r: zps_protocol::ReplayRequest) -> Result<(), Failure> {
        let room = self.session.room(&r.room)?;
        self.session
            .authorize(&RoomPattern::Exact(room.clone()), AuthAction::Replay)
            .await?;
        let max = self.session.gw.config.limits.max_replay_limit;
        let query = ReplayQuery {
            room: room.clone(),
            from_sequence: r.from_sequence,
            to_sequence: r.to_sequence,
            event_types: r.event_types,
            limit: r
                .limit
                .unwrap_or(zps_core::transport::DEFAULT_REPLAY_LIMIT)
                .clamp(1, max),
        };
        let page = self
            .session
            .gw
            .engine
            .replay(query)
            .await
            .map_err(|e| Refusal::engine(&e).in_room(room.as_str()))?;
        let out = ReplayOut {
            kind: "replay",
            room: &r.room,
            events: page.events.iter().map(|e| &**e).collect(),
            has_more: !page.exhausted,
            scanned_to: page.scanned_to,
            request_id: r.request_id.as_deref(),
        };
        let json =
            serde_json::to_string(&out).map_err(|_| Refusal::new(ErrorCode::Internal, "internal error"))?;
        self.pipe.write(Outbound::Ws(json.into())).await?;
        self.pipe.flush().await?;
        Ok(())
    }

    async fn publish_ephemeral(&mut self, e: zps_protocol::PublishEphemeral) -> Result<(), Failure> {
        let gw = self.session.gw.clone();
        let room = self.session.room(&e.room)?;
        let s = &self.session;
        if !crate::access::may_publish(&gw, &s.identity, Some(&s.room_grants), &room, false) {
            return Err(Refusal::new(ErrorCode::Forbidden, "client ephemeral publishing is disabled").into());
        }
        self.session
            .authorize(&RoomPattern::Exact(room.clone()), AuthAction::Publish)
            .await?;
        check_payload(e.payload.get().len(), gw.config.limits.max_payload_bytes)?;
        self.session
            .publish_ephemeral(room, e.event_type, e.payload, e.echo)
            .await?;
        Ok(())
    }

    async fn subscribe_ephemeral(&mut self, s: zps_protocol::SubscribeEphemeral) -> Result<(), Failure> {
        for raw in targets(s.room, s.rooms)? {
            let outcome = async {
                let target = self.session.target(&raw)?;
                self.session.authorize(&target, AuthAction::Subscribe).await?;
                self.session
                    .subscribe_ephemeral(target, s.event_types.clone())
                    .await
            }
            .await;
            match outcome {
                Ok(()) => {
                    self.reply(ServerMessage::SubscribedEphemeral { room: raw })
                        .await?
                }
                Err(r) => self.reply(r.in_room(&raw).to_message()).await?,
            }
        }
        Ok(())
    }

    async fn presence_enter(&mut self, p: zps_protocol::PresenceEnter) -> Result<(), Failure> {
        let room = self.session.room(&p.room)?;
        self.session
            .authorize(&RoomPattern::Exact(room.clone()), AuthAction::Presence)
            .await?;
        let state = self.session.presence_enter(&room, p.metadata).await?;
        self.reply(state).await?;
        Ok(())
    }

    async fn presence_leave(&mut self, r: zps_protocol::RoomRef) -> Result<(), Failure> {
        let room = self.session.room(&r.room)?;
        self.session.presence_leave(&room).await?;
        let state = self.session.presence_state(&room).await?;
        self.reply(state).await?;
        Ok(())
    }

    async fn presence_subscribe(&mut self, r: zps_protocol::RoomRef) -> Result<(), Failure> {
        let room = self.session.room(&r.room)?;
        self.session
            .authorize(&RoomPattern::Exact(room.clone()), AuthAction::Subscribe)
            .await?;
        let state = self.session.watch_presence(&room).await?;
        self.reply(state).await?;
        Ok(())
    }

    async fn presence_unsubscribe(&mut self, r: zps_protocol::RoomRef) -> Result<(), Failure> {
        let room = self.session.room(&r.room)?;
        if !self.session.unwatch_presence(&room) {
            let why = format!("not watching presence of {}", r.room);
            return Err(Refusal::new(ErrorCode::NotSubscribed, why).into());
        }
        self.reply(ServerMessage::Unsubscribed { room: r.room }).await?;
        Ok(())
    }

    async fn snapshot(&mut self, r: zps_protocol::RoomRef) -> Result<(), Failure> {
        let room = self.session.room(&r.room)?;
        self.session
            .authorize(&RoomPattern::Exact(room.clone()), AuthAction::Replay)
            .await?;
        let snapshot = self
            .session
            .gw
            .engine
            .get_snapshot(&room)
            .await
            .map_err(|e| Refusal::engine(&e).in_room(room.as_str()))?;
        self.reply(ServerMessage::Snapshot {
            room: r.room,
            snapshot: snapshot.map(Box::new),
            request_id: r.request_id,
        })
        .await?;
        Ok(())
    }
}

fn with_request(f: Failure, request_id: Option<String>) -> Failure {
    match f {
        Failure::Refused(r) => Failure::Refused(r.with_request(request_id)),
        other => other,
    }
}

fn targets(room: Option<String>, rooms: Option<Vec<String>>) -> Result<Vec<String>, Failure> {
    let mut out: Vec<String> = room.into_iter().chain(rooms.unwrap_or_default()).collect();
    out.dedup();
    if out.is_empty() {
        return Err(Refusal::new(ErrorCode::Malformed, "`room` or `rooms` is required").into());
    }
    Ok(out)
}

fn check_payload(size: usize, limit: usize) -> Result<(), Refusal> {
    if size > limit {
        return Err(Refusal::new(
            ErrorCode::PayloadTooLarge,
            format!("payload too large: {size} bytes (limit {limit})"),
        ));
    }
    Ok(())
}
