//! TLS endpoints of the tests' own, signed by a throwaway CA: a Redis started
//! with `--tls-port`, a PostgreSQL cluster with `ssl=on` that refuses plain
//! connections, and a TLS-terminating proxy (for servers that cannot speak TLS
//! themselves, like the MongoDB stand-in). Each is stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::pki::{Ca, leaf};

/// A port nothing listens on right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes a leaf for 127.0.0.1 signed by `ca` into `dir`: (cert path, key path).
pub(crate) fn write_leaf(ca: &Ca, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key, _) = leaf(ca, name);
    let (cert_path, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    (cert_path, key_path)
}

/// A `redis-server` serving TLS only.
pub(crate) struct TlsRedis {
    child: Child,
    pub(crate) port: u16,
}

impl TlsRedis {
    pub(crate) fn start(ca: &Ca, dir: &Path) -> Self {
        let (cert, key) = write_leaf(ca, dir, "redis");
        let ca_file = dir.join("redis-ca.pem");
        ca.write_pem(&ca_file);
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca_file)
            .args(["--tls-auth-clients", "no", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is needed for the TLS tests (apt-get install redis-server)");
        let mut redis = Self { child, port };
        wait_for_port(port, "redis-server --tls-port");
        assert!(redis.child.try_wait().unwrap().is_none(), "redis-server exited");
        redis
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Runs a PostgreSQL tool as the `postgres` user (the server refuses to run as root).
fn as_postgres(tool: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(Path::new(PG_BIN).join(tool));
    c
}

/// A throwaway PostgreSQL cluster: TLS on, plain TCP connections refused.
pub(crate) struct TlsPostgres {
    data: PathBuf,
    pub(crate) port: u16,
}

impl TlsPostgres {
    pub(crate) fn start(ca: &Ca, dir: &Path) -> Self {
        let data = dir.join("pgdata");
        let chown = |p: &Path| {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(p)
                .status()
                .unwrap();
            assert!(ok.success(), "chown {} (the tests run as root)", p.display());
        };
        chown(dir);
        let out = as_postgres("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("runuser + initdb are needed for the PostgreSQL TLS test");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (cert, key) = write_leaf(ca, &data, "server");
        chown(&data);
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let port = free_port();
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nssl = on\n\
             ssl_cert_file = '{}'\nssl_key_file = '{}'\nfsync = off\n",
            data.display(),
            cert.display(),
            key.display()
        );
        append(&data.join("postgresql.conf"), &conf);
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        chown(&data);
        let out = as_postgres("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-l"])
            .arg(data.join("server.log"))
            .args(["-w", "-t", "30", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { data, port }
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// A TLS acceptor serving a leaf for 127.0.0.1 named `name`, signed by `ca`.
pub(crate) fn tls_acceptor(ca: &Ca, name: &str) -> tokio_rustls::TlsAcceptor {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (cert, key, _) = leaf(ca, name);
    let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Accepts TLS on a port of its own and forwards the plain bytes to `upstream`.
pub(crate) async fn tls_proxy(ca: &Ca, upstream: std::net::SocketAddr) -> u16 {
    let acceptor = tls_acceptor(ca, "proxy");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}
