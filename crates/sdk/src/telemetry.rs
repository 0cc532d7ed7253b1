//! Spans to Capstan's trace collector (cargo feature `telemetry`).
//!
//! [`init`] sets up the OpenTelemetry SDK: a tracer provider whose batch span processor exports
//! over OTLP/HTTP (protobuf) to `{capstan}/v1/traces`, with the service's own access token
//! (audience `capstan`). The token comes from a [`TokenSource`] for every export, so it is
//! renewed as it nears expiry; a refused one (401) is replaced once. The provider is also
//! installed as OpenTelemetry's global provider. The collector records which principal sent
//! each span, and keeps only the spans of services the principal may `trace:Ingest`: the others
//! are refused (logged, and [`Error::SpansRefused`] from [`Telemetry::flush`]).
//!
//! Add `tracing-opentelemetry` to turn `tracing` spans into OpenTelemetry spans, or use
//! OpenTelemetry's API directly. [`opentelemetry`] and [`opentelemetry_sdk`] are re-exported, so
//! the versions match.
//!
//! ```no_run
//! # async fn demo() -> Result<(), capstan_sdk::Error> {
//! use capstan_sdk::{telemetry, Capstan};
//! use tracing_subscriber::layer::SubscriberExt as _;
//! use tracing_subscriber::util::SubscriberInitExt as _;
//!
//! let capstan = Capstan::new("http://capstan.capstan.svc:8470", "default")?;
//! let tokens = capstan.token_source("svc_…", "cps_…", &[]);
//! let telemetry = telemetry::init(&capstan, tokens, "orders")?;
//!
//! // `tracing` spans, through tracing-opentelemetry 0.31:
//! tracing_subscriber::registry()
//!     .with(tracing_opentelemetry::layer().with_tracer(telemetry.tracer("orders")))
//!     .init();
//! tracing::info_span!("checkout", order.id = 42).in_scope(|| {
//!     // …
//! });
//!
//! // Or OpenTelemetry's API, through the global provider:
//! use capstan_sdk::telemetry::opentelemetry::{global, trace::Tracer as _};
//! global::tracer("orders").in_span("reindex", |_cx| {
//!     // …
//! });
//!
//! // At exit: export what is still queued.
//! telemetry.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Exports run on the Tokio runtime `init` was called in (the batch processor's own thread waits
//! for them), so that runtime must outlive the [`Telemetry`]. The standard `OTEL_BSP_*` (batching),
//! `OTEL_TRACES_SAMPLER`, `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS` variables are
//! honoured; the endpoint and the service name are the ones given here.

use std::fmt;
use std::sync::{Arc, Mutex};

use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::runtime::{Handle, RuntimeFlavor};

#[doc(no_inline)]
pub use opentelemetry;
#[doc(no_inline)]
pub use opentelemetry_sdk;

use crate::transport::{api_error, Transport};
use crate::{Capstan, Error, TokenSource, API_AUDIENCE};

/// Exports the spans of `service_name` to `capstan` as `tokens`' client: builds the tracer
/// provider (batch span processor, OTLP/HTTP protobuf to `{base}/v1/traces`, resource
/// `service.name` = `service_name`), installs it as the global provider, and returns the guard
/// that flushes it.
///
/// Must be called inside a Tokio runtime; the exports run on it.
pub fn init(
    capstan: &Capstan,
    tokens: TokenSource,
    service_name: &str,
) -> Result<Telemetry, Error> {
    let runtime = Handle::try_current().map_err(|_| {
        Error::Config("telemetry::init must be called inside a Tokio runtime".into())
    })?;
    let endpoint = format!("{}/v1/traces", capstan.base());
    let last_error = Arc::new(Mutex::new(None));
    let client = CapstanHttp {
        transport: capstan.transport().clone(),
        tokens,
        runtime,
        last_error: last_error.clone(),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| Error::Config(format!("span exporter: {e}")))?;
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(Telemetry {
        provider,
        endpoint,
        last_error,
        shut_down: false,
    })
}

/// The tracer provider [`init`] built. Dropping it (or [`Telemetry::shutdown`]) exports the
/// spans still queued and stops the exporter.
///
/// On a current-thread runtime, `Drop` cannot wait for exports that need that very thread: it
/// starts them and returns. Call [`Telemetry::shutdown`] there.
pub struct Telemetry {
    provider: SdkTracerProvider,
    endpoint: String,
    last_error: Arc<Mutex<Option<Error>>>,
    shut_down: bool,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// The tracer provider (also the global one).
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// A tracer of the provider, named after what it instruments (`tracing-opentelemetry`'s
    /// `with_tracer` takes it).
    pub fn tracer(&self, name: &'static str) -> SdkTracer {
        self.provider.tracer(name)
    }

    /// Exports every span ended so far. An export Capstan refused is [`Error::Api`] with its
    /// answer; spans it took the export of but refused (the principal may not `trace:Ingest`
    /// their service) are [`Error::SpansRefused`].
    pub async fn flush(&self) -> Result<(), Error> {
        self.take_last_error();
        let p = self.provider.clone();
        let r = tokio::task::spawn_blocking(move || p.force_flush())
            .await
            .map_err(|e| Error::Config(format!("flushing spans: {e}")))?;
        self.outcome(r)
    }

