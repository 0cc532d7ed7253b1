//! Capstan's policy language and its evaluation, with AWS IAM's semantics
//! (`shared/reference/iam-evaluation.md`).
//!
//! Pure code: no I/O, no async, no axum or sqlx. [`Policy::parse`] validates and compiles a
//! JSON document; [`evaluate`] decides one request against the policies that apply to it.
//! Which policies apply (attachments, group membership, resource policies, boundaries,
//! guardrails) is the caller's business; the service layer resolves it with casbin's role graph.

mod condition;
mod context;
mod document;
mod eval;
mod index;
mod pattern;
mod time;

pub use context::Context;
pub use document::{Effect, Issue, Limits, Parsed, Policy, PolicyKind, Statement, Version};
pub use eval::{
    crn_matches, evaluate, Applicable, Decision, Matched, Outcome, Reason, Request, Source,
};
pub use index::IdentityIndex;
