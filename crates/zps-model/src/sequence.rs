//! Per-room ordering: the rule that turns "events arrive somehow" into "each
//! sequence is delivered once, in order".
//!
//! [`SequenceTracker`] is pure (no I/O, no clock): the engine feeds it live
//! events and history pages and asks what is ready and what is missing. It is
//! what makes the catch-up → live switch gap-free and duplicate-free, and what
//! lets out-of-order live paths (hybrid) be repaired from storage.

use std::collections::BTreeMap;

use crate::envelope::Sequenced;

/// What happened to an offered item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// It is (or will be, once earlier ones arrive) delivered.
    Accepted,
    /// Already delivered or already buffered: dropped.
    Duplicate,
    /// Buffered behind a hole `[from, to]` that must be filled first.
    Gap {
        /// First missing sequence.
        from: u64,
        /// Last missing sequence.
        to: u64,
    },
    /// The out-of-order buffer is full; the item was dropped (re-read it from history).
    Overflow,
}

/// Orders one room's items by sequence with a bounded out-of-order buffer.
#[derive(Debug, Clone)]
pub struct SequenceTracker<T> {
    next: u64,
    pending: BTreeMap<u64, T>,
    max_pending: usize,
    /// Every sequence up to here that is not buffered is known never to come
    /// (history said so): holes below it are stepped over, buffered items kept.
    settled: u64,
}

impl<T: Sequenced> SequenceTracker<T> {
    /// A tracker that has delivered everything up to `last_delivered`.
    pub fn new(last_delivered: u64, max_pending: usize) -> Self {
        Self {
            next: last_delivered.saturating_add(1),
            pending: BTreeMap::new(),
            max_pending: max_pending.max(1),
            settled: 0,
        }
    }

    /// The highest sequence handed out so far.
    pub fn last_delivered(&self) -> u64 {
        self.next - 1
    }

    /// The sequence that must come next.
    pub fn next_expected(&self) -> u64 {
        self.next
    }

    /// How many items wait behind a hole.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The fast path of an in-order stream: when `item` is exactly the next one (and
    /// so fills whatever hole comes first), take it (the cursor advances) and hand it
    /// back for delivery; otherwise give it back untouched for
    /// [`SequenceTracker::offer`]. Buffered items may be ready after it: pop them.
    pub fn take_next(&mut self, item: T) -> Result<T, T> {
        let seq = item.sequence();
        if seq == self.next && self.pending.first_key_value().is_none_or(|(&k, _)| k > seq) {
            self.next += 1;
            self.step_over_settled();
            Ok(item)
        } else {
            Err(item)
        }
    }

    /// Offers an item from any source (live, replay, gap fill).
    pub fn offer(&mut self, item: T) -> Offer {
        self.offer_within(item, self.max_pending)
    }

    /// Offers an item that the bound does not apply to (a history page's, whose
    /// size the reader already bounds).
    pub fn offer_unbounded(&mut self, item: T) -> Offer {
        self.offer_within(item, usize::MAX)
    }

    fn offer_within(&mut self, item: T, max_pending: usize) -> Offer {
        let seq = item.sequence();
        if seq < self.next || self.pending.contains_key(&seq) {
            return Offer::Duplicate;
        }
        if seq > self.next && self.pending.len() >= max_pending {
            return Offer::Overflow;
        }
        self.pending.insert(seq, item);
        self.step_over_settled();
        match self.missing() {
            Some((from, to)) => Offer::Gap { from, to },
            None => Offer::Accepted,
        }
    }

    /// Whether the next in-order item has arrived.
    pub fn has_ready(&self) -> bool {
        self.pending
            .first_key_value()
            .is_some_and(|(&k, _)| k == self.next)
    }

    /// The next in-order item, if it has arrived.
    pub fn pop_ready(&mut self) -> Option<T> {
        let entry = self.pending.first_entry()?;
        if *entry.key() != self.next {
            return None;
        }
        self.next += 1;
        let item = entry.remove();
        self.step_over_settled();
        Some(item)
    }

