//! Each command: one API call, its answer rendered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capstan_sdk::{segment, Error};
use clap::CommandFactory;
use reqwest::Method;
use serde_json::{json, Value};

use crate::cli::*;
use crate::config::Context;
use crate::output::{render, utc};
use crate::session::{now, Session};
use crate::{exit, Failure, Io};

mod config;
mod trace;

type Res = Result<i32, Failure>;

struct Run<'a, 'b> {
    s: Session,
    io: &'a mut Io<'b>,
    format: Format,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli, io: &mut Io<'_>) -> Res {
    let format = cli.output.unwrap_or(if io.stdout_tty {
        Format::Table
    } else {
        Format::Json
    });
    if cli.version {
        return version(&cli, io).await;
    }
    let mut cli = cli;
    let Some(command) = cli.command.take() else {
        let help = Cli::command().render_help().to_string();
        let _ = write!(io.err, "{help}");
        return Ok(exit::USAGE);
    };
    match command {
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "capstanctl", &mut buf);
            io.out.write_all(&buf).map_err(io_err)?;
            return Ok(exit::OK);
        }
        Command::Docs => {
            write!(io.out, "{}", crate::docs::markdown()).map_err(io_err)?;
            return Ok(exit::OK);
        }
        _ => {}
    }
    let s = Session::open(&cli)?;
    let mut r = Run { s, io, format };
    r.command(command).await
}

fn io_err(e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        // The reader went away (`| head`): nothing more to say.
        return Failure {
            message: String::new(),
            hint: None,
            code: exit::OK,
        };
    }
    Failure::new(format!("cannot write the output: {e}"))
}

async fn version(cli: &Cli, io: &mut Io<'_>) -> Res {
    let _ = writeln!(io.out, "capstanctl {}", env!("CARGO_PKG_VERSION"));
    let s = Session::open(cli)?;
    let server = capstan_sdk::Capstan::with_transport(&s.addr, &s.tenant, s.transport.clone())
        .map_err(|e| Failure::new(e.to_string()))?;
    match server.server_version().await {
        Ok(v) => {
            let _ = writeln!(io.out, "server {v} at {}", s.addr);
        }
        Err(e) => {
            let _ = writeln!(io.out, "server unreachable at {} ({e})", s.addr);
        }
    }
    Ok(exit::OK)
}

/// Shows a spinner on stderr while `f` runs, if it takes over 300 ms and stderr is a terminal.
async fn spin<F: std::future::Future>(interactive: bool, f: F) -> F::Output {
    if !interactive {
        return f.await;
    }
    let drew = Arc::new(AtomicBool::new(false));
    let flag = drew.clone();
    let spinner = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for frame in ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏']
            .iter()
            .cycle()
        {
            flag.store(true, Ordering::Relaxed);
            eprint!("\r{frame} waiting for Capstan…");
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
    });
    let out = f.await;
    spinner.abort();
    if drew.load(Ordering::Relaxed) {
        eprint!("\r\x1b[K");
    }
    out
}

/// Reads a document from a file, or stdin for `-`; it must be JSON.
fn read_document(io: &mut Io<'_>, file: &str) -> Result<Value, Failure> {
    let text = if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut *io.stdin, &mut s)
            .map_err(|e| Failure::new(format!("cannot read stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| Failure::new(format!("cannot read {file}: {e}")))?
    };
    serde_json::from_str(&text).map_err(|e| {
        Failure::new(format!(
            "{} is not JSON: {e}",
            if file == "-" { "stdin" } else { file }
        ))
    })
}

fn parse_since(s: &str) -> Result<i64, Failure> {
    if let Ok(t) = s.parse::<i64>() {
        return Ok(t);
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = num.parse().map_err(|_| {
        Failure::new(format!(
            "--since {s:?}: Unix seconds or a duration like 10m"
        ))
    })?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(Failure::new(format!(
                "--since {s:?}: the unit is s, m, h or d"
            )))
        }
    };
    Ok(now() - secs)
}

