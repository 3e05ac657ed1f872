//! The ordering rule's tests: a few exact cases, then seeded simulations in
//! virtual time (arbitrary interleavings of live items, duplicates, reorders,
//! losses, lag, slow, failed and lost reads, resets) checked against the
//! invariants. A failing case prints its seed; `ZPS_SYNC_SEED=N cargo test -p
//! zps-model room_sync` replays it alone.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn drain(sync: &mut RoomSync<u64>) -> Vec<Delivery<u64>> {
    std::iter::from_fn(|| sync.poll_deliver()).collect()
}

fn events(d: &[Delivery<u64>]) -> Vec<u64> {
    d.iter()
        .filter_map(|d| match d {
            Delivery::Event(s, _) => Some(*s),
            Delivery::Notice(_) => None,
        })
        .collect()
}

fn cfg() -> SyncConfig {
    SyncConfig {
        max_buffer: 8,
        reorder_window: Duration::from_millis(10),
        ..SyncConfig::default()
    }
}

#[test]
fn in_order_live_items_go_straight_through() {
    let mut s = RoomSync::new(4, cfg());
    assert_eq!(s.on_live(5), Some(5));
    assert_eq!(s.on_live(6), Some(6));
    assert_eq!(s.on_live(6), None, "a duplicate is dropped");
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.take_tally().duplicates, 1);
    assert_eq!(s.last_delivered(), 6);
}

#[test]
fn a_hole_waits_its_window_then_is_read_bounded() {
    let t0 = Instant::now();
    let mut s = RoomSync::new(0, cfg());
    s.on_live(1);
    assert_eq!(s.on_live(4), None);
    assert_eq!(s.poll_fetch(t0), None);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_millis(10)));
    // A reordered item arrives within the window: it is handed out, the hole shrinks.
    assert_eq!(s.on_live(2), Some(2));
    let f = s.poll_fetch(t0 + Duration::from_millis(10)).expect("due");
    assert_eq!((f.after, f.through, f.reread), (2, Some(3), false));
    assert_eq!(
        s.poll_fetch(t0 + Duration::from_millis(11)),
        None,
        "one read at a time"
    );
    assert!(s.on_page(
        f.id,
        Page {
            items: vec![3],
            scanned_to: 3,
            has_more: false
        }
    ));
    let d = drain(&mut s);
    assert_eq!(
        d,
        vec![
            Delivery::Event(3, Source::History),
            Delivery::Event(4, Source::Live)
        ]
    );
    assert_eq!(s.poll_fetch(t0 + Duration::from_secs(1)), None);
    let tally = s.take_tally();
    assert_eq!((tally.gaps_opened, tally.gaps_closed), (1, 1));
}

#[test]
fn a_page_settles_what_it_does_not_contain() {
    let t0 = Instant::now();
    let mut s = RoomSync::catching_up(0, cfg());
    s.on_live(9);
    let f = s.poll_fetch(t0).expect("catch-up");
    assert_eq!((f.after, f.through), (0, None));
    // 1..=8 scanned: only 2 and 5 exist (the rest expired or were filtered).
    s.on_page(
        f.id,
        Page {
            items: vec![2, 5],
            scanned_to: 8,
            has_more: false,
        },
    );
    assert_eq!(events(&drain(&mut s)), vec![2, 5, 9]);
    assert!(!s.is_catching_up());
    assert_eq!(s.poll_fetch(t0), None);
}

#[test]
fn stale_answers_are_ignored_and_failed_reads_back_off() {
    let t0 = Instant::now();
    let mut s = RoomSync::catching_up(0, cfg());
    let f = s.poll_fetch(t0).expect("catch-up");
    let stale = FetchId(f.id.0 + 7);
    assert!(!s.on_page(
        stale,
        Page {
            items: vec![1],
            scanned_to: 1,
            has_more: false
        }
    ));
    assert!(s.on_fetch_failed(f.id, t0));
    assert_eq!(s.poll_fetch(t0), None, "waits the retry");
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_millis(50)));
    let again = s.poll_fetch(t0 + Duration::from_millis(50)).expect("retried");
    assert_eq!(again.after, 0);
}

