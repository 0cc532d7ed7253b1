//! The composition root: builds every selected service once, wires their routes, operations
//! endpoints and middleware, and runs the HTTP server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use capstan_auth::store::SqlStore;
use capstan_auth::{AuthConfig, AuthService};
use capstan_core::authz::{Caller, TokenVerifier, VerifiedToken, VerifyError, WorkloadIdentity};
use capstan_core::clock::Clock;
use capstan_core::ids::{PrincipalId, TenantId};
use capstan_core::rng::Rng;
use capstan_db::feed::FeedConfig;
use capstan_db::Db;
use capstan_db::Feed;
use capstan_http::service::FeedSubscriber;
use capstan_http::{Metric, Platform, Registration, RouteList, Service, ServiceConfig};
use capstan_policy::store::SqlPolicyStore;
use capstan_policy::{PolicyConfig, PolicyService};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;
use utoipa::OpenApi;

use crate::config::Settings;
use crate::error::ServerError;
use crate::metrics::HttpMetrics;

/// The services every server builds whatever `--services` says, because every other service
/// stands on them: the policy engine guards every API and the issuer verifies every bearer
/// token. `--services` decides only whether their routes are served.
pub const PLATFORM: [&str; 2] = ["auth", "policy"];

/// The services this build has beyond [`PLATFORM`]. Adding a service is its crate plus one line
/// here: `Registration::new("identity", capstan_identity::build)`, where `build` takes the
/// [`Platform`] and the service's own `[service.identity]` section.
pub fn registry() -> Vec<Registration> {
    vec![
        Registration::new("identity", capstan_identity::build),
        Registration::new("config", capstan_config::build),
        Registration::new("trace", capstan_trace::build),
    ]
}

/// The names of every service this build implements.
pub fn implemented() -> Vec<&'static str> {
    let mut names = PLATFORM.to_vec();
    names.extend(registry().iter().map(|r| r.name));
    names
}

/// A service the server runs, and whether its routes are served.
pub struct Running {
    /// The service.
    pub service: Arc<dyn Service>,
    /// Whether `--services` named it (a platform service runs either way).
    pub served: bool,
}

