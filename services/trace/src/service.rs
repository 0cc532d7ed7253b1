//! [`TraceService`]: ingest (attributed, guarded, queued) and every query, guarded.
//!
//! Resources are `crn:capstan:trace:<tenant>:service/<service.name>`. Sending spans that claim
//! a service needs `trace:Ingest` on it; reading a service's spans needs `trace:Query` on it.
//! Guarded calls carry `trace:Service` in their context. A query shows only the spans of
//! services the caller may query: a trace crossing services it may not read comes back without
//! their spans.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capstan_core::authz::{guard, Authorizer, Caller, GuardError, TokenVerifier};
use capstan_core::clock::Clock;
use capstan_core::crn::Crn;
use capstan_core::ids::TenantId;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::TraceError;
use crate::model::{self, StoredSpan, Window, DAY_NS};
use crate::pipeline::{Pipeline, PipelineSettings, SubmitError};
use crate::store::{Dependency, Operation, SearchQuery, SqlTraceStore};

/// The `[service.trace]` section of the server's configuration file (the server also fills
/// `otlp_http_listen`, `otlp_grpc_listen` and `anonymous` from its flags).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceSection {
    /// A second listener serving only the OTLP/HTTP receiver (conventionally `0.0.0.0:4318`).
    pub otlp_http_listen: Option<SocketAddr>,
    /// The OTLP/gRPC receiver's listener (conventionally `0.0.0.0:4317`).
    pub otlp_grpc_listen: Option<SocketAddr>,
    /// Accept spans without credentials into the default tenant (`capstan dev
    /// --trace-anonymous` only). Default false.
    pub anonymous: Option<bool>,
    /// Days spans are kept. Default 7.
    pub retention_days: Option<i64>,
    /// Bytes of spans queued or being written at most. Default 64 MiB.
    pub queue_bytes: Option<usize>,
    /// Writer tasks. Default 2.
    pub writers: Option<usize>,
    /// Spans a writer waits for (up to `linger_ms`) before writing. Default 1,000.
    pub min_batch: Option<usize>,
    /// Most spans in one write. Default 8,192.
    pub max_batch: Option<usize>,
    /// Longest wait for `min_batch`, ms. Default 20.
    pub linger_ms: Option<u64>,
    /// Largest request body as sent (compressed or not), bytes. Default 4 MiB.
    pub max_body_bytes: Option<usize>,
    /// Largest request body after decompression, bytes. Default 16 MiB.
    pub max_decompressed_bytes: Option<usize>,
    /// Bytes of export bodies being decompressed and decoded at once (a gzip body counts as
    /// `max_decompressed_bytes`); more wait up to 2 s, then get 429. Default 64 MiB.
    pub decode_budget_bytes: Option<usize>,
    /// Most spans one trace returns. Default 10,000.
    pub max_trace_spans: Option<i64>,
    /// Most traces one search returns. Default 1,500.
    pub max_search_traces: Option<i64>,
    /// Spans RED metrics read at most per query. Default 200,000.
    pub max_metric_spans: Option<i64>,
    /// Longest window of a search, dependency or metrics query, hours. Default 7 days.
    pub max_query_hours: Option<i64>,
}

/// The effective settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// See [`TraceSection::otlp_http_listen`].
    pub otlp_http_listen: Option<SocketAddr>,
    /// See [`TraceSection::otlp_grpc_listen`].
    pub otlp_grpc_listen: Option<SocketAddr>,
    /// See [`TraceSection::anonymous`].
    pub anonymous: bool,
    /// Retention, ns.
    pub retention_ns: i64,
    /// The pipeline.
    pub pipeline: PipelineSettings,
    /// See [`TraceSection::max_body_bytes`].
    pub max_body_bytes: usize,
    /// See [`TraceSection::max_decompressed_bytes`].
    pub max_decompressed_bytes: usize,
    /// See [`TraceSection::decode_budget_bytes`].
    pub decode_budget_bytes: usize,
    /// See [`TraceSection::max_trace_spans`].
    pub max_trace_spans: i64,
    /// See [`TraceSection::max_search_traces`].
    pub max_search_traces: i64,
    /// See [`TraceSection::max_metric_spans`].
    pub max_metric_spans: i64,
    /// Longest query window, ns.
    pub max_query_ns: i64,
}

