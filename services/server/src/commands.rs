//! The `capstan` subcommands.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use capstan_core::clock::SystemClock;
use capstan_core::crypto::MasterKey;
use capstan_core::ids::TenantId;
use capstan_core::jwt::Alg;
use capstan_core::rng::SystemRng;
use capstan_db::Db;
use serde_json::json;

use crate::app::{registry, App, Server};
use crate::config::{master_key_from, Options, Settings};
use crate::error::ServerError;

const DEV_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 8470);
const SERVE_LISTEN: ([u8; 4], u16) = ([0, 0, 0, 0], 8470);

fn env_master_key() -> Option<String> {
    std::env::var("CAPSTAN_MASTER_KEY").ok()
}

fn required_master_key(o: &Options) -> Result<MasterKey, ServerError> {
    master_key_from(env_master_key(), o.master_key_file.as_deref())?.ok_or_else(|| {
        ServerError::Config(
            "no master key: set CAPSTAN_MASTER_KEY (32 bytes, base64 or hex; e.g. `openssl rand -base64 32`) or --master-key-file".into(),
        )
    })
}

fn required_database_url(o: &Options) -> Result<String, ServerError> {
    o.database_url.clone().ok_or_else(|| {
        ServerError::Config("no database: set --database-url or CAPSTAN_DATABASE_URL".into())
    })
}

/// Creates `dir` (and its parents) if missing, and makes it accessible to the owner only
/// (0700): it holds the master key, the admin credentials and the database.
fn private_dir(dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Creates `path` if missing, and makes it readable by the owner only (0600).
fn private_file(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Writes `contents` to a new file readable only by the owner.
fn write_private(path: &Path, contents: &str) -> Result<(), ServerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The admin credentials as printed (and written to `admin.json`). The issuer is included when
/// the public URL is known.
fn credentials_json(
    public_url: Option<&str>,
    c: &capstan_auth::admin::ClientWithSecret,
) -> serde_json::Value {
    let mut v = json!({
        "tenant": c.client.tenant,
        "client_id": c.client.client_id,
        "client_secret": c.client_secret,
        "audience": c.client.audiences.first(),
    });
    if let Some(url) = public_url {
        let issuer = format!("{}/t/{}", url.trim_end_matches('/'), c.client.tenant);
        v["token_endpoint"] = json!(format!("{issuer}/oauth2/token"));
        v["issuer"] = json!(issuer);
    }
    v
}

/// `capstan dev`.
pub async fn dev(o: Options) -> Result<(), ServerError> {
    let data_dir = o
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".capstan"));
    private_dir(&data_dir)?;
    let rng = SystemRng::new();
    let key_path = data_dir.join("master.key");
    let master = match master_key_from(env_master_key(), o.master_key_file.as_deref())? {
        Some(k) => k,
        None if key_path.exists() => master_key_from(None, Some(&key_path))?
            .ok_or_else(|| ServerError::Config("master key file is empty".into()))?,
        None => {
            let k = MasterKey::generate(&rng)?;
            write_private(&key_path, &k.to_base64())?;
            k
        }
    };
    let database_url = match o.database_url.clone() {
        Some(url) => url,
        None => {
            // SQLite creates its -wal and -shm files with the database file's permissions.
            let db_path = data_dir.join("capstan.db");
            private_file(&db_path)?;
            format!("sqlite://{}", db_path.display())
        }
    };
    let settings = Settings::resolve(&o, database_url, master, SocketAddr::from(DEV_LISTEN))?;
    let server = Server::start(&settings, Arc::new(SystemClock), Arc::new(rng), true).await?;
    {
        let auth = &server.app.auth;
        let tenant = TenantId::default_tenant();
        let admin_path = data_dir.join("admin.json");
        if !auth.has_admin(&tenant).await? {
            let created = auth.create_admin_client(&tenant, "admin").await?;
            let creds = credentials_json(Some(&server.public_url), &created);
            write_private(&admin_path, &format!("{:#}\n", creds))?;
            println!(
                "capstan dev: created the admin client (shown once; also in {}):",
                admin_path.display()
            );
            println!("{creds:#}");
        } else {
            println!(
                "capstan dev: admin credentials are in {}",
                admin_path.display()
            );
        }
    }
    println!(
        "capstan dev: listening on {} (database {}, issuer {}/t/default)",
        server.addr, settings.database_url, server.public_url
    );
    server.run_until(wait_for_signal()).await
}

