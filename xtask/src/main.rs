//! Project automation: `cargo xtask test | load-test | help`.
//!
//! `cargo xtask test` is the one command CI runs: formatting, clippy with
//! warnings denied, then every test against real services, which it makes
//! reachable first (start them if installed, install them on Debian if not, or
//! say exactly what to run).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("load-test") => load_test(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("chaos") => chaos(&args[1..], false),
        Some("dist") => dist(),
        Some("services") => ensure_services().map(|_| ()),
        None | Some("help" | "-h" | "--help") => {
            print_help();
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!(
            "unknown command `{other}`; see `cargo xtask help`"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_help() {
    println!(
        "cargo xtask <command>

  test [--no-lint] [NEXTEST ARGS]  fmt check, clippy -D warnings, all tests against real services
  load-test                        in-process engine load test (release build); knobs:
                                   REALTIME_LOAD_ROOMS, REALTIME_LOAD_SUBSCRIBERS_PER_ROOM,
                                   REALTIME_LOAD_EVENTS_PER_ROOM, REALTIME_LOAD_TARGET_EVENTS
  bench [--provider memory|postgres|redis|hybrid|sqlite|nats] [--skip-provider-bench]
        [--scenario NAME]... [--target NAME]... [--quick] [--rounds N]
                                   the gateway (JSON and compact), two bare broadcast loops and
                                   nats-server driven by one load generator in one run (release
                                   build), with both sides' CPU and every target as a ratio
                                   (with --rounds N, targets interleaved N times, checked on the
                                   median of the per-round ratios);
                                   scenarios: fanout-1x1000, chat-1x10, rooms-100x10, rooms-1000x1,
                                   idle-10k, replay; targets: zps-json, zps-compact, bare-small,
                                   bare-gw, nats; results appended to bench-results.jsonl. A provider
                                   first runs its own publish benchmark against a raw baseline
                                   (INSERT / EVALSHA / JetStream publish) unless --skip-provider-bench
  chaos [--quick] [--providers LIST] [SCENARIO]...
                                   fault scenarios against real gateway processes with an
                                   independent checker (scenarios: gateway-kill, redis-restart,
                                   postgres-restart, nats-restart, redis-partition, redis-partition-reset,
                                   slow-clients, reconnect-storm, memory-soak [--soak-secs N];
                                   providers: memory, sqlite, postgres, redis, hybrid, nats, mongo); report in
                                   target/chaos/report.md; `test` runs the --quick set
  dist                             release binary in dist/: stripped, with its line tables split
                                   out into dist/zero-pub-sub.debug (gdb and perf find it)
  services                         make PostgreSQL, Redis and NATS (JetStream) reachable (start or install)"
    );
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn has(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn test(args: &[String]) -> Result<()> {
    let started = Instant::now();
    let lint = !args.iter().any(|a| a == "--no-lint");
    let extra: Vec<&String> = args.iter().filter(|a| *a != "--no-lint").collect();
    if lint {
        run(cargo().args(["fmt", "--all", "--check"]))?;
        run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    }
    let mut env = ensure_services()?;
    // Kept alive until the tests finish; killed on drop.
    let mongo = MongoStandIn::start();
    if let Some(m) = &mongo {
        env.push(("ZPS_TEST_MONGO_URL".into(), m.url.clone()));
    }
    env.push(("ZPS_OPENAPI_VALIDATOR".into(), openapi_validator()?));
    env.push(("ZPS_REQUIRE_SERVICES".into(), "1".into()));
    let nextest = cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut cmd = cargo();
    if nextest {
        cmd.args(["nextest", "run", "--workspace", "--profile", "ci"]);
    } else {
        eprintln!("xtask: cargo-nextest not found, using cargo test (install: cargo install cargo-nextest)");
        cmd.args(["test", "--workspace"]);
    }
    cmd.args(extra);
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    run(&mut cmd)?;
    if nextest {
        // nextest does not run doctests.
        run(cargo()
            .args(["test", "--workspace", "--doc"])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))))?;
    }
    drop(mongo);
    js_client_tests()?;
    // The CI-sized fault suite against the binary just built for the JS tests.
    chaos(&["--quick".to_owned()], true)?;
    eprintln!("xtask: all checks passed in {:.0?}", started.elapsed());
    Ok(())
}

/// `zps-chaos` against the debug binary: real gateway processes, faults, and the
/// independent checker; fails when an acknowledged event was lost, duplicated or reordered.
fn chaos(args: &[String], built: bool) -> Result<()> {
    let mut env = ensure_services()?;
    // The MongoDB rows run on the stand-in; kept alive until the scenarios end.
    let mongo = MongoStandIn::start();
    if let Some(m) = &mongo {
        env.push(("ZPS_TEST_MONGO_URL".into(), m.url.clone()));
    }
    if !built {
        run(cargo().args(["build", "-p", "zps-cli", "--bin", "zero-pub-sub"]))?;
    }
    run(cargo().args(["build", "-p", "zps-chaos", "--bin", "zps-chaos"]))?;
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target"));
    run(Command::new(target.join("debug/zps-chaos"))
        .current_dir(root())
        .arg("--gateway-bin")
        .arg(target.join("debug/zero-pub-sub"))
        .arg("--out")
        .arg(target.join("chaos"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))))?;
    drop(mongo);
    Ok(())
}

