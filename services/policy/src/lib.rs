//! Capstan's policy service: managed policies (versioned), groups, attachments, permissions
//! boundaries, tags, resource policies and guardrails; the authorization API; the decision log;
//! and the [`Authorizer`](capstan_core::authz::Authorizer) that guards every Capstan API.
//!
//! Evaluation is `capstan-iam` (pure). casbin-rs resolves group membership (its role manager,
//! tenant as domain, transitive). Storage is SQL over `capstan-db`.

pub mod api;
pub mod builtin;
mod decisions;
pub mod error;
pub mod http;
pub mod service;
pub mod simulate;
mod snapshot;
pub mod store;

pub use error::PolicyError;
pub use service::{PolicyConfig, PolicyService};