/// The composition root: everything a request handler may need, built once. `dev`, `serve`
/// and `bootstrap` all build it.
pub struct App {
    /// The database.
    pub db: Db,
    /// The change feed (one runner per server).
    pub feed: Arc<Feed>,
    /// The issuer (a platform service: it verifies every bearer token).
    pub auth: Arc<AuthService>,
    /// The policy engine (a platform service: it guards every API).
    pub policy: Arc<PolicyService>,
    /// Every service this server runs, platform ones first.
    pub services: Vec<Running>,
    /// HTTP metrics.
    pub metrics: HttpMetrics,
    /// Verifies callers: bearer tokens (the issuer) and X.509-SVIDs (the identity service).
    pub verifier: Arc<dyn TokenVerifier>,
    /// What the services were built from.
    pub platform: Platform,
    feed_config: FeedConfig,
    body_limit: usize,
    request_timeout: Duration,
    /// Routes of the running services that may be long polls.
    long_poll_routes: Vec<&'static str>,
    /// Routes with their own body limit (the OTLP receiver's).
    body_limits: Vec<(&'static str, usize)>,
    clock: Arc<dyn Clock>,
    request_ids: AtomicU64,
}

impl App {
    /// Connects, optionally migrates, and builds the platform and the selected services of
    /// `registry` (the standard one is [`registry`]; tests add their own).
    pub async fn build(
        settings: &Settings,
        public_url: String,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        migrate: bool,
        registry: Vec<Registration>,
    ) -> Result<App, ServerError> {
        let db = Db::connect(&settings.database_url, settings.db_max_connections).await?;
        if migrate {
            db.migrate().await?;
        }
        let selected = |name: &str| settings.services.iter().any(|s| s == name);
        let feed = Feed::new(db.clone());
        let policy = Arc::new(PolicyService::new(
            Arc::new(SqlPolicyStore::new(db.clone()).with_feed(feed.clone())),
            clock.clone(),
            policy_config(settings),
        ));
        let auth = Arc::new(AuthService::new(
            auth_config(settings, public_url.clone()),
            Arc::new(SqlStore::new(db.clone()).with_feed(feed.clone())),
            &settings.master_key,
            clock.clone(),
            rng.clone(),
            policy.clone(),
        )?);
        let platform = Platform {
            db: db.clone(),
            feed: feed.clone(),
            clock: clock.clone(),
            rng,
            authorizer: policy.clone(),
            verifier: auth.clone(),
            public_url,
            master_key: settings.master_key.clone(),
            trust_domain: settings.trust_domain.clone(),
        };
        let mut services = vec![
            Running {
                service: auth.clone(),
                served: selected("auth"),
            },
            Running {
                service: policy.clone(),
                served: selected("policy"),
            },
        ];
        let built_from = platform.clone();
        for reg in &registry {
            if !selected(reg.name) {
                continue;
            }
            if let Some(missing) = reg
                .requires
                .iter()
                .find(|r| !PLATFORM.contains(r) && !selected(r))
            {
                return Err(ServerError::Config(format!(
                    "service {:?} needs service {missing:?}: add it to --services",
                    reg.name
                )));
            }
            let section = ServiceConfig::new(
                settings
                    .service_config
                    .get(reg.name)
                    .cloned()
                    .unwrap_or_default(),
            );
            let service = (reg.build)(&platform, &section).map_err(|e| ServerError::Service {
                name: reg.name,
                message: e.to_string(),
            })?;
            services.push(Running {
                service,
                served: true,
            });
        }
        if let Some(name) = settings
            .service_config
            .keys()
            .find(|n| !registry.iter().any(|r| r.name == n.as_str()))
        {
            return Err(ServerError::Config(format!(
                "[service.{name}]: this build has no service {name:?}"
            )));
        }
        for s in &settings.services {
            if !PLATFORM.contains(&s.as_str()) && !registry.iter().any(|r| r.name == s) {
                tracing::warn!(service = %s, "service is not available in this version; skipping");
            }
        }
        let identity = services
            .iter()
            .find_map(|r| r.service.clone().workload_identity());
        let verifier: Arc<dyn TokenVerifier> = Arc::new(CallerVerifier {
            auth: auth.clone(),
            identity,
        });
        let long_poll_routes = services
            .iter()
            .filter(|r| r.served)
            .flat_map(|r| r.service.long_poll_routes().iter().copied())
            .collect();
        let body_limits = services
            .iter()
            .filter(|r| r.served)
            .flat_map(|r| r.service.body_limits())
            .collect();
        Ok(App {
            verifier,
            platform: built_from,
            db,
            feed,
            auth,
            policy,
            services,
            metrics: HttpMetrics::default(),
            feed_config: FeedConfig {
                poll_every: settings.sync_interval,
                ..FeedConfig::default()
            },
            body_limit: settings.body_limit_bytes,
            request_timeout: settings.request_timeout,
            long_poll_routes,
            body_limits,
            clock,
            request_ids: AtomicU64::new(1),
        })
    }

    /// The workload identity of the identity service, when it runs.
    pub fn workload_identity(&self) -> Option<Arc<dyn WorkloadIdentity>> {
        self.services
            .iter()
            .find_map(|r| r.service.clone().workload_identity())
    }

    fn served(&self) -> impl Iterator<Item = &Arc<dyn Service>> {
        self.services
            .iter()
            .filter(|r| r.served)
            .map(|r| &r.service)
    }

    /// All routes with middleware.
    pub fn router(self: &Arc<Self>, settings: &Settings) -> Router {
        let (router, _) = self.routes();
        router
            .fallback(capstan_http::error::not_found)
            .method_not_allowed_fallback(capstan_http::error::method_not_allowed)
            .layer(axum::extract::DefaultBodyLimit::max(
                settings.body_limit_bytes,
            ))
            // Request id, span, metrics, the 413 for a declared length over the limit and the
            // request timeout (a JSON 503 with Retry-After: a handler stuck on storage).
            .layer(axum::middleware::from_fn_with_state(self.clone(), observe))
    }

