//! Configuration, highest precedence first: command-line flags, `CAPSTAN_*` environment
//! variables, the TOML file (`--config`), defaults. One [`Options`] struct is both the clap flag set and the file schema, so the three
//! layers cannot drift apart; unknown file keys and unknown `CAPSTAN_*` variables are errors.
//! Every setting is listed in `docs/configuration.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use capstan_core::crypto::MasterKey;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::error::ServerError;

/// Capstan: OAuth2 issuer, SPIFFE CA, IAM policy engine, dynamic config and trace collector for
/// your services, in one binary.
#[derive(Debug, Parser)]
#[command(name = "capstan", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every service with embedded SQLite under --data-dir; creates an admin on first start.
    Dev {
        /// Shared settings.
        #[command(flatten)]
        opts: Options,
    },
    /// Run in production mode against --database-url (Postgres, or SQLite).
    Serve {
        /// Shared settings.
        #[command(flatten)]
        opts: Options,
        /// Do not apply migrations on start (run `capstan migrate` separately).
        #[arg(long)]
        no_migrate: bool,
    },
    /// Create the first admin client on a fresh database and print its credentials once.
    Bootstrap {
        /// Shared settings.
        #[command(flatten)]
        opts: Options,
        /// Create another admin client even when one exists.
        #[arg(long)]
        force: bool,
    },
    /// Apply database migrations and exit (safe to run from several replicas at once).
    Migrate {
        /// Shared settings.
        #[command(flatten)]
        opts: Options,
    },
    /// The identity service's CA.
    #[command(subcommand)]
    Ca(CaCommand),
}

