//! The load generator: subscribers and publishers for every server the bench
//! compares (the gateway in JSON and compact encodings, the bare loops,
//! nats-server), all on [`crate::wsclient`], so they cost the same per delivery
//! whatever they talk to.
//!
//! Each published message carries its index `i` in its room and its send time
//! `t` (µs since the run's epoch). Every subscriber checks `i` arrives
//! 0, 1, 2, … exactly once and records `now - t` for what arrives inside the
//! measured window.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, oneshot};

use crate::nats;
use crate::wsclient::{self, Opcode, WsClient};

/// A server the bench drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The gateway, default JSON protocol.
    Zps,
    /// The gateway, compact event frames (`zps.compact.v1`).
    ZpsCompact,
    /// The bare broadcast loop, small frames.
    BareSmall,
    /// The bare broadcast loop, frames of the gateway's JSON size.
    BareGw,
    /// nats-server, core subjects over its WebSocket listener.
    Nats,
}

impl Target {
    /// The name in tables and JSON lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Zps => "zps-json",
            Self::ZpsCompact => "zps-compact",
            Self::BareSmall => "bare-small",
            Self::BareGw => "bare-gw",
            Self::Nats => "nats",
        }
    }

    /// Whether this target is the gateway.
    pub fn is_gateway(self) -> bool {
        matches!(self, Self::Zps | Self::ZpsCompact)
    }
}

/// The run's time line: publishing starts at `epoch`, measuring at `epoch +
/// warmup`, publishing stops at `epoch + warmup + measure`.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// Time zero (a little in the future when the run is set up).
    pub epoch: Instant,
    /// Measurement window start, µs after `epoch`.
    pub window_start_us: u64,
    /// Measurement window end, µs after `epoch`.
    pub window_end_us: u64,
}

impl Timeline {
    /// A time line starting `lead` from now.
    pub fn new(lead: Duration, warmup: Duration, measure: Duration) -> Self {
        Self {
            epoch: Instant::now() + lead,
            window_start_us: warmup.as_micros() as u64,
            window_end_us: (warmup + measure).as_micros() as u64,
        }
    }

