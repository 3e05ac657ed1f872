//! nats-server as the external peer: started by the bench on free loopback ports
//! with its WebSocket listener, core NATS subjects standing in for rooms. The
//! same load generator drives it, so its figures and ours come from one run.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nats-server; killed on drop.
pub struct NatsServer {
    child: Child,
    /// The WebSocket listener (`ws://addr/`).
    pub ws_addr: SocketAddr,
    dir: PathBuf,
}

impl NatsServer {
    /// The server's process id (for its CPU time and memory).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The nats-server binary: `$ZPS_BENCH_NATS_SERVER`, else `nats-server` on PATH
/// (Debian: `apt install nats-server`), else `/usr/sbin/nats-server`.
pub fn binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ZPS_BENCH_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let sbin = PathBuf::from("/usr/sbin/nats-server");
        sbin.is_file().then_some(sbin)
    })
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts nats-server (core NATS, no JetStream) with a plain-text WebSocket listener.
pub fn start(bin: &std::path::Path) -> io::Result<NatsServer> {
    let dir = std::env::temp_dir().join(format!("zps-bench-nats-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (port, ws_port) = (free_port()?, free_port()?);
    // Limits raised so the server never cuts the load generator off as a slow
    // consumer (the gateway and the baseline get the same treatment).
    let config = format!(
        "listen: 127.0.0.1:{port}\nmax_pending: 268435456\nwrite_deadline: \"30s\"\nmax_connections: 100000\n\
         websocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n  compression: false\n}}\n"
    );
    let conf = dir.join("nats.conf");
    std::fs::write(&conf, config)?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let ws_addr: SocketAddr = ([127, 0, 0, 1], ws_port).into();
    let server = NatsServer { child, ws_addr, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(ws_addr).is_err() {
        if Instant::now() > deadline {
            return Err(io::Error::other(
                "nats-server did not open its WebSocket port in 10 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

/// The subject standing in for a room (`bench:3` → `bench.3`).
pub fn subject(room: &str) -> String {
    room.replace(':', ".")
}

/// The client's greeting: no echo, no `+OK` after every command.
pub const CONNECT: &str =
    "CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"headers\":false,\"protocol\":1}\r\n";

/// One server-to-client protocol item.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A delivered message's payload.
    Msg(&'a [u8]),
    /// `PING` (answer `PONG`).
    Ping,
    /// `PONG`.
    Pong,
    /// `-ERR`.
    Err(&'a [u8]),
    /// `INFO`, `+OK`.
    Other,
}

/// Incremental parser for the protocol bytes carried in WebSocket frames (a
/// frame may hold several items, or part of one).
#[derive(Default)]
pub struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    /// Adds bytes and calls `f` for every complete item.
    pub fn feed(&mut self, data: &[u8], mut f: impl FnMut(Item<'_>)) -> io::Result<()> {
        // Fast path: nothing pending, parse straight from the frame.
        if self.buf.is_empty() {
            let n = parse(data, &mut f)?;
            self.buf.extend_from_slice(&data[n..]);
            return Ok(());
        }
        self.buf.extend_from_slice(data);
        let n = parse(&self.buf, &mut f)?;
        self.buf.drain(..n);
        Ok(())
    }
}

fn parse(mut b: &[u8], f: &mut impl FnMut(Item<'_>)) -> io::Result<usize> {
    let total = b.len();
    loop {
        let Some(eol) = memchr::memmem::find(b, b"\r\n") else {
            return Ok(total - b.len());
        };
        let line = &b[..eol];
        if line.starts_with(b"MSG ") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let size = line
                .rsplit(|c| *c == b' ')
                .next()
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or_else(|| io::Error::other("bad MSG line"))?;
            let start = eol + 2;
            if b.len() < start + size + 2 {
                return Ok(total - b.len());
            }
            f(Item::Msg(&b[start..start + size]));
            b = &b[start + size + 2..];
            continue;
        }
        f(match line {
            b"PING" => Item::Ping,
            b"PONG" => Item::Pong,
            l if l.starts_with(b"-ERR") => Item::Err(l),
            _ => Item::Other,
        });
        b = &b[eol + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_items_split_across_frames() {
        let mut p = Parser::default();
        let mut got = Vec::new();
        let stream = b"INFO {}\r\nMSG a.b 1 5\r\nhello\r\nPING\r\nMSG a.b 1 _INBOX.x 3\r\nabc\r\nPONG\r\n";
        for chunk in stream.chunks(7) {
            p.feed(chunk, |i| {
                got.push(match i {
                    Item::Msg(m) => String::from_utf8_lossy(m).to_string(),
                    Item::Ping => "PING".into(),
                    Item::Pong => "PONG".into(),
                    Item::Err(_) => "ERR".into(),
                    Item::Other => "other".into(),
                })
            })
            .unwrap();
        }
        assert_eq!(got, ["other", "hello", "PING", "abc", "PONG"]);
    }
}
