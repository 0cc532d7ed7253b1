//! The identity service: the deployment's CA generations, issuance of X.509-SVIDs and
//! JWT-SVIDs to principals, registration entries and join tokens.
//!
//! The CAs (their certificates and opened keys) are held in memory; a CA write on any server
//! reaches every server through the change feed (`identity.ca`), which drops the cache. Which CA
//! signs follows from the records and the time ([`crate::model`]), so replicas agree without
//! coordination; two replicas making the same generation at once collide on its unique number
//! and the loser reloads.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use capstan_core::authz::{guard, Authorizer, Caller};
use capstan_core::clock::{Clock, UnixTime};
use capstan_core::crn::Crn;
use capstan_core::crypto::{Sealer, SecretHasher};
use capstan_core::flight::Flights;
use capstan_core::ids::{PrincipalId, TenantId};
use capstan_core::jwt::{generate_key, Alg, SigningKey};
use capstan_core::rng::{random_b64, Rng};
use capstan_db::{Change, DbError};
use capstan_proto::identity::{
    CaView, EntryView, IssueJwtSvid, IssueSvid, JoinTokenResponse, JwtSvidResponse, NewEntry,
    NewJoinToken, RotateCa, SvidRecordView, SvidResponse, UpdateEntry,
};
use serde::Deserialize;

use crate::error::IdentityError;
use crate::model::{self, CaRecord, Entry, JoinToken, Slot, SvidRecord};
use crate::pki::{self, CaKeyType, CaMaterial, CaSigner, LeafSpec};
use crate::spiffe::{self, SpiffeId, TrustDomain};
use crate::store::{IdentityStore, TOPIC_CA};

/// The `[service.identity]` section of the server's configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    /// Key type of generated CAs: `ec-p256` (default) or `ed25519`.
    pub ca_key_type: Option<String>,
    /// Lifetime of a generated CA, in days [365].
    pub ca_ttl_days: Option<i64>,
    /// Seconds a new CA is in the bundle before it signs [3600].
    pub ca_prepare_seconds: Option<i64>,
    /// X.509-SVID lifetime when the principal's entry sets none, in seconds [3600].
    pub default_svid_ttl_seconds: Option<i64>,
    /// Longest X.509-SVID lifetime, in seconds [86400].
    pub max_svid_ttl_seconds: Option<i64>,
    /// JWT-SVID lifetime when the request sets none, in seconds [300]; at most 3600.
    pub jwt_svid_ttl_seconds: Option<i64>,
    /// How long issued-certificate records are kept after the certificate expired, in days [30].
    pub svid_record_retention_days: Option<i64>,
    /// The bundle's `spiffe_refresh_hint`, in seconds [300].
    pub bundle_refresh_hint_seconds: Option<i64>,
    /// X.509-SVIDs one principal may get per minute from one server [600]; more get 429.
    pub max_svids_per_principal_per_minute: Option<i64>,
}

/// The identity service's settings.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Key type of generated CAs.
    pub ca_key_type: CaKeyType,
    /// Lifetime of a generated CA (seconds).
    pub ca_ttl: i64,
    /// Time between publishing a new CA and signing with it (seconds).
    pub ca_prepare: i64,
    /// Default SVID lifetime.
    pub default_svid_ttl: i64,
    /// Longest SVID lifetime (also how long a retired CA stays in the bundle).
    pub max_svid_ttl: i64,
    /// Default JWT-SVID lifetime.
    pub jwt_svid_ttl: i64,
    /// Longest JWT-SVID lifetime.
    pub max_jwt_svid_ttl: i64,
    /// Default join-token lifetime.
    pub join_token_ttl: i64,
    /// Longest join-token lifetime.
    pub max_join_token_ttl: i64,
    /// How long records outlive their certificates.
    pub record_retention: i64,
    /// The bundle's refresh hint.
    pub refresh_hint: i64,
    /// X.509-SVIDs one principal may get per minute from one server.
    pub svids_per_principal_per_minute: i64,
    /// Clock skew tolerated.
    pub leeway: i64,
}

impl IdentityConfig {
    /// Settings for `trust_domain` with every default.
    pub fn new(trust_domain: TrustDomain) -> IdentityConfig {
        IdentityConfig {
            trust_domain,
            ca_key_type: CaKeyType::EcP256,
            ca_ttl: 365 * 86_400,
            ca_prepare: 3600,
            default_svid_ttl: 3600,
            max_svid_ttl: 86_400,
            jwt_svid_ttl: 300,
            max_jwt_svid_ttl: 3600,
            join_token_ttl: 3600,
            max_join_token_ttl: 7 * 86_400,
            record_retention: 30 * 86_400,
            refresh_hint: 300,
            svids_per_principal_per_minute: 600,
            leeway: 5,
        }
    }

    /// Settings from the trust domain and the `[service.identity]` section.
    pub fn from_section(td: &str, s: &IdentitySection) -> Result<IdentityConfig, String> {
        let mut c =
            IdentityConfig::new(TrustDomain::parse(td).map_err(|e| format!("trust_domain: {e}"))?);
        let positive = |name: &str, v: Option<i64>, default: i64| match v {
            None => Ok(default),
            Some(v) if v > 0 => Ok(v),
            Some(_) => Err(format!("{name} must be positive")),
        };
        if let Some(k) = &s.ca_key_type {
            c.ca_key_type = CaKeyType::parse(k).map_err(|e| format!("ca_key_type: {e}"))?;
        }
        c.ca_ttl = positive("ca_ttl_days", s.ca_ttl_days, 365)? * 86_400;
        c.ca_prepare = match s.ca_prepare_seconds {
            Some(v) if v < 0 => return Err("ca_prepare_seconds must not be negative".into()),
            Some(v) => v,
            None => c.ca_prepare,
        };
        c.default_svid_ttl = positive(
            "default_svid_ttl_seconds",
            s.default_svid_ttl_seconds,
            c.default_svid_ttl,
        )?;
        c.max_svid_ttl = positive(
            "max_svid_ttl_seconds",
            s.max_svid_ttl_seconds,
            c.max_svid_ttl,
        )?;
        if c.default_svid_ttl > c.max_svid_ttl {
            return Err("default_svid_ttl_seconds must not exceed max_svid_ttl_seconds".into());
        }
        c.jwt_svid_ttl = positive(
            "jwt_svid_ttl_seconds",
            s.jwt_svid_ttl_seconds,
            c.jwt_svid_ttl,
        )?
        .min(c.max_jwt_svid_ttl);
        c.record_retention = positive(
            "svid_record_retention_days",
            s.svid_record_retention_days,
            30,
        )? * 86_400;
        c.refresh_hint = positive(
            "bundle_refresh_hint_seconds",
            s.bundle_refresh_hint_seconds,
            c.refresh_hint,
        )?;
        c.svids_per_principal_per_minute = positive(
            "max_svids_per_principal_per_minute",
            s.max_svids_per_principal_per_minute,
            c.svids_per_principal_per_minute,
        )?;
        if c.ca_ttl <= 2 * c.max_svid_ttl {
            return Err("ca_ttl_days must be longer than twice max_svid_ttl_seconds".into());
        }
        Ok(c)
    }
}

