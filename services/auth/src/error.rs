//! The issuer's error type. Its HTTP form is decided by the platform kit (`capstan_http::ApiError`);
//! `http::error` only converts.

use capstan_core::authz::GuardError;
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
    /// The guard refused the act, or could not decide.
    #[error(transparent)]
    Guard(#[from] GuardError),
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
