//! Dead-letter queues: one capped stream per room, and the index of rooms found by SCAN.

use super::*;

#[async_trait]
impl DeadLetterStore for RedisTransport {
    async fn dlq_write(&self, room: &Room, entry: NewDlqEntry) -> Result<DlqEntry> {
        self.check_open()?;
        let mut stored = DlqEntry {
            entry_id: 0,
            room: room.clone(),
            event: entry.event,
            error: entry.error,
            attempts: entry.attempts,
            subscriber_id: entry.subscriber_id,
            failed_at: entry.failed_at,
        };
        let json = serde_json::to_string(&stored).map_err(|e| Error::InvalidEvent(e.to_string()))?;
        let cap = i64::try_from(self.config().max_dlq_len.max(1)).unwrap_or(i64::MAX);
        // `0-*`: the server numbers entries 0-1, 0-2, ... so the sequence part is the entry id.
        let id: String = self
            .inner
            .client
            .xadd(
                self.inner.keys.dlq(room),
                false,
                ("MAXLEN", "~", cap),
                XID::Manual(Str::from("0-*")),
                vec![("e", json)],
            )
            .await
            .map_err(core)?;
        stored.entry_id = id
            .strip_prefix("0-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| decode(format!("unexpected dead-letter id `{id}`")))?;
        Ok(stored)
    }

    async fn dlq_list(&self, room: &Room, after: u64, limit: usize) -> Result<Vec<DlqEntry>> {
        self.check_open()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let reply: Value = self
            .inner
            .client
            .xrange(
                self.inner.keys.dlq(room),
                format!("(0-{after}"),
                "+",
                Some(limit as u64),
            )
            .await
            .map_err(core)?;
        let Value::Array(rows) = reply else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut parts = row.into_array().into_iter();
            let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
                return Err(decode("malformed dead-letter entry"));
            };
            let id = str_of(&id).unwrap_or_default();
            let entry_id: u64 = id
                .strip_prefix("0-")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| decode(format!("unexpected dead-letter id `{id}`")))?;
            let fields = fields.into_array();
            let json = fields
                .chunks(2)
                .find(|pair| pair.first().and_then(Value::as_bytes) == Some(b"e"))
                .and_then(|pair| pair.get(1))
                .and_then(Value::as_bytes)
                .ok_or_else(|| decode(format!("dead letter {id} has no body")))?;
            let mut entry: DlqEntry = serde_json::from_slice(json)
                .map_err(|e| decode(format!("dead letter {id} is not valid: {e}")))?;
            entry.entry_id = entry_id;
            out.push(entry);
        }
        Ok(out)
    }

    async fn dlq_remove(&self, room: &Room, entry_ids: &[u64]) -> Result<u64> {
        self.check_open()?;
        if entry_ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = entry_ids.iter().map(|id| format!("0-{id}")).collect();
        self.inner
            .client
            .xdel(self.inner.keys.dlq(room), ids)
            .await
            .map_err(core)
    }

    async fn dlq_len(&self, room: &Room) -> Result<u64> {
        self.check_open()?;
        self.inner
            .client
            .xlen(self.inner.keys.dlq(room))
            .await
            .map_err(core)
    }

    async fn dlq_rooms(&self, prefix: &str, after: Option<&Room>, limit: usize) -> Result<Vec<DlqRoom>> {
        self.check_open()?;
        let keys =
            crate::admin::keys_matching(&self.inner.client, self.inner.keys.dlq_scan_pattern(prefix)).await?;
        let mut rooms: Vec<Room> = keys
            .iter()
            .filter_map(|key| self.inner.keys.dlq_room(key))
            .filter(|room| after.is_none_or(|a| room > a))
            .collect();
        rooms.sort_unstable();
        rooms.dedup();
        let mut out = Vec::new();
        for room in rooms {
            if out.len() >= limit {
                break;
            }
            // A stream whose entries were all removed stays behind, empty.
            let len: u64 = self
                .inner
                .client
                .xlen(self.inner.keys.dlq(&room))
                .await
                .map_err(core)?;
            if len > 0 {
                out.push(DlqRoom { room, len });
            }
        }
        Ok(out)
    }
}