/// Settings of the production commands: a database URL and a master key are required.
fn production_settings(o: &Options) -> Result<Settings, ServerError> {
    let anonymous_in_file = o
        .service
        .get("trace")
        .and_then(|t| t.get("anonymous"))
        .is_some_and(|v| v.as_bool() == Some(true));
    if o.trace_anonymous == Some(true) || anonymous_in_file {
        return Err(ServerError::Config(
            "--trace-anonymous is for capstan dev only".into(),
        ));
    }
    Settings::resolve(
        o,
        required_database_url(o)?,
        required_master_key(o)?,
        SocketAddr::from(SERVE_LISTEN),
    )
}

/// `capstan serve`.
pub async fn serve(o: Options, no_migrate: bool) -> Result<(), ServerError> {
    let settings = production_settings(&o)?;
    let server = Server::start(
        &settings,
        Arc::new(SystemClock),
        Arc::new(SystemRng::new()),
        !no_migrate,
    )
    .await?;
    tracing::info!(addr = %server.addr, public_url = %server.public_url, services = ?settings.services, "capstan serving");
    println!(
        "capstan serve: listening on {} (issuer {}/t/default)",
        server.addr, server.public_url
    );
    server.run_until(wait_for_signal()).await
}

/// `capstan migrate`.
pub async fn migrate(o: Options) -> Result<(), ServerError> {
    let db = Db::connect(&required_database_url(&o)?, 2).await?;
    db.migrate().await?;
    println!("capstan migrate: {} database is up to date", db.backend());
    Ok(())
}

/// `capstan bootstrap`.
pub async fn bootstrap(o: Options, force: bool) -> Result<(), ServerError> {
    let mut settings = production_settings(&o)?;
    settings.db_max_connections = 2;
    let public_url = o.public_url.as_deref();
    // The same composition root as the server; nothing is started or served.
    let app = App::build(
        &settings,
        public_url.unwrap_or_default().to_owned(),
        Arc::new(SystemClock),
        Arc::new(SystemRng::new()),
        true,
        registry(),
    )
    .await?;
    let auth = &app.auth;
    let tenant = TenantId::default_tenant();
    auth.ensure_tenant(&tenant, Alg::ES256).await?;
    if auth.has_admin(&tenant).await? && !force {
        return Err(ServerError::Config(
            "an admin client exists already; pass --force to create another".into(),
        ));
    }
    let created = auth.create_admin_client(&tenant, "admin").await?;
    println!("{:#}", credentials_json(public_url, &created));
    Ok(())
}

/// `capstan ca import`.
pub async fn ca_import(
    o: Options,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(), ServerError> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map_err(|e| ServerError::Config(format!("cannot read {}: {e}", p.display())))
    };
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let mut settings = production_settings(&o)?;
    settings.db_max_connections = 2;
    let app = App::build(
        &settings,
        o.public_url.clone().unwrap_or_default(),
        Arc::new(SystemClock),
        Arc::new(SystemRng::new()),
        true,
        registry(),
    )
    .await?;
    let section = capstan_http::ServiceConfig::new(
        settings
            .service_config
            .get("identity")
            .cloned()
            .unwrap_or_default(),
    );
    let identity = capstan_identity::build_service(&app.platform, &section).map_err(|e| {
        ServerError::Service {
            name: "identity",
            message: e.to_string(),
        }
    })?;
    let id = identity
        .import_ca(&cert_pem, &key_pem)
        .await
        .map_err(|e| ServerError::Config(format!("ca import: {e}")))?;
    let cas = identity
        .ca_records()
        .await
        .map_err(|e| ServerError::Config(format!("ca import: {e}")))?;
    let ca = cas.iter().find(|c| c.id == id);
    println!(
        "{:#}",
        serde_json::json!({
            "id": id,
            "activates_at": ca.map(|c| c.activates_at),
            "not_after": ca.map(|c| c.not_after),
        })
    );
    Ok(())
}
