//! Gateway settings from three layers: a TOML file < environment < flags.
//! Each setting is declared once, as a field of [`GatewayArgs`] or
//! [`ProviderArgs`]: clap reads it from flags and the environment, serde from
//! the file under the same (snake_case) name; the file fills whatever flags and
//! environment left unset; defaults fill the rest.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

/// Storage/fan-out providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ProviderKind {
    /// Embedded, in-process (default).
    Memory,
    /// PostgreSQL.
    Postgres,
    /// MongoDB.
    Mongo,
    /// Redis.
    Redis,
    /// Durable storage + Redis fan-out.
    Hybrid,
    /// One SQLite file: durable, one node, no server to run.
    Sqlite,
    /// NATS JetStream: a replicated log with its own clustering.
    Nats,
}

impl ProviderKind {
    /// The name used in flags and logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Postgres => "postgres",
            Self::Mongo => "mongo",
            Self::Redis => "redis",
            Self::Hybrid => "hybrid",
            Self::Sqlite => "sqlite",
            Self::Nats => "nats",
        }
    }
}

/// SQLite commit durability (see `zps_sqlite::Synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SqliteSync {
    /// fsync on every commit.
    Full,
    /// fsync at checkpoints.
    Normal,
}

/// Which provider to use and how to reach it (shared by every subcommand).
#[derive(Debug, Args, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub(crate) struct ProviderArgs {
    /// Where events are stored and fanned out [default: memory].
    #[arg(long, env = "ZERO_PUBSUB_PROVIDER", value_enum, help_heading = "Provider")]
    pub(crate) provider: Option<ProviderKind>,
    /// Provider connection URL (postgres://, redis://, mongodb://, nats://, sqlite://PATH).
    #[arg(
        long,
        env = "ZERO_PUBSUB_CONNECTION",
        value_name = "URL",
        help_heading = "Provider"
    )]
    pub(crate) connection: Option<String>,
    /// Hybrid: the durable storage provider (postgres or mongo).
    #[arg(
        long,
        env = "ZERO_PUBSUB_STORAGE_PROVIDER",
        value_enum,
        help_heading = "Provider"
    )]
    pub(crate) storage_provider: Option<ProviderKind>,
    /// Hybrid: the storage connection URL.
    #[arg(
        long,
        env = "ZERO_PUBSUB_STORAGE_CONNECTION",
        value_name = "URL",
        help_heading = "Provider"
    )]
    pub(crate) storage_connection: Option<String>,
    /// Hybrid: the realtime fan-out provider (redis).
    #[arg(
        long,
        env = "ZERO_PUBSUB_REALTIME_PROVIDER",
        value_enum,
        help_heading = "Provider"
    )]
    pub(crate) realtime_provider: Option<ProviderKind>,
    /// Hybrid: the realtime connection URL.
    #[arg(
        long,
        env = "ZERO_PUBSUB_REALTIME_CONNECTION",
        value_name = "URL",
        help_heading = "Provider"
    )]
    pub(crate) realtime_connection: Option<String>,
    /// Redis: prefix of every key and channel [default: realtime:].
    #[arg(long, env = "ZERO_PUBSUB_REDIS_PREFIX", help_heading = "Provider")]
    pub(crate) redis_prefix: Option<String>,
    /// NATS: prefix of every stream and subject, `[A-Za-z0-9_-]` [default: zps].
    #[arg(long, env = "ZERO_PUBSUB_NATS_PREFIX", help_heading = "Provider")]
    pub(crate) nats_prefix: Option<String>,
    /// NATS: replicas of every stream (3 or 5 on a JetStream cluster) [default: 1].
    #[arg(long, env = "ZERO_PUBSUB_NATS_REPLICAS", help_heading = "Provider")]
    pub(crate) nats_replicas: Option<usize>,
    /// PostgreSQL: schema holding the tables [default: the connection's search_path].
    #[arg(long, env = "ZERO_PUBSUB_POSTGRES_SCHEMA", help_heading = "Provider")]
    pub(crate) postgres_schema: Option<String>,
    /// Create tables/indexes at start [default: true unless ZPS_ENV=production].
    #[arg(long, env = "ZERO_PUBSUB_AUTO_MIGRATE", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = "Provider")]
    pub(crate) auto_migrate: Option<bool>,
    /// SQLite: keep the database in this folder (`DIR/zps.db`, created when missing);
    /// implies `--provider sqlite`.
    #[arg(
        long,
        env = "ZERO_PUBSUB_DATA_DIR",
        value_name = "DIR",
        help_heading = "Provider"
    )]
    pub(crate) data_dir: Option<PathBuf>,
    /// SQLite: `full` (fsync every commit: survives power loss) or `normal` (survives a
    /// process crash; the last commits before a power loss may be lost) [default: full].
    #[arg(
        long,
        env = "ZERO_PUBSUB_SQLITE_SYNCHRONOUS",
        value_enum,
        help_heading = "Provider"
    )]
    pub(crate) sqlite_synchronous: Option<SqliteSync>,
    /// Extra trusted root CA (PEM) for outgoing TLS: PostgreSQL (`sslmode=verify-full`), Redis
    /// (`rediss://`), MongoDB (`tls=true`) and the JWKS endpoint [default: the system's roots].
    #[arg(
        long,
        env = "ZERO_PUBSUB_CA_FILE",
        value_name = "FILE",
        help_heading = "Provider"
    )]
    pub(crate) ca_file: Option<PathBuf>,
}