#[test]
fn a_hole_reads_keep_not_filling_is_given_up_with_a_notice_in_place() {
    let t0 = Instant::now();
    let mut s = RoomSync::new(1, cfg());
    s.on_live(5);
    let mut now = t0;
    assert_eq!(s.poll_fetch(now), None, "the window starts");
    for _ in 0..STALLED_READS_LIMIT {
        now += Duration::from_millis(20);
        let f = s.poll_fetch(now).expect("read");
        // The history does not answer past the delivery point (a lagging replica).
        s.on_page(
            f.id,
            Page {
                items: vec![],
                scanned_to: f.after,
                has_more: false,
            },
        );
    }
    let d = drain(&mut s);
    assert_eq!(
        d,
        vec![
            Delivery::Notice(Notice {
                reason: DiscontinuityReason::PositionExpired,
                last_delivered: 1,
                earliest_sequence: 5,
                epoch: None
            }),
            Delivery::Event(5, Source::Live),
        ]
    );
}

#[test]
fn without_history_a_due_hole_is_a_notice() {
    let t0 = Instant::now();
    let mut s = RoomSync::new(
        0,
        SyncConfig {
            history: false,
            ..cfg()
        },
    );
    assert_eq!(s.on_live(1), Some(1));
    s.on_live(4);
    assert_eq!(s.poll_fetch(t0), None, "the window starts");
    assert_eq!(
        s.poll_fetch(t0 + Duration::from_millis(10)),
        None,
        "nothing to read: given up"
    );
    let d = drain(&mut s);
    assert!(matches!(&d[0], Delivery::Notice(n) if n.last_delivered == 1 && n.earliest_sequence == 4));
    assert_eq!(events(&d), vec![4]);
}

#[test]
fn a_reset_drops_the_old_history_and_notices_first() {
    let mut s = RoomSync::new(0, cfg());
    s.on_live(1);
    s.on_live(3);
    s.on_discontinuity(DiscontinuityReason::StreamReset, 1, Some("e2".into()));
    assert_eq!(s.on_live(1), None, "the notice goes first");
    let d = drain(&mut s);
    assert!(
        matches!(&d[0], Delivery::Notice(n) if n.last_delivered == 1 && n.epoch.as_deref() == Some("e2"))
    );
    assert_eq!(events(&d), vec![1]);
    assert_eq!(s.on_live(2), Some(2));
}

#[test]
fn overflow_reads_open_ended_from_the_delivery_point() {
    let t0 = Instant::now();
    let mut s = RoomSync::new(0, cfg());
    for seq in 2..=20 {
        s.on_live(seq);
    }
    assert_eq!(s.buffered(), 8);
    let f = s.poll_fetch(t0).expect("overflow reads at once");
    assert_eq!((f.after, f.through), (0, None));
    let mut out = Vec::new();
    let mut next = Some(f);
    while let Some(f) = next {
        // The history holds 1..=20; a page that does not fit the buffer is re-read.
        s.on_page(
            f.id,
            Page {
                items: (f.after + 1..=20).collect(),
                scanned_to: 20,
                has_more: false,
            },
        );
        out.extend(events(&drain(&mut s)));
        next = s.poll_fetch(t0);
    }
    assert_eq!(out, (1..=20).collect::<Vec<_>>());
}

#[test]
fn a_catch_up_is_not_done_before_the_known_head() {
    let t0 = Instant::now();
    let mut s = RoomSync::catching_up(0, cfg());
    s.expect_through(5);
    let f = s.poll_fetch(t0).expect("read");
    // A stale cached page that ends at 3.
    s.on_page(
        f.id,
        Page {
            items: vec![1, 2, 3],
            scanned_to: 3,
            has_more: false,
        },
    );
    let again = s.poll_fetch(t0).expect("read again");
    assert_eq!((again.after, again.reread), (3, true));
    s.on_page(
        again.id,
        Page {
            items: vec![4, 5],
            scanned_to: 5,
            has_more: false,
        },
    );
    assert_eq!(events(&drain(&mut s)), vec![1, 2, 3, 4, 5]);
    assert!(!s.is_catching_up());
}

fn info(epoch: &str, last: u64, earliest: u64) -> RoomInfo {
    RoomInfo {
        epoch: epoch.into(),
        last_sequence: last,
        earliest_sequence: earliest,
    }
}