impl From<&TraceSection> for Settings {
    fn from(s: &TraceSection) -> Settings {
        let min_batch = s.min_batch.unwrap_or(1000).clamp(1, 100_000);
        Settings {
            otlp_http_listen: s.otlp_http_listen,
            otlp_grpc_listen: s.otlp_grpc_listen,
            anonymous: s.anonymous.unwrap_or(false),
            retention_ns: s.retention_days.unwrap_or(7).clamp(1, 3650) * DAY_NS,
            pipeline: PipelineSettings {
                queue_bytes: s.queue_bytes.unwrap_or(64 << 20).max(1 << 20),
                writers: s.writers.unwrap_or(2).clamp(1, 64),
                min_batch,
                max_batch: s.max_batch.unwrap_or(8192).max(min_batch),
                linger: Duration::from_millis(s.linger_ms.unwrap_or(20).min(1000)),
            },
            max_body_bytes: s.max_body_bytes.unwrap_or(4 << 20).max(64 << 10),
            max_decompressed_bytes: s.max_decompressed_bytes.unwrap_or(16 << 20).max(64 << 10),
            decode_budget_bytes: s.decode_budget_bytes.unwrap_or(64 << 20).max(1 << 20),
            max_trace_spans: s.max_trace_spans.unwrap_or(10_000).clamp(10, 1_000_000),
            max_search_traces: s.max_search_traces.unwrap_or(1500).clamp(1, 100_000),
            max_metric_spans: s
                .max_metric_spans
                .unwrap_or(200_000)
                .clamp(1000, 50_000_000),
            max_query_ns: s.max_query_hours.unwrap_or(7 * 24).clamp(1, 24 * 3650)
                * 3600
                * 1_000_000_000,
        }
    }
}

/// Who sends spans.
#[derive(Debug, Clone)]
pub enum Sender {
    /// An authenticated principal.
    Caller(Caller),
    /// Nobody (`--trace-anonymous`): the default tenant, principal `anonymous`.
    Anonymous,
    /// The server itself (`--trace-self`): the default tenant, principal `capstan`.
    Server,
}

impl Sender {
    fn tenant(&self) -> String {
        match self {
            Sender::Caller(c) => c.tenant.to_string(),
            Sender::Anonymous | Sender::Server => TenantId::default_tenant().to_string(),
        }
    }

    fn principal(&self) -> String {
        match self {
            Sender::Caller(c) => c.principal.to_string(),
            Sender::Anonymous => "anonymous".into(),
            Sender::Server => "capstan".into(),
        }
    }
}

/// The outcome of an export: what was refused (and why). Accepted spans are committed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ingested {
    /// Spans accepted and stored.
    pub accepted: i64,
    /// Spans refused.
    pub rejected: i64,
    /// Why, when some were.
    pub message: String,
}

/// The trace service.
pub struct TraceService {
    pub(crate) settings: Settings,
    pub(crate) store: Arc<SqlTraceStore>,
    pub(crate) pipeline: Arc<Pipeline>,
    clock: Arc<dyn Clock>,
    authorizer: Arc<dyn Authorizer>,
    pub(crate) verifier: Arc<dyn TokenVerifier>,
    draining: AtomicBool,
    /// KiB of export bodies being decompressed and decoded.
    decoding: Arc<tokio::sync::Semaphore>,
}

fn crn(tenant: &TenantId, service: &str) -> Crn {
    Crn::new("trace", tenant, &format!("service/{service}"))
}

/// Per-request memory of which services the caller may query.
type Visible = HashMap<String, bool>;

