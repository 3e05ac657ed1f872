//! TLS termination in the gateway itself (`wss://`, `https://`) with rustls,
//! so no proxy is needed in front; the certificate can be reloaded from its
//! files while serving (new handshakes use the new one, open connections
//! keep theirs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;

use crate::Gateway;

/// A certificate chain and key, from PEM files, reloadable.
#[derive(Clone)]
pub struct TlsConfig {
    rustls: RustlsConfig,
    cert: PathBuf,
    key: PathBuf,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Paths only: never key material.
        f.debug_struct("TlsConfig")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl TlsConfig {
    /// Loads the PEM certificate chain and private key (PKCS#8, PKCS#1 or SEC1).
    pub async fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> std::io::Result<Self> {
        // rustls needs one process-wide crypto provider; ring is the one built in.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (cert, key) = (cert.as_ref().to_owned(), key.as_ref().to_owned());
        let rustls = RustlsConfig::from_pem_file(&cert, &key).await?;
        Ok(Self { rustls, cert, key })
    }

    /// Reads the files again; new handshakes use them. On error the old
    /// certificate stays in use.
    pub async fn reload(&self) -> std::io::Result<()> {
        self.rustls.reload_from_pem_file(&self.cert, &self.key).await
    }
}

impl Gateway {
    /// Serves over TLS on `listener` until [`Gateway::shutdown`] is called.
    pub async fn serve_tls(&self, listener: std::net::TcpListener, tls: TlsConfig) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        let handle = axum_server::Handle::new();
        let drain = self.shared.drain.clone();
        let stopper = handle.clone();
        tokio::spawn(async move {
            drain.cancelled().await;
            // Sockets are closed by the drain itself; this stops accepting.
            stopper.graceful_shutdown(Some(Duration::from_secs(1)));
        });
        let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls.rustls).acceptor(NoDelay);
        axum_server::from_tcp(listener)
            .acceptor(acceptor)
            .handle(handle)
            .serve(self.router().into_make_service())
            .await
    }
}

/// Realtime frames are small: no Nagle delay, as on plain TCP.
#[derive(Debug, Clone, Copy)]
struct NoDelay;

impl<S> axum_server::accept::Accept<tokio::net::TcpStream, S> for NoDelay {
    type Stream = tokio::net::TcpStream;
    type Service = S;
    type Future = std::future::Ready<std::io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        std::future::ready(Ok((stream, service)))
    }
}
