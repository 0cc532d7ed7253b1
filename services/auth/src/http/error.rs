//! How an [`AuthError`] is reported: converted into the platform kit's
//! [`ApiError`](capstan_http::ApiError), which alone decides statuses and bodies.

use capstan_http::ApiError;

use crate::error::AuthError;

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        match e {
            AuthError::OAuth { code, description } => ApiError::OAuth { code, description },
            AuthError::BadRequest(m) => ApiError::BadRequest(m),
            AuthError::NotFound(m) => ApiError::NotFound(m),
            AuthError::Conflict(m) => ApiError::Conflict(m),
            AuthError::Guard(g) => g.into(),
            AuthError::Db(e) => e.into(),
            AuthError::Crypto(what) => ApiError::Internal(format!("crypto: {what}")),
        }
    }
}
