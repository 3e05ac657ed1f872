//! Settings: flags win over the file, defaults fill the rest, unknown file keys are named, bad settings are explained.

use super::*;

fn file(name: &str, text: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("zps-settings-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gw.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn unknown_file_keys_are_named() {
    let (dir, path) = file("unknown", "port = 1\nmax_conections = 5\nconfig = \"x\"\n");
    let args = GatewayArgs {
        config: Some(path),
        ..Default::default()
    };
    let err = Settings::resolve(args).unwrap_err().to_string();
    assert!(err.contains("unknown keys: config, max_conections"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn every_flag_is_a_file_key_and_provider_keys_are_flat() {
    let (dir, path) = file(
        "flat",
        "provider = \"redis\"\nredis_prefix = \"p:\"\nsqlite_synchronous = \"normal\"\nallow_client_publish = true\ndrain_timeout_ms = 5\n",
    );
    let s = Settings::resolve(GatewayArgs {
        config: Some(path),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.provider.kind, ProviderKind::Redis);
    assert_eq!(s.provider.given.redis_prefix.as_deref(), Some("p:"));
    assert_eq!(s.provider.given.sqlite_synchronous, Some(SqliteSync::Normal));
    assert!(s.limits.allow_client_publish);
    assert_eq!(s.drain_timeout, Duration::from_millis(5));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn flags_win_over_the_file_and_defaults_fill_the_rest() {
    let dir = std::env::temp_dir().join(format!("zps-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gw.toml");
    std::fs::write(
        &path,
        "port = 9000\nhost = \"0.0.0.0\"\nmax_connections = 7\nscopes = [\"chat\"]\n",
    )
    .unwrap();
    let args = GatewayArgs {
        config: Some(path),
        port: Some(9100),
        ..Default::default()
    };
    assert!(args.provider.provider.is_none());
    let s = Settings::resolve(args).unwrap();
    assert_eq!(s.port, 9100, "flag wins");
    assert_eq!(s.host, "0.0.0.0", "file fills");
    assert_eq!(s.limits.max_connections, 7);
    assert_eq!(s.scopes, Some(vec!["chat".to_owned()]));
    assert_eq!(s.limits.max_subscriptions, 128, "default");
    assert_eq!(s.provider.kind, ProviderKind::Memory);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn no_arguments_means_localhost_8080_on_memory() {
    let s = Settings::resolve(GatewayArgs::default()).unwrap();
    assert_eq!(
        (s.host.as_str(), s.port, s.provider.kind),
        ("127.0.0.1", 8080, ProviderKind::Memory)
    );
    assert!(!s.limits.allow_client_publish);
    assert_eq!(s.rooms_claim, "rooms");
}

#[test]
fn bad_settings_are_explained() {
    let short = GatewayArgs {
        jwt_secret: Some("short".into()),
        ..Default::default()
    };
    assert!(
        Settings::resolve(short)
            .unwrap_err()
            .to_string()
            .contains("too short")
    );
    let scopes = GatewayArgs {
        scopes: Some(vec!["bad scope".into()]),
        ..Default::default()
    };
    assert!(
        Settings::resolve(scopes)
            .unwrap_err()
            .to_string()
            .contains("invalid scope")
    );
}
