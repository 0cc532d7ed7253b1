//! The trace service's error type. Its HTTP form is decided by the platform kit
//! (`capstan_http::ApiError`), and the OTLP receivers give it as a `google.rpc.Status` with the
//! same status ([`TraceError::grpc_code`]).

use capstan_core::authz::{GuardError, VerifyError};
use capstan_db::DbError;
use capstan_http::ApiError;

/// Everything that can go wrong in the trace service.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Malformed input; the message says what.
    #[error("{0}")]
    BadRequest(String),
    /// No credentials, or bad ones.
    #[error("{0}")]
    Unauthenticated(String),
    /// Not found (or not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// A body over the limit (before or after decompression).
    #[error("{0}")]
    TooLarge(String),
    /// A content type or encoding the receiver does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The ingest queue is full: retry after a second.
    #[error("{0}")]
    Overloaded(String),
    /// Storage or the authorizer cannot be reached, or the server is stopping.
    #[error("{0}")]
    Unavailable(String),
    /// The guard refused the act, or could not decide.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Something else failed (logged).
    #[error("internal: {0}")]
    Internal(String),
}

impl From<VerifyError> for TraceError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Invalid(m) => TraceError::Unauthenticated(m),
            VerifyError::Unavailable => {
                TraceError::Unavailable("token verification unavailable".into())
            }
            VerifyError::Internal => TraceError::Internal("token verification failed".into()),
        }
    }
}

impl From<TraceError> for ApiError {
    fn from(e: TraceError) -> ApiError {
        match e {
            TraceError::BadRequest(m) => ApiError::BadRequest(m),
            TraceError::Unauthenticated(m) => ApiError::Unauthenticated(m),
            TraceError::NotFound(m) => ApiError::NotFound(m),
            TraceError::TooLarge(m) => ApiError::PayloadTooLarge(m),
            TraceError::UnsupportedMediaType(m) => ApiError::UnsupportedMediaType(m),
            TraceError::Overloaded(m) => ApiError::TooManyRequests {
                message: m,
                retry_after: 1,
            },
            TraceError::Unavailable(m) => ApiError::Unavailable(m),
            TraceError::Guard(g) => g.into(),
            TraceError::Db(d) => d.into(),
            TraceError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl TraceError {
    /// The gRPC status code of this error (`google.rpc.Code`).
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            TraceError::BadRequest(_) | TraceError::UnsupportedMediaType(_) => {
                tonic::Code::InvalidArgument
            }
            TraceError::Unauthenticated(_) => tonic::Code::Unauthenticated,
            TraceError::NotFound(_) => tonic::Code::NotFound,
            TraceError::TooLarge(_) | TraceError::Overloaded(_) => tonic::Code::ResourceExhausted,
            TraceError::Unavailable(_) => tonic::Code::Unavailable,
            TraceError::Guard(GuardError::Forbidden { .. }) => tonic::Code::PermissionDenied,
            TraceError::Guard(GuardError::Unavailable) => tonic::Code::Unavailable,
            TraceError::Db(d) if d.is_unavailable() => tonic::Code::Unavailable,
            TraceError::Guard(GuardError::Internal)
            | TraceError::Db(_)
            | TraceError::Internal(_) => tonic::Code::Internal,
        }
    }

    /// A message safe to send (internal details go to the log only).
    pub fn public_message(&self) -> String {
        match self {
            TraceError::Db(d) if d.is_unavailable() => "storage is unavailable".into(),
            TraceError::Db(_)
            | TraceError::Internal(_)
            | TraceError::Guard(GuardError::Internal) => "internal error".into(),
            e => e.to_string(),
        }
    }
}
