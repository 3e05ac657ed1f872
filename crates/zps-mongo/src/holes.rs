//! Judging holes in a room's history: sequences that were consumed from the counter
//! but hold no document.
//!
//! A publish takes its sequence (`findOneAndUpdate $inc`) and then inserts the event, so
//! for a moment every fresh sequence is a hole; a publish that crashed in between leaves
//! one for good. Readers must neither skip the first kind (the event is about to land)
//! nor wait forever on the second. Every stored document carries `prevAt`, the time the
//! room's previous sequence was allocated, so any hole before it was allocated no later
//! than that: its age is known without a per-sequence log. This module decides, purely,
//! what to do with each hole of a scanned range:
//!
//! - younger than the grace: **wait** (it may still be filled);
//! - between the grace and the horizon (the purge delay): **claim** it by inserting a
//!   skip record — the unique `{room, sequence}` index makes the claim and a late insert
//!   mutually exclusive, so an event can never land behind a reader that skipped it;
//! - older than the horizon: **final** (expired events are purged only after the purge
//!   delay, so old holes are pruned history, and publishers give up on a sequence they
//!   could not insert within half of it).

/// One stored document of the scanned range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Its sequence.
    pub(crate) seq: u64,
    /// When the room's previous sequence was allocated (ms), if recorded.
    pub(crate) prev_at: Option<i64>,
}

/// How long holes are waited for and when they are final.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HolePolicy {
    /// Wait this long (ms) for a hole to fill before claiming it.
    pub(crate) grace_ms: i64,
    /// Holes older than this (ms) are final without a claim.
    pub(crate) horizon_ms: i64,
}

/// What to do with the holes of a range.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct HoleScan {
    /// Holes to claim with a skip record (all before `young`), with their age bound (ms).
    pub(crate) claim: Vec<(u64, i64)>,
    /// The first hole that may still fill: its sequence and when it becomes claimable (ms).
    pub(crate) young: Option<(u64, i64)>,
}

/// Judges every hole in `(from, to]` given the stored `slots` of that range (sorted by
/// sequence), the bound for holes after the last slot (`tail_bound`: the next stored
/// document's `prevAt`, else the counter's last allocation time) and the time `now`.
pub(crate) fn scan_holes(
    from: u64,
    to: u64,
    slots: &[Slot],
    tail_bound: i64,
    now: i64,
    policy: HolePolicy,
) -> HoleScan {
    let mut scan = HoleScan::default();
    let mut expected = from.saturating_add(1);
    let judge = |first: u64, last: u64, bound: i64, scan: &mut HoleScan| -> bool {
        let age = now.saturating_sub(bound);
        if age >= policy.horizon_ms {
            return true;
        }
        if age >= policy.grace_ms {
            scan.claim.extend((first..=last).map(|s| (s, bound)));
            return true;
        }
        scan.young = Some((first, bound.saturating_add(policy.grace_ms)));
        false
    };
    for slot in slots.iter().filter(|s| s.seq > from && s.seq <= to) {
        if slot.seq > expected {
            // A document without `prevAt` was not written by this provider's publish path;
            // nothing bounds its neighbours, so treat them as old.
            let bound = slot.prev_at.unwrap_or(i64::MIN / 2);
            if !judge(expected, slot.seq - 1, bound, &mut scan) {
                return scan;
            }
        }
        expected = expected.max(slot.seq.saturating_add(1));
    }
    if expected <= to {
        judge(expected, to, tail_bound, &mut scan);
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: HolePolicy = HolePolicy {
        grace_ms: 2_000,
        horizon_ms: 300_000,
    };
    const NOW: i64 = 1_000_000;

    fn slot(seq: u64, prev_at: i64) -> Slot {
        Slot {
            seq,
            prev_at: Some(prev_at),
        }
    }

    #[test]
    fn no_holes_nothing_to_do() {
        let slots = [slot(1, NOW), slot(2, NOW), slot(3, NOW)];
        assert_eq!(scan_holes(0, 3, &slots, NOW, NOW, POLICY), HoleScan::default());
    }

    #[test]
    fn a_fresh_hole_is_waited_for() {
        // 2 was just allocated (3's prevAt is 10 ms ago) and is not stored yet.
        let slots = [slot(1, NOW - 50), slot(3, NOW - 10)];
        let scan = scan_holes(0, 3, &slots, NOW, NOW, POLICY);
        assert_eq!(scan.young, Some((2, NOW - 10 + 2_000)));
        assert!(scan.claim.is_empty());
    }

    #[test]
    fn a_stale_hole_is_claimed_and_scanning_goes_on() {
        // 2 was allocated 5 s ago and never stored; 5 is in flight right now.
        let slots = [slot(1, NOW - 6_000), slot(3, NOW - 5_000), slot(4, NOW - 4_000)];
        let scan = scan_holes(0, 5, &slots, NOW - 5, NOW, POLICY);
        assert_eq!(scan.claim, vec![(2, NOW - 5_000)]);
        assert_eq!(scan.young, Some((5, NOW - 5 + 2_000)));
    }

    #[test]
    fn pruned_history_is_final() {
        // Sequences 1..=99 expired and were purged long ago; 100 was stored after an idle
        // hour, so its prevAt is the time 99 was allocated.
        let slots = [slot(100, NOW - 3_600_000)];
        assert_eq!(scan_holes(0, 100, &slots, NOW, NOW, POLICY), HoleScan::default());
    }

    #[test]
    fn holes_at_the_head_use_the_tail_bound() {
        let slots = [slot(1, NOW - 10_000)];
        // 2 and 3 allocated (counter at 3, last allocation 1 s ago), nothing stored yet.
        let young = scan_holes(0, 3, &slots, NOW - 1_000, NOW, POLICY);
        assert_eq!(young.young, Some((2, NOW - 1_000 + 2_000)));
        // The same 10 s later: a crashed publisher; both are claimed.
        let stale = scan_holes(0, 3, &slots, NOW - 11_000, NOW, POLICY);
        assert_eq!(stale.claim, vec![(2, NOW - 11_000), (3, NOW - 11_000)]);
        assert_eq!(stale.young, None);
    }

    #[test]
    fn range_bounds_are_respected() {
        let slots = [slot(3, NOW), slot(4, NOW), slot(9, NOW)];
        // (2, 4]: both present.
        assert_eq!(scan_holes(2, 4, &slots, NOW, NOW, POLICY), HoleScan::default());
        // (4, 8]: 5..=8 are holes before 9, bounded by the tail bound (9 is outside).
        let scan = scan_holes(4, 8, &slots, NOW - 100_000, NOW, POLICY);
        assert_eq!(
            scan.claim.iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![5, 6, 7, 8]
        );
    }

    #[test]
    fn documents_without_prev_at_make_their_holes_old() {
        let slots = [Slot {
            seq: 5,
            prev_at: None,
        }];
        assert_eq!(scan_holes(0, 5, &slots, NOW, NOW, POLICY), HoleScan::default());
    }
}