/// `capstan ca`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Import a CA certificate signed by your organisation's root (an intermediate, with the
    /// chain up to the root in the same file) and its private key: it becomes the next CA
    /// generation (signing at once on a fresh deployment, else after the prepare delay, once
    /// peers have the new root), so SVID chains end at your root. The key is sealed under the
    /// master key.
    Import {
        /// Shared settings.
        #[command(flatten)]
        opts: Options,
        /// The CA certificate, then its chain up to the root (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// The CA's private key (PEM, PKCS#8 or SEC1).
        #[arg(long)]
        key: PathBuf,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Every setting, each from a flag, an environment variable or the TOML file.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// TOML configuration file; its keys are these settings' long names with '_' for '-'.
    #[arg(long, env = "CAPSTAN_CONFIG", global = true)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [dev: 127.0.0.1:8470, serve: 0.0.0.0:8470].
    #[arg(long, env = "CAPSTAN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// URL clients reach Capstan at; issuers are {public_url}/t/{tenant} [http://<listen>].
    #[arg(long, env = "CAPSTAN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Database URL: postgres://… or sqlite://… [dev: sqlite://<data-dir>/capstan.db].
    #[arg(long, env = "CAPSTAN_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Directory of `capstan dev`'s database, master key and admin.json [./.capstan].
    #[arg(long, env = "CAPSTAN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// File holding the master key (base64 or hex of 32 bytes); or set CAPSTAN_MASTER_KEY.
    #[arg(long, env = "CAPSTAN_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Services to run, comma-separated: auth,policy,identity,config,trace [all].
    #[arg(long, env = "CAPSTAN_SERVICES", value_delimiter = ',')]
    pub services: Option<Vec<String>>,
    /// Log format [pretty].
    #[arg(long, env = "CAPSTAN_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, in tracing-subscriber EnvFilter syntax [info].
    #[arg(long, env = "CAPSTAN_LOG")]
    pub log: Option<String>,
    /// Default access-token lifetime in seconds [900].
    #[arg(long, env = "CAPSTAN_TOKEN_TTL_SECONDS")]
    pub token_ttl_seconds: Option<i64>,
    /// Longest access-token lifetime any client may have, in seconds [86400].
    #[arg(long, env = "CAPSTAN_MAX_TOKEN_TTL_SECONDS")]
    pub max_token_ttl_seconds: Option<i64>,
    /// Seconds between publishing a rotated signing key and signing with it [600].
    #[arg(long, env = "CAPSTAN_KEY_PUBLISH_DELAY_SECONDS")]
    pub key_publish_delay_seconds: Option<i64>,
    /// Audience Capstan's own API requires in bearer tokens [capstan].
    #[arg(long, env = "CAPSTAN_API_AUDIENCE")]
    pub api_audience: Option<String>,
    /// Maximum database connections [16].
    #[arg(long, env = "CAPSTAN_DB_MAX_CONNECTIONS")]
    pub db_max_connections: Option<u32>,
    /// Request timeout in seconds [30].
    #[arg(long, env = "CAPSTAN_REQUEST_TIMEOUT_SECONDS")]
    pub request_timeout_seconds: Option<u64>,
    /// Largest accepted request body in bytes [65536].
    #[arg(long, env = "CAPSTAN_BODY_LIMIT_BYTES")]
    pub body_limit_bytes: Option<usize>,
    /// Seconds a client may take to send a request's headers [10].
    #[arg(long, env = "CAPSTAN_HEADER_READ_TIMEOUT_SECONDS")]
    pub header_read_timeout_seconds: Option<u64>,
    /// Connections served at once; more wait in the listen backlog [4096].
    #[arg(long, env = "CAPSTAN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// How often caches poll the database for changes made by other servers, in ms [250].
    #[arg(long, env = "CAPSTAN_SYNC_INTERVAL_MS")]
    pub sync_interval_ms: Option<u64>,
    /// How long the decision log keeps entries, in days [7].
    #[arg(long, env = "CAPSTAN_DECISION_RETENTION_DAYS")]
    pub decision_retention_days: Option<i64>,
    /// SPIFFE trust domain of this deployment: principals' SPIFFE IDs are
    /// spiffe://<trust-domain>/t/<tenant>/<principal> [capstan.local].
    #[arg(long, env = "CAPSTAN_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Serve HTTPS: with a certificate Capstan's CA issues to itself (its SPIFFE ID plus the
    /// --tls-dns-name names), or from --tls-cert/--tls-key. Client certificates (X.509-SVIDs)
    /// are requested, not required.
    #[arg(long, env = "CAPSTAN_TLS", num_args = 0..=1, default_missing_value = "true")]
    pub tls: Option<bool>,
    /// DNS names of the self-issued serving certificate (repeat or comma-separate) [localhost].
    #[arg(
        long = "tls-dns-name",
        env = "CAPSTAN_TLS_DNS_NAMES",
        value_delimiter = ','
    )]
    pub tls_dns_names: Option<Vec<String>>,
    /// Serving certificate chain (PEM), reloaded when it changes; implies --tls.
    #[arg(long, env = "CAPSTAN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Serving private key (PEM), reloaded when it changes.
    #[arg(long, env = "CAPSTAN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Also serve the OTLP/HTTP trace receiver (POST /v1/traces) on this address
    /// (conventionally 0.0.0.0:4318); it is always on the main port too.
    #[arg(long, env = "CAPSTAN_OTLP_HTTP_LISTEN")]
    pub otlp_http_listen: Option<SocketAddr>,
    /// Serve the OTLP/gRPC trace receiver on this address (conventionally 0.0.0.0:4317).
    #[arg(long, env = "CAPSTAN_OTLP_GRPC_LISTEN")]
    pub otlp_grpc_listen: Option<SocketAddr>,
    /// `capstan dev` only: accept spans sent without credentials into the default tenant
    /// (attributed to the principal `anonymous`).
    #[arg(long, env = "CAPSTAN_TRACE_ANONYMOUS", num_args = 0..=1, default_missing_value = "true")]
    pub trace_anonymous: Option<bool>,
    /// Export Capstan's own spans to its trace service, in process (service `capstan`, tenant
    /// `default`, principal `capstan`); the trace receiver itself is not traced.
    #[arg(long, env = "CAPSTAN_TRACE_SELF", num_args = 0..=1, default_missing_value = "true")]
    pub trace_self: Option<bool>,
    /// Each registered service's own section, `[service.<name>]` in the file (file only).
    #[arg(skip)]
    #[serde(default)]
    pub service: BTreeMap<String, toml::Table>,
}