impl Run<'_, '_> {
    /// One API call with the saved login (a refused token is renewed once).
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let mut forced = false;
        loop {
            let api = self.client(forced).await?;
            let r = spin(
                self.io.interactive,
                api.call(method.clone(), path, query, body.as_ref()),
            )
            .await;
            match r {
                Err(Error::Api { status: 401, .. }) if !forced => forced = true,
                Err(e) => return Err(self.s.failure(e)),
                Ok(v) => return Ok(v),
            }
        }
    }

    /// An API client with the saved login; `forced`: with a new token (the saved one was
    /// refused).
    async fn client(&mut self, forced: bool) -> Result<capstan_sdk::ApiClient, Failure> {
        if !forced {
            return self.s.api().await;
        }
        let t = self.s.token(true).await?;
        Ok(capstan_sdk::ApiClient::new(
            &self.s.addr,
            self.s.transport.clone(),
            capstan_sdk::Credentials::Token(t),
        ))
    }

    fn print(&mut self, v: &Value, columns: &[&str]) -> Res {
        let text = render(v, self.format, columns);
        self.io.out.write_all(text.as_bytes()).map_err(io_err)?;
        Ok(exit::OK)
    }

    fn done(&mut self, what: String) -> Res {
        let _ = writeln!(self.io.err, "{what}");
        Ok(exit::OK)
    }

    async fn get(&mut self, path: &str, columns: &[&str]) -> Res {
        let v = self.call(Method::GET, path, &[], None).await?;
        self.print(&v, columns)
    }

    /// A document read: the document itself in table mode (it is JSON either way).
    async fn get_document(&mut self, path: &str, query: &[(&str, String)]) -> Res {
        let v = self.call(Method::GET, path, query, None).await?;
        if self.format == Format::Table {
            let doc = v.get("document").unwrap_or(&v);
            let text = format!(
                "{}\n",
                serde_json::to_string_pretty(doc).unwrap_or_default()
            );
            self.io.out.write_all(text.as_bytes()).map_err(io_err)?;
            return Ok(exit::OK);
        }
        self.print(&v, &[])
    }

    async fn command(&mut self, c: Command) -> Res {
        match c {
            Command::Login(a) => self.login(a).await,
            Command::Logout => {
                let addr = self.s.addr.clone();
                if self.s.contexts.contexts.remove(&addr).is_none() {
                    return self.done(format!("not logged in to {addr}"));
                }
                if self.s.contexts.current.as_deref() == Some(addr.as_str()) {
                    self.s.contexts.current = None;
                }
                self.s.contexts.save(&self.s.dir).map_err(Failure::new)?;
                self.done(format!("logged out of {addr}"))
            }
            Command::Contexts { command } => self.contexts(command),
            Command::Tenants(t) => match t {
                TenantsCommand::List => {
                    self.get(
                        "/v1/tenants",
                        &["id", "signing_alg", "issuer", "created_at"],
                    )
                    .await
                }
                TenantsCommand::Create { id, signing_alg } => {
                    let v = self
                        .call(
                            Method::POST,
                            "/v1/tenants",
                            &[],
                            Some(json!({"id": id, "signing_alg": signing_alg})),
                        )
                        .await?;
                    self.print(&v, &[])
                }
            },
            Command::Clients(c) => self.clients(c).await,
            Command::Keys(k) => match k {
                KeysCommand::List => {
                    self.get("/v1/keys", &["kid", "alg", "created_at", "activates_at"])
                        .await
                }
                KeysCommand::Rotate {
                    alg,
                    publish_delay,
                    supersede,
                } => {
                    let body = json!({"alg": alg, "publish_delay_seconds": publish_delay, "supersede": supersede});
                    let v = self
                        .call(
                            Method::POST,
                            "/v1/keys/rotate",
                            &[],
                            Some(strip_nulls(body)),
                        )
                        .await?;
                    self.print(&v, &[])
                }
                KeysCommand::Delete { kid } => {
                    self.call(
                        Method::DELETE,
                        &format!("/v1/keys/{}", segment(&kid)),
                        &[],
                        None,
                    )
                    .await?;
                    self.done(format!("withdrew key {kid}"))
                }
            },
            Command::Token { audience, scopes } => {
                let token = match (audience, scopes.is_empty()) {
                    (None, true) => self.s.token(false).await?,
                    (audience, _) => {
                        let ctx = self.s.context()?.clone();
                        let aud = audience.unwrap_or_else(|| capstan_sdk::API_AUDIENCE.into());
                        capstan_sdk::client_credentials(
                            &self.s.transport,
                            &self.s.oauth_url("token"),
                            &ctx.client_id,
                            &ctx.client_secret,
                            &scopes,
                            Some(&aud),
                        )
                        .await
                        .map_err(|e| self.s.failure(e))?
                        .token
                    }
                };
                writeln!(self.io.out, "{}", token.secret()).map_err(io_err)?;
                Ok(exit::OK)
            }
            Command::Introspect { token } => {
                let v = self.oauth_form("introspect", &token).await?;
                self.print(&v, &[])
            }
            Command::Revoke { token } => {
                self.oauth_form("revoke", &token).await?;
                self.done(
                    "revoked (a token that was unknown or already revoked is revoked too)".into(),
                )
            }
            Command::Policies(p) => self.policies(p).await,
            Command::Attach(a) => self.attach(a, Method::PUT).await,
            Command::Detach(a) => self.attach(a, Method::DELETE).await,
            Command::Groups(g) => self.groups(g).await,
            Command::Boundary(b) => match b {
                BoundaryCommand::Set { principal, policy } => {
                    self.call(
                        Method::PUT,
                        &format!("/v1/principals/{}/boundary", segment(&principal)),
                        &[],
                        Some(json!({"policy": policy})),
                    )
                    .await?;
                    self.done(format!("{principal} is bounded by {policy}"))
                }
                BoundaryCommand::Clear { principal } => {
                    self.call(
                        Method::DELETE,
                        &format!("/v1/principals/{}/boundary", segment(&principal)),
                        &[],
                        None,
                    )
                    .await?;
                    self.done(format!("{principal} has no boundary"))
                }
            },
            Command::Tags(TagsCommand::Set { principal, tags }) => {
                let mut map = BTreeMap::new();
                for t in &tags {
                    let (k, v) = t.split_once('=').ok_or_else(|| Failure {
                        message: format!("tag {t:?} must be key=value"),
                        hint: None,
                        code: exit::USAGE,
                    })?;
                    map.insert(k.to_owned(), v.to_owned());
                }
                self.call(
                    Method::PUT,
                    &format!("/v1/principals/{}/tags", segment(&principal)),
                    &[],
                    Some(json!({"tags": map})),
                )
                .await?;
                self.done(format!("{principal} has {} tag(s)", map.len()))
            }
            Command::ResourcePolicies(k) => {
                self.keyed("/v1/resource-policies", "resource", k).await
            }
            Command::Guardrails(k) => self.keyed("/v1/guardrails", "name", k).await,
            Command::Authorize(a) => self.authorize(a).await,
            Command::Simulate(a) => self.simulate(a).await,
            Command::Decisions(a) => self.decisions(a).await,
            Command::Svid(c) => self.svid(c).await,
            Command::Bundle { pem } => self.bundle(pem).await,
            Command::Ca(c) => self.ca(c).await,
            Command::Entries(c) => self.entries(c).await,
            Command::JoinToken(JoinTokenCommand::Create { principal, ttl }) => {
                let body = strip_nulls(json!({"principal": principal, "ttl_seconds": ttl}));
                let v = self
                    .call(Method::POST, "/v1/identity/join-tokens", &[], Some(body))
                    .await?;
                let _ = writeln!(
                    self.io.err,
                    "the join token is shown only now and works once: `capstanctl svid issue --out DIR --join-token -`"
                );
                self.print(&v, &[])
            }
            Command::Config(c) => self.config(c).await,
            Command::Traces(c) => self.traces(c).await,
            Command::Completions { .. } | Command::Docs => Ok(exit::OK),
        }
    }

    async fn login(&mut self, a: LoginArgs) -> Res {
        let (tenant, id, secret) = if let Some(dir) = &a.dev {
            let path = dir.join("admin.json");
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Failure::new(format!("cannot read {}: {e}", path.display()))
                    .hint("run `capstan dev` first, or give its data directory: `capstanctl login --dev DATA_DIR`")
            })?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| Failure::new(format!("{} is not valid: {e}", path.display())))?;
            let f = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            let (Some(id), Some(secret)) = (f("client_id"), f("client_secret")) else {
                return Err(Failure::new(format!(
                    "{} has no client_id and client_secret",
                    path.display()
                )));
            };
            (self.s.tenant_flag_or(f("tenant")), id, secret)
        } else {
            let id = match a
                .client_id
                .or_else(|| std::env::var("CAPSTAN_CLIENT_ID").ok())
            {
                Some(id) => id,
                None if self.io.interactive => {
                    write!(self.io.err, "Client id: ").map_err(io_err)?;
                    self.io.err.flush().map_err(io_err)?;
                    let mut line = String::new();
                    self.io
                        .stdin
                        .read_line(&mut line)
                        .map_err(|e| Failure::new(e.to_string()))?;
                    line.trim().to_owned()
                }
                None => {
                    return Err(Failure::new("no client id")
                        .hint("give --client-id or set CAPSTAN_CLIENT_ID"))
                }
            };
            let secret = if a.client_secret_stdin {
                let mut line = String::new();
                self.io
                    .stdin
                    .read_line(&mut line)
                    .map_err(|e| Failure::new(format!("cannot read stdin: {e}")))?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            } else if let Ok(s) = std::env::var("CAPSTAN_CLIENT_SECRET") {
                s
            } else if self.io.interactive {
                rpassword::prompt_password("Client secret: ")
                    .map_err(|e| Failure::new(format!("cannot read the secret: {e}")))?
            } else {
                return Err(Failure::new("no client secret")
                    .hint("pipe it with --client-secret-stdin, or set CAPSTAN_CLIENT_SECRET"));
            };
            (self.s.tenant.clone(), id, secret)
        };
        if id.is_empty() || secret.is_empty() {
            return Err(Failure::new("the client id and secret must not be empty"));
        }
        self.s.tenant = tenant.clone();
        let addr = self.s.addr.clone();
        self.s.contexts.contexts.insert(
            addr.clone(),
            Context {
                tenant: tenant.clone(),
                client_id: id.clone(),
                client_secret: secret,
                access_token: None,
                expires_at: 0,
            },
        );
        // Check the credentials before keeping them.
        if let Err(e) = self.s.token(true).await {
            self.s.contexts = crate::config::Contexts::load(&self.s.dir).map_err(Failure::new)?;
            return Err(Failure {
                message: e
                    .message
                    .replace("your login to", "cannot log in to")
                    .replace(" no longer works", ""),
                hint: e
                    .hint
                    .map(|_| "check the client id, the secret and --tenant".into()),
                code: e.code,
            });
        }
        self.s.contexts.current = Some(addr.clone());
        self.s.contexts.save(&self.s.dir).map_err(Failure::new)?;
        self.done(format!("logged in to {addr} as {id} (tenant {tenant})"))
    }

    fn contexts(&mut self, c: Option<ContextsCommand>) -> Res {
        match c {
            Some(ContextsCommand::Use { addr }) => {
                let addr = addr.trim_end_matches('/').to_owned();
                if !self.s.contexts.contexts.contains_key(&addr) {
                    return Err(Failure {
                        message: format!("no login for {addr}"),
                        hint: Some(format!("run `capstanctl login --addr {addr}`")),
                        code: exit::NOT_FOUND,
                    });
                }
                self.s.contexts.current = Some(addr.clone());
                self.s.contexts.save(&self.s.dir).map_err(Failure::new)?;
                self.done(format!("now using {addr}"))
            }
            None => {
                let rows: Vec<Value> = self.s.contexts.contexts.iter().map(|(addr, c)| json!({
                    "current": self.s.contexts.current.as_deref() == Some(addr.as_str()),
                    "addr": addr, "tenant": c.tenant, "client_id": c.client_id,
                    "token_expires_at": if c.access_token.is_some() { json!(c.expires_at) } else { Value::Null },
                })).collect();
                self.print(
                    &Value::Array(rows),
                    &["current", "addr", "tenant", "client_id", "token_expires_at"],
                )
            }
        }
    }

    async fn oauth_form(&mut self, endpoint: &str, token: &str) -> Result<Value, Failure> {
        let ctx = self.s.context()?.clone();
        let url = self.s.oauth_url(endpoint);
        let req = self
            .s
            .transport
            .http()
            .post(&url)
            .basic_auth(&ctx.client_id, Some(&ctx.client_secret))
            .form(&[("token", token)]);
        spin(self.io.interactive, self.s.transport.json(req))
            .await
            .map_err(|e| self.s.failure(e))
    }

    async fn clients(&mut self, c: ClientsCommand) -> Res {
        match c {
            ClientsCommand::Create {
                name,
                scopes,
                audiences,
                token_ttl,
                permissions_boundary,
                tls_client_auth,
                tls_client_auth_san_uri,
            } => {
                let method = tls_client_auth.then_some("tls_client_auth");
                let body = json!({"name": name, "scopes": scopes, "audiences": audiences, "token_ttl_seconds": token_ttl, "permissions_boundary": permissions_boundary,
                    "token_endpoint_auth_method": method, "tls_client_auth_san_uri": tls_client_auth_san_uri});
                let v = self
                    .call(Method::POST, "/v1/clients", &[], Some(strip_nulls(body)))
                    .await?;
                let _ = writeln!(
                    self.io.err,
                    "the client secret is shown only now; keep it in your secret store"
                );
                self.print(&v, &[])
            }
            ClientsCommand::List => {
                self.get(
                    "/v1/clients",
                    &[
                        "client_id",
                        "name",
                        "scopes",
                        "audiences",
                        "admin",
                        "created_at",
                    ],
                )
                .await
            }
            ClientsCommand::Get { id } => {
                self.get(&format!("/v1/clients/{}", segment(&id)), &[])
                    .await
            }
            ClientsCommand::Delete { id } => {
                self.call(
                    Method::DELETE,
                    &format!("/v1/clients/{}", segment(&id)),
                    &[],
                    None,
                )
                .await?;
                self.done(format!("deleted client {id}"))
            }
            ClientsCommand::RotateSecret { id, grace_period } => {
                let v = self
                    .call(
                        Method::POST,
                        &format!("/v1/clients/{}/secret", segment(&id)),
                        &[],
                        Some(strip_nulls(json!({"grace_period_seconds": grace_period}))),
                    )
                    .await?;
                self.print(&v, &[])
            }
        }
    }

    async fn policies(&mut self, p: PoliciesCommand) -> Res {
        match p {
            PoliciesCommand::Put { name, file } => {
                let doc = read_document(self.io, &file)?;
                let v = self
                    .call(
                        Method::PUT,
                        &format!("/v1/policies/{}", segment(&name)),
                        &[],
                        Some(doc),
                    )
                    .await?;
                self.warnings(&v);
                self.print(&v, &[])
            }
            PoliciesCommand::Get { name, version } => {
                let q: Vec<(&str, String)> = version
                    .map(|v| ("version", v.to_string()))
                    .into_iter()
                    .collect();
                self.get_document(&format!("/v1/policies/{}", segment(&name)), &q)
                    .await
            }
            PoliciesCommand::List => {
                self.get(
                    "/v1/policies",
                    &["name", "default_version", "versions", "builtin"],
                )
                .await
            }
            PoliciesCommand::Delete { name } => {
                self.call(
                    Method::DELETE,
                    &format!("/v1/policies/{}", segment(&name)),
                    &[],
                    None,
                )
                .await?;
                self.done(format!("deleted policy {name}"))
            }
            PoliciesCommand::Validate { file, kind } => {
                let doc = read_document(self.io, &file)?;
                let q: Vec<(&str, String)> = kind.map(|k| ("kind", k)).into_iter().collect();
                let v = self
                    .call(Method::POST, "/v1/policies:validate", &q, Some(doc))
                    .await?;
                let valid = v.get("valid").and_then(Value::as_bool).unwrap_or(false);
                if self.format == Format::Table {
                    let mut text = String::from(if valid { "valid\n" } else { "invalid\n" });
                    for (what, key) in [("error", "errors"), ("warning", "warnings")] {
                        for i in v.get(key).and_then(Value::as_array).into_iter().flatten() {
                            text.push_str(&format!(
                                "{what}: {}: {}\n",
                                i["path"].as_str().unwrap_or(""),
                                i["message"].as_str().unwrap_or("")
                            ));
                        }
                    }
                    self.io.out.write_all(text.as_bytes()).map_err(io_err)?;
                } else {
                    self.print(&v, &[])?;
                }
                Ok(if valid { exit::OK } else { exit::ERROR })
            }
            PoliciesCommand::Versions { name } => {
                self.get(
                    &format!("/v1/policies/{}/versions", segment(&name)),
                    &["version", "default", "created_at"],
                )
                .await
            }
        }
    }

    fn warnings(&mut self, v: &Value) {
        for w in v
            .get("warnings")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let _ = writeln!(
                self.io.err,
                "warning: {}: {}",
                w["path"].as_str().unwrap_or(""),
                w["message"].as_str().unwrap_or("")
            );
        }
    }

    async fn attach(&mut self, a: AttachArgs, method: Method) -> Res {
        let (path, target) = match (&a.principal, &a.group) {
            (Some(p), _) => (
                format!(
                    "/v1/principals/{}/policies/{}",
                    segment(p),
                    segment(&a.policy)
                ),
                format!("principal {p}"),
            ),
            (None, Some(g)) => (
                format!("/v1/groups/{}/policies/{}", segment(g), segment(&a.policy)),
                format!("group {g}"),
            ),
            (None, None) => {
                return Err(Failure {
                    message: "give --principal or --group".into(),
                    hint: None,
                    code: exit::USAGE,
                })
            }
        };
        let verb = if method == Method::PUT {
            "attached"
        } else {
            "detached"
        };
        self.call(method, &path, &[], None).await?;
        self.done(format!(
            "{verb} {} {} {target}",
            a.policy,
            if verb == "attached" { "to" } else { "from" }
        ))
    }

    async fn groups(&mut self, g: GroupsCommand) -> Res {
        match g {
            GroupsCommand::Create { group } => {
                self.call(
                    Method::PUT,
                    &format!("/v1/groups/{}", segment(&group)),
                    &[],
                    None,
                )
                .await?;
                self.done(format!("created group {group}"))
            }
            GroupsCommand::Delete { group } => {
                self.call(
                    Method::DELETE,
                    &format!("/v1/groups/{}", segment(&group)),
                    &[],
                    None,
                )
                .await?;
                self.done(format!("deleted group {group}"))
            }
            GroupsCommand::AddMember { group, member } => {
                self.call(
                    Method::PUT,
                    &format!(
                        "/v1/groups/{}/members/{}",
                        segment(&group),
                        segment(&member)
                    ),
                    &[],
                    None,
                )
                .await?;
                self.done(format!("{member} is in {group}"))
            }
            GroupsCommand::RemoveMember { group, member } => {
                self.call(
                    Method::DELETE,
                    &format!(
                        "/v1/groups/{}/members/{}",
                        segment(&group),
                        segment(&member)
                    ),
                    &[],
                    None,
                )
                .await?;
                self.done(format!("{member} is no longer in {group}"))
            }
            GroupsCommand::List => {
                self.get("/v1/groups", &["name", "members", "policies"])
                    .await
            }
        }
    }

    async fn keyed(&mut self, base: &str, key_field: &str, k: KeyedCommand) -> Res {
        // A CRN pattern keeps its `:` and `/` in the path (the route takes the rest of it).
        let path = |key: &str| {
            format!(
                "{base}/{}",
                key.split('/').map(segment).collect::<Vec<_>>().join("/")
            )
        };
        match k {
            KeyedCommand::Put { key, file } => {
                let doc = read_document(self.io, &file)?;
                let v = self.call(Method::PUT, &path(&key), &[], Some(doc)).await?;
                self.warnings(&v);
                self.done(format!("wrote {key}"))
            }
            KeyedCommand::Get { key } => self.get_document(&path(&key), &[]).await,
            KeyedCommand::Delete { key } => {
                self.call(Method::DELETE, &path(&key), &[], None).await?;
                self.done(format!("deleted {key}"))
            }
            KeyedCommand::List => self.get(base, &[key_field, "updated_at"]).await,
        }
    }

    async fn authorize(&mut self, a: AuthorizeArgs) -> Res {
        let mut context: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for kv in &a.context {
            let (k, v) = kv.split_once('=').ok_or_else(|| Failure {
                message: format!("--context {kv:?} must be key=value"),
                hint: None,
                code: exit::USAGE,
            })?;
            context.entry(k.to_owned()).or_default().push(v.to_owned());
        }
        let context: BTreeMap<String, Value> = context
            .into_iter()
            .map(|(k, mut v)| {
                (
                    k,
                    if v.len() == 1 {
                        json!(v.remove(0))
                    } else {
                        json!(v)
                    },
                )
            })
            .collect();
        let body = strip_nulls(
            json!({"principal": a.principal, "token": a.token, "action": a.action, "resource": a.resource, "context": if context.is_empty() { Value::Null } else { json!(context) }}),
        );
        let v = self
            .call(Method::POST, "/v1/authorize", &[], Some(body))
            .await?;
        let allowed = v.get("decision").and_then(Value::as_str) == Some("Allow");
        if self.format == Format::Table {
            let mut text = format!(
                "{}  (reason: {}, policy revision {})\n",
                v["decision"].as_str().unwrap_or("?"),
                v["reason"].as_str().unwrap_or("?"),
                v["policy_revision"]
            );
            for m in v
                .get("matched")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                text.push_str(&format!(
                    "  {} v{} {}\n",
                    m["policy"].as_str().unwrap_or(""),
                    m["version"],
                    m["sid"].as_str().unwrap_or("")
                ));
            }
            self.io.out.write_all(text.as_bytes()).map_err(io_err)?;
        } else {
            self.print(&v, &[])?;
        }
        Ok(if allowed { exit::OK } else { exit::DENIED })
    }

    async fn simulate(&mut self, a: SimulateArgs) -> Res {
        // New policy versions first, so the listed changes can attach them.
        let mut changes: Vec<Value> = Vec::new();
        for p in &a.put_policy {
            let (name, file) = p.split_once('=').ok_or_else(|| Failure {
                message: format!("--put-policy {p:?} must be NAME=FILE"),
                hint: None,
                code: exit::USAGE,
            })?;
            let document = read_document(self.io, file)?;
            changes.push(json!({"op": "put_policy", "name": name, "document": document}));
        }
        if let Some(f) = &a.changes {
            match read_document(self.io, f)? {
                Value::Array(v) => changes.extend(v),
                _ => {
                    return Err(Failure::new(format!(
                        "{f} must hold a JSON list of changes"
                    )))
                }
            }
        }
        let requests = match &a.requests {
            Some(f) => Some(read_document(self.io, f)?),
            None => None,
        };
        let body =
            strip_nulls(json!({"changes": changes, "requests": requests, "replay": a.replay}));
        let v = self
            .call(Method::POST, "/v1/simulate", &[], Some(body))
            .await?;
        if self.format == Format::Table {
            let rows: Vec<Value> = v.get("results").and_then(Value::as_array).into_iter().flatten().map(|r| json!({
                "changed": if r["changed"].as_bool() == Some(true) { "CHANGED" } else { "" },
                "principal": r["principal"], "action": r["action"], "resource": r["resource"],
                "before": format!("{} ({})", r["before"]["decision"].as_str().unwrap_or("?"), r["before"]["reason"].as_str().unwrap_or("?")),
                "after": format!("{} ({})", r["after"]["decision"].as_str().unwrap_or("?"), r["after"]["reason"].as_str().unwrap_or("?")),
            })).collect();
            let _ = writeln!(self.io.err, "{} decision(s) change", v["changed"]);
            return self.print(
                &Value::Array(rows),
                &[
                    "changed",
                    "principal",
                    "action",
                    "resource",
                    "before",
                    "after",
                ],
            );
        }
        self.print(&v, &[])
    }

    async fn decisions(&mut self, a: DecisionsArgs) -> Res {
        const COLUMNS: [&str; 7] = [
            "seq",
            "at",
            "principal",
            "action",
            "resource",
            "decision",
            "reason",
        ];
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(p) = &a.principal {
            q.push(("principal", p.clone()));
        }
        if let Some(d) = &a.decision {
            q.push(("decision", d.clone()));
        }
        if let Some(s) = &a.since {
            q.push(("since", parse_since(s)?.to_string()));
        }
        if let Some(t) = &a.trace_id {
            q.push(("trace_id", t.clone()));
        }
        q.push(("limit", a.limit.unwrap_or(100).to_string()));
        let v = self.call(Method::GET, "/v1/decisions", &q, None).await?;
        let mut rows = v.as_array().cloned().unwrap_or_default();
        if !a.follow {
            return self.print(&Value::Array(rows), &COLUMNS);
        }
        // Oldest first, then one line (or one JSON object) per new decision.
        rows.reverse();
        let mut last = rows
            .iter()
            .filter_map(|r| r["seq"].as_i64())
            .max()
            .unwrap_or(0);
        if last == 0 {
            // Nothing yet: follow from the newest decision in the log.
            let v = self
                .call(Method::GET, "/v1/decisions", &[("limit", "1".into())], None)
                .await?;
            last = v
                .as_array()
                .and_then(|a| a.first())
                .and_then(|r| r["seq"].as_i64())
                .unwrap_or(0);
        }
        let mut header = true;
        loop {
            self.stream(&rows, &COLUMNS, header)?;
            header = header && rows.is_empty();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut fq: Vec<(&str, String)> = q
                .iter()
                .filter(|(k, _)| *k != "since" && *k != "limit")
                .cloned()
                .collect();
            fq.push(("after", last.to_string()));
            fq.push(("limit", "1000".into()));
            let v = self.call(Method::GET, "/v1/decisions", &fq, None).await?;
            rows = v.as_array().cloned().unwrap_or_default();
            if let Some(m) = rows.iter().filter_map(|r| r["seq"].as_i64()).max() {
                last = m;
            }
        }
    }

    /// Prints rows as they come: JSON lines, YAML documents, or table lines.
    fn stream(&mut self, rows: &[Value], columns: &[&str], header: bool) -> Result<(), Failure> {
        let mut text = String::new();
        match self.format {
            Format::Json => {
                for r in rows {
                    text.push_str(&format!("{r}\n"));
                }
            }
            Format::Yaml => {
                for r in rows {
                    text.push_str(&format!(
                        "---\n{}",
                        serde_yaml::to_string(r).unwrap_or_default()
                    ));
                }
            }
            Format::Table => {
                if header {
                    text.push_str(&format!(
                        "{}\n",
                        columns
                            .iter()
                            .map(|c| c.to_uppercase())
                            .collect::<Vec<_>>()
                            .join("\t")
                    ));
                }
                for r in rows {
                    let cells: Vec<String> = columns
                        .iter()
                        .map(|c| match &r[*c] {
                            Value::Number(n) if *c == "at" => {
                                n.as_i64().map(utc).unwrap_or_default()
                            }
                            other => crate::output::cell(c, other),
                        })
                        .collect();
                    text.push_str(&format!("{}\n", cells.join("\t")));
                }
            }
        }
        self.io.out.write_all(text.as_bytes()).map_err(io_err)?;
        self.io.out.flush().map_err(io_err)
    }
}

