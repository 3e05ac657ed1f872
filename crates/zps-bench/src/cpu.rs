//! CPU time of a process (all threads), read from `/proc/<pid>/stat`, so every
//! run reports what the server under test and the load generator each used.

use std::time::{Duration, Instant};

/// Linux reports process times in clock ticks of `USER_HZ`, which is 100 on
/// every architecture the kernel exposes to user space this way.
const TICKS_PER_SEC: f64 = 100.0;

/// Busy CPU seconds of the whole machine (all cores; idle and iowait excluded),
/// from `/proc/stat`: what the server and the load generator did not use went
/// to other processes — a database, for instance.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine(&stat)
}

fn parse_machine(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let busy: f64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Some(busy / TICKS_PER_SEC)
}

/// User + system CPU seconds of process `pid` (`None` for this process).
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces: fields are counted after its `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After `)`: state is field 3, utime field 14, stime field 15.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// A CPU reading of one process at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    at: Instant,
    seconds: f64,
}

impl CpuMark {
    /// Reads process `pid` (`None` = this process) now.
    pub fn now(pid: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            seconds: cpu_seconds(pid).unwrap_or(0.0),
        }
    }

    /// Reads the whole machine's busy time now.
    pub fn machine() -> Self {
        Self {
            at: Instant::now(),
            seconds: machine_busy_seconds().unwrap_or(0.0),
        }
    }

    /// Percent of one core used between `self` and `later` (100 = one core busy).
    pub fn percent_until(&self, later: &CpuMark) -> f64 {
        let wall = later
            .at
            .saturating_duration_since(self.at)
            .max(Duration::from_millis(1));
        100.0 * (later.seconds - self.seconds).max(0.0) / wall.as_secs_f64()
    }

    /// CPU seconds between `self` and `later`.
    pub fn seconds_until(&self, later: &CpuMark) -> f64 {
        (later.seconds - self.seconds).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100";
        assert_eq!(parse_stat(stat), Some(3.0));
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(parse_machine(stat), Some(1.61));
    }

    #[test]
    fn reads_this_process() {
        let burn = (0..2_000_000u64).fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b));
        assert!(burn != 1);
        assert!(cpu_seconds(None).is_some());
    }
}
