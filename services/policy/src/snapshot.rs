//! A tenant's compiled authorization state: what a decision reads, built from storage, kept
//! per tenant and dropped when the change feed says the tenant's policies changed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};

use capstan_core::ids::TenantId;
use capstan_iam::{crn_matches, Applicable, IdentityIndex, Limits, Policy, PolicyKind, Source};
use casbin::{DefaultRoleManager, RoleManager};

use crate::builtin;
use crate::error::PolicyError;
use crate::service::{PolicyService, GROUP_PREFIX};

/// A compiled policy and the version it came from.
#[derive(Debug, Clone)]
pub(crate) struct Versioned {
    pub version: u32,
    pub policy: Arc<Policy>,
}

/// One tenant's authorization state, compiled.
#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    pub revision: i64,
    pub policies: HashMap<String, Versioned>,
    pub principal_policies: HashMap<String, Vec<String>>,
    pub group_policies: HashMap<String, Vec<String>>,
    /// Every group a principal belongs to, directly or through nested groups.
    pub groups_of: HashMap<String, Vec<String>>,
    pub boundaries: HashMap<String, String>,
    pub tags: HashMap<String, Vec<(String, String)>>,
    pub resource_policies: Vec<(String, Policy)>,
    pub guardrails: Vec<(String, Policy)>,
    /// Per-principal identity indexes, built on demand.
    pub indexes: IndexCache,
}

/// Identity indexes by principal. A cloned snapshot (simulation) starts with none, since its
/// attachments may differ.
#[derive(Debug, Default)]
pub(crate) struct IndexCache(RwLock<HashMap<String, Arc<IdentityIndex>>>);

impl Clone for IndexCache {
    fn clone(&self) -> Self {
        IndexCache::default()
    }
}

/// At most this many per-principal identity indexes are kept per snapshot.
pub(crate) const MAX_INDEXES: usize = 20_000;

fn empty_index() -> Arc<IdentityIndex> {
    static EMPTY: std::sync::OnceLock<Arc<IdentityIndex>> = std::sync::OnceLock::new();
    EMPTY
        .get_or_init(|| Arc::new(IdentityIndex::new(Vec::new())))
        .clone()
}

impl Snapshot {
    fn policy<'a>(&'a self, name: &'a str) -> Option<Source<'a>> {
        if let Some(v) = self.policies.get(name) {
            return Some(Source {
                name,
                version: v.version,
                policy: &v.policy,
            });
        }
        builtin::compiled().get(name).map(|p| Source {
            name,
            version: 1,
            policy: p,
        })
    }

    /// The policies that apply to `principal` acting on `resource`.
    /// The principal's identity policies (its own and its groups', each once) merged into one
    /// index, built on first use and kept for the life of this snapshot.
    pub fn identity_index(&self, principal: &str) -> Arc<IdentityIndex> {
        if let Some(ix) = self
            .indexes
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(principal)
        {
            return ix.clone();
        }
        let direct = self.principal_policies.get(principal).into_iter().flatten();
        let via_groups = self
            .groups_of
            .get(principal)
            .into_iter()
            .flatten()
            .flat_map(|g| self.group_policies.get(g).into_iter().flatten());
        // A policy attached directly and through a group counts once.
        let mut policies: Vec<(String, u32, Arc<Policy>)> = Vec::new();
        for n in direct.chain(via_groups) {
            if let Some((version, p)) = self.policy_arc(n) {
                if !policies.iter().any(|(_, _, q)| Arc::ptr_eq(q, &p)) {
                    policies.push((n.clone(), version, p));
                }
            }
        }
        if policies.is_empty() {
            // Every principal with nothing attached shares one empty index: an id a request
            // makes up costs no memory.
            return empty_index();
        }
        let ix = Arc::new(IdentityIndex::new(policies));
        let mut cache = self
            .indexes
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Bounded: past the bound an index is built per decision, not kept.
        if cache.len() < MAX_INDEXES {
            cache.insert(principal.to_owned(), ix.clone());
        }
        ix
    }

