//! HTTP adapters of the issuer: thin handlers over [`AuthService`](crate::AuthService).

use std::sync::Arc;

use axum::routing::{get, post};
use capstan_core::authz::TokenVerifier;
use capstan_http::{Api, BearerScheme, BoxError, Metric, RouteList, Routes, Service};
use utoipa::OpenApi;

use crate::store::{TOPIC_CLIENT, TOPIC_REVOCATION, TOPIC_TENANT};
use crate::AuthService;

mod admin;
pub(crate) mod error;
mod oauth;

/// The issuer's routes; bearer tokens of the `/v1` API are verified by `verifier` (the issuer
/// itself, in every server).
pub fn routes(svc: Arc<AuthService>, verifier: Arc<dyn TokenVerifier>) -> Routes {
    let state = Api::new(svc, verifier);
    RouteList::new()
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
        .route("/v1/keys/{kid}", axum::routing::delete(admin::delete_key))
        .with_state(state)
}

/// The issuer as a platform service: its OAuth2 and `/v1` routes, its feed topics (client,
/// tenant keys, revocations), revocation loading at start, housekeeping and counters.
#[async_trait::async_trait]
impl Service for AuthService {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn routes(self: Arc<Self>, verifier: Arc<dyn TokenVerifier>) -> Routes {
        routes(self, verifier)
    }

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        AuthApi::openapi()
    }

    fn topics(&self) -> &[&'static str] {
        &[TOPIC_CLIENT, TOPIC_TENANT, TOPIC_REVOCATION]
    }

    fn on_change(&self, change: &capstan_db::Change) {
        AuthService::on_change(self, change);
    }

    async fn start(self: Arc<Self>) -> Result<Vec<tokio::task::JoinHandle<()>>, BoxError> {
        self.load_revocations().await?;
        Ok(Vec::new())
    }

    async fn housekeeping(&self) -> Result<(), BoxError> {
        AuthService::housekeeping(self).await?;
        Ok(())
    }

    fn metrics(&self) -> Vec<Metric> {
        let m = &self.metrics;
        let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        vec![
            Metric::counter(
                "capstan_tokens_issued_total",
                "Access tokens issued.",
                n(&m.tokens_issued),
            ),
            Metric::counter(
                "capstan_token_errors_total",
                "Token requests refused with an OAuth2 error.",
                n(&m.token_errors),
            ),
            Metric::counter(
                "capstan_introspections_total",
                "Introspection requests answered.",
                n(&m.introspections),
            ),
            Metric::counter(
                "capstan_revocations_total",
                "Access tokens revoked.",
                n(&m.revocations),
            ),
            Metric::counter(
                "capstan_token_signature_checks_total",
                "Access-token signatures checked (a verified token is served from memory afterwards).",
                n(&m.signature_checks),
            ),
            Metric::counter(
                "capstan_auth_key_loads_total",
                "Tenant signing-key sets read from storage on a cache miss.",
                n(&m.key_loads),
            ),
            Metric::counter(
                "capstan_auth_client_loads_total",
                "Clients read from storage on a cache miss.",
                n(&m.client_loads),
            ),
        ]
    }
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
        admin::delete_key,
    ),
    modifiers(&BearerScheme)
)]
pub struct AuthApi;
