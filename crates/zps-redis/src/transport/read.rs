//! Reading history: replay pages from the room stream, room heads and epochs.

use super::*;

impl RedisTransport {
    pub(super) async fn read_entries(
        &self,
        stream: &str,
        start: String,
        end: &str,
        count: u64,
    ) -> Result<Vec<StreamEntry>> {
        let reply: Value = self
            .inner
            .client
            .xrange(stream, start, end, Some(count))
            .await
            .map_err(core)?;
        codec::parse_entries(reply).map_err(decode)
    }

    pub(super) async fn read_head_and_entries(
        &self,
        meta: &str,
        stream: &str,
        start: String,
        end: &str,
        count: u64,
    ) -> Result<(u64, Vec<StreamEntry>)> {
        // One MULTI: the head is read before the entries, atomically, so every
        // sequence up to it that the XRANGE did not return is final.
        let trx = self.inner.client.multi();
        let _: () = trx.hget(meta, "seq").await.map_err(core)?;
        let _: () = trx.xrange(stream, start, end, Some(count)).await.map_err(core)?;
        let reply: Value = trx.exec(true).await.map_err(core)?;
        let mut parts = reply.into_array().into_iter();
        let (Some(head), Some(entries)) = (parts.next(), parts.next()) else {
            return Err(decode("MULTI returned an unexpected reply"));
        };
        let head = u64_of(&head).unwrap_or(0);
        Ok((head, codec::parse_entries(entries).map_err(decode)?))
    }

    pub(super) async fn replay_stored(&self, query: &ReplayQuery) -> Result<ReplayPage> {
        self.check_open()?;
        self.require_history("replay")?;
        let limit = query.effective_limit();
        let upper = query.to_sequence.unwrap_or(u64::MAX);
        let mut page = ReplayPage {
            events: Vec::new(),
            scanned_to: query.from_sequence,
            exhausted: true,
        };
        if query.from_sequence >= upper {
            return Ok(page);
        }
        let keys = &self.inner.keys;
        let (meta, stream) = (keys.meta(&query.room), keys.stream(&query.room));
        let end = query.to_sequence.map_or_else(|| "+".to_owned(), codec::stream_id);
        let chunk = (limit as u64).clamp(64, REPLAY_CHUNK_MAX);
        let now = now_ms();
        let mut cursor = query.from_sequence;
        let mut head = 0;
        for round in 0..REPLAY_MAX_ROUNDS {
            let start = codec::stream_id(cursor + 1);
            let entries = if round == 0 {
                let (h, entries) = self
                    .read_head_and_entries(&meta, &stream, start, &end, chunk)
                    .await?;
                head = h;
                entries
            } else {
                self.read_entries(&stream, start, &end, chunk).await?
            };
            let read = entries.len() as u64;
            for entry in entries {
                if page.events.len() == limit {
                    page.exhausted = false;
                    return Ok(page);
                }
                page.scanned_to = entry.sequence;
                cursor = entry.sequence;
                if entry.expires_at_ms <= now {
                    continue;
                }
                if let Some(types) = &query.event_types {
                    let t = entry.event_type.as_bytes().unwrap_or_default();
                    if !types.iter().any(|want| want.as_bytes() == t) {
                        continue;
                    }
                }
                let bytes = entry.data.as_bytes().unwrap_or_default();
                page.events
                    .push(Arc::new(codec::decode_envelope(bytes).map_err(decode)?));
            }
            if read < chunk || cursor >= upper {
                // The end of the stream (or of the range): everything up to the head
                // read before this scan is final.
                page.scanned_to = page.scanned_to.max(head.min(upper));
                page.exhausted = true;
                return Ok(page);
            }
            if page.events.len() == limit {
                page.exhausted = false;
                return Ok(page);
            }
        }
        page.exhausted = false;
        Ok(page)
    }

    pub(super) async fn room_info_stored(&self, room: &Room) -> Result<RoomInfo> {
        self.check_open()?;
        let keys = &self.inner.keys;
        let reply: Value = self
            .inner
            .scripts
            .room_info
            .run(
                &self.inner.client,
                vec![Key::from(keys.meta(room)), Key::from(keys.stream(room))],
                vec![
                    bulk(new_epoch()),
                    bulk(now_ms().to_string()),
                    bulk(if self.config().persist_streams { "1" } else { "0" }),
                ],
            )
            .await
            .map_err(core)?;
        let parts = reply.into_array();
        let (Some(epoch), Some(last), Some(first)) = (
            parts.first().and_then(str_of),
            parts.get(1).and_then(u64_of),
            parts.get(2).and_then(str_of),
        ) else {
            return Err(decode("room info script returned an unexpected reply"));
        };
        let earliest = if first.is_empty() {
            last + 1
        } else {
            codec::parse_stream_id(&first).ok_or_else(|| decode(format!("unexpected stream id `{first}`")))?
        };
        Ok(RoomInfo {
            epoch,
            last_sequence: last,
            earliest_sequence: earliest,
        })
    }
}
