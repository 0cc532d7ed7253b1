//! How [`AuthError`] becomes an HTTP response — the one place that decides it.
//!
//! - OAuth endpoints answer RFC 6749 §5.2 bodies `{error, error_description}`; `invalid_client`
//!   is 401 with `WWW-Authenticate: Basic`. They are never cached.
//! - The `/v1` API answers `{error, message}` with the status of the failure: 400 bad input,
//!   401 (`WWW-Authenticate: Bearer`, RFC 6750) no valid token, 403 not allowed, 404 unknown,
//!   409 conflict, 413 body too large.
//! - Storage and crypto failures are 500 with `{error: "internal", message: "internal error"}`;
//!   the detail is logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::AuthError;

/// Marks a response as uncacheable (RFC 6749 §5.1).
pub(crate) fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn body(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(json!({ "error": error, "message": message }))).into_response()
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        match self {
            AuthError::OAuth { code, description } => {
                let status = if code == "invalid_client" {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::BAD_REQUEST
                };
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
            AuthError::BadRequest(m) => body(StatusCode::BAD_REQUEST, "bad_request", &m),
            AuthError::NotFound(m) => body(StatusCode::NOT_FOUND, "not_found", &m),
            AuthError::Conflict(m) => body(StatusCode::CONFLICT, "conflict", &m),
            AuthError::Unauthenticated(m) => {
                let mut r = body(StatusCode::UNAUTHORIZED, "unauthenticated", &m);
                let challenge = format!(
                    "Bearer realm=\"capstan\", error=\"invalid_token\", error_description=\"{}\"",
                    m.replace('"', "'")
                );
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                r
            }
            AuthError::Forbidden {
                action,
                resource,
                reason,
            } => (
                StatusCode::FORBIDDEN,
                Json(json!({
                    "error": "forbidden",
                    "message": format!("not allowed to {action} on {resource}"),
                    "action": action,
                    "resource": resource,
                    "reason": reason,
                })),
            )
                .into_response(),
            AuthError::Db(e) => {
                tracing::error!(error = %e, "storage failure");
                body(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
            AuthError::Crypto(e) => {
                tracing::error!(error = %e, "crypto failure");
                body(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

/// Reads a `Result<Bytes, BytesRejection>` extractor, or returns the JSON error response.
macro_rules! body_or_return {
    ($b:expr) => {
        match $b {
            Ok(b) => b,
            Err(r) => return $crate::http::error::body_rejection(r),
        }
    };
}
pub(crate) use body_or_return;

/// The error for a body that could not be read (too large, or the connection failed).
pub(crate) fn body_rejection(r: axum::extract::rejection::BytesRejection) -> Response {
    let status = r.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "request body is too large".to_owned()
    } else {
        r.body_text()
    };
    body(status, "bad_request", &message)
}
