//! Operational subcommands that talk to a provider directly: migrate, prune,
//! publish, tail, replay.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use zps_core::{
    PublishRequest, Realtime, ReplayQuery, Room, RoomPattern, SubscribeOptions, SubscriptionItem,
};

use crate::providers;
use crate::settings::{ProviderArgs, ProviderKind, ProviderSettings};

/// `migrate`.
#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    #[command(flatten)]
    provider: ProviderArgs,
    /// Print the SQL instead of applying it.
    #[arg(long)]
    print: bool,
}

/// `prune`.
#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    #[command(flatten)]
    provider: ProviderArgs,
}

/// `publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    #[command(flatten)]
    provider: ProviderArgs,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Target room (`scope:id`).
    #[arg(long)]
    room: String,
    /// Event type.
    #[arg(long = "type")]
    event_type: String,
    /// Payload JSON.
    #[arg(long, default_value = "null")]
    payload: String,
    /// Idempotency key.
    #[arg(long)]
    id: Option<String>,
    /// Time to live.
    #[arg(long, value_name = "MS")]
    ttl_ms: Option<u64>,
}

/// Reach a running gateway instead of a provider.
#[derive(Debug, Args)]
pub(crate) struct RemoteArgs {
    /// A running gateway's base URL (`http://host:8080`): go through its HTTP
    /// API / WebSocket instead of the provider.
    #[arg(long, env = "ZERO_PUBSUB_SERVER")]
    server: Option<String>,
    /// The API key for `--server`.
    #[arg(long, env = "ZERO_PUBSUB_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

/// `tail`.
#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    #[command(flatten)]
    provider: ProviderArgs,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Rooms or `scope:*` patterns (repeat the flag).
    #[arg(long = "room", required = true)]
    rooms: Vec<String>,
    /// Start after this sequence (default: live only).
    #[arg(long)]
    from: Option<u64>,
    /// Only these event types (comma separated).
    #[arg(long, value_delimiter = ',')]
    types: Option<Vec<String>>,
}

/// `replay`.
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    provider: ProviderArgs,
    /// The room.
    #[arg(long)]
    room: String,
    /// Events after this sequence.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Up to this sequence.
    #[arg(long)]
    to: Option<u64>,
    /// Page size (max 10 000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Only these event types (comma separated).
    #[arg(long, value_delimiter = ',')]
    types: Option<Vec<String>>,
}

async fn shared_engine(args: ProviderArgs) -> anyhow::Result<Realtime> {
    let s = ProviderSettings::from_args(args);
    if s.kind == ProviderKind::Memory {
        bail!(
            "the memory provider lives inside one gateway process; use --provider postgres, redis, mongo, nats, \
             hybrid or sqlite (and --connection / --data-dir) to reach stored events"
        );
    }
    Ok(Realtime::new(providers::connect(&s).await?))
}

fn room(raw: &str) -> anyhow::Result<Room> {
    Room::parse(raw).map_err(|e| anyhow::anyhow!("--room: {e}"))
}

