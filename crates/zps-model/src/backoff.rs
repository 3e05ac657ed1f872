//! Reconnect delays, one implementation for every reconnecting part: the
//! client's sockets and HTTP retries (full jitter, so a thousand clients cut
//! off by the same gateway restart do not come back in lockstep) and the
//! providers' listener connections (the doubling ceiling).

use std::time::Duration;

use rand::Rng;

/// When to reconnect and when to give up.
///
/// ```
/// use std::time::Duration;
/// use rand::SeedableRng;
/// use zps_model::Backoff;
///
/// let b = Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(2), max_attempts: None };
/// assert_eq!(b.ceiling(3), Duration::from_millis(800));
/// let d = b.delay(3, &mut rand::rngs::StdRng::seed_from_u64(1));
/// assert!(d <= Duration::from_millis(800));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first retry's delay (`base * 2^0`).
    pub base: Duration,
    /// No delay ever exceeds this.
    pub cap: Duration,
    /// Consecutive failed attempts before the client stops (`None` = retry forever).
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The largest delay retry number `n` (0-based) may wait: `min(cap, base * 2^n)`,
    /// without overflowing for any `n`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// A uniformly random delay in `[0, ceiling(n)]` ("full jitter").
    pub fn delay<R: Rng + ?Sized>(&self, n: u32, rng: &mut R) -> Duration {
        let ceiling = u64::try_from(self.ceiling(n).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=ceiling))
    }

    /// Whether attempt number `attempt` (1-based) is still allowed.
    pub fn allows(&self, attempt: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempt <= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn delays_stay_within_full_jitter_bounds() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            max_attempts: None,
        };
        let mut rng = StdRng::seed_from_u64(42);
        for n in 0..80u32 {
            let ceiling = b.ceiling(n);
            let expected = Duration::from_millis(100)
                .checked_mul(2u32.saturating_pow(n))
                .map_or(b.cap, |d| d.min(b.cap));
            assert_eq!(ceiling, expected, "attempt {n}");
            let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
            for _ in 0..500 {
                let d = b.delay(n, &mut rng);
                assert!(d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
                lo = lo.min(d);
                hi = hi.max(d);
            }
            // Full jitter: the samples spread over the whole range, not just near the top.
            assert!(lo < ceiling / 4, "attempt {n}: min {lo:?} of {ceiling:?}");
            assert!(hi > ceiling * 3 / 4, "attempt {n}: max {hi:?} of {ceiling:?}");
        }
    }

    #[test]
    fn ceiling_grows_then_caps_and_never_overflows() {
        let b = Backoff {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
            max_attempts: Some(3),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(250));
        assert_eq!(b.ceiling(1), Duration::from_millis(500));
        assert_eq!(b.ceiling(6), Duration::from_secs(16));
        assert_eq!(b.ceiling(7), Duration::from_secs(30));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
        let huge = Backoff {
            base: Duration::MAX,
            cap: Duration::MAX,
            max_attempts: None,
        };
        assert_eq!(huge.ceiling(40), Duration::MAX);
        let _ = huge.delay(40, &mut StdRng::seed_from_u64(1));
        assert!(b.allows(3));
        assert!(!b.allows(4));
        assert!(Backoff::default().allows(u32::MAX));
    }

    #[test]
    fn same_seed_same_delays() {
        let b = Backoff::default();
        let a: Vec<_> = {
            let mut r = StdRng::seed_from_u64(7);
            (0..10).map(|n| b.delay(n, &mut r)).collect()
        };
        let c: Vec<_> = {
            let mut r = StdRng::seed_from_u64(7);
            (0..10).map(|n| b.delay(n, &mut r)).collect()
        };
        assert_eq!(a, c);
    }
}
