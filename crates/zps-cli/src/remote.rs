//! Operator commands against a running gateway, over its HTTP API (not a
//! second path to the database): rooms, presence, history, dead letters,
//! kicks, tokens, and `api-key new` to make keys. Tables by default, `--json`
//! for scripts.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use zps_client::http::{Admin, EventsQuery};

/// Where the gateway is and the key to use.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArgs {
    /// The gateway's base URL.
    #[arg(long, env = "ZERO_PUBSUB_SERVER", default_value = "http://127.0.0.1:8080")]
    pub(crate) server: String,
    /// An API key (`zps_…`) or a client token.
    #[arg(long, env = "ZERO_PUBSUB_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

impl ServerArgs {
    fn admin(&self) -> anyhow::Result<Admin> {
        let key = self
            .api_key
            .as_deref()
            .context("--api-key (or ZERO_PUBSUB_API_KEY) is required")?;
        Ok(Admin::new(&self.server, key)?)
    }
}

/// `rooms`.
#[derive(Debug, Args)]
pub(crate) struct RoomsArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// One room's state instead of the list.
    room: Option<String>,
    /// Only rooms starting with this.
    #[arg(long)]
    prefix: Option<String>,
    /// At most this many rooms.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

/// `presence`.
#[derive(Debug, Args)]
pub(crate) struct PresenceArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The room.
    room: String,
}

/// `history`.
#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The room.
    room: String,
    /// Events after this sequence.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Up to this sequence.
    #[arg(long)]
    to: Option<u64>,
    /// Page size.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Only these event types (comma separated).
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
}

/// `dlq`.
#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List a room's dead letters; without a room, the rooms that hold some.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// The room (omit it to list rooms with dead letters).
        room: Option<String>,
        /// Entries after this entry id (with a room).
        #[arg(long, default_value_t = 0, requires = "room")]
        after: u64,
        /// Only rooms starting with this (without a room).
        #[arg(long, conflicts_with = "room")]
        prefix: Option<String>,
    },
    /// Publish a dead letter again (as a new event) and remove it.
    Replay {
        #[command(flatten)]
        server: ServerArgs,
        /// The room.
        room: String,
        /// The entry id.
        entry: u64,
    },
    /// Remove a dead letter.
    Drop {
        #[command(flatten)]
        server: ServerArgs,
        /// The room.
        room: String,
        /// The entry id.
        entry: u64,
    },
}

/// `kick`.
#[derive(Debug, Args)]
pub(crate) struct KickArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Close this connection (its id from `ready`).
    #[arg(long, conflicts_with = "subscriber", required_unless_present = "subscriber")]
    connection: Option<String>,
    /// Close every connection of this subscriber.
    #[arg(long)]
    subscriber: Option<String>,
    /// Told to the client before the close.
    #[arg(long)]
    reason: Option<String>,
    /// Refuse the subscriber's reconnections for this long.
    #[arg(long, value_name = "SECONDS")]
    ban_seconds: Option<u64>,
}

/// `token`.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The user (`sub`).
    subject: String,
    /// Room patterns the token grants (repeat or comma separate).
    #[arg(long = "room", value_delimiter = ',', required = true)]
    rooms: Vec<String>,
    /// Lifetime.
    #[arg(long, default_value_t = 3600)]
    ttl_seconds: u64,
}

/// `api-key`.
#[derive(Debug, Subcommand)]
pub(crate) enum ApiKeyCommand {
    /// Make a new random key: prints the key once, and the line for a key file.
    New {
        /// A name for logs and metrics.
        #[arg(long, default_value = "backend")]
        name: String,
        /// Scopes (publish, read, admin), comma separated.
        #[arg(long, value_delimiter = ',', default_value = "publish,read")]
        scopes: Vec<String>,
        /// Limit the key to these room patterns (comma separated).
        #[arg(long, value_delimiter = ',')]
        rooms: Vec<String>,
    },
    /// Print the key-file hash of an existing key (read from standard input).
    Hash,
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Rows as aligned columns under a header.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
}