/// Flags of `zero-pub-sub gateway` (each also an environment variable, and a
/// key of the config file).
#[derive(Debug, Args, Default, Deserialize, Serialize)]
#[serde(default)]
pub(crate) struct GatewayArgs {
    /// TOML file with the same keys in snake_case (flags and environment win).
    #[arg(long, env = "ZERO_PUBSUB_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,

    /// Interface to listen on [default: 127.0.0.1].
    #[arg(long, env = "ZERO_PUBSUB_HOST", help_heading = "Server")]
    pub(crate) host: Option<String>,
    /// Port to listen on; 0 picks a free one [default: 8080].
    #[arg(long, env = "PORT", help_heading = "Server")]
    pub(crate) port: Option<u16>,
    /// How long a shutdown waits for sockets to close [default: 10000].
    #[arg(
        long,
        env = "ZERO_PUBSUB_DRAIN_TIMEOUT_MS",
        value_name = "MS",
        help_heading = "Server"
    )]
    pub(crate) drain_timeout_ms: Option<u64>,

    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) provider: ProviderArgs,
    /// Time to live of events published without one [default: 86400000 (24 h)].
    #[arg(
        long,
        env = "ZERO_PUBSUB_DEFAULT_TTL_MS",
        value_name = "MS",
        help_heading = "Provider"
    )]
    pub(crate) default_ttl_ms: Option<u64>,
    /// Memory provider: events kept per room [default: 10000].
    #[arg(
        long,
        env = "ZERO_PUBSUB_MEMORY_MAX_EVENTS_PER_ROOM",
        help_heading = "Provider"
    )]
    pub(crate) memory_max_events_per_room: Option<usize>,

    /// Open connections before new ones are refused with 4503 [default: 10000].
    #[arg(long, env = "ZERO_PUBSUB_MAX_CONNECTIONS", help_heading = "Limits")]
    pub(crate) max_connections: Option<usize>,
    /// Subscriptions per connection before 4430 [default: 128].
    #[arg(long, env = "ZERO_PUBSUB_MAX_SUBSCRIPTIONS", help_heading = "Limits")]
    pub(crate) max_subscriptions: Option<usize>,
    /// Largest event payload in bytes before 4413 [default: 65536].
    #[arg(long, env = "ZERO_PUBSUB_MAX_PAYLOAD_BYTES", help_heading = "Limits")]
    pub(crate) max_payload_bytes: Option<usize>,
    /// Messages per rate-limit window before 4429 [default: 100].
    #[arg(long, env = "ZERO_PUBSUB_MAX_MESSAGES_PER_WINDOW", help_heading = "Limits")]
    pub(crate) max_messages_per_window: Option<u32>,
    /// Rate-limit window [default: 1000].
    #[arg(
        long,
        env = "ZERO_PUBSUB_RATE_LIMIT_WINDOW_MS",
        value_name = "MS",
        help_heading = "Limits"
    )]
    pub(crate) rate_limit_window_ms: Option<u64>,
    /// Time allowed before `init` (then 4401) [default: 10000].
    #[arg(
        long,
        env = "ZERO_PUBSUB_INIT_TIMEOUT_MS",
        value_name = "MS",
        help_heading = "Limits"
    )]
    pub(crate) init_timeout_ms: Option<u64>,
    /// Server ping interval [default: 30000].
    #[arg(
        long,
        env = "ZERO_PUBSUB_HEARTBEAT_INTERVAL_MS",
        value_name = "MS",
        help_heading = "Limits"
    )]
    pub(crate) heartbeat_interval_ms: Option<u64>,
    /// Missing-pong grace before 4410 [default: 10000].
    #[arg(
        long,
        env = "ZERO_PUBSUB_HEARTBEAT_TIMEOUT_MS",
        value_name = "MS",
        help_heading = "Limits"
    )]
    pub(crate) heartbeat_timeout_ms: Option<u64>,
    /// Outbound backlog per connection before it is cut off (4509) [default: 1048576].
    #[arg(long, env = "ZERO_PUBSUB_MAX_SOCKET_BUFFERED_BYTES", help_heading = "Limits")]
    pub(crate) max_socket_buffered_bytes: Option<usize>,
    /// Let clients publish durable events [default: false].
    #[arg(long, env = "ZERO_PUBSUB_ALLOW_CLIENT_PUBLISH", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = "Limits")]
    pub(crate) allow_client_publish: Option<bool>,
    /// Let clients publish ephemeral events (typing, cursors) [default: true].
    #[arg(long, env = "ZERO_PUBSUB_ALLOW_CLIENT_EPHEMERAL", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = "Limits")]
    pub(crate) allow_client_ephemeral: Option<bool>,
    /// Largest `limit` of a replay_request [default: 1000].
    #[arg(long, env = "ZERO_PUBSUB_MAX_REPLAY_LIMIT", help_heading = "Limits")]
    pub(crate) max_replay_limit: Option<usize>,

    /// Verify HS256 tokens with this secret.
    #[arg(
        long,
        env = "ZERO_PUBSUB_JWT_SECRET",
        hide_env_values = true,
        help_heading = "Auth"
    )]
    pub(crate) jwt_secret: Option<String>,
    /// Verify RS256 or ES256 tokens with this PEM public key.
    #[arg(
        long,
        env = "ZERO_PUBSUB_JWT_PUBLIC_KEY",
        value_name = "FILE",
        help_heading = "Auth"
    )]
    pub(crate) jwt_public_key: Option<PathBuf>,
    /// Allowed room scopes, comma separated (e.g. chat,order) [default: any].
    #[arg(
        long,
        env = "ZERO_PUBSUB_SCOPES",
        value_delimiter = ',',
        help_heading = "Auth"
    )]
    pub(crate) scopes: Option<Vec<String>>,
    /// Token claim listing the room patterns a connection may use [default: rooms].
    #[arg(long, env = "ZERO_PUBSUB_ROOMS_CLAIM", help_heading = "Auth")]
    pub(crate) rooms_claim: Option<String>,
    /// Token claim with per-action grants (`{"subscribe": [...], "publish": [...], "presence": [...]}`) [default: zps].
    #[arg(long, env = "ZERO_PUBSUB_GRANTS_CLAIM", help_heading = "Auth")]
    pub(crate) grants_claim: Option<String>,
    /// Verify tokens with the keys of this JWKS document (https://; the token's `kid` picks the key).
    #[arg(
        long,
        env = "ZERO_PUBSUB_JWT_JWKS_URL",
        value_name = "URL",
        help_heading = "Auth"
    )]
    pub(crate) jwt_jwks_url: Option<String>,
    /// How often the JWKS is fetched again, in seconds [default: 300].
    #[arg(
        long,
        env = "ZERO_PUBSUB_JWT_JWKS_REFRESH_SECS",
        value_name = "SECS",
        help_heading = "Auth"
    )]
    pub(crate) jwt_jwks_refresh_secs: Option<u64>,
    /// Tokens must carry this issuer (`iss`).
    #[arg(long, env = "ZERO_PUBSUB_JWT_ISSUER", help_heading = "Auth")]
    pub(crate) jwt_issuer: Option<String>,
    /// Tokens must name one of these audiences (`aud`), comma separated.
    #[arg(
        long,
        env = "ZERO_PUBSUB_JWT_AUDIENCE",
        value_delimiter = ',',
        help_heading = "Auth"
    )]
    pub(crate) jwt_audience: Option<Vec<String>>,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds [default: 5].
    #[arg(long, env = "ZERO_PUBSUB_JWT_LEEWAY_SECS", help_heading = "Auth")]
    pub(crate) jwt_leeway_secs: Option<u64>,
    /// Token claims vouched for, beside `sub`, on client events (`metadata.publisher`) and
    /// presence entries (`metadata.verified`), comma separated (e.g. name,avatar).
    #[arg(
        long,
        env = "ZERO_PUBSUB_MEMBER_CLAIMS",
        value_delimiter = ',',
        help_heading = "Auth"
    )]
    pub(crate) member_claims: Option<Vec<String>>,
    /// Browser origins allowed to connect, comma separated [default: any].
    #[arg(
        long,
        env = "ZERO_PUBSUB_ALLOWED_ORIGINS",
        value_delimiter = ',',
        help_heading = "Auth"
    )]
    pub(crate) allowed_origins: Option<Vec<String>>,
    /// An API key for `/api/v1` (repeatable): `KEY` (every scope) or
    /// `KEY@publish+read` (those scopes). Make one with `zero-pub-sub api-key new`.
    #[arg(
        long = "api-key",
        env = "ZERO_PUBSUB_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "KEY[@SCOPES]",
        help_heading = "HTTP API"
    )]
    pub(crate) api_keys: Option<Vec<String>>,
    /// A TOML file of hashed API keys (`[[keys]]` name, hash, scopes, rooms, rate_per_second).
    #[arg(
        long,
        env = "ZERO_PUBSUB_API_KEYS_FILE",
        value_name = "FILE",
        help_heading = "HTTP API"
    )]
    pub(crate) api_keys_file: Option<PathBuf>,
    /// Requests per second per API caller (a burst of as many) [default: 1000].
    #[arg(long, env = "ZERO_PUBSUB_API_RATE_PER_SECOND", help_heading = "HTTP API")]
    pub(crate) api_rate_per_second: Option<u32>,
    /// Largest HTTP API request body [default: 1048576].
    #[arg(long, env = "ZERO_PUBSUB_API_MAX_BODY_BYTES", help_heading = "HTTP API")]
    pub(crate) api_max_body_bytes: Option<usize>,
    /// Payload fields never shown to clients (dotted paths, comma separated): removed
    /// from live events, catch-up, history pages and ephemeral events; still stored.
    #[arg(
        long,
        env = "ZERO_PUBSUB_REDACT_PAYLOAD_FIELDS",
        value_delimiter = ',',
        help_heading = "Middleware"
    )]
    pub(crate) redact_payload_fields: Option<Vec<String>>,
    /// Refuse publishes without a `metadata.tenantId` string [default: false].
    #[arg(long, env = "ZERO_PUBSUB_REQUIRE_TENANT", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = "Middleware")]
    pub(crate) require_tenant: Option<bool>,
    /// Serve TLS (wss://, https://) with this PEM certificate chain (needs --tls-key;
    /// reloaded on SIGHUP).
    #[arg(
        long,
        env = "ZERO_PUBSUB_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key",
        help_heading = "Server"
    )]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(
        long,
        env = "ZERO_PUBSUB_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert",
        help_heading = "Server"
    )]
    pub(crate) tls_key: Option<PathBuf>,
    /// Serve the demo chat page at /demo/ (clients publish: add --allow-client-publish) [default: false].
    #[arg(long, env = "ZERO_PUBSUB_DEMO", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = "Server")]
    pub(crate) demo: Option<bool>,
    /// How often each gateway reports its room counts to the cluster [default: 5000].
    #[arg(
        long,
        env = "ZERO_PUBSUB_CLUSTER_REPORT_INTERVAL_MS",
        value_name = "MS",
        help_heading = "HTTP API"
    )]
    pub(crate) cluster_report_interval_ms: Option<u64>,
    /// Serve the HTTP API under /api/v1 [default: true].
    #[arg(long, env = "ZERO_PUBSUB_HTTP_API", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", help_heading = "HTTP API")]
    pub(crate) http_api: Option<bool>,
}

