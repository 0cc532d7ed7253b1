//! The config service's error type. Its HTTP form is decided by the platform kit
//! (`capstan_http::ApiError`); [`From`] below only converts.

use capstan_core::authz::GuardError;
use capstan_core::CoreError;
use capstan_db::DbError;
use capstan_http::ApiError;
use serde_json::Value;

/// Everything that can go wrong in the config service.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The request is malformed or breaks a rule; the message says which.
    #[error("{0}")]
    BadRequest(String),
    /// The named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A compare-and-set lost, or the object changed concurrently.
    #[error("{0}")]
    Conflict(String),
    /// The values would violate the namespace's JSON Schema; `errors` lists `{path, message}`.
    #[error("{message}")]
    SchemaViolation {
        /// A summary.
        message: String,
        /// Every violation.
        errors: Value,
    },
    /// The server cannot take more of something (watchers).
    #[error("{0}")]
    Busy(String),
    /// Not now (the server is stopping): retry, on another replica.
    #[error("{0}")]
    Unavailable(String),
    /// The guard refused the act, or could not decide.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Sealing or opening a secret failed, or a stored row did not decode.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<CoreError> for ConfigError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Invalid { .. } => ConfigError::BadRequest(e.to_string()),
            CoreError::Crypto(what) => ConfigError::Internal(what.into()),
        }
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> ApiError {
        match e {
            ConfigError::BadRequest(m) => ApiError::BadRequest(m),
            ConfigError::NotFound(m) => ApiError::NotFound(m),
            ConfigError::Conflict(m) => ApiError::Conflict(m),
            ConfigError::SchemaViolation { message, errors } => ApiError::Unprocessable {
                code: "schema_violation",
                message,
                errors,
            },
            ConfigError::Busy(m) => ApiError::TooManyRequests {
                message: m,
                retry_after: 5,
            },
            ConfigError::Unavailable(m) => ApiError::Unavailable(m),
            ConfigError::Guard(g) => g.into(),
            ConfigError::Db(d) => d.into(),
            ConfigError::Internal(m) => ApiError::Internal(m),
        }
    }
}
