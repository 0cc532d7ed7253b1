//! The `/v1` administration API (bearer access token with the Capstan API audience).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use capstan_core::authz::Caller;
use serde::de::DeserializeOwned;

use super::error::body_or_return;
use crate::admin::{
    ClientView, ClientWithSecret, CreatedTenant, KeyView, NewClient, NewTenant, RotateKey,
    RotateSecret, TenantView,
};
use crate::error::AuthError;
use crate::AuthService;

type Svc = State<Arc<AuthService>>;

/// The authenticated caller of a `/v1` request.
pub struct Bearer(pub Caller);

impl FromRequestParts<Arc<AuthService>> for Bearer {
    type Rejection = AuthError;

    async fn from_request_parts(
        parts: &mut Parts,
        svc: &Arc<AuthService>,
    ) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                AuthError::Unauthenticated("a bearer access token is required".into())
            })?;
        let token = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => {
                return Err(AuthError::Unauthenticated(
                    "the Authorization header must use the Bearer scheme".into(),
                ))
            }
        };
        let mut caller = svc.authenticate_bearer(token).await?;
        caller.source_ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|axum::extract::ConnectInfo(a)| a.ip().to_string());
        Ok(Bearer(caller))
    }
}

/// Parses a JSON body; an empty body means the type's default when `T: Default` is wanted.
fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, AuthError> {
    serde_json::from_slice(body)
        .map_err(|e| AuthError::BadRequest(format!("invalid JSON body: {e}")))
}

fn json_or_default<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, AuthError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        json(body)
    }
}

fn respond<T: serde::Serialize>(status: StatusCode, r: Result<T, AuthError>) -> Response {
    match r {
        Ok(v) => (status, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Create a tenant with a first signing key and an administrator client.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = NewTenant,
    responses((status = 201, body = CreatedTenant), (status = 400), (status = 401), (status = 403), (status = 409)),
    security(("bearer" = [])))]
pub(crate) async fn create_tenant(
    State(svc): Svc,
    Bearer(caller): Bearer,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = body_or_return!(body);
    let r = async { svc.create_tenant(&caller, json(&body)?).await }.await;
    respond(StatusCode::CREATED, r)
}

/// List tenants.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    responses((status = 200, body = Vec<TenantView>), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub(crate) async fn list_tenants(State(svc): Svc, Bearer(caller): Bearer) -> Response {
    respond(StatusCode::OK, svc.list_tenants(&caller).await)
}

/// Create a client in the caller's tenant; the secret is shown once.
#[utoipa::path(post, path = "/v1/clients", tag = "clients", request_body = NewClient,
    responses((status = 201, body = ClientWithSecret), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub(crate) async fn create_client(
    State(svc): Svc,
    Bearer(caller): Bearer,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = body_or_return!(body);
    let r = async { svc.create_client(&caller, json(&body)?).await }.await;
    respond(StatusCode::CREATED, r)
}

/// List the caller's tenant's clients.
#[utoipa::path(get, path = "/v1/clients", tag = "clients",
    responses((status = 200, body = Vec<ClientView>), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub(crate) async fn list_clients(State(svc): Svc, Bearer(caller): Bearer) -> Response {
    respond(StatusCode::OK, svc.list_clients(&caller).await)
}

/// Read a client.
#[utoipa::path(get, path = "/v1/clients/{id}", tag = "clients",
    params(("id" = String, Path, description = "Client id")),
    responses((status = 200, body = ClientView), (status = 401), (status = 403), (status = 404)),
    security(("bearer" = [])))]
pub(crate) async fn get_client(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path(id): Path<String>,
) -> Response {
    respond(StatusCode::OK, svc.get_client(&caller, &id).await)
}

/// Delete a client; its tokens become inactive on every server.
#[utoipa::path(delete, path = "/v1/clients/{id}", tag = "clients",
    params(("id" = String, Path, description = "Client id")),
    responses((status = 204), (status = 401), (status = 403), (status = 404)),
    security(("bearer" = [])))]
pub(crate) async fn delete_client(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path(id): Path<String>,
) -> Response {
    match svc.delete_client(&caller, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Rotate a client's secret, optionally keeping the old one for a grace period.
#[utoipa::path(post, path = "/v1/clients/{id}/secret", tag = "clients",
    params(("id" = String, Path, description = "Client id")),
    request_body(content = RotateSecret, description = "Optional"),
    responses((status = 200, body = ClientWithSecret), (status = 400), (status = 401), (status = 403), (status = 404)),
    security(("bearer" = [])))]
pub(crate) async fn rotate_secret(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = body_or_return!(body);
    let r = async {
        svc.rotate_secret(&caller, &id, json_or_default(&body)?)
            .await
    }
    .await;
    respond(StatusCode::OK, r)
}

/// Publish a new signing key; it signs after the publish delay.
#[utoipa::path(post, path = "/v1/keys/rotate", tag = "keys",
    request_body(content = RotateKey, description = "Optional"),
    responses((status = 201, body = KeyView), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub(crate) async fn rotate_key(
    State(svc): Svc,
    Bearer(caller): Bearer,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = body_or_return!(body);
    let r = async { svc.rotate_key(&caller, json_or_default(&body)?).await }.await;
    respond(StatusCode::CREATED, r)
}

/// List the tenant's published signing keys.
#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    responses((status = 200, body = Vec<KeyView>), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub(crate) async fn list_keys(State(svc): Svc, Bearer(caller): Bearer) -> Response {
    respond(StatusCode::OK, svc.list_keys(&caller).await)
}
