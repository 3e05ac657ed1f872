//! The databases a scenario runs against: the machine's shared PostgreSQL and
//! Redis (with a schema / key prefix of the run's own), or servers of the
//! scenario's own — a `redis-server` and a throwaway PostgreSQL cluster — that
//! it can kill and restart without disturbing anything else.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

/// Where the gateways store events, with its flags and its cleanup.
#[derive(Debug, Clone, Default)]
pub struct Provider {
    /// `postgres`, `redis`, `hybrid`.
    pub name: String,
    /// Gateway flags selecting it (with a schema / key prefix of this run).
    pub args: Vec<String>,
    /// Shell command that removes this run's data afterwards.
    pub cleanup: Option<String>,
    /// NATS: the server and the prefix of this run's streams, deleted afterwards.
    pub nats_streams: Option<(String, String)>,
}

fn env_or(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_owned())
}

/// The machine's PostgreSQL (`ZPS_TEST_POSTGRES_URL`).
pub fn shared_postgres_url() -> String {
    env_or(
        "ZPS_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

/// The machine's Redis (`ZPS_TEST_REDIS_URL`).
pub fn shared_redis_url() -> String {
    env_or("ZPS_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

/// The machine's NATS with JetStream (`ZPS_TEST_NATS_URL`).
pub fn shared_nats_url() -> String {
    env_or("ZPS_TEST_NATS_URL", "nats://127.0.0.1:4222")
}

/// The MongoDB stand-in (`ZPS_TEST_MONGO_URL`; `cargo xtask chaos` starts one).
pub fn shared_mongo_url() -> anyhow::Result<String> {
    std::env::var("ZPS_TEST_MONGO_URL").map_err(|_| {
        anyhow::anyhow!(
            "ZPS_TEST_MONGO_URL is needed for the MongoDB rows (`cargo xtask chaos` starts the stand-in)"
        )
    })
}

/// `url` with its database path set to `db` (`mongodb://h:p/?x` → `mongodb://h:p/db?x`).
fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("mongodb", url));
    let (hosts, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let query = tail.split_once('?').map_or("", |(_, q)| q);
    if query.is_empty() {
        format!("{scheme}://{hosts}/{db}")
    } else {
        format!("{scheme}://{hosts}/{db}?{query}")
    }
}

impl Provider {
    /// A provider on the machine's shared databases, with a schema / key prefix named `tag`.
    pub fn shared(name: &str, tag: &str) -> anyhow::Result<Self> {
        Self::on(name, tag, &shared_postgres_url(), &shared_redis_url())
    }

    /// A provider on the given PostgreSQL and Redis URLs (either may be a
    /// scenario's own server, or a fault proxy in front of one), data named `tag`.
    pub fn on(name: &str, tag: &str, pg: &str, redis: &str) -> anyhow::Result<Self> {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let prefix = format!("{tag}:");
        let drop_schema = format!("psql '{pg}' -qc 'DROP SCHEMA IF EXISTS {tag} CASCADE'");
        let del_keys = format!(
            "redis-cli -u '{redis}' --scan --pattern '{tag}:*' | xargs -r redis-cli -u '{redis}' del >/dev/null"
        );
        Ok(match name {
            "memory" => Self {
                name: name.into(),
                args: Vec::new(),
                cleanup: None,
                ..Self::default()
            },
            "mongo" => Self {
                name: name.into(),
                args: s(&[
                    "--provider",
                    "mongo",
                    "--connection",
                    &with_database(&shared_mongo_url()?, tag),
                ]),
                // The stand-in keeps data in memory and stops after the run.
                cleanup: None,
                ..Self::default()
            },
            "sqlite" => {
                // One file per gateway process: for scenarios that restart one gateway on it.
                let dir = std::env::temp_dir().join(format!("zps-chaos-sqlite-{tag}"));
                Self {
                    name: name.into(),
                    args: s(&["--provider", "sqlite", "--data-dir", &dir.display().to_string()]),
                    cleanup: Some(format!("rm -rf '{}'", dir.display())),
                    ..Self::default()
                }
            }
            "postgres" => Self {
                name: name.into(),
                args: s(&[
                    "--provider",
                    "postgres",
                    "--connection",
                    pg,
                    "--postgres-schema",
                    tag,
                ]),
                cleanup: Some(drop_schema),
                ..Self::default()
            },
            "redis" => Self {
                name: name.into(),
                args: s(&[
                    "--provider",
                    "redis",
                    "--connection",
                    redis,
                    "--redis-prefix",
                    &prefix,
                ]),
                cleanup: Some(del_keys),
                ..Self::default()
            },
            "hybrid" => Self {
                name: name.into(),
                args: s(&[
                    "--provider",
                    "hybrid",
                    "--storage-provider",
                    "postgres",
                    "--storage-connection",
                    pg,
                    "--postgres-schema",
                    tag,
                    "--realtime-provider",
                    "redis",
                    "--realtime-connection",
                    redis,
                    "--redis-prefix",
                    &prefix,
                ]),
                cleanup: Some(format!("{drop_schema}; {del_keys}")),
                ..Self::default()
            },
            "nats" => Self::nats(tag, &shared_nats_url()),
            other => {
                bail!("no setup for provider {other} (memory, sqlite, postgres, redis, hybrid, mongo, nats)")
            }
        })
    }

    /// The NATS provider on the server at `url`, streams named `tag`.
    pub fn nats(tag: &str, url: &str) -> Self {
        Self {
            name: "nats".into(),
            args: ["--provider", "nats", "--connection", url, "--nats-prefix", tag]
                .map(String::from)
                .to_vec(),
            cleanup: None,
            nats_streams: Some((url.to_owned(), tag.to_owned())),
        }
    }

    /// Removes this run's data (best effort: a scenario's own server may be gone).
    pub fn clean(&self) {
        if let Some((url, prefix)) = self.nats_streams.clone() {
            // Called from async scenarios: the client gets a runtime of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let client = zps_nats::async_nats::connect(url).await?;
                    zps_nats::delete_prefix(&client, &prefix).await?;
                    anyhow::Ok(())
                })
            })
            .join();
        }
        if let Some(cmd) = &self.cleanup {
            let _ = Command::new("sh")
                .args(["-c", cmd])
                .env("PGOPTIONS", "--client-min-messages=warning")
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A free port for a cluster node whose bus port (port + 10 000) is valid and
/// free too, and not already one of `taken`.
fn cluster_port(taken: &[u16]) -> anyhow::Result<u16> {
    for _ in 0..100 {
        let port = free_port()?;
        let Some(bus) = port.checked_add(10_000) else {
            continue;
        };
        if taken
            .iter()
            .any(|t| *t == port || t.checked_add(10_000) == Some(port) || *t == bus)
        {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", bus)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port pair (port, port + 10000) for a cluster node")
}

/// Waits until `port` accepts connections; fails at once when `child` (the
/// process that should listen) has exited, quoting the end of its `log`.
fn wait_listening(
    port: u16,
    what: &str,
    mut child: Option<&mut Child>,
    log: Option<&Path>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let exited = match child.as_deref_mut() {
            Some(c) => c.try_wait()?,
            None => None,
        };
        if exited.is_some() || Instant::now() >= deadline {
            let text = log
                .and_then(|l| std::fs::read_to_string(l).ok())
                .unwrap_or_default();
            let mut tail: Vec<&str> = text.lines().rev().take(5).collect();
            tail.reverse();
            bail!(
                "{what} did not listen on {port} ({}){}",
                exited.map_or("still running".to_owned(), |s| s.to_string()),
                if tail.is_empty() {
                    String::new()
                } else {
                    format!("; its log ends: {}", tail.join(" | "))
                }
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn scratch_dir(kind: &str, tag: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("zps-chaos-{kind}-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A database server process of the scenario's own — a `redis-server` or a
/// `nats-server` — in a scratch folder on a free port, killed with SIGKILL and
/// started again on the same port and data.
pub struct OwnServer {
    program: &'static str,
    scheme: &'static str,
    args: fn(u16, &Path) -> Vec<String>,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl OwnServer {
    /// Redis with AOF and `appendfsync always`, so an acknowledged write
    /// survives its SIGKILL.
    pub fn redis(tag: &str) -> anyhow::Result<Self> {
        Self::start("redis-server", "redis", tag, |port, dir| {
            let port = port.to_string();
            let dir = dir.display().to_string();
            [
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                &dir,
            ]
            .map(String::from)
            .to_vec()
        })
    }

    /// NATS with JetStream; a process kill keeps what the server acknowledged
    /// (it is in the kernel's page cache).
    pub fn nats(tag: &str) -> anyhow::Result<Self> {
        Self::start("nats-server", "nats", tag, |port, dir| {
            let port = port.to_string();
            let dir = dir.display().to_string();
            ["-a", "127.0.0.1", "-p", &port, "-js", "-sd", &dir]
                .map(String::from)
                .to_vec()
        })
    }

    fn start(
        program: &'static str,
        scheme: &'static str,
        tag: &str,
        args: fn(u16, &Path) -> Vec<String>,
    ) -> anyhow::Result<Self> {
        let mut server = Self {
            program,
            scheme,
            args,
            dir: scratch_dir(scheme, tag)?,
            port: free_port()?,
            child: None,
        };
        server.up()?;
        Ok(server)
    }

    /// `SCHEME://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    fn up(&mut self) -> anyhow::Result<()> {
        let child = Command::new(self.program)
            .args((self.args)(self.port, &self.dir))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("{} is needed for this scenario", self.program))?;
        let child = self.child.insert(child);
        wait_listening(self.port, self.program, Some(child), None)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.up()
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway PostgreSQL cluster of the scenario's own (`initdb` + `pg_ctl`,
/// fsync on, so an acknowledged commit survives a crash), crashed with an
/// immediate shutdown — no checkpoint, crash recovery at the next start — and
/// started again on the same port and data.
pub struct OwnPostgres {
    dir: PathBuf,
    data: PathBuf,
    port: u16,
}

/// The folder holding `initdb` and `pg_ctl`: on `PATH`, or Debian's newest
/// `/usr/lib/postgresql/N/bin`.
fn pg_bin() -> anyhow::Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server binaries (initdb, pg_ctl) are needed for postgres-restart")?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (the server
/// refuses to run as root).
fn pg_tool(bin: &Path, tool: &str) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

fn run_ok(mut c: Command, what: &str) -> anyhow::Result<()> {
    let out = c.output().with_context(|| format!("cannot run {what}"))?;
    ensure!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl OwnPostgres {
    /// `initdb` in a fresh folder, then starts it on a free port.
    pub fn start(tag: &str) -> anyhow::Result<Self> {
        let dir = scratch_dir("pg", tag)?;
        let data = dir.join("data");
        let mut chown = Command::new("chown");
        chown.args(["-R", "postgres:postgres"]).arg(&dir);
        // Only needed (and only possible) as root; initdb reports it otherwise.
        let _ = chown.status();
        let bin = pg_bin()?;
        let mut initdb = pg_tool(&bin, "initdb");
        initdb
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data);
        run_ok(initdb, "initdb")?;
        let port = free_port()?;
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             max_connections = 200\nfsync = on\nsynchronous_commit = on\n",
            data.display()
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?
            .write_all(conf.as_bytes())?;
        let pg = Self { dir, data, port };
        pg.up()?;
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut c = pg_tool(&pg_bin()?, "pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .args(["-l"])
            .arg(self.data.join("server.log"))
            .args(args);
        run_ok(c, "pg_ctl")
    }

    fn up(&self) -> anyhow::Result<()> {
        self.ctl(&["-w", "-t", "60", "start"])?;
        wait_listening(self.port, "postgres", None, None)
    }

    /// A crash: every server process aborted at once, nothing flushed beyond what was committed.
    pub fn crash(&self) -> anyhow::Result<()> {
        self.ctl(&["-m", "immediate", "-w", "stop"])
    }

    /// Starts it again on the same port and data (crash recovery first).
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.up()
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self.ctl(&["-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of the scenario's own: three primaries and three replicas
/// (`redis-server` processes on free ports, AOF with `appendfsync always`,
/// 1 s node timeout), built with `redis-cli --cluster create`.
pub struct OwnRedisCluster {
    dir: PathBuf,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl OwnRedisCluster {
    /// Starts the six nodes and joins them into one cluster.
    pub fn start(tag: &str) -> anyhow::Result<Self> {
        let dir = scratch_dir("redis-cluster", tag)?;
        let mut c = Self {
            dir,
            children: (0..6).map(|_| None).collect(),
            ports: Vec::new(),
        };
        for i in 0..6 {
            // A port picked free can be taken before the node binds it (or its
            // bus port): a node that fails its first start gets another port.
            let mut attempt = 0;
            loop {
                let port = cluster_port(&c.ports)?;
                match c.ports.get_mut(i) {
                    Some(p) => *p = port,
                    None => c.ports.push(port),
                }
                match c.up(i) {
                    Ok(()) => break,
                    Err(e) if attempt < 2 => {
                        eprintln!("zps-chaos: cluster node on {port} did not start ({e:#}); another port");
                        c.kill(i);
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for p in &c.ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        run_ok(create, "redis-cli --cluster create")?;
        c.wait_ok()?;
        Ok(c)
    }

    fn up(&mut self, i: usize) -> anyhow::Result<()> {
        let port = self.ports[i].to_string();
        let dir = self.dir.join(&port);
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
            .args(["--cluster-config-file", "nodes.conf"])
            .arg("--logfile")
            .arg(&log)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("redis-server is needed for the Redis Cluster scenario")?;
        let child = self.children[i].insert(child);
        wait_listening(
            self.ports[i],
            "redis-server (cluster node)",
            Some(child),
            Some(&log),
        )
    }

    fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until every live node reports `cluster_state:ok`.
    pub fn wait_ok(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.ports.iter().enumerate().all(|(i, p)| {
                self.children[i].is_none()
                    || self
                        .cli(*p, &["cluster", "info"])
                        .is_some_and(|s| s.contains("cluster_state:ok"))
            });
            if ok {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the Redis Cluster did not reach cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis-cluster://` URL naming every node as a seed.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.ports[0]);
        for (i, p) in self.ports.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{p}"));
        }
        url
    }

    /// The index of the primary serving `key`'s slot right now.
    pub fn primary_of(&self, key: &str) -> Option<usize> {
        let port = self.ports[self.children.iter().position(Option::is_some)?];
        let slot: u16 = self
            .cli(port, &["cluster", "keyslot", key])?
            .trim()
            .parse()
            .ok()?;
        let nodes = self.cli(port, &["cluster", "nodes"])?;
        let addr = nodes.lines().find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let serves = f.get(2)?.contains("master")
                && f.iter().skip(8).any(|range| {
                    let mut ends = range.splitn(2, '-').map(|n| n.parse::<u16>().ok());
                    match (ends.next().flatten(), ends.next()) {
                        (Some(a), Some(Some(b))) => (a..=b).contains(&slot),
                        (Some(a), None) => a == slot,
                        _ => false,
                    }
                });
            serves.then(|| f[1].split('@').next().unwrap_or_default().to_owned())
        })?;
        self.ports.iter().position(|p| addr == format!("127.0.0.1:{p}"))
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again on its port and data (it rejoins, as a replica once failed over).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.up(i)
    }
}

impl Drop for OwnRedisCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mongo_url_gets_the_run_s_database() {
        use super::with_database;
        assert_eq!(
            with_database("mongodb://127.0.0.1:4/?directConnection=true", "t1"),
            "mongodb://127.0.0.1:4/t1?directConnection=true"
        );
        assert_eq!(with_database("mongodb://h:1", "t1"), "mongodb://h:1/t1");
        assert_eq!(with_database("mongodb://h:1/old", "t1"), "mongodb://h:1/t1");
    }
}
