//! OAuth2 endpoints: discovery, JWKS, token, introspection, revocation.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use capstan_core::ids::TenantId;
use capstan_http::{no_store, ApiResult, Path, PeerCertificate};
use serde_json::json;

use crate::error::AuthError;
use crate::tokens::{ClientCredentials, Introspection, TokenResponse};
use crate::AuthService;

type Svc = State<capstan_http::Api<AuthService>>;

/// The bytes of a form body, or the kit's 413/400.
fn form_body(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(capstan_http::body::rejection)
}

fn oauth_err(code: &'static str, msg: impl Into<String>) -> AuthError {
    AuthError::oauth(code, msg)
}

/// A tenant named in the path that exists.
async fn tenant(svc: &AuthService, raw: &str) -> Result<TenantId, AuthError> {
    let unknown = || AuthError::NotFound(format!("tenant {raw:?} does not exist"));
    let id = TenantId::parse(raw).map_err(|_| unknown())?;
    if svc.tenant_exists(&id).await? {
        Ok(id)
    } else {
        Err(unknown())
    }
}

/// Server metadata (RFC 8414; also served as OpenID Provider metadata).
async fn metadata(svc: &AuthService, raw: &str) -> Result<Response, AuthError> {
    let id = tenant(svc, raw).await?;
    let iss = svc.issuer(&id);
    let algs = svc.tenant_algs(&id).await?;
    let auth_methods = [
        "client_secret_basic",
        "client_secret_post",
        "tls_client_auth",
    ];
    let doc = json!({
        "issuer": iss,
        "token_endpoint": format!("{iss}/oauth2/token"),
        "jwks_uri": format!("{iss}/oauth2/jwks"),
        "introspection_endpoint": format!("{iss}/oauth2/introspect"),
        "revocation_endpoint": format!("{iss}/oauth2/revoke"),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": [],
        "subject_types_supported": ["public"],
        "scopes_supported": [],
        "token_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": [],
        "id_token_signing_alg_values_supported": algs,
        "access_token_signing_alg_values_supported": algs,
        // RFC 8705 §3.3: tokens of tls_client_auth clients are bound to their certificate.
        "tls_client_certificate_bound_access_tokens": true,
    });
    Ok(Json(doc).into_response())
}

/// OpenID Provider configuration of a tenant.
#[utoipa::path(get, path = "/t/{tenant}/.well-known/openid-configuration", tag = "oauth2",
    params(("tenant" = String, Path, description = "Tenant id")),
    responses((status = 200, description = "Provider metadata"), (status = 404, description = "Unknown tenant")))]
pub(crate) async fn openid_configuration(
    State(svc): Svc,
    Path(t): Path<String>,
) -> ApiResult<Response> {
    Ok(metadata(&svc, &t).await?)
}

/// RFC 8414 authorization server metadata of a tenant.
#[utoipa::path(get, path = "/.well-known/oauth-authorization-server/t/{tenant}", tag = "oauth2",
    params(("tenant" = String, Path, description = "Tenant id")),
    responses((status = 200, description = "Server metadata"), (status = 404, description = "Unknown tenant")))]
pub(crate) async fn oauth_metadata(State(svc): Svc, Path(t): Path<String>) -> ApiResult<Response> {
    Ok(metadata(&svc, &t).await?)
}

/// The tenant's published signing keys (RFC 7517).
#[utoipa::path(get, path = "/t/{tenant}/oauth2/jwks", tag = "oauth2",
    params(("tenant" = String, Path, description = "Tenant id")),
    responses((status = 200, description = "JSON Web Key Set"), (status = 404, description = "Unknown tenant")))]
pub(crate) async fn jwks(State(svc): Svc, Path(t): Path<String>) -> ApiResult<Response> {
    let id = tenant(&svc, &t).await?;
    let doc = svc.jwks(&id).await?;
    // Caches may hold the set for at most the publish delay, so a rotated key is seen before it
    // signs.
    let max_age = svc.config().key_publish_delay.clamp(0, 300);
    let mut r = Json(doc).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        r.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    Ok(r)
}

/// No OAuth2 request needs more parameters than this; more is refused before any lookup.
const MAX_FORM_PARAMETERS: usize = 32;

/// A parsed `application/x-www-form-urlencoded` body. Repeated parameters are refused
/// (RFC 6749 §3.2).
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Form, AuthError> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(oauth_err(
                "invalid_request",
                "content type must be application/x-www-form-urlencoded",
            ));
        }
        let mut out: Vec<(String, String)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (k, v) in form_urlencoded::parse(body) {
            if out.len() == MAX_FORM_PARAMETERS {
                return Err(oauth_err(
                    "invalid_request",
                    format!("at most {MAX_FORM_PARAMETERS} parameters"),
                ));
            }
            if !seen.insert(k.clone()) {
                return Err(oauth_err(
                    "invalid_request",
                    format!("parameter {k:?} is repeated"),
                ));
            }
            out.push((k.into_owned(), v.into_owned()));
        }
        Ok(Form(out))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// Decodes `%XX` and `+` as in `application/x-www-form-urlencoded` (RFC 6749 §2.3.1 encodes