    /// Every served route (services' and operations'), and the path templates routed.
    fn routes(self: &Arc<Self>) -> (Router, Vec<&'static str>) {
        let ops = RouteList::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/openapi.json", get(openapi))
            .with_state(self.clone());
        let mut router = ops.router;
        let mut paths = ops.paths;
        for s in self.served() {
            let r = s.clone().routes(self.verifier.clone());
            router = router.merge(r.router);
            paths.extend(r.paths);
        }
        (router, paths)
    }

    /// The path templates this server routes (its OpenAPI document must list exactly these).
    pub fn paths(self: &Arc<Self>) -> Vec<&'static str> {
        self.routes().1
    }

    /// The OpenAPI document of every served endpoint.
    pub fn openapi(&self) -> utoipa::openapi::OpenApi {
        let mut doc = OpsApi::openapi();
        for s in self.served() {
            doc.merge(s.openapi());
        }
        doc
    }

    /// Starts the change feed (its cursor placed before any service loads state, so no change
    /// falls between), then every service's background tasks, then housekeeping.
    async fn start(self: &Arc<Self>) -> Result<Vec<JoinHandle<()>>, ServerError> {
        for r in &self.services {
            self.feed
                .subscribe(Arc::new(FeedSubscriber(r.service.clone())));
        }
        let clock = self.clock.clone();
        let mut tasks = self
            .feed
            .start(self.feed_config, Arc::new(move || clock.now()))
            .await?;
        for r in &self.services {
            let name = r.service.name();
            let started = r.service.clone().start().await;
            tasks.extend(started.map_err(|e| ServerError::Service {
                name,
                message: e.to_string(),
            })?);
        }
        let me = Arc::clone(self);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                for r in &me.services {
                    if let Err(e) = r.service.housekeeping().await {
                        tracing::warn!(service = r.service.name(), error = %e, "housekeeping failed");
                    }
                }
            }
        }));
        Ok(tasks)
    }
}

/// How often services' housekeeping runs (real time; what is old is the injected clock's call).
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// The policy service's settings, from the server's.
pub fn policy_config(settings: &Settings) -> PolicyConfig {
    PolicyConfig {
        decision_retention: settings.decision_retention_seconds,
        ..PolicyConfig::default()
    }
}

/// The issuer's settings, from the server's.
pub fn auth_config(settings: &Settings, public_url: String) -> AuthConfig {
    AuthConfig {
        public_url,
        default_token_ttl: settings.token_ttl_seconds,
        max_token_ttl: settings.max_token_ttl_seconds,
        key_publish_delay: settings.key_publish_delay_seconds,
        leeway: AuthConfig::default().leeway,
        api_audience: settings.api_audience.clone(),
        trust_domain: settings.trust_domain.clone(),
    }
}

/// Tags each request with an id, logs it and records metrics under its route template.
async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let n = app.request_ids.fetch_add(1, Ordering::Relaxed);
    let id = capstan_http::request_id::format(n);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();
    // The trace receiver is not traced: with --trace-self its spans would feed themselves.
    let span = if route == capstan_trace::http::RECEIVER_ROUTE && method == "POST" {
        tracing::Span::none()
    } else {
        tracing::info_span!("request", otel.name = %format!("{method} {route}"), otel.kind = "server",
            request.id = %id, http.route = %route, http.method = %method)
    };
    let start = Instant::now();
    // A long poll (a GET of a route a service declared) may wait up to the kit's maximum.
    let long_poll =
        req.method() == axum::http::Method::GET && app.long_poll_routes.iter().any(|r| *r == route);
    let limit = if long_poll {
        app.request_timeout + capstan_http::LONG_POLL_MAX
    } else {
        app.request_timeout
    };
    let body_limit = app
        .body_limits
        .iter()
        .find(|(r, _)| *r == route)
        .map_or(app.body_limit, |(_, l)| *l);
    let handled = async {
        let run = async {
            match capstan_http::body::reject_oversized(req, body_limit).await {
                Ok(req) => next.run(req).await,
                Err(too_large) => too_large,
            }
        };
        match tokio::time::timeout(limit, run).await {
            Ok(resp) => resp,
            Err(_) => capstan_http::ApiError::Unavailable(format!(
                "request not answered within {} s",
                app.request_timeout.as_secs()
            ))
            .into_response(),
        }
    };
    let mut resp = capstan_http::request_id::scope(n, handled)
        .instrument(span.clone())
        .await;
    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    app.metrics
        .observe(&route, &method, status, elapsed.as_secs_f64());
    if status >= 500 {
        tracing::warn!(parent: &span, status, duration_ms = elapsed.as_millis() as u64, "request failed");
    } else {
        tracing::debug!(parent: &span, status, duration_ms = elapsed.as_millis() as u64, "request done");
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut()
            .insert(capstan_http::request_id::HEADER, v);
    }
    resp
}

