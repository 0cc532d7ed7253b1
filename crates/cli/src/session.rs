//! Where to talk to and as whom: the address, the tenant and the saved login, with the
//! access token refreshed when it expires.

use std::path::PathBuf;

use capstan_sdk::{AccessToken, ApiClient, Credentials, Error, Transport, TransportConfig};

use crate::cli::Cli;
use crate::config::{config_dir, Context, Contexts};
use crate::Failure;

/// The default address (`capstan dev`).
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:8470";

/// A resolved invocation: address, tenant, transport and the saved logins.
pub struct Session {
    /// The address.
    pub addr: String,
    /// Where the address came from, for error messages.
    pub addr_source: &'static str,
    /// The tenant.
    pub tenant: String,
    /// The config directory.
    pub dir: PathBuf,
    /// The saved logins.
    pub contexts: Contexts,
    /// HTTP.
    pub transport: Transport,
}

/// The current time in Unix seconds.
pub fn now() -> i64 {
    use capstan_sdk::Clock;
    capstan_sdk::SystemClock.now()
}

impl Session {
    /// Resolves the flags against the saved contexts.
    pub fn open(cli: &Cli) -> Result<Session, Failure> {
        let dir = config_dir(cli.config_dir.as_deref()).map_err(Failure::new)?;
        let contexts = Contexts::load(&dir).map_err(Failure::new)?;
        let (addr, addr_source) = match (&cli.addr, &contexts.current) {
            (Some(a), _) => (a.clone(), "--addr/CAPSTAN_ADDR"),
            (None, Some(c)) => (c.clone(), "the current context"),
            (None, None) => (DEFAULT_ADDR.to_owned(), "the default"),
        };
        let addr = addr.trim_end_matches('/').to_owned();
        if !(addr.starts_with("http://") || addr.starts_with("https://")) {
            return Err(Failure::new(format!(
                "address {addr:?} must start with http:// or https://"
            )));
        }
        let tenant = cli
            .tenant
            .clone()
            .or_else(|| contexts.contexts.get(&addr).map(|c| c.tenant.clone()))
            .unwrap_or_else(|| "default".to_owned());
        let mut cfg = TransportConfig::default();
        if let Some(f) = &cli.ca_file {
            let pem = std::fs::read(f)
                .map_err(|e| Failure::new(format!("cannot read {}: {e}", f.display())))?;
            cfg.root_certificates_pem.push(pem);
        }
        let transport = Transport::new(cfg).map_err(|e| Failure::new(e.to_string()))?;
        Ok(Session {
            addr,
            addr_source,
            tenant,
            dir,
            contexts,
            transport,
        })
    }

    /// The tenant's OAuth endpoint `name` (token, introspect, revoke).
    pub fn oauth_url(&self, name: &str) -> String {
        format!(
            "{}/t/{}/oauth2/{name}",
            self.addr,
            capstan_sdk::segment(&self.tenant)
        )
    }

    /// The saved login for this address.
    pub fn context(&self) -> Result<&Context, Failure> {
        self.contexts.contexts.get(&self.addr).ok_or_else(|| {
            Failure::new(format!("not logged in to {}", self.addr))
                .hint("run `capstanctl login` (or `capstanctl login --dev` against capstan dev)")
        })
    }

    /// An access token for Capstan's API: the saved one while it is valid, else a new one
    /// from the saved credentials (then saved).
    pub async fn token(&mut self, force: bool) -> Result<AccessToken, Failure> {
        let ctx = self.context()?.clone();
        if let (Some(t), false) = (&ctx.access_token, force) {
            if now() + 30 < ctx.expires_at {
                return Ok(AccessToken::new(t.clone()));
            }
        }
        let grant = capstan_sdk::client_credentials(
            &self.transport,
            &self.oauth_url("token"),
            &ctx.client_id,
            &ctx.client_secret,
            &[],
            Some(capstan_sdk::API_AUDIENCE),
        )
        .await
        .map_err(|e| match e {
            Error::OAuth { .. } => {
                Failure::new(format!("your login to {} no longer works: {e}", self.addr))
                    .hint("run `capstanctl login` again")
            }
            other => self.failure(other),
        })?;
        let mut saved = ctx;
        saved.access_token = Some(grant.token.secret().to_owned());
        saved.expires_at = now() + grant.expires_in.unwrap_or(60) as i64;
        self.contexts.contexts.insert(self.addr.clone(), saved);
        self.contexts.save(&self.dir).map_err(Failure::new)?;
        Ok(grant.token)
    }

    /// An API client with a valid token.
    pub async fn api(&mut self) -> Result<ApiClient, Failure> {
        let token = self.token(false).await?;
        Ok(ApiClient::new(
            &self.addr,
            self.transport.clone(),
            Credentials::Token(token),
        ))
    }

    /// An SDK error as a failure with what to do about it.
    pub fn failure(&self, e: Error) -> Failure {
        use crate::exit;
        match e {
            Error::Unreachable { .. } | Error::Timeout { .. } => Failure::new(e.to_string()).hint(
                format!(
                    "the address ({}, from {}) is set with --addr or CAPSTAN_ADDR, or `capstanctl contexts use ADDR`",
                    self.addr, self.addr_source
                ),
            ),
            Error::Api {
                status: 403, body, ..
            } => {
                let f = |k: &str| body.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_owned();
                Failure {
                    message: format!(
                        "denied: not allowed to {} on {} (reason: {})",
                        f("action"),
                        f("resource"),
                        f("reason")
                    ),
                    hint: Some("an administrator can grant it with a policy (`capstanctl policies put`, `capstanctl attach`)".into()),
                    code: exit::DENIED,
                }
            }
            Error::Api {
                status: 404,
                message,
                ..
            } => Failure {
                message: format!("not found: {message}"),
                hint: None,
                code: exit::NOT_FOUND,
            },
            Error::Api {
                status: 401,
                message,
                ..
            } => Failure::new(format!("not authenticated: {message}"))
                .hint("run `capstanctl login` again"),
            Error::Api {
                status,
                code,
                message,
                body,
            } => {
                let mut text = format!("{message} ({status} {code})");
                for issue in body
                    .get("errors")
                    .and_then(|e| e.as_array())
                    .into_iter()
                    .flatten()
                {
                    let p = issue.get("path").and_then(|v| v.as_str()).unwrap_or("");
                    let m = issue.get("message").and_then(|v| v.as_str()).unwrap_or("");
                    text.push_str(&format!("\n  {p}: {m}"));
                }
                if let Some(id) = body.get("request_id").and_then(|v| v.as_str()) {
                    text.push_str(&format!("\n  request id: {id}"));
                }
                Failure::new(text)
            }
            other => Failure::new(other.to_string()),
        }
    }
}
