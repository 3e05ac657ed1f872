//! A TCP fault proxy: clients connect to it, it forwards to the current
//! upstream. Faults are switched at run time: added latency, a pause (nothing
//! moves either way, nothing is lost: a network partition that TCP rides out
//! when it heals), a blackhole (bytes read and dropped both ways while sockets
//! stay open: a half-open peer), refusing new connections, and cutting every
//! open one (what a load balancer does when its backend dies, or what a long
//! partition ends in).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// What the proxy does to traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forward everything.
    #[default]
    None,
    /// Hold every chunk this long before forwarding it.
    Latency(Duration),
    /// Forward nothing, both ways, and lose nothing: bytes wait until the fault
    /// is lifted (TCP retransmitting through a partition).
    Pause,
    /// Read and drop every byte, both ways; sockets stay open.
    Blackhole,
    /// Close new connections at once (open ones are left alone).
    Refuse,
}

struct State {
    upstream: RwLock<SocketAddr>,
    fault: RwLock<Fault>,
    open: Mutex<Vec<AbortHandle>>,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: AbortHandle,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}

impl FaultProxy {
    /// Listens on a free loopback port, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            upstream: RwLock::new(upstream),
            fault: RwLock::new(Fault::None),
            open: Mutex::new(Vec::new()),
        });
        let accept = {
            let state = state.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if *state.fault.read() == Fault::Refuse {
                        drop(client);
                        continue;
                    }
                    let target = *state.upstream.read();
                    let conn = tokio::spawn(forward(client, target, state.clone()));
                    let mut open = state.open.lock();
                    open.retain(|h| !h.is_finished());
                    open.push(conn.abort_handle());
                }
            })
            .abort_handle()
        };
        Ok(Self { addr, state, accept })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// New connections go to `upstream` from now on.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.state.upstream.write() = upstream;
    }

    /// Switches the fault.
    pub fn set_fault(&self, fault: Fault) {
        *self.state.fault.write() = fault;
    }

    /// Closes every open connection (both sides see the socket end).
    pub fn cut_all(&self) {
        for h in self.state.open.lock().drain(..) {
            h.abort();
        }
    }
}

async fn forward(client: TcpStream, target: SocketAddr, state: Arc<State>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pipe(cr, sw, state.clone());
    let down = pipe(sr, cw, state);
    // Either direction ending ends the connection.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            let fault = *state.fault.read();
            match fault {
                Fault::Pause => tokio::time::sleep(Duration::from_millis(10)).await,
                Fault::Blackhole => break,
                Fault::Latency(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Fault::None | Fault::Refuse => break,
            }
        }
        if *state.fault.read() == Fault::Blackhole {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(within, s.read_exact(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(buf.to_vec())
    }

    #[tokio::test]
    async fn forwards_blackholes_cuts_and_switches_upstream() {
        let (a, b) = (echo_server().await, echo_server().await);
        let proxy = FaultProxy::start(a).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            roundtrip(&mut s, Duration::from_secs(5)).await.as_deref(),
            Some(&b"ping"[..])
        );
        proxy.set_fault(Fault::Blackhole);
        assert_eq!(
            roundtrip(&mut s, Duration::from_millis(200)).await,
            None,
            "partitioned"
        );
        proxy.set_fault(Fault::None);
        // A pause holds bytes back and loses none.
        let mut p = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.set_fault(Fault::Pause);
        assert_eq!(
            roundtrip(&mut p, Duration::from_millis(200)).await,
            None,
            "paused"
        );
        proxy.set_fault(Fault::None);
        let mut buf4 = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), p.read_exact(&mut buf4))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf4, b"ping", "the held bytes arrive after the pause");
        proxy.cut_all();
        let mut buf = [0u8; 1];
        let ended = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(ended, Ok(0) | Err(_)), "the cut connection ends");
        proxy.set_upstream(b);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            roundtrip(&mut s, Duration::from_secs(5)).await.as_deref(),
            Some(&b"ping"[..])
        );
        proxy.set_fault(Fault::Refuse);
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut refused, Duration::from_secs(2)).await, None);
    }
}
