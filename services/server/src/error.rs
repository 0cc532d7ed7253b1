//! The server's error type.

/// Why the server could not start or a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Invalid configuration; the message says which setting.
    #[error("{0}")]
    Config(String),
    /// Database failure.
    #[error("database: {0}")]
    Db(#[from] capstan_db::DbError),
    /// Issuer failure.
    #[error(transparent)]
    Auth(#[from] capstan_auth::AuthError),
    /// Policy service failure.
    #[error(transparent)]
    Policy(#[from] capstan_policy::PolicyError),
    /// A service failed to build or start.
    #[error("service {name}: {message}")]
    Service {
        /// The service.
        name: &'static str,
        /// What went wrong.
        message: String,
    },
    /// I/O failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Telemetry setup failure.
    #[error("telemetry: {0}")]
    Telemetry(String),
}

impl From<capstan_core::CoreError> for ServerError {
    fn from(e: capstan_core::CoreError) -> Self {
        ServerError::Config(e.to_string())
    }
}
