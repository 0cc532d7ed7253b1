//! The issuer service: configuration, caches, and keeping caches coherent across servers.
//!
//! Hot paths (token issuance, introspection, bearer checks) read only memory: clients, tenant
//! keys and revoked `jti`s are cached here. Every write goes to the database with its change-feed
//! row in the same transaction; the server's feed runner hands each change to
//! [`AuthService::on_change`] on every server (woken by NOTIFY on Postgres, polled as a
//! fallback), which drops or adds cache entries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use capstan_core::authz::Authorizer;
use capstan_core::clock::{Clock, UnixTime};
use capstan_core::crypto::{MasterKey, Sealer, SecretHasher};
use capstan_core::flight::Flights;
use capstan_core::ids::{PrincipalId, TenantId};
use capstan_core::jwt::{SigningKey, VerifyingKey};
use capstan_core::rng::Rng;
use capstan_db::Change;

use crate::error::AuthError;
use crate::model::{active_key, published_keys, Client, StoredKey, Tenant};
use crate::store::{AuthStore, TOPIC_CLIENT, TOPIC_REVOCATION, TOPIC_TENANT};

/// Issuer settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Base URL clients reach Capstan at; issuers are `{public_url}/t/{tenant}`.
    pub public_url: String,
    /// Access-token lifetime when the client sets none (seconds).
    pub default_token_ttl: i64,
    /// Upper bound of any token lifetime; retired keys stay published this long.
    pub max_token_ttl: i64,
    /// Delay between publishing a rotated key and signing with it (seconds).
    pub key_publish_delay: i64,
    /// Clock skew tolerated when checking `exp` and `nbf` (seconds).
    pub leeway: i64,
    /// The audience Capstan's own API requires in bearer tokens.
    pub api_audience: String,
    /// The SPIFFE trust domain: a `tls_client_auth` client's default certificate subject is
    /// its own SPIFFE ID, `spiffe://<trust_domain>/t/<tenant>/<client id>`.
    pub trust_domain: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            public_url: "http://127.0.0.1:8470".into(),
            default_token_ttl: 900,
            max_token_ttl: 86_400,
            key_publish_delay: 600,
            leeway: 5,
            api_audience: "capstan".into(),
            trust_domain: "capstan.local".into(),
        }
    }
}

/// A tenant with its keys ready to sign and verify.
pub(crate) struct TenantKeys {
    pub tenant: Tenant,
    pub stored: Vec<StoredKey>,
    pub signers: HashMap<String, Arc<SigningKey>>,
    pub verifiers: HashMap<String, VerifyingKey>,
}

impl TenantKeys {
    pub fn signer(&self, now: UnixTime) -> Option<&Arc<SigningKey>> {
        active_key(&self.stored, now).and_then(|k| self.signers.get(&k.kid))
    }

    pub fn published(&self, now: UnixTime, max_ttl: i64) -> Vec<&StoredKey> {
        published_keys(&self.stored, now, max_ttl)
    }

    /// The verifier for `kid`, only while the key is published.
    pub fn verifier(&self, kid: &str, now: UnixTime, max_ttl: i64) -> Option<&VerifyingKey> {
        self.published(now, max_ttl)
            .iter()
            .any(|k| k.kid == kid)
            .then(|| self.verifiers.get(kid))
            .flatten()
    }
}

/// Counters exported at `/metrics`.
#[derive(Debug, Default)]
pub struct AuthMetrics {
    /// Access tokens issued.
    pub tokens_issued: AtomicU64,
    /// Token requests refused (any OAuth error).
    pub token_errors: AtomicU64,
    /// Introspection requests answered.
    pub introspections: AtomicU64,
    /// Tokens revoked.
    pub revocations: AtomicU64,
    /// Access-token signatures checked (a verified token is served from memory afterwards).
    pub signature_checks: AtomicU64,
    /// Tenants' key sets read from storage on a cache miss.
    pub key_loads: AtomicU64,
    /// Clients read from storage on a cache miss.
    pub client_loads: AtomicU64,
}

/// At most this many unknown client ids are remembered as misses.
pub(crate) const MAX_CLIENT_MISSES: u64 = 10_000;

/// Clients by tenant and id; `None` caches a miss.
type ClientCache = HashMap<(TenantId, PrincipalId), Option<Arc<Client>>>;

