//! A minimal WebSocket client for the load generator: raw TCP, one read of up to
//! a buffer's worth of bytes, then every complete frame in it handed to a
//! callback as a borrowed slice. No per-message allocation, no locks, no
//! timers: the load generator must be cheaper per delivery than any server it
//! measures, or it measures itself (tungstenite's client was).

use std::io;
use std::net::SocketAddr;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Frame opcodes the load generator cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// UTF-8 text.
    Text,
    /// Binary data.
    Binary,
    /// Connection close.
    Close,
    /// Ping (the reader answers it when it owns the write side).
    Ping,
    /// Pong.
    Pong,
}

impl Opcode {
    fn from_bits(b: u8) -> Option<Self> {
        Some(match b {
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }
}

/// An open client connection after the upgrade handshake.
pub struct WsClient {
    reader: FrameReader,
    writer: FrameWriter,
    /// The subprotocol the server selected, if any.
    pub protocol: Option<String>,
    /// Messages read ahead by [`WsClient::recv`].
    pending: std::collections::VecDeque<(Opcode, Vec<u8>)>,
}

/// Opens `ws://{addr}{path}`, offering `protocol` when given. `buffer` is the
/// read buffer size (the most bytes one read system call takes).
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    protocol: Option<&str>,
    buffer: usize,
) -> io::Result<WsClient> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocol {
        request.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await?;
    // Read the response head; bytes after it already belong to the first frames.
    let mut buf = vec![0u8; buffer.max(4096)];
    let mut end = 0;
    let head_end = loop {
        let n = tcp.read(&mut buf[end..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during handshake",
            ));
        }
        end += n;
        if let Some(i) = buf[..end].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if end == buf.len() {
            return Err(io::Error::other("handshake response too large"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    if !head.starts_with("HTTP/1.1 101") {
        let status = head.lines().next().unwrap_or_default().to_owned();
        return Err(io::Error::other(format!("upgrade refused: {status}")));
    }
    let selected = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-protocol")
            .then(|| value.trim().to_owned())
    });
    let (r, w) = tcp.into_split();
    Ok(WsClient {
        reader: FrameReader {
            tcp: r,
            buf,
            start: head_end,
            end,
            partial: Vec::new(),
            partial_op: None,
        },
        writer: FrameWriter {
            tcp: w,
            out: Vec::new(),
            mask: rand::random(),
        },
        protocol: selected,
        pending: Default::default(),
    })
}

impl WsClient {
    /// Reads at least one more chunk and hands every complete message to `f`;
    /// answers pings. Returns `false` once the connection closed.
    pub async fn read_batch(&mut self, mut f: impl FnMut(Opcode, &[u8])) -> io::Result<bool> {
        // Messages a handshake's `recv` read ahead come first.
        for (op, m) in self.pending.drain(..) {
            f(op, &m);
        }
        let mut pings: Vec<Vec<u8>> = Vec::new();
        let open = self.reader.read_batch(f, &mut pings).await?;
        for p in pings {
            self.writer.send(Opcode::Pong, &p).await?;
        }
        Ok(open)
    }

    /// Reads until one whole text or binary message arrives and returns it
    /// (messages that arrived with it wait for the next call).
    pub async fn recv(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some((_, m)) = self.pending.pop_front() {
                return Ok(m);
            }
            let pending = &mut self.pending;
            let open = self
                .reader
                .read_batch(
                    |op, data| {
                        if matches!(op, Opcode::Text | Opcode::Binary) {
                            pending.push_back((op, data.to_vec()));
                        }
                    },
                    &mut Vec::new(),
                )
                .await?;
            if !open && self.pending.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
            }
        }
    }

    /// Sends one message now.
    pub async fn send(&mut self, op: Opcode, data: &[u8]) -> io::Result<()> {
        self.writer.send(op, data).await
    }

    /// Splits into independently owned halves (a publisher reads answers in another task).
    pub fn split(self) -> (FrameReader, FrameWriter) {
        (self.reader, self.writer)
    }
}

/// The read half.
pub struct FrameReader {
    tcp: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// A fragmented message being reassembled.
    partial: Vec<u8>,
    partial_op: Option<Opcode>,
}