pub(crate) async fn rooms(a: RoomsArgs) -> anyhow::Result<ExitCode> {
    let admin = a.server.admin()?;
    if let Some(room) = &a.room {
        let s = admin.room(room).await?;
        if a.server.json {
            print_json(&serde_json::json!({
                "room": s.room, "epoch": s.epoch, "lastSequence": s.last_sequence,
                "earliestSequence": s.earliest_sequence, "subscribers": s.subscribers, "presence": s.presence,
            }))?;
        } else {
            table(
                &["room", "last", "earliest", "subscribers", "presence", "epoch"],
                vec![vec![
                    s.room,
                    s.last_sequence.to_string(),
                    s.earliest_sequence.to_string(),
                    s.subscribers.to_string(),
                    s.presence.to_string(),
                    s.epoch,
                ]],
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let list = admin.rooms(a.prefix.as_deref(), None, Some(a.limit)).await?;
    if a.server.json {
        let rooms: Vec<_> = list
            .rooms
            .iter()
            .map(|r| serde_json::json!({"room": r.room, "subscribers": r.subscribers}))
            .collect();
        print_json(&serde_json::json!({"rooms": rooms, "next": list.next, "nodes": list.nodes}))?;
    } else {
        let rows = list
            .rooms
            .into_iter()
            .map(|r| vec![r.room, r.subscribers.to_string()])
            .collect();
        table(&["room", "subscribers"], rows);
        eprintln!("({} gateway node(s) reported)", list.nodes);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn presence(a: PresenceArgs) -> anyhow::Result<ExitCode> {
    let p = a.server.admin()?.presence(&a.room).await?;
    if a.server.json {
        print_json(&p.members)?;
    } else {
        let rows = p
            .members
            .into_iter()
            .map(|m| {
                let meta = m.metadata.map(|m| serde_json::Value::Object(m).to_string());
                vec![m.user_id, m.last_seen_at.to_string(), meta.unwrap_or_default()]
            })
            .collect();
        table(&["user", "last seen", "metadata"], rows);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn history(a: HistoryArgs) -> anyhow::Result<ExitCode> {
    let q = EventsQuery {
        from_sequence: a.from,
        to_sequence: a.to,
        types: a.types,
        limit: Some(a.limit),
    };
    let page = a.server.admin()?.events(&a.room, &q).await?;
    if a.server.json {
        for e in &page.events {
            println!("{}", e.to_json());
        }
    } else {
        let rows = page
            .events
            .iter()
            .map(|e| {
                let mut payload = e.payload.get().to_owned();
                if payload.chars().count() > 60 {
                    payload = payload.chars().take(57).collect::<String>() + "...";
                }
                vec![
                    e.sequence.to_string(),
                    e.event_type.clone(),
                    e.id.clone(),
                    payload,
                ]
            })
            .collect();
        table(&["seq", "type", "id", "payload"], rows);
    }
    if page.has_more {
        eprintln!("(more after {}: --from {})", page.scanned_to, page.scanned_to);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn dlq(c: DlqCommand) -> anyhow::Result<ExitCode> {
    match c {
        DlqCommand::List {
            server,
            room: None,
            prefix,
            ..
        } => {
            let index = server
                .admin()?
                .dlq_rooms(prefix.as_deref(), None, Some(1_000))
                .await?;
            if server.json {
                let rooms: Vec<_> = index
                    .rooms
                    .iter()
                    .map(|r| serde_json::json!({"room": r.room, "size": r.size}))
                    .collect();
                print_json(&serde_json::json!({"rooms": rooms, "next": index.next}))?;
            } else {
                let rows = index
                    .rooms
                    .into_iter()
                    .map(|r| vec![r.room, r.size.to_string()])
                    .collect();
                table(&["room", "dead letters"], rows);
                if let Some(next) = index.next {
                    eprintln!("(more rooms after {next}: narrow with --prefix)");
                }
            }
        }
        DlqCommand::List {
            server,
            room: Some(room),
            after,
            ..
        } => {
            let page = server.admin()?.dlq(&room, after, None).await?;
            if server.json {
                print_json(&page.entries)?;
            } else {
                let rows = page
                    .entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.entry_id.to_string(),
                            e.event.sequence.to_string(),
                            e.event.event_type.clone(),
                            e.attempts.to_string(),
                            e.error.clone(),
                        ]
                    })
                    .collect();
                table(&["entry", "seq", "type", "attempts", "error"], rows);
                eprintln!("({} in the queue)", page.total);
            }
        }
        DlqCommand::Replay { server, room, entry } => {
            let r = server.admin()?.dlq_replay(&room, entry).await?;
            if server.json {
                print_json(
                    &serde_json::json!({"id": r.id, "sequence": r.sequence, "duplicate": r.duplicate}),
                )?;
            } else {
                println!("replayed entry {entry} as {} (sequence {})", r.id, r.sequence);
            }
        }
        DlqCommand::Drop { server, room, entry } => {
            server.admin()?.dlq_remove(&room, entry).await?;
            if !server.json {
                println!("removed entry {entry}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn kick(a: KickArgs) -> anyhow::Result<ExitCode> {
    let admin = a.server.admin()?;
    let closed = match (&a.connection, &a.subscriber) {
        (Some(id), _) => {
            admin
                .kick_connection(id, a.reason.as_deref(), a.ban_seconds)
                .await?
        }
        (None, Some(sub)) => {
            admin
                .disconnect_subscriber(sub, a.reason.as_deref(), a.ban_seconds)
                .await?
        }
        (None, None) => bail!("give --connection or --subscriber"),
    };
    if a.server.json {
        print_json(&serde_json::json!({"closed": closed.closed}))?;
    } else {
        println!("closed {} connection(s)", closed.closed);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn token(a: TokenArgs) -> anyhow::Result<ExitCode> {
    let rooms: Vec<&str> = a.rooms.iter().map(String::as_str).collect();
    let t = a
        .server
        .admin()?
        .mint_token(&a.subject, &rooms, Some(a.ttl_seconds))
        .await?;
    if a.server.json {
        print_json(&serde_json::json!({"token": t.token, "expiresAt": t.expires_at}))?;
    } else {
        println!("{}", t.token);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn api_key(c: ApiKeyCommand) -> anyhow::Result<ExitCode> {
    use zps_gateway::api::keys::{ApiKey, KeySpec, Scope, hash_key, new_key};
    match c {
        ApiKeyCommand::New { name, scopes, rooms } => {
            let scopes = scopes
                .iter()
                .map(|s| serde_json::from_value::<Scope>(serde_json::Value::String(s.trim().to_owned())))
                .collect::<Result<Vec<_>, _>>()
                .context("--scopes takes publish, read, admin")?;
            let key = new_key();
            let spec = KeySpec {
                name,
                hash: hash_key(&key),
                scopes,
                rooms: (!rooms.is_empty()).then_some(rooms),
                rate_per_second: None,
            };
            ApiKey::from_spec(&spec)?;
            let file = zps_gateway::api::keys::KeyFile { keys: vec![spec] };
            println!("{key}");
            // Comments, so that standard error as a whole is a valid key file.
            eprintln!("# The key is shown once (standard output). Give the gateway this entry");
            eprintln!("# in an --api-keys-file; it holds only the key's hash.");
            eprint!(
                "{}",
                toml::to_string(&file).context("cannot render the key entry")?
            );
        }
        ApiKeyCommand::Hash => {
            let mut key = String::new();
            std::io::stdin()
                .read_line(&mut key)
                .context("cannot read the key")?;
            println!("{}", hash_key(key.trim()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tail --server`: a WebSocket client of the gateway (exactly once, in order,
/// gaps repaired), with a token minted by the API key when the gateway checks
/// tokens.
pub(crate) async fn tail(
    server: &str,
    api_key: Option<&str>,
    rooms: &[String],
    from: Option<u64>,
    types: Option<Vec<String>>,
) -> anyhow::Result<ExitCode> {
    use futures::StreamExt;
    use zps_client::{Client, ClientEvent, ClientOptions, StartAt, SubscribeOptions, Targets};
    let subscriber = format!("cli-tail-{}", std::process::id());
    let mut options = ClientOptions::default().with_subscriber_id(&subscriber);
    if let Some(key) = api_key {
        let admin = Admin::new(server, key)?;
        let patterns: Vec<&str> = rooms.iter().map(String::as_str).collect();
        match admin.mint_token(&subscriber, &patterns, Some(24 * 3600)).await {
            Ok(t) => options = options.with_token(t.token),
            // A gateway that verifies no tokens lets the socket in without one.
            Err(e) if e.error_code() == Some(zps_client::ErrorCode::Unsupported) => {}
            Err(e) => return Err(e).context("cannot mint a token for the WebSocket"),
        }
    }
    let ws = ws_url(server)?;
    let client = Client::connect(ws, options)?;
    let mut opts = SubscribeOptions::new();
    if let Some(from) = from {
        for r in rooms {
            opts = opts.position(
                r.clone(),
                StartAt::After {
                    sequence: from,
                    epoch: None,
                },
            );
        }
    }
    if let Some(types) = types {
        opts = opts.event_types(types);
    }
    let mut sub = client
        .subscribe_with_options(Targets::from(rooms.to_vec()), opts)
        .await?;
    loop {
        tokio::select! {
            item = sub.next() => match item {
                Some(ClientEvent::Event(e)) => println!("{}", e.to_json()),
                Some(ClientEvent::Discontinuity { room, reason, earliest_sequence, .. }) => eprintln!(
                    "discontinuity in {room}: {} (continuing at {earliest_sequence})", reason.as_str()
                ),
                Some(ClientEvent::Refused { room, error }) => bail!("{room}: {error}"),
                Some(_) => {}
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.close().await;
    Ok(ExitCode::SUCCESS)
}

/// `http(s)://host/…` → `ws(s)://host/ws`.
fn ws_url(server: &str) -> anyhow::Result<String> {
    let base = server.trim_end_matches('/');
    if let Some(rest) = base.strip_prefix("http://") {
        Ok(format!("ws://{rest}/ws"))
    } else if let Some(rest) = base.strip_prefix("https://") {
        Ok(format!("wss://{rest}/ws"))
    } else {
        bail!("--server must be an http:// or https:// URL: {server}")
    }
}