impl TraceService {
    /// A trace service over `store`.
    pub fn new(
        section: TraceSection,
        store: Arc<SqlTraceStore>,
        clock: Arc<dyn Clock>,
        authorizer: Arc<dyn Authorizer>,
        verifier: Arc<dyn TokenVerifier>,
    ) -> TraceService {
        let settings = Settings::from(&section);
        let pipeline = Arc::new(Pipeline::new(
            settings.pipeline,
            store.clone(),
            clock.clone(),
        ));
        TraceService {
            store,
            pipeline,
            clock,
            authorizer,
            verifier,
            draining: AtomicBool::new(false),
            decoding: Arc::new(tokio::sync::Semaphore::new(
                settings.decode_budget_bytes.div_ceil(1024),
            )),
            settings,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The store (tests, benchmarks).
    pub fn store(&self) -> &Arc<SqlTraceStore> {
        &self.store
    }

    /// The pipeline (metrics, tests).
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    fn now_ns(&self) -> i64 {
        self.clock.now().saturating_mul(1_000_000_000)
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Takes the decoding budget for a body of `len` bytes (a compressed one counts as the
    /// decompression cap); waits up to 2 s, then the receiver answers 429.
    pub async fn decode_budget(
        &self,
        compressed: bool,
        len: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, TraceError> {
        let bytes = if compressed {
            self.settings.max_decompressed_bytes
        } else {
            len
        };
        let cap = self.settings.decode_budget_bytes.div_ceil(1024);
        let kib = u32::try_from(bytes.div_ceil(1024).clamp(1, cap)).unwrap_or(u32::MAX);
        match tokio::time::timeout(
            Duration::from_secs(2),
            self.decoding.clone().acquire_many_owned(kib),
        )
        .await
        {
            Ok(Ok(p)) => Ok(p),
            _ => Err(TraceError::Overloaded(
                "too many exports are being decoded: retry after a second".into(),
            )),
        }
    }

    /// Who sends an export: the bearer token of `authorization`, else anonymous if allowed.
    pub async fn sender(&self, authorization: Option<&str>) -> Result<Sender, TraceError> {
        let Some(value) = authorization else {
            return if self.settings.anonymous {
                Ok(Sender::Anonymous)
            } else {
                Err(TraceError::Unauthenticated(
                    "a bearer access token is required".into(),
                ))
            };
        };
        let token = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
                t.trim()
            }
            _ => {
                return Err(TraceError::Unauthenticated(
                    "the Authorization header must use the Bearer scheme".into(),
                ))
            }
        };
        let caller = self.verifier.authenticate_caller(token).await?;
        // No client certificate on this listener: a certificate-bound token is refused.
        if caller.bound_to.is_some() {
            return Err(TraceError::Unauthenticated(
                "this token is bound to a client certificate that this connection does not present"
                    .into(),
            ));
        }
        Ok(Sender::Caller(caller))
    }

    /// Checks, attributes and stores an export. Spans of services the sender may not report
    /// are refused (in [`Ingested`]), never stored; the answer comes once the rest is committed.
    pub async fn ingest(
        &self,
        who: &Sender,
        req: ExportTraceServiceRequest,
    ) -> Result<Ingested, TraceError> {
        if self.draining.load(Ordering::Acquire) {
            return Err(TraceError::Unavailable("the server is stopping".into()));
        }
        let now = self.now_ns();
        let window = Window {
            now_ns: now,
            oldest_ns: now - self.settings.retention_ns,
            newest_ns: now + DAY_NS,
        };
        let tenant = who.tenant();
        let principal = who.principal();
        let limits = self.limits();
        // Authorize the claimed services first: nothing is built for a service the sender may
        // not report.
        let claimed = model::claimed_services(&req, limits.max_services);
        let mut refused: HashMap<String, String> = HashMap::new();
        if let Sender::Caller(caller) = who {
            for service in &claimed {
                let r = guard(
                    self.authorizer.as_ref(),
                    caller,
                    "trace:Ingest",
                    &crn(&caller.tenant, service),
                    &[("trace:Service", service.as_str())],
                )
                .await;
                match r {
                    Ok(()) => {}
                    Err(GuardError::Forbidden { .. }) => {
                        refused.insert(
                            service.clone(),
                            format!("{principal} may not report spans of service {service:?} (trace:Ingest)"),
                        );
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let max = limits.max_services;
        let allowed = |service: &str| -> Option<String> {
            if !claimed.iter().any(|c| c == service) {
                return Some(format!("an export may name at most {max} services"));
            }
            refused.get(service).cloned()
        };
        let checked = model::check(req, &tenant, &principal, &window, &limits, &allowed)
            .map_err(TraceError::TooLarge)?;
        let rejected = checked.rejected;
        let message = checked.error_message();
        let rows = checked.into_rows();
        let accepted = rows.len() as i64;
        if !rows.is_empty() {
            let done = self.pipeline.submit(rows).map_err(submit_error)?;
            done.await
                .map_err(|_| TraceError::Unavailable("the trace writers have stopped".into()))?
                .map_err(submit_error)?;
        }
        Ok(Ingested {
            accepted,
            rejected,
            message,
        })
    }

    /// Queues the server's own spans without waiting for their commit (they are dropped when
    /// the queue is full: tracing must never slow the server).
    pub fn ingest_own(&self, req: ExportTraceServiceRequest) {
        if self.draining.load(Ordering::Acquire) {
            return;
        }
        let now = self.now_ns();
        let window = Window {
            now_ns: now,
            oldest_ns: now - self.settings.retention_ns,
            newest_ns: now + DAY_NS,
        };
        let who = Sender::Server;
        let Ok(checked) = model::check(
            req,
            &who.tenant(),
            &who.principal(),
            &window,
            &self.limits(),
            &|_| None,
        ) else {
            return;
        };
        let rows = checked.into_rows();
        if !rows.is_empty() {
            // The receiver is dropped: nobody waits for the commit.
            let _ = self.pipeline.submit(rows);
        }
    }

    /// Most spans read for `traces` traces (bounded whatever their size).
    fn span_cap(&self, traces: usize) -> i64 {
        self.settings
            .max_trace_spans
            .saturating_mul(traces.max(1) as i64)
            .min(200_000)
    }

    fn limits(&self) -> model::Limits {
        model::Limits {
            max_row_bytes: self.settings.pipeline.queue_bytes,
            ..model::Limits::default()
        }
    }

    async fn visible(
        &self,
        caller: &Caller,
        service: &str,
        memo: &mut Visible,
    ) -> Result<bool, TraceError> {
        if let Some(v) = memo.get(service) {
            return Ok(*v);
        }
        let r = guard(
            self.authorizer.as_ref(),
            caller,
            "trace:Query",
            &crn(&caller.tenant, service),
            &[("trace:Service", service)],
        )
        .await;
        let v = match r {
            Ok(()) => true,
            Err(GuardError::Forbidden { .. }) => false,
            Err(e) => return Err(e.into()),
        };
        memo.insert(service.to_owned(), v);
        Ok(v)
    }

    async fn require(&self, caller: &Caller, service: &str) -> Result<(), TraceError> {
        guard(
            self.authorizer.as_ref(),
            caller,
            "trace:Query",
            &crn(&caller.tenant, service),
            &[("trace:Service", service)],
        )
        .await?;
        Ok(())
    }

    async fn only_visible(
        &self,
        caller: &Caller,
        spans: Vec<StoredSpan>,
        memo: &mut Visible,
    ) -> Result<Vec<StoredSpan>, TraceError> {
        let mut out = Vec::with_capacity(spans.len());
        for s in spans {
            if self.visible(caller, &s.service, memo).await? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// The services with spans that the caller may query.
    pub async fn services(&self, caller: &Caller) -> Result<Vec<String>, TraceError> {
        let mut memo = Visible::new();
        let mut out = Vec::new();
        for s in self.store.services(caller.tenant.as_str()).await? {
            if self.visible(caller, &s, &mut memo).await? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// A service's operations.
    pub async fn operations(
        &self,
        caller: &Caller,
        service: &str,
    ) -> Result<Vec<Operation>, TraceError> {
        self.require(caller, service).await?;
        Ok(self
            .store
            .operations(caller.tenant.as_str(), service)
            .await?)
    }

    /// Checks a query's time window: `[start, end]`, at most the configured maximum.
    pub fn window(
        &self,
        start_ns: Option<i64>,
        end_ns: Option<i64>,
        lookback_ns: Option<i64>,
    ) -> Result<(i64, i64), TraceError> {
        let end = end_ns.unwrap_or_else(|| self.now_ns());
        let start = match (start_ns, lookback_ns) {
            (Some(s), _) => s,
            (None, Some(l)) => end.saturating_sub(l),
            (None, None) => end.saturating_sub(3600 * 1_000_000_000),
        };
        if start > end {
            return Err(TraceError::BadRequest(
                "the window's start is after its end".into(),
            ));
        }
        if end.saturating_sub(start) > self.settings.max_query_ns {
            return Err(TraceError::BadRequest(format!(
                "the window is longer than {} hours",
                self.settings.max_query_ns / 3_600_000_000_000
            )));
        }
        Ok((start, end))
    }

    /// The traces with a span matching `q`, latest first: their ids and visible spans.
    pub async fn search(
        &self,
        caller: &Caller,
        mut q: SearchQuery,
    ) -> Result<(Vec<Vec<u8>>, Vec<StoredSpan>), TraceError> {
        self.require(caller, &q.service).await?;
        q.limit = q.limit.clamp(1, self.settings.max_search_traces);
        let tenant = caller.tenant.as_str();
        let ids = self.store.find_trace_ids(tenant, &q).await?;
        let spans = self
            .store
            .spans_of(tenant, &ids, self.span_cap(ids.len()))
            .await?;
        let mut memo = Visible::new();
        memo.insert(q.service.clone(), true);
        let spans = self.only_visible(caller, spans, &mut memo).await?;
        Ok((ids, spans))
    }

    /// One trace's visible spans; 404 when it has none the caller may see.
    pub async fn trace(&self, caller: &Caller, id: &[u8]) -> Result<Vec<StoredSpan>, TraceError> {
        let spans = self
            .store
            .spans_of(caller.tenant.as_str(), &[id.to_vec()], self.span_cap(1))
            .await?;
        let spans = self
            .only_visible(caller, spans, &mut Visible::new())
            .await?;
        if spans.is_empty() {
            return Err(TraceError::NotFound("trace not found".into()));
        }
        Ok(spans)
    }

    /// Calls between services the caller may query, in a window.
    pub async fn dependencies(
        &self,
        caller: &Caller,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<Vec<Dependency>, TraceError> {
        // The graph reads every service's spans: it needs trace:Query on all of them.
        self.require(caller, "*").await?;
        let mut memo = Visible::new();
        let mut out = Vec::new();
        for d in self
            .store
            .dependencies(caller.tenant.as_str(), from_ns, to_ns)
            .await?
        {
            if self.visible(caller, &d.parent, &mut memo).await?
                && self.visible(caller, &d.child, &mut memo).await?
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Rate, errors and duration per operation of a service over `[from, to]`.
    pub async fn red(
        &self,
        caller: &Caller,
        service: &str,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<Value, TraceError> {
        self.require(caller, service).await?;
        let cap = self.settings.max_metric_spans;
        let samples = self
            .store
            .samples(caller.tenant.as_str(), service, from_ns, to_ns, cap)
            .await?;
        let sampled = samples.len() as i64 >= cap;
        let mut by_op: BTreeMap<String, (Vec<i64>, i64)> = BTreeMap::new();
        for s in samples {
            let e = by_op.entry(s.name).or_default();
            e.0.push(s.duration_ns);
            if s.status_code == 2 {
                e.1 += 1;
            }
        }
        let seconds = ((to_ns - from_ns) as f64 / 1e9).max(1e-9);
        let pct = |v: &[i64], p: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            v[i] as f64 / 1e6
        };
        let operations: Vec<Value> = by_op
            .into_iter()
            .map(|(name, (mut d, errors))| {
                d.sort_unstable();
                let n = d.len() as f64;
                json!({
                    "operation": name,
                    "requests": d.len(),
                    "errors": errors,
                    "error_rate": errors as f64 / n.max(1.0),
                    "rate_per_second": n / seconds,
                    "p50_ms": pct(&d, 0.50),
                    "p95_ms": pct(&d, 0.95),
                    "p99_ms": pct(&d, 0.99),
                })
            })
            .collect();
        Ok(json!({
            "service": service,
            "start": from_ns / 1000,
            "end": to_ns / 1000,
            "operations": operations,
            "sampled": sampled,
        }))
    }

    /// Drops spans older than retention.
    pub async fn prune(&self) -> Result<u64, TraceError> {
        let cutoff = self.now_ns() - self.settings.retention_ns;
        Ok(self.store.prune(cutoff).await?)
    }

    /// Creates the partitions of today and tomorrow ahead of writes.
    pub async fn prepare_partitions(&self) -> Result<(), TraceError> {
        let today = self.now_ns().div_euclid(DAY_NS);
        for d in [today, today + 1] {
            self.store.ensure_partition(d).await?;
        }
        Ok(())
    }
}

fn submit_error(e: SubmitError) -> TraceError {
    match e {
        SubmitError::Full => {
            TraceError::Overloaded("the trace queue is full: retry after a second".into())
        }
        SubmitError::Unavailable(m) => TraceError::Unavailable(m),
        SubmitError::TooLarge => {
            TraceError::TooLarge("the export is larger than the trace queue".into())
        }
        SubmitError::Failed(m) => TraceError::Internal(m),
    }
}