impl FrameReader {
    /// Parses what is buffered (reading more first if nothing complete is there)
    /// and calls `f` for each complete message. Ping payloads are collected in
    /// `pings`. Returns `false` once the peer closed.
    pub async fn read_batch(
        &mut self,
        mut f: impl FnMut(Opcode, &[u8]),
        pings: &mut Vec<Vec<u8>>,
    ) -> io::Result<bool> {
        loop {
            let mut delivered = false;
            let mut closed = false;
            while let Some((op, fin, header, len)) = parse_header(&self.buf[self.start..self.end])? {
                let body = self.start + header;
                let data = &self.buf[body..body + len];
                match op {
                    Some(Opcode::Ping) => pings.push(data.to_vec()),
                    Some(Opcode::Close) => closed = true,
                    Some(op @ (Opcode::Text | Opcode::Binary)) if fin && self.partial_op.is_none() => {
                        f(op, data);
                        delivered = true;
                    }
                    Some(op @ (Opcode::Text | Opcode::Binary)) => {
                        self.partial_op = Some(op);
                        self.partial.clear();
                        self.partial.extend_from_slice(data);
                    }
                    // Continuation.
                    None => {
                        self.partial.extend_from_slice(data);
                        if fin && let Some(op) = self.partial_op.take() {
                            f(op, &self.partial);
                            delivered = true;
                        }
                    }
                    Some(Opcode::Pong) => {}
                }
                self.start = body + len;
            }
            if closed {
                return Ok(false);
            }
            if delivered || !pings.is_empty() {
                return Ok(true);
            }
            // Make room: move the incomplete tail to the front, grow for a big frame.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                let new_len = self.buf.len() * 2;
                self.buf.resize(new_len, 0);
            }
            let n = self.tcp.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Ok(false);
            }
            self.end += n;
        }
    }
}

/// The write half (client frames are masked, as RFC 6455 requires).
pub struct FrameWriter {
    tcp: OwnedWriteHalf,
    out: Vec<u8>,
    mask: [u8; 4],
}

impl FrameWriter {
    /// Appends one frame to the write buffer.
    pub fn queue(&mut self, op: Opcode, data: &[u8]) {
        self.out.push(0x80 | op.bits());
        let len = data.len();
        if len < 126 {
            self.out.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            self.out.push(0x80 | 126);
            self.out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.out.push(0x80 | 127);
            self.out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        self.out.extend_from_slice(&self.mask);
        let mask = self.mask;
        self.out
            .extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.tcp.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Queues and writes one frame.
    pub async fn send(&mut self, op: Opcode, data: &[u8]) -> io::Result<()> {
        self.queue(op, data);
        self.flush().await
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out.len()
    }
}

/// Parses a frame header at the start of `b`: `(opcode (None = continuation),
/// fin, header length, payload length)`, or `None` when the frame is not complete.
#[allow(clippy::type_complexity)]
fn parse_header(b: &[u8]) -> io::Result<Option<(Option<Opcode>, bool, usize, usize)>> {
    if b.len() < 2 {
        return Ok(None);
    }
    let fin = b[0] & 0x80 != 0;
    let bits = b[0] & 0x0F;
    let op = if bits == 0 {
        None
    } else {
        Some(Opcode::from_bits(bits).ok_or_else(|| io::Error::other(format!("unknown opcode {bits}")))?)
    };
    if b[1] & 0x80 != 0 {
        return Err(io::Error::other("server frames must not be masked"));
    }
    let (header, len) = match b[1] & 0x7F {
        126 => {
            if b.len() < 4 {
                return Ok(None);
            }
            (4, u16::from_be_bytes([b[2], b[3]]) as usize)
        }
        127 => {
            if b.len() < 10 {
                return Ok(None);
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (10, u64::from_be_bytes(n) as usize)
        }
        n => (2, n as usize),
    };
    if b.len() < header + len {
        return Ok(None);
    }
    Ok(Some((op, fin, header, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_headers() {
        assert_eq!(parse_header(&[0x81]).unwrap(), None);
        assert_eq!(
            parse_header(&[0x81, 3, b'a', b'b', b'c']).unwrap(),
            Some((Some(Opcode::Text), true, 2, 3))
        );
        assert_eq!(parse_header(&[0x82, 126, 0, 200]).unwrap(), None);
        let mut long = vec![0x01, 126, 0x01, 0x00];
        long.resize(4 + 256, 0);
        assert_eq!(
            parse_header(&long).unwrap(),
            Some((Some(Opcode::Text), false, 4, 256))
        );
        assert_eq!(parse_header(&[0x80, 0]).unwrap(), Some((None, true, 2, 0)));
        assert!(parse_header(&[0x81, 0x81]).is_err(), "masked server frame");
    }
}
