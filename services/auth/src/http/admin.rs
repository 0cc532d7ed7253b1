//! The `/v1` administration API (bearer access token with the Capstan API audience).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use capstan_http::{ApiResult, Bearer, JsonBody, JsonOrDefault, Path};

use crate::admin::{
    ClientView, ClientWithSecret, CreatedTenant, KeyView, NewClient, NewTenant, RotateKey,
    RotateSecret, TenantView,
};
use crate::AuthService;

type Svc = State<capstan_http::Api<AuthService>>;

/// Create a tenant with a first signing key and an administrator client.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = NewTenant,
    responses((status = 201, body = CreatedTenant), (status = 400), (status = 401), (status = 403), (status = 409), (status = 413), (status = 415)),
    security(("bearer" = [])))]
pub(crate) async fn create_tenant(
    State(svc): Svc,
    Bearer(caller): Bearer,
    JsonBody(req): JsonBody<NewTenant>,
) -> ApiResult<(StatusCode, Json<CreatedTenant>)> {
    Ok((
        StatusCode::CREATED,
        Json(svc.create_tenant(&caller, req).await?),
    ))
}

/// List tenants.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    responses((status = 200, body = Vec<TenantView>), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub(crate) async fn list_tenants(
    State(svc): Svc,
    Bearer(caller): Bearer,
) -> ApiResult<Json<Vec<TenantView>>> {
    Ok(Json(svc.list_tenants(&caller).await?))
}

/// Create a client in the caller's tenant; the secret is shown once.
#[utoipa::path(post, path = "/v1/clients", tag = "clients", request_body = NewClient,
    responses((status = 201, body = ClientWithSecret), (status = 400), (status = 401), (status = 403), (status = 413), (status = 415)),
    security(("bearer" = [])))]
pub(crate) async fn create_client(
    State(svc): Svc,
    Bearer(caller): Bearer,
    JsonBody(req): JsonBody<NewClient>,
) -> ApiResult<(StatusCode, Json<ClientWithSecret>)> {
    Ok((
        StatusCode::CREATED,
        Json(svc.create_client(&caller, req).await?),
    ))
}

/// List the caller's tenant's clients.
#[utoipa::path(get, path = "/v1/clients", tag = "clients",
    responses((status = 200, body = Vec<ClientView>), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub(crate) async fn list_clients(
    State(svc): Svc,
    Bearer(caller): Bearer,
) -> ApiResult<Json<Vec<ClientView>>> {
    Ok(Json(svc.list_clients(&caller).await?))
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
) -> ApiResult<Json<ClientView>> {
    Ok(Json(svc.get_client(&caller, &id).await?))
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
) -> ApiResult<StatusCode> {
    svc.delete_client(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotate a client's secret, optionally keeping the old one for a grace period.
#[utoipa::path(post, path = "/v1/clients/{id}/secret", tag = "clients",
    params(("id" = String, Path, description = "Client id")),
    request_body(content = RotateSecret, description = "Optional"),
    responses((status = 200, body = ClientWithSecret), (status = 400), (status = 401), (status = 403), (status = 404), (status = 413), (status = 415)),
    security(("bearer" = [])))]
pub(crate) async fn rotate_secret(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path(id): Path<String>,
    JsonOrDefault(req): JsonOrDefault<RotateSecret>,
) -> ApiResult<Json<ClientWithSecret>> {
    Ok(Json(svc.rotate_secret(&caller, &id, req).await?))
}

/// Publish a new signing key; it signs after the publish delay.
#[utoipa::path(post, path = "/v1/keys/rotate", tag = "keys",
    request_body(content = RotateKey, description = "Optional"),
    responses((status = 201, body = KeyView), (status = 400), (status = 401), (status = 403), (status = 413), (status = 415)),
    security(("bearer" = [])))]
pub(crate) async fn rotate_key(
    State(svc): Svc,
    Bearer(caller): Bearer,
    JsonOrDefault(req): JsonOrDefault<RotateKey>,
) -> ApiResult<(StatusCode, Json<KeyView>)> {
    Ok((
        StatusCode::CREATED,
        Json(svc.rotate_key(&caller, req).await?),
    ))
}

/// List the tenant's published signing keys.
#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    responses((status = 200, body = Vec<KeyView>), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub(crate) async fn list_keys(
    State(svc): Svc,
    Bearer(caller): Bearer,
) -> ApiResult<Json<Vec<KeyView>>> {
    Ok(Json(svc.list_keys(&caller).await?))
}

/// Withdraw a signing key from the JWKS at once; tokens it signed stop verifying everywhere.
#[utoipa::path(delete, path = "/v1/keys/{kid}", tag = "keys",
    params(("kid" = String, Path, description = "Key id")),
    responses((status = 204), (status = 401), (status = 403), (status = 404), (status = 409)),
    security(("bearer" = [])))]
pub(crate) async fn delete_key(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path(kid): Path<String>,
) -> ApiResult<StatusCode> {
    svc.delete_key(&caller, &kid).await?;
    Ok(StatusCode::NO_CONTENT)
}
