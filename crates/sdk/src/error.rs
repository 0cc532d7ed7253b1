//! The SDK's one error type.

use std::time::Duration;

use serde_json::Value;

/// What can go wrong talking to Capstan.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection could be made (refused, DNS, TLS).
    #[error("cannot reach Capstan at {url}: {detail}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// What the transport said.
        detail: String,
    },
    /// No answer within the timeout.
    #[error("Capstan at {url} did not answer within {timeout:?}")]
    Timeout {
        /// The URL tried.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// Capstan answered with an error (the `/v1` body: `error`, `message`, and on a 403
    /// `action`, `resource`, `reason`).
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The stable error code (`forbidden`, `not_found`, …).
        code: String,
        /// What is wrong.
        message: String,
        /// The whole body.
        body: Value,
    },
    /// The token endpoint refused the request (RFC 6749 §5.2).
    #[error("token request refused: {error}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    OAuth {
        /// The OAuth error code (`invalid_client`, …).
        error: String,
        /// The description.
        description: Option<String>,
    },
    /// An answer that is not what the API promises.
    #[error("unexpected answer from Capstan: {0}")]
    Protocol(String),
    /// A setting is wrong (a URL that does not parse, …).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A config value is not of the type asked for, or is a masked secret.
    #[error("config key {key:?}: {detail}")]
    Value {
        /// The key.
        key: String,
        /// What is wrong with its value.
        detail: String,
    },
    /// The trace collector took an export but refused some of its spans (OTLP partial
    /// success), typically because the principal may not `trace:Ingest` the service they
    /// claim.
    #[error("the trace collector refused {rejected} span(s): {message}")]
    SpansRefused {
        /// How many spans were refused.
        rejected: i64,
        /// Why, as the collector said.
        message: String,
    },
    /// A local file (a config snapshot file) could not be read or written.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
}

impl Error {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether retrying later may succeed: Capstan unreachable or slow, a 408, 429 or 5xx, or
    /// an answer that broke off. A 4xx (a refused token, a denial, a bad request) will not
    /// change by itself.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Timeout { .. } | Error::Protocol(_) => true,
            Error::Api { status, .. } => matches!(status, 408 | 429) || *status >= 500,
            _ => false,
        }
    }

    /// Whether Capstan could not be reached or did not answer in time.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Timeout { .. })
    }
}