/// The TypeScript client's tests (clients/js): against the gateway binary
/// built from this tree, and in Debian's Chromium (installed with apt when
/// missing; no browser is ever downloaded by npm). Then checks that the demo
/// page compiled into the gateway matches its sources.
fn js_client_tests() -> Result<()> {
    let js = root().join("clients/js");
    if !js.join("package.json").exists() {
        return Ok(());
    }
    if !has("node") || !has("npm") {
        bail!("node and npm are needed for the JS client's tests (Debian: apt-get install nodejs npm)");
    }
    if !Path::new("/usr/bin/chromium").exists() {
        eprintln!("xtask: installing Debian's chromium for the browser tests");
        apt_install(&["chromium"]).context("chromium is needed for the browser tests")?;
    }
    if !js.join("node_modules").exists() {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&js))?;
    }
    run(cargo().args(["build", "-p", "zps-cli", "--bin", "zero-pub-sub"]))?;
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root().join("target"), PathBuf::from);
    let bin = target.join("debug/zero-pub-sub");
    run(Command::new("npm")
        .arg("test")
        .current_dir(&js)
        .env("ZPS_GATEWAY_BIN", &bin)
        .env("ZPS_CHROMIUM", "/usr/bin/chromium")
        // The browser tests run here, always: an inherited opt-out must not skip them.
        .env_remove("ZPS_SKIP_BROWSER"))?;
    let shot = js.join("test-artifacts/demo.png");
    if !shot.exists() {
        bail!(
            "the browser tests left no screenshot of the demo page at {}",
            shot.display()
        );
    }
    println!(
        "xtask: screenshot of the demo page (CI artifact): {}",
        shot.display()
    );
    for file in ["index.html", "demo.js"] {
        let built = std::fs::read(js.join("dist-demo").join(file))?;
        let embedded = std::fs::read(root().join("crates/zps-gateway/assets/demo").join(file))?;
        if built != embedded {
            bail!(
                "crates/zps-gateway/assets/demo/{file} is stale: run `npm run embed:demo` in clients/js and commit it"
            );
        }
    }
    Ok(())
}

/// `openapi-spec-validator` (PyPI) in a venv of its own: the HTTP API's test
/// checks the served OpenAPI document with a validator that is not ours.
fn openapi_validator() -> Result<String> {
    const VERSION: &str = "openapi-spec-validator==0.9.0";
    if let Ok(bin) = std::env::var("ZPS_OPENAPI_VALIDATOR") {
        return Ok(bin);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    let venv = PathBuf::from(home).join(".cache/zero-pub-sub/venv-openapi");
    let bin = venv.join("bin/openapi-spec-validator");
    if !bin.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .context("python3 -m venv failed (Debian: apt-get install python3-venv)")?;
        run(Command::new(venv.join("bin/pip")).args(["install", "-q", VERSION]))
            .context("pip install openapi-spec-validator failed")?;
    }
    Ok(bin.display().to_string())
}

/// The MongoDB wire-compatible stand-in (nx-27017, from PyPI) for the MongoDB
/// provider's tests: no MongoDB server can be installed on these machines.
struct MongoStandIn {
    child: std::process::Child,
    url: String,
}

impl Drop for MongoStandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MongoStandIn {
    const VERSION: &'static str = "nx-27017==0.8.1";

