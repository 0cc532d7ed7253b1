//! Logging and tracing: `tracing` to stderr (pretty or JSON), and spans exported over OTLP/HTTP
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the exporter honours the standard `OTEL_*`
//! variables).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;
use crate::error::ServerError;

/// Keeps the exporter alive; flushes spans when dropped.
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

/// Installs the global subscriber.
pub fn init(
    format: LogFormat,
    filter: Option<&str>,
    otlp_endpoint: Option<String>,
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
    let provider = match otlp_endpoint.filter(|e| !e.is_empty()) {
        Some(_) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .map_err(|e| ServerError::Telemetry(e.to_string()))?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name("capstan")
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("capstan")));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| ServerError::Telemetry(e.to_string()))?;
    Ok(Telemetry { provider })
}
