//! Presence: who is in a room. One member per user however many connections
//! it has; a connection that stops heartbeating leaves after the presence TTL.
//! Joins and leaves are announced as ephemeral events
//! ([`PRESENCE_JOINED`](super::PRESENCE_JOINED), [`PRESENCE_LEFT`](super::PRESENCE_LEFT)).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;

use crate::envelope::{Metadata, PresenceMember};
use crate::error::{Error, Result};
use crate::middleware::{Action, Context};
use crate::room::{Room, RoomPattern};
use crate::time::Timestamp;

use super::{EphemeralRequest, Inner, PRESENCE_JOINED, PRESENCE_LEFT, Realtime};

/// A join or leave.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PresenceChange {
    /// A user's first connection arrived.
    Joined {
        /// The member.
        member: PresenceMember,
    },
    /// A user's last connection left or timed out.
    Left {
        /// The user.
        user_id: String,
    },
}

/// Member lists, re-sent after every change (first item: the current list).
pub type PresenceStream = BoxStream<'static, Result<Vec<PresenceMember>>>;

/// Handle on one room's presence (from [`Realtime::presence`]).
pub struct Presence {
    engine: Realtime,
    room: Room,
}

impl Presence {
    pub(crate) fn new(engine: Realtime, room: Room) -> Self {
        Self { engine, room }
    }

    /// Marks `connection` of `user_id` present (also the heartbeat: call it again
    /// within the presence TTL). Returns true when this made the user a new member.
    ///
    /// Metadata belongs to the member, not to the connection: `Some` sets it (the
    /// latest enter wins), `None` keeps what the member has (a heartbeat or a second
    /// connection without metadata never erases it). It lasts while any connection
    /// of the user is present and goes with the member when the last one leaves
    /// or expires.
    pub async fn enter(&self, user_id: &str, metadata: Option<Metadata>, connection: &str) -> Result<bool> {
        let inner = &self.engine.inner;
        inner.check_open()?;
        crate::envelope::validate_token("user id", user_id)?;
        ensure_sweeper(&self.engine);
        let member = PresenceMember {
            user_id: user_id.to_owned(),
            metadata,
            last_seen_at: Timestamp::now(),
        };
        let announce = member.clone();
        let (transport, ttl, conn) = (
            inner.transport.clone(),
            inner.config.presence_ttl,
            connection.to_owned(),
        );
        let ctx = Context::new(Action::PresenceEnter)
            .with_room(self.room.clone())
            .with_subscriber(Some(user_id.to_owned()));
        let (_, joined) = inner
            .call(ctx, move |ctx| async move {
                let Some(room) = &ctx.room else {
                    return Err(Error::Rejected("middleware removed the room".into()));
                };
                let joined = transport
                    .require_presence()?
                    .presence_enter(room, member, &conn, ttl)
                    .await?;
                Ok((ctx, joined))
            })
            .await?;
        if joined {
            announce_change(&self.engine, &self.room, PRESENCE_JOINED, &announce).await;
        }
        Ok(joined)
    }

    /// Heartbeat: renews the presence TTL of `connection` of `user_id` and keeps the
    /// member's metadata (the same as [`Presence::enter`] with `None`). Returns true
    /// when the user had expired meanwhile and is a new member again.
    pub async fn refresh(&self, user_id: &str, connection: &str) -> Result<bool> {
        self.enter(user_id, None, connection).await
    }

    /// Removes `connection` of `user_id`; returns true when the user left entirely.
    pub async fn leave(&self, user_id: &str, connection: &str) -> Result<bool> {
        let inner = &self.engine.inner;
        inner.check_open()?;
        let (transport, user, conn) = (inner.transport.clone(), user_id.to_owned(), connection.to_owned());
        let ctx = Context::new(Action::PresenceLeave)
            .with_room(self.room.clone())
            .with_subscriber(Some(user_id.to_owned()));
        let (_, left) = inner
            .call(ctx, move |ctx| async move {
                let Some(room) = &ctx.room else {
                    return Err(Error::Rejected("middleware removed the room".into()));
                };
                let left = transport
                    .require_presence()?
                    .presence_leave(room, &user, &conn)
                    .await?;
                Ok((ctx, left))
            })
            .await?;
        if left {
            announce_left(&self.engine, &self.room, user_id).await;
        }
        Ok(left)
    }

    /// Current members, sorted by user id.
    pub async fn members(&self) -> Result<Vec<PresenceMember>> {
        self.engine.inner.check_open()?;
        self.engine
            .inner
            .transport
            .require_presence()?
            .presence_members(&self.room)
            .await
    }

    /// Joins and leaves as they are announced.
    pub async fn changes(&self) -> Result<BoxStream<'static, PresenceChange>> {
        let stream = self
            .engine
            .subscribe_ephemeral(
                &[RoomPattern::Exact(self.room.clone())],
                Some(vec![PRESENCE_JOINED.to_owned(), PRESENCE_LEFT.to_owned()]),
            )
            .await?;
        Ok(stream
            .filter_map(|e| async move {
                if e.event_type == PRESENCE_JOINED {
                    serde_json::from_str(e.payload.get())
                        .ok()
                        .map(|member| PresenceChange::Joined { member })
                } else {
                    #[derive(serde::Deserialize)]
                    #[serde(rename_all = "camelCase")]
                    struct Left {
                        user_id: String,
                    }
                    serde_json::from_str::<Left>(e.payload.get())
                        .ok()
                        .map(|l| PresenceChange::Left { user_id: l.user_id })
                }
            })
            .boxed())
    }

    /// The member list now and after every change.
    pub async fn subscribe(&self) -> Result<PresenceStream> {
        let changes = self.changes().await?;
        let first = self.members().await;
        let engine = self.engine.clone();
        let room = self.room.clone();
        let rest = changes.then(move |_| {
            let (engine, room) = (engine.clone(), room.clone());
            async move { engine.presence(room).members().await }
        });
        Ok(futures::stream::once(async move { first }).chain(rest).boxed())
    }
}

async fn announce_change<T: Serialize>(engine: &Realtime, room: &Room, event_type: &str, payload: &T) {
    let request = match EphemeralRequest::new(room.clone(), event_type, payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "presence announcement not serializable");
            return;
        }
    };
    if let Err(e) = engine.publish_ephemeral(request).await {
        tracing::warn!(room = %room, error = %e, "presence announcement failed");
    }
}

async fn announce_left(engine: &Realtime, room: &Room, user_id: &str) {
    announce_change(
        engine,
        room,
        PRESENCE_LEFT,
        &serde_json::json!({ "userId": user_id }),
    )
    .await;
}

/// Starts the background task that expires silent connections (once per engine).
fn ensure_sweeper(engine: &Realtime) {
    let mut slot = engine.inner.presence_sweeper.lock();
    if slot.is_some() {
        return;
    }
    let weak = Arc::downgrade(&engine.inner);
    let every = (engine.inner.config.presence_ttl / 2).max(Duration::from_millis(10));
    *slot = Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            sweep_once(inner).await;
        }
    }));
}

async fn sweep_once(inner: Arc<Inner>) {
    let engine = Realtime { inner };
    let swept = match engine.inner.transport.require_presence() {
        Ok(p) => p.presence_sweep().await,
        Err(e) => Err(e),
    };
    match swept {
        Ok(left) => {
            for (room, user) in left {
                announce_left(&engine, &room, &user).await;
            }
        }
        Err(e) => tracing::debug!(error = %e, "presence sweep failed"),
    }
}