#[test]
fn continuity_rules() {
    // Intact resume.
    assert_eq!(check_continuity(5, Some("e1"), &info("e1", 10, 1)), (5, None));
    assert_eq!(check_continuity(10, None, &info("e1", 10, 1)), (10, None));
    // Exactly at the retention edge is still intact.
    assert_eq!(check_continuity(4, None, &info("e1", 10, 5)), (4, None));
    // Older than retention.
    assert_eq!(
        check_continuity(3, None, &info("e1", 10, 5)),
        (4, Some(DiscontinuityReason::PositionExpired))
    );
    // Other epoch.
    assert_eq!(
        check_continuity(5, Some("e0"), &info("e1", 10, 1)),
        (0, Some(DiscontinuityReason::StreamReset))
    );
    // Ahead of the history: it must have been reset.
    assert_eq!(
        check_continuity(50, None, &info("e1", 10, 1)),
        (0, Some(DiscontinuityReason::StreamReset))
    );
    // Nothing retained at all, everything expired.
    assert_eq!(
        check_continuity(2, None, &info("e1", 10, 11)),
        (10, Some(DiscontinuityReason::PositionExpired))
    );
}

#[test]
fn an_unpositioned_room_holds_everything_until_it_knows_its_start() {
    let t0 = Instant::now();
    let mut s = RoomSync::unpositioned(cfg());
    assert_eq!(s.on_live(1), None);
    s.on_live(5);
    s.on_live(6);
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.poll_fetch(t0), None);
    s.start_after(4);
    assert_eq!(events(&drain(&mut s)), vec![5, 6]);
    assert_eq!(s.on_live(7), Some(7));
}

// ---- seeded simulations ----

/// Fault rates of one simulated run, drawn from its seed.
struct World {
    rng: StdRng,
    now: Instant,
    /// Sequences that exist in the history (the rest up to `head` never did).
    history: BTreeSet<u64>,
    head: u64,
    /// Live items on the wire (reordered by taking a random one of the first few);
    /// `None` is the "you lost something" signal a dropped item is always followed by.
    wire: VecDeque<Option<u64>>,
    reads: VecDeque<Fetch>,
    page_limit: usize,
    delivered: Vec<Delivery<u64>>,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let page_limit = rng.random_range(1..12);
        Self {
            rng,
            now: Instant::now(),
            history: BTreeSet::new(),
            head: 0,
            wire: VecDeque::new(),
            reads: VecDeque::new(),
            page_limit,
            delivered: Vec::new(),
        }
    }

    fn answer(&self, f: &Fetch) -> Page<u64> {
        let bound = f.through.unwrap_or(u64::MAX).min(self.head).max(f.after);
        let mut items: Vec<u64> = if bound > f.after {
            self.history.range(f.after + 1..=bound).copied().collect()
        } else {
            Vec::new()
        };
        let has_more = items.len() > self.page_limit;
        items.truncate(self.page_limit);
        let scanned_to = if has_more {
            items.last().copied().unwrap_or(bound)
        } else {
            bound
        };
        Page {
            items,
            scanned_to,
            has_more,
        }
    }

    fn pump(&mut self, s: &mut RoomSync<u64>) {
        self.delivered.extend(std::iter::from_fn(|| s.poll_deliver()));
        while let Some(f) = s.poll_fetch(self.now) {
            self.reads.push_back(f);
        }
        self.delivered.extend(std::iter::from_fn(|| s.poll_deliver()));
    }
}

/// One run: publishes with faults, then quiesces; returns what was delivered.
fn simulate(seed: u64, cfg: SyncConfig, lossy_reads: bool) -> (World, RoomSync<u64>) {
    let mut w = World::new(seed);
    let mut s = RoomSync::new(0, cfg);
    let events = w.rng.random_range(1..300u64);
    let mut published = 0;
    while published < events || !w.wire.is_empty() {
        match w.rng.random_range(0..100) {
            0..=39 if published < events => {
                // Publish; sometimes a sequence never exists (an aborted write).
                w.head += 1;
                published += 1;
                if w.rng.random_ratio(1, 15) {
                    continue;
                }
                w.history.insert(w.head);
                match w.rng.random_range(0..20) {
                    0 => w.wire.push_back(None),                      // lost on the wire
                    1 => w.wire.extend([Some(w.head), Some(w.head)]), // doubled
                    _ => w.wire.push_back(Some(w.head)),
                }
            }
            0..=59 if !w.wire.is_empty() => {
                let i = w.rng.random_range(0..w.wire.len().min(4));
                match w.wire.remove(i) {
                    Some(Some(seq)) => {
                        if let Some(seq) = s.on_live(seq) {
                            w.delivered.push(Delivery::Event(seq, Source::Live));
                        }
                    }
                    Some(None) => s.on_lagged(),
                    None => {}
                }
            }
            60..=74 if !w.reads.is_empty() => {
                let f = w.reads.pop_front().expect("checked");
                match w.rng.random_range(0..10) {
                    0 if lossy_reads => {} // the answer is lost: the timeout re-asks
                    1 => {
                        s.on_fetch_failed(f.id, w.now);
                    }
                    _ => {
                        let page = w.answer(&f);
                        s.on_page(f.id, page);
                    }
                }
            }
            75..=77 => s.on_lagged(),
            _ => w.now += Duration::from_millis(w.rng.random_range(1..40)),
        }
        w.pump(&mut s);
    }
    // Quiesce: answer every read, let every timer fire.
    for _ in 0..10_000 {
        w.pump(&mut s);
        if let Some(f) = w.reads.pop_front() {
            let page = w.answer(&f);
            s.on_page(f.id, page);
            continue;
        }
        match s.poll_timeout() {
            Some(t) => w.now = w.now.max(t),
            None => break,
        }
    }
    w.pump(&mut s);
    (w, s)
}

