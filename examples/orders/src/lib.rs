//! `orders`: a small axum service protected by Capstan through the SDK.
//!
//! It gets its own token from Capstan (client credentials, to ask the policy engine), verifies
//! callers' tokens offline (audience `orders-api`), and authorizes every route through the
//! policy engine: `GET /orders/{id}` needs `orders:GetOrder` on
//! `crn:capstan:orders:<tenant>:order/<id>`, `DELETE /orders/{id}` needs `orders:DeleteOrder`
//! on the same CRN.

use axum::extract::Path;
use axum::routing::get;
use axum::{Extension, Json, Router};
use capstan_sdk::{Caller, Capstan, CapstanLayer, Error, Required};
use serde_json::{json, Value};

/// Where Capstan is and who this service is.
#[derive(Debug, Clone)]
pub struct Config {
    /// Capstan's address.
    pub capstan: String,
    /// The tenant.
    pub tenant: String,
    /// This service's client id.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// The audience callers' tokens must carry.
    pub audience: String,
}

/// What each route needs, from its method and path.
pub fn required(parts: &axum::http::request::Parts, tenant: &str) -> Option<Required> {
    let id = parts.uri.path().strip_prefix("/orders/")?;
    if id.is_empty() || id.contains('/') {
        return None;
    }
    let action = match parts.method.as_str() {
        "GET" => "orders:GetOrder",
        "DELETE" => "orders:DeleteOrder",
        _ => return None,
    };
    Some(Required {
        action: action.into(),
        resource: format!("crn:capstan:orders:{tenant}:order/{id}"),
    })
}

/// The service's routes, behind the Capstan layer.
pub async fn app(cfg: &Config) -> Result<Router, Error> {
    let capstan = Capstan::new(&cfg.capstan, &cfg.tenant)?;
    let tokens = capstan.token_source(&cfg.client_id, &cfg.client_secret, &[]);
    let verifier = capstan.verifier(&cfg.audience).await?;
    // Decisions are cached for 2 seconds: a policy change takes effect within that.
    let authorizer = capstan.authorizer(tokens).with_cache(2, 10_000);
    let layer = CapstanLayer::new(verifier, authorizer, |parts, claims| {
        required(parts, &claims.tenant)
    });
    Ok(Router::new()
        .route("/orders/{id}", get(get_order).delete(delete_order))
        .route_layer(layer))
}

async fn get_order(Path(id): Path<String>, Extension(caller): Extension<Caller>) -> Json<Value> {
    Json(json!({"id": id, "status": "shipped", "read_by": caller.0.sub}))
}

async fn delete_order(Path(id): Path<String>, Extension(caller): Extension<Caller>) -> Json<Value> {
    Json(json!({"id": id, "deleted": true, "deleted_by": caller.0.sub}))
}
