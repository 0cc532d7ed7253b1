//! The one API error type, and the one place a failure becomes an HTTP response.
//!
//! Policy:
//! - Every error body is JSON. The `/v1` API answers `{"error": <code>, "message": <text>, …}`;
//!   OAuth endpoints answer RFC 6749 §5.2 `{"error", "error_description"}` with
//!   `Cache-Control: no-store`, and `invalid_client` is 401 with `WWW-Authenticate: Basic`.
//! - 4xx bodies say exactly what is wrong: 400 bad input (invalid documents list every problem
//!   with its JSON path), 401 no valid bearer token (`WWW-Authenticate: Bearer`, RFC 6750),
//!   403 not allowed (with the action, the resource and the reason), 404 unknown, 405 wrong
//!   method, 409 conflict, 413 body over the limit, 415 wrong content type, 422 content that
//!   breaks a rule of its target (a JSON Schema), with every problem and its path.
//! - Storage that cannot be reached is **503 with `Retry-After`**, never 500, 401 or 403: an
//!   outage is not a verdict on the caller.
//! - Anything else is 500 `{"error": "internal", "message": "internal error", "request_id"}`.
//!   The detail goes to the log (with the same request id), never to the client.
//!
//! Services keep one `thiserror` enum each and convert it into [`ApiError`] with `From`; they
//! never build responses themselves.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use capstan_core::authz::{GuardError, VerifyError};
use capstan_db::DbError;
use serde_json::{json, Value};

use crate::request_id;

/// What a 503 asks the client to wait before retrying, in seconds.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// A result whose error is an [`ApiError`].
pub type ApiResult<T> = Result<T, ApiError>;

/// Every way an API request can fail, as the client sees it.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed or breaks a rule; the message says which.
    BadRequest(String),
    /// 400 with a list of problems (each `{path, message}`), under an error code of its own
    /// (`invalid_policy`).
    Invalid {
        /// The error code.
        code: &'static str,
        /// A one-line summary.
        message: String,
        /// The problems.
        errors: Value,
    },
    /// 422: a well-formed request whose content breaks a rule of the target (a config value
    /// violating its namespace's JSON Schema), each problem `{path, message}`.
    Unprocessable {
        /// The error code.
        code: &'static str,
        /// A one-line summary.
        message: String,
        /// The problems.
        errors: Value,
    },
    /// 401: no valid bearer token; the message is safe to show (never storage detail).
    Unauthenticated(String),
    /// 403: the caller may not do this.
    Forbidden {
        /// The action asked for.
        action: String,
        /// The resource's CRN.
        resource: String,
        /// Why not.
        reason: String,
    },
    /// 404: the named object or endpoint does not exist.
    NotFound(String),
    /// 405: the endpoint does not accept the method.
    MethodNotAllowed,
    /// 409: the object exists already, is in use, or was changed concurrently.
    Conflict(String),
    /// 413: the body is larger than the limit.
    PayloadTooLarge(String),
    /// 415: the body's content type is not one the endpoint reads.
    UnsupportedMediaType(String),
    /// 400/401: an OAuth2 protocol error (RFC 6749 §5.2 code); `invalid_client` answers 401.
    OAuth {
        /// The RFC 6749 error code.
        code: &'static str,
        /// Human-readable detail, safe to show.
        description: String,
    },
    /// 429 with `Retry-After`: the caller asked too often; the message says for what.
    TooManyRequests {
        /// What was limited, safe to show.
        message: String,
        /// Seconds until a retry can succeed.
        retry_after: u64,
    },
    /// 503 with `Retry-After`: storage cannot be reached. The detail is logged.
    Unavailable(String),
    /// 500: anything else. The detail is logged, never sent.
    Internal(String),
}

