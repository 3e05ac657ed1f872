//! Presence: one row per (room, user, connection) with an expiry; enters of one
//! user serialised by an advisory lock; the sweep of expired rows.

use super::*;

#[async_trait]
impl PresenceStore for PostgresTransport {
    async fn presence_enter(
        &self,
        room: &Room,
        member: PresenceMember,
        connection: &str,
        ttl: Duration,
    ) -> zps_core::Result<bool> {
        self.check_open()?;
        // One user's enters run one at a time, so a connection inheriting the
        // member's metadata never races one that replaces it.
        let mut tx = self.inner.pool.begin().await.map_err(PostgresError::from)?;
        sqlx::query(&self.inner.q.presence_lock)
            .bind(room.as_str())
            .bind(&member.user_id)
            .execute(&mut *tx)
            .await
            .map_err(PostgresError::from)?;
        let joined: Option<bool> = sqlx::query_scalar(&self.inner.q.presence_enter)
            .bind(room.as_str())
            .bind(&member.user_id)
            .bind(connection)
            .bind(metadata_text(member.metadata.as_ref()))
            .bind(member.last_seen_at.to_datetime())
            .bind(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
            .fetch_one(&mut *tx)
            .await
            .map_err(PostgresError::from)?;
        tx.commit().await.map_err(PostgresError::from)?;
        Ok(joined.unwrap_or(false))
    }

    async fn presence_leave(&self, room: &Room, user_id: &str, connection: &str) -> zps_core::Result<bool> {
        self.check_open()?;
        let left: Option<bool> = sqlx::query_scalar(&self.inner.q.presence_leave)
            .bind(room.as_str())
            .bind(user_id)
            .bind(connection)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(PostgresError::from)?;
        Ok(left.unwrap_or(false))
    }

    async fn presence_members(&self, room: &Room) -> zps_core::Result<Vec<PresenceMember>> {
        self.check_open()?;
        let rows = sqlx::query(&self.inner.q.presence_members)
            .bind(room.as_str())
            .fetch_all(&self.inner.pool)
            .await
            .map_err(PostgresError::from)?;
        let mut members = rows
            .iter()
            .map(|row| {
                Ok(PresenceMember {
                    user_id: row.try_get("user_id")?,
                    metadata: metadata_from("presence", row.try_get("metadata")?)?,
                    last_seen_at: Timestamp::from(
                        row.try_get::<chrono::DateTime<chrono::Utc>, _>("last_seen_at")?,
                    ),
                })
            })
            .collect::<PgResult<Vec<_>>>()?;
        members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(members)
    }

    async fn presence_sweep(&self) -> zps_core::Result<Vec<(Room, String)>> {
        self.check_open()?;
        let rows: Vec<(String, String)> = sqlx::query_as(&self.inner.q.presence_sweep)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(PostgresError::from)?;
        Ok(rows
            .into_iter()
            .filter_map(|(room, user)| Room::parse(&room).ok().map(|r| (r, user)))
            .collect())
    }
}