    fn start() -> Option<Self> {
        if let Ok(url) = std::env::var("ZPS_TEST_MONGO_URL") {
            eprintln!("xtask: using ZPS_TEST_MONGO_URL={url}");
            return None;
        }
        if !root().join("crates/zps-mongo").exists() {
            return None;
        }
        match Self::try_start() {
            Ok(m) => {
                eprintln!("xtask: MongoDB stand-in ({}) on {}", Self::VERSION, m.url);
                Some(m)
            }
            Err(e) => {
                // Tests then fail (ZPS_REQUIRE_SERVICES), saying which service is missing.
                eprintln!("xtask: no MongoDB stand-in ({e:#}): the MongoDB tests will fail");
                None
            }
        }
    }

    fn try_start() -> Result<Self> {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
        let venv = PathBuf::from(home).join(".cache/zero-pub-sub/venv-mongo");
        let bin = venv.join("bin/nx-27017");
        if !bin.exists() {
            run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
                .context("python3 -m venv failed (Debian: apt-get install python3-venv)")?;
            run(Command::new(venv.join("bin/pip")).args(["install", "-q", Self::VERSION]))
                .context("pip install nx-27017 failed")?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(&bin)
            .args([
                "--host",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--data-dir",
                "memory",
                "--threaded",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start nx-27017")?;
        let mut stand_in = Self {
            child,
            url: format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
        };
        if !wait_for(port, Duration::from_secs(20)) {
            let _ = stand_in.child.kill();
            bail!("nx-27017 did not listen on port {port}");
        }
        Ok(stand_in)
    }
}

/// The shipped binary: the release build without debug info, plus that debug
/// info in a file of its own linked by `.gnu_debuglink`.
fn dist() -> Result<()> {
    if !has("objcopy") {
        bail!("objcopy not found (Debian: apt-get install binutils)");
    }
    let target = root().join("target/dist");
    // The release profile strips; this build keeps the line tables to split them.
    run(cargo()
        .args(["build", "--release", "-p", "zps-cli", "--target-dir"])
        .arg(&target)
        .env("CARGO_PROFILE_RELEASE_STRIP", "none"))?;
    let built = target.join("release/zero-pub-sub");
    let out = root().join("dist");
    std::fs::create_dir_all(&out)?;
    let (bin, debug) = (out.join("zero-pub-sub"), out.join("zero-pub-sub.debug"));
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&built)
        .arg(&debug))?;
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(format!("--add-gnu-debuglink={}", debug.display()))
        .arg(&built)
        .arg(&bin))?;
    for f in [&bin, &debug] {
        let size = std::fs::metadata(f)?.len();
        eprintln!("xtask: {} ({:.1} MB)", f.display(), size as f64 / 1e6);
    }
    Ok(())
}

fn load_test(args: &[String]) -> Result<()> {
    run(cargo()
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "zps-bench",
            "--bin",
            "zps-load-test",
            "--",
        ])
        .args(args))
}