/// Basic credentials this way).
fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// How a client authenticates at an OAuth2 endpoint.
enum ClientAuth {
    /// `client_secret_basic` or `client_secret_post`.
    Secret(ClientCredentials),
    /// `tls_client_auth` (RFC 8705 §2): `client_id` in the form, the certificate on the
    /// connection.
    Certificate(String),
}

/// Client credentials from `client_secret_basic`, `client_secret_post` or (with a client
/// certificate on the connection) `tls_client_auth`; using two is an error.
fn credentials(headers: &HeaderMap, form: &Form, has_cert: bool) -> Result<ClientAuth, AuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| oauth_err("invalid_client", "malformed Authorization header"))?;
            match v.split_once(' ') {
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => {
                    let malformed = || oauth_err("invalid_client", "malformed Basic credentials");
                    let raw = STANDARD.decode(rest.trim()).map_err(|_| malformed())?;
                    let raw = String::from_utf8(raw).map_err(|_| malformed())?;
                    let (id, secret) = raw.split_once(':').ok_or_else(malformed)?;
                    Some(ClientCredentials {
                        client_id: form_decode(id).ok_or_else(malformed)?,
                        client_secret: form_decode(secret).ok_or_else(malformed)?,
                    })
                }
                _ => None,
            }
        }
        None => None,
    };
    let post = match (form.get("client_id"), form.get("client_secret")) {
        (Some(id), Some(secret)) => Some(ClientCredentials {
            client_id: id.to_owned(),
            client_secret: secret.to_owned(),
        }),
        (Some(id), None) if has_cert => {
            if basic.is_some() {
                return Err(oauth_err(
                    "invalid_request",
                    "use one client authentication method, not both",
                ));
            }
            return Ok(ClientAuth::Certificate(id.to_owned()));
        }
        (Some(_), None) => {
            return Err(oauth_err(
                "invalid_client",
                "client_secret is required with client_id (or a client certificate, for tls_client_auth)",
            ))
        }
        _ => None,
    };
    match (basic, post) {
        (Some(_), Some(_)) => Err(oauth_err(
            "invalid_request",
            "use one client authentication method, not both",
        )),
        (Some(c), None) | (None, Some(c)) => Ok(ClientAuth::Secret(c)),
        (None, None) => Err(oauth_err(
            "invalid_client",
            "client authentication is required (client_secret_basic, client_secret_post, or tls_client_auth with client_id)",
        )),
    }
}

/// The authenticated client, and for `tls_client_auth` the thumbprint its tokens are bound
/// to (RFC 8705 §3).
async fn authenticate(
    svc: &AuthService,
    tenant: &TenantId,
    headers: &HeaderMap,
    form: &Form,
    peer: Option<&PeerCertificate>,
) -> Result<(Arc<crate::model::Client>, Option<String>), AuthError> {
    match (credentials(headers, form, peer.is_some())?, peer) {
        (ClientAuth::Secret(c), _) => Ok((svc.authenticate_client(tenant, &c).await?, None)),
        (ClientAuth::Certificate(id), Some(p)) => {
            let client = svc
                .authenticate_client_certificate(tenant, &id, p.spiffe_id.as_deref())
                .await?;
            Ok((client, Some(p.x5t_s256.clone())))
        }
        (ClientAuth::Certificate(_), None) => Err(oauth_err(
            "invalid_client",
            "tls_client_auth needs a client certificate on the connection",
        )),
    }
}

async fn token_inner(
    svc: &AuthService,
    t: &str,
    headers: &HeaderMap,
    body: &[u8],
    peer: Option<&PeerCertificate>,
) -> Result<TokenResponse, AuthError> {
    let id = tenant(svc, t).await?;
    let form = Form::parse(headers, body)?;
    let grant = form
        .get("grant_type")
        .ok_or_else(|| oauth_err("invalid_request", "grant_type is required"))?
        .to_owned();
    let (client, bound_to) = authenticate(svc, &id, headers, &form, peer).await?;
    match grant.as_str() {
        "client_credentials" => {
            svc.issue_client_credentials(
                &id,
                &client,
                form.get("scope"),
                form.get("audience"),
                bound_to,
            )
            .await
        }
        other => Err(oauth_err(
            "unsupported_grant_type",
            format!("grant_type {other:?} is not supported"),
        )),
    }
}

/// The token endpoint: `grant_type=client_credentials` with `client_secret_basic` or
/// `client_secret_post`, optional `scope` and `audience` (space-separated).
#[utoipa::path(post, path = "/t/{tenant}/oauth2/token", tag = "oauth2",
    params(("tenant" = String, Path, description = "Tenant id")),
    request_body(content_type = "application/x-www-form-urlencoded", description = "grant_type, scope, audience, client_id, client_secret"),
    responses((status = 200, body = TokenResponse), (status = 400, description = "RFC 6749 error"), (status = 401, description = "invalid_client")))]