/// The resolved provider choice.
#[derive(Debug, Clone)]
pub(crate) struct ProviderSettings {
    /// Provider (`--data-dir` alone means SQLite, nothing means memory).
    pub(crate) kind: ProviderKind,
    /// Everything else as given.
    pub(crate) given: ProviderArgs,
    /// Memory history bound.
    pub(crate) memory_max_events_per_room: usize,
}

impl ProviderSettings {
    /// The `--ca-file` contents, read once per use so a renewed CA is picked up on restart.
    pub(crate) fn ca_pem(&self) -> anyhow::Result<Option<Vec<u8>>> {
        self.given
            .ca_file
            .as_ref()
            .map(|p| std::fs::read(p).with_context(|| format!("cannot read --ca-file {}", p.display())))
            .transpose()
    }

    /// From flags/environment only (operational subcommands).
    pub(crate) fn from_args(given: ProviderArgs) -> Self {
        Self::resolve(given, 10_000)
    }

    fn resolve(given: ProviderArgs, memory_max_events_per_room: usize) -> Self {
        let kind = given.provider.unwrap_or(if given.data_dir.is_some() {
            ProviderKind::Sqlite
        } else {
            ProviderKind::Memory
        });
        Self {
            kind,
            given,
            memory_max_events_per_room,
        }
    }
}

