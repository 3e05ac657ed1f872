//! Publishing: one statement per round trip, and group commit of concurrent publishes.
//!
//! Every publish runs as a single statement that takes its room's next sequence under
//! the counter row's lock, inserts the event (or answers a duplicate id with the stored
//! event) and queues the NOTIFY in the same transaction — so commit order, sequence
//! order and notification order agree.
//!
//! PostgreSQL serialises the commits of *all* notifying transactions of a cluster (a
//! global lock held through the commit's WAL flush), so one event per transaction caps
//! throughput at roughly one event per disk flush, however many publishers there are.
//! Concurrent `publish` calls of one transport are therefore queued and a few workers
//! each send whatever has accumulated as ONE multi-event statement (up to
//! `PostgresConfig::publish_batch_max` events): still one round trip and one commit per
//! statement, but many events per flush. A lone publisher sees no added latency (its
//! batch has one event and uses the single-event statement).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{PgPool, Postgres, Row};
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};
use zps_core::{Envelope, NewEvent, PublishOutcome, Room};

use crate::config::PostgresConfig;
use crate::error::{PgResult, PostgresError};
use crate::rows::{corrupt, event_from_row, metadata_text, to_u64};
use crate::sql::Queries;

/// Largest NOTIFY payload the provider sends (PostgreSQL refuses 8000 bytes and more).
pub const NOTIFY_PAYLOAD_LIMIT: usize = 7900;
/// Tries of a publish that lost a duplicate-id race (or, for batches, a deadlock).
const MAX_ATTEMPTS: u32 = 4;
/// Events per `publish_batch` statement.
const BATCH_CHUNK: usize = 1000;

/// What publishing needs, shared by the transport and its group-commit workers.
pub(crate) struct Core {
    pub(crate) config: PostgresConfig,
    pub(crate) q: Queries,
    pub(crate) pool: PgPool,
    pub(crate) event_prefix: String,
    pub(crate) fetch_prefix: String,
    pub(crate) reset_prefix: String,
    /// Analyzes a never-analyzed events table once it has grown.
    pub(crate) stats: Arc<crate::stats::StatsBootstrap>,
}

/// One publish, ready to bind.
pub(crate) struct Draft {
    room: Room,
    envelope: Envelope,
    metadata: Option<String>,
    /// Whether NOTIFY carries the whole envelope (else listeners fetch the row).
    full: bool,
    notify: String,
}

/// A queued publish and where its answer goes.
pub(crate) struct Pending {
    draft: Draft,
    reply: oneshot::Sender<PgResult<PublishOutcome>>,
}

impl Pending {
    pub(crate) fn new(draft: Draft) -> (Self, oneshot::Receiver<PgResult<PublishOutcome>>) {
        let (reply, rx) = oneshot::channel();
        (Self { draft, reply }, rx)
    }
}

/// Turns a publish statement's row into the outcome.
fn outcome(draft: Draft, row: &PgRow) -> PgResult<PublishOutcome> {
    let duplicate: bool = row.try_get("duplicate")?;
    if duplicate {
        let stored =
            event_from_row(row, &draft.room)?.ok_or_else(|| corrupt("events", "duplicate without a row"))?;
        return Ok(PublishOutcome {
            envelope: Arc::new(stored),
            duplicate: true,
        });
    }
    let mut envelope = draft.envelope;
    envelope.sequence = to_u64(row.try_get::<i64, _>("sequence")?);
    Ok(PublishOutcome {
        envelope: Arc::new(envelope),
        duplicate: false,
    })
}

fn is_deadlock(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("40P01"))
}

impl Core {
    /// Prepares the bound values of one publish (and its NOTIFY text).
    pub(crate) fn draft(&self, event: NewEvent) -> Draft {
        let envelope = event.into_envelope(0);
        let metadata = metadata_text(envelope.metadata.as_ref());
        let room = envelope.room.clone();
        // The NOTIFY text: the envelope itself when it fits, else a pointer listeners fetch.
        let estimate = envelope.payload.get().len()
            + metadata.as_ref().map_or(0, String::len)
            + envelope.id.len()
            + envelope.event_type.len()
            + 2 * room.as_str().len()
            + 200;
        let mut full = false;
        let mut notify = room.as_str().to_owned();
        if estimate < NOTIFY_PAYLOAD_LIMIT {
            let text = format!("{room}\n{}", envelope.to_json());
            if text.len() + self.event_prefix.len() + 21 < NOTIFY_PAYLOAD_LIMIT {
                full = true;
                notify = text;
            }
        }
        Draft {
            room,
            envelope,
            metadata,
            full,
            notify,
        }
    }

    fn prefix(&self, d: &Draft) -> &str {
        if d.full {
            &self.event_prefix
        } else {
            &self.fetch_prefix
        }
    }

    fn publish_query<'q>(&'q self, d: &'q Draft) -> Query<'q, Postgres, PgArguments> {
        sqlx::query(&self.q.publish)
            .bind(d.room.as_str())
            .bind(&d.envelope.id)
            .bind(&d.envelope.event_type)
            .bind(d.envelope.payload.get())
            .bind(d.metadata.as_deref())
            .bind(d.envelope.encrypted)
            .bind(d.envelope.emitted_at.to_datetime())
            .bind(d.envelope.expires_at.to_datetime())
            .bind(&self.config.notify_channel)
            .bind(self.prefix(d))
            .bind(&d.notify)
    }

