//! Administration: tenants, clients and signing keys. Every operation names an action and a CRN
//! and asks the [`Authorizer`](capstan_core::authz::Authorizer) first.

use std::sync::Arc;

use capstan_core::authz::{guard, AuthzError, Caller, GuardError};
use capstan_core::crn::Crn;
use capstan_core::crypto::Secret;
use capstan_core::ids::{check_audience, check_scope_token, PrincipalId, PrincipalKind, TenantId};
use capstan_core::jwt::{generate_key, Alg};
use capstan_core::rng::random_b64;
use capstan_db::DbError;
pub use capstan_proto::auth::{
    ClientView, ClientWithSecret, CreatedTenant, KeyView, NewClient, NewTenant, RotateKey,
    RotateSecret, TenantView,
};

use crate::error::AuthError;
use crate::model::{activation_time, Client, StoredKey, Tenant};
use crate::service::{key_aad, AuthService};
use crate::store::{TOPIC_CLIENT, TOPIC_TENANT};

/// Limits on client definitions.
const MAX_NAME: usize = 200;
const MAX_LIST: usize = 100;

impl From<&Client> for ClientView {
    fn from(c: &Client) -> Self {
        ClientView {
            client_id: c.id.to_string(),
            tenant: c.tenant.to_string(),
            name: c.name.clone(),
            scopes: c.scopes.clone(),
            audiences: c.audiences.clone(),
            token_ttl_seconds: c.token_ttl_seconds,
            admin: c.admin,
            token_endpoint_auth_method: if c.tls_client_auth_san_uri.is_some() {
                "tls_client_auth".into()
            } else {
                "client_secret_basic".into()
            },
            tls_client_auth_san_uri: c.tls_client_auth_san_uri.clone(),
            created_at: c.created_at,
            previous_secret_expires_at: c.previous_secret.as_ref().map(|(_, e)| *e),
        }
    }
}

fn conflict_or(e: DbError, what: String) -> AuthError {
    match e {
        DbError::Conflict => AuthError::Conflict(what),
        e => AuthError::Db(e),
    }
}

impl AuthService {
    async fn guard(&self, caller: &Caller, action: &str, resource: &Crn) -> Result<(), AuthError> {
        Ok(guard(self.authorizer.as_ref(), caller, action, resource, &[]).await?)
    }

    fn tenant_view(&self, t: &Tenant) -> TenantView {
        TenantView {
            id: t.id.to_string(),
            signing_alg: t.signing_alg.as_str().into(),
            issuer: self.issuer(&t.id),
            created_at: t.created_at,
        }
    }

    fn new_secret(&self) -> Result<Secret<String>, AuthError> {
        // 256 bits, prefixed so secret scanners can recognise a leaked one.
        Ok(Secret::new(format!(
            "cps_{}",
            random_b64(self.rng.as_ref(), 32)?
        )))
    }