fn bench(args: &[String]) -> Result<()> {
    // `--provider NAME` selects the provider dimension; everything else goes to zps-bench.
    let mut provider = "memory".to_owned();
    let mut provider_bench = true;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--provider" => provider = it.next().context("--provider needs a value")?.clone(),
            "--skip-provider-bench" => provider_bench = false,
            _ => rest.push(a.clone()),
        }
    }
    let env = ensure_services()?;
    let url = |key: &str| {
        env.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let tag = format!("zps_bench_{}", std::process::id());
    let mut gateway_args: Vec<String> = Vec::new();
    match provider.as_str() {
        "memory" => {}
        "postgres" => {
            // The provider's own benchmark: publish vs raw INSERT, replay of 1 000 000 events.
            if provider_bench {
                run(cargo()
                    .args(["bench", "-p", "zps-postgres", "--bench", "publish"])
                    .envs(env.clone()))?;
            }
            gateway_args.extend(
                [
                    "--provider",
                    "postgres",
                    "--connection",
                    &url("ZPS_TEST_POSTGRES_URL"),
                    "--postgres-schema",
                    &tag,
                ]
                .map(String::from),
            );
        }
        "redis" => {
            // The provider's own benchmark: publish vs raw EVALSHA/PUBLISH, cross-node latency.
            if provider_bench {
                run(cargo()
                    .args(["bench", "-p", "zps-redis", "--bench", "publish"])
                    .envs(env.clone()))?;
            }
            gateway_args.extend(
                [
                    "--provider",
                    "redis",
                    "--connection",
                    &url("ZPS_TEST_REDIS_URL"),
                    "--redis-prefix",
                    &format!("{tag}:"),
                ]
                .map(String::from),
            );
        }
        "hybrid" => {
            // Cross-node latency: PostgreSQL alone, hybrid, and hybrid with lost fan-out.
            if provider_bench {
                run(cargo()
                    .args(["bench", "-p", "zps-hybrid", "--bench", "cross_node"])
                    .envs(env.clone()))?;
            }
            gateway_args.extend(
                [
                    "--provider",
                    "hybrid",
                    "--storage-provider",
                    "postgres",
                    "--storage-connection",
                    &url("ZPS_TEST_POSTGRES_URL"),
                    "--postgres-schema",
                    &tag,
                    "--realtime-provider",
                    "redis",
                    "--realtime-connection",
                    &url("ZPS_TEST_REDIS_URL"),
                    "--redis-prefix",
                    &format!("{tag}:"),
                ]
                .map(String::from),
            );
        }
        "nats" => {
            // The provider's own benchmark: publish vs a raw JetStream publish loop, contention, latency.
            if provider_bench {
                run(cargo()
                    .args(["bench", "-p", "zps-nats", "--bench", "publish"])
                    .envs(env.clone()))?;
            }
            gateway_args.extend(
                [
                    "--provider",
                    "nats",
                    "--connection",
                    &url("ZPS_TEST_NATS_URL"),
                    "--nats-prefix",
                    &tag,
                ]
                .map(String::from),
            );
        }
        "sqlite" => {
            // The provider's own benchmark: group-commit publish vs a raw one-row-per-commit loop.
            if provider_bench {
                run(cargo().args(["bench", "-p", "zps-sqlite", "--bench", "publish"]))?;
            }
            let dir = std::env::temp_dir().join(&tag);
            gateway_args.extend(["--data-dir".to_owned(), dir.display().to_string()]);
        }
        other => bail!("--provider must be memory, postgres, redis, hybrid, sqlite or nats, not {other}"),
    }
    run(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "zps-cli",
        "-p",
        "zps-bench",
    ]))?;
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target"));
    let bin = target.join("release");
    let mut cmd = Command::new(bin.join("zps-bench"));
    cmd.current_dir(root())
        .arg("run")
        .arg("--gateway-bin")
        .arg(bin.join("zero-pub-sub"))
        .args(&rest);
    for a in &gateway_args {
        cmd.arg(format!("--gateway-arg={a}"));
    }
    let result = run(&mut cmd);
    // The gateway runs stored their events in a schema / key prefix of their own: remove it.
    if matches!(provider.as_str(), "postgres" | "hybrid") {
        let _ = Command::new("psql")
            .args([
                &url("ZPS_TEST_POSTGRES_URL"),
                "-qc",
                &format!("DROP SCHEMA IF EXISTS {tag} CASCADE"),
            ])
            .status();
    }
    if provider == "sqlite" {
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(&tag));
    }
    if provider == "nats" {
        delete_nats_streams(&tag);
    }
    if matches!(provider.as_str(), "redis" | "hybrid") {
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!("redis-cli --scan --pattern '{tag}:*' | xargs -r redis-cli del >/dev/null"),
            ])
            .status();
    }
    result
}