macro_rules! merge_fields {
    ($hi:expr, $lo:expr, [$($f:ident),*]) => {
        Options { config: $hi.config, service: $lo.service, $($f: $hi.$f.or($lo.$f)),* }
    };
}

impl Options {
    /// Fills unset settings from the configuration file, if one is named.
    pub fn with_file(self) -> Result<Options, ServerError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ServerError::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        let file: Options = toml::from_str(&text)
            .map_err(|e| ServerError::Config(format!("config file {}: {e}", path.display())))?;
        Ok(merge_fields!(
            self,
            file,
            [
                listen,
                public_url,
                database_url,
                data_dir,
                master_key_file,
                services,
                log_format,
                log,
                token_ttl_seconds,
                max_token_ttl_seconds,
                key_publish_delay_seconds,
                api_audience,
                db_max_connections,
                request_timeout_seconds,
                body_limit_bytes,
                header_read_timeout_seconds,
                max_connections,
                sync_interval_ms,
                decision_retention_days,
                trust_domain,
                tls,
                tls_dns_names,
                tls_cert,
                tls_key,
                otlp_http_listen,
                otlp_grpc_listen,
                trace_anonymous,
                trace_self
            ]
        ))
    }
}

/// The services Capstan is made of.
pub const SERVICES: [&str; 5] = ["auth", "policy", "identity", "config", "trace"];

/// Fully resolved settings of a running server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Public URL; derived from the bound address when absent.
    pub public_url: Option<String>,
    /// Database URL.
    pub database_url: String,
    /// Selected services.
    pub services: Vec<String>,
    /// Master key.
    pub master_key: MasterKey,
    /// Default token lifetime.
    pub token_ttl_seconds: i64,
    /// Maximum token lifetime.
    pub max_token_ttl_seconds: i64,
    /// Key publish delay.
    pub key_publish_delay_seconds: i64,
    /// API audience.
    pub api_audience: String,
    /// Pool size.
    pub db_max_connections: u32,
    /// Request timeout.
    pub request_timeout: Duration,
    /// Body limit.
    pub body_limit_bytes: usize,
    /// Header read timeout.
    pub header_read_timeout: Duration,
    /// Connection limit.
    pub max_connections: usize,
    /// Cache sync interval.
    pub sync_interval: Duration,
    /// Decision-log retention.
    pub decision_retention_seconds: i64,
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// HTTPS, when set.
    pub tls: Option<crate::tls::TlsMode>,
    /// Export the server's own spans to its trace service.
    pub trace_self: bool,
    /// Registered services' own sections (`[service.<name>]`), as JSON for the kit.
    pub service_config: BTreeMap<String, serde_json::Value>,
}

