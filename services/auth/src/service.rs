//! The issuer service: configuration, caches, and keeping caches coherent across servers.
//!
//! Hot paths (token issuance, introspection, bearer checks) read only memory: clients, tenant
//! keys and revoked `jti`s are cached here. Every write goes to the database and appends to a
//! feed; every server polls the feeds (default every 250 ms) and drops or adds cache entries, so a
//! change made on one server is enforced by all of them within a second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use capstan_core::authz::Authorizer;
use capstan_core::clock::{Clock, UnixTime};
use capstan_core::crypto::{MasterKey, Sealer, SecretHasher};
use capstan_core::ids::{PrincipalId, TenantId};
use capstan_core::jwt::{SigningKey, VerifyingKey};
use capstan_core::rng::Rng;
use capstan_db::FeedCursor;

use crate::error::AuthError;
use crate::model::{active_key, published_keys, Client, StoredKey, Tenant};
use crate::store::AuthStore;

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
    /// How often caches poll the change feeds.
    pub sync_interval: Duration,
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
            sync_interval: Duration::from_millis(250),
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
}

/// Clients by tenant and id; `None` caches a miss.
type ClientCache = HashMap<(TenantId, PrincipalId), Option<Arc<Client>>>;

/// Cursor state of the feed poller.
#[derive(Default)]
struct SyncState {
    changes: FeedCursor,
    revocation_cursor: i64,
}

/// Revocations are idempotent, so their poll simply re-reads this many positions behind the
/// cursor to catch late commits.
const LOOKBACK: i64 = FeedCursor::LOOKBACK;

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
    /// Bumped on every invalidation, so a load that raced one is not cached.
    generation: AtomicU64,
    revoked: RwLock<HashMap<String, UnixTime>>,
    /// Tokens whose signature, type and key were verified, by the whole token text (a forged
    /// payload is another key). Time, issuer and audience are re-checked on every use.
    pub(crate) verified: RwLock<HashMap<String, Arc<capstan_core::jwt::AccessClaims>>>,
    sync: Mutex<SyncState>,
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
            revoked: RwLock::default(),
            verified: RwLock::default(),
            sync: Mutex::default(),
            metrics: AuthMetrics::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AuthConfig {
        &self.cfg
    }

    /// The store (for readiness checks).
    pub fn store(&self) -> &Arc<dyn AuthStore> {
        &self.store
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
        if let Some(t) = read(&self.tenants).get(id) {
            return Ok(t.clone());
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let tenant = self
            .store
            .get_tenant(id)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("tenant {id:?} does not exist")))?;
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
        if let Some(c) = read(&self.clients).get(&key) {
            return Ok(c.clone());
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let found = self.store.get_client(tenant, id).await?.map(Arc::new);
        // Misses are cached too (tokens of deleted clients must not cost a query each); creating
        // a client publishes a change that clears them.
        if self.generation.load(Ordering::SeqCst) == generation {
            write(&self.clients).insert(key, found.clone());
        }
        Ok(found)
    }

    /// Whether a token id has been revoked.
    pub(crate) fn is_revoked(&self, jti: &str) -> bool {
        read(&self.revoked).contains_key(jti)
    }

    pub(crate) fn remember_revocation(&self, jti: String, expires_at: UnixTime) {
        write(&self.revoked).insert(jti, expires_at);
    }

    /// Records a change: drops the local cache entry now and tells other servers via the feed.
    pub(crate) async fn publish(
        &self,
        tenant: &TenantId,
        topic: &str,
        key: &str,
    ) -> Result<(), AuthError> {
        self.invalidate(tenant.as_str(), topic, key);
        self.store
            .db()
            .publish_change(tenant.as_str(), topic, key, self.now())
            .await?;
        Ok(())
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

    /// Loads revocations and positions the feed cursors; then polls in the background until the
    /// returned handle is aborted or the runtime stops.
    pub async fn start_sync(self: &Arc<Self>) -> Result<tokio::task::JoinHandle<()>, AuthError> {
        let now = self.now();
        self.store.prune_revocations(now - self.cfg.leeway).await?;
        {
            let cursor = FeedCursor::at_end(self.store.db()).await?;
            self.sync
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .changes = cursor;
        }
        self.poll_revocations().await?;
        let me = Arc::clone(self);
        let every = self.cfg.sync_interval;
        Ok(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut polls: u64 = 0;
            loop {
                tick.tick().await;
                if let Err(e) = me.poll_once().await {
                    tracing::warn!(error = %e, "cache sync poll failed");
                }
                polls += 1;
                // Housekeeping about once a minute.
                if polls.is_multiple_of((60_000 / (every.as_millis().max(1) as u64)).max(1)) {
                    if let Err(e) = me.housekeeping().await {
                        tracing::warn!(error = %e, "housekeeping failed");
                    }
                }
            }
        }))
    }

    /// One round of feed polling (public so tests can drive it deterministically).
    pub async fn poll_once(&self) -> Result<(), AuthError> {
        self.poll_changes().await?;
        self.poll_revocations().await
    }

    async fn poll_changes(&self) -> Result<(), AuthError> {
        // The cursor leaves the lock while the query runs; only this task polls.
        let mut cursor = std::mem::take(
            &mut self
                .sync
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .changes,
        );
        let polled = cursor.poll(self.store.db()).await;
        self.sync
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .changes = cursor;
        for c in polled? {
            self.invalidate(&c.tenant, &c.topic, &c.key);
        }
        Ok(())
    }

    async fn poll_revocations(&self) -> Result<(), AuthError> {
        let cursor = self
            .sync
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .revocation_cursor;
        let mut after = (cursor - LOOKBACK).max(0);
        loop {
            let batch = self.store.revocations_after(after, 10_000).await?;
            let Some(last) = batch.last().map(|r| r.seq) else {
                break;
            };
            {
                let mut revoked = write(&self.revoked);
                for r in &batch {
                    revoked.insert(r.jti.clone(), r.expires_at);
                }
            }
            after = last;
            let mut s = self.sync.lock().unwrap_or_else(PoisonError::into_inner);
            s.revocation_cursor = s.revocation_cursor.max(last);
        }
        Ok(())
    }

    async fn housekeeping(&self) -> Result<(), AuthError> {
        let now = self.now();
        write(&self.revoked).retain(|_, exp| *exp + self.cfg.leeway >= now);
        write(&self.verified).retain(|_, c| c.exp + self.cfg.leeway >= now);
        self.store.prune_revocations(now - self.cfg.leeway).await?;
        self.store.db().prune_changes(now - 3600).await?;
        Ok(())
    }
}

/// Feed topic for client changes (key: client id).
pub(crate) const TOPIC_CLIENT: &str = "client";
/// Feed topic for a tenant's keys or settings (key: tenant id).
pub(crate) const TOPIC_TENANT: &str = "tenant";

/// The AAD binding a sealed private key to its tenant and key id.
pub(crate) fn key_aad(tenant: &TenantId, kid: &str) -> String {
    format!("capstan/signing-key/{tenant}/{kid}")
}