impl ApiError {
    /// An OAuth2 error with the given code.
    pub fn oauth(code: &'static str, description: impl Into<String>) -> ApiError {
        ApiError::OAuth {
            code,
            description: description.into(),
        }
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::OAuth { code, .. } if *code == "invalid_client" => StatusCode::UNAUTHORIZED,
            ApiError::OAuth { .. } => StatusCode::BAD_REQUEST,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Marks a response as uncacheable (RFC 6749 §5.1).
pub fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn body(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(json!({ "error": error, "message": message }))).into_response()
}

/// A 5xx body: a fixed message and the request id, so the logged detail can be found.
fn server_error(status: StatusCode, error: &str, message: &str) -> Response {
    let mut v = json!({ "error": error, "message": message });
    if let Some(id) = request_id::current() {
        v["request_id"] = json!(id);
    }
    no_store((status, Json(v)).into_response())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match self {
            ApiError::BadRequest(m) => body(status, "bad_request", &m),
            ApiError::Invalid {
                code,
                message,
                errors,
            }
            | ApiError::Unprocessable {
                code,
                message,
                errors,
            } => (
                status,
                Json(json!({"error": code, "message": message, "errors": errors})),
            )
                .into_response(),
            ApiError::Unauthenticated(m) => {
                let mut r =
                    (status, Json(capstan_proto::refusal::unauthenticated(&m))).into_response();
                let challenge = capstan_proto::refusal::bearer_challenge(&m);
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                r
            }
            ApiError::Forbidden {
                action,
                resource,
                reason,
            } => (
                status,
                Json(capstan_proto::refusal::forbidden(
                    &action, &resource, &reason,
                )),
            )
                .into_response(),
            ApiError::NotFound(m) => body(status, "not_found", &m),
            ApiError::MethodNotAllowed => body(
                status,
                "method_not_allowed",
                "this endpoint does not accept that method",
            ),
            ApiError::Conflict(m) => body(status, "conflict", &m),
            ApiError::PayloadTooLarge(m) => body(status, "payload_too_large", &m),
            ApiError::UnsupportedMediaType(m) => body(status, "unsupported_media_type", &m),
            ApiError::OAuth { code, description } => {
                let mut r = (
                    status,
                    Json(json!({ "error": code, "error_description": description })),
                )
                    .into_response();
                if status == StatusCode::UNAUTHORIZED {
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"capstan\""),
                    );
                }
                no_store(r)
            }
            ApiError::TooManyRequests {
                message,
                retry_after,
            } => {
                let mut r = body(status, "rate_limited", &message);
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
                r
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "storage unavailable");
                let mut r = server_error(
                    status,
                    "unavailable",
                    "the service is temporarily unavailable; retry later",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
                r
            }
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                server_error(status, "internal", "internal error")
            }
        }
    }
}

impl From<DbError> for ApiError {
    /// A unique violation that reaches here was not mapped at its call site: still a 409.
    fn from(e: DbError) -> ApiError {
        match e {
            DbError::Conflict => ApiError::Conflict("the object exists already".into()),
            e if e.is_unavailable() => ApiError::Unavailable(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<GuardError> for ApiError {
    fn from(e: GuardError) -> ApiError {
        match e {
            GuardError::Forbidden {
                action,
                resource,
                reason,
            } => ApiError::Forbidden {
                action,
                resource,
                reason,
            },
            GuardError::Unavailable => ApiError::Unavailable("authorizer unavailable".into()),
            GuardError::Internal => ApiError::Internal("authorizer failed".into()),
        }
    }
}

impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> ApiError {
        match e {
            VerifyError::Invalid(m) => ApiError::Unauthenticated(m),
            VerifyError::Unavailable => {
                ApiError::Unavailable("token verification unavailable".into())
            }
            VerifyError::Internal => ApiError::Internal("token verification failed".into()),
        }
    }
}

impl From<capstan_core::CoreError> for ApiError {
    fn from(e: capstan_core::CoreError) -> ApiError {
        match e {
            capstan_core::CoreError::Invalid { .. } => ApiError::BadRequest(e.to_string()),
            capstan_core::CoreError::Crypto(what) => ApiError::Internal(what.into()),
        }
    }
}

/// The JSON 404 for a path no route serves.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// The JSON 405 for a method a route does not serve.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