impl Settings {
    /// Settings with defaults for the given database and master key (used by tests and dev).
    pub fn new(database_url: String, master_key: MasterKey) -> Settings {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_url: None,
            database_url,
            services: crate::app::implemented()
                .into_iter()
                .map(String::from)
                .collect(),
            master_key,
            token_ttl_seconds: 900,
            max_token_ttl_seconds: 86_400,
            key_publish_delay_seconds: 600,
            api_audience: "capstan".into(),
            db_max_connections: 16,
            request_timeout: Duration::from_secs(30),
            body_limit_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            sync_interval: Duration::from_millis(250),
            decision_retention_seconds: 7 * 86_400,
            trust_domain: "capstan.local".into(),
            tls: None,
            trace_self: false,
            service_config: BTreeMap::new(),
        }
    }

    /// Resolves options (already merged with the file) into settings.
    pub fn resolve(
        o: &Options,
        database_url: String,
        master_key: MasterKey,
        default_listen: SocketAddr,
    ) -> Result<Settings, ServerError> {
        let mut s = Settings::new(database_url, master_key);
        s.listen = o.listen.unwrap_or(default_listen);
        s.public_url = o.public_url.clone();
        if let Some(url) = &s.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ServerError::Config(
                    "public_url must start with http:// or https://".into(),
                ));
            }
        }
        s.services = parse_services(o.services.as_deref())?;
        s.trace_self = o.trace_self == Some(true);
        if let Some(td) = &o.trust_domain {
            capstan_identity::spiffe::TrustDomain::parse(td)
                .map_err(|e| ServerError::Config(format!("trust_domain: {e}")))?;
            s.trust_domain = td.clone();
        }
        s.tls = match (&o.tls_cert, &o.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsMode::Files {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) if o.tls == Some(true) => Some(crate::tls::TlsMode::SelfIssued {
                dns_names: o
                    .tls_dns_names
                    .clone()
                    .unwrap_or_else(|| vec!["localhost".into()]),
            }),
            (None, None) => None,
            _ => {
                return Err(ServerError::Config(
                    "tls_cert and tls_key go together".into(),
                ))
            }
        };
        let positive = |name: &str, v: i64| {
            if v > 0 {
                Ok(v)
            } else {
                Err(ServerError::Config(format!("{name} must be positive")))
            }
        };
        if let Some(v) = o.token_ttl_seconds {
            s.token_ttl_seconds = positive("token_ttl_seconds", v)?;
        }
        if let Some(v) = o.max_token_ttl_seconds {
            s.max_token_ttl_seconds = positive("max_token_ttl_seconds", v)?;
        }
        if s.token_ttl_seconds > s.max_token_ttl_seconds {
            return Err(ServerError::Config(
                "token_ttl_seconds must not exceed max_token_ttl_seconds".into(),
            ));
        }
        if let Some(v) = o.key_publish_delay_seconds {
            if v < 0 {
                return Err(ServerError::Config(
                    "key_publish_delay_seconds must not be negative".into(),
                ));
            }
            s.key_publish_delay_seconds = v;
        }
        if let Some(v) = &o.api_audience {
            capstan_core::ids::check_audience(v)
                .map_err(|e| ServerError::Config(format!("api_audience: {e}")))?;
            s.api_audience = v.clone();
        }
        if let Some(v) = o.db_max_connections {
            s.db_max_connections = v.max(1);
        }
        if let Some(v) = o.request_timeout_seconds {
            s.request_timeout = Duration::from_secs(v.max(1));
        }
        if let Some(v) = o.header_read_timeout_seconds {
            s.header_read_timeout = Duration::from_secs(v.clamp(1, 300));
        }
        if let Some(v) = o.max_connections {
            s.max_connections = v.max(1);
        }
        if let Some(v) = o.body_limit_bytes {
            s.body_limit_bytes = v.max(1024);
        }
        if let Some(v) = o.decision_retention_days {
            s.decision_retention_seconds = positive("decision_retention_days", v)? * 86_400;
        }
        for (name, table) in &o.service {
            if crate::app::PLATFORM.contains(&name.as_str()) {
                return Err(ServerError::Config(format!(
                    "[service.{name}]: {name} is configured by the top-level settings (docs/configuration.md)"
                )));
            }
            let value = serde_json::to_value(table)
                .map_err(|e| ServerError::Config(format!("[service.{name}]: {e}")))?;
            s.service_config.insert(name.clone(), value);
        }
        // The trace receiver's flags go into its section (a flag wins over the file).
        let trace_flags = [
            (
                "otlp_http_listen",
                o.otlp_http_listen.map(|a| serde_json::json!(a.to_string())),
            ),
            (
                "otlp_grpc_listen",
                o.otlp_grpc_listen.map(|a| serde_json::json!(a.to_string())),
            ),
            ("anonymous", o.trace_anonymous.map(serde_json::Value::Bool)),
        ];
        for (key, value) in trace_flags {
            if let Some(v) = value {
                let section = s
                    .service_config
                    .entry("trace".into())
                    .or_insert_with(|| serde_json::json!({}));
                if let Some(obj) = section.as_object_mut() {
                    obj.insert(key.into(), v);
                }
            }
        }
        if let Some(v) = o.sync_interval_ms {
            s.sync_interval = Duration::from_millis(v.clamp(10, 1000));
        }
        Ok(s)
    }
}

