//! The independent checker: what publishers were told (acknowledged publishes)
//! against what each subscriber's application received. I/O-free: fed records,
//! returns a verdict.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

/// One item a subscriber's application received, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// An event.
    Event {
        /// The room.
        room: String,
        /// Its sequence.
        sequence: u64,
        /// Its id.
        id: String,
    },
    /// An explicit discontinuity: sequences in `(last_delivered, earliest)` will never come.
    Discontinuity {
        /// The room.
        room: String,
        /// `stream_reset` or `position_expired`.
        reason: String,
        /// The last sequence delivered before it.
        last_delivered: u64,
        /// The first sequence that may come next.
        earliest: u64,
    },
}

/// Everything recorded during one scenario run.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Room → sequence → id, for every publish a publisher got an answer to.
    pub acked: HashMap<String, BTreeMap<u64, String>>,
    /// Per subscriber: what its application received, in order.
    pub subscribers: Vec<(String, Vec<Seen>)>,
    /// The rooms of subscribers that did not subscribe to every room (by name).
    pub rooms_of: HashMap<String, HashSet<String>>,
}

impl History {
    /// Records an acknowledged publish.
    pub fn ack(&mut self, room: &str, sequence: u64, id: &str) {
        self.acked
            .entry(room.to_owned())
            .or_default()
            .insert(sequence, id.to_owned());
    }
}

/// What the checker found.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Verdict {
    /// Acknowledged publishes.
    pub acked: u64,
    /// Events received, over every subscriber.
    pub delivered: u64,
    /// (subscriber, acknowledged event) pairs never received and not covered by a discontinuity.
    pub lost: u64,
    /// Events a subscriber received more than once (same sequence or same id).
    pub duplicated: u64,
    /// Events received after a higher sequence of the same room.
    pub out_of_order: u64,
    /// Events whose id differs from the id acknowledged for that sequence.
    pub mismatched: u64,
    /// Two acknowledgements naming the same id with different sequences.
    pub conflicting_acks: u64,
    /// Discontinuities by reason.
    pub discontinuities: BTreeMap<String, u64>,
    /// The first few problems, for the report.
    pub examples: Vec<String>,
}

impl Verdict {
    /// Nothing lost, duplicated, reordered or mismatched.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.mismatched == 0
            && self.conflicting_acks == 0
    }

    fn note(&mut self, what: String) {
        if self.examples.len() < 10 {
            self.examples.push(what);
        }
    }
}

