//! Capstan's identity service: a SPIFFE CA for the deployment's trust domain, issuing
//! X.509-SVIDs and JWT-SVIDs to the same principals the issuer and the policy engine know.
//!
//! - [`spiffe`], [`pki`], [`model`]: the domain — SPIFFE ID rules, CSR checks and certificate
//!   building, CA rotation slots. No axum or sqlx in them.
//! - [`service`]: [`IdentityService`], which issues, rotates and registers.
//! - [`store`]: the storage trait and its SQL implementation.
//! - [`http`]: the `/v1/identity` API and its OpenAPI description.

pub mod error;
pub mod http;
pub mod model;
pub mod pki;
pub mod service;
pub mod spiffe;
pub mod store;

use std::sync::Arc;

use capstan_http::{BoxError, Platform, Service, ServiceConfig};

pub use error::IdentityError;
pub use service::{IdentityConfig, IdentitySection, IdentityService};

/// Builds the identity service from the platform and its `[service.identity]` section (the
/// server's registry names this).
pub fn build(p: &Platform, section: &ServiceConfig) -> Result<Arc<dyn Service>, BoxError> {
    Ok(build_service(p, section)?)
}

/// [`build`], typed (`capstan ca import` calls the service directly).
pub fn build_service(
    p: &Platform,
    section: &ServiceConfig,
) -> Result<Arc<IdentityService>, BoxError> {
    let section: IdentitySection = section.parse()?;
    let cfg = IdentityConfig::from_section(&p.trust_domain, &section)?;
    let store = store::SqlIdentityStore::new(p.db.clone()).with_feed(p.feed.clone());
    Ok(Arc::new(IdentityService::new(
        cfg,
        Arc::new(store),
        &p.master_key,
        p.clock.clone(),
        p.rng.clone(),
        p.authorizer.clone(),
    )?))
}