/// Validates `--services`; absent means every implemented service.
pub fn parse_services(v: Option<&[String]>) -> Result<Vec<String>, ServerError> {
    let Some(list) = v else {
        return Ok(crate::app::implemented()
            .into_iter()
            .map(String::from)
            .collect());
    };
    let mut out: Vec<String> = Vec::new();
    for raw in list {
        let name = raw.trim();
        if name.is_empty() {
            continue;
        }
        if !SERVICES.contains(&name) {
            return Err(ServerError::Config(format!(
                "unknown service {name:?} in --services (known: {})",
                SERVICES.join(",")
            )));
        }
        if !out.iter().any(|s| s == name) {
            out.push(name.to_owned());
        }
    }
    if out.is_empty() {
        return Err(ServerError::Config("--services names no service".into()));
    }
    Ok(out)
}

/// Environment variables Capstan reads besides the flags' own.
const EXTRA_ENV: [&str; 1] = ["CAPSTAN_MASTER_KEY"];

/// Warnings for `CAPSTAN_*` variables that no setting reads, each naming the closest known
/// variable (a typo would otherwise be silently ignored). Kubernetes' service links for a
/// Service named `capstan` (`CAPSTAN_SERVICE_HOST`, `CAPSTAN_PORT_8470_TCP_ADDR`, …), injected
/// into every pod of its namespace, are not settings and are skipped.
pub fn check_environment(vars: impl Iterator<Item = String>) -> Vec<String> {
    let cmd = Cli::command();
    let mut known: Vec<String> = EXTRA_ENV.iter().map(|s| s.to_string()).collect();
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments() {
            if let Some(env) = arg.get_env() {
                known.push(env.to_string_lossy().into_owned());
            }
        }
    }
    known.sort();
    known.dedup();
    let mut warnings = Vec::new();
    for v in vars {
        if v.starts_with("CAPSTAN_") && !known.contains(&v) && !is_service_link(&v) {
            let closest = known
                .iter()
                .min_by_key(|k| edit_distance(k, &v))
                .map(String::as_str)
                .unwrap_or("");
            warnings.push(format!(
                "unknown environment variable {v} is ignored (did you mean {closest}?)"
            ));
        }
    }
    warnings
}

