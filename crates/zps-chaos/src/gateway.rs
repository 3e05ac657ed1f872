//! `zero-pub-sub gateway` processes: started with a port of their own, killed
//! with SIGKILL (no drain, no goodbye) when the scenario says so or when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

/// A running gateway.
pub struct GatewayProcess {
    child: Child,
    /// Its listening address.
    pub addr: SocketAddr,
}

impl GatewayProcess {
    /// Starts `bin gateway --port 0 ARGS…` and waits for the line naming its address.
    pub fn start(bin: &Path, args: &[String]) -> anyhow::Result<Self> {
        Self::start_on(bin, 0, args)
    }

    /// The same on `port` (0: any free one), e.g. a restart where clients expect it.
    pub fn start_on(bin: &Path, port: u16, args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .arg("gateway")
            .args(["--port", &port.to_string()])
            // The workload measures faults, not the per-connection rate limit (100/s by default).
            .args(["--max-messages-per-window", "1000000"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(match std::env::var_os("ZPS_CHAOS_GATEWAY_STDERR") {
                Some(path) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_or_else(|_| Stdio::null(), Stdio::from),
                None => Stdio::null(),
            })
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ws://"))
            .and_then(|w| w.strip_suffix("/ws"))
        else {
            let _ = child.kill();
            bail!("the gateway did not start (args {args:?}): {line:?}");
        };
        Ok(Self {
            addr: addr.parse().context("gateway address")?,
            child,
        })
    }

    /// Its process id (to read its open files and memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory (KiB), from `/proc`.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Its open file descriptors, from `/proc`.
    pub fn open_files(&self) -> Option<usize> {
        Some(
            std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
                .ok()?
                .count(),
        )
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
