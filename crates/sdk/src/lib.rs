//! Capstan from a Rust service.
//!
//! - [`TokenSource`]: the service's own access tokens by client credentials (through the
//!   `oauth2` crate), cached per audience, refreshed ahead of expiry, single-flight.
//! - [`JwksVerifier`]: offline verification of the access tokens callers present (RFC 9068),
//!   with the JWKS cached and refetched at most once per interval for unknown keys.
//! - [`Authorizer`]: decisions from the policy engine, with an optional small cache.
//! - [`CapstanLayer`]: a tower layer for axum that does both for every route.
//! - [`spiffe::SvidSource`]: the service's X.509-SVID, renewed at half-life, and rustls
//!   configurations for mTLS that verify the peer's SPIFFE ID against the trust bundle.
//! - [`config::ConfigWatcher`]: a service's dynamic config, pushed by Capstan, kept in memory,
//!   resumed after disconnects and backed by a local snapshot file; [`config::ConfigClient`]
//!   for the rest of the config API.
//! - [`ApiClient`]: the `/v1` API with the wire types of `capstan-proto` (the CLI's client).
//! - `telemetry` (cargo feature `telemetry`, off by default): the service's spans exported to
//!   Capstan's trace collector over OTLP/HTTP with its own tokens; `telemetry::init` builds and
//!   installs the OpenTelemetry tracer provider. Without the feature the OpenTelemetry crates
//!   are not built.
//!
//! Every call has a timeout and retries on 429 and 503 honouring `Retry-After`
//! ([`TransportConfig`]); every failure is an [`Error`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), capstan_sdk::Error> {
//! use capstan_sdk::{Capstan, Required};
//! let capstan = Capstan::new("http://127.0.0.1:8470", "default")?;
//! let tokens = capstan.token_source("svc_…", "cps_…", &[]);
//! let verifier = capstan.verifier("orders-api").await?;
//! let layer = capstan_sdk::CapstanLayer::new(verifier, capstan.authorizer(tokens), |parts, claims| {
//!     let id = parts.uri.path().rsplit('/').next()?;
//!     Some(Required {
//!         action: "orders:GetOrder".into(),
//!         resource: format!("crn:capstan:orders:{}:order/{id}", claims.tenant),
//!     })
//! });
//! # let _ = layer; Ok(()) }
//! ```

mod api;
mod authz;
pub mod config;
mod error;
mod jwks;
mod layer;
pub mod spiffe;
#[cfg(feature = "telemetry")]
pub mod telemetry;
mod token;
mod transport;

use std::sync::Arc;

use reqwest::Method;
use serde::Deserialize;

pub use api::{segment, to_body, ApiClient, Credentials, API_AUDIENCE};
pub use authz::{AuthorizeRequest, AuthorizeResponse, Authorizer, ContextValue};
pub use capstan_core::clock::{Clock, ManualClock, SystemClock, UnixTime};
pub use capstan_core::rng::{Rng, SystemRng};
pub use capstan_proto as proto;
pub use error::Error;
pub use jwks::{AccessClaims, JwksVerifier, TokenError, VerifierConfig, VerifyError};
pub use layer::{Caller, CapstanLayer, CapstanService, ClientCertificate, Required};
pub use token::{client_credentials, AccessToken, ClientCredentials, Grant, TokenSource};
pub use transport::{read_json, RetryPolicy, Transport, TransportConfig};

/// One Capstan deployment and tenant: builds the SDK's parts with shared settings.
#[derive(Clone)]
pub struct Capstan {
    base: String,
    tenant: String,
    transport: Transport,
    clock: Arc<dyn Clock>,
}

/// The parts of a tenant's discovery document the SDK uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    /// The issuer tokens carry (`iss`).
    pub issuer: String,
    /// The token endpoint.
    pub token_endpoint: String,
    /// The JWKS.
    pub jwks_uri: String,
}

impl Capstan {
    /// The Capstan at `base` (any replica, e.g. `http://capstan.capstan.svc:8470`), tenant
    /// `tenant`, default timeouts and retries.
    pub fn new(base: &str, tenant: &str) -> Result<Capstan, Error> {
        Capstan::with_transport(base, tenant, Transport::new(TransportConfig::default())?)
    }

    /// With a transport of your own settings.
    pub fn with_transport(
        base: &str,
        tenant: &str,
        transport: Transport,
    ) -> Result<Capstan, Error> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config(format!(
                "address {base:?} must start with http:// or https://"
            )));
        }
        Ok(Capstan {
            base: base.trim_end_matches('/').to_owned(),
            tenant: tenant.to_owned(),
            transport,
            clock: Arc::new(SystemClock),
        })
    }

    /// With an injected clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Capstan {
        self.clock = clock;
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The tenant's token endpoint on this base URL.
    pub fn token_url(&self) -> String {
        format!("{}/t/{}/oauth2/token", self.base, segment(&self.tenant))
    }

    /// The tenant's discovery document (`/.well-known/openid-configuration`).
    pub async fn discover(&self) -> Result<Discovery, Error> {
        let url = format!(
            "{}/t/{}/.well-known/openid-configuration",
            self.base,
            segment(&self.tenant)
        );
        let v = self.transport.json(self.transport.http().get(&url)).await?;
        serde_json::from_value(v).map_err(|e| Error::Protocol(format!("discovery: {e}")))
    }

    /// A token source for a client of this tenant.
    pub fn token_source(
        &self,
        client_id: &str,
        client_secret: &str,
        scopes: &[&str],
    ) -> TokenSource {
        TokenSource::with_clock(
            ClientCredentials {
                token_url: self.token_url(),
                client_id: client_id.to_owned(),
                client_secret: client_secret.to_owned(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            },
            self.transport.clone(),
            self.clock.clone(),
        )
    }

    /// A verifier for tokens meant for `audience`. The issuer comes from the tenant's
    /// discovery document (it is the public URL, which may differ from the base URL); the JWKS
    /// is read from the base URL.
    pub async fn verifier(&self, audience: &str) -> Result<JwksVerifier, Error> {
        let d = self.discover().await?;
        let mut cfg = VerifierConfig::new(&d.issuer, audience);
        cfg.jwks_url = format!("{}/t/{}/oauth2/jwks", self.base, segment(&self.tenant));
        Ok(JwksVerifier::with_clock(
            cfg,
            self.transport.clone(),
            self.clock.clone(),
        ))
    }

    /// An API client acting as `tokens`' client.
    pub fn api(&self, tokens: TokenSource) -> ApiClient {
        ApiClient::new(
            &self.base,
            self.transport.clone(),
            Credentials::Source(tokens),
        )
    }

    /// An authorizer asking as `tokens`' client.
    pub fn authorizer(&self, tokens: TokenSource) -> Authorizer {
        Authorizer::new(self.api(tokens)).with_clock(self.clock.clone())
    }

    /// The server's version (from `/healthz`).
    pub async fn server_version(&self) -> Result<String, Error> {
        let api = ApiClient::new(&self.base, self.transport.clone(), Credentials::None);
        let v = api.call(Method::GET, "/healthz", &[], None).await?;
        v.get("version")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| Error::Protocol("healthz has no version".into()))
    }
}
