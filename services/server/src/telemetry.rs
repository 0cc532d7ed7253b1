//! Logging and tracing: `tracing` to stderr (pretty or JSON); spans exported over OTLP/HTTP
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the exporter honours the standard `OTEL_*`
//! variables); and with `--trace-self`, spans handed in process to this server's own trace
//! service once it runs ([`trace_self_into`]).

use std::sync::{Arc, OnceLock};

use capstan_http::SpanSink;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use prost::Message;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;
use crate::error::ServerError;

/// Keeps the exporters alive; flushes spans when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Where `--trace-self` spans go once the trace service runs (spans ended before are dropped).
static SELF_SINK: OnceLock<Arc<dyn SpanSink>> = OnceLock::new();

/// Hands the server's own spans to `sink` from now on (the first server of the process wins).
pub fn trace_self_into(sink: Arc<dyn SpanSink>) {
    let _ = SELF_SINK.set(sink);
}

/// The `--trace-self` exporter: encodes spans as an OTLP export and queues them in process.
struct SelfExporter {
    resource: ResourceAttributesWithSchema,
}

impl std::fmt::Debug for SelfExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SelfExporter")
    }
}

impl SpanExporter for SelfExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if let Some(sink) = SELF_SINK.get() {
            let req = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(batch, &self.resource),
            };
            sink.ingest_own(req.encode_to_vec());
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.resource = resource.into();
    }
}

/// Installs the global subscriber.
pub fn init(
    format: LogFormat,
    filter: Option<&str>,
    otlp_endpoint: Option<String>,
    trace_self: bool,
) -> Result<Telemetry, ServerError> {
    let filter = EnvFilter::try_new(filter.unwrap_or("info,sqlx=warn"))
        .map_err(|e| ServerError::Config(format!("log filter: {e}")))?;
    let fmt = match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let otlp = otlp_endpoint.filter(|e| !e.is_empty());
    let provider = if otlp.is_some() || trace_self {
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("capstan")
            .build();
        let mut builder = SdkTracerProvider::builder().with_resource(resource.clone());
        if otlp.is_some() {
            // The batch processor exports from its own thread: a blocking client, named here so
            // the choice does not depend on which reqwest features the build unified.
            let client = std::thread::spawn(reqwest::blocking::Client::new)
                .join()
                .map_err(|_| ServerError::Telemetry("cannot build the OTLP HTTP client".into()))?;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .build()
                .map_err(|e| ServerError::Telemetry(e.to_string()))?;
            builder = builder.with_batch_exporter(exporter);
        }
        if trace_self {
            builder = builder.with_batch_exporter(SelfExporter {
                resource: (&resource).into(),
            });
        }
        Some(builder.build())
    } else {
        None
    };
    // Exported spans have their own filter: the log level (often `warn`) must not silence them.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("capstan"))
            .with_filter(EnvFilter::new(
                "info,sqlx=warn,h2=warn,hyper=warn,tonic=warn",
            ))
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .map_err(|e| ServerError::Telemetry(e.to_string()))?;
    Ok(Telemetry { provider })
}