    /// Declares that every sequence up to `sequence` that is not buffered now will
    /// never arrive (a history page scanned that far): the holes below it are stepped
    /// over as delivery reaches them, and nothing buffered is dropped.
    pub fn settle_through(&mut self, sequence: u64) {
        self.settled = self.settled.max(sequence);
        self.step_over_settled();
    }

    /// Moves the cursor over settled holes, never past a buffered item.
    fn step_over_settled(&mut self) {
        if self.next > self.settled {
            return;
        }
        let first = self.pending.first_key_value().map(|(&k, _)| k);
        self.next = match first {
            Some(k) if k <= self.settled + 1 => k.max(self.next),
            _ => self.settled + 1,
        };
    }

    /// The hole in front of the buffered items, if any.
    pub fn missing(&self) -> Option<(u64, u64)> {
        let (&first, _) = self.pending.first_key_value()?;
        (first > self.next).then(|| (self.next, first - 1))
    }

    /// Where delivery would stand after handing out every ready item, and the first
    /// hole after that (`[from, to]`, neither buffered nor settled). Walks the ready
    /// run, so it costs one step per ready item.
    pub fn frontier(&self) -> (u64, Option<(u64, u64)>) {
        let mut expected = self.next;
        for &k in self.pending.keys() {
            if expected <= self.settled {
                expected = expected.max(k.min(self.settled + 1));
            }
            if k > expected {
                return (expected - 1, Some((expected, k - 1)));
            }
            expected = k + 1;
        }
        (expected.max(self.settled + 1) - 1, None)
    }

    /// Declares everything up to `sequence` settled (filtered, expired or skipped on
    /// purpose): the cursor jumps there and buffered items at or below it are dropped.
    /// Returns how many buffered items were dropped.
    pub fn skip_through(&mut self, sequence: u64) -> usize {
        if sequence < self.next {
            return 0;
        }
        self.next = sequence + 1;
        let keep = self.pending.split_off(&self.next);
        let dropped = self.pending.len();
        self.pending = keep;
        self.step_over_settled();
        dropped
    }

