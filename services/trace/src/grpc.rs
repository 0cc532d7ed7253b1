//! The OTLP/gRPC receiver (`opentelemetry.proto.collector.trace.v1.TraceService/Export`), on its
//! own listener (`--otlp-grpc-listen`, conventionally port 4317). Requests may be gzip; the
//! bearer token comes in the `authorization` metadata. A full queue is `RESOURCE_EXHAUSTED`
//! with a `RetryInfo` of one second (what OTLP clients need to retry it).

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService as OtlpTrace, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::TraceError;
use crate::http::export_response;
use crate::service::TraceService;

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
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let sender = self.0.sender(auth.as_deref()).await.map_err(status)?;
        let done = self
            .0
            .ingest(&sender, request.into_inner())
            .await
            .map_err(status)?;
        Ok(tonic::Response::new(export_response(&done)))
    }
}

/// Serves the gRPC receiver on `listener` until `stop` turns true.
pub async fn serve(
    svc: Arc<TraceService>,
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let max = svc.settings().max_decompressed_bytes;
    let server = TraceServiceServer::new(Grpc(svc))
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max);
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(server)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
    {
        tracing::error!(error = %e, "trace: the OTLP/gRPC listener failed");
    }
}
