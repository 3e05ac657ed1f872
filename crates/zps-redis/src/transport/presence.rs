//! Presence: a hash per room of (user, connection) entries with expiries, an
//! index of rooms by earliest expiry for the sweep.

use super::*;

#[async_trait]
impl PresenceStore for RedisTransport {
    async fn presence_enter(
        &self,
        room: &Room,
        member: PresenceMember,
        connection: &str,
        ttl: Duration,
    ) -> Result<bool> {
        self.check_open()?;
        let invalid = |e: serde_json::Error| Error::InvalidEvent(e.to_string());
        // Metadata is stored apart from the member so that `None` can keep it.
        let metadata = match &member.metadata {
            Some(m) => serde_json::to_string(m).map_err(invalid)?,
            None => String::new(),
        };
        let bare = PresenceMember {
            metadata: None,
            ..member.clone()
        };
        let json = serde_json::to_string(&bare).map_err(invalid)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let reply: Value = self
            .inner
            .scripts
            .presence_enter
            .run(
                &self.inner.client,
                vec![Key::from(self.inner.keys.presence(room))],
                vec![
                    bulk(member.user_id.clone()),
                    bulk(connection),
                    bulk(ttl_ms.to_string()),
                    bulk(json),
                    bulk(metadata),
                ],
            )
            .await
            .map_err(core)?;
        let parts = reply.into_array();
        let joined = parts.first().and_then(Value::as_i64) == Some(1);
        let expiry = parts.get(1).and_then(Value::as_i64).unwrap_or(0);
        // The index only lets the sweeper find rooms; LT keeps the earliest expiry.
        let _: Value = self
            .inner
            .client
            .zadd(
                self.inner.keys.presence_index(),
                None,
                Some(ZOrdering::LessThan),
                false,
                false,
                (expiry as f64, room.as_str()),
            )
            .await
            .map_err(core)?;
        Ok(joined)
    }

    async fn presence_leave(&self, room: &Room, user_id: &str, connection: &str) -> Result<bool> {
        self.check_open()?;
        let left: i64 = self
            .inner
            .scripts
            .presence_leave
            .run(
                &self.inner.client,
                vec![Key::from(self.inner.keys.presence(room))],
                vec![bulk(user_id), bulk(connection)],
            )
            .await
            .map_err(core)?;
        Ok(left == 1)
    }

    async fn presence_members(&self, room: &Room) -> Result<Vec<PresenceMember>> {
        self.check_open()?;
        let reply: Value = self
            .inner
            .scripts
            .presence_members
            .run(
                &self.inner.client,
                vec![Key::from(self.inner.keys.presence(room))],
                Vec::new(),
            )
            .await
            .map_err(core)?;
        let mut members = Vec::new();
        let mut values = reply.into_array().into_iter();
        while let (Some(member), Some(metadata)) = (values.next(), values.next()) {
            let Some(bytes) = member.as_bytes() else { continue };
            let mut member: PresenceMember = serde_json::from_slice(bytes)
                .map_err(|e| decode(format!("stored presence member is not valid: {e}")))?;
            if let Some(bytes) = metadata.as_bytes().filter(|b| !b.is_empty()) {
                member.metadata = Some(
                    serde_json::from_slice(bytes)
                        .map_err(|e| decode(format!("stored presence metadata is not valid: {e}")))?,
                );
            }
            members.push(member);
        }
        members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(members)
    }

    async fn presence_sweep(&self) -> Result<Vec<(Room, String)>> {
        self.check_open()?;
        let client = &self.inner.client;
        let index = self.inner.keys.presence_index();
        let (secs, micros): (String, String) = client
            .custom(
                CustomCommand::new_static("TIME", ClusterHash::Random, false),
                Vec::<String>::new(),
            )
            .await
            .map_err(core)?;
        let now = secs.parse::<i64>().unwrap_or(0) * 1000 + micros.parse::<i64>().unwrap_or(0) / 1000;
        let due: Vec<String> = client
            .zrangebyscore(&index, "-inf", now as f64, false, Some((0, 1_000)))
            .await
            .map_err(core)?;
        let mut left = Vec::new();
        for name in due {
            let Ok(room) = Room::parse(&name) else {
                let _: Value = client.zrem(&index, name).await.map_err(core)?;
                continue;
            };
            let reply: Value = self
                .inner
                .scripts
                .presence_sweep
                .run(
                    client,
                    vec![Key::from(self.inner.keys.presence(&room))],
                    Vec::new(),
                )
                .await
                .map_err(core)?;
            let mut parts = reply.into_array().into_iter();
            let earliest = parts.next().and_then(|v| v.as_i64()).unwrap_or(0);
            for user in parts.next().map(Value::into_array).unwrap_or_default() {
                if let Some(user) = str_of(&user) {
                    left.push((room.clone(), user));
                }
            }
            if earliest > 0 {
                let _: Value = client
                    .zadd(&index, None, None, false, false, (earliest as f64, room.as_str()))
                    .await
                    .map_err(core)?;
            } else {
                let _: Value = client.zrem(&index, room.as_str()).await.map_err(core)?;
                // A concurrent enter may have landed between the sweep and the removal.
                let still: u64 = client.hlen(self.inner.keys.presence(&room)).await.map_err(core)?;
                if still > 0 {
                    let _: Value = client
                        .zadd(&index, None, None, false, false, (now as f64, room.as_str()))
                        .await
                        .map_err(core)?;
                }
            }
        }
        Ok(left)
    }
}
