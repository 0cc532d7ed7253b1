//! A tower layer for axum services: authenticates the bearer token offline
//! ([`JwksVerifier`]) and authorizes each request through Capstan's policy engine, with the
//! action and resource a function of the service derives from the route. Refusals have the
//! bodies Capstan itself answers with.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::Json;
use capstan_proto::refusal;
use http::{header, HeaderValue, Request, StatusCode};
use serde_json::json;

use crate::authz::{AuthorizeRequest, Authorizer};
use crate::jwks::{AccessClaims, JwksVerifier, VerifyError};

/// What a request needs: `action` on `resource` (a CRN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Required {
    /// `<service>:<Action>`, e.g. `orders:GetOrder`.
    pub action: String,
    /// The resource's CRN, e.g. `crn:capstan:orders:<tenant>:order/42`.
    pub resource: String,
}

/// The verified caller, put in the request's extensions for the handler.
#[derive(Debug, Clone)]
pub struct Caller(pub AccessClaims);

type RouteFn = dyn Fn(&http::request::Parts, &AccessClaims) -> Option<Required> + Send + Sync;

/// The layer. `route` maps a request (method, path, matched route, extensions) and the caller's
/// claims to what it needs; `None` refuses the request (fail closed: a route the function does
/// not know is not open).
#[derive(Clone)]
pub struct CapstanLayer {
    verifier: JwksVerifier,
    authorizer: Authorizer,
    route: Arc<RouteFn>,
}

impl CapstanLayer {
    /// A layer verifying with `verifier` and deciding with `authorizer`.
    pub fn new(
        verifier: JwksVerifier,
        authorizer: Authorizer,
        route: impl Fn(&http::request::Parts, &AccessClaims) -> Option<Required> + Send + Sync + 'static,
    ) -> CapstanLayer {
        CapstanLayer {
            verifier,
            authorizer,
            route: Arc::new(route),
        }
    }
}

impl<S> tower::Layer<S> for CapstanLayer {
    type Service = CapstanService<S>;

    fn layer(&self, inner: S) -> CapstanService<S> {
        CapstanService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service the layer wraps around a route.
#[derive(Clone)]
pub struct CapstanService<S> {
    inner: S,
    layer: CapstanLayer,
}

fn unauthenticated(message: &str) -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        Json(refusal::unauthenticated(message)),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&refusal::bearer_challenge(message)) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn unavailable(message: &str) -> Response {
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "unavailable", "message": message})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The client certificate (DER) of the TLS connection a request came over: a server that
/// terminates mTLS inserts it into the request's extensions, and [`CapstanLayer`] then accepts
/// certificate-bound tokens (RFC 8705) presented with that certificate only.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub Vec<u8>);

fn bearer(parts: &http::request::Parts) -> Option<&str> {
    let v = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl CapstanLayer {
    /// Decides one request: `Ok` with the caller, or the refusal to send.
    async fn check(&self, parts: &http::request::Parts) -> Result<AccessClaims, Response> {
        let Some(token) = bearer(parts) else {
            return Err(unauthenticated("missing bearer token"));
        };
        let cert = parts
            .extensions
            .get::<ClientCertificate>()
            .map(|c| c.0.as_slice());
        let claims = match self.verifier.verify_presented(token, cert).await {
            Ok(c) => c,
            Err(VerifyError::Invalid(e)) => return Err(unauthenticated(&e.to_string())),
            Err(VerifyError::Unavailable(e)) => {
                tracing::warn!(error = %e, "capstan layer: no signing keys");
                return Err(unavailable("cannot verify tokens right now"));
            }
        };
        let Some(need) = (self.route)(parts, &claims) else {
            let path = parts.uri.path();
            return Err((
                StatusCode::FORBIDDEN,
                Json(refusal::forbidden(
                    "(unmapped)",
                    path,
                    "no_permission_mapped",
                )),
            )
                .into_response());
        };
        let req = AuthorizeRequest {
            principal: None,
            token: Some(token.to_owned()),
            action: need.action.clone(),
            resource: need.resource.clone(),
            context: None,
        };
        // The request's trace (if it has one) goes with the decision into Capstan's log.
        let traceparent = parts
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok());
        match self.authorizer.authorize_traced(req, traceparent).await {
            Ok(d) if d.decision == "Allow" => Ok(claims),
            Ok(d) => Err((
                StatusCode::FORBIDDEN,
                Json(refusal::forbidden(&need.action, &need.resource, &d.reason)),
            )
                .into_response()),
            Err(e) => {
                tracing::warn!(error = %e, action = %need.action, "capstan layer: authorization failed");
                // Fail closed: no decision, no access.
                Err(unavailable("cannot authorize right now"))
            }
        }
    }
}

impl<S> tower::Service<Request<Body>> for CapstanService<S>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The ready clone serves this request; a fresh clone stays for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            match layer.check(&parts).await {
                Ok(claims) => {
                    parts.extensions.insert(Caller(claims));
                    inner.call(Request::from_parts(parts, body)).await
                }
                Err(refusal) => Ok(refusal),
            }
        })
    }
}
