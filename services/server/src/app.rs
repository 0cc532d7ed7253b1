//! The composition root: builds every selected service once, wires their routes, operations
//! endpoints and middleware, and runs the HTTP server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use capstan_auth::store::SqlStore;
use capstan_auth::{AuthConfig, AuthService};
use capstan_core::clock::Clock;
use capstan_core::rng::Rng;
use capstan_db::Db;
use capstan_policy::{PolicyConfig, PolicyService};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;
use utoipa::OpenApi;

use crate::config::Settings;
use crate::error::ServerError;
use crate::metrics::HttpMetrics;

/// Everything a request handler may need, built once.
pub struct App {
    /// The database.
    pub db: Db,
    /// The issuer, when the auth service runs.
    pub auth: Option<Arc<AuthService>>,
    /// The policy engine; it guards every API, so it exists whenever auth or policy runs.
    pub policy: Option<Arc<PolicyService>>,
    /// Whether the policy API is served.
    serve_policy_api: bool,
    /// HTTP metrics.
    pub metrics: HttpMetrics,
    request_ids: AtomicU64,
}

impl App {
    /// Connects, optionally migrates, and builds the selected services.
    pub async fn build(
        settings: &Settings,
        public_url: String,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        migrate: bool,
    ) -> Result<App, ServerError> {
        let db = Db::connect(&settings.database_url, settings.db_max_connections).await?;
        if migrate {
            db.migrate().await?;
        }
        let runs = |name: &str| settings.services.iter().any(|s| s == name);
        let (auth, policy) = if runs("auth") || runs("policy") {
            let policy = Arc::new(PolicyService::new(
                db.clone(),
                clock.clone(),
                policy_config(settings),
            ));
            let store = Arc::new(SqlStore::new(db.clone()));
            let auth = Arc::new(AuthService::new(
                auth_config(settings, public_url),
                store,
                &settings.master_key,
                clock,
                rng,
                policy.clone(),
            )?);
            (Some(auth), Some(policy))
        } else {
            (None, None)
        };
        for s in &settings.services {
            if !crate::config::IMPLEMENTED.contains(&s.as_str()) {
                tracing::warn!(service = %s, "service is not available in this version; skipping");
            }
        }
        Ok(App {
            db,
            serve_policy_api: settings.services.iter().any(|s| s == "policy"),
            policy,
            auth,
            metrics: HttpMetrics::default(),
            request_ids: AtomicU64::new(1),
        })
    }

    /// All routes with middleware.
    pub fn router(self: &Arc<Self>, settings: &Settings) -> Router {
        let mut router = Router::new();
        if let Some(auth) = &self.auth {
            router = router.merge(capstan_auth::http::router(auth.clone()));
        }
        if let (Some(policy), Some(auth), true) = (&self.policy, &self.auth, self.serve_policy_api)
        {
            router = router.merge(capstan_policy::http::router(policy.clone(), auth.clone()));
        }
        let ops = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/openapi.json", get(openapi))
            .with_state(self.clone());
        router
            .merge(ops)
            .fallback(capstan_http::error::not_found)
            .method_not_allowed_fallback(capstan_http::error::method_not_allowed)
            .layer(axum::extract::DefaultBodyLimit::max(
                settings.body_limit_bytes,
            ))
            .layer(axum::middleware::from_fn_with_state(
                settings.body_limit_bytes,
                capstan_http::body::limit_body,
            ))
            .layer(axum::middleware::from_fn_with_state(self.clone(), observe))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                settings.request_timeout,
            ))
    }
}

/// The policy service's settings, from the server's.
pub fn policy_config(settings: &Settings) -> PolicyConfig {
    PolicyConfig {
        decision_retention: settings.decision_retention_seconds,
        sync_interval: settings.sync_interval,
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
        sync_interval: settings.sync_interval,
    }
}

/// Tags each request with an id, logs it and records metrics under its route template.
async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();
    let id = format!("{:016x}", app.request_ids.fetch_add(1, Ordering::Relaxed));
    let span = tracing::info_span!("request", request.id = %id, http.route = %route, http.method = %method);
    let start = Instant::now();
    let mut resp = capstan_http::request_id::scope(id.clone(), next.run(req))
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

/// Process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Up")))]
async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
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
    let text = app.metrics.render(app.auth.as_ref().map(|a| &a.metrics));
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

/// The OpenAPI document of every public endpoint.
pub fn openapi_doc() -> utoipa::openapi::OpenApi {
    let mut doc = OpsApi::openapi();
    doc.merge(capstan_auth::http::AuthApi::openapi());
    doc.merge(capstan_policy::http::PolicyApi::openapi());
    doc
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn openapi() -> Response {
    Json(openapi_doc()).into_response()
}

/// A running server.
pub struct Server {
    /// The bound address.
    pub addr: SocketAddr,
    /// The public URL issuers are derived from.
    pub public_url: String,
    /// The composed application.
    pub app: Arc<App>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Binds, builds and starts serving. The server stops on [`Server::shutdown`], or when
    /// `external` resolves (SIGTERM in the binary).
    pub async fn start(
        settings: &Settings,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        migrate: bool,
    ) -> Result<Server, ServerError> {
        let listener = TcpListener::bind(settings.listen).await?;
        let addr = listener.local_addr()?;
        let public_url = settings
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"))
            .trim_end_matches('/')
            .to_owned();
        let app = Arc::new(App::build(settings, public_url.clone(), clock, rng, migrate).await?);
        let mut tasks = Vec::new();
        if let Some(policy) = &app.policy {
            tasks.extend(policy.start().await?);
        }
        if let Some(auth) = &app.auth {
            let default = capstan_core::ids::TenantId::default_tenant();
            auth.ensure_tenant(&default, capstan_core::jwt::Alg::ES256)
                .await?;
            auth.check_master_key(&default).await?;
            tasks.push(auth.start_sync().await?);
        }
        let router = app.router(settings);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
        });
        Ok(Server {
            addr,
            public_url,
            app,
            shutdown: Some(tx),
            task,
            tasks,
        })
    }

    /// Stops accepting connections, finishes in-flight requests and returns.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(p) = &self.app.policy {
            p.flush_decisions().await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        match (&mut self.task).await {
            Ok(r) => r.map_err(ServerError::Io),
            Err(e) => Err(ServerError::Io(std::io::Error::other(e.to_string()))),
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
            Some(Ok(r)) => r.map_err(ServerError::Io),
            Some(Err(e)) => Err(ServerError::Io(std::io::Error::other(e.to_string()))),
        }
    }
}