fn seeds() -> impl Strategy<Value = u64> {
    match std::env::var("ZPS_SYNC_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => Just(seed).boxed(),
        None => any::<u64>().boxed(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    /// A complete history and any live faults: every existing sequence exactly once,
    /// in order, and no notice (nothing was ever lost for good).
    #[test]
    fn complete_history_delivers_everything_once_in_order(seed in seeds(), lossy in any::<bool>(), window in 0u64..30) {
        let cfg = SyncConfig {
            max_buffer: 16,
            reorder_window: Duration::from_millis(window),
            fetch_spacing: Duration::from_millis(window / 2),
            fetch_timeout: lossy.then_some(Duration::from_millis(200)),
            ..SyncConfig::default()
        };
        let (w, s) = simulate(seed, cfg, lossy);
        let expected: Vec<u64> = w.history.iter().copied().collect();
        prop_assert_eq!(events(&w.delivered), expected, "seed {}", seed);
        prop_assert!(w.delivered.iter().all(|d| matches!(d, Delivery::Event(..))), "seed {}: {:?}", seed, w.delivered);
        prop_assert!(s.last_delivered() >= w.history.last().copied().unwrap_or(0), "seed {}", seed);
        prop_assert_eq!(s.buffered(), 0);
    }

    /// Without history: strictly increasing, never twice, and every sequence that
    /// was published but not delivered lies behind a notice that covers it.
    #[test]
    fn without_history_every_loss_is_announced(seed in seeds()) {
        let cfg = SyncConfig { max_buffer: 4, history: false, reorder_window: Duration::from_millis(5), ..SyncConfig::default() };
        let (w, _) = simulate(seed, cfg, false);
        let mut last = 0;
        for d in &w.delivered {
            match d {
                Delivery::Event(seq, _) => {
                    prop_assert!(*seq > last, "seed {}: {} after {}", seed, seq, last);
                    for missing in last + 1..*seq {
                        prop_assert!(!w.history.contains(&missing), "seed {}: {} skipped silently", seed, missing);
                    }
                    last = *seq;
                }
                Delivery::Notice(n) => {
                    prop_assert_eq!(n.last_delivered, last, "seed {}", seed);
                    prop_assert!(n.earliest_sequence > last);
                    last = n.earliest_sequence - 1;
                }
            }
        }
    }

    /// A reset in the middle: the old history's events before the notice, the new
    /// one's after it, each in order and once.
    #[test]
    fn a_reset_mid_stream_restarts_cleanly(seed in seeds(), cut in 1u64..50, after in 1u64..50) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut s = RoomSync::new(0, cfg());
        let mut out = Vec::new();
        for seq in 1..=cut {
            if rng.random_ratio(1, 4) {
                continue; // lost: stays buffered behind its hole
            }
            if let Some(x) = s.on_live(seq) {
                out.push(Delivery::Event(x, Source::Live));
            }
            out.extend(drain(&mut s));
        }
        s.on_discontinuity(DiscontinuityReason::StreamReset, 1, None);
        for seq in 1..=after {
            if let Some(x) = s.on_live(seq) {
                out.push(Delivery::Event(x, Source::Live));
            }
            out.extend(drain(&mut s));
        }
        let notice = out.iter().position(|d| matches!(d, Delivery::Notice(_))).expect("a notice");
        let old = events(&out[..notice]);
        prop_assert!(old.windows(2).all(|p| p[1] == p[0] + 1), "{:?}", old);
        prop_assert_eq!(events(&out[notice + 1..]), (1..=after).collect::<Vec<_>>());
    }
}