/// The CA that signs now, with its opened keys and the CA set it was taken from.
struct SigningCa {
    id: String,
    x509: Arc<CaSigner>,
    jwt: Arc<SigningKey>,
    loaded: Arc<Loaded>,
}

/// The CAs with their keys opened.
pub(crate) struct Loaded {
    pub cas: Vec<CaRecord>,
    signers: HashMap<String, Arc<CaSigner>>,
    jwt: HashMap<String, Arc<SigningKey>>,
}

/// Counters exported at `/metrics`.
#[derive(Debug, Default)]
pub struct IdentityMetrics {
    /// X.509-SVIDs issued.
    pub svids_issued: AtomicU64,
    /// JWT-SVIDs issued.
    pub jwt_svids_issued: AtomicU64,
    /// SVID requests refused (bad CSR, bad join token, denied).
    pub svid_refusals: AtomicU64,
}

/// How an SVID request authenticated.
pub enum SvidAuth {
    /// A bearer access token.
    Caller(Caller),
    /// `Authorization: JoinToken <token>`.
    JoinToken(String),
}

/// The identity service.
pub struct IdentityService {
    pub(crate) cfg: IdentityConfig,
    store: Arc<dyn IdentityStore>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    authorizer: Arc<dyn Authorizer>,
    sealer: Sealer,
    hasher: SecretHasher,
    loaded: RwLock<Option<Arc<Loaded>>>,
    generation: AtomicU64,
    /// Registration entries by principal (misses too), dropped on every entry change from any
    /// server; bounded.
    entries: RwLock<EntryCache>,
    entries_generation: AtomicU64,
    /// Single-flight fills of the two caches above (a crowd renewing at once after a restart or
    /// a CA change loads once).
    ca_flight: Flights<()>,
    entry_flights: Flights<(TenantId, PrincipalId)>,
    /// Issuance records by serial (immutable once written; misses too), for certificate
    /// authentication; bounded.
    records: RwLock<HashMap<String, Option<SvidRecord>>>,
    /// SVIDs issued per principal in the current minute (of the injected clock); bounded.
    issued: std::sync::Mutex<(UnixTime, IssuanceCounts)>,
    /// Issued-certificate records go through one writer that batches whatever is waiting into
    /// one statement (group commit); an SVID is answered only once its record is stored.
    recorder: std::sync::OnceLock<tokio::sync::mpsc::Sender<Recording>>,
    /// Counters.
    pub metrics: IdentityMetrics,
}

/// X.509-SVIDs issued per principal in one minute.
type IssuanceCounts = HashMap<(TenantId, PrincipalId), i64>;

/// Registration entries (or their absence) by tenant and principal.
type EntryCache = HashMap<(TenantId, PrincipalId), Option<Arc<Entry>>>;

/// A record waiting for the writer, and who waits for it.
/// The writer answers `Err(true)` when storage is unavailable, `Err(false)` for another
/// failure (logged by the writer).
type Recording = (SvidRecord, tokio::sync::oneshot::Sender<Result<(), bool>>);

/// Most cached registration entries (misses included); past it the cache starts over.
const MAX_CACHED_ENTRIES: usize = 100_000;

/// Most records written in one statement.
const RECORD_BATCH: usize = 512;

/// Record batches being written at once.
const RECORD_WRITERS: usize = 2;

fn ca_aad(id: &str) -> String {
    format!("capstan/identity-ca/{id}")
}

fn jwt_aad(id: &str) -> String {
    format!("capstan/identity-jwt/{id}")
}

/// The CRN of acts on a principal's identity.
pub fn principal_crn(tenant: &TenantId, principal: &str) -> Crn {
    Crn::new("identity", tenant, &format!("principal/{principal}"))
}

fn ca_crn(id: &str) -> Crn {
    Crn::new("identity", &TenantId::default_tenant(), &format!("ca/{id}"))
}

fn entry_crn(tenant: &TenantId, principal: &str) -> Crn {
    Crn::new("identity", tenant, &format!("entry/{principal}"))
}

