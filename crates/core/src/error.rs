use thiserror::Error;

/// Errors of the shared kernel.
#[derive(Debug, Error)]
pub enum CoreError {
    /// A value did not parse; the message says which rule it broke.
    #[error("{what}: {reason}")]
    Invalid {
        /// The kind of value, e.g. "tenant id".
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A cryptographic primitive failed (bad key material, failed decryption, no entropy).
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
}

impl CoreError {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        CoreError::Invalid {
            what,
            reason: reason.into(),
        }
    }
}