    /// µs since the epoch (0 before it).
    pub fn now_us(&self) -> u64 {
        Instant::now().saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// The instant `us` after the epoch.
    pub fn at(&self, us: u64) -> Instant {
        self.epoch + Duration::from_micros(us)
    }

    fn in_window(&self, us: u64) -> bool {
        (self.window_start_us..self.window_end_us).contains(&us)
    }
}

/// Read buffer of a subscriber connection: one read system call takes up to this much.
pub const SUB_BUFFER: usize = 32 * 1024;

/// The room index `r`'s name.
pub fn room_name(r: usize) -> String {
    format!("bench:{r}")
}

/// Connects a subscriber of `room` and waits until the server confirmed it.
pub async fn open_subscriber(
    target: Target,
    addr: SocketAddr,
    room: &str,
    id: usize,
    buffer: usize,
) -> anyhow::Result<WsClient> {
    match target {
        Target::Zps | Target::ZpsCompact => {
            let protocol =
                (target == Target::ZpsCompact).then_some(zps_protocol::compact::COMPACT_SUBPROTOCOL);
            let mut ws = wsclient::connect(addr, "/ws", protocol, buffer).await?;
            if protocol.is_some() && ws.protocol.as_deref() != protocol {
                bail!("the gateway did not accept the compact subprotocol");
            }
            let init = format!(r#"{{"type":"init","subscriberId":"sub-{id}"}}"#);
            ws.send(Opcode::Text, init.as_bytes()).await?;
            expect(&mut ws, "\"ready\"").await?;
            let sub = format!(r#"{{"type":"subscribe","room":"{room}"}}"#);
            ws.send(Opcode::Text, sub.as_bytes()).await?;
            expect(&mut ws, "\"subscribed\"").await?;
            Ok(ws)
        }
        Target::BareSmall | Target::BareGw => {
            Ok(wsclient::connect(addr, &format!("/ws?room={room}"), None, buffer).await?)
        }
        Target::Nats => {
            let mut ws = wsclient::connect(addr, "/", None, buffer).await?;
            let hello = format!("{}SUB {} 1\r\nPING\r\n", nats::CONNECT, nats::subject(room));
            ws.send(Opcode::Binary, hello.as_bytes()).await?;
            let mut parser = nats::Parser::default();
            let mut ponged = false;
            let mut err = None;
            while !ponged {
                let msg = tokio::time::timeout(Duration::from_secs(20), ws.recv())
                    .await
                    .context("nats-server did not answer")??;
                parser.feed(&msg, |item| match item {
                    nats::Item::Pong => ponged = true,
                    nats::Item::Err(e) => err = Some(String::from_utf8_lossy(e).to_string()),
                    _ => {}
                })?;
                if let Some(e) = err.take() {
                    bail!("nats-server refused the subscription: {e}");
                }
            }
            Ok(ws)
        }
    }
}

async fn expect(ws: &mut WsClient, what: &str) -> anyhow::Result<()> {
    let msg = tokio::time::timeout(Duration::from_secs(20), ws.recv())
        .await
        .context("no answer in 20 s")??;
    let text = String::from_utf8_lossy(&msg);
    if !text.contains(what) {
        bail!("expected {what}, got {text}");
    }
    Ok(())
}

/// What one subscriber saw.
pub struct SubStats {
    /// Messages received.
    pub received: u64,
    /// Messages received inside the measured window.
    pub in_window: u64,
    /// Out-of-order, duplicated or unreadable messages.
    pub bad: u64,
    /// Publish→deliver latency (µs) of what arrived inside the window.
    pub hist: Histogram<u64>,
}

/// Finds the unsigned integer after `key` in `b`.
pub fn scan_u64_bytes(b: &[u8], key: &[u8]) -> Option<u64> {
    let start = memchr::memmem::find(b, key)? + key.len();
    let digits = &b[start..];
    let end = digits
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// `(i, t)` of a delivered message, or `None` for a message that is not a delivery.
fn delivery(target: Target, op: Opcode, data: &[u8]) -> Option<Option<(u64, u64)>> {
    let payload: &[u8] = match (target, op) {
        (Target::Zps, Opcode::Text) => {
            if !data.starts_with(br#"{"type":"event""#) {
                return None;
            }
            // The payload is the envelope's last field.
            let at = memchr::memmem::rfind(data, br#""payload":"#)?;
            &data[at..]
        }
        (Target::ZpsCompact, Opcode::Binary) => match zps_protocol::compact::EventView::decode(data) {
            Ok(view) => view.payload,
            Err(_) => return Some(None),
        },
        (Target::ZpsCompact, _) | (Target::Zps, _) => return None,
        _ => data,
    };
    Some(scan_u64_bytes(payload, b"\"i\":").zip(scan_u64_bytes(payload, b"\"t\":")))
}

/// When a subscriber may stop: once it has `expected` messages, or at `deadline`
/// (whatever is missing then is lost).
#[derive(Debug, Clone, Copy)]
pub struct Finish {
    /// Messages published to the subscriber's room.
    pub expected: u64,
    /// Give up waiting for the rest at this instant.
    pub deadline: Instant,
}

/// Counts one subscriber's deliveries until the publishers are done (`finish`
/// says how many to expect) and everything arrived, the deadline passed, or the
/// connection closed. The per-message path takes no lock, arms no timer and
/// reads the clock once per read system call.
pub async fn run_subscriber(
    mut ws: WsClient,
    target: Target,
    timeline: Timeline,
    mut finish: oneshot::Receiver<Finish>,
) -> SubStats {
    let mut s = SubStats {
        received: 0,
        in_window: 0,
        bad: 0,
        hist: crate::latency_histogram(),
    };
    let mut next_i = 0u64;
    let mut parser = nats::Parser::default();
    let mut done: Option<Finish> = None;
    loop {
        if let Some(f) = done
            && s.received >= f.expected
        {
            return s;
        }
        let mut now = 0;
        let mut clock_read = false;
        let mut on_delivery = |i: u64, t: u64, s: &mut SubStats| {
            if !clock_read {
                now = timeline.now_us();
                clock_read = true;
            }
            if i != next_i {
                s.bad += 1;
            }
            next_i = i + 1;
            s.received += 1;
            if timeline.in_window(now) {
                s.in_window += 1;
                let _ = s.hist.record(now.saturating_sub(t).max(1));
            }
        };
        let batch = ws.read_batch(|op, data| {
            if target == Target::Nats {
                let fed = parser.feed(data, |item| {
                    if let nats::Item::Msg(m) = item {
                        match scan_u64_bytes(m, b"\"i\":").zip(scan_u64_bytes(m, b"\"t\":")) {
                            Some((i, t)) => on_delivery(i, t, &mut s),
                            None => s.bad += 1,
                        }
                    }
                });
                if fed.is_err() {
                    s.bad += 1;
                }
                return;
            }
            match delivery(target, op, data) {
                Some(Some((i, t))) => on_delivery(i, t, &mut s),
                Some(None) => s.bad += 1,
                None => {}
            }
        });
        let read = match done {
            // Publishing: no timer on the read, only the (lock-free) finish signal.
            None => tokio::select! {
                biased;
                f = &mut finish => {
                    match f {
                        Ok(f) => done = Some(f),
                        Err(_) => return s,
                    }
                    continue;
                }
                r = batch => r,
            },
            Some(f) => match tokio::time::timeout_at(f.deadline.into(), batch).await {
                Ok(r) => r,
                Err(_) => return s,
            },
        };
        if !matches!(read, Ok(true)) {
            return s;
        }
    }
}

/// One publisher's job.
pub struct PubSpec {
    /// Who to publish to.
    pub target: Target,
    /// The server.
    pub addr: SocketAddr,
    /// Room indexes it publishes to, round-robin.
    pub rooms: Vec<usize>,
    /// Messages per second over all its rooms (`None`: as fast as the window allows).
    pub rate: Option<f64>,
    /// Unanswered publishes allowed in flight.
    pub window: usize,
    /// Publisher number (for its subscriber id).
    pub id: usize,
}

/// What a publisher sent.
pub struct PubStats {
    /// Messages sent per room (same order as [`PubSpec::rooms`]).
    pub per_room: Vec<u64>,
    /// Messages sent inside the measured window.
    pub in_window: u64,
    /// Error answers.
    pub errors: u64,
}

fn publish_frame(target: Target, room: &str, i: u64, t: u64) -> Vec<u8> {
    match target {
        Target::Zps | Target::ZpsCompact => format!(
            r#"{{"type":"publish","event":{{"type":"bench","room":"{room}","payload":{{"t":{t},"i":{i}}}}}}}"#
        )
        .into_bytes(),
        Target::BareSmall => format!(r#"{{"room":"{room}","t":{t},"i":{i}}}"#).into_bytes(),
        // The gateway's event frame: same envelope, same size.
        Target::BareGw => format!(
            r#"{{"type":"event","data":{{"id":"01935b9e-0000-7000-8000-{i:012}","type":"bench","room":"{room}","sequence":{},"emittedAt":"2026-11-22T00:00:00.000Z","expiresAt":"2026-11-23T00:00:00.000Z","payload":{{"t":{t},"i":{i}}}}}}}"#,
            i + 1
        )
        .into_bytes(),
        Target::Nats => {
            let payload = format!(r#"{{"t":{t},"i":{i}}}"#);
            format!("PUB {} {}\r\n{payload}\r\nPING\r\n", nats::subject(room), payload.len()).into_bytes()
        }
    }
}

/// Publishes until the window closes, at most `window` unanswered, paced to `rate`.
pub async fn run_publisher(spec: PubSpec, timeline: Timeline) -> anyhow::Result<PubStats> {
    let PubSpec {
        target,
        addr,
        rooms,
        rate,
        window,
        id,
    } = spec;
    let path = match target {
        Target::Zps | Target::ZpsCompact => "/ws",
        Target::BareSmall | Target::BareGw => "/publish",
        Target::Nats => "/",
    };
    let mut ws = wsclient::connect(addr, path, None, 64 * 1024).await?;
    match target {
        Target::Zps | Target::ZpsCompact => {
            let init = format!(r#"{{"type":"init","subscriberId":"pub-{id}"}}"#);
            ws.send(Opcode::Text, init.as_bytes()).await?;
            expect(&mut ws, "\"ready\"").await?;
        }
        Target::Nats => ws.send(Opcode::Binary, nats::CONNECT.as_bytes()).await?,
        _ => {}
    }
    let (mut reader, mut writer) = ws.split();
    let permits = Arc::new(Semaphore::new(window));
    let answered = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let acks = {
        let (permits, answered, errors) = (permits.clone(), answered.clone(), errors.clone());
        tokio::spawn(async move {
            let mut parser = nats::Parser::default();
            let mut pings = Vec::new();
            loop {
                let mut n = 0usize;
                let mut errs = 0u64;
                let read = reader
                    .read_batch(
                        |_, data| match target {
                            Target::Nats => {
                                let _ = parser.feed(data, |item| match item {
                                    nats::Item::Pong => n += 1,
                                    nats::Item::Err(e) => {
                                        eprintln!("nats publisher error: {}", String::from_utf8_lossy(e));
                                        errs += 1;
                                    }
                                    _ => {}
                                });
                            }
                            Target::BareSmall | Target::BareGw => n += usize::from(data == b"ok"),
                            Target::Zps | Target::ZpsCompact => {
                                if data.starts_with(br#"{"type":"published""#) {
                                    n += 1;
                                } else if data.starts_with(br#"{"type":"error""#) {
                                    eprintln!("publisher error: {}", String::from_utf8_lossy(data));
                                    n += 1;
                                    errs += 1;
                                }
                            }
                        },
                        &mut pings,
                    )
                    .await;
                pings.clear();
                answered.fetch_add(n as u64, Ordering::AcqRel);
                errors.fetch_add(errs, Ordering::AcqRel);
                permits.add_permits(n);
                if !matches!(read, Ok(true)) {
                    return;
                }
            }
        })
    };
    tokio::time::sleep_until(timeline.epoch.into()).await;
    let mut per_room = vec![0u64; rooms.len()];
    let mut sent = 0u64;
    let mut in_window = 0u64;
    'publish: loop {
        for (k, &r) in rooms.iter().enumerate() {
            let now = timeline.now_us();
            if now >= timeline.window_end_us {
                break 'publish;
            }
            if let Some(rate) = rate {
                let due = (sent as f64 / rate * 1e6) as u64;
                if due > now {
                    writer.flush().await?;
                    tokio::time::sleep_until(timeline.at(due).into()).await;
                }
            }
            if permits.available_permits() == 0 {
                writer.flush().await?;
            }
            permits.acquire().await?.forget();
            let t = timeline.now_us();
            if timeline.in_window(t) {
                in_window += 1;
            }
            writer.queue(
                Opcode::Text,
                &publish_frame(target, &room_name(r), per_room[k], t),
            );
            per_room[k] += 1;
            sent += 1;
            if writer.queued() >= 32 * 1024 {
                writer.flush().await?;
            }
        }
    }
    writer.flush().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.load(Ordering::Acquire) < sent {
        if Instant::now() > deadline {
            bail!(
                "{} of {sent} publishes unanswered after 60 s",
                sent - answered.load(Ordering::Acquire)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    acks.abort();
    Ok(PubStats {
        per_room,
        in_window,
        errors: errors.load(Ordering::Acquire),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_deliveries_in_every_encoding() {
        let json = br#"{"type":"event","data":{"id":"x","type":"bench","room":"bench:3","sequence":42,"payload":{"t":123,"i":9}}}"#;
        assert_eq!(delivery(Target::Zps, Opcode::Text, json), Some(Some((9, 123))));
        assert_eq!(
            delivery(Target::Zps, Opcode::Text, br#"{"type":"subscribed"}"#),
            None
        );
        assert_eq!(
            delivery(
                Target::BareSmall,
                Opcode::Text,
                br#"{"room":"bench:1","t":5,"i":0}"#
            ),
            Some(Some((0, 5)))
        );
        assert_eq!(delivery(Target::ZpsCompact, Opcode::Binary, b"\x01"), Some(None));
        let frame = publish_frame(Target::BareGw, "bench:0", 7, 99);
        assert_eq!(
            delivery(Target::BareGw, Opcode::Text, &frame),
            Some(Some((7, 99)))
        );
    }
}