/// Everything resolved.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Listen address.
    pub(crate) host: String,
    /// Listen port.
    pub(crate) port: u16,
    /// Drain bound.
    pub(crate) drain_timeout: Duration,
    /// Provider choice and connection.
    pub(crate) provider: ProviderSettings,
    /// Default TTL.
    pub(crate) default_ttl: Duration,
    /// Gateway limits.
    pub(crate) limits: zps_gateway::Limits,
    /// HS256 secret.
    pub(crate) jwt_secret: Option<String>,
    /// PEM public key path.
    pub(crate) jwt_public_key: Option<PathBuf>,
    /// JWKS URL.
    pub(crate) jwt_jwks_url: Option<String>,
    /// JWKS refresh schedule.
    pub(crate) jwt_jwks_refresh: Duration,
    /// Scope allow-list.
    pub(crate) scopes: Option<Vec<String>>,
    /// Rooms claim name.
    pub(crate) rooms_claim: String,
    /// Grants claim name.
    pub(crate) grants_claim: String,
    /// Required issuer.
    pub(crate) jwt_issuer: Option<String>,
    /// Accepted audiences.
    pub(crate) jwt_audience: Option<Vec<String>>,
    /// Clock skew.
    pub(crate) jwt_leeway: Option<Duration>,
    /// Claims vouched for about members.
    pub(crate) member_claims: Vec<String>,
    /// Origin allow-list.
    pub(crate) allowed_origins: Option<Vec<String>>,
    /// The HTTP API.
    pub(crate) api: zps_gateway::api::ApiConfig,
    /// Serve the demo page.
    pub(crate) demo: bool,
    /// TLS certificate chain and key files.
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    /// Payload paths removed on the way out.
    pub(crate) redact_payload_fields: Vec<String>,
    /// Publishes need `metadata.tenantId`.
    pub(crate) require_tenant: bool,
}