impl Session {
    fn tenant_flag_or(&self, from_file: Option<String>) -> String {
        from_file.unwrap_or_else(|| self.tenant.clone())
    }
}

/// Drops null members, so optional flags not given are not sent.
/// The identity commands.
impl Run<'_, '_> {
    async fn svid(&mut self, c: SvidCommand) -> Res {
        match c {
            SvidCommand::Issue { out, join_token } => self.svid_issue(out, join_token).await,
            SvidCommand::Show { file } => {
                let pem = std::fs::read(&file)
                    .map_err(|e| Failure::new(format!("cannot read {}: {e}", file.display())))?;
                let v = describe_svid(&pem)
                    .map_err(|e| Failure::new(format!("{}: {e}", file.display())))?;
                self.print(&v, &[])
            }
            SvidCommand::List { principal, limit } => {
                let mut query = Vec::new();
                if let Some(p) = principal {
                    query.push(("principal", p));
                }
                if let Some(l) = limit {
                    query.push(("limit", l.to_string()));
                }
                let v = self
                    .call(Method::GET, "/v1/identity/svids", &query, None)
                    .await?;
                self.print(
                    &v,
                    &[
                        "serial",
                        "principal",
                        "spiffe_id",
                        "ca_id",
                        "via",
                        "issued_at",
                        "not_after",
                    ],
                )
            }
        }
    }

