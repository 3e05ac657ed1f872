//! Reading history: replay pages (scan windows, holes, expiry), room heads and epochs.

use super::*;

impl MongoTransport {
    pub(super) async fn replay_page(&self, q: &ReplayQuery) -> MongoResult<ReplayPage> {
        let inner = &self.inner;
        let limit = q.effective_limit();
        let from = q.from_sequence;
        let deadline = Instant::now() + inner.config.hole_grace * 2 + Duration::from_secs(5);
        let mut pause = Duration::from_millis(2);
        loop {
            let (head, last_alloc, _) = self.read_counter(&q.room).await?;
            let upper = q.to_sequence.map_or(head, |t| t.min(head));
            if upper <= from {
                return Ok(ReplayPage {
                    events: Vec::new(),
                    scanned_to: from,
                    exhausted: true,
                });
            }
            let window_end = upper.min(from.saturating_add(SCAN_WINDOW));
            let now = Timestamp::now();
            // With a type filter, count what is stored *before* reading the page: if the
            // range was complete then, the page read after it is authoritative.
            let complete_before = match &q.event_types {
                Some(_) => {
                    let present = inner
                        .c
                        .events
                        .count_documents(range_filter(&q.room, from, window_end))
                        .await?;
                    present >= window_end - from
                }
                None => false,
            };
            let found: Vec<Document> = inner
                .c
                .events
                .find(replay_filter(q, window_end, now))
                .sort(by_sequence())
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .await?
                .try_collect()
                .await?;
            let seqs: Vec<u64> = found.iter().filter_map(|d| get_u64(d, "sequence")).collect();
            let full = found.len() >= limit;
            let candidate = if full {
                seqs.last().copied().unwrap_or(window_end)
            } else {
                window_end
            };
            // Where a hole may start: without a type filter, the first sequence the page
            // skipped (an expired event or a hole); with one, anywhere unless the range was
            // complete before the page was read.
            let suspect = match &q.event_types {
                None => first_missing(from, candidate, &seqs),
                Some(_) if complete_before => None,
                Some(_) => Some(from + 1),
            };
            let mut scanned_to = candidate;
            if let Some(missing) = suspect {
                let lo = missing - 1;
                let stored: Vec<Document> = inner
                    .c
                    .events
                    .find(range_filter(&q.room, lo, candidate))
                    .projection(docs::slot_projection())
                    .sort(by_sequence())
                    .await?
                    .try_collect()
                    .await?;
                let slots: Vec<Slot> = stored
                    .iter()
                    .filter_map(|d| {
                        Some(Slot {
                            seq: get_u64(d, "sequence")?,
                            prev_at: get_i64(d, "prevAt"),
                        })
                    })
                    .collect();
                let tail_bound = self
                    .tail_bound(&q.room, &slots, candidate, head, last_alloc)
                    .await?;
                let scan = scan_holes(lo, candidate, &slots, tail_bound, now.as_millis(), inner.policy);
                if !scan.claim.is_empty() && self.claim_holes(&q.room, &scan.claim).await? {
                    continue;
                }
                if let Some((young, claimable_at)) = scan.young {
                    if young > from + 1 {
                        // Return what precedes the hole now; the next page waits for it.
                        scanned_to = young - 1;
                    } else {
                        if Instant::now() >= deadline {
                            return Err(MongoError::Unsettled {
                                room: q.room.to_string(),
                                sequence: young,
                            });
                        }
                        let until = u64::try_from(claimable_at - now.as_millis()).unwrap_or(1).max(1);
                        tokio::time::sleep(pause.min(Duration::from_millis(until))).await;
                        pause = (pause * 2).min(Duration::from_millis(50));
                        continue;
                    }
                }
                // An event the page should have returned but did not was stored while this
                // page was being read (it was a hole a moment ago): read the page again.
                let returned: HashSet<u64> = seqs.iter().copied().collect();
                let arrived = stored.iter().any(|d| {
                    get_u64(d, "sequence")
                        .is_some_and(|s| s > from && s <= scanned_to && !returned.contains(&s))
                        && !d.get_bool("skip").unwrap_or(false)
                        && d.get_str("type").is_ok_and(|t| q.accepts_type(t))
                        && docs::get_timestamp(d, "expiresAt").is_some_and(|t| t > now)
                });
                if arrived {
                    continue;
                }
            }
            let mut events = Vec::with_capacity(found.len());
            for d in &found {
                if get_u64(d, "sequence").is_some_and(|s| s > scanned_to) {
                    break;
                }
                match decode_event(d) {
                    Ok(Some(e)) if !e.is_expired_at(now) => events.push(Arc::new(e)),
                    Ok(_) => {}
                    Err(detail) => {
                        return Err(MongoError::Corrupt {
                            collection: "events",
                            detail,
                        });
                    }
                }
            }
            return Ok(ReplayPage {
                events,
                scanned_to,
                exhausted: scanned_to >= upper,
            });
        }
    }