/// The OAuth2 issuer.
pub struct AuthService {
    pub(crate) cfg: AuthConfig,
    pub(crate) store: Arc<dyn AuthStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) rng: Arc<dyn Rng>,
    pub(crate) authorizer: Arc<dyn Authorizer>,
    pub(crate) sealer: Sealer,
    pub(crate) hasher: SecretHasher,
    tenants: RwLock<HashMap<TenantId, Arc<TenantKeys>>>,
    clients: RwLock<ClientCache>,
    /// Misses cached since the miss cache was last emptied.
    client_misses: AtomicU64,
    /// Bumped on every invalidation, so a load that raced one is not cached.
    generation: AtomicU64,
    revoked: RwLock<HashMap<String, UnixTime>>,
    /// Tokens whose signature, type and key were verified, by the whole token text (a forged
    /// payload is another key). Time, issuer and audience are re-checked on every use.
    pub(crate) verified: RwLock<HashMap<String, Arc<(capstan_core::jwt::AccessClaims, String)>>>,
    /// Single-flight fills of the caches above: a crowd of requests missing the same entry
    /// (a replica that just started, every client reconnecting) loads or verifies it once.
    pub(crate) tenant_flights: Flights<TenantId>,
    pub(crate) client_flights: Flights<(TenantId, PrincipalId)>,
    pub(crate) verify_flights: Flights<String>,
    /// Counters for `/metrics`.
    pub metrics: AuthMetrics,
}

pub(crate) fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

