//! Presence: one document per (room, user, connection) with an expiry; members
//! merged per user; the sweep of expired entries.

use super::*;

#[async_trait]
impl PresenceStore for MongoTransport {
    async fn presence_enter(
        &self,
        room: &Room,
        member: PresenceMember,
        connection: &str,
        ttl: Duration,
    ) -> zps_core::Result<bool> {
        self.check_open()?;
        let live = self.presence_live(room, &member.user_id).await?;
        let joined = live.is_empty();
        let now = Timestamp::now();
        let expires = now.saturating_add(ttl);
        // Metadata belongs to the member: `None` keeps the newest one its live
        // connections hold; `Some` is written to all of them (the latest wins).
        let spread = member.metadata.as_ref().map(docs::map_to_document);
        let (metadata_at, member) = match &member.metadata {
            Some(_) => (Some(now), member),
            None => {
                let newest = live
                    .iter()
                    .filter_map(|d| match d.get("metadata") {
                        Some(Bson::Document(m)) => Some((docs::get_timestamp(d, "metadataAt"), m)),
                        _ => None,
                    })
                    .max_by_key(|(at, _)| *at);
                match newest {
                    Some((at, m)) => (
                        at,
                        PresenceMember {
                            metadata: Some(docs::document_to_map(m)),
                            ..member
                        },
                    ),
                    None => (None, member),
                }
            }
        };
        let mut document = docs::presence_document(room, &member, connection, expires);
        if let Some(at) = metadata_at {
            document.insert("metadataAt", date(at));
        }
        let user = doc! { "room": room.as_str(), "userId": member.user_id.as_str() };
        let mut filter = user.clone();
        filter.insert("connection", connection);
        let presence = &self.inner.c.presence;
        presence
            .replace_one(filter, document)
            .upsert(true)
            .await
            .map_err(MongoError::from)?;
        if let Some(metadata) = spread {
            presence
                .update_many(
                    user,
                    doc! { "$set": { "metadata": metadata, "metadataAt": date(now) } },
                )
                .await
                .map_err(MongoError::from)?;
        }
        Ok(joined)
    }

    async fn presence_leave(&self, room: &Room, user_id: &str, connection: &str) -> zps_core::Result<bool> {
        self.check_open()?;
        let r = self
            .inner
            .c
            .presence
            .delete_one(doc! { "room": room.as_str(), "userId": user_id, "connection": connection })
            .await
            .map_err(MongoError::from)?;
        if r.deleted_count == 0 {
            return Ok(false);
        }
        Ok(self.presence_live(room, user_id).await?.is_empty())
    }

    async fn presence_members(&self, room: &Room) -> zps_core::Result<Vec<PresenceMember>> {
        self.check_open()?;
        let now = Timestamp::now();
        let found: Vec<Document> = self
            .inner
            .c
            .presence
            .find(doc! { "room": room.as_str(), "expiresAt": docs::not_expired(now) })
            .await
            .map_err(MongoError::from)?
            .try_collect()
            .await
            .map_err(MongoError::from)?;
        // Several connections of one user are one member: the latest heartbeat,
        // and the metadata set last (older documents: by their heartbeat).
        let mut members: HashMap<String, (PresenceMember, Option<Timestamp>)> = HashMap::new();
        for d in &found {
            if docs::get_timestamp(d, "expiresAt").is_none_or(|t| t <= now) {
                continue;
            }
            let m = docs::decode_member(d).map_err(corrupt("presence"))?;
            let set_at = m
                .metadata
                .is_some()
                .then(|| docs::get_timestamp(d, "metadataAt").unwrap_or(m.last_seen_at));
            match members.get_mut(&m.user_id) {
                Some((existing, existing_at)) => {
                    existing.last_seen_at = existing.last_seen_at.max(m.last_seen_at);
                    if set_at > *existing_at {
                        existing.metadata = m.metadata;
                        *existing_at = set_at;
                    }
                }
                None => {
                    members.insert(m.user_id.clone(), (m, set_at));
                }
            }
        }
        let mut members: Vec<PresenceMember> = members.into_values().map(|(m, _)| m).collect();
        members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(members)
    }

    async fn presence_sweep(&self) -> zps_core::Result<Vec<(Room, String)>> {
        self.check_open()?;
        let presence = &self.inner.c.presence;
        let at = Timestamp::now();
        let now = date(at);
        let expired: Vec<Document> = presence
            .find(doc! { "expiresAt": { "$lte": now.clone() } })
            .projection(doc! { "_id": 1, "room": 1, "userId": 1, "expiresAt": 1 })
            .limit(10_000)
            .await
            .map_err(MongoError::from)?
            .try_collect()
            .await
            .map_err(MongoError::from)?;
        // Exact check (some servers compare dates to the second).
        let expired: Vec<Document> = expired
            .into_iter()
            .filter(|d| docs::get_timestamp(d, "expiresAt").is_some_and(|t| t <= at))
            .collect();
        if expired.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Bson> = expired.iter().filter_map(|d| d.get("_id").cloned()).collect();
        presence
            .delete_many(doc! { "_id": { "$in": ids }, "expiresAt": { "$lte": now } })
            .await
            .map_err(MongoError::from)?;
        let mut users: Vec<(String, String)> = expired
            .iter()
            .filter_map(|d| {
                Some((
                    d.get_str("room").ok()?.to_owned(),
                    d.get_str("userId").ok()?.to_owned(),
                ))
            })
            .collect();
        users.sort();
        users.dedup();
        let mut left = Vec::new();
        for (room, user) in users {
            let Ok(room) = Room::parse(&room) else { continue };
            if self.presence_live(&room, &user).await?.is_empty() {
                left.push((room, user));
            }
        }
        Ok(left)
    }
}