/// Whether `v` is one of the variables Kubernetes injects for a Service named `capstan`:
/// `CAPSTAN_SERVICE_HOST`, `CAPSTAN_SERVICE_PORT[_<name>]`, `CAPSTAN_PORT` and
/// `CAPSTAN_PORT_<port>_<proto>[_PROTO|_PORT|_ADDR]`.
fn is_service_link(v: &str) -> bool {
    if v == "CAPSTAN_SERVICE_HOST" || v == "CAPSTAN_SERVICE_PORT" || v == "CAPSTAN_PORT" {
        return true;
    }
    if v.starts_with("CAPSTAN_SERVICE_PORT_") {
        return true;
    }
    let Some(rest) = v.strip_prefix("CAPSTAN_PORT_") else {
        return false;
    };
    let mut parts = rest.split('_');
    let port_ok = parts
        .next()
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let proto_ok = parts
        .next()
        .is_some_and(|p| matches!(p, "TCP" | "UDP" | "SCTP"));
    let suffix_ok = matches!(
        (parts.next(), parts.next()),
        (None | Some("PROTO" | "PORT" | "ADDR"), None)
    );
    port_ok && proto_ok && suffix_ok
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The master key from CAPSTAN_MASTER_KEY or the key file; `None` when neither is set.
pub fn master_key_from(
    env_value: Option<String>,
    file: Option<&Path>,
) -> Result<Option<MasterKey>, ServerError> {
    if let Some(v) = env_value.filter(|v| !v.trim().is_empty()) {
        return MasterKey::parse(&v)
            .map(Some)
            .map_err(|e| ServerError::Config(format!("CAPSTAN_MASTER_KEY: {e}")));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ServerError::Config(format!(
                "cannot read master key file {}: {e}",
                path.display()
            ))
        })?;
        return MasterKey::parse(&text)
            .map(Some)
            .map_err(|e| ServerError::Config(format!("{}: {e}", path.display())));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_sections_come_from_the_file_only() {
        let o: Options = toml::from_str(
            "services = [\"auth\"]\n[service.identity]\ndefault_svid_ttl_seconds = 600\n",
        )
        .unwrap();
        let key = MasterKey::parse(&"00".repeat(32)).unwrap();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let s = Settings::resolve(&o, "sqlite://x".into(), key.clone(), any).unwrap();
        assert_eq!(
            s.service_config["identity"],
            serde_json::json!({"default_svid_ttl_seconds": 600})
        );
        let o: Options = toml::from_str("[service.auth]\ntoken_ttl_seconds = 60\n").unwrap();
        let err = Settings::resolve(&o, "sqlite://x".into(), key, any).unwrap_err();
        assert!(err.to_string().contains("[service.auth]"), "{err}");
    }

    /// docs/configuration.md lists every flag of every command.
    #[test]
    fn every_flag_is_documented() {
        let doc = include_str!("../../../docs/configuration.md");
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            let subs: Vec<_> = std::iter::once(sub).chain(sub.get_subcommands()).collect();
            for c in subs {
                for arg in c.get_arguments() {
                    if let Some(long) = arg.get_long() {
                        assert!(
                            doc.contains(&format!("`--{long}")),
                            "docs/configuration.md does not document --{long} ({})",
                            c.get_name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn services_are_checked() {
        assert_eq!(
            parse_services(None).unwrap(),
            ["auth", "policy", "identity", "config", "trace"]
        );
        let v = vec!["auth".to_string(), "policy".to_string()];
        assert_eq!(parse_services(Some(&v)).unwrap(), ["auth", "policy"]);
        let bad = vec!["auth".to_string(), "nope".to_string()];
        assert!(parse_services(Some(&bad))
            .unwrap_err()
            .to_string()
            .contains("nope"));
    }

    #[test]
    fn unknown_env_vars_are_warned_about_and_service_links_skipped() {
        let ok = ["CAPSTAN_LISTEN", "CAPSTAN_MASTER_KEY", "HOME"].map(String::from);
        assert!(check_environment(ok.into_iter()).is_empty());
        let bad = ["CAPSTAN_LISTN".to_string()];
        let w = check_environment(bad.into_iter());
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("CAPSTAN_LISTN") && w[0].contains("did you mean CAPSTAN_LISTEN?"));
        // What Kubernetes injects for a Service named `capstan` (port 8470, named "http").
        let links = [
            "CAPSTAN_SERVICE_HOST",
            "CAPSTAN_SERVICE_PORT",
            "CAPSTAN_SERVICE_PORT_HTTP",
            "CAPSTAN_PORT",
            "CAPSTAN_PORT_8470_TCP",
            "CAPSTAN_PORT_8470_TCP_PROTO",
            "CAPSTAN_PORT_8470_TCP_PORT",
            "CAPSTAN_PORT_8470_TCP_ADDR",
        ]
        .map(String::from);
        assert!(check_environment(links.into_iter()).is_empty());
        let not_links = ["CAPSTAN_PORT_X_TCP", "CAPSTAN_PORT_8470_TCP_HOST"].map(String::from);
        assert_eq!(check_environment(not_links.into_iter()).len(), 2);
    }

    #[test]
    fn file_layer_rejects_unknown_keys_and_yields_to_flags() {
        let dir = std::env::temp_dir().join(format!("capstan-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:9000\"\ntoken_ttl_seconds = 60\n").unwrap();
        let o = Options {
            config: Some(f.clone()),
            token_ttl_seconds: Some(120),
            ..Default::default()
        };
        let merged = o.with_file().unwrap();
        assert_eq!(merged.listen, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(merged.token_ttl_seconds, Some(120));
        std::fs::write(&f, "lisen = \"127.0.0.1:9000\"\n").unwrap();
        let o = Options {
            config: Some(f),
            ..Default::default()
        };
        assert!(o.with_file().unwrap_err().to_string().contains("lisen"));
    }
}