/// Checks every subscriber, each subscribed from the start to its rooms
/// ([`History::rooms_of`]; every acknowledged room when not listed there).
pub fn check(history: &History) -> Verdict {
    let mut v = Verdict {
        acked: history.acked.values().map(|m| m.len() as u64).sum(),
        ..Verdict::default()
    };
    // The same id acknowledged at two sequences would be a stored duplicate.
    for (room, by_seq) in &history.acked {
        let mut ids: HashMap<&str, u64> = HashMap::new();
        for (seq, id) in by_seq {
            if let Some(first) = ids.insert(id, *seq) {
                v.conflicting_acks += 1;
                v.note(format!("{room}: id {id} acknowledged at {first} and {seq}"));
            }
        }
    }
    for (name, seen) in &history.subscribers {
        let mut last: HashMap<&str, u64> = HashMap::new();
        let mut got: HashMap<&str, HashSet<u64>> = HashMap::new();
        let mut ids: HashSet<(&str, &str)> = HashSet::new();
        let mut excused: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
        for item in seen {
            match item {
                Seen::Event { room, sequence, id } => {
                    v.delivered += 1;
                    let prev = last.get(room.as_str()).copied().unwrap_or(0);
                    if !got.entry(room).or_default().insert(*sequence) || !ids.insert((room, id)) {
                        v.duplicated += 1;
                        v.note(format!("{name}: {room} #{sequence} ({id}) received twice"));
                    } else if *sequence <= prev {
                        v.out_of_order += 1;
                        v.note(format!("{name}: {room} #{sequence} after #{prev}"));
                    }
                    last.insert(room, prev.max(*sequence));
                    if let Some(acked_id) = history.acked.get(room).and_then(|m| m.get(sequence))
                        && acked_id != id
                    {
                        v.mismatched += 1;
                        v.note(format!(
                            "{name}: {room} #{sequence} is {id}, acknowledged as {acked_id}"
                        ));
                    }
                }
                Seen::Discontinuity {
                    room,
                    reason,
                    last_delivered,
                    earliest,
                } => {
                    *v.discontinuities.entry(reason.clone()).or_default() += 1;
                    excused
                        .entry(room)
                        .or_default()
                        .push((*last_delivered, *earliest));
                    if reason == "stream_reset" {
                        // Old sequences mean nothing now: start counting again.
                        last.insert(room, earliest.saturating_sub(1));
                        got.remove(room.as_str());
                    }
                }
            }
        }
        let mine = history.rooms_of.get(name);
        for (room, by_seq) in &history.acked {
            if mine.is_some_and(|rooms| !rooms.contains(room)) {
                continue;
            }
            let received = got.get(room.as_str());
            for (seq, id) in by_seq {
                let covered = excused
                    .get(room.as_str())
                    .is_some_and(|gaps| gaps.iter().any(|(after, before)| seq > after && seq < before));
                if !covered && !received.is_some_and(|r| r.contains(seq)) {
                    v.lost += 1;
                    v.note(format!(
                        "{name}: {room} #{seq} ({id}) acknowledged, never received"
                    ));
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(room: &str, sequence: u64, id: &str) -> Seen {
        Seen::Event {
            room: room.into(),
            sequence,
            id: id.into(),
        }
    }

    fn history(seen: Vec<Seen>) -> History {
        let mut h = History::default();
        for (s, id) in [(1, "a"), (2, "b"), (3, "c")] {
            h.ack("r:1", s, id);
        }
        h.subscribers.push(("s".into(), seen));
        h
    }

    #[test]
    fn a_subscriber_is_held_only_to_its_own_rooms() {
        let mut h = history(vec![ev("r:1", 1, "a"), ev("r:1", 2, "b"), ev("r:1", 3, "c")]);
        h.ack("r:2", 1, "x");
        assert_eq!(check(&h).lost, 1, "subscribed to every room: r:2 #1 is missing");
        h.rooms_of.insert("s".into(), HashSet::from(["r:1".to_owned()]));
        assert!(check(&h).clean(), "{:?}", check(&h));
        h.rooms_of
            .insert("s".into(), HashSet::from(["r:1".to_owned(), "r:2".to_owned()]));
        assert_eq!(check(&h).lost, 1);
    }

    #[test]
    fn everything_once_in_order_is_clean() {
        let v = check(&history(vec![
            ev("r:1", 1, "a"),
            ev("r:1", 2, "b"),
            ev("r:1", 3, "c"),
        ]));
        assert!(v.clean(), "{v:?}");
        assert_eq!((v.acked, v.delivered), (3, 3));
    }

    #[test]
    fn loss_duplicates_reordering_and_mismatches_are_counted() {
        let v = check(&history(vec![
            ev("r:1", 1, "a"),
            ev("r:1", 1, "a"),
            ev("r:1", 3, "c"),
        ]));
        assert_eq!((v.lost, v.duplicated), (1, 1), "{v:?}");
        let v = check(&history(vec![
            ev("r:1", 2, "b"),
            ev("r:1", 1, "a"),
            ev("r:1", 3, "c"),
        ]));
        assert_eq!((v.out_of_order, v.lost), (1, 0), "{v:?}");
        let v = check(&history(vec![
            ev("r:1", 1, "a"),
            ev("r:1", 2, "x"),
            ev("r:1", 3, "c"),
        ]));
        assert_eq!(v.mismatched, 1, "{v:?}");
        // An unacknowledged event (stored, answer lost) may arrive once; twice is a duplicate.
        let v = check(&history(vec![
            ev("r:1", 1, "a"),
            ev("r:1", 2, "b"),
            ev("r:1", 3, "c"),
            ev("r:1", 4, "d"),
        ]));
        assert!(v.clean(), "{v:?}");
        let v = check(&history(vec![
            ev("r:1", 1, "a"),
            ev("r:1", 2, "b"),
            ev("r:1", 3, "c"),
            ev("r:1", 5, "c"),
        ]));
        assert_eq!(v.duplicated, 1, "same id at another sequence: {v:?}");
    }

    #[test]
    fn a_discontinuity_excuses_exactly_its_range() {
        let gap = Seen::Discontinuity {
            room: "r:1".into(),
            reason: "position_expired".into(),
            last_delivered: 0,
            earliest: 3,
        };
        let v = check(&history(vec![gap.clone(), ev("r:1", 3, "c")]));
        assert!(v.clean(), "{v:?}");
        assert_eq!(v.discontinuities.get("position_expired"), Some(&1));
        let v = check(&history(vec![gap, ev("r:1", 2, "b")]));
        assert_eq!(v.lost, 1, "#3 is not excused: {v:?}");
    }

    #[test]
    fn conflicting_acknowledgements_are_reported() {
        let mut h = history(vec![ev("r:1", 1, "a"), ev("r:1", 2, "b"), ev("r:1", 3, "c")]);
        h.ack("r:1", 4, "a");
        h.subscribers[0].1.push(ev("r:1", 4, "a"));
        let v = check(&h);
        assert_eq!(v.conflicting_acks, 1, "{v:?}");
        assert!(!v.clean());
    }
}