/// The HTTP API's settings: keys from flags (hashed at once) and from a key file.
fn api_config(
    flags: Vec<String>,
    file: Option<&std::path::Path>,
    rate: Option<u32>,
    max_body: Option<usize>,
    enabled: Option<bool>,
) -> anyhow::Result<zps_gateway::api::ApiConfig> {
    use zps_gateway::api::keys::{ApiKey, ApiKeys, KeyFile};
    let mut keys = Vec::new();
    for (i, flag) in flags.iter().filter(|f| !f.trim().is_empty()).enumerate() {
        keys.push(ApiKey::from_flag(flag.trim(), i + 1)?);
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --api-keys-file {}", path.display()))?;
        let parsed: KeyFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid --api-keys-file {}: {}", path.display(), e.message()))?;
        for spec in &parsed.keys {
            keys.push(ApiKey::from_spec(spec)?);
        }
    }
    let defaults = zps_gateway::api::ApiConfig::default();
    if rate == Some(0) {
        bail!("--api-rate-per-second must be at least 1");
    }
    Ok(zps_gateway::api::ApiConfig {
        enabled: enabled.unwrap_or(defaults.enabled),
        keys: ApiKeys::new(keys),
        max_body_bytes: max_body.unwrap_or(defaults.max_body_bytes),
        rate_per_second: rate.unwrap_or(defaults.rate_per_second),
        ..defaults
    })
}

