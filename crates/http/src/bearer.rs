//! The authenticated caller of a `/v1` request, and the router state that verifies it.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use capstan_core::authz::{Caller, TokenVerifier};
use capstan_core::trace_context::parse_traceparent;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::error::ApiError;

/// The token verifier in a router's state (the issuer, in every server).
#[derive(Clone)]
pub struct Verifier(pub Arc<dyn TokenVerifier>);

/// The state of a service's router: the service, and the verifier [`Bearer`] uses. It
/// dereferences to the service, so handlers call the service's methods on it directly.
pub struct Api<T: ?Sized> {
    /// The service.
    pub svc: Arc<T>,
    /// Verifies bearer tokens.
    pub verifier: Verifier,
}

impl<T: ?Sized> Api<T> {
    /// The state of a router over `svc`, verifying bearer tokens with `verifier`.
    pub fn new(svc: Arc<T>, verifier: Arc<dyn TokenVerifier>) -> Api<T> {
        Api {
            svc,
            verifier: Verifier(verifier),
        }
    }
}

impl<T: ?Sized> Clone for Api<T> {
    fn clone(&self) -> Self {
        Api {
            svc: self.svc.clone(),
            verifier: self.verifier.clone(),
        }
    }
}

impl<T: ?Sized> Deref for Api<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.svc
    }
}

impl<T: ?Sized> FromRef<Api<T>> for Verifier {
    fn from_ref(api: &Api<T>) -> Verifier {
        api.verifier.clone()
    }
}

/// The caller of a `/v1` request: a bearer access token with the Capstan API audience,
/// verified by the state's [`Verifier`]. An invalid token is 401; a verification that could not
/// reach storage is 503. The caller carries the trace id of the request's `traceparent`, if
/// valid ([`trace_id`]), so the decisions made for the request can be found by trace.
pub struct Bearer(pub Caller);

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthenticated("a bearer access token is required".into()))?
        .to_str()
        .map_err(|_| ApiError::Unauthenticated("the Authorization header is malformed".into()))?;
    match value.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
            Ok(t.trim())
        }
        _ => Err(ApiError::Unauthenticated(
            "the Authorization header must use the Bearer scheme".into(),
        )),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Bearer
where
    Verifier: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Verifier(verifier) = Verifier::from_ref(state);
        // A bearer token wins; without one, an X.509-SVID the TLS layer verified stands in.
        let svid = parts
            .extensions
            .get::<PeerCertificate>()
            .and_then(|c| Some((c.spiffe_id.clone()?, c.serial.clone())));
        let mut caller = match svid {
            Some((id, serial)) if !parts.headers.contains_key(header::AUTHORIZATION) => {
                verifier.authenticate_svid(&id, &serial).await?
            }
            _ => verifier.authenticate_caller(bearer_token(parts)?).await?,
        };
        check_binding(&caller, parts.extensions.get::<PeerCertificate>())?;
        caller.source_ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip().to_string());
        caller.trace_id = trace_id(&parts.headers);
        Ok(Bearer(caller))
    }
}

/// The trace id of the request's `traceparent` header (W3C Trace Context). A request with no
/// valid one is in no known trace: an invalid value is ignored, and so are two or more headers,
/// as the specification says.
pub fn trace_id(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => Some(parse_traceparent(v.to_str().ok()?)?.trace_id),
        _ => None,
    }
}

/// The W3C Trace Context header.
const TRACEPARENT: &str = "traceparent";

/// The client certificate of the request's TLS connection, verified by the TLS layer against
/// the trust bundle (chain, validity, clientAuth): what RFC 8705 binds tokens to and what
/// authenticates a workload by its SVID.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// The end-entity certificate, DER.
    pub der: Arc<[u8]>,
    /// Its SPIFFE ID (its one URI SAN), if it has exactly one `spiffe://` URI.
    pub spiffe_id: Option<String>,
    /// Its serial number, lowercase hex.
    pub serial: String,
    /// Its RFC 8705 thumbprint (`x5t#S256`: base64url of the DER's SHA-256).
    pub x5t_s256: String,
}

/// A certificate-bound token (RFC 8705 §3) is good only over a connection presenting that
/// certificate: every place that accepts a bearer token checks this.
pub fn check_binding(caller: &Caller, peer: Option<&PeerCertificate>) -> Result<(), ApiError> {
    let Some(bound) = &caller.bound_to else {
        return Ok(());
    };
    if peer.is_some_and(|c| &c.x5t_s256 == bound) {
        Ok(())
    } else {
        Err(ApiError::Unauthenticated(
            "this token is bound to a client certificate that this connection does not present"
                .into(),
        ))
    }
}

/// Adds the `bearer` (JWT) security scheme to an OpenAPI document; every guarded path names it.
pub struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