impl IdentityService {
    /// Builds the service; [`IdentityService::ensure_ca`] makes the first CA.
    pub fn new(
        cfg: IdentityConfig,
        store: Arc<dyn IdentityStore>,
        master: &capstan_core::crypto::MasterKey,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        authorizer: Arc<dyn Authorizer>,
    ) -> Result<IdentityService, IdentityError> {
        Ok(IdentityService {
            cfg,
            store,
            clock,
            rng,
            authorizer,
            sealer: master.sealer()?,
            hasher: master.secret_hasher(),
            loaded: RwLock::new(None),
            generation: AtomicU64::new(0),
            entries: RwLock::new(HashMap::new()),
            entries_generation: AtomicU64::new(0),
            ca_flight: Flights::new(),
            entry_flights: Flights::new(),
            records: RwLock::new(HashMap::new()),
            issued: std::sync::Mutex::new((0, HashMap::new())),
            recorder: std::sync::OnceLock::new(),
            metrics: IdentityMetrics::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &IdentityConfig {
        &self.cfg
    }

    fn now(&self) -> UnixTime {
        self.clock.now()
    }

    async fn guard(
        &self,
        caller: &Caller,
        action: &str,
        resource: &Crn,
        context: &[(&str, &str)],
    ) -> Result<(), IdentityError> {
        Ok(guard(self.authorizer.as_ref(), caller, action, resource, context).await?)
    }

    /// The CAs, from memory or storage.
    pub(crate) async fn loaded(&self) -> Result<Arc<Loaded>, IdentityError> {
        let cached = || {
            self.loaded
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        };
        self.ca_flight
            .get_or_load(&(), cached, || self.load_cas())
            .await
    }

    /// Reads and opens the CAs into the cache.
    async fn load_cas(&self) -> Result<Arc<Loaded>, IdentityError> {
        let generation = self.generation.load(Ordering::SeqCst);
        let cas = self.store.list_cas().await?;
        let mut signers = HashMap::new();
        let mut jwt = HashMap::new();
        for ca in &cas {
            let key = self
                .sealer
                .open(&ca.key_sealed, ca_aad(&ca.id).as_bytes())
                .map_err(|_| {
                    IdentityError::Crypto(
                        "the master key cannot open the CA keys (wrong CAPSTAN_MASTER_KEY?)".into(),
                    )
                })?;
            signers.insert(
                ca.id.clone(),
                Arc::new(CaSigner::load(
                    &ca.cert_der,
                    &ca.intermediates_der,
                    &key,
                    &ca.root_der,
                )?),
            );
            let jkey = self
                .sealer
                .open(&ca.jwt_key_sealed, jwt_aad(&ca.id).as_bytes())?;
            jwt.insert(
                ca.id.clone(),
                Arc::new(SigningKey::from_pkcs8(&ca.jwt_kid, Alg::ES256, &jkey)?.with_typ("JWT")?),
            );
        }
        let l = Arc::new(Loaded { cas, signers, jwt });
        if self.generation.load(Ordering::SeqCst) == generation {
            *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = Some(l.clone());
        }
        Ok(l)
    }

    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// A change from the feed, made on any server.
    pub fn on_change(&self, c: &Change) {
        if c.topic == TOPIC_CA {
            self.invalidate();
        } else if c.topic == crate::store::TOPIC_ENTRY {
            self.forget_entries();
        }
    }

    fn forget_entries(&self) {
        self.entries_generation.fetch_add(1, Ordering::SeqCst);
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// A principal's registration entry, from memory or storage.
    async fn entry_of(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
    ) -> Result<Option<Arc<Entry>>, IdentityError> {
        let key = (tenant.clone(), principal.clone());
        let cached = || {
            self.entries
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key)
                .cloned()
        };
        self.entry_flights
            .get_or_load(&key, cached, || self.load_entry(tenant, principal))
            .await
    }

    /// Reads a principal's registration entry from storage into the cache (a miss too).
    async fn load_entry(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
    ) -> Result<Option<Arc<Entry>>, IdentityError> {
        let generation = self.entries_generation.load(Ordering::SeqCst);
        let found = self.store.get_entry(tenant, principal).await?.map(Arc::new);
        let mut cache = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        // A change that arrived while reading makes this answer stale: do not keep it.
        if self.entries_generation.load(Ordering::SeqCst) == generation {
            if cache.len() >= MAX_CACHED_ENTRIES {
                cache.clear();
            }
            cache.insert((tenant.clone(), principal.clone()), found.clone());
        }
        Ok(found)
    }

    /// Counts one X.509-SVID for the principal in this minute, or refuses with 429 when it had
    /// its share: each issuance adds a record, so a narrow grant must not be able to grow the
    /// table without bound.
    fn count_issuance(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
    ) -> Result<(), IdentityError> {
        let now = self.now();
        let minute = now - now.rem_euclid(60);
        let mut g = self.issued.lock().unwrap_or_else(PoisonError::into_inner);
        if g.0 != minute || g.1.len() >= MAX_CACHED_ENTRIES {
            *g = (minute, HashMap::new());
        }
        let n = g.1.entry((tenant.clone(), principal.clone())).or_insert(0);
        if *n >= self.cfg.svids_per_principal_per_minute {
            return Err(IdentityError::RateLimited {
                message: format!(
                    "principal {principal} got {} X.509-SVIDs this minute, the most one server issues to one principal (max_svids_per_principal_per_minute)",
                    self.cfg.svids_per_principal_per_minute
                ),
                retry_after: (minute + 60 - now).max(1) as u64,
            });
        }
        *n += 1;
        Ok(())
    }

    /// The issuance record of a serial, from memory or storage.
    async fn svid_record(&self, serial: &str) -> Result<Option<SvidRecord>, IdentityError> {
        if serial.is_empty() || serial.len() > 64 {
            return Ok(None);
        }
        if let Some(r) = self
            .records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(serial)
        {
            return Ok(r.clone());
        }
        let found = self.store.get_svid(serial).await?;
        let mut cache = self.records.write().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_ENTRIES {
            cache.clear();
        }
        cache.insert(serial.to_owned(), found.clone());
        Ok(found)
    }

    /// Stores an issued-certificate record through the batching writer (started on first
    /// use); returns once it is stored.
    async fn record(&self, r: SvidRecord) -> Result<(), IdentityError> {
        let tx = self.recorder.get_or_init(|| {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Recording>(4 * RECORD_BATCH);
            let store = self.store.clone();
            tokio::spawn(async move {
                // A few batches in flight at once, so one commit's wait overlaps the next.
                let in_flight = Arc::new(tokio::sync::Semaphore::new(RECORD_WRITERS));
                while let Some(first) = rx.recv().await {
                    let mut batch = Vec::with_capacity(RECORD_BATCH);
                    batch.push(first);
                    while batch.len() < RECORD_BATCH {
                        match rx.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        return;
                    };
                    let store = store.clone();
                    tokio::spawn(async move {
                        let records: Vec<SvidRecord> =
                            batch.iter().map(|(r, _)| r.clone()).collect();
                        let result = store.record_svids(&records).await.map_err(|e| {
                            if !e.is_unavailable() {
                                tracing::error!(error = %e, "storing certificate records failed");
                            }
                            e.is_unavailable()
                        });
                        for (_, done) in batch {
                            let _ = done.send(result);
                        }
                        drop(permit);
                    });
                }
            });
            tx
        });
        let (done, wait) = tokio::sync::oneshot::channel();
        tx.send((r, done))
            .await
            .map_err(|_| IdentityError::Unavailable("the record writer stopped".into()))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(true)) => Err(IdentityError::Unavailable(
                "storage is unavailable; nothing was issued".into(),
            )),
            Ok(Err(false)) => Err(IdentityError::Crypto(
                "the certificate record could not be stored".into(),
            )),
            Err(_) => Err(IdentityError::Unavailable(
                "the record writer stopped".into(),
            )),
        }
    }

    /// Stores CA material as generation `max + 1`, activating at `activates_at`. Returns false
    /// when another server stored that generation first (reload and look again).
    async fn store_ca(
        &self,
        m: CaMaterial,
        origin: &str,
        key_type: &str,
        generation: i64,
        activates_at: UnixTime,
    ) -> Result<bool, IdentityError> {
        let now = self.now();
        let id = format!("g{generation}");
        let jwt = generate_key(Alg::ES256, self.rng.as_ref())?;
        let mut jwt_public = jwt.public.clone();
        jwt_public.use_ = "jwt-svid".into();
        let rec = CaRecord {
            key_sealed: self.sealer.seal(
                self.rng.as_ref(),
                &m.key_pkcs8,
                ca_aad(&id).as_bytes(),
            )?,
            jwt_key_sealed: self.sealer.seal(
                self.rng.as_ref(),
                jwt.private_pkcs8.expose(),
                jwt_aad(&id).as_bytes(),
            )?,
            jwt_kid: jwt.kid,
            jwt_public,
            id,
            generation,
            origin: origin.into(),
            key_type: key_type.into(),
            cert_der: m.cert_der,
            intermediates_der: m.intermediates_der,
            root_der: m.root_der,
            not_before: m.not_before,
            not_after: m.not_after,
            created_at: now,
            activates_at,
            tainted_at: None,
        };
        let stored = match self.store.insert_ca(&rec, now).await {
            Ok(()) => true,
            Err(DbError::Conflict) => false,
            Err(e) => return Err(e.into()),
        };
        self.invalidate();
        Ok(stored)
    }

    async fn new_generated_ca(&self, activates_at: UnixTime) -> Result<(), IdentityError> {
        for _ in 0..3 {
            let l = self.loaded().await?;
            let generation = l.cas.iter().map(|c| c.generation).max().unwrap_or(0) + 1;
            let now = self.now();
            let m = pki::generate_ca(
                &self.cfg.trust_domain,
                generation,
                self.cfg.ca_key_type,
                now,
                self.cfg.ca_ttl,
                pki::random_serial(self.rng.as_ref())?,
            )?;
            let kt = self.cfg.ca_key_type.as_str();
            if self
                .store_ca(m, "generated", kt, generation, activates_at)
                .await?
            {
                return Ok(());
            }
        }
        Err(IdentityError::Unavailable(
            "could not store a new CA generation (another server keeps making them)".into(),
        ))
    }

    /// Makes sure a CA signs now: activates the prepared one at once, or makes one. Called at
    /// start, after a taint, and by housekeeping.
    pub async fn ensure_ca(&self) -> Result<(), IdentityError> {
        let l = self.loaded().await?;
        let now = self.now();
        if model::active(&l.cas, now).is_some() {
            return Ok(());
        }
        if let Some(p) = model::prepared(&l.cas, now) {
            let id = p.id.clone();
            self.store.activate_ca(&id, now, now).await?;
            self.invalidate();
            if model::active(&self.loaded().await?.cas, now).is_some() {
                return Ok(());
            }
        }
        self.new_generated_ca(now).await
    }

    /// Imports an upstream-signed CA (`capstan ca import`): it becomes the next generation,
    /// signing at once when no CA exists yet, else after the prepare delay (so peers learn the
    /// new root first).
    pub async fn import_ca(&self, cert_pem: &str, key_pem: &str) -> Result<String, IdentityError> {
        let now = self.now();
        let m = pki::import_ca(cert_pem, key_pem, now)?;
        let l = self.loaded().await?;
        // Idempotent: importing the same certificate again (a deploy hook on every upgrade)
        // names the generation it already is.
        if let Some(existing) = l.cas.iter().find(|c| c.cert_der == m.cert_der) {
            return Ok(existing.id.clone());
        }
        let generation = l.cas.iter().map(|c| c.generation).max().unwrap_or(0) + 1;
        let activates_at = if l.cas.is_empty() {
            now
        } else {
            now + self.cfg.ca_prepare
        };
        if !self
            .store_ca(m, "imported", "imported", generation, activates_at)
            .await?
        {
            return Err(IdentityError::Conflict(
                "another CA generation was made at the same time; run the import again".into(),
            ));
        }
        Ok(format!("g{generation}"))
    }

    /// Periodic upkeep: a signing CA exists; a new one is prepared when the active one has less
    /// than a third of its life left; old records and join tokens are pruned.
    pub async fn housekeeping(&self) -> Result<(), IdentityError> {
        self.ensure_ca().await?;
        let now = self.now();
        let l = self.loaded().await?;
        if let Some(a) = model::active(&l.cas, now) {
            let life = a.not_after - a.not_before;
            if a.not_after - now < life / 3 && model::prepared(&l.cas, now).is_none() {
                self.new_generated_ca(now + self.cfg.ca_prepare).await?;
            }
        }
        self.store
            .prune_svids(now - self.cfg.record_retention)
            .await?;
        self.store
            .prune_join_tokens(now - self.cfg.record_retention)
            .await?;
        Ok(())
    }

    fn ca_view(&self, ca: &CaRecord, l: &Loaded, now: UnixTime) -> CaView {
        let slot = match model::slot(ca, &l.cas, now) {
            Slot::Prepared => "prepared",
            Slot::Active => "active",
            Slot::Retired => "retired",
        };
        let (subject, serial) = pki::describe(&ca.cert_der);
        let published = self.published(l, now);
        CaView {
            id: ca.id.clone(),
            generation: ca.generation,
            slot: slot.into(),
            origin: ca.origin.clone(),
            key_type: ca.key_type.clone(),
            subject,
            serial,
            not_before: ca.not_before,
            not_after: ca.not_after,
            activates_at: ca.activates_at,
            retired_at: model::retired_at(ca, &l.cas, now),
            tainted_at: ca.tainted_at,
            in_bundle: published.iter().any(|p| p.id == ca.id),
            cert_pem: pki::to_pem(&[&ca.cert_der]),
        }
    }

    /// Every CA generation, oldest first (no guard: for the server's own commands).
    pub async fn ca_records(&self) -> Result<Vec<CaRecord>, IdentityError> {
        Ok(self.loaded().await?.cas.clone())
    }

    /// `GET /v1/identity/ca`.
    pub async fn list_cas(&self, caller: &Caller) -> Result<Vec<CaView>, IdentityError> {
        self.guard(caller, "identity:ListCas", &ca_crn("*"), &[])
            .await?;
        let l = self.loaded().await?;
        let now = self.now();
        Ok(l.cas.iter().map(|c| self.ca_view(c, &l, now)).collect())
    }

    /// `POST /v1/identity/ca/rotate`: prepares a new CA (in the bundle at once, signing after
    /// the delay), or activates the prepared one now.
    pub async fn rotate(&self, caller: &Caller, req: RotateCa) -> Result<CaView, IdentityError> {
        self.guard(caller, "identity:RotateCa", &ca_crn("*"), &[])
            .await?;
        let now = self.now();
        let l = self.loaded().await?;
        if let Some(p) = model::prepared(&l.cas, now) {
            let id = p.id.clone();
            self.store.activate_ca(&id, now, now).await?;
            self.invalidate();
            return self.view_of(&id).await;
        }
        let delay = req.activate_in_seconds.unwrap_or(self.cfg.ca_prepare);
        if !(0..=30 * 86_400).contains(&delay) {
            return Err(IdentityError::BadRequest(
                "activate_in_seconds must be between 0 and 2592000".into(),
            ));
        }
        self.new_generated_ca(now + delay).await?;
        let l = self.loaded().await?;
        let newest = l
            .cas
            .iter()
            .max_by_key(|c| c.generation)
            .map(|c| c.id.clone())
            .unwrap_or_default();
        self.view_of(&newest).await
    }

    async fn view_of(&self, id: &str) -> Result<CaView, IdentityError> {
        let l = self.loaded().await?;
        let now = self.now();
        l.cas
            .iter()
            .find(|c| c.id == id)
            .map(|c| self.ca_view(c, &l, now))
            .ok_or_else(|| IdentityError::NotFound(format!("CA {id:?} does not exist")))
    }

    /// `POST /v1/identity/ca/{id}/taint`: the CA stops signing at once; if it was the active
    /// one, the prepared CA (or a new one) signs from now. It stays in the bundle until its
    /// leaves expire, and clients holding its leaves re-issue at their next refresh.
    pub async fn taint(&self, caller: &Caller, id: &str) -> Result<CaView, IdentityError> {
        self.guard(
            caller,
            "identity:TaintCa",
            &ca_crn(id),
            &[("identity:CaId", id)],
        )
        .await?;
        let now = self.now();
        if !self.store.taint_ca(id, now).await? {
            return Err(IdentityError::NotFound(format!("CA {id:?} does not exist")));
        }
        self.invalidate();
        self.ensure_ca().await?;
        self.view_of(id).await
    }

    /// Whether the CA that signed a certificate is tainted (clients re-issue when it is).
    pub async fn is_tainted(&self, ca_id: &str) -> Result<bool, IdentityError> {
        let l = self.loaded().await?;
        Ok(l.cas
            .iter()
            .any(|c| c.id == ca_id && c.tainted_at.is_some()))
    }

    /// The CA that signs at `now`, with its keys (a CA is made first when none can sign).
    async fn signing_ca(&self, now: UnixTime) -> Result<SigningCa, IdentityError> {
        let mut l = self.loaded().await?;
        if model::active(&l.cas, now).is_none() {
            self.ensure_ca().await?;
            l = self.loaded().await?;
        }
        let id = model::active(&l.cas, now)
            .map(|c| c.id.clone())
            .ok_or_else(|| IdentityError::Unavailable("no CA can sign now".into()))?;
        let not_loaded = || IdentityError::Unavailable("the active CA is not loaded".into());
        Ok(SigningCa {
            x509: l.signers.get(&id).cloned().ok_or_else(not_loaded)?,
            jwt: l.jwt.get(&id).cloned().ok_or_else(not_loaded)?,
            id,
            loaded: l,
        })
    }

    /// The SPIFFE ID a principal's SVIDs carry, and its entry.
    async fn identity_of(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
    ) -> Result<(SpiffeId, Option<Entry>), IdentityError> {
        let entry = self.entry_of(tenant, principal).await?;
        let id = match entry.as_ref().and_then(|e| e.spiffe_path.as_deref()) {
            Some(path) => spiffe::entry_id(&self.cfg.trust_domain, tenant, path)?,
            None => spiffe::default_id(&self.cfg.trust_domain, tenant, principal),
        };
        Ok((id, entry.map(|e| (*e).clone())))
    }

    /// Every root peers must trust now, PEM, deduplicated (imported CAs share their root).
    pub(crate) fn bundle_roots<'a>(&self, l: &'a Loaded, now: UnixTime) -> Vec<&'a [u8]> {
        let mut roots: Vec<&[u8]> = Vec::new();
        for ca in self.published(l, now) {
            if !roots.contains(&ca.root_der.as_slice()) {
                roots.push(&ca.root_der);
            }
        }
        roots
    }

    /// The CAs in the bundle now ([`model::published`] with this deployment's settings).
    fn published<'a>(&self, l: &'a Loaded, now: UnixTime) -> Vec<&'a CaRecord> {
        model::published(&l.cas, now, self.cfg.max_svid_ttl, self.cfg.leeway)
    }

    /// `POST /v1/identity/svids`.
    pub async fn issue_svid(
        &self,
        auth: SvidAuth,
        req: IssueSvid,
    ) -> Result<SvidResponse, IdentityError> {
        let r = self.issue_svid_inner(auth, req).await;
        if r.is_err() {
            self.metrics.svid_refusals.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    async fn issue_svid_inner(
        &self,
        auth: SvidAuth,
        req: IssueSvid,
    ) -> Result<SvidResponse, IdentityError> {
        let now = self.now();
        let (tenant, principal, join_hash) = match &auth {
            SvidAuth::Caller(c) => (c.tenant.clone(), c.principal.clone(), None),
            SvidAuth::JoinToken(t) => {
                let hash = self.hasher.hash(t);
                let jt = self
                    .store
                    .peek_join_token(&hash, now)
                    .await?
                    .ok_or_else(bad_join_token)?;
                (jt.tenant, jt.principal, Some(hash))
            }
        };
        // The CSR is checked (a signature verification) only once the requester is known.
        let csr = pki::check_csr(req.csr.as_bytes())?;
        let (spiffe_id, entry) = self.identity_of(&tenant, &principal).await?;
        if let SvidAuth::Caller(c) = &auth {
            self.guard(
                c,
                "identity:IssueSvid",
                &principal_crn(&tenant, principal.as_str()),
                &[("identity:SpiffeId", spiffe_id.as_str())],
            )
            .await?;
        }
        if let Some(u) = csr.requested_uris.iter().find(|u| *u != spiffe_id.as_str()) {
            return Err(IdentityError::BadRequest(format!(
                "the CSR asks for the URI {u:?}, but this principal's SPIFFE ID is {spiffe_id}: leave SANs out of the CSR, Capstan sets them"
            )));
        }
        let dns_names = entry
            .as_ref()
            .map(|e| e.dns_names.clone())
            .unwrap_or_default();
        if let Some(d) = csr.requested_dns.iter().find(|d| !dns_names.contains(d)) {
            return Err(IdentityError::BadRequest(format!(
                "the CSR asks for the DNS name {d:?}, which this principal's registration entry does not list"
            )));
        }
        self.count_issuance(&tenant, &principal)?;
        let ttl = entry
            .as_ref()
            .and_then(|e| e.ttl_seconds)
            .unwrap_or(self.cfg.default_svid_ttl)
            .min(self.cfg.max_svid_ttl);
        let active = self.signing_ca(now).await?;
        let signer = &active.x509;
        if let Some(hash) = &join_hash {
            // Used once: of two concurrent uses, one gets the row.
            self.store
                .use_join_token(hash, now)
                .await?
                .ok_or_else(bad_join_token)?;
        }
        let serial = pki::random_serial(self.rng.as_ref())?;
        let (leaf, not_after) = pki::sign_leaf(
            signer,
            &csr,
            &LeafSpec {
                spiffe_id: &spiffe_id,
                dns_names: &dns_names,
                now,
                not_after: now + ttl,
                serial,
            },
        )?;
        let serial = pki::serial_hex(&serial);
        self.record(SvidRecord {
            serial: serial.clone(),
            tenant,
            principal,
            spiffe_id: spiffe_id.to_string(),
            ca_id: active.id.clone(),
            via: if join_hash.is_some() {
                "join_token".into()
            } else {
                "bearer".into()
            },
            issued_at: now,
            not_after,
        })
        .await?;
        if let Some(hash) = &join_hash {
            self.store.set_join_token_serial(hash, &serial).await?;
        }
        self.metrics.svids_issued.fetch_add(1, Ordering::Relaxed);
        let mut chain: Vec<&[u8]> = vec![&leaf];
        chain.extend(signer.chain_der.iter().map(Vec::as_slice));
        let roots = self.bundle_roots(&active.loaded, now);
        Ok(SvidResponse {
            spiffe_id: spiffe_id.to_string(),
            svid_chain_pem: pki::to_pem(&chain),
            expires_at: not_after,
            bundle_pem: pki::to_pem(&roots),
            serial,
            ca_id: active.id.clone(),
            renew_after: now + (not_after - now) / 2,
        })
    }

    /// `POST /v1/identity/jwt-svids`: a JWT whose `sub` is the caller's SPIFFE ID, signed with
    /// the active CA generation's JWT key (published in the bundle as `use: jwt-svid`).
    pub async fn issue_jwt_svid(
        &self,
        caller: &Caller,
        req: IssueJwtSvid,
    ) -> Result<JwtSvidResponse, IdentityError> {
        let audiences = req.audience.to_vec();
        if audiences.is_empty() || audiences.len() > 10 {
            return Err(IdentityError::BadRequest(
                "audience must name 1 to 10 audiences".into(),
            ));
        }
        for a in &audiences {
            capstan_core::ids::check_audience(a)?;
        }
        let (spiffe_id, _) = self.identity_of(&caller.tenant, &caller.principal).await?;
        let joined = audiences.join(" ");
        self.guard(
            caller,
            "identity:IssueJwtSvid",
            &principal_crn(&caller.tenant, caller.principal.as_str()),
            &[
                ("identity:SpiffeId", spiffe_id.as_str()),
                ("identity:Audience", joined.as_str()),
            ],
        )
        .await?;
        let ttl = match req.ttl_seconds {
            Some(t) if t <= 0 => {
                return Err(IdentityError::BadRequest(
                    "ttl_seconds must be positive".into(),
                ))
            }
            Some(t) => t.min(self.cfg.max_jwt_svid_ttl),
            None => self.cfg.jwt_svid_ttl,
        };
        let now = self.now();
        let key = self.signing_ca(now).await?.jwt;
        let exp = now + ttl;
        let claims = serde_json::json!({
            "sub": spiffe_id.as_str(),
            "aud": capstan_proto::auth::Audience::from_vec(audiences),
            "exp": exp,
            "iat": now,
        });
        let token = key.sign(&claims)?;
        self.metrics
            .jwt_svids_issued
            .fetch_add(1, Ordering::Relaxed);
        Ok(JwtSvidResponse {
            token,
            spiffe_id: spiffe_id.to_string(),
            expires_at: exp,
        })
    }

    /// The SPIFFE bundle (`GET /v1/identity/bundle`): a JWK Set with one `x509-svid` key per
    /// root (its certificate in `x5c`) and the `jwt-svid` keys, with `spiffe_sequence` and
    /// `spiffe_refresh_hint`.
    pub async fn bundle(&self) -> Result<serde_json::Value, IdentityError> {
        let l = self.loaded().await?;
        let now = self.now();
        let mut keys = Vec::new();
        for root in self.bundle_roots(&l, now) {
            keys.push(pki::x509_svid_jwk(root)?);
        }
        let published = self.published(&l, now);
        for ca in &published {
            keys.push(
                serde_json::to_value(&ca.jwt_public)
                    .map_err(|e| IdentityError::Crypto(format!("jwk encoding: {e}")))?,
            );
        }
        // Not in the SPIFFE format (readers ignore unknown members): the published CAs that
        // were tainted, so Capstan's SDK re-issues leaves they signed at its next refresh.
        let tainted: Vec<&str> = published
            .iter()
            .filter(|c| c.tainted_at.is_some())
            .map(|c| c.id.as_str())
            .collect();
        Ok(serde_json::json!({
            "keys": keys,
            "spiffe_sequence": model::bundle_sequence(&l.cas, now, self.cfg.max_svid_ttl, self.cfg.leeway),
            "spiffe_refresh_hint": self.cfg.refresh_hint,
            "capstan_tainted_ca_ids": tainted,
        }))
    }

    /// The roots of the bundle as PEM (`GET /v1/identity/bundle.pem`).
    pub async fn bundle_pem(&self) -> Result<String, IdentityError> {
        let l = self.loaded().await?;
        Ok(pki::to_pem(&self.bundle_roots(&l, self.now())))
    }

    fn entry_view(&self, e: &Entry) -> Result<EntryView, IdentityError> {
        let id = match &e.spiffe_path {
            Some(p) => spiffe::entry_id(&self.cfg.trust_domain, &e.tenant, p)?,
            None => spiffe::default_id(&self.cfg.trust_domain, &e.tenant, &e.principal),
        };
        Ok(EntryView {
            principal: e.principal.to_string(),
            spiffe_id: id.to_string(),
            spiffe_path: e.spiffe_path.clone(),
            dns_names: e.dns_names.clone(),
            ttl_seconds: e
                .ttl_seconds
                .unwrap_or(self.cfg.default_svid_ttl)
                .min(self.cfg.max_svid_ttl),
            created_at: e.created_at,
            updated_at: e.updated_at,
        })
    }

    /// Checks an entry's fields; returns its SPIFFE ID.
    fn check_entry(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
        path: Option<&str>,
        dns: &[String],
        ttl: Option<i64>,
    ) -> Result<SpiffeId, IdentityError> {
        let id = match path {
            Some(p) => spiffe::entry_id(&self.cfg.trust_domain, tenant, p)?,
            None => spiffe::default_id(&self.cfg.trust_domain, tenant, principal),
        };
        if dns.len() > pki::MAX_DNS_NAMES {
            return Err(IdentityError::BadRequest(format!(
                "dns_names: at most {} names",
                pki::MAX_DNS_NAMES
            )));
        }
        for d in dns {
            pki::check_dns_name(d)
                .map_err(|e| IdentityError::BadRequest(format!("dns_names: {e}")))?;
        }
        if let Some(t) = ttl {
            if !(60..=self.cfg.max_svid_ttl).contains(&t) {
                return Err(IdentityError::BadRequest(format!(
                    "ttl_seconds must be between 60 and {} (the deployment's maximum)",
                    self.cfg.max_svid_ttl
                )));
            }
        }
        Ok(id)
    }

    /// DNS names in certificates that chain to the deployment's root are the deployment's to
    /// hand out, not a tenant's: each needs `identity:AssignDnsName` on
    /// `crn:capstan:identity:default:dns/<name>` (a resource of the `default` tenant, so only
    /// its principals can be allowed it), so no tenant can put Capstan's own or another
    /// tenant's service names into an SVID.
    async fn guard_dns_names(
        &self,
        caller: &Caller,
        names: &[String],
    ) -> Result<(), IdentityError> {
        for name in names {
            self.guard(
                caller,
                "identity:AssignDnsName",
                &Crn::new(
                    "identity",
                    &TenantId::default_tenant(),
                    &format!("dns/{name}"),
                ),
                &[("identity:DnsName", name.as_str())],
            )
            .await?;
        }
        Ok(())
    }

    /// `POST /v1/identity/entries`.
    pub async fn create_entry(
        &self,
        caller: &Caller,
        req: NewEntry,
    ) -> Result<EntryView, IdentityError> {
        let principal = PrincipalId::parse(&req.principal)?;
        let id = self.check_entry(
            &caller.tenant,
            &principal,
            req.spiffe_path.as_deref(),
            &req.dns_names,
            req.ttl_seconds,
        )?;
        self.guard(
            caller,
            "identity:CreateEntry",
            &entry_crn(&caller.tenant, principal.as_str()),
            &[("identity:SpiffeId", id.as_str())],
        )
        .await?;
        self.guard_dns_names(caller, &req.dns_names).await?;
        if !self
            .store
            .principal_exists(&caller.tenant, &principal)
            .await?
        {
            return Err(IdentityError::NotFound(format!(
                "principal \"{principal}\" does not exist in this tenant"
            )));
        }
        let now = self.now();
        let e = Entry {
            tenant: caller.tenant.clone(),
            principal,
            spiffe_path: req.spiffe_path,
            dns_names: dedup(req.dns_names),
            ttl_seconds: req.ttl_seconds,
            created_at: now,
            updated_at: now,
        };
        let created = self.store.create_entry(&e).await;
        self.forget_entries();
        match created {
            Ok(()) => self.entry_view(&e),
            Err(DbError::Conflict) => Err(IdentityError::Conflict(format!(
                "principal \"{}\" has an entry already, or another entry has the SPIFFE ID {id}",
                e.principal
            ))),
            Err(err) => Err(err.into()),
        }
    }

    /// `PUT /v1/identity/entries/{principal}`.
    pub async fn update_entry(
        &self,
        caller: &Caller,
        principal: &str,
        req: UpdateEntry,
    ) -> Result<EntryView, IdentityError> {
        let principal = PrincipalId::parse(principal)?;
        let id = self.check_entry(
            &caller.tenant,
            &principal,
            req.spiffe_path.as_deref(),
            &req.dns_names,
            req.ttl_seconds,
        )?;
        self.guard(
            caller,
            "identity:UpdateEntry",
            &entry_crn(&caller.tenant, principal.as_str()),
            &[("identity:SpiffeId", id.as_str())],
        )
        .await?;
        self.guard_dns_names(caller, &req.dns_names).await?;
        let old = self
            .store
            .get_entry(&caller.tenant, &principal)
            .await?
            .ok_or_else(|| no_entry(&principal))?;
        let e = Entry {
            spiffe_path: req.spiffe_path,
            dns_names: dedup(req.dns_names),
            ttl_seconds: req.ttl_seconds,
            updated_at: self.now(),
            ..old
        };
        let updated = self.store.update_entry(&e).await;
        self.forget_entries();
        match updated {
            Ok(true) => self.entry_view(&e),
            Ok(false) => Err(no_entry(&principal)),
            Err(DbError::Conflict) => Err(IdentityError::Conflict(format!(
                "another entry has the SPIFFE ID {id}"
            ))),
            Err(err) => Err(err.into()),
        }
    }

    /// `GET /v1/identity/entries/{principal}`.
    pub async fn get_entry(
        &self,
        caller: &Caller,
        principal: &str,
    ) -> Result<EntryView, IdentityError> {
        let principal = PrincipalId::parse(principal)?;
        self.guard(
            caller,
            "identity:GetEntry",
            &entry_crn(&caller.tenant, principal.as_str()),
            &[],
        )
        .await?;
        let e = self
            .store
            .get_entry(&caller.tenant, &principal)
            .await?
            .ok_or_else(|| no_entry(&principal))?;
        self.entry_view(&e)
    }

    /// `GET /v1/identity/entries`.
    pub async fn list_entries(&self, caller: &Caller) -> Result<Vec<EntryView>, IdentityError> {
        self.guard(
            caller,
            "identity:ListEntries",
            &entry_crn(&caller.tenant, "*"),
            &[],
        )
        .await?;
        self.store
            .list_entries(&caller.tenant)
            .await?
            .iter()
            .map(|e| self.entry_view(e))
            .collect()
    }

    /// `DELETE /v1/identity/entries/{principal}`.
    pub async fn delete_entry(
        &self,
        caller: &Caller,
        principal: &str,
    ) -> Result<(), IdentityError> {
        let principal = PrincipalId::parse(principal)?;
        self.guard(
            caller,
            "identity:DeleteEntry",
            &entry_crn(&caller.tenant, principal.as_str()),
            &[],
        )
        .await?;
        let deleted = self
            .store
            .delete_entry(&caller.tenant, &principal, self.now())
            .await;
        self.forget_entries();
        if deleted? {
            Ok(())
        } else {
            Err(no_entry(&principal))
        }
    }

    /// `POST /v1/identity/join-tokens`: a single-use token that yields one SVID for the
    /// principal. Only its hash is stored; the token is shown once.
    pub async fn create_join_token(
        &self,
        caller: &Caller,
        req: NewJoinToken,
    ) -> Result<JoinTokenResponse, IdentityError> {
        let principal = PrincipalId::parse(&req.principal)?;
        let ttl = req.ttl_seconds.unwrap_or(self.cfg.join_token_ttl);
        if !(60..=self.cfg.max_join_token_ttl).contains(&ttl) {
            return Err(IdentityError::BadRequest(format!(
                "ttl_seconds must be between 60 and {}",
                self.cfg.max_join_token_ttl
            )));
        }
        // Read past the entry cache: the principal is the caller's choice, and made-up ids
        // must not churn the cache.
        let entry = self.store.get_entry(&caller.tenant, &principal).await?;
        let spiffe_id = match entry.as_ref().and_then(|e| e.spiffe_path.as_deref()) {
            Some(path) => spiffe::entry_id(&self.cfg.trust_domain, &caller.tenant, path)?,
            None => spiffe::default_id(&self.cfg.trust_domain, &caller.tenant, &principal),
        };
        self.guard(
            caller,
            "identity:CreateJoinToken",
            &principal_crn(&caller.tenant, principal.as_str()),
            &[("identity:SpiffeId", spiffe_id.as_str())],
        )
        .await?;
        if !self
            .store
            .principal_exists(&caller.tenant, &principal)
            .await?
        {
            return Err(IdentityError::NotFound(format!(
                "principal \"{principal}\" does not exist in this tenant"
            )));
        }
        let token = format!("cjt_{}", random_b64(self.rng.as_ref(), 32)?);
        let now = self.now();
        let jt = JoinToken {
            hash: self.hasher.hash(&token),
            tenant: caller.tenant.clone(),
            principal: principal.clone(),
            created_at: now,
            expires_at: now + ttl,
            used: None,
        };
        self.store.insert_join_token(&jt).await?;
        Ok(JoinTokenResponse {
            token,
            principal: principal.to_string(),
            spiffe_id: spiffe_id.to_string(),
            expires_at: jt.expires_at,
        })
    }

    /// `GET /v1/identity/svids?principal=`: issued-certificate records, newest first.
    pub async fn list_svids(
        &self,
        caller: &Caller,
        principal: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Vec<SvidRecordView>, IdentityError> {
        let principal = principal.map(PrincipalId::parse).transpose()?;
        let target = principal.as_ref().map_or("*", |p| p.as_str());
        self.guard(
            caller,
            "identity:ListSvids",
            &principal_crn(&caller.tenant, target),
            &[],
        )
        .await?;
        let limit = limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(IdentityError::BadRequest(
                "limit must be between 1 and 1000".into(),
            ));
        }
        Ok(self
            .store
            .list_svids(&caller.tenant, principal.as_ref(), limit)
            .await?
            .into_iter()
            .map(|r| SvidRecordView {
                serial: r.serial,
                principal: r.principal.to_string(),
                spiffe_id: r.spiffe_id,
                ca_id: r.ca_id,
                via: r.via,
                issued_at: r.issued_at,
                not_after: r.not_after,
            })
            .collect())
    }

    /// Gauges for `/metrics`: CAs by slot.
    pub fn ca_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        if let Some(l) = self
            .loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let now = self.now();
            for c in &l.cas {
                let k = match model::slot(c, &l.cas, now) {
                    Slot::Prepared => "prepared",
                    Slot::Active => "active",
                    Slot::Retired => "retired",
                };
                *out.entry(k).or_insert(0) += 1;
            }
        }
        out
    }
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|d| seen.insert(d.to_ascii_lowercase()));
    v
}

