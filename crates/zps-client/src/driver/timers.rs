//! Rooms' bookkeeping after each step, timers (gap repair, resubscribe,
//! request deadlines, idle), and coalesced acks.

use super::*;

impl Driver {
    /// Bookkeeping after a room handled something: consumer gone, blocked, timers.
    pub(super) fn after_room_op(&mut self, room: &str) {
        let Some(t) = self.rooms.get(room) else {
            return;
        };
        let key = t.room.clone();
        if t.closed {
            let id = t.sink.id;
            self.remove_sink(id);
            return;
        }
        if t.blocked {
            self.blocked.insert(key.clone());
        } else {
            self.blocked.remove(&key);
        }
        if t.wants_timer() {
            self.timed.insert(key);
        } else {
            self.timed.remove(&key);
        }
        self.refresh_blocked_flag();
    }

    pub(super) fn refresh_blocked_flag(&self) {
        self.shared
            .any_blocked
            .store(!self.blocked.is_empty(), Ordering::SeqCst);
    }

    pub(super) fn on_wake(&mut self, now: Instant) {
        if !self.blocked.is_empty() {
            let blocked: Vec<Arc<str>> = self.blocked.iter().cloned().collect();
            for room in blocked {
                if let Some(t) = self.rooms.get_mut(&room) {
                    t.drain(now);
                    self.after_room_op(&room);
                } else {
                    self.blocked.remove(&room);
                }
            }
            self.refresh_blocked_flag();
        }
        if self.shared.ack_signal() && self.ack_due.is_none() {
            self.ack_due = Some(now + self.opts.ack_interval);
        }
    }

    pub(super) fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut at = now + FAR;
        if let Some(d) = self.ack_due {
            at = at.min(d);
        }
        for room in &self.timed {
            if let Some(d) = self.rooms.get(room).and_then(|t| t.deadline()) {
                at = at.min(d);
            }
        }
        for d in self.resubscribe.values() {
            at = at.min(*d);
        }
        if !self.blocked.is_empty() {
            at = at.min(now + BLOCKED_RECHECK);
        }
        at
    }

    pub(super) fn on_timers(&mut self, now: Instant) {
        if self.ack_due.is_some_and(|d| d <= now) {
            self.flush_acks();
        }
        if !self.blocked.is_empty() {
            self.on_wake(now);
        }
        let timed: Vec<Arc<str>> = self.timed.iter().cloned().collect();
        for room in timed {
            let Some(t) = self.rooms.get_mut(&room) else {
                self.timed.remove(&room);
                continue;
            };
            let next_id = &mut self.next_id;
            let req = t.poll_replay(now, &self.tune, || {
                *next_id += 1;
                format!("r{next_id}")
            });
            if !t.wants_timer() {
                self.timed.remove(&room);
            }
            if let Some(req) = req {
                self.push(&ClientMessage::ReplayRequest(req));
            }
        }
        let due: Vec<Arc<str>> = self
            .resubscribe
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(r, _)| r.clone())
            .collect();
        if !due.is_empty() {
            let targets: Vec<String> = due
                .iter()
                .filter(|r| {
                    self.rooms.get(&***r).is_some_and(|t| !t.via_wildcard)
                        || r.strip_suffix(":*")
                            .is_some_and(|s| self.patterns.contains_key(s))
                })
                .map(|r| r.to_string())
                .collect();
            for r in &due {
                self.resubscribe.remove(r);
            }
            if self.online && !targets.is_empty() {
                self.send_subscribe(&targets);
            }
        }
    }

    /// Sends one ack per room whose consumer moved since the last one.
    pub(super) fn flush_acks(&mut self) {
        self.ack_due = None;
        let acks = self.shared.take_acks();
        if !self.online {
            self.shared.restore_acks(acks);
            return;
        }
        for (room, sequence) in acks {
            if self.acked.get(&room) == Some(&sequence) {
                continue;
            }
            self.push(&ClientMessage::Ack(Ack {
                room: room.clone(),
                sequence,
            }));
            self.acked.insert(room, sequence);
        }
    }
}
