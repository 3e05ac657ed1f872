//! Publishing a batch: the id claims of a room's events go out together (one
//! round trip for all of them), then the events take their sequences one
//! after another as in a single publish, and the id records follow without
//! waiting. The events themselves cannot be pipelined: each one's
//! expected-last-subject-sequence is the stream position of the one before.

use std::collections::HashMap;

use zps_core::{NewEvent, PublishOutcome, Room};

use super::NatsTransport;
use super::ids::Claim;
use super::write::duplicate;
use crate::error::{NatsError, NatsResult};

impl NatsTransport {
    /// Stores `events` (any rooms), answering each in the order given.
    pub(super) async fn store_batch(&self, events: Vec<NewEvent>) -> NatsResult<Vec<PublishOutcome>> {
        let total = events.len();
        let mut rooms: Vec<(Room, Vec<(usize, NewEvent)>)> = Vec::new();
        for (i, event) in events.into_iter().enumerate() {
            match rooms.iter_mut().find(|(room, _)| *room == event.room) {
                Some((_, group)) => group.push((i, event)),
                None => rooms.push((event.room.clone(), vec![(i, event)])),
            }
        }
        // Rooms are independent: their groups run side by side.
        let groups = rooms.into_iter().map(|(_, group)| self.store_room_batch(group));
        let mut out: Vec<Option<PublishOutcome>> = vec![None; total];
        for group in futures::future::try_join_all(groups).await? {
            for (i, outcome) in group {
                out[i] = Some(outcome);
            }
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| NatsError::Decode("a batch event got no answer".into())))
            .collect()
    }

    /// One room's part of a batch, in order.
    async fn store_room_batch(
        &self,
        group: Vec<(usize, NewEvent)>,
    ) -> NatsResult<Vec<(usize, PublishOutcome)>> {
        let Some((_, first)) = group.first() else {
            return Ok(Vec::new());
        };
        let slot = self.head_slot(&first.room);
        // The room's turn: ids are claimed in it, right before storing (see `store`).
        let mut turn = Some(slot.lock().await);
        // A repeated id within the batch answers as a duplicate of its first occurrence.
        let mut first_of: HashMap<&str, usize> = HashMap::new();
        let mut unique = Vec::new();
        for (pos, (_, event)) in group.iter().enumerate() {
            if !first_of.contains_key(event.id.as_str()) {
                first_of.insert(&event.id, pos);
                unique.push(pos);
            }
        }
        let subjects: Vec<String> = unique
            .iter()
            .map(|&pos| self.inner.subjects.event_id(&group[pos].1.room, &group[pos].1.id))
            .collect();
        let claimed = self.claim_ids_pipelined(&subjects).await?;
        if claimed.iter().any(|c| !c) {
            // Some ids are held (see `store`): resolved without the room's turn.
            turn = None;
        }
        let mut answers: Vec<Option<PublishOutcome>> = vec![None; group.len()];
        let mut owned = Vec::new();
        for ((&pos, subject), claimed) in unique.iter().zip(&subjects).zip(claimed.iter().copied()) {
            let event = &group[pos].1;
            let claim = if claimed {
                Claim::Owned
            } else {
                match self.claim_held_id(event, subject).await {
                    Ok(claim) => claim,
                    Err(e) => {
                        self.release_ids(&owned).await;
                        return Err(e);
                    }
                }
            };
            match claim {
                Claim::Owned => owned.push((pos, subject.clone())),
                Claim::Stored(original) => answers[pos] = Some(duplicate(original)),
            }
        }
        let mut cached = match turn {
            Some(turn) => turn,
            None => slot.lock().await,
        };
        for (n, (pos, subject)) in owned.iter().enumerate() {
            match self.store_claimed(&group[*pos].1, &mut cached).await {
                Ok(outcome) => {
                    self.finish_id(subject, outcome.envelope.sequence).await;
                    answers[*pos] = Some(outcome);
                }
                Err(e) => {
                    // Maybe stored: keep its claim so a retry looks before storing again.
                    let keep = usize::from(matches!(e, NatsError::OutcomeUnknown { .. }));
                    self.release_ids(&owned[n + keep..]).await;
                    return Err(e);
                }
            }
        }
        let mut out = Vec::with_capacity(group.len());
        for (pos, (i, event)) in group.iter().enumerate() {
            let first = first_of.get(event.id.as_str()).copied().unwrap_or(pos);
            let answer = match &answers[first] {
                Some(answer) if first == pos => answer.clone(),
                Some(answer) => duplicate(answer.envelope.as_ref().clone()),
                None => return Err(NatsError::Decode("a batch event got no answer".into())),
            };
            out.push((*i, answer));
        }
        Ok(out)
    }

    async fn release_ids(&self, owned: &[(usize, String)]) {
        for (_, subject) in owned {
            self.release_id(subject).await;
        }
    }
}