    /// Creates a tenant with a first signing key, if it does not exist. Returns whether it did.
    pub async fn ensure_tenant(&self, id: &TenantId, alg: Alg) -> Result<bool, AuthError> {
        let t = Tenant {
            id: id.clone(),
            signing_alg: alg,
            created_at: self.now(),
        };
        match self.store.create_tenant(&t).await {
            Ok(()) => {}
            Err(DbError::Conflict) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        self.add_key(id, alg, 0).await?;
        Ok(true)
    }

    /// Creates a client. `admin` makes it an administrator of its tenant.
    pub async fn create_client_unchecked(
        &self,
        tenant: &TenantId,
        req: NewClient,
        admin: bool,
    ) -> Result<ClientWithSecret, AuthError> {
        validate_client(&req, self.cfg.max_token_ttl)?;
        let secret = self.new_secret()?;
        let now = self.now();
        let id = PrincipalId::generate(PrincipalKind::Service, self.rng.as_ref())?;
        let tls_client_auth_san_uri = match req.token_endpoint_auth_method.as_deref() {
            Some("tls_client_auth") => {
                Some(req.tls_client_auth_san_uri.clone().unwrap_or_else(|| {
                    format!("spiffe://{}/t/{tenant}/{id}", self.cfg.trust_domain)
                }))
            }
            _ => None,
        };
        let client = Client {
            id,
            tls_client_auth_san_uri,
            tenant: tenant.clone(),
            name: req.name,
            secret_hash: self.hasher.hash(secret.expose()),
            previous_secret: None,
            scopes: dedup(req.scopes),
            audiences: dedup(req.audiences),
            token_ttl_seconds: req.token_ttl_seconds,
            admin,
            created_at: now,
            updated_at: now,
        };
        self.store
            .create_client(&client)
            .await
            .map_err(|e| conflict_or(e, "client id already exists".into()))?;
        self.changed(tenant, TOPIC_CLIENT, client.id.as_str());
        Ok(ClientWithSecret {
            client: ClientView::from(&client),
            client_secret: secret.expose().clone(),
        })
    }

    /// Whether the tenant has an administrator client.
    pub async fn has_admin(&self, tenant: &TenantId) -> Result<bool, AuthError> {
        Ok(self.store.has_admin(tenant).await?)
    }

    /// The administrator client made by `capstan bootstrap`, `capstan dev` and tenant creation:
    /// scopes none, audience the Capstan API.
    pub async fn create_admin_client(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<ClientWithSecret, AuthError> {
        let req = NewClient {
            name: name.into(),
            scopes: vec![],
            audiences: vec![self.cfg.api_audience.clone()],
            token_ttl_seconds: None,
            permissions_boundary: None,
            token_endpoint_auth_method: None,
            tls_client_auth_san_uri: None,
        };
        let created = self.create_client_unchecked(tenant, req, true).await?;
        let principal = PrincipalId::parse(&created.client.client_id)?;
        self.authorizer
            .grant_administrator(tenant, &principal)
            .await
            .map_err(|e| match e {
                AuthzError::Unavailable => AuthError::Guard(GuardError::Unavailable),
                e => {
                    tracing::error!(error = %e, "cannot grant administrator access");
                    AuthError::Crypto("cannot grant administrator access")
                }
            })?;
        Ok(created)
    }

    /// `POST /v1/tenants`.
    pub async fn create_tenant(
        &self,
        caller: &Caller,
        req: NewTenant,
    ) -> Result<CreatedTenant, AuthError> {
        let id = TenantId::parse(&req.id)?;
        let system = TenantId::default_tenant();
        self.guard(
            caller,
            "auth:CreateTenant",
            &Crn::new("auth", &system, &format!("tenants/{id}")),
        )
        .await?;
        let alg = match req.signing_alg.as_deref() {
            Some(a) => Alg::parse(a)?,
            None => Alg::ES256,
        };
        if !self.ensure_tenant(&id, alg).await? {
            return Err(AuthError::Conflict(format!(
                "tenant \"{id}\" already exists"
            )));
        }
        let admin_client = self
            .create_admin_client(&id, &format!("{id}-admin"))
            .await?;
        let tenant = self
            .store
            .get_tenant(&id)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("tenant \"{id}\" does not exist")))?;
        Ok(CreatedTenant {
            tenant: self.tenant_view(&tenant),
            admin_client,
        })
    }

    /// `GET /v1/tenants`.
    pub async fn list_tenants(&self, caller: &Caller) -> Result<Vec<TenantView>, AuthError> {
        let system = TenantId::default_tenant();
        self.guard(
            caller,
            "auth:ListTenants",
            &Crn::new("auth", &system, "tenants/*"),
        )
        .await?;
        let tenants = self.store.list_tenants().await?;
        Ok(tenants.iter().map(|t| self.tenant_view(t)).collect())
    }

    /// `POST /v1/clients`.
    pub async fn create_client(
        &self,
        caller: &Caller,
        req: NewClient,
    ) -> Result<ClientWithSecret, AuthError> {
        let boundary = req.permissions_boundary.clone();
        let context: Vec<(&str, &str)> = boundary
            .as_deref()
            .map(|b| ("policy:PermissionsBoundary", b))
            .into_iter()
            .collect();
        guard(
            self.authorizer.as_ref(),
            caller,
            "auth:CreateClient",
            &Crn::new("auth", &caller.tenant, "clients/*"),
            &context,
        )
        .await?;
        let created = self
            .create_client_unchecked(&caller.tenant, req, false)
            .await?;
        if let Some(b) = boundary {
            let id = PrincipalId::parse(&created.client.client_id)?;
            if let Err(e) = self.authorizer.set_boundary(&caller.tenant, &id, &b).await {
                // A principal never exists without the boundary it was created with.
                let _ = self
                    .store
                    .delete_client(&caller.tenant, &id, self.now())
                    .await;
                self.changed(&caller.tenant, TOPIC_CLIENT, id.as_str());
                return Err(match e {
                    AuthzError::Denied { reason } => {
                        AuthError::BadRequest(format!("permissions_boundary: {reason}"))
                    }
                    AuthzError::Unavailable => AuthError::Guard(GuardError::Unavailable),
                    AuthzError::Internal => AuthError::Guard(GuardError::Internal),
                });
            }
        }
        Ok(created)
    }

