//! Capstan's shared kernel.
//!
//! Plain types and functions every service builds on: identifiers that cannot be constructed
//! invalid ([`ids`]), injected time and randomness ([`clock`], [`rng`]), secret handling
//! ([`crypto`]), access-token minting and verification ([`jwt`]), the authorization seam
//! ([`authz`]), the W3C `traceparent` header ([`trace_context`]) and single-flight cache fills
//! ([`flight`]). Nothing here touches the network or a database.

pub mod authz;
pub mod clock;
pub mod crn;
pub mod crypto;
pub mod flight;
pub mod ids;
pub mod jwt;
pub mod rng;
pub mod trace_context;

mod error;
pub use error::CoreError;
