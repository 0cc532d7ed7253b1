//! Capstan's OAuth2 issuer: one issuer per tenant at `{public_url}/t/{tenant}`.
//!
//! - [`model`], [`tokens`], [`admin`], [`service`]: the domain — plain types and the
//!   [`AuthService`] that mints, verifies and revokes tokens and manages tenants, clients and keys.
//!   No axum or sqlx in them.
//! - [`store`]: storage traits and their SQL implementation.
//! - [`http`]: axum handlers and the OpenAPI description.

pub mod admin;
pub mod error;
pub mod http;
pub mod model;
pub mod service;
pub mod store;
pub mod tokens;

pub use error::AuthError;
pub use service::{AuthConfig, AuthService};