/// Process is up; the answer carries the server's version (`{"status": "ok", "version"}`).
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Up")))]
async fn healthz() -> Response {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})).into_response()
}

/// Database reachable and migrations applied.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready"), (status = 503, description = "Not ready")))]
async fn readyz(State(app): State<Arc<App>>) -> Response {
    let unavailable = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": reason})),
        )
            .into_response()
    };
    if let Err(e) = app.db.ping().await {
        tracing::warn!(error = %e, "readiness: database unreachable");
        return unavailable("database unreachable".into());
    }
    match app.db.pending_migrations().await {
        Ok(p) if p.is_empty() => {
            Json(json!({"status": "ready", "database": app.db.backend()})).into_response()
        }
        Ok(p) => unavailable(format!("{} migration(s) not applied", p.len())),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: cannot read migrations");
            unavailable("cannot read migration state".into())
        }
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let services: Vec<Metric> = app
        .services
        .iter()
        .flat_map(|r| r.service.metrics())
        .collect();
    let text = app.metrics.render(&services);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Capstan", description = "Capstan control plane API"),
    paths(healthz, readyz, metrics, openapi)
)]
struct OpsApi;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn openapi(State(app): State<Arc<App>>) -> Response {
    Json(app.openapi()).into_response()
}

/// A running server.
pub struct Server {
    /// The bound address.
    pub addr: SocketAddr,
    /// The public URL issuers are derived from.
    pub public_url: String,
    /// The composed application.
    pub app: Arc<App>,
    /// The TLS layer, when serving HTTPS (tests call its `refresh`).
    pub tls: Option<Arc<crate::tls::Tls>>,
    shutdown: Option<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Binds, builds the standard [`registry`] and starts serving. The server stops on
    /// [`Server::shutdown`], or when the signal given to [`Server::run_until`] resolves.
    pub async fn start(
        settings: &Settings,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        migrate: bool,
    ) -> Result<Server, ServerError> {
        Server::start_with(settings, clock, rng, migrate, registry()).await
    }

