//! Presence in a stream that keeps one record per subject: a record per
//! connection (`{room}.{user}.c.{connection}`, with its deadline) and one per
//! member (`{room}.{user}.m`, its metadata). Deadlines are checked on read and
//! swept; connections of one user on several gateways are one member.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use zps_core::envelope::Metadata;
use zps_core::transport::PresenceStore;
use zps_core::{PresenceMember, Room, Timestamp};

use super::NatsTransport;
use crate::error::{NatsError, NatsResult};
use crate::subject::{decode_token, encode_token};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionRecord {
    last_seen_at: Timestamp,
    expires_at: Timestamp,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MemberRecord {
    #[serde(default)]
    metadata: Option<Metadata>,
}

/// What the records say about one user in one room.
#[derive(Default)]
struct UserState {
    /// Connection token → its record subject and deadline.
    connections: BTreeMap<String, (String, ConnectionRecord)>,
    member: Option<(String, MemberRecord)>,
}

impl UserState {
    fn live(&self, now: Timestamp) -> impl Iterator<Item = &ConnectionRecord> {
        self.connections
            .values()
            .map(|(_, c)| c)
            .filter(move |c| c.expires_at > now)
    }
}

impl NatsTransport {
    fn user_prefix(&self, room: &Room, user_id: &str) -> String {
        format!(
            "{}.{}",
            self.inner.subjects.presence_room(room),
            encode_token(user_id)
        )
    }

    /// Every record under `filter`, grouped by room and user.
    async fn presence_records(&self, filter: &str) -> NatsResult<BTreeMap<(Room, String), UserState>> {
        let info = self
            .inner
            .presence
            .info_with_subjects(filter)
            .await
            .map_err(|e| NatsError::request("presence read", e, true))?;
        let subjects: Vec<(String, usize)> = info
            .try_collect()
            .await
            .map_err(|e| NatsError::request("presence read", e, true))?;
        let reads = subjects
            .iter()
            .map(|(subject, _)| self.last_record(&self.inner.presence, subject, "presence read"));
        let messages = futures::future::try_join_all(reads).await?;
        let mut out: BTreeMap<(Room, String), UserState> = BTreeMap::new();
        for msg in messages.into_iter().flatten() {
            let subject = msg.subject.to_string();
            let Some((room, tokens)) = self.inner.subjects.presence_parts(&subject) else {
                continue;
            };
            let Some(user) = tokens.first().and_then(|t| decode_token(t)) else {
                continue;
            };
            let state = out.entry((room, user)).or_default();
            match tokens.as_slice() {
                [_, "c", conn] => {
                    let record: ConnectionRecord = serde_json::from_slice(&msg.payload)
                        .map_err(|e| NatsError::Decode(format!("presence connection: {e}")))?;
                    state
                        .connections
                        .insert((*conn).to_owned(), (subject.clone(), record));
                }
                [_, "m"] => {
                    let record: MemberRecord = serde_json::from_slice(&msg.payload)
                        .map_err(|e| NatsError::Decode(format!("presence member: {e}")))?;
                    state.member = Some((subject.clone(), record));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    async fn user_state(&self, room: &Room, user_id: &str) -> NatsResult<UserState> {
        let filter = format!("{}.>", self.user_prefix(room, user_id));
        let mut records = self.presence_records(&filter).await?;
        Ok(records
            .remove(&(room.clone(), user_id.to_owned()))
            .unwrap_or_default())
    }

    async fn put_presence<T: Serialize>(&self, subject: String, record: &T) -> NatsResult<()> {
        let json = serde_json::to_vec(record).map_err(|e| NatsError::Decode(e.to_string()))?;
        self.put_record(subject, json.into(), None, "presence write")
            .await?;
        Ok(())
    }

    async fn purge_presence(&self, subject: &str) -> NatsResult<()> {
        self.purge_subject(&self.inner.presence, subject, "presence remove")
            .await
    }
}

#[async_trait]
impl PresenceStore for NatsTransport {
    async fn presence_enter(
        &self,
        room: &Room,
        member: PresenceMember,
        connection: &str,
        ttl: Duration,
    ) -> zps_core::Result<bool> {
        self.check_open()?;
        let now = Timestamp::now();
        let state = self.user_state(room, &member.user_id).await?;
        let was_present = state.live(now).next().is_some();
        let prefix = self.user_prefix(room, &member.user_id);
        if !was_present && member.metadata.is_none() {
            // Metadata left behind by connections that all expired: a new member starts afresh.
            if let Some((subject, _)) = &state.member {
                self.purge_presence(subject).await?;
            }
        }
        let record = ConnectionRecord {
            last_seen_at: member.last_seen_at,
            expires_at: now.saturating_add(ttl),
        };
        self.put_presence(format!("{prefix}.c.{}", encode_token(connection)), &record)
            .await?;
        if let Some(metadata) = member.metadata {
            self.put_presence(
                format!("{prefix}.m"),
                &MemberRecord {
                    metadata: Some(metadata),
                },
            )
            .await?;
        }
        Ok(!was_present)
    }

    async fn presence_leave(&self, room: &Room, user_id: &str, connection: &str) -> zps_core::Result<bool> {
        self.check_open()?;
        let mut state = self.user_state(room, user_id).await?;
        let Some((subject, _)) = state.connections.remove(&encode_token(connection)) else {
            return Ok(false);
        };
        self.purge_presence(&subject).await?;
        if state.live(Timestamp::now()).next().is_some() {
            return Ok(false);
        }
        for (subject, _) in state.connections.values() {
            self.purge_presence(subject).await?;
        }
        if let Some((subject, _)) = &state.member {
            self.purge_presence(subject).await?;
        }
        Ok(true)
    }

    async fn presence_members(&self, room: &Room) -> zps_core::Result<Vec<PresenceMember>> {
        self.check_open()?;
        let now = Timestamp::now();
        let filter = format!("{}.>", self.inner.subjects.presence_room(room));
        let records = self.presence_records(&filter).await?;
        Ok(records
            .into_iter()
            .filter_map(|((_, user_id), state)| {
                let last_seen_at = state.live(now).map(|c| c.last_seen_at).max()?;
                Some(PresenceMember {
                    user_id,
                    metadata: state.member.and_then(|(_, m)| m.metadata),
                    last_seen_at,
                })
            })
            .collect())
    }

    async fn presence_sweep(&self) -> zps_core::Result<Vec<(Room, String)>> {
        self.check_open()?;
        let now = Timestamp::now();
        let records = self.presence_records(&self.inner.subjects.all_presence()).await?;
        let mut left = Vec::new();
        for ((room, user), state) in records {
            let expired: Vec<&String> = state
                .connections
                .values()
                .filter(|(_, c)| c.expires_at <= now)
                .map(|(s, _)| s)
                .collect();
            if expired.is_empty() {
                continue;
            }
            for subject in expired {
                self.purge_presence(subject).await?;
            }
            if state.live(now).next().is_none() {
                if let Some((subject, _)) = &state.member {
                    self.purge_presence(subject).await?;
                }
                left.push((room, user));
            }
        }
        Ok(left)
    }
}
