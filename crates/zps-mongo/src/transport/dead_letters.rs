//! Dead-letter queues: per-room entries with their own counter, the index of rooms.

use super::*;

#[async_trait]
impl DeadLetterStore for MongoTransport {
    async fn dlq_write(&self, room: &Room, entry: NewDlqEntry) -> zps_core::Result<DlqEntry> {
        self.check_open()?;
        let counter = self
            .inner
            .c
            .counters
            .find_one_and_update(
                doc! { "_id": dlq_counter_key(room) },
                doc! { "$inc": { "seq": 1_i64 } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await
            .map_err(MongoError::from)?;
        let entry_id = counter.and_then(|d| get_u64(&d, "seq")).unwrap_or(1);
        let stored = DlqEntry {
            entry_id,
            room: room.clone(),
            event: entry.event,
            error: entry.error,
            attempts: entry.attempts,
            subscriber_id: entry.subscriber_id,
            failed_at: entry.failed_at,
        };
        self.inner
            .c
            .dlq
            .insert_one(docs::dlq_document(&stored))
            .await
            .map_err(MongoError::from)?;
        Ok(stored)
    }

    async fn dlq_list(&self, room: &Room, after: u64, limit: usize) -> zps_core::Result<Vec<DlqEntry>> {
        self.check_open()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let found: Vec<Document> = self
            .inner
            .c
            .dlq
            .find(doc! { "room": room.as_str(), "entryId": { "$gt": int(after) } })
            .sort(doc! { "entryId": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(MongoError::from)?
            .try_collect()
            .await
            .map_err(MongoError::from)?;
        Ok(found
            .iter()
            .map(|d| docs::decode_dlq(d).map_err(corrupt("dlq")))
            .collect::<MongoResult<Vec<_>>>()?)
    }

    async fn dlq_remove(&self, room: &Room, entry_ids: &[u64]) -> zps_core::Result<u64> {
        self.check_open()?;
        if entry_ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Bson> = entry_ids.iter().map(|&i| int(i)).collect();
        let r = self
            .inner
            .c
            .dlq
            .delete_many(doc! { "room": room.as_str(), "entryId": { "$in": ids } })
            .await
            .map_err(MongoError::from)?;
        Ok(r.deleted_count)
    }

    async fn dlq_len(&self, room: &Room) -> zps_core::Result<u64> {
        self.check_open()?;
        Ok(self
            .inner
            .c
            .dlq
            .count_documents(doc! { "room": room.as_str() })
            .await
            .map_err(MongoError::from)?)
    }

    async fn dlq_rooms(
        &self,
        prefix: &str,
        after: Option<&Room>,
        limit: usize,
    ) -> zps_core::Result<Vec<DlqRoom>> {
        self.check_open()?;
        let filter = match after {
            Some(after) => doc! { "room": { "$gt": after.as_str() } },
            None => doc! {},
        };
        let names = self
            .inner
            .c
            .dlq
            .distinct("room", filter)
            .await
            .map_err(MongoError::from)?;
        let mut rooms: Vec<Room> = names
            .iter()
            .filter_map(Bson::as_str)
            .filter(|name| name.starts_with(prefix))
            .filter_map(|name| Room::parse(name).ok())
            .filter(|room| after.is_none_or(|a| room > a))
            .collect();
        rooms.sort_unstable();
        rooms.truncate(limit);
        let mut out = Vec::with_capacity(rooms.len());
        for room in rooms {
            let len = self
                .inner
                .c
                .dlq
                .count_documents(doc! { "room": room.as_str() })
                .await
                .map_err(MongoError::from)?;
            if len > 0 {
                out.push(DlqRoom { room, len });
            }
        }
        Ok(out)
    }
}