    /// Bound on the allocation time of holes after the last stored slot of a range: the
    /// next stored document's `prevAt`, else the counter's last allocation.
    pub(super) async fn tail_bound(
        &self,
        room: &Room,
        slots: &[Slot],
        candidate: u64,
        head: u64,
        last_alloc: Option<i64>,
    ) -> MongoResult<i64> {
        let fallback = last_alloc.unwrap_or_else(|| Timestamp::now().as_millis());
        if slots.last().is_some_and(|s| s.seq >= candidate) || candidate >= head {
            return Ok(fallback);
        }
        let next = self
            .inner
            .c
            .events
            .find_one(range_filter(room, candidate, head))
            .sort(by_sequence())
            .projection(docs::slot_projection())
            .await?;
        Ok(next.and_then(|d| get_i64(&d, "prevAt")).unwrap_or(fallback))
    }

    pub(super) async fn room_info_inner(&self, room: &Room) -> MongoResult<RoomInfo> {
        let (head, last_alloc, room_epoch) = self.read_counter(room).await?;
        let epoch = match room_epoch {
            Some(e) => e,
            None => self.db_epoch().await?,
        };
        let now = Timestamp::now();
        let events = &self.inner.c.events;
        let (mut earliest, mut bound) = match self.first_unexpired(room, head, now).await? {
            Some((s, prev_at)) => (s, prev_at),
            None => (head + 1, last_alloc),
        };
        // Walk down over what is not lost history: skip records (consumed sequences that
        // never held an event) and holes allocated moments ago (an event may still land).
        for _ in 0..16 {
            if earliest <= 1 {
                break;
            }
            let below = events
                .find_one(doc! { "room": room.as_str(), "sequence": { "$gt": 0_i64, "$lt": int(earliest) } })
                .sort(doc! { "sequence": -1 })
                .projection(doc! { "_id": 0, "sequence": 1, "prevAt": 1, "skip": 1 })
                .await?;
            let below_seq = below.as_ref().and_then(|d| get_u64(d, "sequence")).unwrap_or(0);
            if below_seq + 1 < earliest {
                let young = bound.is_some_and(|b| now.as_millis() - b < self.inner.policy.grace_ms);
                if !young {
                    break;
                }
                earliest = below_seq + 1;
                continue;
            }
            match below {
                Some(d) if d.get_bool("skip").unwrap_or(false) => {
                    earliest = below_seq;
                    bound = get_i64(&d, "prevAt");
                }
                _ => break,
            }
        }
        Ok(RoomInfo {
            epoch,
            last_sequence: head,
            earliest_sequence: earliest,
        })
    }

    /// The first unexpired event of the room (sequence, `prevAt`), checked exactly.
    pub(super) async fn first_unexpired(
        &self,
        room: &Room,
        head: u64,
        now: Timestamp,
    ) -> MongoResult<Option<(u64, Option<i64>)>> {
        let mut filter = docs::unexpired_filter(room, now);
        loop {
            let batch: Vec<Document> = self
                .inner
                .c
                .events
                .find(filter.clone())
                .sort(by_sequence())
                .projection(doc! { "_id": 0, "sequence": 1, "prevAt": 1, "expiresAt": 1 })
                .limit(32)
                .await?
                .try_collect()
                .await?;
            let mut last = None;
            for d in &batch {
                let Some(seq) = get_u64(d, "sequence") else {
                    continue;
                };
                if seq > head {
                    return Ok(None);
                }
                last = Some(seq);
                if docs::get_timestamp(d, "expiresAt").is_some_and(|t| t > now) {
                    return Ok(Some((seq, get_i64(d, "prevAt"))));
                }
            }
            match last {
                // A full batch expired within the current second: look further.
                Some(seq) if batch.len() == 32 => {
                    filter.insert("sequence", doc! { "$gt": int(seq) });
                }
                _ => return Ok(None),
            }
        }
    }
}

/// The first sequence of `(from, to]` absent from `seqs` (sorted ascending), if any.
pub(super) fn first_missing(from: u64, to: u64, seqs: &[u64]) -> Option<u64> {
    let mut expected = from + 1;
    for &s in seqs {
        if s > expected {
            return Some(expected);
        }
        expected = expected.max(s + 1);
    }
    (expected <= to).then_some(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_missing_finds_the_first_absent_sequence() {
        assert_eq!(first_missing(0, 3, &[1, 2, 3]), None);
        assert_eq!(first_missing(0, 3, &[1, 3]), Some(2));
        assert_eq!(first_missing(0, 3, &[2, 3]), Some(1));
        assert_eq!(first_missing(0, 3, &[1, 2]), Some(3));
        assert_eq!(first_missing(5, 8, &[]), Some(6));
        assert_eq!(first_missing(5, 5, &[]), None);
    }
}
