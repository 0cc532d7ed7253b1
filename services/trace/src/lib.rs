//! Capstan's trace collector: OpenTelemetry spans in (OTLP over HTTP and gRPC), each attributed
//! to the principal that sent it, stored in Postgres day partitions (SQLite for `dev`), and
//! read back through the queries Jaeger UI and Grafana make.
//!
//! - [`model`]: checking spans, attribution, and the OTLP and Jaeger JSON shapes. No axum or
//!   sqlx in it.
//! - [`pipeline`]: the bounded queue and batch writers.
//! - [`store`]: the SQL span store (partitions, retention, searches).
//! - [`service`]: [`TraceService`], ingest and every query, guarded.
//! - [`http`]: the OTLP/HTTP receiver, Jaeger v1 and v3, OTLP JSON, RED metrics.
//! - [`grpc`]: the OTLP/gRPC receiver.

pub mod error;
pub mod grpc;
pub mod http;
pub mod model;
pub mod pipeline;
pub mod service;
pub mod store;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use capstan_core::authz::TokenVerifier;
use capstan_http::{
    BoxError, ExtraListener, Metric, Platform, Routes, Service, ServiceConfig, SpanSink,
};
use prost::Message;
use utoipa::OpenApi;

pub use error::TraceError;
pub use service::{TraceSection, TraceService};

/// Builds the trace service from the platform and its `[service.trace]` section (the server's
/// registry names this).
pub fn build(p: &Platform, section: &ServiceConfig) -> Result<Arc<dyn Service>, BoxError> {
    let section: TraceSection = section.parse()?;
    let store = Arc::new(store::SqlTraceStore::new(p.db.clone()));
    Ok(Arc::new(TraceService::new(
        section,
        store,
        p.clock.clone(),
        p.authorizer.clone(),
        p.verifier.clone(),
    )))
}

impl SpanSink for TraceService {
    fn ingest_own(&self, export: Vec<u8>) {
        if let Ok(req) =
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                export.as_slice(),
            )
        {
            TraceService::ingest_own(self, req);
        }
    }
}

#[async_trait::async_trait]
impl Service for TraceService {
    fn name(&self) -> &'static str {
        "trace"
    }

    fn routes(self: Arc<Self>, verifier: Arc<dyn TokenVerifier>) -> Routes {
        http::routes(self, verifier)
    }

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        http::TraceApi::openapi()
    }

    fn body_limits(&self) -> Vec<(&'static str, usize)> {
        vec![(http::RECEIVER_ROUTE, self.settings().max_body_bytes)]
    }

    async fn start(self: Arc<Self>) -> Result<Vec<tokio::task::JoinHandle<()>>, BoxError> {
        if let Err(e) = self.prepare_partitions().await {
            tracing::warn!(error = %e, "trace: could not create today's partitions yet");
        }
        Ok(self.pipeline().spawn_writers())
    }

    fn listeners(self: Arc<Self>, verifier: Arc<dyn TokenVerifier>) -> Vec<ExtraListener> {
        let mut out = Vec::new();
        if let Some(addr) = self.settings().otlp_grpc_listen {
            out.push(ExtraListener {
                flag: "--otlp-grpc-listen",
                addr,
                router: grpc::router(self.clone()),
            });
        }
        if let Some(addr) = self.settings().otlp_http_listen {
            out.push(ExtraListener {
                flag: "--otlp-http-listen",
                addr,
                router: http::receiver_router(self.clone(), verifier),
            });
        }
        out
    }

    async fn housekeeping(&self) -> Result<(), BoxError> {
        self.prepare_partitions().await?;
        let n = self.prune().await?;
        if n > 0 {
            tracing::info!(dropped = n, "trace: spans past retention removed");
        }
        Ok(())
    }

    fn metrics(&self) -> Vec<Metric> {
        let s = &self.pipeline().stats;
        vec![
            Metric::counter(
                "capstan_trace_spans_written_total",
                "Spans committed to storage",
                s.written.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "capstan_trace_batches_total",
                "Batches written",
                s.batches.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "capstan_trace_overloaded_total",
                "Exports refused because the queue was full (429 / RESOURCE_EXHAUSTED)",
                s.overloaded.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "capstan_trace_write_failures_total",
                "Batch writes that failed",
                s.failed.load(Ordering::Relaxed),
            ),
            Metric::gauge(
                "capstan_trace_queued_bytes",
                "Bytes of spans queued or being written",
                self.pipeline().queued_bytes() as f64,
            ),
        ]
    }

    fn draining(&self) {
        self.set_draining();
    }

    fn span_sink(self: Arc<Self>) -> Option<Arc<dyn SpanSink>> {
        Some(self)
    }

    async fn stop(&self) {
        self.set_draining();
        self.pipeline().close(Duration::from_secs(10)).await;
    }
}