    /// `GET /v1/clients`.
    pub async fn list_clients(&self, caller: &Caller) -> Result<Vec<ClientView>, AuthError> {
        self.guard(
            caller,
            "auth:ListClients",
            &Crn::new("auth", &caller.tenant, "clients/*"),
        )
        .await?;
        let clients = self.store.list_clients(&caller.tenant).await?;
        Ok(clients.iter().map(ClientView::from).collect())
    }

    fn client_id(id: &str) -> Result<PrincipalId, AuthError> {
        PrincipalId::parse(id).map_err(|_| AuthError::NotFound(format!("client {id:?} not found")))
    }

    /// `GET /v1/clients/{id}`.
    pub async fn get_client(&self, caller: &Caller, id: &str) -> Result<ClientView, AuthError> {
        self.guard(
            caller,
            "auth:GetClient",
            &Crn::new("auth", &caller.tenant, &format!("clients/{id}")),
        )
        .await?;
        let pid = Self::client_id(id)?;
        let c = self
            .store
            .get_client(&caller.tenant, &pid)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("client {id:?} not found")))?;
        Ok(ClientView::from(&c))
    }

    /// `DELETE /v1/clients/{id}`: the client's tokens become inactive everywhere.
    pub async fn delete_client(&self, caller: &Caller, id: &str) -> Result<(), AuthError> {
        self.guard(
            caller,
            "auth:DeleteClient",
            &Crn::new("auth", &caller.tenant, &format!("clients/{id}")),
        )
        .await?;
        let pid = Self::client_id(id)?;
        if !self
            .store
            .delete_client(&caller.tenant, &pid, self.now())
            .await?
        {
            return Err(AuthError::NotFound(format!("client {id:?} not found")));
        }
        self.changed(&caller.tenant, TOPIC_CLIENT, pid.as_str());
        Ok(())
    }

    /// `POST /v1/clients/{id}/secret`: a new secret; the old one keeps working for the grace
    /// period.
    pub async fn rotate_secret(
        &self,
        caller: &Caller,
        id: &str,
        req: RotateSecret,
    ) -> Result<ClientWithSecret, AuthError> {
        self.guard(
            caller,
            "auth:RotateClientSecret",
            &Crn::new("auth", &caller.tenant, &format!("clients/{id}")),
        )
        .await?;
        let grace = req.grace_period_seconds.unwrap_or(0);
        if !(0..=30 * 86_400).contains(&grace) {
            return Err(AuthError::BadRequest(
                "grace_period_seconds must be between 0 and 2592000 (30 days)".into(),
            ));
        }
        let pid = Self::client_id(id)?;
        let mut client = self
            .store
            .get_client(&caller.tenant, &pid)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("client {id:?} not found")))?;
        let secret = self.new_secret()?;
        let now = self.now();
        let new_hash = self.hasher.hash(secret.expose());
        let previous = (grace > 0).then(|| (client.secret_hash.clone(), now + grace));
        self.store
            .set_secret(
                &caller.tenant,
                &pid,
                &new_hash,
                previous.as_ref().map(|(h, e)| (h.as_slice(), *e)),
                now,
            )
            .await?;
        self.changed(&caller.tenant, TOPIC_CLIENT, pid.as_str());
        client.secret_hash = new_hash;
        client.previous_secret = previous;
        Ok(ClientWithSecret {
            client: ClientView::from(&client),
            client_secret: secret.expose().clone(),
        })
    }

    async fn add_key(
        &self,
        tenant: &TenantId,
        alg: Alg,
        delay: i64,
    ) -> Result<StoredKey, AuthError> {
        let generated = generate_key(alg, self.rng.as_ref())?;
        let now = self.now();
        let activates_at = activation_time(&self.store.list_keys(tenant).await?, now, delay);
        let sealed = self.sealer.seal(
            self.rng.as_ref(),
            generated.private_pkcs8.expose(),
            key_aad(tenant, &generated.kid).as_bytes(),
        )?;
        let key = StoredKey {
            tenant: tenant.clone(),
            kid: generated.kid,
            alg,
            public_jwk: generated.public,
            private_key_sealed: sealed,
            created_at: now,
            activates_at,
        };
        self.store.insert_key(&key).await?;
        self.changed(tenant, TOPIC_TENANT, tenant.as_str());
        Ok(key)
    }

    /// `POST /v1/keys/rotate`: publishes a new key now; it signs after the publish delay.
    pub async fn rotate_key(&self, caller: &Caller, req: RotateKey) -> Result<KeyView, AuthError> {
        self.guard(
            caller,
            "auth:RotateSigningKey",
            &Crn::new("auth", &caller.tenant, "keys/*"),
        )
        .await?;
        let delay = req
            .publish_delay_seconds
            .unwrap_or(self.cfg.key_publish_delay);
        if !(0..=30 * 86_400).contains(&delay) {
            return Err(AuthError::BadRequest(
                "publish_delay_seconds must be between 0 and 2592000 (30 days)".into(),
            ));
        }
        let keys = self.tenant_keys(&caller.tenant).await?;
        let alg = match req.alg.as_deref() {
            Some(a) => {
                let alg = Alg::parse(a)?;
                if alg != keys.tenant.signing_alg {
                    self.store
                        .set_signing_alg(&caller.tenant, alg, self.now())
                        .await?;
                    self.changed(&caller.tenant, TOPIC_TENANT, caller.tenant.as_str());
                }
                alg
            }
            None => keys.tenant.signing_alg,
        };
        if req.supersede {
            // Withdraw what waits to sign, then sign with the new key at once.
            let now = self.now();
            let pending: Vec<String> = keys
                .stored
                .iter()
                .filter(|k| k.activates_at > now)
                .map(|k| k.kid.clone())
                .collect();
            if !pending.is_empty() {
                self.store
                    .delete_keys(&caller.tenant, &pending, now)
                    .await?;
            }
            self.changed(&caller.tenant, TOPIC_TENANT, caller.tenant.as_str());
            let k = self.add_key(&caller.tenant, alg, 0).await?;
            return Ok(key_view(&k));
        }
        let k = self.add_key(&caller.tenant, alg, delay).await?;
        Ok(key_view(&k))
    }

    /// `DELETE /v1/keys/{kid}`: withdraws a key from the JWKS at once; tokens it signed stop
    /// verifying on every server. The key that signs now cannot be withdrawn until another
    /// signs (rotate with `supersede` first).
    pub async fn delete_key(&self, caller: &Caller, kid: &str) -> Result<(), AuthError> {
        self.guard(
            caller,
            "auth:DeleteSigningKey",
            &Crn::new("auth", &caller.tenant, &format!("keys/{kid}")),
        )
        .await?;
        let keys = self.tenant_keys(&caller.tenant).await?;
        let now = self.now();
        if !keys.stored.iter().any(|k| k.kid == kid) {
            return Err(AuthError::NotFound(format!("key {kid:?} not found")));
        }
        if crate::model::active_key(&keys.stored, now).is_some_and(|k| k.kid == kid) {
            return Err(AuthError::Conflict(format!(
                "key {kid:?} is the one that signs now: rotate with \"supersede\": true first"
            )));
        }
        self.store
            .delete_keys(&caller.tenant, &[kid.to_owned()], now)
            .await?;
        self.changed(&caller.tenant, TOPIC_TENANT, caller.tenant.as_str());
        Ok(())
    }

    /// `GET /v1/keys`: the tenant's published keys.
    pub async fn list_keys(&self, caller: &Caller) -> Result<Vec<KeyView>, AuthError> {
        self.guard(
            caller,
            "auth:ListSigningKeys",
            &Crn::new("auth", &caller.tenant, "keys/*"),
        )
        .await?;
        let keys = self.tenant_keys(&caller.tenant).await?;
        Ok(keys
            .published(self.now(), self.cfg.max_token_ttl)
            .into_iter()
            .map(key_view)
            .collect())
    }

    /// The JWKS document of a tenant: every published key.
    pub async fn jwks(&self, tenant: &TenantId) -> Result<serde_json::Value, AuthError> {
        let keys = self.tenant_keys(tenant).await?;
        let published: Vec<_> = keys
            .published(self.now(), self.cfg.max_token_ttl)
            .into_iter()
            .map(|k| k.public_jwk.clone())
            .collect();
        Ok(serde_json::json!({ "keys": published }))
    }

    /// Whether a tenant exists (from cache when possible).
    pub async fn tenant_exists(&self, tenant: &TenantId) -> Result<bool, AuthError> {
        match self.tenant_keys(tenant).await {
            Ok(_) => Ok(true),
            Err(AuthError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Algorithms of the tenant's published keys (for discovery metadata).
    pub async fn tenant_algs(&self, tenant: &TenantId) -> Result<Vec<&'static str>, AuthError> {
        let keys: Arc<_> = self.tenant_keys(tenant).await?;
        let mut algs: Vec<&'static str> = keys
            .published(self.now(), self.cfg.max_token_ttl)
            .iter()
            .map(|k| k.alg.as_str())
            .collect();
        algs.sort_unstable();
        algs.dedup();
        Ok(algs)
    }
}

fn key_view(k: &StoredKey) -> KeyView {
    KeyView {
        kid: k.kid.clone(),
        alg: k.alg.as_str().into(),
        created_at: k.created_at,
        activates_at: k.activates_at,
    }
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|s| seen.insert(s.clone()));
    v
}

