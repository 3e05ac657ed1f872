//! Starting the servers under test as separate processes: the gateway binary,
//! the bare broadcast loop (this crate's `zps-bench baseline-server`) and
//! nats-server. Each run of each target gets a fresh process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

use crate::load::Target;
use crate::nats::{self, NatsServer};

enum Guard {
    Child(Child),
    Nats(NatsServer),
}

/// A server process; killed on drop.
pub struct Server {
    guard: Guard,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Server {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        match &self.guard {
            Guard::Child(c) => c.id(),
            Guard::Nats(n) => n.pid(),
        }
    }

    /// Its resident memory now.
    pub fn rss(&self) -> u64 {
        crate::rss_of_pid(self.pid()).unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Guard::Child(c) = &mut self.guard {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How to start each kind of server.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The `zero-pub-sub` binary.
    pub gateway_bin: PathBuf,
    /// Extra gateway arguments (provider selection).
    pub gateway_args: Vec<String>,
    /// nats-server, when installed.
    pub nats_bin: Option<PathBuf>,
}

impl Launcher {
    /// Starts a fresh server for `target`.
    pub fn start(&self, target: Target) -> anyhow::Result<Server> {
        match target {
            Target::Zps | Target::ZpsCompact => self.gateway(),
            Target::BareSmall | Target::BareGw => {
                let mut cmd = Command::new(std::env::current_exe()?);
                cmd.args(["baseline-server", "--port", "0"]);
                spawn(cmd)
            }
            Target::Nats => {
                let bin = self.nats_bin.as_deref().context(
                    "nats-server not found (Debian: apt install nats-server, or set ZPS_BENCH_NATS_SERVER)",
                )?;
                let server = nats::start(bin)?;
                Ok(Server {
                    addr: server.ws_addr,
                    guard: Guard::Nats(server),
                })
            }
        }
    }

    fn gateway(&self) -> anyhow::Result<Server> {
        if !self.gateway_bin.exists() {
            bail!(
                "gateway binary {} not found (build it: cargo build --release -p zps-cli)",
                self.gateway_bin.display()
            );
        }
        let mut cmd = Command::new(&self.gateway_bin);
        cmd.args([
            "gateway",
            "--port",
            "0",
            "--allow-client-publish",
            "--max-messages-per-window",
            "100000000",
            "--max-connections",
            "20000",
            "--memory-max-events-per-room",
            "200000",
            // The load generator shares the cores: do not cut it off as a slow consumer.
            "--max-socket-buffered-bytes",
            "67108864",
            "--max-replay-limit",
            "10000",
        ]);
        cmd.args(&self.gateway_args);
        spawn(cmd)
    }
}

/// The gateway binary next to this executable, unless given.
pub fn default_gateway_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    Ok(match given {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("zero-pub-sub"),
    })
}

fn spawn(mut cmd: Command) -> anyhow::Result<Server> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env("RUST_LOG", "warn");
    let mut child = cmd.spawn().context("cannot start the server")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .split_whitespace()
        .find_map(|w| {
            let w = w.trim_start_matches("ws://").trim_start_matches("http://");
            w.split('/').next().and_then(|a| a.parse::<SocketAddr>().ok())
        })
        .with_context(|| format!("no address in the server's first line: {line:?}"))?;
    Ok(Server {
        guard: Guard::Child(child),
        addr,
    })
}