fn no_entry(p: &PrincipalId) -> IdentityError {
    IdentityError::NotFound(format!("principal \"{p}\" has no registration entry"))
}

fn bad_join_token() -> IdentityError {
    IdentityError::Unauthenticated("the join token is unknown, expired or already used".into())
}

/// The path of Capstan's own serving certificate: outside every tenant's `/t/<tenant>/`
/// prefix, so no principal and no registration entry can hold it.
pub const SERVER_PATH: &str = "/capstan/server";

fn verify_error(e: IdentityError) -> capstan_core::authz::VerifyError {
    use capstan_core::authz::VerifyError;
    match e {
        IdentityError::Db(e) if e.is_unavailable() => VerifyError::Unavailable,
        IdentityError::Unavailable(_) => VerifyError::Unavailable,
        IdentityError::BadRequest(m) => VerifyError::Invalid(m),
        e => {
            tracing::error!(error = %e, "workload identity failed");
            VerifyError::Internal
        }
    }
}

#[async_trait::async_trait]
impl capstan_core::authz::WorkloadIdentity for IdentityService {
    fn trust_domain(&self) -> &str {
        self.cfg.trust_domain.as_str()
    }

    async fn trust_roots(&self) -> Result<Vec<Vec<u8>>, capstan_core::authz::VerifyError> {
        let l = self.loaded().await.map_err(verify_error)?;
        Ok(self
            .bundle_roots(&l, self.now())
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect())
    }