    /// As [`Server::start`], with the services of `registry` instead of the standard ones.
    pub async fn start_with(
        settings: &Settings,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        migrate: bool,
        registry: Vec<Registration>,
    ) -> Result<Server, ServerError> {
        let listener = TcpListener::bind(settings.listen).await?;
        let addr = listener.local_addr()?;
        let public_url = settings
            .public_url
            .clone()
            .unwrap_or_else(|| {
                let scheme = if settings.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{addr}")
            })
            .trim_end_matches('/')
            .to_owned();
        let app = Arc::new(
            App::build(settings, public_url.clone(), clock, rng, migrate, registry).await?,
        );
        // The feed's cursor is placed before any cache is filled, so no change falls between.
        let mut tasks = app.start().await?;
        let default = capstan_core::ids::TenantId::default_tenant();
        app.auth
            .ensure_tenant(&default, capstan_core::jwt::Alg::ES256)
            .await?;
        app.auth.check_master_key(&default).await?;
        let tls = match &settings.tls {
            Some(mode) => {
                let tls =
                    crate::tls::Tls::new(mode.clone(), app.workload_identity(), app.clock.clone())
                        .await?;
                tasks.push(tls.spawn_refresh());
                Some(tls)
            }
            None => None,
        };
        if settings.trace_self {
            match app
                .services
                .iter()
                .find_map(|r| r.service.clone().span_sink())
            {
                Some(sink) => crate::telemetry::trace_self_into(sink),
                None => tracing::warn!("--trace-self: the trace service is not running here"),
            }
        }
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let router = app.router(settings);
        let limits = crate::serve::ConnLimits {
            header_read_timeout: settings.header_read_timeout,
            max_connections: settings.max_connections,
        };
        // Listeners the services ask for (the OTLP ports) are served like the main one.
        let mut extra = Vec::new();
        for r in &app.services {
            for l in r.service.clone().listeners(app.verifier.clone()) {
                let bound = TcpListener::bind(l.addr).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{} {}: {e}", l.flag, l.addr))
                })?;
                tracing::info!(flag = l.flag, addr = %bound.local_addr()?, "listening");
                extra.push((bound, l.router));
            }
        }
        let (tx, rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let streams = app.metrics.direct_streams.clone();
        let task = tokio::spawn(async move {
            let others: Vec<_> = extra
                .into_iter()
                .map(|(l, r)| {
                    let serve = crate::serve::serve(
                        l,
                        r,
                        limits,
                        acceptor.clone(),
                        streams.clone(),
                        stopped(rx.clone()),
                    );
                    tokio::spawn(serve)
                })
                .collect();
            let main =
                crate::serve::serve(listener, router, limits, acceptor, streams, stopped(rx)).await;
            for o in others {
                o.await.map_err(std::io::Error::other)??;
            }
            main
        });
        Ok(Server {
            addr,
            public_url,
            app,
            tls,
            shutdown: Some(tx),
            task,
            tasks,
        })
    }

    /// Stops accepting connections, finishes in-flight requests and returns.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        for r in &self.app.services {
            r.service.draining();
        }
        // In-flight requests finish first (each is bounded by the request timeout), so what
        // they queued (decisions) is flushed by the services' stop, before their tasks end.
        let served = match (&mut self.task).await {
            Ok(r) => r.map_err(ServerError::Io),
            Err(e) => Err(ServerError::Io(std::io::Error::other(e.to_string()))),
        };
        self.stop_services().await;
        served
    }

    /// Stops the services, latest registered first (the platform, whose decision log others
    /// feed, last), then ends their tasks.
    async fn stop_services(&mut self) {
        for r in self.app.services.iter().rev() {
            r.service.stop().await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Runs until `signal` resolves (then shuts down gracefully) or the server task fails.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let ended = tokio::select! {
            _ = signal => None,
            r = &mut self.task => Some(r),
        };
        match ended {
            None => {
                tracing::info!("shutting down");
                self.shutdown().await
            }
            Some(ended) => {
                self.stop_services().await;
                match ended {
                    Ok(r) => r.map_err(ServerError::Io),
                    Err(e) => Err(ServerError::Io(std::io::Error::other(e.to_string()))),
                }
            }
        }
    }
}

/// The one verifier of callers every router gets: bearer tokens go to the issuer; an
/// X.509-SVID (verified by the TLS layer) names a principal through the identity service, and
/// the issuer confirms it still exists.
struct CallerVerifier {
    auth: Arc<AuthService>,
    identity: Option<Arc<dyn WorkloadIdentity>>,
}

#[async_trait::async_trait]
impl TokenVerifier for CallerVerifier {
    async fn verify_access_token(&self, token: &str) -> Result<VerifiedToken, VerifyError> {
        self.auth.verify_access_token(token).await
    }

    async fn authenticate_caller(&self, token: &str) -> Result<Caller, VerifyError> {
        self.auth.authenticate_caller(token).await
    }

    async fn authenticate_principal(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
    ) -> Result<Caller, VerifyError> {
        self.auth.authenticate_principal(tenant, principal).await
    }

    async fn authenticate_svid(
        &self,
        spiffe_id: &str,
        serial: &str,
    ) -> Result<Caller, VerifyError> {
        let Some(identity) = &self.identity else {
            return Err(VerifyError::Invalid(
                "certificate authentication needs the identity service".into(),
            ));
        };
        let (tenant, principal) = identity
            .authenticate_certificate(spiffe_id, serial)
            .await?
            .ok_or_else(|| {
                VerifyError::Invalid(format!(
                    "the certificate ({spiffe_id}, serial {serial}) is not a current SVID of this deployment"
                ))
            })?;
        self.auth.authenticate_principal(&tenant, &principal).await
    }
}