pub(crate) async fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let s = ProviderSettings::from_args(args.provider);
    let (kind, url) = match s.kind {
        ProviderKind::Hybrid => (s.given.storage_provider, s.given.storage_connection.clone()),
        k => (Some(k), s.given.connection.clone()),
    };
    match kind {
        Some(ProviderKind::Postgres) => {
            let config = providers::postgres_config(&s);
            if args.print {
                for (name, sql) in zps_postgres::render_migrations(&config)? {
                    println!("-- {name}\n{sql}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let url = url.context("--connection is required")?;
            let pool = zps_postgres::connect_pool(&url, &config)
                .await
                .with_context(|| format!("cannot reach {}", providers::redact(&url)))?;
            let report = zps_postgres::migrate(&pool, &config).await?;
            for name in &report.applied {
                println!("applied {name}");
            }
            for name in &report.already_applied {
                println!("already applied {name}");
            }
            pool.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Some(ProviderKind::Sqlite) => {
            // Opening the file applies its migrations.
            let t = zps_sqlite::SqliteTransport::open(providers::sqlite_config(&s)?).await?;
            println!("SQLite schema up to date in {}", t.path().display());
            zps_core::Transport::close(&t).await?;
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!(
            "migrate applies the PostgreSQL or SQLite schema: use --provider postgres or sqlite (or hybrid with \
             postgres storage)"
        ),
    }
}

pub(crate) async fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let engine = shared_engine(args.provider).await?;
    let removed = engine.prune_expired().await?;
    println!("removed {removed} expired events");
    engine.close().await?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let room = room(&args.room)?;
    let payload: serde_json::Value =
        serde_json::from_str(&args.payload).context("--payload is not valid JSON")?;
    if let Some(server) = &args.remote.server {
        let key = args
            .remote
            .api_key
            .as_deref()
            .context("--server needs --api-key")?;
        let publisher = zps_client::http::Publisher::new(server, key)?;
        let mut event = zps_client::OutgoingEvent::new(room.as_str(), &args.event_type, &payload)?;
        if let Some(id) = args.id {
            event = event.with_id(id);
        }
        if let Some(ms) = args.ttl_ms {
            event = event.with_ttl(Duration::from_millis(ms));
        }
        let p = publisher.publish(event).await?;
        println!(
            "{}",
            serde_json::json!({"id": p.id, "room": p.room, "sequence": p.sequence, "duplicate": p.duplicate})
        );
        return Ok(ExitCode::SUCCESS);
    }
    let engine = shared_engine(args.provider).await?;
    let mut req = PublishRequest::new(room, args.event_type, &payload)?;
    if let Some(id) = args.id {
        req = req.with_id(id);
    }
    if let Some(ms) = args.ttl_ms {
        req = req.with_ttl(Duration::from_millis(ms));
    }
    let out = engine.publish_outcome(req).await?;
    println!("{}", out.envelope.to_json());
    if out.duplicate {
        eprintln!("(duplicate id: the stored event is shown, nothing new was published)");
    }
    engine.close().await?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    let patterns = args
        .rooms
        .iter()
        .map(|r| RoomPattern::parse(r).map_err(|e| anyhow::anyhow!("--room {r}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(server) = args.remote.server.clone() {
        return crate::remote::tail(
            &server,
            args.remote.api_key.as_deref(),
            &args.rooms,
            args.from,
            args.types,
        )
        .await;
    }
    let engine = shared_engine(args.provider).await?;
    let mut opts = SubscribeOptions::rooms(patterns);
    match args.from {
        Some(from) => opts = opts.from_sequence(from),
        None => opts = opts.live_only(),
    }
    if let Some(types) = args.types {
        opts = opts.event_types(types);
    }
    let mut sub = engine.subscribe_stream(opts).await?.into_stream();
    loop {
        tokio::select! {
            item = sub.next() => match item {
                Some(SubscriptionItem::Event(e)) => println!("{}", e.to_json()),
                Some(SubscriptionItem::Discontinuity(d)) => eprintln!(
                    "discontinuity in {}: {} (epoch {}, continuing at {})",
                    d.room, d.reason.as_str(), d.epoch, d.earliest_sequence
                ),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    engine.close().await?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let room = room(&args.room)?;
    let engine = shared_engine(args.provider).await?;
    let mut query = ReplayQuery::new(room, args.from).limit(args.limit);
    query.to_sequence = args.to;
    query.event_types = args.types;
    let page = engine.replay(query).await?;
    for e in &page.events {
        println!("{}", e.to_json());
    }
    eprintln!(
        "{} events; scanned to {}{}",
        page.events.len(),
        page.scanned_to,
        if page.exhausted {
            ""
        } else {
            " (more available: --from it)"
        }
    );
    engine.close().await?;
    Ok(ExitCode::SUCCESS)
}
