//! The policy service's error type; HTTP mapping lives in `http`, in one place.

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
    /// No valid bearer token.
    #[error("{0}")]
    Unauthenticated(String),
    /// Not allowed.
    #[error("not allowed to {action} on {resource} ({reason})")]
    Forbidden {
        /// The action.
        action: String,
        /// The resource's CRN.
        resource: String,
        /// Why not.
        reason: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<capstan_core::CoreError> for PolicyError {
    fn from(e: capstan_core::CoreError) -> Self {
        PolicyError::BadRequest(e.to_string())
    }
}
