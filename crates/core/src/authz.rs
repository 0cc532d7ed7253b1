//! The authorization seam: who is calling, and may they do this?
//!
//! Every guarded API asks one [`Authorizer`] with an action (`auth:CreateClient`) and a CRN
//! (`crn:capstan:auth:<tenant>:clients/<id>`). Today the only implementation is [`AdminOnly`];
//! the policy engine replaces it without touching the call sites.

use async_trait::async_trait;

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
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// A short reason code (`not_admin`, `explicit_deny`, …).
    pub reason: String,
}

/// Decides whether a caller may perform an action on a resource.
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// `Ok(())` to allow, `Err(Denied)` to refuse.
    async fn authorize(&self, caller: &Caller, action: &str, resource: &str) -> Result<(), Denied>;

    /// Makes `principal` an administrator of `tenant` (called when an admin client is created:
    /// `capstan dev`, `capstan bootstrap`, a new tenant). The default does nothing.
    async fn grant_administrator(
        &self,
        _tenant: &TenantId,
        _principal: &PrincipalId,
    ) -> Result<(), String> {
        Ok(())
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
}

/// Verifies access tokens issued by Capstan.
#[async_trait]
pub trait TokenVerifier: Send + Sync + 'static {
    /// The facts of a token of any audience, or why it is not valid.
    async fn verify_access_token(&self, token: &str) -> Result<VerifiedToken, String>;

    /// The caller of a Capstan API: the token must carry the API audience.
    async fn authenticate_caller(&self, token: &str) -> Result<Caller, String>;
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
        resource: &str,
    ) -> Result<(), Denied> {
        let denied = |reason: &str| {
            Err(Denied {
                reason: reason.into(),
            })
        };
        if !caller.admin {
            return denied("not_admin");
        }
        if crn_tenant(resource) != Some(caller.tenant.as_str()) {
            return denied("other_tenant");
        }
        Ok(())
    }
}

/// The tenant part of a CRN.
pub fn crn_tenant(crn: &str) -> Option<&str> {
    let mut parts = crn.splitn(5, ':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("crn"), Some("capstan"), Some(_service), Some(tenant)) => Some(tenant),
        _ => None,
    }
}

/// The CRN of a resource owned by `service` in `tenant`: `crn:capstan:<service>:<tenant>:<path>`.
pub fn crn(service: &str, tenant: &TenantId, path: &str) -> String {
    format!("crn:capstan:{service}:{tenant}:{path}")
}
