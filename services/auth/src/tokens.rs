//! Token issuance, verification, introspection and revocation (RFC 6749 §4.4, 9068, 7662, 7009).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use capstan_core::authz::{guard, Caller, GuardError, TokenVerifier, VerifiedToken, VerifyError};
use capstan_core::crn::Crn;
use capstan_core::ids::{PrincipalId, TenantId};
use capstan_core::jwt::{self, AccessClaims, Audience, Expect, TokenError};
use capstan_core::rng::random_b64;
pub use capstan_proto::auth::{Introspection, TokenResponse};

use crate::error::AuthError;
use crate::model::Client;
use crate::service::{read, write, AuthService};

/// Client credentials presented at the token, introspection or revocation endpoint.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The client id.
    pub client_id: String,
    /// The secret (never logged: this type is not printed anywhere).
    pub client_secret: String,
}

/// Why a token is not active: a [`TokenError`] or one of the stateful checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Inactive {
    /// Signature, type, issuer, time or audience check failed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token was revoked.
    #[error("token has been revoked")]
    Revoked,
    /// The client it was issued to no longer exists.
    #[error("token's client no longer exists")]
    ClientGone,
}

/// Verified tokens kept in memory; the cache starts over when full.
const MAX_VERIFIED: usize = 50_000;

fn invalid_client() -> AuthError {
    AuthError::oauth("invalid_client", "client authentication failed")
}

impl AuthService {
    /// Authenticates a client by id and secret (current secret, or the previous one during its
    /// grace period). Unknown clients and wrong secrets fail alike.
    pub async fn authenticate_client(
        &self,
        tenant: &TenantId,
        creds: &ClientCredentials,
    ) -> Result<Arc<Client>, AuthError> {
        let id = PrincipalId::parse(&creds.client_id).map_err(|_| invalid_client())?;
        let client = self.client(tenant, &id).await?.ok_or_else(invalid_client)?;
        if client.tls_client_auth_san_uri.is_some() {
            // Registered for tls_client_auth: its certificate is its only credential.
            return Err(invalid_client());
        }
        let secret = creds.client_secret.as_str();
        let current = self.hasher.verify(secret, &client.secret_hash);
        let previous = client
            .previous_secret
            .as_ref()
            .is_some_and(|(hash, until)| self.now() < *until && self.hasher.verify(secret, hash));
        if current || previous {
            Ok(client)
        } else {
            Err(invalid_client())
        }
    }

    /// Authenticates a `tls_client_auth` client (RFC 8705 §2.1) by the certificate of the
    /// connection (its chain already verified by the TLS layer): the certificate's SPIFFE ID
    /// must be exactly the URI SAN the client registered. Anything else fails like a wrong
    /// secret.
    pub async fn authenticate_client_certificate(
        &self,
        tenant: &TenantId,
        client_id: &str,
        cert_spiffe_id: Option<&str>,
    ) -> Result<Arc<Client>, AuthError> {
        let id = PrincipalId::parse(client_id).map_err(|_| invalid_client())?;
        let client = self.client(tenant, &id).await?.ok_or_else(invalid_client)?;
        match (&client.tls_client_auth_san_uri, cert_spiffe_id) {
            (Some(want), Some(got)) if want == got => Ok(client),
            _ => Err(invalid_client()),
        }
    }