    async fn svid_issue(&mut self, out: std::path::PathBuf, join_token: Option<String>) -> Res {
        let (key, csr) = capstan_sdk::spiffe::new_key_and_csr()
            .map_err(|e| Failure::new(format!("cannot make a key and CSR: {e}")))?;
        let body = json!({ "csr": csr });
        let v = match join_token {
            None => {
                self.call(Method::POST, "/v1/identity/svids", &[], Some(body))
                    .await?
            }
            Some(t) => {
                let t = if t == "-" {
                    let mut line = String::new();
                    self.io
                        .stdin
                        .read_line(&mut line)
                        .map_err(|e| Failure::new(format!("cannot read the join token: {e}")))?;
                    line.trim().to_owned()
                } else {
                    t
                };
                let url = format!("{}/v1/identity/svids", self.s.addr);
                let req = self
                    .s
                    .transport
                    .http()
                    .post(url)
                    .header(reqwest::header::AUTHORIZATION, format!("JoinToken {t}"))
                    .json(&body);
                self.s
                    .transport
                    .json(req)
                    .await
                    .map_err(|e| self.s.failure(e))?
            }
        };
        let chain = v["svid_chain_pem"].as_str().unwrap_or_default();
        let bundle = v["bundle_pem"].as_str().unwrap_or_default();
        std::fs::create_dir_all(&out)
            .map_err(|e| Failure::new(format!("cannot create {}: {e}", out.display())))?;
        write_private(&out.join("svid.key"), key.serialize_pem().as_bytes())?;
        for (name, text) in [("svid.pem", chain), ("bundle.pem", bundle)] {
            let p = out.join(name);
            std::fs::write(&p, text)
                .map_err(|e| Failure::new(format!("cannot write {}: {e}", p.display())))?;
        }
        let _ = writeln!(
            self.io.err,
            "wrote {0}/svid.pem, {0}/svid.key (0600) and {0}/bundle.pem; renew before {1}",
            out.display(),
            v["renew_after"].as_i64().map(utc).unwrap_or_default()
        );
        let summary = json!({
            "spiffe_id": v["spiffe_id"],
            "serial": v["serial"],
            "ca_id": v["ca_id"],
            "expires_at": v["expires_at"],
            "renew_after": v["renew_after"],
        });
        self.print(&summary, &[])
    }

