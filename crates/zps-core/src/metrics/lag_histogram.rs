//! The delivery-lag histogram, counted in per-thread shards and written out
//! in Prometheus' text format when `/metrics` is scraped.
//!
//! The facade's histogram keeps every sample in a shared lock-free list until
//! upkeep folds it into buckets: at one sample per delivered event that list
//! (its pushes, its block allocations, a cache line shared by both cores) was
//! 2–3 % of the gateway's CPU at 1 000 rooms. Bucket counts per thread shard
//! cost two relaxed additions per sample.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket bounds, in seconds, of every `*_seconds` histogram the gateway exports.
pub const SECONDS_BUCKETS: [f64; 13] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The same bounds in microseconds, for integer comparisons on the hot path.
const BOUNDS_MICROS: [u64; 13] = [
    100, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
];

/// One shard: a count per bucket (the last is `+Inf`) and the sum, in one
/// 128-byte block so two threads never share a cache line.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    counts: [AtomicU64; BOUNDS_MICROS.len() + 1],
    sum_millis: AtomicU64,
}

impl Shard {
    const fn new() -> Self {
        Self {
            counts: [const { AtomicU64::new(0) }; BOUNDS_MICROS.len() + 1],
            sum_millis: AtomicU64::new(0),
        }
    }
}

/// A histogram of millisecond lags that many threads record into without
/// sharing a cache line.
#[derive(Debug)]
pub struct LagHistogram {
    shards: [Shard; super::SHARDS],
}

impl Default for LagHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LagHistogram {
    /// An empty histogram (usable in a `static`).
    pub const fn new() -> Self {
        Self {
            shards: [const { Shard::new() }; super::SHARDS],
        }
    }

    /// Records one lag.
    pub fn record(&self, lag_millis: u64) {
        let micros = lag_millis.saturating_mul(1_000);
        let bucket = BOUNDS_MICROS.partition_point(|&bound| bound < micros);
        let shard = &self.shards[super::shard()];
        shard.counts[bucket].fetch_add(1, Ordering::Relaxed);
        shard.sum_millis.fetch_add(lag_millis, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative; the last is above every bound) and the sum in milliseconds.
    fn totals(&self) -> ([u64; BOUNDS_MICROS.len() + 1], u64) {
        let mut counts = [0u64; BOUNDS_MICROS.len() + 1];
        let mut sum = 0u64;
        for shard in &self.shards {
            for (total, c) in counts.iter_mut().zip(&shard.counts) {
                *total = total.wrapping_add(c.load(Ordering::Relaxed));
            }
            sum = sum.wrapping_add(shard.sum_millis.load(Ordering::Relaxed));
        }
        (counts, sum)
    }

    /// Appends the histogram as Prometheus text (`# TYPE`, cumulative
    /// `_bucket` lines, `_sum` in seconds, `_count`).
    pub fn render(&self, name: &str, out: &mut String) {
        let (counts, sum_millis) = self.totals();
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (bound, count) in SECONDS_BUCKETS.iter().zip(&counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += counts[BOUNDS_MICROS.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", sum_millis as f64 / 1000.0);
        let _ = writeln!(out, "{name}_count {cumulative}");
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lags_land_in_the_first_bucket_at_or_above_them_and_render_cumulatively() {
        let h = LagHistogram::new();
        for lag in [0, 1, 1, 2, 3, 7, 3_000] {
            h.record(lag);
        }
        let mut text = String::new();
        h.render("lag_seconds", &mut text);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# TYPE lag_seconds histogram");
        // 0 ms ≤ 0.0001 s; 1 ms ≤ 0.001 s; 2 ms ≤ 0.0025; 3 ms ≤ 0.005; 7 ms ≤ 0.01; 3 s above 2.5 s.
        let expected = [
            ("0.0001", 1),
            ("0.0005", 1),
            ("0.001", 3),
            ("0.0025", 4),
            ("0.005", 5),
            ("0.01", 6),
            ("0.025", 6),
            ("0.05", 6),
            ("0.1", 6),
            ("0.25", 6),
            ("0.5", 6),
            ("1", 6),
            ("2.5", 6),
            ("+Inf", 7),
        ];
        for (line, (le, n)) in lines[1..15].iter().zip(expected) {
            assert_eq!(*line, format!("lag_seconds_bucket{{le=\"{le}\"}} {n}"));
        }
        assert_eq!(lines[15], "lag_seconds_sum 3.014");
        assert_eq!(lines[16], "lag_seconds_count 7");
    }

    #[test]
    fn the_integer_bounds_are_the_exported_ones() {
        for (micros, seconds) in BOUNDS_MICROS.iter().zip(SECONDS_BUCKETS) {
            assert_eq!(*micros, (seconds * 1e6).round() as u64);
        }
    }

    #[test]
    fn threads_add_up() {
        let h = std::sync::Arc::new(LagHistogram::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| h.record(4)))
            })
            .collect();
        for t in threads {
            t.join().expect("recording thread");
        }
        let (counts, sum) = h.totals();
        assert_eq!(counts[4], 4000);
        assert_eq!(counts.iter().sum::<u64>(), 4000);
        assert_eq!(sum, 16_000);
    }
}
