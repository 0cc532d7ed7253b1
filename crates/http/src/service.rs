//! What a Capstan service is to the server: the one trait every service implements, and the
//! [`Platform`] it is built from. The server's `App` holds a registry of them and is the only
//! composition root: adding a service is its crate plus one [`Registration`] line.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use capstan_core::authz::{Authorizer, TokenVerifier};
use capstan_core::clock::Clock;
use capstan_core::rng::Rng;
use capstan_db::{Change, Db, Feed};
use tokio::task::JoinHandle;

/// Errors a service reports to the server while building, starting or housekeeping.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A number a service exports at `/metrics`.
#[derive(Debug, Clone)]
pub struct Metric {
    /// Prometheus name (`capstan_<service>_…`).
    pub name: &'static str,
    /// One line of help.
    pub help: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    /// The value now.
    pub value: f64,
}

impl Metric {
    /// A counter.
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Metric {
        Metric {
            name,
            help,
            kind: "counter",
            value: value as f64,
        }
    }

    /// A gauge.
    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Metric {
        Metric {
            name,
            help,
            kind: "gauge",
            value,
        }
    }
}

/// A listener a service asks the server to open beside its main one (the OTLP ports). The
/// server binds it and serves it like the main listener: the same connection limit and header
/// read timeout, TLS when the server serves TLS, graceful shutdown.
pub struct ExtraListener {
    /// The setting that asked for it (`--otlp-grpc-listen`), for errors and logs.
    pub flag: &'static str,
    /// Where to listen.
    pub addr: std::net::SocketAddr,
    /// What it serves.
    pub router: Router,
}

/// One platform service (auth, policy, identity, config, trace, …) as the server sees it. A
/// service also brings its configuration: its [`Registration`] builds it from its own
/// `[service.<name>]` section ([`ServiceConfig`]).
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// Its name in `--services`.
    fn name(&self) -> &'static str;

    /// Its routes; bearer tokens are verified by `verifier`, privileged acts go through the
    /// platform's authorizer (which the service got when it was built).
    fn routes(self: Arc<Self>, verifier: Arc<dyn TokenVerifier>) -> Routes;

    /// Its part of `/openapi.json`.
    fn openapi(&self) -> utoipa::openapi::OpenApi;

    /// The change-feed topics it wants ([`Service::on_change`] receives them).
    fn topics(&self) -> &[&'static str] {
        &[]
    }

    /// A change on one of its topics, from any server. Quick: drop a cache entry, wake a waiter.
    fn on_change(&self, _change: &Change) {}

    /// Listeners besides the main one it needs (none by default).
    fn listeners(self: Arc<Self>, _verifier: Arc<dyn TokenVerifier>) -> Vec<ExtraListener> {
        Vec::new()
    }

    /// Starts its background tasks; they are aborted when the server stops, after
    /// [`Service::stop`].
    async fn start(self: Arc<Self>) -> Result<Vec<JoinHandle<()>>, BoxError> {
        Ok(Vec::new())
    }

    /// Periodic housekeeping (pruning, expiry), about once a minute by the real clock; what is
    /// old is decided by the injected clock.
    async fn housekeeping(&self) -> Result<(), BoxError> {
        Ok(())
    }

    /// Its metrics, rendered at `/metrics`.
    fn metrics(&self) -> Vec<Metric> {
        Vec::new()
    }

    /// Route templates (`GET` only) that may hold a request up to
    /// [`crate::LONG_POLL_MAX`] beyond the server's request timeout (long polls).
    fn long_poll_routes(&self) -> &[&'static str] {
        &[]
    }

    /// Routes (`POST`/`PUT`) that take bodies larger than the server's body limit, with their
    /// own limit in bytes (the OTLP receiver). The handler reads and bounds the body itself.
    fn body_limits(&self) -> Vec<(&'static str, usize)> {
        Vec::new()
    }

    /// The server has begun to stop: end what never finishes on its own (watch streams, long
    /// polls), so in-flight requests can complete and connections close.
    fn draining(&self) {}

    /// Graceful stop: finish what was accepted (flush queues) before the tasks are aborted.
    async fn stop(&self) {}

    /// Where the server's own spans go when it traces itself (the trace service).
    fn span_sink(self: Arc<Self>) -> Option<Arc<dyn SpanSink>> {
        None
    }

    /// The workload identity it provides (the identity service): the server's TLS layer uses
    /// it for its serving certificate and to authenticate clients by their SVIDs.
    fn workload_identity(
        self: Arc<Self>,
    ) -> Option<Arc<dyn capstan_core::authz::WorkloadIdentity>> {
        None
    }
}