/// Test service endpoints, as environment variables for the test run.
fn ensure_services() -> Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    ensure_postgres()?;
    env.push(default_env(
        "ZPS_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    ));
    ensure_redis()?;
    env.push(default_env("ZPS_TEST_REDIS_URL", "redis://127.0.0.1:6379"));
    ensure_nats()?;
    env.push(default_env("ZPS_TEST_NATS_URL", "nats://127.0.0.1:4222"));
    Ok(env)
}

fn default_env(key: &str, default: &str) -> (String, String) {
    (
        key.to_owned(),
        std::env::var(key).unwrap_or_else(|_| default.to_owned()),
    )
}

fn reachable(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

fn wait_for(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if reachable(port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn apt_install(packages: &[&str]) -> Result<()> {
    if std::env::var_os("ZPS_NO_INSTALL").is_some() || !is_root() || !has("apt-get") {
        bail!("not installing automatically (needs root and apt-get, and ZPS_NO_INSTALL unset)");
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn postgres_versions() -> Vec<String> {
    std::fs::read_dir("/etc/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn ensure_postgres() -> Result<()> {
    if reachable(5432) {
        return Ok(());
    }
    eprintln!("xtask: PostgreSQL is not reachable on 127.0.0.1:5432; trying to start it");
    if postgres_versions().is_empty() && !has("pg_ctlcluster") {
        if let Err(e) = apt_install(&["postgresql"]) {
            bail!(
                "PostgreSQL is not installed ({e}). Run:\n  sudo apt-get install -y postgresql\n  \
                 echo 'host all all 127.0.0.1/32 trust' | sudo tee -a /etc/postgresql/*/main/pg_hba.conf\n  \
                 sudo pg_ctlcluster $(ls /etc/postgresql) main restart"
            );
        }
        // Tests connect as `postgres` over TCP without a password, as on CI machines.
        for version in postgres_versions() {
            let hba = format!("/etc/postgresql/{version}/main/pg_hba.conf");
            let current = std::fs::read_to_string(&hba).unwrap_or_default();
            let trust = "host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n";
            std::fs::write(&hba, format!("{trust}{current}")).with_context(|| format!("writing {hba}"))?;
        }
    }
    for version in postgres_versions() {
        let _ = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &version, "main", "start"])
            .status();
    }
    if !wait_for(5432, Duration::from_secs(30)) {
        bail!(
            "PostgreSQL did not come up on 127.0.0.1:5432. Start it with:\n  \
             pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        );
    }
    Ok(())
}

fn ensure_redis() -> Result<()> {
    if reachable(6379) {
        return Ok(());
    }
    eprintln!("xtask: Redis is not reachable on 127.0.0.1:6379; trying to start it");
    if !has("redis-server")
        && let Err(e) = apt_install(&["redis-server"])
    {
        bail!("Redis is not installed ({e}). Run:\n  sudo apt-get install -y redis-server");
    }
    let _ = std::fs::create_dir_all("/var/lib/redis");
    let _ = Command::new("redis-server")
        .args([
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
        ])
        .status();
    if !wait_for(6379, Duration::from_secs(15)) {
        bail!(
            "Redis did not come up on 127.0.0.1:6379. Start it with:\n  \
             redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no"
        );
    }
    Ok(())
}

/// NATS with JetStream on 127.0.0.1:4222 (the NATS provider's tests), and the
/// `nats-server` binary the cluster test starts three of.
fn ensure_nats() -> Result<()> {
    if !has("nats-server")
        && let Err(e) = apt_install(&["nats-server"])
    {
        bail!("nats-server is not installed ({e}). Run:\n  sudo apt-get install -y nats-server");
    }
    if reachable(4222) {
        return Ok(());
    }
    eprintln!("xtask: NATS is not reachable on 127.0.0.1:4222; starting nats-server with JetStream");
    let store = std::env::temp_dir().join("zps-nats-jetstream");
    let log = std::fs::File::create(std::env::temp_dir().join("zps-nats-server.log"))?;
    // Detached: it outlives this run, like the PostgreSQL and Redis it joins.
    Command::new("setsid")
        .args(["nats-server", "-a", "127.0.0.1", "-p", "4222", "-js", "-sd"])
        .arg(&store)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting nats-server")?;
    if !wait_for(4222, Duration::from_secs(15)) {
        bail!(
            "NATS did not come up on 127.0.0.1:4222. Start it with:\n  nats-server -a 127.0.0.1 -p 4222 -js -sd /tmp/zps-nats-jetstream"
        );
    }
    Ok(())
}

/// Deletes the streams a NATS bench run created under `prefix`, speaking the
/// plain NATS text protocol (the `nats` CLI need not be installed).
fn delete_nats_streams(prefix: &str) {
    use std::io::{Read, Write};
    let Ok(mut conn) = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], 4222))) else {
        return;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut out = String::from("CONNECT {\"verbose\":false}\r\n");
    for stream in ["events", "dlq", "presence", "state", "ids"] {
        out.push_str(&format!("PUB $JS.API.STREAM.DELETE.{prefix}_{stream} 0\r\n\r\n"));
    }
    out.push_str("PING\r\n");
    let _ = conn.write_all(out.as_bytes());
    // Wait for the PONG, so the deletes were processed before the process exits.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("PONG") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}
