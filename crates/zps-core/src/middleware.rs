//! The middleware onion around every lifecycle action.
//!
//! A middleware receives the [`Context`] by value and a [`Next`]; it may change
//! the context (e.g. add metadata to the event being published), refuse with
//! an error, or observe before and after `next.run(ctx).await`. Order:
//! `operation -> m1 -> m2 -> core -> m2 -> m1`.
//!
//! # Reads of stored events
//!
//! One rule: **every stored event the engine hands to someone passes the
//! [`Action::Deliver`] action once**, with [`Context::envelope`] set — live
//! events and the catch-up of a subscription, every event of a
//! [`Realtime::replay`](crate::Realtime::replay) page (after the page's
//! [`Action::Replay`] read) and of a [`Realtime::catch_up`](crate::Realtime::catch_up)
//! stream (after its [`Action::CatchUp`] start). The gateway's history pages,
//! replay requests, catch-up on subscribe and SSE resume all read through
//! these, so a redaction middleware on `Deliver` covers them. A `Deliver`
//! middleware may rewrite the envelope, or withhold the event by clearing
//! `ctx.envelope` or returning an error; a withheld event is simply absent —
//! a page's `scanned_to` still covers it, so readers move past it without a
//! gap or a discontinuity. Replayed pages are shared by many readers, so their
//! `Deliver` context has no subscriber id.
//!
//! Dead letters are an operator surface: each read ([`Dlq::list`](crate::Dlq::list),
//! `list_after`, every page of `Dlq::replay`) runs [`Action::DlqReplay`] once
//! (refuse it to forbid the read); entries do not pass `Deliver`. Snapshots
//! carry folded state, not events: [`Action::GetSnapshot`] guards the read.
//!
//! ```
//! use zps_core::middleware::{from_fn, Action};
//! let add_trace = from_fn(|mut ctx, next| async move {
//!     if ctx.action == Action::Publish {
//!         if let Some(event) = ctx.event.as_mut() {
//!             event.metadata.get_or_insert_with(Default::default)
//!                 .insert("traceId".into(), "t-1".into());
//!         }
//!     }
//!     next.run(ctx).await
//! });
//! # let _ = add_trace;
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::envelope::{Envelope, EphemeralEvent, NewEvent};
use crate::error::{Error, Result};
use crate::room::{Room, RoomPattern};

/// Every action the engine routes through middleware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Storing an event.
    Publish,
    /// Opening a subscription.
    Subscribe,
    /// Handing a stored event to anyone: live, catch-up, replay pages (see the module docs).
    Deliver,
    /// Reading one page of history (each event then passes `Deliver`).
    Replay,
    /// Starting a paged catch-up.
    CatchUp,
    /// Moving a cursor.
    Ack,
    /// Storing a snapshot.
    Snapshot,
    /// Reading a snapshot.
    GetSnapshot,
    /// Fanning out an ephemeral event.
    EphemeralPublish,
    /// Handing an ephemeral event to a subscription.
    EphemeralDeliver,
    /// A presence join.
    PresenceEnter,
    /// A presence leave.
    PresenceLeave,
    /// Parking a failed event.
    DlqWrite,
    /// Reading the dead-letter queue (once per page read).
    DlqReplay,
    /// Removing dead letters (`ctx.count` = entries removed, once it ran).
    DlqRemove,
    /// Listing the rooms that hold dead letters (`ctx.room` unset; the name
    /// prefix in `ctx.extensions["prefix"]`).
    DlqRooms,
    /// Reading a room's head and epoch (room info, room lists).
    RoomInfo,
    /// Reading a subscriber's cursor.
    GetCursor,
    /// Reading a room's presence members.
    PresenceMembers,
    /// Deleting expired events (`ctx.count` = events removed, once it ran).
    Prune,
    /// Disconnecting a client by operator request (the gateway's kick; the
    /// target in `ctx.subscriber_id` or `ctx.extensions["connection"]`).
    Kick,
    /// Minting a client token for someone else (the gateway's token route).
    MintToken,
    /// Shutting the engine down.
    Close,
}