    /// How many per-principal indexes this snapshot keeps (for tests and metrics).
    pub fn cached_indexes(&self) -> usize {
        self.indexes
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn policy_arc(&self, name: &str) -> Option<(u32, Arc<Policy>)> {
        match self.policies.get(name) {
            Some(v) => Some((v.version, v.policy.clone())),
            None => builtin::compiled().get(name).map(|p| (1, p.clone())),
        }
    }

    /// The policies that apply to `principal` acting on `resource`, with its identity policies
    /// as the merged `index`.
    pub fn applicable<'a>(
        &'a self,
        index: &'a IdentityIndex,
        principal: &str,
        resource: &str,
    ) -> Applicable<'a> {
        Applicable {
            identity: Vec::new(),
            identity_index: Some(index),
            resource: self
                .resource_policies
                .iter()
                .filter(|(pattern, _)| crn_matches(pattern, resource))
                .map(|(pattern, p)| Source {
                    name: pattern,
                    version: 1,
                    policy: p,
                })
                .collect(),
            boundary: self.boundaries.get(principal).and_then(|b| self.policy(b)),
            guardrails: self
                .guardrails
                .iter()
                .map(|(name, p)| Source {
                    name,
                    version: 1,
                    policy: p,
                })
                .collect(),
        }
    }
}

impl PolicyService {
    /// Compiles a stored document (`what` names it in the log), or its deny-everything
    /// stand-in, counted in `capstan_policy_compile_failures_total`.
    fn compile(&self, text: &str, kind: PolicyKind, what: &str) -> Policy {
        // Stored documents were validated on the way in; limits are not re-applied so a lowered
        // limit never disables a stored policy.
        let limits = Limits {
            max_chars: usize::MAX,
            max_statements: usize::MAX,
            max_values: usize::MAX,
            max_depth: usize::MAX,
            max_wildcards: usize::MAX,
        };
        match Policy::parse(text, kind, &limits) {
            Ok(p) => p.policy,
            Err(e) => {
                // Fail closed: skipping it would widen access (a guardrail or a boundary would
                // stop limiting, a Deny would stop denying).
                self.compile_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(policy = what, errors = ?e, "stored policy does not compile; it denies everything until fixed");
                Policy::deny_all(kind)
            }
        }
    }

    pub(crate) async fn snapshot(&self, tenant: &TenantId) -> Result<Arc<Snapshot>, PolicyError> {
        let cached = || {
            self.cache
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(tenant)
                .cloned()
        };
        self.snapshot_flights
            .get_or_load(tenant, cached, || self.load_snapshot(tenant))
            .await
    }

    /// Reads and compiles a tenant's snapshot into the cache.
    async fn load_snapshot(&self, tenant: &TenantId) -> Result<Arc<Snapshot>, PolicyError> {
        let generation = self.generation.load(Ordering::SeqCst);
        self.snapshot_loads.fetch_add(1, Ordering::Relaxed);
        let rows = self.store.load(tenant.as_str()).await?;
        let mut snap = Snapshot {
            revision: rows.revision,
            ..Default::default()
        };
        snap.policies = self
            .compiled_defaults(tenant, rows.defaults, generation)
            .await?;
        for (kind, target, policy) in rows.attachments {
            let map = if kind == "group" {
                &mut snap.group_policies
            } else {
                &mut snap.principal_policies
            };
            map.entry(target).or_default().push(policy);
        }
        // Group membership, transitively, through casbin's role manager.
        let mut rm = DefaultRoleManager::new(10);
        let domain = Some(tenant.as_str());
        let mut members = HashSet::new();
        for (group, member) in &rows.members {
            rm.add_link(member, &format!("{GROUP_PREFIX}{group}"), domain);
            members.insert(member.clone());
        }
        // Principals, and nested groups (under `group:<name>`: the groups that group is in).
        for m in &members {
            let mut groups = Vec::new();
            let mut queue = vec![m.clone()];
            let mut seen = HashSet::new();
            while let Some(n) = queue.pop() {
                for g in rm.get_roles(&n, domain) {
                    if seen.insert(g.clone()) {
                        if let Some(name) = g.strip_prefix(GROUP_PREFIX) {
                            groups.push(name.to_owned());
                        }
                        queue.push(g);
                    }
                }
            }
            snap.groups_of.insert(m.clone(), groups);
        }
        snap.boundaries = rows.boundaries.into_iter().collect();
        for (p, k, v) in rows.tags {
            snap.tags.entry(p).or_default().push((k, v));
        }
        snap.resource_policies = rows
            .resource_policies
            .into_iter()
            .map(|(r, d)| {
                let p = self.compile(&d, PolicyKind::Resource, &r);
                (r, p)
            })
            .collect();
        snap.guardrails = rows
            .guardrails
            .into_iter()
            .map(|(n, d)| {
                let p = self.compile(&d, PolicyKind::Identity, &n);
                (n, p)
            })
            .collect();
        let snap = Arc::new(snap);
        if self.generation.load(Ordering::SeqCst) == generation {
            self.cache
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(tenant.clone(), snap.clone());
        }
        Ok(snap)
    }

