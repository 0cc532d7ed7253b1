//! The wire types of Capstan's HTTP API, shared by the server, the CLI and the SDK. Plain serde
//! types with OpenAPI schemas: no axum, no sqlx, nothing of the server.

pub mod auth;
pub mod policy;

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