    /// The client_credentials grant: checks requested scopes and audiences against the client's
    /// allowed ones (absent means all of them) and signs an access token.
    pub async fn issue_client_credentials(
        &self,
        tenant: &TenantId,
        client: &Client,
        scope: Option<&str>,
        audience: Option<&str>,
        bound_to: Option<String>,
    ) -> Result<TokenResponse, AuthError> {
        let scopes = pick(scope, &client.scopes).map_err(|s| {
            AuthError::oauth(
                "invalid_scope",
                format!("scope {s:?} is not allowed for this client"),
            )
        })?;
        let audiences = pick(audience, &client.audiences).map_err(|a| {
            AuthError::oauth(
                "invalid_target",
                format!("audience {a:?} is not allowed for this client"),
            )
        })?;
        if audiences.is_empty() {
            return Err(AuthError::oauth(
                "invalid_target",
                "the client has no allowed audiences",
            ));
        }
        let keys = self.tenant_keys(tenant).await?;
        let now = self.now();
        let signer = keys
            .signer(now)
            .ok_or(AuthError::Crypto("tenant has no active signing key"))?;
        let ttl = client
            .token_ttl_seconds
            .unwrap_or(self.cfg.default_token_ttl)
            .min(self.cfg.max_token_ttl);
        let scope = scopes.join(" ");
        let claims = AccessClaims {
            iss: self.issuer(tenant),
            sub: client.id.to_string(),
            aud: Audience::from_vec(audiences),
            exp: now + ttl,
            iat: now,
            nbf: now,
            jti: random_b64(self.rng.as_ref(), 16)?,
            client_id: client.id.to_string(),
            scope: scope.clone(),
            tenant: tenant.to_string(),
            cnf: bound_to.map(|x5t_s256| capstan_core::jwt::Confirmation { x5t_s256 }),
        };
        let access_token = signer.sign(&claims)?;
        self.metrics.tokens_issued.fetch_add(1, Ordering::Relaxed);
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer".into(),
            expires_in: ttl,
            scope,
        })
    }

    /// Verifies an access token of `tenant`: signature by a published key, `typ`, `iss`, `exp`,
    /// `nbf`, optionally `aud`, not revoked, and its client still exists.
    ///
    /// The outer `Err` means no verdict could be reached (storage down): it must never be
    /// reported as an invalid token. The inner result is the verdict.
    pub async fn verify_token(
        &self,
        tenant: &TenantId,
        token: &str,
        audience: Option<&str>,
    ) -> Result<Result<AccessClaims, Inactive>, AuthError> {
        let issuer = self.issuer(tenant);
        let now = self.now();
        let expect = Expect {
            issuer: &issuer,
            audience,
            now,
            leeway: self.cfg.leeway,
        };
        let mut cached = read(&self.verified).get(token).cloned();
        // A crowd presenting the same new token (every watcher reconnecting to a fresh replica)
        // verifies its signature once.
        let mut flight = None;
        if cached.is_none() {
            flight = Some(self.verify_flights.enter(&token.to_owned()).await);
            cached = read(&self.verified).get(token).cloned();
        }
        let claims = match cached {
            Some(c) if c.0.tenant == tenant.as_str() => {
                // The key must still be published: a withdrawn key's tokens stop verifying at
                // once, even those verified before.
                let keys = self.tenant_keys(tenant).await?;
                if keys.verifier(&c.1, now, self.cfg.max_token_ttl).is_none() {
                    return Ok(Err(TokenError::UnknownKey.into()));
                }
                if let Err(e) = jwt::check_claims(&c.0, expect) {
                    return Ok(Err(e.into()));
                }
                c.0.clone()
            }
            _ => {
                let keys = match self.tenant_keys(tenant).await {
                    Ok(k) => k,
                    // A token naming a tenant that does not exist has no key to verify under.
                    Err(AuthError::NotFound(_)) => return Ok(Err(TokenError::UnknownKey.into())),
                    Err(e) => return Err(e),
                };
                let max_ttl = self.cfg.max_token_ttl;
                let mut signed_by = String::new();
                self.metrics
                    .signature_checks
                    .fetch_add(1, Ordering::Relaxed);
                let verified = jwt::verify(
                    token,
                    |kid| {
                        signed_by = kid.to_owned();
                        keys.verifier(kid, now, max_ttl)
                    },
                    expect,
                );
                let claims = match verified {
                    Ok(c) => c,
                    Err(e) => return Ok(Err(e.into())),
                };
                let mut cache = write(&self.verified);
                if cache.len() >= MAX_VERIFIED {
                    cache.clear();
                }
                cache.insert(token.to_owned(), Arc::new((claims.clone(), signed_by)));
                claims
            }
        };
        if let Some(f) = flight {
            f.landed();
        }
        if self.is_revoked(&claims.jti) {
            return Ok(Err(Inactive::Revoked));
        }
        let Ok(client) = PrincipalId::parse(&claims.client_id) else {
            return Ok(Err(Inactive::Token(TokenError::BadSignature)));
        };
        match self.client(tenant, &client).await? {
            Some(_) => Ok(Ok(claims)),
            None => Ok(Err(Inactive::ClientGone)),
        }
    }

    /// RFC 7662 introspection. A token that does not verify is simply `active: false`; storage
    /// that cannot be reached (on a cache miss) is an error, not a verdict. With `audience`, a
    /// token not meant for that audience is reported inactive (RFC 7662 §4).
    pub async fn introspect(
        &self,
        tenant: &TenantId,
        token: &str,
        audience: Option<&str>,
    ) -> Result<Introspection, AuthError> {
        self.metrics.introspections.fetch_add(1, Ordering::Relaxed);
        Ok(match self.verify_token(tenant, token, audience).await? {
            Ok(c) => Introspection {
                active: true,
                scope: Some(c.scope),
                client_id: Some(c.client_id),
                sub: Some(c.sub),
                aud: Some(c.aud),
                iss: Some(c.iss),
                exp: Some(c.exp),
                iat: Some(c.iat),
                nbf: Some(c.nbf),
                jti: Some(c.jti),
                token_type: Some("Bearer".into()),
                tenant: Some(c.tenant),
                cnf: c.cnf.map(|c| serde_json::json!({ "x5t#S256": c.x5t_s256 })),
            },
            Err(_) => Introspection::default(),
        })
    }

    /// RFC 7009 revocation by `caller`. Tokens that do not verify are ignored (200, as the RFC
    /// says). A client may revoke its own tokens; revoking another client's token is a
    /// privileged act like any other: the policy engine decides `auth:RevokeToken` on
    /// `crn:capstan:auth:<tenant>:clients/<that client>` (administrators have it through
    /// `AdministratorAccess`; no admin flag is consulted). The decision is logged in the trace
    /// of the request's `traceparent`, if it had one.
    pub async fn revoke(
        &self,
        tenant: &TenantId,
        caller: &Client,
        token: &str,
        trace_id: Option<String>,
    ) -> Result<(), AuthError> {
        let Ok(claims) = self.verify_token(tenant, token, None).await? else {
            return Ok(());
        };
        if claims.client_id != caller.id.as_str() {
            let acting = Caller {
                tenant: tenant.clone(),
                principal: caller.id.clone(),
                client_id: caller.id.to_string(),
                scopes: Vec::new(),
                admin: caller.admin,
                source_ip: None,
                bound_to: None,
                expires_at: None,
                trace_id,
            };
            let resource = Crn::new("auth", tenant, &format!("clients/{}", claims.client_id));
            match guard(
                self.authorizer.as_ref(),
                &acting,
                "auth:RevokeToken",
                &resource,
                &[],
            )
            .await
            {
                Ok(()) => {}
                Err(GuardError::Forbidden { .. }) => {
                    return Err(AuthError::oauth(
                        "unauthorized_client",
                        "the token was issued to another client, and this client may not revoke \
                         its tokens (auth:RevokeToken)",
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.store
            .revoke(tenant, &claims.jti, claims.exp, self.now())
            .await?;
        self.remember_revocation(claims.jti, claims.exp);
        self.metrics.revocations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The verified claims of a token of any tenant (named by its `tenant` claim).
    async fn verified_claims(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<(TenantId, AccessClaims, PrincipalId), VerifyError> {
        let invalid = |e: &dyn std::fmt::Display| VerifyError::Invalid(e.to_string());
        let peek = jwt::peek_claims(token).ok_or_else(|| invalid(&TokenError::Malformed))?;
        let tenant = TenantId::parse(&peek.tenant).map_err(|_| invalid(&TokenError::Malformed))?;
        let claims = self
            .verify_token(&tenant, token, audience)
            .await
            .map_err(verify_error)?
            .map_err(|e| invalid(&e))?;
        let principal =
            PrincipalId::parse(&claims.sub).map_err(|_| invalid(&TokenError::BadSignature))?;
        Ok((tenant, claims, principal))
    }

    /// Authenticates a bearer token for Capstan's own API: it must be an access token of its
    /// tenant with the API audience.
    pub async fn authenticate_bearer(&self, token: &str) -> Result<Caller, VerifyError> {
        let (tenant, claims, principal) = self
            .verified_claims(token, Some(&self.cfg.api_audience))
            .await?;
        let admin = self
            .client(&tenant, &principal)
            .await
            .map_err(verify_error)?
            .is_some_and(|c| c.admin);
        Ok(Caller {
            tenant,
            principal,
            client_id: claims.client_id,
            scopes: split_scopes(&claims.scope),
            admin,
            source_ip: None,
            bound_to: claims.cnf.map(|c| c.x5t_s256),
            expires_at: Some(claims.exp),
            trace_id: None,
        })
    }
}

/// A failure to reach a verdict: unavailable storage stays unavailable; the rest is logged.
fn verify_error(e: AuthError) -> VerifyError {
    match e {
        AuthError::Db(e) if e.is_unavailable() => VerifyError::Unavailable,
        e => {
            tracing::error!(error = %e, "token verification failed");
            VerifyError::Internal
        }
    }
}

fn split_scopes(scope: &str) -> Vec<String> {
    scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[async_trait::async_trait]
impl TokenVerifier for AuthService {
    async fn verify_access_token(&self, token: &str) -> Result<VerifiedToken, VerifyError> {
        let (tenant, claims, principal) = self.verified_claims(token, None).await?;
        Ok(VerifiedToken {
            tenant,
            principal,
            client_id: claims.client_id,
            scopes: split_scopes(&claims.scope),
            bound_to: claims.cnf.map(|c| c.x5t_s256),
        })
    }

    async fn authenticate_caller(&self, token: &str) -> Result<Caller, VerifyError> {
        self.authenticate_bearer(token).await
    }

    async fn authenticate_principal(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
    ) -> Result<Caller, VerifyError> {
        let client = self
            .client(tenant, principal)
            .await
            .map_err(verify_error)?
            .ok_or_else(|| {
                VerifyError::Invalid("the principal of this certificate no longer exists".into())
            })?;
        // As with a bearer token: only a client allowed the API audience calls the API.
        if !client.audiences.contains(&self.cfg.api_audience) {
            return Err(VerifyError::Invalid(format!(
                "this principal may not call the Capstan API (its audiences do not include {:?})",
                self.cfg.api_audience
            )));
        }
        Ok(Caller {
            tenant: tenant.clone(),
            principal: principal.clone(),
            client_id: client.id.to_string(),
            scopes: client.scopes.clone(),
            admin: client.admin,
            source_ip: None,
            bound_to: None,
            expires_at: None,
            trace_id: None,
        })
    }
}

/// The requested space-separated values, each of which must be allowed; all allowed ones when
/// nothing was requested. Duplicates are folded. `Err` names the first value not allowed.
fn pick(requested: Option<&str>, allowed: &[String]) -> Result<Vec<String>, String> {
    match requested.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(allowed.to_vec()),
        Some(req) => {
            let mut out: Vec<String> = Vec::new();
            for v in req.split(' ').filter(|s| !s.is_empty()) {
                if !allowed.iter().any(|a| a == v) {
                    return Err(v.to_owned());
                }
                if !out.iter().any(|o| o == v) {
                    out.push(v.to_owned());
                }
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pick;

    #[test]
    fn pick_checks_subsets() {
        let allowed = vec!["a".to_string(), "b".to_string()];
        assert_eq!(pick(None, &allowed).unwrap(), allowed);
        assert_eq!(pick(Some("b a b"), &allowed).unwrap(), ["b", "a"]);
        assert_eq!(pick(Some("a c"), &allowed).unwrap_err(), "c");
        assert_eq!(pick(Some("  "), &allowed).unwrap(), allowed);
    }
}
