//! The wire types of Capstan's HTTP API, shared by the server, the CLI and the SDK. Plain serde
//! types with OpenAPI schemas: no axum, no sqlx, nothing of the server.

pub mod auth;
pub mod config;
pub mod identity;
pub mod policy;
pub mod trace;

use serde::{Deserialize, Serialize};

/// The body of every `/v1` error answer (the server adds fields such as `action`, `resource`,
/// `reason` on a 403, `errors` on an invalid document, `request_id` on a 5xx).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable code: `bad_request`, `unauthenticated`, `forbidden`, `not_found`, `conflict`,
    /// `payload_too_large`, `unsupported_media_type`, `unavailable`, `internal`, …
    pub error: String,
    /// What is wrong, for a person.
    pub message: String,
    /// The request id, on server errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The bodies and challenges of Capstan's authentication and authorization refusals, built in
/// one place for the server and for the SDK's layer (a service protected by the SDK answers
/// exactly as Capstan does).
pub mod refusal {
    use serde_json::{json, Value};

    /// The body of a 401.
    pub fn unauthenticated(message: &str) -> Value {
        json!({"error": "unauthenticated", "message": message})
    }

    /// The `WWW-Authenticate` challenge of a 401 for a bearer token (RFC 6750 §3).
    pub fn bearer_challenge(message: &str) -> String {
        format!(
            "Bearer realm=\"capstan\", error=\"invalid_token\", error_description=\"{}\"",
            message.replace(['"', '\\'], "'")
        )
    }

    /// The body of a 403: what was asked, on what, and why not.
    pub fn forbidden(action: &str, resource: &str, reason: &str) -> Value {
        json!({
            "error": "forbidden",
            "message": format!("not allowed to {action} on {resource}"),
            "action": action,
            "resource": resource,
            "reason": reason,
        })
    }
}