    /// Starts over after a history reset: nothing delivered in the new epoch yet.
    pub fn reset(&mut self, last_delivered: u64) {
        self.next = last_delivered.saturating_add(1);
        self.pending.clear();
        self.settled = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Item(u64);
    impl Sequenced for Item {
        fn sequence(&self) -> u64 {
            self.0
        }
    }

    fn drain(t: &mut SequenceTracker<Item>) -> Vec<u64> {
        std::iter::from_fn(|| t.pop_ready()).map(|i| i.0).collect()
    }

    #[test]
    fn in_order_items_flow_through() {
        let mut t = SequenceTracker::new(0, 8);
        assert_eq!(t.offer(Item(1)), Offer::Accepted);
        assert_eq!(t.offer(Item(2)), Offer::Accepted);
        assert_eq!(drain(&mut t), vec![1, 2]);
        assert_eq!(t.last_delivered(), 2);
    }

    #[test]
    fn take_next_is_only_for_the_exact_next_item() {
        let mut t = SequenceTracker::new(3, 8);
        assert_eq!(t.take_next(Item(4)), Ok(Item(4)));
        assert_eq!(t.take_next(Item(4)), Err(Item(4)), "already delivered");
        assert_eq!(t.take_next(Item(6)), Err(Item(6)), "ahead of the cursor");
        t.offer(Item(7));
        assert_eq!(t.take_next(Item(5)), Ok(Item(5)), "fills the hole in front of 7");
        assert_eq!(t.take_next(Item(7)), Err(Item(7)), "already buffered");
        assert_eq!(t.offer(Item(6)), Offer::Accepted);
        assert_eq!(drain(&mut t), vec![6, 7]);
        assert_eq!(t.last_delivered(), 7);
    }

    #[test]
    fn settled_holes_are_stepped_over_and_buffered_items_kept() {
        let mut t = SequenceTracker::new(0, 8);
        t.offer(Item(3));
        t.offer(Item(9));
        assert_eq!(t.frontier(), (0, Some((1, 2))));
        // History scanned through 6: 1, 2, 4, 5, 6 do not exist; 3 is kept.
        t.settle_through(6);
        assert_eq!(t.frontier(), (6, Some((7, 8))));
        assert_eq!(drain(&mut t), vec![3]);
        assert_eq!(t.next_expected(), 7);
        assert_eq!(t.missing(), Some((7, 8)));
        t.settle_through(8);
        assert_eq!(drain(&mut t), vec![9]);
        assert_eq!(t.frontier(), (9, None));
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut t = SequenceTracker::new(5, 8);
        assert_eq!(t.offer(Item(5)), Offer::Duplicate);
        assert_eq!(t.offer(Item(7)), Offer::Gap { from: 6, to: 6 });
        assert_eq!(t.offer(Item(7)), Offer::Duplicate);
        assert_eq!(drain(&mut t), Vec::<u64>::new());
        assert_eq!(t.offer(Item(6)), Offer::Accepted);
        assert_eq!(drain(&mut t), vec![6, 7]);
    }

    #[test]
    fn gap_reports_the_hole_and_overflow_is_bounded() {
        let mut t = SequenceTracker::new(0, 2);
        assert_eq!(t.offer(Item(4)), Offer::Gap { from: 1, to: 3 });
        assert_eq!(t.offer(Item(3)), Offer::Gap { from: 1, to: 2 });
        assert_eq!(t.offer(Item(9)), Offer::Overflow);
        assert_eq!(t.pending_len(), 2);
        // The next expected item is always accepted, even with a full buffer.
        assert_eq!(t.offer(Item(1)), Offer::Accepted);
        assert_eq!(drain(&mut t), vec![1]);
        assert_eq!(t.missing(), Some((2, 2)));
    }

    #[test]
    fn skip_through_jumps_and_drops_stale_buffer() {
        let mut t = SequenceTracker::new(0, 8);
        t.offer(Item(3));
        t.offer(Item(6));
        assert_eq!(t.skip_through(4), 1);
        assert_eq!(t.next_expected(), 5);
        assert_eq!(t.missing(), Some((5, 5)));
        assert_eq!(t.skip_through(2), 0, "never moves back");
        t.offer(Item(5));
        assert_eq!(drain(&mut t), vec![5, 6]);
    }

    #[test]
    fn reset_starts_a_new_epoch() {
        let mut t = SequenceTracker::new(100, 8);
        t.offer(Item(105));
        t.reset(0);
        assert_eq!(t.pending_len(), 0);
        assert_eq!(t.offer(Item(1)), Offer::Accepted);
        assert_eq!(drain(&mut t), vec![1]);
    }

    proptest! {
        /// Any arrival order with any duplication delivers 1..=n exactly once, in order,
        /// as long as the buffer can hold the reordering.
        #[test]
        fn any_permutation_with_duplicates_is_delivered_once_in_order(
            n in 1u64..200,
            seed in any::<u64>(),
            dup_every in 1usize..7,
        ) {
            use rand::{SeedableRng, seq::SliceRandom};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut arrivals: Vec<u64> = (1..=n).collect();
            let dups: Vec<u64> = arrivals.iter().copied().step_by(dup_every).collect();
            arrivals.extend(dups);
            arrivals.shuffle(&mut rng);
            let mut t = SequenceTracker::new(0, n as usize + 1);
            let mut out = Vec::new();
            for s in arrivals {
                t.offer(Item(s));
                out.extend(drain(&mut t));
            }
            prop_assert_eq!(out, (1..=n).collect::<Vec<_>>());
        }

        /// With a small buffer, whatever overflows is recovered by re-offering (as a
        /// history read would), and nothing is ever delivered twice or out of order.
        #[test]
        fn overflow_plus_refill_still_converges(n in 1u64..120, seed in any::<u64>(), cap in 1usize..8) {
            use rand::{SeedableRng, seq::SliceRandom};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut arrivals: Vec<u64> = (1..=n).collect();
            arrivals.shuffle(&mut rng);
            let mut t = SequenceTracker::new(0, cap);
            let mut out = Vec::new();
            for s in arrivals {
                t.offer(Item(s));
                out.extend(drain(&mut t));
            }
            // "History refill": offer the missing range in order.
            for s in t.next_expected()..=n {
                t.offer(Item(s));
                out.extend(drain(&mut t));
            }
            prop_assert_eq!(out, (1..=n).collect::<Vec<_>>());
        }
    }
}