/// The file's settings under the flags' and environment's: every field either
/// of them set wins, the file fills the rest. Keys that name no setting are an
/// error (the setting names are clap's, so file and flags cannot drift apart).
fn with_file(args: GatewayArgs, path: &std::path::Path) -> anyhow::Result<GatewayArgs> {
    use clap::CommandFactory as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let file: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("invalid config file {}: {}", path.display(), e.message()))?;
    let known: std::collections::HashSet<String> = SettingNames::command()
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .filter(|id| id != "config")
        .collect();
    let mut unknown: Vec<&str> = file
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(*k))
        .collect();
    unknown.sort_unstable();
    if !unknown.is_empty() {
        bail!(
            "invalid config file {}: unknown keys: {}",
            path.display(),
            unknown.join(", ")
        );
    }
    let mut merged = serde_json::to_value(&file)?;
    let given = serde_json::to_value(&args)?;
    if let (Some(merged), Some(given)) = (merged.as_object_mut(), given.as_object()) {
        for (key, value) in given.iter().filter(|(_, v)| !v.is_null()) {
            merged.insert(key.clone(), value.clone());
        }
    }
    let mut out: GatewayArgs = serde_json::from_value(merged)
        .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))?;
    out.config = args.config;
    Ok(out)
}

/// The gateway's settings as a command, for their names.
#[derive(clap::Parser)]
struct SettingNames {
    #[command(flatten)]
    args: GatewayArgs,
}