    /// Exports the spans still queued and stops the exporter; spans ended later are dropped.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.shut_down = true;
        self.take_last_error();
        let p = self.provider.clone();
        let r = tokio::task::spawn_blocking(move || p.shutdown())
            .await
            .map_err(|e| Error::Config(format!("shutting down the exporter: {e}")))?;
        match r {
            Err(OTelSdkError::AlreadyShutdown) => Ok(()),
            r => self.outcome(r),
        }
    }

    fn take_last_error(&self) -> Option<Error> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The result of a flush: the typed error of the last export when there is one (also for
    /// an export that succeeded with spans refused).
    fn outcome(&self, r: OTelSdkResult) -> Result<(), Error> {
        if let Some(typed) = self.take_last_error() {
            return Err(typed);
        }
        let Err(e) = r else { return Ok(()) };
        Err(match e {
            OTelSdkError::Timeout(timeout) => Error::Timeout {
                url: self.endpoint.clone(),
                timeout,
            },
            OTelSdkError::AlreadyShutdown => {
                Error::Config("the tracer provider is shut down".into())
            }
            OTelSdkError::InternalFailure(e) => Error::Protocol(format!("span export: {e}")),
        })
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if self.shut_down {
            return;
        }
        let p = self.provider.clone();
        let r = match Handle::try_current().map(|h| h.runtime_flavor()) {
            // Hand this worker's other tasks (the exports among them) to another thread
            // while this one waits.
            Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| p.shutdown()),
            Ok(_) => {
                // This thread runs the exports: waiting here would wait for itself.
                tracing::warn!("capstan: telemetry dropped on a current-thread runtime, spans still queued may be lost; call `Telemetry::shutdown().await` instead");
                let _ = std::thread::Builder::new()
                    .name("capstan-telemetry-shutdown".into())
                    .spawn(move || p.shutdown());
                return;
            }
            Err(_) => p.shutdown(),
        };
        match r {
            Ok(()) | Err(OTelSdkError::AlreadyShutdown) => {}
            Err(e) => tracing::warn!(error = %e, "capstan: exporting the last spans failed"),
        }
    }
}

/// The exporter's HTTP client: the SDK transport (timeouts, retries on 429/503 with
/// `Retry-After`, the deployment's root certificates) with a bearer token from the source.
struct CapstanHttp {
    transport: Transport,
    tokens: TokenSource,
    /// Where requests run: the batch processor calls from a thread of its own, outside Tokio.
    runtime: Handle,
    /// The typed failure of the last export, for [`Telemetry::flush`].
    last_error: Arc<Mutex<Option<Error>>>,
}

impl fmt::Debug for CapstanHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CapstanHttp")
            .field("client_id", &self.tokens.client_id())
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl HttpClient for CapstanHttp {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        // With telemetry suppressed, the export's own spans (of `tracing`, through a layer)
        // are not exported in turn.
        let quiet = opentelemetry::Context::current().with_telemetry_suppressed();
        let task = self.runtime.spawn(
            export(self.transport.clone(), self.tokens.clone(), request).with_context(quiet),
        );
        let result = task.await.unwrap_or_else(|e| {
            Err(Error::Config(format!(
                "the Tokio runtime telemetry::init ran in is gone: {e}"
            )))
        });
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok((r, refused)) => {
                if let Some(e) = &refused {
                    tracing::warn!(error = %e, "capstan: spans refused");
                }
                *last = refused;
                Ok(r)
            }
            Err(e) => {
                let message = e.to_string();
                *last = Some(e);
                Err(message.into())
            }
        }
    }
}

/// One export: the request as the OTLP exporter made it, plus the bearer token; a 401 renews
/// the token and sends once more. A non-2xx answer is [`Error::Api`]; a 2xx one comes with
/// the spans it refused, if any.
async fn export(
    transport: Transport,
    tokens: TokenSource,
    request: Request<Bytes>,
) -> Result<(Response<Bytes>, Option<Error>), Error> {
    let (parts, body) = request.into_parts();
    let url = parts.uri.to_string();
    let mut renewed = false;
    loop {
        let token = tokens.token(Some(API_AUDIENCE)).await?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.secret()))
            .map_err(|_| Error::Protocol("the access token is not a valid header value".into()))?;
        auth.set_sensitive(true);
        let mut headers = parts.headers.clone();
        // Replaces one from OTEL_EXPORTER_OTLP_HEADERS: the collector reads only Capstan's.
        headers.insert(AUTHORIZATION, auth);
        let req = transport
            .http()
            .request(parts.method.clone(), &url)
            .headers(headers)
            .body(body.clone());
        let resp = transport.send(req).await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED && !renewed {
            tokens.invalidate();
            renewed = true;
            continue;
        }
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Error::Protocol(format!("reading the collector's answer: {e}")))?;
        if !status.is_success() {
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            return Err(api_error(status, body));
        }
        let refused = refused(&bytes);
        let mut out = Response::new(bytes);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        return Ok((out, refused));
    }
}

/// The spans an export answer (`ExportTraceServiceResponse`, protobuf) says were refused.
fn refused(body: &[u8]) -> Option<Error> {
    use prost::Message as _;
    let p = ExportTraceServiceResponse::decode(body)
        .ok()?
        .partial_success?;
    (p.rejected_spans > 0).then_some(Error::SpansRefused {
        rejected: p.rejected_spans,
        message: p.error_message,
    })
}

// The two messages of opentelemetry/proto/collector/trace/v1/trace_service.proto the SDK reads
// (opentelemetry-proto would bring tonic along).

/// `ExportTraceServiceResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportTraceServiceResponse {
    #[prost(message, optional, tag = "1")]
    partial_success: Option<ExportTracePartialSuccess>,
}

/// `ExportTracePartialSuccess`.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportTracePartialSuccess {
    #[prost(int64, tag = "1")]
    rejected_spans: i64,
    #[prost(string, tag = "2")]
    error_message: String,
}

#[cfg(test)]
mod tests;
