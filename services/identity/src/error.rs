//! The identity service's error type. Its HTTP form is decided by the platform kit
//! (`capstan_http::ApiError`); [`From`] below only converts.

use capstan_core::authz::GuardError;
use capstan_core::CoreError;
use capstan_db::DbError;
use capstan_http::ApiError;

use crate::pki::PkiError;
use crate::spiffe::SpiffeError;

/// Everything that can go wrong in the identity service.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The request is malformed or breaks a rule; the message says which.
    #[error("{0}")]
    BadRequest(String),
    /// The caller did not authenticate (no or a bad join token).
    #[error("{0}")]
    Unauthenticated(String),
    /// The named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object exists already, or a precondition failed.
    #[error("{0}")]
    Conflict(String),
    /// No CA can sign right now (all tainted or expired, and a new one could not be made).
    #[error("{0}")]
    Unavailable(String),
    /// The guard refused the act, or could not decide.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A cryptographic operation failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// Too many requests from one principal.
    #[error("{message}")]
    RateLimited {
        /// What was limited.
        message: String,
        /// Seconds until a retry can succeed.
        retry_after: u64,
    },
}

impl From<CoreError> for IdentityError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Invalid { .. } => IdentityError::BadRequest(e.to_string()),
            CoreError::Crypto(what) => IdentityError::Crypto(what.into()),
        }
    }
}

impl From<SpiffeError> for IdentityError {
    fn from(e: SpiffeError) -> Self {
        IdentityError::BadRequest(e.0)
    }
}

impl From<PkiError> for IdentityError {
    fn from(e: PkiError) -> Self {
        match e {
            PkiError::Invalid(m) => IdentityError::BadRequest(m),
            PkiError::Build(m) => IdentityError::Crypto(m),
        }
    }
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> ApiError {
        match e {
            IdentityError::BadRequest(m) => ApiError::BadRequest(m),
            IdentityError::Unauthenticated(m) => ApiError::Unauthenticated(m),
            IdentityError::NotFound(m) => ApiError::NotFound(m),
            IdentityError::Conflict(m) => ApiError::Conflict(m),
            IdentityError::Unavailable(m) => ApiError::Unavailable(m),
            IdentityError::Guard(g) => g.into(),
            IdentityError::Db(e) => e.into(),
            IdentityError::Crypto(m) => ApiError::Internal(format!("crypto: {m}")),
            IdentityError::RateLimited {
                message,
                retry_after,
            } => ApiError::TooManyRequests {
                message,
                retry_after,
            },
        }
    }
}
