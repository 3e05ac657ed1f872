//! `zero-pub-sub`: run the realtime gateway and operate its providers.
//!
//! `zero-pub-sub gateway` with no arguments serves ws://127.0.0.1:8080/ws on
//! the embedded in-memory provider. Every flag is also an environment variable
//! and a snake_case key of the `--config` TOML file (file < environment < flags).

mod ops;
mod providers;
mod remote;
mod settings;

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use settings::{GatewayArgs, Settings};
use zps_core::Realtime;
use zps_gateway::{AuthConfig, Gateway, GatewayConfig, JwtKey};

/// Realtime event engine: durable, ordered, replayable pub/sub over WebSocket and SSE.
#[derive(Debug, Parser)]
#[command(name = "zero-pub-sub", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the WebSocket + SSE gateway (default: 127.0.0.1:8080, in-memory provider).
    Gateway(Box<GatewayArgs>),
    /// Ask a running gateway for its health; exits 0 when healthy or degraded.
    Health {
        /// The gateway's base URL.
        #[arg(long, env = "ZERO_PUBSUB_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
    },
    /// Apply the PostgreSQL schema (migrations/*.sql); a no-op when already applied.
    Migrate(ops::MigrateArgs),
    /// Delete expired events from the provider.
    Prune(ops::PruneArgs),
    /// Publish one event through a shared provider.
    Publish(ops::PublishArgs),
    /// Print a room's events as JSON lines (live, or from a sequence) until Ctrl-C.
    Tail(ops::TailArgs),
    /// Print one page of a room's history.
    Replay(ops::ReplayArgs),
    /// Active rooms with subscriber counts across the cluster, or one room's state (HTTP API).
    Rooms(remote::RoomsArgs),
    /// Who is present in a room (HTTP API).
    Presence(remote::PresenceArgs),
    /// A page of a room's history from a running gateway (HTTP API).
    History(remote::HistoryArgs),
    /// List, replay or drop dead letters (HTTP API).
    #[command(subcommand)]
    Dlq(remote::DlqCommand),
    /// Close a connection or every connection of a subscriber (HTTP API).
    Kick(remote::KickArgs),
    /// Mint a client token for a user (HTTP API; the gateway needs --jwt-secret).
    Token(remote::TokenArgs),
    /// Make API keys for the HTTP API.
    #[command(subcommand, name = "api-key")]
    ApiKey(remote::ApiKeyCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(zps_gateway::LOG_CLAMPS.iter().fold(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
            |filter, clamp| match clamp.parse() {
                Ok(d) => filter.add_directive(d),
                Err(_) => filter,
            },
        ))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Gateway(args) => run_gateway(*args).await,
            Command::Health { url } => health(&url).await,
            Command::Migrate(a) => ops::migrate(a).await,
            Command::Prune(a) => ops::prune(a).await,
            Command::Publish(a) => ops::publish(a).await,
            Command::Tail(a) => ops::tail(a).await,
            Command::Replay(a) => ops::replay(a).await,
            Command::Rooms(a) => remote::rooms(a).await,
            Command::Presence(a) => remote::presence(a).await,
            Command::History(a) => remote::history(a).await,
            Command::Dlq(c) => remote::dlq(c).await,
            Command::Kick(a) => remote::kick(a).await,
            Command::Token(a) => remote::token(a).await,
            Command::ApiKey(c) => remote::api_key(c),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_gateway(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(args)?;
    let transport = providers::connect(&settings.provider).await?;
    let mut builder = Realtime::builder(transport).default_ttl(settings.default_ttl);
    if settings.require_tenant {
        builder = builder.middleware(std::sync::Arc::new(zps_core::middleware::TenantMiddleware));
    }
    if !settings.redact_payload_fields.is_empty() {
        let redact = zps_core::middleware::RedactMiddleware::new(&settings.redact_payload_fields);
        builder = builder.middleware(std::sync::Arc::new(redact));
    }
    let engine = builder.build();
    let config = gateway_config(&settings)?;
    let gateway = Gateway::new(engine, config).context("invalid gateway configuration")?;
    if let Some(url) = &settings.jwt_jwks_url {
        let n = gateway
            .load_keys()
            .await
            .with_context(|| format!("cannot load the token keys from --jwt-jwks-url {url}"))?;
        tracing::info!(
            keys = n,
            "JWKS loaded; refreshed every {:?}",
            settings.jwt_jwks_refresh
        );
    }

    let addr = format!("{}:{}", settings.host, settings.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local: SocketAddr = listener.local_addr().context("cannot read the bound address")?;
    let tls = match &settings.tls {
        Some((cert, key)) => Some(
            zps_gateway::tls::TlsConfig::from_pem_files(cert, key)
                .await
                .with_context(|| {
                    format!(
                        "cannot load --tls-cert {} / --tls-key {}",
                        cert.display(),
                        key.display()
                    )
                })?,
        ),
        None => None,
    };
    let (ws, http) = if tls.is_some() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    tracing::info!(
        provider = settings.provider.kind.as_str(),
        auth = if settings.jwt_secret.is_some()
            || settings.jwt_public_key.is_some()
            || settings.jwt_jwks_url.is_some()
        {
            "jwt"
        } else {
            "none"
        },
        "gateway listening on {local}"
    );
    // A stable line for humans and scripts.
    println!("zero-pub-sub gateway listening on {ws}://{local}/ws (SSE: {http}://{local}/events)");
    if settings.demo {
        println!("demo chat: {http}://{local}/demo/");
    }

    let serving = {
        let gateway = gateway.clone();
        match tls {
            Some(tls) => {
                reload_on_sighup(tls.clone());
                let std = listener.into_std().context("cannot hand the socket to TLS")?;
                tokio::spawn(async move { gateway.serve_tls(std, tls).await })
            }
            None => tokio::spawn(async move { gateway.serve(listener).await }),
        }
    };
    shutdown_signal().await;
    tracing::info!("shutdown signal received; draining");
    gateway.shutdown().await;
    match serving.await {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => Err(e).context("server error"),
        Err(e) => Err(e).context("server task failed"),
    }
}

fn gateway_config(s: &Settings) -> anyhow::Result<GatewayConfig> {
    let jwt = match (&s.jwt_secret, &s.jwt_public_key, &s.jwt_jwks_url) {
        (Some(secret), _, _) => Some(JwtKey::Hs256(secret.as_bytes().to_vec())),
        (None, Some(path), _) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --jwt-public-key {}", path.display()))?;
            Some(public_key(pem).with_context(|| format!("unusable public key in {}", path.display()))?)
        }
        (None, None, Some(url)) => {
            let mut jwks = zps_gateway::jwks::JwksConfig::new(url.clone());
            jwks.refresh_every = s.jwt_jwks_refresh;
            jwks.ca_pem = s.provider.ca_pem()?;
            Some(JwtKey::Jwks(jwks))
        }
        (None, None, None) => None,
    };
    let mut config = GatewayConfig {
        limits: s.limits.clone(),
        auth: AuthConfig {
            jwt,
            scopes: s.scopes.clone(),
            rooms_claim: Some(s.rooms_claim.clone()),
            grants_claim: Some(s.grants_claim.clone()),
            issuer: s.jwt_issuer.clone(),
            audience: s.jwt_audience.clone(),
            leeway: s.jwt_leeway,
            member_claims: s.member_claims.clone(),
            ..Default::default()
        },
        allowed_origins: s.allowed_origins.clone(),
        api: s.api.clone(),
        demo: s.demo,
        ..Default::default()
    };
    config.drain_timeout = Some(s.drain_timeout);
    Ok(config)
}

/// Picks RS256 or ES256 from the PEM's key type.
fn public_key(pem: Vec<u8>) -> anyhow::Result<JwtKey> {
    let rsa = JwtKey::Rs256Pem(pem.clone());
    if zps_gateway::auth::JwtVerifier::new(&rsa, std::time::Duration::ZERO).is_ok() {
        return Ok(rsa);
    }
    let ec = JwtKey::Es256Pem(pem);
    if zps_gateway::auth::JwtVerifier::new(&ec, std::time::Duration::ZERO).is_ok() {
        return Ok(ec);
    }
    bail!("expected an RSA (RS256) or P-256 EC (ES256) public key in PEM format")
}

/// `kill -HUP`: read the certificate files again (renewals without a restart).
fn reload_on_sighup(tls: zps_gateway::tls::TlsConfig) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: certificates will not be reloaded");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match tls.reload().await {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(e) => tracing::error!(error = %e, "TLS certificate reload failed; the old one stays"),
            }
        }
    });
    #[cfg(not(unix))]
    let _ = tls;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

async fn health(url: &str) -> anyhow::Result<ExitCode> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("only http:// URLs are supported (put TLS in front of the gateway): {url}");
    };
    let host = rest.split('/').next().unwrap_or(rest);
    let mut stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(host),
    )
    .await
    .with_context(|| format!("timed out connecting to {host}"))?
    .with_context(|| format!("cannot connect to {host}"))?;
    let request = format!("GET /health HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .context("cannot send the request")?;
    let mut response = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .context("timed out reading the response")?
    .context("cannot read the response")?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| body.to_owned())
        ),
        Err(_) => println!("{body}"),
    }
    Ok(if status == "200" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