    /// A racing publish of the same id committed first: this statement was rolled back,
    /// no sequence consumed; running it again finds the stored event.
    fn is_duplicate_race(&self, e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(db)
            if db.code().as_deref() == Some("23505")
                && db.constraint() == Some(self.q.room_id_index.as_str()))
    }

    /// One event, one statement.
    pub(crate) async fn publish_one(&self, draft: Draft) -> PgResult<PublishOutcome> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.publish_query(&draft).fetch_one(&self.pool).await {
                Ok(row) => return outcome(draft, &row),
                Err(e) if attempt < MAX_ATTEMPTS && self.is_duplicate_race(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Several events (any rooms) in one statement; rows come back in input order.
    async fn publish_many_once(&self, drafts: &[Draft]) -> Result<Vec<PgRow>, sqlx::Error> {
        let rooms: Vec<&str> = drafts.iter().map(|d| d.room.as_str()).collect();
        let ids: Vec<&str> = drafts.iter().map(|d| d.envelope.id.as_str()).collect();
        let types: Vec<&str> = drafts.iter().map(|d| d.envelope.event_type.as_str()).collect();
        let payloads: Vec<&str> = drafts.iter().map(|d| d.envelope.payload.get()).collect();
        let metadata: Vec<Option<&str>> = drafts.iter().map(|d| d.metadata.as_deref()).collect();
        let encrypted: Vec<bool> = drafts.iter().map(|d| d.envelope.encrypted).collect();
        let emitted: Vec<DateTime<Utc>> = drafts
            .iter()
            .map(|d| d.envelope.emitted_at.to_datetime())
            .collect();
        let expires: Vec<DateTime<Utc>> = drafts
            .iter()
            .map(|d| d.envelope.expires_at.to_datetime())
            .collect();
        let prefixes: Vec<&str> = drafts.iter().map(|d| self.prefix(d)).collect();
        let notes: Vec<&str> = drafts.iter().map(|d| d.notify.as_str()).collect();
        let rows = sqlx::query(&self.q.publish_many)
            .bind(&rooms)
            .bind(&ids)
            .bind(&types)
            .bind(&payloads)
            .bind(&metadata)
            .bind(&encrypted)
            .bind(&emitted)
            .bind(&expires)
            .bind(&self.config.notify_channel)
            .bind(&prefixes)
            .bind(&notes)
            .fetch_all(&self.pool)
            .await?;
        if rows.len() != drafts.len() {
            return Err(sqlx::Error::Protocol(format!(
                "batch publish returned {} rows for {} events",
                rows.len(),
                drafts.len()
            )));
        }
        Ok(rows)
    }

    /// Several events in one statement, retrying lost duplicate races; `Err` leaves the
    /// drafts untouched for a fallback.
    async fn publish_many(&self, drafts: &[Draft]) -> Result<Vec<PgRow>, sqlx::Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.publish_many_once(drafts).await {
                Err(e) if attempt < MAX_ATTEMPTS && (self.is_duplicate_race(&e) || is_deadlock(&e)) => {
                    continue;
                }
                other => return other,
            }
        }
    }

    /// `Transport::publish_batch`: chunks of up to 1000 events, one statement each.
    pub(crate) async fn publish_batch(&self, events: Vec<NewEvent>) -> PgResult<Vec<PublishOutcome>> {
        let mut out = Vec::with_capacity(events.len());
        let mut drafts: Vec<Draft> = events.into_iter().map(|e| self.draft(e)).collect();
        while !drafts.is_empty() {
            let rest = drafts.split_off(drafts.len().min(BATCH_CHUNK));
            let chunk = std::mem::replace(&mut drafts, rest);
            let rows = self.publish_many(&chunk).await?;
            for (draft, row) in chunk.into_iter().zip(&rows) {
                out.push(outcome(draft, row)?);
            }
        }
        Ok(out)
    }

    /// Runs one group-commit batch and answers every caller.
    async fn run_batch(&self, batch: Vec<Pending>) {
        if batch.len() == 1 {
            for p in batch {
                let _ = p.reply.send(self.publish_one(p.draft).await);
            }
            return;
        }
        let (drafts, replies): (Vec<Draft>, Vec<_>) = batch.into_iter().map(|p| (p.draft, p.reply)).unzip();
        match self.publish_many(&drafts).await {
            Ok(rows) => {
                for ((draft, reply), row) in drafts.into_iter().zip(replies).zip(&rows) {
                    let _ = reply.send(outcome(draft, row));
                }
            }
            Err(e) => {
                // Do not let one bad event fail its neighbours: publish them one by one.
                tracing::debug!(error = %e, events = drafts.len(), "batch publish failed; publishing singly");
                for (draft, reply) in drafts.into_iter().zip(replies) {
                    let _ = reply.send(self.publish_one(draft).await);
                }
            }
        }
    }
}

/// A group-commit worker: takes everything queued (up to `max`) and publishes it as one
/// statement. Ends when the queue's senders are gone and it is drained.
pub(crate) async fn run_publisher(core: Arc<Core>, rx: Arc<AsyncMutex<mpsc::Receiver<Pending>>>, max: usize) {
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { break };
            let mut batch = Vec::with_capacity(16);
            batch.push(first);
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            batch
        };
        core.run_batch(batch).await;
    }
}

/// Error for a publish whose worker went away (the transport closed).
pub(crate) fn closed<T>(_: T) -> PostgresError {
    PostgresError::Closed
}