impl Action {
    /// The seed's camelCase name (`publish`, `catchUp`, `dlqWrite`, ...); also the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Deliver => "deliver",
            Self::Replay => "replay",
            Self::CatchUp => "catchUp",
            Self::Ack => "ack",
            Self::Snapshot => "snapshot",
            Self::GetSnapshot => "getSnapshot",
            Self::EphemeralPublish => "ephemeralPublish",
            Self::EphemeralDeliver => "ephemeralDeliver",
            Self::PresenceEnter => "presenceEnter",
            Self::PresenceLeave => "presenceLeave",
            Self::DlqWrite => "dlqWrite",
            Self::DlqReplay => "dlqReplay",
            Self::DlqRemove => "dlqRemove",
            Self::DlqRooms => "dlqRooms",
            Self::RoomInfo => "roomInfo",
            Self::GetCursor => "getCursor",
            Self::PresenceMembers => "presenceMembers",
            Self::Prune => "prune",
            Self::Kick => "kick",
            Self::MintToken => "mintToken",
            Self::Close => "close",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a middleware sees: the action and whatever it concerns.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Context {
    /// The action in progress.
    pub action: Action,
    /// The room concerned (publish, replay, ack, snapshot, deliver, presence, dlq).
    pub room: Option<Room>,
    /// The rooms/patterns of a subscribe.
    pub patterns: Vec<RoomPattern>,
    /// The subscriber, when known.
    pub subscriber_id: Option<String>,
    /// The event about to be stored (publish): middleware may edit it.
    pub event: Option<NewEvent>,
    /// The stored event (after publish) or the event being delivered (deliver, dlqWrite).
    pub envelope: Option<Arc<Envelope>>,
    /// The ephemeral event being published or delivered.
    pub ephemeral: Option<Arc<EphemeralEvent>>,
    /// The sequence concerned (ack), the replay start, or the dead-letter entry
    /// id a `dlqReplay` read starts after.
    pub sequence: Option<u64>,
    /// The failure text (dlqWrite).
    pub error: Option<String>,
    /// How many events a replay read (before `deliver`), or entries a `dlqReplay` read, once it ran.
    pub count: Option<usize>,
    /// Free-form values middleware can pass to each other.
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Context {
    /// A context for `action` with nothing filled in.
    pub fn new(action: Action) -> Self {
        Self {
            action,
            room: None,
            patterns: Vec::new(),
            subscriber_id: None,
            event: None,
            envelope: None,
            ephemeral: None,
            sequence: None,
            error: None,
            count: None,
            extensions: serde_json::Map::new(),
        }
    }

    /// Sets the room.
    pub fn with_room(mut self, room: Room) -> Self {
        self.room = Some(room);
        self
    }

    /// Sets the subscriber id.
    pub fn with_subscriber(mut self, subscriber_id: Option<String>) -> Self {
        self.subscriber_id = subscriber_id;
        self
    }
}

/// One layer of the onion.
#[async_trait]
pub trait Middleware: Send + Sync + 'static {
    /// Handles `ctx`; call `next.run(ctx)` to continue, or return an error to refuse.
    async fn handle(&self, ctx: Context, next: Next) -> Result<Context>;
}

/// The work at the centre of the onion.
pub(crate) type Core = Box<dyn FnOnce(Context) -> BoxFuture<'static, Result<Context>> + Send>;

/// An ordered, cheaply clonable middleware list.
pub(crate) type Chain = Arc<[Arc<dyn Middleware>]>;

/// The rest of the chain after the current middleware.
pub struct Next {
    chain: Chain,
    index: usize,
    core: Core,
}

impl Next {
    /// Runs the remaining middleware and the operation itself.
    pub async fn run(self, ctx: Context) -> Result<Context> {
        match self.chain.get(self.index).cloned() {
            Some(m) => {
                let next = Next {
                    chain: self.chain,
                    index: self.index + 1,
                    core: self.core,
                };
                m.handle(ctx, next).await
            }
            None => (self.core)(ctx).await,
        }
    }
}

/// Runs `core` inside `chain`.
pub(crate) async fn run(chain: Chain, ctx: Context, core: Core) -> Result<Context> {
    Next {
        chain,
        index: 0,
        core,
    }
    .run(ctx)
    .await
}

struct FromFn<F>(F);

#[async_trait]
impl<F, Fut> Middleware for FromFn<F>
where
    F: Fn(Context, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Context>> + Send + 'static,
{
    async fn handle(&self, ctx: Context, next: Next) -> Result<Context> {
        (self.0)(ctx, next).await
    }
}

/// A middleware from an async closure `|ctx, next| async move { next.run(ctx).await }`.
pub fn from_fn<F, Fut>(f: F) -> Arc<dyn Middleware>
where
    F: Fn(Context, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Context>> + Send + 'static,
{
    Arc::new(FromFn(f))
}

/// Logs every action at `debug` (failures at `warn`) with room and duration.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoggerMiddleware;

#[async_trait]
impl Middleware for LoggerMiddleware {
    async fn handle(&self, ctx: Context, next: Next) -> Result<Context> {
        let action = ctx.action;
        let room = ctx.room.as_ref().map(|r| r.to_string()).unwrap_or_default();
        let started = Instant::now();
        let out = next.run(ctx).await;
        let elapsed_us = started.elapsed().as_micros() as u64;
        match &out {
            Ok(_) => tracing::debug!(action = action.as_str(), room, elapsed_us, "realtime action"),
            Err(e) => {
                tracing::warn!(action = action.as_str(), room, elapsed_us, error = %e, "realtime action failed")
            }
        }
        out
    }
}

/// Records `zps_action_duration_seconds{action,outcome}` and `zps_actions_total{action,outcome}`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsMiddleware;

#[async_trait]
impl Middleware for MetricsMiddleware {
    async fn handle(&self, ctx: Context, next: Next) -> Result<Context> {
        let action = ctx.action.as_str();
        let started = Instant::now();
        let out = next.run(ctx).await;
        let outcome = if out.is_ok() { "ok" } else { "error" };
        metrics::histogram!("zps_action_duration_seconds", "action" => action, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("zps_actions_total", "action" => action, "outcome" => outcome).increment(1);
        out
    }
}

/// Refuses publishes (durable and ephemeral) whose payload is over `max_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct PayloadSizeMiddleware {
    /// Largest accepted payload, in bytes of JSON text.
    pub max_bytes: usize,
}

#[async_trait]
impl Middleware for PayloadSizeMiddleware {
    async fn handle(&self, ctx: Context, next: Next) -> Result<Context> {
        let size = match ctx.action {
            Action::Publish => ctx.event.as_ref().map(|e| e.payload.get().len()),
            Action::EphemeralPublish => ctx.ephemeral.as_ref().map(|e| e.payload.get().len()),
            _ => None,
        };
        if let Some(size) = size.filter(|&s| s > self.max_bytes) {
            return Err(Error::PayloadTooLarge {
                size,
                limit: self.max_bytes,
            });
        }
        next.run(ctx).await
    }
}

/// Refuses publishes without a `metadata.tenantId` string (multi-tenant deployments).
#[derive(Debug, Clone, Copy, Default)]
pub struct TenantMiddleware;

#[async_trait]
impl Middleware for TenantMiddleware {
    async fn handle(&self, ctx: Context, next: Next) -> Result<Context> {
        let metadata = match ctx.action {
            Action::Publish => Some(ctx.event.as_ref().and_then(|e| e.metadata.as_ref())),
            Action::EphemeralPublish => Some(ctx.ephemeral.as_ref().and_then(|e| e.metadata.as_ref())),
            _ => None,
        };
        if let Some(metadata) = metadata {
            let has_tenant = metadata
                .and_then(|m| m.get("tenantId"))
                .and_then(|v| v.as_str())
                .is_some_and(|s| !s.is_empty());
            if !has_tenant {
                return Err(Error::Rejected("missing metadata.tenantId".into()));
            }
        }
        next.run(ctx).await
    }
}

/// Removes named fields from payloads on their way out (`deliver` and
/// `ephemeralDeliver`): live, catch-up, history pages and replays alike, so a
/// field can be stored for the backend and never shown to clients. Paths are
/// dotted (`card.number`); payloads that are not objects pass unchanged.
#[derive(Debug, Clone, Default)]
pub struct RedactMiddleware {
    paths: Vec<Vec<String>>,
}

impl RedactMiddleware {
    /// Redacts these dotted paths.
    pub fn new<I, S>(paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            paths: paths
                .into_iter()
                .map(|p| p.as_ref().split('.').map(str::to_owned).collect::<Vec<_>>())
                .filter(|p: &Vec<String>| p.iter().all(|s| !s.is_empty()))
                .collect(),
        }
    }

    /// The payload without the redacted fields, or `None` when nothing changes.
    fn redact(&self, payload: &crate::envelope::Payload) -> Option<crate::envelope::Payload> {
        // Cheap test first: most payloads name none of the fields.
        let text = payload.get();
        if !self
            .paths
            .iter()
            .any(|p| p.last().is_some_and(|leaf| text.contains(leaf.as_str())))
        {
            return None;
        }
        let mut value: serde_json::Value = serde_json::from_str(text).ok()?;
        let mut changed = false;
        for path in &self.paths {
            changed |= remove_path(&mut value, path);
        }
        if !changed {
            return None;
        }
        serde_json::value::to_raw_value(&value).ok()
    }
}

fn remove_path(value: &mut serde_json::Value, path: &[String]) -> bool {
    match path {
        [] => false,
        [leaf] => value.as_object_mut().is_some_and(|o| o.remove(leaf).is_some()),
        [head, rest @ ..] => value
            .as_object_mut()
            .and_then(|o| o.get_mut(head))
            .is_some_and(|inner| remove_path(inner, rest)),
    }
}

#[async_trait]
impl Middleware for RedactMiddleware {
    async fn handle(&self, mut ctx: Context, next: Next) -> Result<Context> {
        match ctx.action {
            Action::Deliver => {
                if let Some(e) = &ctx.envelope
                    && let Some(payload) = self.redact(&e.payload)
                {
                    let mut redacted = Envelope::clone(e);
                    redacted.payload = payload;
                    ctx.envelope = Some(Arc::new(redacted));
                }
            }
            Action::EphemeralDeliver => {
                if let Some(e) = &ctx.ephemeral
                    && let Some(payload) = self.redact(&e.payload)
                {
                    let mut redacted = crate::envelope::EphemeralEvent::clone(e);
                    redacted.payload = payload;
                    ctx.ephemeral = Some(Arc::new(redacted));
                }
            }
            _ => {}
        }
        next.run(ctx).await
    }
}
