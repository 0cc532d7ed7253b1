//! Capstan's dynamic config service: versioned, validated, guarded configuration pushed live to
//! every watcher on every replica.
//!
//! - [`model`]: the domain — names, revisions as deltas, rollout targeting, what one caller
//!   sees. No axum or sqlx in it.
//! - [`schema`]: namespace JSON Schemas (draft 2020-12) and their secret annotations.
//! - [`codec`]: values and revisions to and from their stored form, secrets sealed.
//! - [`hub`]: the in-process fan-out: one reader per replica per change, many watchers.
//! - [`service`]: [`ConfigService`], every guarded operation.
//! - [`store`]: the storage trait and its SQL implementation.
//! - [`http`]: the `/v1/config` API, SSE watch and long poll, and its OpenAPI description.

pub mod codec;
pub mod error;
pub mod http;
pub mod hub;
pub mod model;
pub mod schema;
pub mod service;
pub mod store;

use std::sync::Arc;

use capstan_http::{BoxError, Platform, Service, ServiceConfig};

pub use error::ConfigError;
pub use service::{ConfigSection, ConfigService};

/// Builds the config service from the platform and its `[service.config]` section (the
/// server's registry names this).
pub fn build(p: &Platform, section: &ServiceConfig) -> Result<Arc<dyn Service>, BoxError> {
    let section: ConfigSection = section.parse()?;
    let store = store::SqlConfigStore::new(p.db.clone()).with_feed(p.feed.clone());
    Ok(Arc::new(ConfigService::new(
        section,
        Arc::new(store),
        &p.master_key,
        p.clock.clone(),
        p.rng.clone(),
        p.authorizer.clone(),
    )?))
}