impl Settings {
    /// Resolves flags/environment over the file over defaults.
    pub(crate) fn resolve(args: GatewayArgs) -> anyhow::Result<Self> {
        let args = match args.config.clone() {
            Some(path) => with_file(args, &path)?,
            None => args,
        };
        macro_rules! pick {
            ($field:ident) => {
                args.$field.clone()
            };
        }
        let defaults = zps_gateway::Limits::default();
        let ms = |v: Option<u64>, d: Duration| v.map(Duration::from_millis).unwrap_or(d);
        let limits = zps_gateway::Limits {
            max_connections: pick!(max_connections).unwrap_or(defaults.max_connections),
            max_subscriptions: pick!(max_subscriptions).unwrap_or(defaults.max_subscriptions),
            max_payload_bytes: pick!(max_payload_bytes).unwrap_or(defaults.max_payload_bytes),
            max_messages_per_window: pick!(max_messages_per_window)
                .unwrap_or(defaults.max_messages_per_window),
            rate_limit_window: ms(pick!(rate_limit_window_ms), defaults.rate_limit_window),
            init_timeout: ms(pick!(init_timeout_ms), defaults.init_timeout),
            heartbeat_interval: ms(pick!(heartbeat_interval_ms), defaults.heartbeat_interval),
            heartbeat_timeout: ms(pick!(heartbeat_timeout_ms), defaults.heartbeat_timeout),
            max_socket_buffered_bytes: pick!(max_socket_buffered_bytes)
                .unwrap_or(defaults.max_socket_buffered_bytes),
            allow_client_publish: pick!(allow_client_publish).unwrap_or(defaults.allow_client_publish),
            allow_client_ephemeral: pick!(allow_client_ephemeral).unwrap_or(defaults.allow_client_ephemeral),
            max_replay_limit: pick!(max_replay_limit).unwrap_or(defaults.max_replay_limit),
        };
        let settings = Settings {
            host: pick!(host).unwrap_or_else(|| "127.0.0.1".to_owned()),
            port: pick!(port).unwrap_or(8080),
            drain_timeout: ms(pick!(drain_timeout_ms), Duration::from_secs(10)),
            provider: ProviderSettings::resolve(
                args.provider.clone(),
                pick!(memory_max_events_per_room).unwrap_or(10_000),
            ),
            default_ttl: ms(pick!(default_ttl_ms), zps_core::engine::DEFAULT_TTL),
            limits,
            jwt_secret: pick!(jwt_secret),
            jwt_public_key: pick!(jwt_public_key),
            jwt_jwks_url: pick!(jwt_jwks_url),
            jwt_jwks_refresh: Duration::from_secs(pick!(jwt_jwks_refresh_secs).unwrap_or(300).max(1)),
            scopes: pick!(scopes).filter(|s| !s.is_empty()),
            rooms_claim: pick!(rooms_claim).unwrap_or_else(|| "rooms".to_owned()),
            grants_claim: pick!(grants_claim).unwrap_or_else(|| "zps".to_owned()),
            jwt_issuer: pick!(jwt_issuer),
            jwt_audience: pick!(jwt_audience).filter(|a| !a.is_empty()),
            jwt_leeway: pick!(jwt_leeway_secs).map(Duration::from_secs),
            member_claims: pick!(member_claims).unwrap_or_default(),
            allowed_origins: pick!(allowed_origins).filter(|o| !o.is_empty()),
            api: api_config(
                pick!(api_keys).unwrap_or_default(),
                pick!(api_keys_file).as_deref(),
                pick!(api_rate_per_second),
                pick!(api_max_body_bytes),
                pick!(http_api),
            )?
            .with_report_interval(pick!(cluster_report_interval_ms)),
            demo: pick!(demo).unwrap_or(false),
            tls: match (pick!(tls_cert), pick!(tls_key)) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => bail!("give both --tls-cert and --tls-key"),
            },
            redact_payload_fields: pick!(redact_payload_fields).unwrap_or_default(),
            require_tenant: pick!(require_tenant).unwrap_or(false),
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let key_sources = [
            self.jwt_secret.is_some(),
            self.jwt_public_key.is_some(),
            self.jwt_jwks_url.is_some(),
        ];
        if key_sources.into_iter().filter(|k| *k).count() > 1 {
            bail!("give one of --jwt-secret, --jwt-public-key or --jwt-jwks-url");
        }
        if self.jwt_secret.as_ref().is_some_and(|s| s.len() < 16) {
            bail!("--jwt-secret is too short: use at least 16 characters (32 random bytes recommended)");
        }
        if let Some(scopes) = &self.scopes {
            for s in scopes {
                if !zps_core::room::is_valid_scope(s) {
                    bail!("invalid scope `{s}` in --scopes: must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}");
                }
            }
        }
        if self.default_ttl.is_zero() {
            bail!("--default-ttl-ms must be greater than 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
