//! Tokens verified with keys from a JWKS endpoint (`--jwt-jwks-url`): served
//! over HTTPS by a throwaway CA the gateway trusts through `--ca-file`; the
//! token's `kid` picks the key; a rotated key is fetched on first sight; forged
//! `kid`s are refused without hammering the identity provider; the schedule
//! drops revoked keys; a wrong CA or a plain-http URL stops the start.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::{Value, json};
use support::pki::{ca, temp_dir};
use support::tls_servers::tls_acceptor;
use support::{run, send, start_gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// A value shared with the server task.
type Shared<T> = Arc<std::sync::Mutex<T>>;

/// A tiny HTTPS server answering every request with the current JWKS.
struct JwksServer {
    url: String,
    body: Shared<String>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(authority: &support::pki::Ca, keys: &[(&str, &KeyPair)]) -> Self {
        let acceptor = tls_acceptor(authority, "jwks");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let body: Shared<String> = Default::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let server = Self {
            url: format!("https://127.0.0.1:{port}/.well-known/jwks.json"),
            body: body.clone(),
            hits: hits.clone(),
        };
        server.serve(keys);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, body, hits) = (acceptor.clone(), body.clone(), hits.clone());
                tokio::spawn(async move {
                    // A client that refuses our certificate fails here: not a hit.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    let body = body.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        server
    }

    /// Serves these keys from now on.
    fn serve(&self, keys: &[(&str, &KeyPair)]) {
        let set = json!({"keys": keys.iter().map(|(kid, k)| jwk(kid, k)).collect::<Vec<_>>()});
        *self.body.lock().unwrap() = set.to_string();
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The public JWK of a P-256 key.
fn jwk(kid: &str, key: &KeyPair) -> Value {
    let raw = key.public_key_raw(); // 0x04 || x || y
    json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
    })
}

fn claims(sub: &str) -> Value {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    json!({"sub": sub, "exp": now + 600, "iss": "https://idp.test"})
}

/// An ES256 token signed by `key`, naming `kid` (or none).
fn token(key: &KeyPair, kid: Option<&str>, sub: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    let signer = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims(sub), &signer).unwrap()
}

/// Connects with `token` and returns the first reply to `init`: `ready` or an error.
async fn attempt(ws_url: &str, token: &str, sub: &str) -> Value {
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    send(
        &mut ws,
        json!({"type": "init", "subscriberId": sub, "token": token}),
    )
    .await;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Close(f))) => return json!({"type": "closed", "frame": format!("{f:?}")}),
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
    }
}

fn refused_because(reply: &Value, why: &str) {
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "4401", "{reply}");
    let message = reply["message"].as_str().unwrap_or_default();
    assert!(message.contains(why), "{why:?} not in {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_key_by_kid_rotation_fetched_once_forged_kids_refused_without_refetching() {
    let dir = temp_dir("jwks");
    let authority = ca();
    let ca_file = dir.join("ca.pem");
    authority.write_pem(&ca_file);
    let (k1, k2, stranger) = (
        KeyPair::generate().unwrap(),
        KeyPair::generate().unwrap(),
        KeyPair::generate().unwrap(),
    );
    let idp = JwksServer::start(&authority, &[("k1", &k1)]).await;
    let gw = start_gateway(&[
        "--jwt-jwks-url",
        &idp.url,
        "--ca-file",
        ca_file.to_str().unwrap(),
        "--jwt-issuer",
        "https://idp.test",
    ]);
    assert_eq!(idp.hits(), 1, "the key set is fetched once at startup");

    let ok = attempt(&gw.ws, &token(&k1, Some("k1"), "alice"), "alice").await;
    assert_eq!(ok["type"], "ready", "{ok}");
    refused_because(
        &attempt(&gw.ws, &token(&k1, None, "alice"), "alice").await,
        "no kid",
    );
    // Signed by a key the set does not hold, under a kid it does: bad signature.
    refused_because(
        &attempt(&gw.ws, &token(&stranger, Some("k1"), "eve"), "eve").await,
        "invalid token",
    );
    // The key's algorithm is fixed by the set: an HS256 token "signed" with the public key is refused.
    let confused = jsonwebtoken::encode(
        &Header {
            kid: Some("k1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims("eve"),
        &EncodingKey::from_secret(k1.public_key_raw()),
    )
    .unwrap();
    refused_because(&attempt(&gw.ws, &confused, "eve").await, "invalid token");
    assert_eq!(idp.hits(), 1, "known kids never fetch");

    // The identity provider rotates: the new kid is fetched on first sight and accepted.
    idp.serve(&[("k1", &k1), ("k2", &k2)]);
    let ok = attempt(&gw.ws, &token(&k2, Some("k2"), "bob"), "bob").await;
    assert_eq!(ok["type"], "ready", "{ok}");
    assert_eq!(idp.hits(), 2, "one refetch for the rotated key");

    // Forged kids right after: refused, and the provider is not asked again (bounded rate).
    for i in 0..10 {
        let forged = token(&stranger, Some(&format!("forged-{i}")), "eve");
        refused_because(&attempt(&gw.ws, &forged, "eve").await, "not in the JWKS");
    }
    assert_eq!(
        idp.hits(),
        2,
        "forged kids inside the refetch interval cost no fetch"
    );
    // Known keys keep working meanwhile.
    assert_eq!(
        attempt(&gw.ws, &token(&k1, Some("k1"), "alice"), "alice").await["type"],
        "ready"
    );
    drop(gw);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_schedule_drops_a_revoked_key() {
    let dir = temp_dir("jwks-schedule");
    let authority = ca();
    let ca_file = dir.join("ca.pem");
    authority.write_pem(&ca_file);
    let (k1, k2) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let idp = JwksServer::start(&authority, &[("k1", &k1), ("k2", &k2)]).await;
    let gw = start_gateway(&[
        "--jwt-jwks-url",
        &idp.url,
        "--ca-file",
        ca_file.to_str().unwrap(),
        "--jwt-jwks-refresh-secs",
        "1",
    ]);
    assert_eq!(
        attempt(&gw.ws, &token(&k1, Some("k1"), "alice"), "alice").await["type"],
        "ready"
    );
    idp.serve(&[("k2", &k2)]); // k1 revoked
    let mut revoked = false;
    for _ in 0..100 {
        let reply = attempt(&gw.ws, &token(&k1, Some("k1"), "alice"), "alice").await;
        if reply["type"] == "error" {
            refused_because(&reply, "not in the JWKS");
            revoked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(revoked, "the scheduled refresh dropped k1");
    assert!(idp.hits() >= 2);
    assert_eq!(
        attempt(&gw.ws, &token(&k2, Some("k2"), "bob"), "bob").await["type"],
        "ready"
    );
    drop(gw);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_start_fails_on_an_untrusted_certificate_or_plain_http() {
    let authority = ca();
    let k1 = KeyPair::generate().unwrap();
    let idp = JwksServer::start(&authority, &[("k1", &k1)]).await;
    let url = idp.url.clone();
    // Without --ca-file the system roots do not know the throwaway CA.
    let (code, _, stderr) =
        tokio::task::spawn_blocking(move || run(&["gateway", "--port", "0", "--jwt-jwks-url", &url], &[]))
            .await
            .unwrap();
    assert_ne!(code, 0);
    assert!(stderr.contains("--jwt-jwks-url"), "{stderr}");
    assert_eq!(idp.hits(), 0, "the TLS handshake failed before any request");
    let (code, _, stderr) = run(
        &[
            "gateway",
            "--port",
            "0",
            "--jwt-jwks-url",
            "http://idp.example.com/jwks.json",
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("must be https://"), "{stderr}");
}
