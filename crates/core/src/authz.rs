//! The authorization seam: who is calling, and may they do this?
//!
//! Every guarded API calls [`guard`] with an action (`auth:CreateClient`), a CRN
//! (`crn:capstan:auth:<tenant>:clients/<id>`) and the context a policy needs to scope the act
//! (which policy is attached, which boundary). [`guard`] asks the one [`Authorizer`] the
//! composition root chose: the policy engine in every server. [`AdminOnly`] is a minimal
//! implementation for tests of code that runs without the engine.
//!
//! Failures are typed so that an outage never looks like a verdict: [`AuthzError::Unavailable`]
//! (storage down) becomes a 503, never a 403; [`VerifyError::Unavailable`] a 503, never a 401.

use async_trait::async_trait;

use crate::crn::Crn;
use crate::ids::{PrincipalId, TenantId};

/// An authenticated caller of a Capstan API, taken from a verified access token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The tenant the token was issued in; calls act in it.
    pub tenant: TenantId,
    /// The principal (`sub`).
    pub principal: PrincipalId,
    /// The OAuth2 client the token was issued to.
    pub client_id: String,
    /// The scopes the token carries.
    pub scopes: Vec<String>,
    /// Whether the principal is an administrator of its tenant (the `AdminOnly` seam).
    pub admin: bool,
    /// The peer address of the request, when known.
    pub source_ip: Option<String>,
    /// For a certificate-bound token (RFC 8705): the thumbprint (`x5t#S256`) of the only
    /// client certificate it may be used with.
    pub bound_to: Option<String>,
    /// When the credential expires (a token's `exp`, Unix seconds): long-lived requests (watch
    /// streams) end then.
    pub expires_at: Option<i64>,
    /// The W3C trace id (32 lowercase hex digits) of the request's valid `traceparent` header,
    /// when it had one ([`crate::trace_context`]): the decision log records it, so the
    /// decisions a trace made can be found.
    pub trace_id: Option<String>,
}

/// Condition keys and values a guarded act adds to its decision (`policy:PolicyName`, …).
/// Values are literal data: they are never parsed as patterns.
pub type GuardContext<'a> = &'a [(&'a str, &'a str)];

/// Why an authorizer did not allow a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    /// The decision is Deny; `reason` is a short code (`implicit_deny`, `other_tenant`, …).
    #[error("denied ({reason})")]
    Denied {
        /// The reason code.
        reason: String,
    },
    /// The authorizer's storage cannot be reached: no decision was made (503, never 403).
    #[error("authorization is temporarily unavailable")]
    Unavailable,
    /// The authorizer failed for another reason (logged where it happened).
    #[error("authorization failed")]
    Internal,
}

impl AuthzError {
    /// A Deny with `reason`.
    pub fn denied(reason: &str) -> AuthzError {
        AuthzError::Denied {
            reason: reason.into(),
        }
    }
}

/// Decides whether a caller may perform an action on a resource.
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// `Ok(())` to allow; `Err` to refuse or to say no decision could be made.
    async fn authorize(
        &self,
        caller: &Caller,
        action: &str,
        resource: &Crn,
        context: GuardContext<'_>,
    ) -> Result<(), AuthzError>;

    /// Makes `principal` an administrator of `tenant` (called when an admin client is created:
    /// `capstan dev`, `capstan bootstrap`, a new tenant). The default does nothing.
    async fn grant_administrator(
        &self,
        _tenant: &TenantId,
        _principal: &PrincipalId,
    ) -> Result<(), AuthzError> {
        Ok(())
    }

    /// The tags of `principal` (`PUT /v1/principals/{p}/tags`), for services that target by
    /// them (config rollouts). The default has none.
    async fn principal_tags(
        &self,
        _tenant: &TenantId,
        _principal: &PrincipalId,
    ) -> Result<Vec<(String, String)>, AuthzError> {
        Ok(Vec::new())
    }

    /// Sets `policy` as the permissions boundary of a principal being created (after the
    /// creator's guard allowed it). `Denied` says why the policy cannot be one (unknown). The
    /// default refuses: an authorizer without boundaries cannot honour one.
    async fn set_boundary(
        &self,
        _tenant: &TenantId,
        _principal: &PrincipalId,
        _policy: &str,
    ) -> Result<(), AuthzError> {
        Err(AuthzError::denied(
            "permissions boundaries are not supported",
        ))
    }
}

/// A guarded act that did not go ahead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The caller may not do this (403).
    #[error("not allowed to {action} on {resource} ({reason})")]
    Forbidden {
        /// The action asked for.
        action: String,
        /// The resource's CRN.
        resource: String,
        /// Why not.
        reason: String,
    },
    /// No decision could be made: the authorizer's storage is down (503).
    #[error("authorization is temporarily unavailable")]
    Unavailable,
    /// The authorizer failed (500).
    #[error("authorization failed")]
    Internal,
}