fn validate_client(req: &NewClient, max_ttl: i64) -> Result<(), AuthError> {
    let bad = |m: String| Err(AuthError::BadRequest(m));
    if req.name.trim().is_empty()
        || req.name.chars().count() > MAX_NAME
        || req.name.chars().any(char::is_control)
    {
        return bad(format!(
            "name: must be 1 to {MAX_NAME} characters, without control characters"
        ));
    }
    if req.scopes.len() > MAX_LIST || req.audiences.len() > MAX_LIST {
        return bad(format!(
            "scopes, audiences: at most {MAX_LIST} entries each"
        ));
    }
    for (i, s) in req.scopes.iter().enumerate() {
        check_scope_token(s).map_err(|e| AuthError::BadRequest(format!("scopes[{i}]: {e}")))?;
    }
    if req.audiences.is_empty() {
        return bad("audiences: at least one audience is required".into());
    }
    for (i, a) in req.audiences.iter().enumerate() {
        check_audience(a).map_err(|e| AuthError::BadRequest(format!("audiences[{i}]: {e}")))?;
    }
    if let Some(ttl) = req.token_ttl_seconds {
        if !(60..=max_ttl).contains(&ttl) {
            return bad(format!(
                "token_ttl_seconds: must be between 60 and {max_ttl}"
            ));
        }
    }
    match (
        req.token_endpoint_auth_method.as_deref(),
        req.tls_client_auth_san_uri.as_deref(),
    ) {
        (None | Some("client_secret_basic" | "client_secret_post"), None) => {}
        (Some("tls_client_auth"), None) => {}
        (Some("tls_client_auth"), Some(uri)) => {
            let ok = uri.len() <= 2048
                && uri.starts_with("spiffe://")
                && uri.len() > "spiffe://".len()
                && !uri.chars().any(|c| c.is_control() || c.is_whitespace());
            if !ok {
                return bad(
                    "tls_client_auth_san_uri: must be a SPIFFE ID (spiffe://<trust domain>/<path>) of at most 2048 characters".into(),
                );
            }
        }
        (_, Some(_)) => {
            return bad(
                "tls_client_auth_san_uri: only with token_endpoint_auth_method tls_client_auth"
                    .into(),
            )
        }
        (Some(other), None) => {
            return bad(format!(
                "token_endpoint_auth_method: {other:?} is not supported (client_secret_basic, client_secret_post, tls_client_auth)"
            ))
        }
    }
    Ok(())
}
