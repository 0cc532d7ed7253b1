//! The issuer's error type. HTTP mapping lives in `http::error`, in one place.

use capstan_core::CoreError;
use capstan_db::DbError;

/// Everything that can go wrong in the issuer.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// An OAuth2 protocol error (RFC 6749 §5.2 codes); `invalid_client` answers 401.
    #[error("{code}: {description}")]
    OAuth {
        /// The RFC 6749 error code.
        code: &'static str,
        /// Human-readable detail, safe to show.
        description: String,
    },
    /// The request is malformed or breaks a rule; the message says which.
    #[error("{0}")]
    BadRequest(String),
    /// The named object does not exist in the caller's tenant.
    #[error("{0}")]
    NotFound(String),
    /// The object exists already, or a precondition failed.
    #[error("{0}")]
    Conflict(String),
    /// No valid bearer token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("not allowed to {action} on {resource} ({reason})")]
    Forbidden {
        /// The action asked for.
        action: String,
        /// The resource's CRN.
        resource: String,
        /// Why not.
        reason: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A cryptographic operation failed.
    #[error("crypto: {0}")]
    Crypto(&'static str),
}

impl AuthError {
    /// An OAuth2 error with the given code.
    pub fn oauth(code: &'static str, description: impl Into<String>) -> Self {
        AuthError::OAuth {
            code,
            description: description.into(),
        }
    }
}

impl From<CoreError> for AuthError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Invalid { .. } => AuthError::BadRequest(e.to_string()),
            CoreError::Crypto(what) => AuthError::Crypto(what),
        }
    }
}
