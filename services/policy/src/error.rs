//! The policy service's error type. Its HTTP form is decided by the platform kit
//! (`capstan_http::ApiError`); `http` only converts.

use capstan_db::DbError;
use capstan_iam::Issue;

/// Everything that can go wrong in the policy service.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The request is malformed; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// A policy document is invalid; every problem with its JSON path.
    #[error("invalid policy document")]
    InvalidDocument(Vec<Issue>),
    /// The named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object exists already, or is still in use.
    #[error("{0}")]
    Conflict(String),
    /// The guard refused the act, or could not decide.
    #[error(transparent)]
    Guard(#[from] capstan_core::authz::GuardError),
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<capstan_core::CoreError> for PolicyError {
    fn from(e: capstan_core::CoreError) -> Self {
        PolicyError::BadRequest(e.to_string())
    }
}