    async fn bundle(&mut self, pem: bool) -> Res {
        let http = self.s.transport.http();
        if pem {
            let url = format!("{}/v1/identity/bundle.pem", self.s.addr);
            let resp = self
                .s
                .transport
                .send(http.get(url))
                .await
                .map_err(|e| self.s.failure(e))?;
            if !resp.status().is_success() {
                let e = capstan_sdk::read_json(resp).await.err();
                return Err(e.map_or_else(|| Failure::new("no bundle"), |e| self.s.failure(e)));
            }
            let text = resp
                .text()
                .await
                .map_err(|e| Failure::new(format!("reading the bundle: {e}")))?;
            self.io.out.write_all(text.as_bytes()).map_err(io_err)?;
            return Ok(exit::OK);
        }
        let url = format!("{}/v1/identity/bundle", self.s.addr);
        let v = self
            .s
            .transport
            .json(http.get(url))
            .await
            .map_err(|e| self.s.failure(e))?;
        let text = format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default());
        if self.format == Format::Table {
            self.io.out.write_all(text.as_bytes()).map_err(io_err)?;
            return Ok(exit::OK);
        }
        self.print(&v, &[])
    }

    async fn ca(&mut self, c: CaCommand) -> Res {
        match c {
            CaCommand::List => {
                self.get(
                    "/v1/identity/ca",
                    &[
                        "id",
                        "slot",
                        "key_type",
                        "origin",
                        "activates_at",
                        "not_after",
                        "tainted_at",
                        "in_bundle",
                    ],
                )
                .await
            }
            CaCommand::Rotate { activate_in } => {
                let body = strip_nulls(json!({ "activate_in_seconds": activate_in }));
                let v = self
                    .call(Method::POST, "/v1/identity/ca/rotate", &[], Some(body))
                    .await?;
                self.print(&v, &["id", "slot", "activates_at", "not_after"])
            }
            CaCommand::Taint { id } => {
                let v = self
                    .call(
                        Method::POST,
                        &format!("/v1/identity/ca/{}/taint", segment(&id)),
                        &[],
                        None,
                    )
                    .await?;
                self.print(&v, &["id", "slot", "tainted_at", "in_bundle"])
            }
        }
    }

    async fn entries(&mut self, c: EntriesCommand) -> Res {
        let columns = [
            "principal",
            "spiffe_id",
            "dns_names",
            "ttl_seconds",
            "updated_at",
        ];
        match c {
            EntriesCommand::Create {
                principal,
                path,
                dns_names,
                ttl,
            } => {
                let body = strip_nulls(
                    json!({"principal": principal, "spiffe_path": path, "dns_names": dns_names, "ttl_seconds": ttl}),
                );
                let v = self
                    .call(Method::POST, "/v1/identity/entries", &[], Some(body))
                    .await?;
                self.print(&v, &columns)
            }
            EntriesCommand::List => self.get("/v1/identity/entries", &columns).await,
            EntriesCommand::Get { principal } => {
                self.get(
                    &format!("/v1/identity/entries/{}", segment(&principal)),
                    &columns,
                )
                .await
            }
            EntriesCommand::Update {
                principal,
                path,
                dns_names,
                ttl,
            } => {
                let body = strip_nulls(
                    json!({"spiffe_path": path, "dns_names": dns_names, "ttl_seconds": ttl}),
                );
                let v = self
                    .call(
                        Method::PUT,
                        &format!("/v1/identity/entries/{}", segment(&principal)),
                        &[],
                        Some(body),
                    )
                    .await?;
                self.print(&v, &columns)
            }
            EntriesCommand::Delete { principal } => {
                self.call(
                    Method::DELETE,
                    &format!("/v1/identity/entries/{}", segment(&principal)),
                    &[],
                    None,
                )
                .await?;
                self.done(format!("deleted the entry of {principal}"))
            }
        }
    }
}

/// Writes a file only its owner can read (created so; never briefly readable by others).
fn write_private(path: &std::path::Path, data: &[u8]) -> Result<(), Failure> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o
        .open(path)
        .map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(data)
        .map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())))
}

/// What `svid show` prints about a PEM certificate chain.
fn describe_svid(pem: &[u8]) -> Result<Value, String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let ders: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect();
    let leaf = ders.first().ok_or("no CERTIFICATE in the file")?;
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| format!("not a certificate: {e}"))?;
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for g in &san.value.general_names {
            if let GeneralName::DNSName(d) = g {
                dns.push((*d).to_owned());
            }
        }
    }
    let serial: String = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(json!({
        "spiffe_id": capstan_sdk::spiffe::spiffe_id_of(leaf),
        "serial": serial,
        "not_before": cert.validity().not_before.timestamp(),
        "not_after": cert.validity().not_after.timestamp(),
        "issuer": cert.issuer().to_string(),
        "dns_names": dns,
        "chain_length": ders.len(),
    }))
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(o.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}
