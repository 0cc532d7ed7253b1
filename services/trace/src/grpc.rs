//! The OTLP/gRPC receiver (`opentelemetry.proto.collector.trace.v1.TraceService/Export`), on its
//! own listener (`--otlp-grpc-listen`, conventionally port 4317), which the server opens and
//! serves with its main listener's connection limits.
//!
//! [`Guarded`] stands in front of the generated server: it authenticates the `authorization`
//! metadata **before** reading the body, reads at most `max_body_bytes`, and inflates a gzip
//! message itself under the receiver's decompression cap and budget (tonic's own decompression
//! is not capped), handing the generated server one uncompressed message. A full queue is
//! `RESOURCE_EXHAUSTED` with a `RetryInfo` of one second (what OTLP clients need to retry it).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService as OtlpTrace, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::TraceError;
use crate::http::{export_response, gunzip};
use crate::service::{Sender, TraceService};

/// The longest one gRPC export may take, from its headers to its answer.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// The gRPC face of the service.
pub struct Grpc(pub Arc<TraceService>);

fn status(e: TraceError) -> tonic::Status {
    let code = e.grpc_code();
    if code == tonic::Code::Internal {
        tracing::error!(error = %e, "trace: gRPC export failed");
    }
    let message = e.public_message();
    if matches!(e, TraceError::Overloaded(_) | TraceError::Unavailable(_)) {
        return tonic::Status::with_error_details(
            code,
            message,
            ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
        );
    }
    tonic::Status::new(code, message)
}

#[tonic::async_trait]
impl OtlpTrace for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        // [`Guarded`] authenticated the request before its body was read.
        let sender = request
            .extensions()
            .get::<Sender>()
            .cloned()
            .ok_or_else(|| tonic::Status::unauthenticated("not authenticated"))?;
        let done = self
            .0
            .ingest(&sender, request.into_inner())
            .await
            .map_err(status)?;
        Ok(tonic::Response::new(export_response(&done)))
    }
}

/// Authentication, body limits and capped gzip in front of the generated server.
#[derive(Clone)]
pub struct Guarded {
    svc: Arc<TraceService>,
    inner: TraceServiceServer<Grpc>,
}

impl NamedService for Guarded {
    const NAME: &'static str = <TraceServiceServer<Grpc> as NamedService>::NAME;
}

/// Holds the decompression budget while the message is decoded and ingested.
#[derive(Clone)]
struct Budget(#[allow(dead_code)] Arc<tokio::sync::OwnedSemaphorePermit>);

async fn prepare(
    svc: &TraceService,
    req: http::Request<Body>,
) -> Result<http::Request<Body>, TraceError> {
    let (mut parts, body) = req.into_parts();
    let auth = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let sender = svc.sender(auth.as_deref()).await?;
    parts.extensions.insert(sender);
    let limit = svc.settings().max_body_bytes + 5;
    let raw = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|_| TraceError::TooLarge(format!("the message is larger than {limit} bytes")))?
        .to_bytes();
    if raw.len() < 5 {
        return Err(TraceError::BadRequest("a gRPC message is missing".into()));
    }
    let declared = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]) as usize;
    if raw.len() != 5 + declared {
        return Err(TraceError::BadRequest(
            "Export takes exactly one gRPC message".into(),
        ));
    }
    let compressed = raw[0] == 1;
    let permit = svc.decode_budget(compressed, declared).await?;
    parts.extensions.insert(Budget(Arc::new(permit)));
    let message = if compressed {
        let encoding = parts
            .headers
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if encoding != "gzip" {
            return Err(TraceError::UnsupportedMediaType(format!(
                "grpc-encoding {encoding:?} is not supported (gzip or none)"
            )));
        }
        Bytes::from(gunzip(&raw[5..], svc.settings().max_decompressed_bytes)?)
    } else {
        raw.slice(5..)
    };
    parts.headers.remove("grpc-encoding");
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    Ok(http::Request::from_parts(
        parts,
        Body::new(http_body_util::Full::new(Bytes::from(framed))),
    ))
}

impl tower::Service<http::Request<Body>> for Guarded {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let svc = self.svc.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            // A sender that trickles its message holds a stream (and a connection slot) for
            // at most this long.
            let answer = tokio::time::timeout(EXPORT_TIMEOUT, async {
                match prepare(&svc, req).await {
                    Ok(req) => tower::Service::call(&mut inner, req).await,
                    Err(e) => Ok(status(e).into_http()),
                }
            });
            match answer.await {
                Ok(r) => r,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "the export took longer than {} s",
                    EXPORT_TIMEOUT.as_secs()
                ))
                .into_http()),
            }
        })
    }
}

/// The gRPC receiver as a router, for the listener the server opens at `--otlp-grpc-listen`
/// (HTTP/2 with prior knowledge, or ALPN `h2` when the server serves TLS).
pub fn router(svc: Arc<TraceService>) -> axum::Router {
    let max = svc.settings().max_decompressed_bytes;
    let inner = TraceServiceServer::new(Grpc(svc.clone())).max_decoding_message_size(max);
    tonic::service::Routes::new(Guarded { svc, inner })
        .prepare()
        .into_axum_router()
}
