//! Dead-letter queues: a table with an identity key per entry, bounded per room,
//! and the index of rooms (grouped in byte order).

use super::*;

impl PostgresTransport {
    pub(super) async fn dlq_list_inner(
        &self,
        room: &Room,
        after: u64,
        limit: usize,
    ) -> PgResult<Vec<DlqEntry>> {
        self.check_open()?;
        let rows = sqlx::query(&self.inner.q.dlq_list)
            .bind(room.as_str())
            .bind(to_i64(after))
            .bind(to_i64(limit as u64))
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let event: String = row.try_get("event")?;
                let attempts: i32 = row.try_get("attempts")?;
                Ok(DlqEntry {
                    entry_id: to_u64(row.try_get::<i64, _>("entry_id")?),
                    room: room.clone(),
                    event: serde_json::from_str::<Envelope>(&event)
                        .map_err(|e| corrupt("dlq", format!("stored event: {e}")))?,
                    error: row.try_get("error")?,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    subscriber_id: row.try_get("subscriber_id")?,
                    failed_at: Timestamp::from(row.try_get::<chrono::DateTime<chrono::Utc>, _>("failed_at")?),
                })
            })
            .collect()
    }
}

#[async_trait]
impl DeadLetterStore for PostgresTransport {
    async fn dlq_list(&self, room: &Room, after: u64, limit: usize) -> zps_core::Result<Vec<DlqEntry>> {
        Ok(self.dlq_list_inner(room, after, limit).await?)
    }

    async fn dlq_write(&self, room: &Room, entry: NewDlqEntry) -> zps_core::Result<DlqEntry> {
        self.check_open()?;
        let entry_id: i64 = sqlx::query_scalar(&self.inner.q.dlq_write)
            .bind(room.as_str())
            .bind(entry.event.to_json())
            .bind(&entry.error)
            .bind(i32::try_from(entry.attempts).unwrap_or(i32::MAX))
            .bind(entry.subscriber_id.as_deref())
            .bind(entry.failed_at.to_datetime())
            .fetch_one(&self.inner.pool)
            .await
            .map_err(PostgresError::from)?;
        Ok(DlqEntry {
            entry_id: to_u64(entry_id),
            room: room.clone(),
            event: entry.event,
            error: entry.error,
            attempts: entry.attempts,
            subscriber_id: entry.subscriber_id,
            failed_at: entry.failed_at,
        })
    }

    async fn dlq_remove(&self, room: &Room, entry_ids: &[u64]) -> zps_core::Result<u64> {
        self.check_open()?;
        let ids: Vec<i64> = entry_ids.iter().map(|&id| to_i64(id)).collect();
        let done = sqlx::query(&self.inner.q.dlq_remove)
            .bind(room.as_str())
            .bind(&ids)
            .execute(&self.inner.pool)
            .await
            .map_err(PostgresError::from)?;
        Ok(done.rows_affected())
    }

    async fn dlq_len(&self, room: &Room) -> zps_core::Result<u64> {
        self.check_open()?;
        let n: i64 = sqlx::query_scalar(&self.inner.q.dlq_len)
            .bind(room.as_str())
            .fetch_one(&self.inner.pool)
            .await
            .map_err(PostgresError::from)?;
        Ok(to_u64(n))
    }

    async fn dlq_rooms(
        &self,
        prefix: &str,
        after: Option<&Room>,
        limit: usize,
    ) -> zps_core::Result<Vec<DlqRoom>> {
        self.check_open()?;
        let rows = sqlx::query(&self.inner.q.dlq_rooms)
            .bind(prefix)
            .bind(after.map_or("", Room::as_str))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(PostgresError::from)?;
        rows.iter()
            .map(|row| {
                let room: String = row.try_get("room").map_err(PostgresError::from)?;
                let len: i64 = row.try_get("len").map_err(PostgresError::from)?;
                let room = Room::parse(&room).map_err(|e| PostgresError::Corrupt {
                    table: "dlq",
                    detail: format!("room `{room}`: {e}"),
                })?;
                Ok(DlqRoom {
                    room,
                    len: to_u64(len),
                })
            })
            .collect()
    }
}