pub(crate) async fn token(
    State(svc): Svc,
    Path(t): Path<String>,
    headers: HeaderMap,
    peer: Option<Extension<PeerCertificate>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = form_body(body)?;
    let peer = peer.map(|Extension(p)| p);
    match token_inner(&svc, &t, &headers, &body, peer.as_ref()).await {
        Ok(tok) => Ok(no_store(Json(tok).into_response())),
        Err(e) => {
            if matches!(e, AuthError::OAuth { .. }) {
                svc.metrics
                    .token_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e.into())
        }
    }
}

async fn authenticated_form(
    svc: &AuthService,
    t: &str,
    headers: &HeaderMap,
    body: &[u8],
    peer: Option<Extension<PeerCertificate>>,
) -> Result<(TenantId, Arc<crate::model::Client>, Form), AuthError> {
    let id = tenant(svc, t).await?;
    let form = Form::parse(headers, body)?;
    let peer = peer.map(|Extension(p)| p);
    let (client, _) = authenticate(svc, &id, headers, &form, peer.as_ref()).await?;
    Ok((id, client, form))
}

/// Token introspection (RFC 7662). The caller authenticates as a client. With `audience`, a token
/// not meant for that audience is reported inactive.
#[utoipa::path(post, path = "/t/{tenant}/oauth2/introspect", tag = "oauth2",
    params(("tenant" = String, Path, description = "Tenant id")),
    request_body(content_type = "application/x-www-form-urlencoded", description = "token, token_type_hint, audience"),
    responses((status = 200, body = Introspection), (status = 401, description = "invalid_client")))]
pub(crate) async fn introspect(
    State(svc): Svc,
    Path(t): Path<String>,
    headers: HeaderMap,
    peer: Option<Extension<PeerCertificate>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = form_body(body)?;
    let (id, _client, form) = authenticated_form(&svc, &t, &headers, &body, peer).await?;
    let token = form
        .get("token")
        .ok_or_else(|| oauth_err("invalid_request", "token is required"))?;
    let i: Introspection = svc.introspect(&id, token, form.get("audience")).await?;
    Ok(no_store(Json(i).into_response()))
}

/// Token revocation (RFC 7009). Unknown or invalid tokens answer 200 too.
#[utoipa::path(post, path = "/t/{tenant}/oauth2/revoke", tag = "oauth2",
    params(("tenant" = String, Path, description = "Tenant id")),
    request_body(content_type = "application/x-www-form-urlencoded", description = "token, token_type_hint"),
    responses((status = 200, description = "Revoked (or nothing to revoke)"), (status = 401, description = "invalid_client")))]
pub(crate) async fn revoke(
    State(svc): Svc,
    Path(t): Path<String>,
    headers: HeaderMap,
    peer: Option<Extension<PeerCertificate>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = form_body(body)?;
    let (id, client, form) = authenticated_form(&svc, &t, &headers, &body, peer).await?;
    let token = form
        .get("token")
        .ok_or_else(|| oauth_err("invalid_request", "token is required"))?;
    svc.revoke(
        &id,
        &client,
        token,
        capstan_http::bearer::trace_id(&headers),
    )
    .await?;
    Ok(no_store(StatusCode::OK.into_response()))
}

#[cfg(test)]
mod tests {
    use super::{form_decode, Form};
    use axum::http::{header, HeaderMap, HeaderValue};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any body, up to the server's limit, parses or is refused with an OAuth error,
        /// quickly: no panic, no quadratic case (repeats are a set lookup, parameters capped).
        #[test]
        fn the_form_parser_takes_anything(
            noise in proptest::collection::vec(
                prop_oneof![Just(b'&'), Just(b'='), Just(b'%'), Just(b'a'), any::<u8>()],
                0..512,
            ),
            params in 0usize..8_000,
            repeat in any::<bool>(),
        ) {
            // Random bytes, then up to 8,000 parameters (distinct, or one repeated): the shapes
            // that were quadratic, up to the 64 KiB body limit.
            let mut body = noise;
            for i in 0..params {
                let name = if repeat { 0 } else { i };
                body.extend_from_slice(format!("&p{name}=v").as_bytes());
            }
            body.truncate(65_536);
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            let start = std::time::Instant::now();
            let _ = Form::parse(&headers, &body);
            let decoded = form_decode(&String::from_utf8_lossy(&body));
            prop_assert!(start.elapsed() < std::time::Duration::from_millis(50), "{:?}", start.elapsed());
            let _ = decoded;
        }
    }

    #[test]
    fn decodes_form_encoding() {
        assert_eq!(form_decode("a%3Ab+c").as_deref(), Some("a:b c"));
        assert_eq!(form_decode("%zz"), None);
        assert_eq!(form_decode("%4"), None);
    }
}
