//! Reaching PostgreSQL: URL parsing with the provider's options, a probe with a
//! deadline, the pools (the listener's own, sized for LISTEN connections).

use super::*;

/// `host:port/database` of connect options, for error messages (never the password).
pub(super) fn describe(o: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or(o.get_username())
    )
}

pub(super) fn parse_url(url: &str, config: &PostgresConfig) -> PgResult<PgConnectOptions> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(PostgresError::InvalidUrl(
            "expected postgres://user[:password]@host[:port]/database".into(),
        ));
    }
    let mut options =
        PgConnectOptions::from_str(url).map_err(|e| PostgresError::InvalidUrl(e.to_string()))?;
    if let Some(ca) = &config.ssl_root_cert
        && !url.contains("sslrootcert=")
    {
        options = options.ssl_root_cert(ca);
    }
    Ok(options.application_name(&config.application_name))
}

/// Opens one connection so a failure says why (refused, authentication, unknown
/// database) instead of surfacing later as a pool timeout.
pub(super) async fn probe(options: &PgConnectOptions, timeout: Duration) -> PgResult<()> {
    let target = describe(options);
    match tokio::time::timeout(timeout, options.connect()).await {
        Err(_) => Err(PostgresError::ConnectTimeout {
            target,
            timeout_ms: timeout.as_millis(),
        }),
        Ok(Err(source)) => Err(PostgresError::Unreachable { target, source }),
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
    }
}

pub(super) fn pool_options(config: &PostgresConfig) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.connect_timeout)
}

pub(super) fn listener_pool(options: &PgConnectOptions, config: &PostgresConfig) -> PgPool {
    let name = format!("{}-listener", config.application_name);
    PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(config.connect_timeout)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options.clone().application_name(&name))
}