    /// The compiled default versions. Documents already compiled (by name and version) are
    /// reused, so a rebuild after one change compiles one document, not the tenant.
    ///
    /// What was compiled is kept only if nothing was invalidated since the build began
    /// (`generation`): a document read before a delete must not outlive it in the cache, or a
    /// policy recreated under the same name and version would be served the deleted text.
    async fn compiled_defaults(
        &self,
        tenant: &TenantId,
        defaults: Vec<(String, i64)>,
        generation: u64,
    ) -> Result<HashMap<String, Versioned>, PolicyError> {
        let key = |name: &str, version: i64| (tenant.clone(), name.to_owned(), version);
        let missing: Vec<&(String, i64)> = {
            let cache = self.compiled.read().unwrap_or_else(PoisonError::into_inner);
            defaults
                .iter()
                .filter(|(n, v)| !cache.contains_key(&key(n, *v)))
                .collect()
        };
        let mut fresh: HashMap<(TenantId, String, i64), Arc<Policy>> = HashMap::new();
        if !missing.is_empty() {
            // A handful after a change: fetch them one by one; many at start: all at once.
            let docs: Vec<(String, i64, String)> = if missing.len() <= 20 {
                let mut docs = Vec::new();
                for (name, version) in &missing {
                    if let Some(v) = self
                        .store
                        .get_version(tenant.as_str(), name, Some(*version))
                        .await?
                    {
                        docs.push((name.clone(), *version, v.document));
                    }
                }
                docs
            } else {
                self.store.default_documents(tenant.as_str()).await?
            };
            let docs_len = docs.len();
            let compile_all = || {
                docs.into_iter()
                    .map(|(n, v, d)| {
                        let p = self.compile(&d, PolicyKind::Identity, &n);
                        (key(&n, v), Arc::new(p))
                    })
                    .collect()
            };
            // Compiling a whole tenant (start-up, a cold tenant) is CPU work of up to a few
            // hundred ms: it must not hold an async worker that other requests wait on.
            let multi_thread = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            fresh = if docs_len > 20 && multi_thread {
                tokio::task::block_in_place(compile_all)
            } else {
                compile_all()
            };
        }
        let mut cache = self
            .compiled
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Checked under the cache's lock; `forget_compiled` bumps the counter before it takes it.
        if self.generation.load(Ordering::SeqCst) == generation {
            cache.extend(fresh.iter().map(|(k, p)| (k.clone(), p.clone())));
            // Versions that are no longer the default are dropped.
            let current: HashSet<(TenantId, String, i64)> =
                defaults.iter().map(|(n, v)| key(n, *v)).collect();
            cache.retain(|k, _| &k.0 != tenant || current.contains(k));
        }
        Ok(defaults
            .into_iter()
            .filter_map(|(name, version)| {
                let k = key(&name, version);
                let policy = fresh.get(&k).or_else(|| cache.get(&k))?.clone();
                let version = u32::try_from(version).unwrap_or(u32::MAX);
                Some((name, Versioned { version, policy }))
            })
            .collect())
    }

    /// Forgets compiled versions of a deleted policy (a recreated one starts again at version 1).
    pub(crate) fn forget_compiled(&self, tenant: &str, name: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.compiled
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| !(k.0.as_str() == tenant && k.1 == name));
    }

    pub(crate) fn invalidate(&self, tenant: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(t) = TenantId::parse(tenant) {
            self.cache
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&t);
        }
    }
}
