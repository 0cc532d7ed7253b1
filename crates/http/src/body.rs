//! Request bodies. Every extractor here answers the same way:
//! 413 when the body is over the server's limit (`DefaultBodyLimit`), 415 when it declares a
//! content type other than JSON, 400 with the JSON path of the first problem when it does not
//! parse. A body without a `Content-Type` is read as JSON.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body deserialized into `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// A JSON body, or `T::default()` when the body is empty (optional request bodies).
#[derive(Debug)]
pub struct JsonOrDefault<T>(pub T);

/// A JSON document kept as text (policy documents are parsed by their own grammar, which
/// reports errors with JSON paths).
#[derive(Debug)]
pub struct JsonText(pub String);

/// Refuses a declared content type that is not JSON (`application/json` or `*/*+json`).
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let mime = ct
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "the body must be JSON (Content-Type: application/json), not {:?}",
            String::from_utf8_lossy(ct.as_bytes())
        )))
    }
}

/// The error for a body that could not be read.
pub fn rejection(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("the request body is larger than the server's limit".into())
    } else {
        ApiError::BadRequest(r.body_text())
    }
}

/// Reads the body of `req` as bytes, after checking its content type.
async fn json_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    check_content_type(req.headers())?;
    Bytes::from_request(req, state).await.map_err(rejection)
}

/// Every request body of the API is a JSON object: serde would read `[]` as a struct with all
/// its fields defaulted, so anything else is refused before parsing.
fn require_object(bytes: &[u8]) -> Result<(), ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        )),
    }
}

/// Parses JSON, naming the path of the first problem (`$.scopes[1]`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "$".to_owned()
        } else {
            format!("$.{path}")
        };
        ApiError::BadRequest(format!("invalid JSON body at {path}: {}", e.inner()))
    })?;
    Ok(parsed)
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = json_bytes(req, state).await?;
        require_object(&bytes)?;
        parse_json(&bytes).map(JsonBody)
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for JsonOrDefault<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // An absent optional body is accepted whatever its declared type (`curl -d ''`).
        let declared = check_content_type(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(rejection)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonOrDefault(T::default()));
        }
        declared?;
        require_object(&bytes)?;
        parse_json(&bytes).map(JsonOrDefault)
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonText {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = json_bytes(req, state).await?;
        String::from_utf8(bytes.to_vec())
            .map(JsonText)
            .map_err(|_| ApiError::BadRequest("the body must be UTF-8 JSON".into()))
    }
}

/// Query parameters deserialized into `T`; a malformed query is a 400 that says why.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| Query(q))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// Refuses, before any handler runs, a request whose declared `Content-Length` is over `limit`
/// (413), so every route answers the same whether or not it reads its body. Bodies without a
/// length (chunked) are cut by `DefaultBodyLimit` when an extractor reads them. The server's
/// request middleware calls this first.
pub async fn reject_oversized(
    req: Request,
    limit: usize,
) -> Result<Request, axum::response::Response> {
    use axum::response::IntoResponse;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => {
            // Read and drop what was sent (up to a bound), so the client, still writing, gets the
            // 413 rather than a reset connection.
            let mut body = req.into_body();
            let mut drained = 0usize;
            while drained < DRAIN_LIMIT {
                match body.frame().await {
                    Some(Ok(f)) => drained += f.data_ref().map_or(0, |d| d.len()),
                    _ => break,
                }
            }
            let mut r = ApiError::PayloadTooLarge(format!(
                "the request body ({n} bytes) is larger than the limit of {limit} bytes"
            ))
            .into_response();
            r.headers_mut().insert(
                header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            Err(r)
        }
        _ => Ok(req),
    }
}

/// How much of a refused body is read before answering.
const DRAIN_LIMIT: usize = 1 << 20;

/// The longest path parameter (a name, an id, a CRN pattern).
pub const MAX_PATH_PARAM: usize = 1024;

/// Path parameters deserialized into `T`; a parameter that does not decode (invalid UTF-8, a
/// wrong type) or holds a control character is a JSON 400 that says which.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        // Names, ids and CRNs are stored and logged: none may hold a NUL or another control
        // character (Postgres refuses NUL in text, which would fail whatever batch holds it).
        let raw = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        if let Some((name, _)) = raw.iter().find(|(_, v)| v.chars().any(char::is_control)) {
            return Err(ApiError::BadRequest(format!(
                "path parameter {name}: control characters are not allowed"
            )));
        }
        if let Some((name, _)) = raw.iter().find(|(_, v)| v.len() > MAX_PATH_PARAM) {
            return Err(ApiError::BadRequest(format!(
                "path parameter {name}: at most {MAX_PATH_PARAM} bytes"
            )));
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(p)| Path(p))
            .map_err(|e| match e.status() {
                StatusCode::BAD_REQUEST => ApiError::BadRequest(e.body_text()),
                _ => ApiError::Internal(e.body_text()),
            })
    }
}
