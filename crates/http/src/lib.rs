//! The HTTP kit every Capstan service uses, written once:
//!
//! - [`ApiError`]: the one API error type and the one place a failure becomes a status and a
//!   JSON body (policy in [`error`]'s doc);
//! - [`JsonBody`], [`JsonOrDefault`] and [`JsonText`]: request bodies with 413 / 415 / 400
//!   answers that say what is wrong;
//! - [`Bearer`]: the authenticated caller, verified by the [`Verifier`] in the router state;
//! - [`guard`]: every privileged act asks the policy engine through it;
//! - [`request_id`]: the id every response carries, also in 5xx bodies;
//! - [`BearerScheme`]: the OpenAPI bearer security scheme;
//! - [`service`]: the [`Service`] trait every service implements, and the [`Platform`] it is
//!   built from.

pub mod bearer;
pub mod body;
pub mod error;
pub mod request_id;
pub mod service;

pub use bearer::{Api, Bearer, BearerScheme, PeerCertificate, Verifier};
pub use body::{JsonBody, JsonOrDefault, JsonText, Path, Query};
pub use capstan_core::authz::guard;
pub use error::{no_store, ApiError, ApiResult, RETRY_AFTER_SECONDS};
pub use service::{
    BoxError, ExtraListener, Metric, Platform, Registration, RouteList, Routes, Service,
    ServiceConfig, SpanSink,
};

/// The longest a long poll may hold a request: the server's request timeout is extended by
/// this for `GET`s of the routes services declare in `Service::long_poll_routes`.
pub const LONG_POLL_MAX: std::time::Duration = std::time::Duration::from_secs(300);
