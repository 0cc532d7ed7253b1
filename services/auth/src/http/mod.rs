//! HTTP adapters of the issuer: thin handlers over [`AuthService`](crate::AuthService).

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use capstan_http::{Api, BearerScheme};
use utoipa::OpenApi;

use crate::AuthService;

mod admin;
pub(crate) mod error;
mod oauth;

/// The issuer's routes. Bearer tokens of the `/v1` API are verified by the issuer itself.
pub fn router(svc: Arc<AuthService>) -> Router {
    let state = Api::new(svc.clone(), svc);
    Router::new()
        .route(
            "/t/{tenant}/.well-known/openid-configuration",
            get(oauth::openid_configuration),
        )
        .route(
            "/.well-known/oauth-authorization-server/t/{tenant}",
            get(oauth::oauth_metadata),
        )
        .route("/t/{tenant}/oauth2/jwks", get(oauth::jwks))
        .route("/t/{tenant}/oauth2/token", post(oauth::token))
        .route("/t/{tenant}/oauth2/introspect", post(oauth::introspect))
        .route("/t/{tenant}/oauth2/revoke", post(oauth::revoke))
        .route(
            "/v1/tenants",
            post(admin::create_tenant).get(admin::list_tenants),
        )
        .route(
            "/v1/clients",
            post(admin::create_client).get(admin::list_clients),
        )
        .route(
            "/v1/clients/{id}",
            get(admin::get_client).delete(admin::delete_client),
        )
        .route("/v1/clients/{id}/secret", post(admin::rotate_secret))
        .route("/v1/keys/rotate", post(admin::rotate_key))
        .route("/v1/keys", get(admin::list_keys))
        .with_state(state)
}

/// The issuer's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(
        oauth::openid_configuration,
        oauth::oauth_metadata,
        oauth::jwks,
        oauth::token,
        oauth::introspect,
        oauth::revoke,
        admin::create_tenant,
        admin::list_tenants,
        admin::create_client,
        admin::list_clients,
        admin::get_client,
        admin::delete_client,
        admin::rotate_secret,
        admin::rotate_key,
        admin::list_keys,
    ),
    modifiers(&BearerScheme)
)]
pub struct AuthApi;