/// Asks `authz` whether `caller` may do `action` on `resource`, with `context` added to the
/// decision. Every privileged act of every service goes through here.
pub async fn guard(
    authz: &dyn Authorizer,
    caller: &Caller,
    action: &str,
    resource: &Crn,
    context: GuardContext<'_>,
) -> Result<(), GuardError> {
    match authz.authorize(caller, action, resource, context).await {
        Ok(()) => Ok(()),
        Err(AuthzError::Denied { reason }) => Err(GuardError::Forbidden {
            action: action.to_owned(),
            resource: resource.to_string(),
            reason,
        }),
        Err(AuthzError::Unavailable) => Err(GuardError::Unavailable),
        Err(AuthzError::Internal) => Err(GuardError::Internal),
    }
}

/// The facts of a verified access token, for services that authorize on behalf of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// Tenant.
    pub tenant: TenantId,
    /// Principal (`sub`).
    pub principal: PrincipalId,
    /// Client id.
    pub client_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// For a certificate-bound token (RFC 8705): the thumbprint of its certificate.
    pub bound_to: Option<String>,
}

/// Why a token could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The token is not valid; the text is one of the fixed descriptions of token errors
    /// (never storage detail), safe for a 401 body and `WWW-Authenticate`.
    #[error("{0}")]
    Invalid(String),
    /// The token could not be checked because storage is down (503, never 401).
    #[error("token verification is temporarily unavailable")]
    Unavailable,
    /// Verification failed for another reason (logged where it happened; 500).
    #[error("token verification failed")]
    Internal,
}

/// Verifies access tokens issued by Capstan.
#[async_trait]
pub trait TokenVerifier: Send + Sync + 'static {
    /// The facts of a token of any audience, or why it is not valid.
    async fn verify_access_token(&self, token: &str) -> Result<VerifiedToken, VerifyError>;

    /// The caller of a Capstan API: the token must carry the API audience.
    async fn authenticate_caller(&self, token: &str) -> Result<Caller, VerifyError>;

    /// The caller behind a principal that proved itself otherwise (an X.509-SVID on the TLS
    /// connection): the principal must still exist.
    async fn authenticate_principal(
        &self,
        _tenant: &TenantId,
        _principal: &PrincipalId,
    ) -> Result<Caller, VerifyError> {
        Err(VerifyError::Invalid(
            "this verifier authenticates bearer tokens only".into(),
        ))
    }

    /// The caller of a Capstan API presenting an X.509-SVID of this trust domain on the TLS
    /// connection (its chain was verified by the TLS layer against the bundle).
    async fn authenticate_svid(
        &self,
        _spiffe_id: &str,
        _serial: &str,
    ) -> Result<Caller, VerifyError> {
        Err(VerifyError::Invalid(
            "certificate authentication is not available on this server".into(),
        ))
    }
}

/// What the identity service offers the rest of Capstan: the roots a TLS peer of this trust
/// domain chains to, the principal a SPIFFE ID names, and Capstan's own serving certificate.
#[async_trait]
pub trait WorkloadIdentity: Send + Sync + 'static {
    /// The deployment's trust domain.
    fn trust_domain(&self) -> &str;

    /// The roots peers must trust now (DER): prepared, active, and retired ones whose leaves
    /// may still be alive.
    async fn trust_roots(&self) -> Result<Vec<Vec<u8>>, VerifyError>;

    /// The certificates of Capstan's own CAs whose leaves may still be alive (DER): what
    /// Capstan anchors client certificates to, so that an upstream root that also signs other
    /// things never authenticates anyone here.
    async fn issuing_cas(&self) -> Result<Vec<Vec<u8>>, VerifyError>;

    /// The tenant and principal a client certificate authenticates, if any: the certificate
    /// (its serial, lowercase hex) must be one this deployment issued with that SPIFFE ID,
    /// unexpired, from a CA that is not tainted. The principal comes from the issuance record,
    /// never from the path alone (a path can change hands), and a certificate forged with a
    /// stolen CA key has no record.
    async fn authenticate_certificate(
        &self,
        spiffe_id: &str,
        serial: &str,
    ) -> Result<Option<(TenantId, PrincipalId)>, VerifyError>;

    /// A serving certificate for Capstan itself (`spiffe://<td>/capstan/server` plus
    /// `dns_names`) for the key of `csr_pem`: the chain (leaf first, DER) and its expiry.
    async fn issue_server_certificate(
        &self,
        csr_pem: &str,
        dns_names: &[String],
    ) -> Result<(Vec<Vec<u8>>, i64), VerifyError>;
}

/// Allows administrators, on resources of their own tenant only. Tenants themselves are
/// resources of the `default` tenant, so only its administrators manage tenants.
#[derive(Debug, Default, Clone, Copy)]
pub struct AdminOnly;

#[async_trait]
impl Authorizer for AdminOnly {
    async fn authorize(
        &self,
        caller: &Caller,
        _action: &str,
        resource: &Crn,
        _context: GuardContext<'_>,
    ) -> Result<(), AuthzError> {
        if !caller.admin {
            return Err(AuthzError::denied("not_admin"));
        }
        if resource.tenant() != caller.tenant.as_str() {
            return Err(AuthzError::denied("other_tenant"));
        }
        Ok(())
    }
}