impl AuthService {
    /// Builds the service. Call [`AuthService::start_sync`] before serving.
    pub fn new(
        cfg: AuthConfig,
        store: Arc<dyn AuthStore>,
        master: &MasterKey,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        authorizer: Arc<dyn Authorizer>,
    ) -> Result<AuthService, AuthError> {
        Ok(AuthService {
            cfg,
            store,
            clock,
            rng,
            authorizer,
            sealer: master.sealer()?,
            hasher: master.secret_hasher(),
            tenants: RwLock::default(),
            clients: RwLock::default(),
            generation: AtomicU64::new(0),
            client_misses: AtomicU64::new(0),
            revoked: RwLock::default(),
            verified: RwLock::default(),
            tenant_flights: Flights::new(),
            client_flights: Flights::new(),
            verify_flights: Flights::new(),
            metrics: AuthMetrics::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AuthConfig {
        &self.cfg
    }

    /// The current time of the injected clock.
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// The issuer URL of a tenant.
    pub fn issuer(&self, tenant: &TenantId) -> String {
        crate::model::issuer_url(&self.cfg.public_url, tenant)
    }

    /// A tenant's keys, from cache or storage. `NotFound` if the tenant does not exist.
    pub(crate) async fn tenant_keys(&self, id: &TenantId) -> Result<Arc<TenantKeys>, AuthError> {
        let cached = || read(&self.tenants).get(id).cloned();
        self.tenant_flights
            .get_or_load(id, cached, || self.load_tenant_keys(id))
            .await
    }

    /// Reads a tenant's keys from storage into the cache.
    async fn load_tenant_keys(&self, id: &TenantId) -> Result<Arc<TenantKeys>, AuthError> {
        let generation = self.generation.load(Ordering::SeqCst);
        self.metrics.key_loads.fetch_add(1, Ordering::Relaxed);
        let tenant = self
            .store
            .get_tenant(id)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("tenant \"{id}\" does not exist")))?;
        let stored = self.store.list_keys(id).await?;
        let mut signers = HashMap::new();
        let mut verifiers = HashMap::new();
        for k in &stored {
            let aad = key_aad(&k.tenant, &k.kid);
            let pkcs8 = self.sealer.open(&k.private_key_sealed, aad.as_bytes())?;
            signers.insert(
                k.kid.clone(),
                Arc::new(SigningKey::from_pkcs8(&k.kid, k.alg, &pkcs8)?),
            );
            verifiers.insert(k.kid.clone(), VerifyingKey::from_jwk(&k.public_jwk)?);
        }
        let keys = Arc::new(TenantKeys {
            tenant,
            stored,
            signers,
            verifiers,
        });
        if self.generation.load(Ordering::SeqCst) == generation {
            write(&self.tenants).insert(id.clone(), keys.clone());
        }
        Ok(keys)
    }

    /// Checks that the master key opens the tenant's stored signing keys, so a server started
    /// with the wrong key fails at once instead of on every request.
    pub async fn check_master_key(&self, tenant: &TenantId) -> Result<(), AuthError> {
        match self.tenant_keys(tenant).await {
            Err(AuthError::Crypto(_)) => Err(AuthError::Crypto(
                "the master key cannot decrypt the stored signing keys (wrong CAPSTAN_MASTER_KEY?)",
            )),
            r => r.map(|_| ()),
        }
    }

    /// A client from cache or storage; `None` if it does not exist (also cached).
    pub(crate) async fn client(
        &self,
        tenant: &TenantId,
        id: &PrincipalId,
    ) -> Result<Option<Arc<Client>>, AuthError> {
        let key = (tenant.clone(), id.clone());
        let cached = || read(&self.clients).get(&key).cloned();
        self.client_flights
            .get_or_load(&key, cached, || self.load_client(tenant, id))
            .await
    }

    /// Reads a client from storage into the cache (a miss too).
    async fn load_client(
        &self,
        tenant: &TenantId,
        id: &PrincipalId,
    ) -> Result<Option<Arc<Client>>, AuthError> {
        let generation = self.generation.load(Ordering::SeqCst);
        self.metrics.client_loads.fetch_add(1, Ordering::Relaxed);
        let found = self.store.get_client(tenant, id).await?.map(Arc::new);
        // Misses are cached too (tokens of deleted clients must not cost a query each); creating
        // a client publishes a change that clears them.
        if self.generation.load(Ordering::SeqCst) == generation {
            let mut cache = write(&self.clients);
            if found.is_none() {
                // Misses are what a request can make up (random client ids): bounded, and
                // forgotten all at once when full (each costs one query to learn again).
                let misses = self.client_misses.fetch_add(1, Ordering::Relaxed) + 1;
                if misses > MAX_CLIENT_MISSES {
                    cache.retain(|_, c| c.is_some());
                    self.client_misses.store(1, Ordering::Relaxed);
                }
            }
            cache.insert((tenant.clone(), id.clone()), found.clone());
        }
        Ok(found)
    }

    /// Revoked token ids remembered (each until its token expires). For tests and metrics.
    pub fn revoked_count(&self) -> usize {
        read(&self.revoked).len()
    }

    /// Cached client entries: (clients found, misses). For tests and metrics.
    pub fn cached_clients(&self) -> (usize, usize) {
        let cache = read(&self.clients);
        let misses = cache.values().filter(|c| c.is_none()).count();
        (cache.len() - misses, misses)
    }

    /// Whether a token id has been revoked.
    pub(crate) fn is_revoked(&self, jti: &str) -> bool {
        read(&self.revoked).contains_key(jti)
    }

    pub(crate) fn remember_revocation(&self, jti: String, expires_at: UnixTime) {
        write(&self.revoked).insert(jti, expires_at);
    }

    /// After a write (whose feed row went out in its transaction): drops this server's cache
    /// entry at once; other servers drop theirs when the feed delivers the change.
    pub(crate) fn changed(&self, tenant: &TenantId, topic: &str, key: &str) {
        self.invalidate(tenant.as_str(), topic, key);
    }

    fn invalidate(&self, tenant: &str, topic: &str, key: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        match topic {
            TOPIC_CLIENT => {
                if let (Ok(t), Ok(id)) = (TenantId::parse(tenant), PrincipalId::parse(key)) {
                    write(&self.clients).remove(&(t, id));
                }
            }
            _ => {
                if let Ok(id) = TenantId::parse(tenant) {
                    write(&self.tenants).remove(&id);
                }
            }
        }
    }

    /// A change from the feed, made on any server.
    pub fn on_change(&self, c: &Change) {
        match c.topic.as_str() {
            TOPIC_REVOCATION => {
                // The key is `<jti> <exp>`; without a readable expiry, keep the jti as long as
                // any token can live.
                let (jti, exp) = match c.key.rsplit_once(' ') {
                    Some((jti, exp)) => (jti, exp.parse().ok()),
                    None => (c.key.as_str(), None),
                };
                let now = self.now();
                let exp = exp.unwrap_or(now + self.cfg.max_token_ttl);
                // A token already expired needs no revocation (and housekeeping dropped it).
                if exp + self.cfg.leeway >= now {
                    self.remember_revocation(jti.to_owned(), exp);
                }
            }
            TOPIC_CLIENT | TOPIC_TENANT => self.invalidate(&c.tenant, &c.topic, &c.key),
            _ => {}
        }
    }

    /// Loads every unexpired revocation (before serving; later ones arrive through the feed,
    /// whose cursor the server positions first, so none falls between).
    pub async fn load_revocations(&self) -> Result<(), AuthError> {
        let now = self.now();
        self.store.prune_revocations(now - self.cfg.leeway).await?;
        let mut after = 0;
        loop {
            let batch = self.store.revocations_after(after, 10_000).await?;
            let Some(last) = batch.last().map(|r| r.seq) else {
                break;
            };
            let mut revoked = write(&self.revoked);
            for r in batch {
                revoked.insert(r.jti, r.expires_at);
            }
            after = last;
        }
        Ok(())
    }

    /// Drops expired revocations (memory and table) and expired verified tokens.
    pub async fn housekeeping(&self) -> Result<(), AuthError> {
        let now = self.now();
        write(&self.revoked).retain(|_, exp| *exp + self.cfg.leeway >= now);
        write(&self.verified).retain(|_, c| c.0.exp + self.cfg.leeway >= now);
        self.store.prune_revocations(now - self.cfg.leeway).await?;
        Ok(())
    }
}

/// The AAD binding a sealed private key to its tenant and key id.
pub(crate) fn key_aad(tenant: &TenantId, kid: &str) -> String {
    format!("capstan/signing-key/{tenant}/{kid}")
}
