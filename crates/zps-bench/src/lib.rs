//! The zero-pub-sub load generators: a WebSocket client cheaper per delivery
//! than the servers it measures, the bare broadcast loop, nats-server as the
//! external peer, runs with CPU accounting, and reports with ratios.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

pub mod baseline;
pub mod cpu;
pub mod load;
pub mod nats;
pub mod report;
pub mod servers;
pub mod shape;
pub mod wsclient;

/// The unsigned integer after `key` in `s` (a cheap scan instead of a JSON parse,
/// so the load generator spends its CPU on sockets, not on parsing).
pub fn scan_u64(s: &str, key: &str) -> Option<u64> {
    let start = s.find(key)? + key.len();
    let digits: &str = &s[start..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// The string after `key` (up to the next `"`).
pub fn scan_str<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    let start = s.find(key)? + key.len();
    let rest = &s[start..];
    rest.find('"').map(|end| &rest[..end])
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
    /// Number of samples.
    pub samples: u64,
}

impl Percentiles {
    /// Reads percentiles out of a microsecond histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            samples: h.len(),
        }
    }
}

/// A microsecond histogram covering 1 µs .. 60 s with 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    // Constant, valid bounds: construction cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Peak resident memory of this process (VmHWM), in bytes, when /proc is available.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|k| k * 1024)
}

/// Current resident memory of this process (VmRSS), in bytes.
pub fn rss_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|k| k * 1024)
}

/// Resident memory of another process, in bytes.
pub fn rss_of_pid(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_kib(&status, "VmRSS:").map(|k| k * 1024)
}

fn proc_status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib(&status, key)
}

fn parse_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Events per second.
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Formats bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_fields() {
        let f =
            r#"{"type":"event","data":{"id":"x","room":"bench:3","sequence":42,"payload":{"t":123,"i":9}}}"#;
        assert_eq!(scan_u64(f, "\"sequence\":"), Some(42));
        assert_eq!(scan_u64(f, "\"t\":"), Some(123));
        assert_eq!(scan_u64(f, "\"i\":"), Some(9));
        assert_eq!(scan_str(f, "\"room\":\""), Some("bench:3"));
        assert_eq!(scan_u64(f, "\"nope\":"), None);
    }

    #[test]
    fn parses_proc_status() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t1024 kB\n";
        assert_eq!(parse_kib(s, "VmHWM:"), Some(2048));
        assert_eq!(parse_kib(s, "VmRSS:"), Some(1024));
        assert_eq!(parse_kib(s, "VmSwap:"), None);
    }

    #[test]
    fn percentiles_from_histogram() {
        let mut h = latency_histogram();
        for v in 1..=100u64 {
            h.record(v).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.samples, 100);
        assert_eq!(p.p50_us, 50);
        assert_eq!(p.p99_us, 99);
        assert_eq!(p.max_us, 100);
    }
}