/// Takes the server's own spans (`--trace-self`): an OTLP `ExportTraceServiceRequest`,
/// protobuf. Never blocks and never fails the caller: spans that cannot be queued are dropped.
pub trait SpanSink: Send + Sync {
    /// Queues the spans of `export`.
    fn ingest_own(&self, export: Vec<u8>);
}

/// Lets the change feed deliver a service's topics to it.
pub struct FeedSubscriber(pub Arc<dyn Service>);

impl capstan_db::Subscriber for FeedSubscriber {
    fn topics(&self) -> &[&'static str] {
        self.0.topics()
    }

    fn on_change(&self, change: &Change) {
        self.0.on_change(change);
    }
}

/// What every service is built from: the database and its change feed, injected time and
/// randomness, and the two platform seams — the authorizer every privileged act asks (the
/// policy engine) and the verifier of bearer tokens (the issuer).
#[derive(Clone)]
pub struct Platform {
    /// The database.
    pub db: Db,
    /// The server's change feed (publish through it; subscribe with [`Service::topics`]).
    pub feed: Arc<Feed>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Randomness.
    pub rng: Arc<dyn Rng>,
    /// The policy engine.
    pub authorizer: Arc<dyn Authorizer>,
    /// The issuer's token verification.
    pub verifier: Arc<dyn TokenVerifier>,
    /// The server's public base URL.
    pub public_url: String,
    /// The master key private keys and secrets are sealed or hashed under.
    pub master_key: capstan_core::crypto::MasterKey,
    /// The deployment's SPIFFE trust domain (`--trust-domain`): the one identity every service
    /// shares names principals in it.
    pub trust_domain: String,
}

/// A service's own configuration: the `[service.<name>]` section of the server's TOML file
/// (empty when absent).
#[derive(Debug, Clone, Default)]
pub struct ServiceConfig(serde_json::Value);

impl ServiceConfig {
    /// The section, as the server read it.
    pub fn new(section: serde_json::Value) -> ServiceConfig {
        ServiceConfig(section)
    }

    /// The section as the service's settings type `T` (give `T` `#[serde(deny_unknown_fields)]`
    /// so a misspelt key is refused); an absent section is `T::default()`. Errors name the key.
    pub fn parse<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T, BoxError> {
        if self.0.is_null() {
            return Ok(T::default());
        }
        serde_path_to_error::deserialize(&self.0).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.inner()).into()
        })
    }
}

/// Builds a service from the platform and its configuration section.
pub type Build =
    Box<dyn Fn(&Platform, &ServiceConfig) -> Result<Arc<dyn Service>, BoxError> + Send + Sync>;

/// How a service is built, by name. The server's registry is a list of these.
pub struct Registration {
    /// The name in `--services`.
    pub name: &'static str,
    /// Other services it needs running in the same server (checked at start-up).
    pub requires: &'static [&'static str],
    /// Builds it.
    pub build: Build,
}

impl Registration {
    /// A registration of `name` built by `build`.
    pub fn new(
        name: &'static str,
        build: impl Fn(&Platform, &ServiceConfig) -> Result<Arc<dyn Service>, BoxError>
            + Send
            + Sync
            + 'static,
    ) -> Registration {
        Registration {
            name,
            requires: &[],
            build: Box::new(build),
        }
    }
}

/// A service's routes: the router, and the paths it serves, so the server can hold its OpenAPI
/// document against what it really serves.
pub struct Routes {
    /// The router, with its state.
    pub router: Router,
    /// Every path template routed (`/v1/policies/{name}`, `/v1/resource-policies/{*crn}`).
    pub paths: Vec<&'static str>,
}

/// Builds [`Routes`]: `axum::Router::route`, remembering each path.
pub struct RouteList<S> {
    router: Router<S>,
    paths: Vec<&'static str>,
}

impl<S: Clone + Send + Sync + 'static> Default for RouteList<S> {
    fn default() -> Self {
        RouteList {
            router: Router::new(),
            paths: Vec::new(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> RouteList<S> {
    /// No routes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `path` to `method_router`.
    pub fn route(
        mut self,
        path: &'static str,
        method_router: axum::routing::MethodRouter<S>,
    ) -> Self {
        self.router = self.router.route(path, method_router);
        self.paths.push(path);
        self
    }

    /// The finished routes, with their state.
    pub fn with_state(self, state: S) -> Routes {
        Routes {
            router: self.router.with_state(state),
            paths: self.paths,
        }
    }
}