    async fn issuing_cas(&self) -> Result<Vec<Vec<u8>>, capstan_core::authz::VerifyError> {
        let l = self.loaded().await.map_err(verify_error)?;
        // A tainted CA stops anchoring client certificates at once (peers keep it in the
        // bundle until its leaves expire; Capstan itself does not wait).
        Ok(self
            .published(&l, self.now())
            .into_iter()
            .filter(|c| c.tainted_at.is_none())
            .map(|c| c.cert_der.clone())
            .collect())
    }

    async fn authenticate_certificate(
        &self,
        spiffe_id: &str,
        serial: &str,
    ) -> Result<Option<(TenantId, PrincipalId)>, capstan_core::authz::VerifyError> {
        let Some(rec) = self.svid_record(serial).await.map_err(verify_error)? else {
            return Ok(None);
        };
        let now = self.now();
        let l = self.loaded().await.map_err(verify_error)?;
        let ca_ok = l
            .cas
            .iter()
            .any(|c| c.id == rec.ca_id && c.tainted_at.is_none());
        if rec.spiffe_id != spiffe_id || rec.not_after <= now || !ca_ok {
            return Ok(None);
        }
        Ok(Some((rec.tenant, rec.principal)))
    }

    async fn issue_server_certificate(
        &self,
        csr_pem: &str,
        dns_names: &[String],
    ) -> Result<(Vec<Vec<u8>>, i64), capstan_core::authz::VerifyError> {
        self.issue_server_inner(csr_pem, dns_names)
            .await
            .map_err(verify_error)
    }
}

impl IdentityService {
    async fn issue_server_inner(
        &self,
        csr_pem: &str,
        dns_names: &[String],
    ) -> Result<(Vec<Vec<u8>>, i64), IdentityError> {
        let csr = pki::check_csr(csr_pem.as_bytes())?;
        for d in dns_names {
            pki::check_dns_name(d)
                .map_err(|e| IdentityError::BadRequest(format!("--tls-dns-name {d:?}: {e}")))?;
        }
        let id = SpiffeId::new(&self.cfg.trust_domain, SERVER_PATH)?;
        let now = self.now();
        let active = self.signing_ca(now).await?;
        let signer = &active.x509;
        let serial = pki::random_serial(self.rng.as_ref())?;
        let (leaf, not_after) = pki::sign_leaf(
            signer,
            &csr,
            &LeafSpec {
                spiffe_id: &id,
                dns_names,
                now,
                not_after: now + self.cfg.default_svid_ttl,
                serial,
            },
        )?;
        tracing::info!(serial = %pki::serial_hex(&serial), ca = %active.id, not_after, "issued the server's own certificate");
        let mut chain = vec![leaf];
        chain.extend(signer.chain_der.iter().cloned());
        Ok((chain, not_after))
    }
}
