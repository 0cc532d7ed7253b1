//! The policy service: a per-tenant snapshot of everything that decides authorizations, built
//! from storage, cached, and dropped on every server when the change feed says it changed.
//!
//! A decision looks up only what applies to the request: the policies attached to the principal
//! and to its groups (membership resolved transitively by casbin's role manager, with the tenant
//! as domain), the resource policies whose CRN pattern matches, the principal's boundary and the
//! tenant's guardrails. Evaluation itself is `capstan_iam::evaluate`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use capstan_core::authz::{crn_tenant, Authorizer, AuthzError, Caller, GuardContext};
use capstan_core::clock::Clock;
use capstan_core::ids::{PrincipalId, TenantId};
use capstan_db::Db;
use capstan_iam::{
    crn_matches, evaluate, Applicable, Context, Decision, IdentityIndex, Limits, Outcome, Policy,
    PolicyKind, Request, Source,
};
use casbin::{DefaultRoleManager, RoleManager};
use tokio::sync::mpsc;

use crate::builtin;
use crate::error::PolicyError;
use crate::store::{DecisionRecord, PolicyStore};

/// Feed topic of policy changes (key: tenant).
pub const TOPIC_POLICY: &str = "policy";

/// Feed topic of a deleted managed policy (key: policy name).
pub const TOPIC_POLICY_DELETED: &str = "policy_deleted";

/// Group names as members of other groups.
pub const GROUP_PREFIX: &str = "group:";

/// Settings of the policy service.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Document limits.
    pub limits: Limits,
    /// How long decisions are kept (seconds).
    pub decision_retention: i64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            limits: Limits::default(),
            decision_retention: 7 * 86_400,
        }
    }
}

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
        let ix = Arc::new(IdentityIndex::new(policies));
        self.indexes
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(principal.to_owned(), ix.clone());
        ix
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

fn compile(text: &str, kind: PolicyKind) -> Option<Policy> {
    // Stored documents were validated on the way in; limits are not re-applied so a lowered
    // limit never disables a stored policy.
    let limits = Limits {
        max_chars: usize::MAX,
        max_statements: usize::MAX,
        max_values: usize::MAX,
        max_depth: usize::MAX,
    };
    match Policy::parse(text, kind, &limits) {
        Ok(p) => Some(p.policy),
        Err(e) => {
            tracing::error!(errors = ?e, "stored policy does not compile; ignoring it");
            None
        }
    }
}

/// What the decision-log writer receives.
enum LogMsg {
    Record(DecisionRecord),
    /// Answered once everything sent before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The principal facts a decision's context is built from.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    /// Principal id.
    pub principal: String,
    /// OAuth2 client id, when acting through a token.
    pub client_id: Option<String>,
    /// Token scopes, when acting through a token.
    pub scopes: Option<Vec<String>>,
    /// Peer address.
    pub source_ip: Option<String>,
}

/// The policy service.
pub struct PolicyService {
    pub(crate) store: PolicyStore,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) cfg: PolicyConfig,
    cache: RwLock<HashMap<TenantId, Arc<Snapshot>>>,
    /// Compiled managed policies by (tenant, name, version), kept across snapshot rebuilds.
    compiled: RwLock<HashMap<(TenantId, String, i64), Arc<Policy>>>,
    generation: AtomicU64,
    log: mpsc::Sender<LogMsg>,
    log_rx: std::sync::Mutex<Option<mpsc::Receiver<LogMsg>>>,
    /// Decisions dropped because the log queue was full.
    pub dropped_decisions: AtomicU64,
}

impl PolicyService {
    /// Builds the service; [`PolicyService::start`] runs its background tasks.
    pub fn new(db: Db, clock: Arc<dyn Clock>, cfg: PolicyConfig) -> PolicyService {
        let (tx, rx) = mpsc::channel(65_536);
        PolicyService {
            store: PolicyStore::new(db),
            clock,
            cfg,
            cache: RwLock::default(),
            compiled: RwLock::default(),
            generation: AtomicU64::new(0),
            log: tx,
            log_rx: std::sync::Mutex::new(Some(rx)),
            dropped_decisions: AtomicU64::new(0),
        }
    }

    /// The limits documents are checked against.
    pub fn limits(&self) -> &Limits {
        &self.cfg.limits
    }

    pub(crate) async fn snapshot(&self, tenant: &TenantId) -> Result<Arc<Snapshot>, PolicyError> {
        if let Some(s) = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
        {
            return Ok(s.clone());
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let rows = self.store.load(tenant.as_str()).await?;
        let mut snap = Snapshot {
            revision: rows.revision,
            ..Default::default()
        };
        snap.policies = self.compiled_defaults(tenant, rows.defaults).await?;
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
        for m in members.iter().filter(|m| !m.starts_with(GROUP_PREFIX)) {
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
            .filter_map(|(r, d)| compile(&d, PolicyKind::Resource).map(|p| (r, p)))
            .collect();
        snap.guardrails = rows
            .guardrails
            .into_iter()
            .filter_map(|(n, d)| compile(&d, PolicyKind::Identity).map(|p| (n, p)))
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
    async fn compiled_defaults(
        &self,
        tenant: &TenantId,
        defaults: Vec<(String, i64)>,
    ) -> Result<HashMap<String, Versioned>, PolicyError> {
        let key = |name: &str, version: i64| (tenant.clone(), name.to_owned(), version);
        let missing: Vec<&(String, i64)> = {
            let cache = self.compiled.read().unwrap_or_else(PoisonError::into_inner);
            defaults
                .iter()
                .filter(|(n, v)| !cache.contains_key(&key(n, *v)))
                .collect()
        };
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
            let compiled: Vec<_> = docs
                .into_iter()
                .filter_map(|(n, v, d)| {
                    compile(&d, PolicyKind::Identity).map(|p| (key(&n, v), Arc::new(p)))
                })
                .collect();
            let mut cache = self
                .compiled
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            cache.extend(compiled);
        }
        let mut cache = self
            .compiled
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Versions that are no longer the default are dropped.
        let current: HashSet<(TenantId, String, i64)> =
            defaults.iter().map(|(n, v)| key(n, *v)).collect();
        cache.retain(|k, _| &k.0 != tenant || current.contains(k));
        Ok(defaults
            .into_iter()
            .filter_map(|(name, version)| {
                let policy = cache.get(&key(&name, version))?.clone();
                let version = u32::try_from(version).unwrap_or(u32::MAX);
                Some((name, Versioned { version, policy }))
            })
            .collect())
    }

    /// Forgets compiled versions of a deleted policy (a recreated one starts again at version 1).
    pub(crate) fn forget_compiled(&self, tenant: &str, name: &str) {
        self.compiled
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| !(k.0.as_str() == tenant && k.1 == name));
    }

    fn invalidate(&self, tenant: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(t) = TenantId::parse(tenant) {
            self.cache
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&t);
        }
    }

    /// After a write (which bumped the revision and appended the feed row in its transaction):
    /// drops this server's snapshot at once; the others drop theirs when the feed says so.
    pub(crate) fn changed(&self, tenant: &TenantId) {
        self.invalidate(tenant.as_str());
    }

    /// The request context: the caller's keys, then Capstan's own (which cannot be overridden).
    pub(crate) fn context(
        &self,
        snap: &Snapshot,
        tenant: &TenantId,
        subject: &Subject,
        extra: Option<&Context>,
    ) -> Context {
        let mut ctx = extra.cloned().unwrap_or_default();
        let now = self.clock.now();
        ctx.set("capstan:principal", [subject.principal.as_str()]);
        ctx.set("capstan:tenant", [tenant.as_str()]);
        ctx.set("capstan:CurrentTime", [iso8601(now)]);
        ctx.set("capstan:EpochTime", [now.to_string()]);
        if let Some(c) = &subject.client_id {
            ctx.set("capstan:ClientId", [c.as_str()]);
        }
        if let Some(s) = &subject.scopes {
            ctx.set("capstan:TokenScopes", s.iter().map(String::as_str));
        }
        if let Some(ip) = &subject.source_ip {
            ctx.set("capstan:SourceIp", [ip.as_str()]);
        }
        for (k, v) in snap.tags.get(&subject.principal).into_iter().flatten() {
            ctx.set(&format!("capstan:PrincipalTag/{k}"), [v.as_str()]);
        }
        ctx
    }

    /// Decides one request and logs it.
    pub async fn decide(
        &self,
        tenant: &TenantId,
        subject: &Subject,
        action: &str,
        resource: &str,
        extra: Option<&Context>,
    ) -> Result<(Outcome, i64), PolicyError> {
        let snap = self.snapshot(tenant).await?;
        let outcome = self.evaluate_in(&snap, tenant, subject, action, resource, extra);
        self.record(
            tenant,
            &subject.principal,
            action,
            resource,
            &outcome,
            snap.revision,
        );
        Ok((outcome, snap.revision))
    }

    /// Decides one request without logging it (dry runs, benchmarks).
    pub async fn decide_unlogged(
        &self,
        tenant: &TenantId,
        subject: &Subject,
        action: &str,
        resource: &str,
        extra: Option<&Context>,
    ) -> Result<Outcome, PolicyError> {
        let snap = self.snapshot(tenant).await?;
        Ok(self.evaluate_in(&snap, tenant, subject, action, resource, extra))
    }

    /// Decides against a given snapshot, without logging (simulation).
    pub(crate) fn evaluate_in(
        &self,
        snap: &Snapshot,
        tenant: &TenantId,
        subject: &Subject,
        action: &str,
        resource: &str,
        extra: Option<&Context>,
    ) -> Outcome {
        let ctx = self.context(snap, tenant, subject, extra);
        let index = snap.identity_index(&subject.principal);
        evaluate(
            &Request {
                principal: &subject.principal,
                action,
                resource,
                context: &ctx,
            },
            &snap.applicable(&index, &subject.principal, resource),
        )
    }

    fn record(
        &self,
        tenant: &TenantId,
        principal: &str,
        action: &str,
        resource: &str,
        o: &Outcome,
        revision: i64,
    ) {
        let matched: Vec<serde_json::Value> = o
            .matched
            .iter()
            .map(|m| serde_json::json!({"policy": m.policy, "version": m.version, "sid": m.sid}))
            .collect();
        let rec = DecisionRecord {
            tenant: tenant.to_string(),
            principal: principal.to_owned(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            decision: if o.decision == Decision::Allow {
                "Allow"
            } else {
                "Deny"
            }
            .to_owned(),
            reason: o.reason.as_str().to_owned(),
            policy_revision: revision,
            context: serde_json::json!({ "matched": matched }).to_string(),
            at: self.clock.now(),
        };
        if self.log.try_send(LogMsg::Record(rec)).is_err() {
            self.dropped_decisions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Starts the decision-log writer. Changes reach [`PolicyService::on_change`] through the
    /// server's change feed.
    pub async fn start(self: &Arc<Self>) -> Result<Vec<tokio::task::JoinHandle<()>>, PolicyError> {
        let mut tasks = Vec::new();
        let rx = self
            .log_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut rx) = rx {
            let store = self.store.clone();
            tasks.push(tokio::spawn(async move {
                let mut msgs = Vec::with_capacity(512);
                let mut batch = Vec::with_capacity(512);
                while rx.recv_many(&mut msgs, 512).await > 0 {
                    let mut flushes = Vec::new();
                    for m in msgs.drain(..) {
                        match m {
                            LogMsg::Record(r) => batch.push(r),
                            LogMsg::Flush(done) => flushes.push(done),
                        }
                    }
                    if let Err(e) = store.insert_decisions(&batch).await {
                        tracing::warn!(error = %e, dropped = batch.len(), "cannot write decisions");
                    }
                    batch.clear();
                    for f in flushes {
                        let _ = f.send(());
                    }
                }
            }));
        }
        Ok(tasks)
    }

    /// A change from the feed: a tenant's policies changed (its snapshot is dropped), or a
    /// managed policy was deleted (its compiled versions are forgotten too).
    pub fn on_change(&self, c: &capstan_db::Change) {
        match c.topic.as_str() {
            TOPIC_POLICY => self.invalidate(&c.tenant),
            TOPIC_POLICY_DELETED => {
                self.forget_compiled(&c.tenant, &c.key);
                self.invalidate(&c.tenant);
            }
            _ => {}
        }
    }

    /// Drops decisions older than the retention.
    pub async fn prune_decisions(&self) -> Result<u64, PolicyError> {
        let before = self.clock.now() - self.cfg.decision_retention;
        Ok(self.store.prune_decisions(before).await?)
    }

    /// Waits until every decision logged so far is written (before reading the log, and at
    /// shutdown).
    pub async fn flush_decisions(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.log.send(LogMsg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// `2026-11-24T10:20:30Z`.
pub(crate) fn iso8601(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[async_trait]
impl Authorizer for PolicyService {
    async fn authorize(
        &self,
        caller: &Caller,
        action: &str,
        resource: &str,
        context: GuardContext<'_>,
    ) -> Result<(), AuthzError> {
        // Tenants are isolated before any policy is read.
        if crn_tenant(resource) != Some(caller.tenant.as_str()) {
            return Err(AuthzError::denied("other_tenant"));
        }
        let subject = Subject {
            principal: caller.principal.to_string(),
            client_id: Some(caller.client_id.clone()),
            scopes: Some(caller.scopes.clone()),
            source_ip: caller.source_ip.clone(),
        };
        let extra = (!context.is_empty()).then(|| {
            let mut ctx = Context::new();
            for (k, v) in context {
                ctx.set(k, [*v]);
            }
            ctx
        });
        match self
            .decide(&caller.tenant, &subject, action, resource, extra.as_ref())
            .await
        {
            Ok((o, _)) if o.decision == Decision::Allow => Ok(()),
            Ok((o, _)) => Err(AuthzError::denied(o.reason.as_str())),
            // No decision could be made: an outage is a 503, never a Deny that looks like one.
            Err(e) => Err(authz_error(e)),
        }
    }

    async fn grant_administrator(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
    ) -> Result<(), AuthzError> {
        self.store
            .attach(
                tenant.as_str(),
                "principal",
                principal.as_str(),
                builtin::ADMINISTRATOR,
                self.clock.now(),
            )
            .await
            .map_err(|e| authz_error(e.into()))?;
        self.changed(tenant);
        Ok(())
    }
}

/// Why no decision could be made: unavailable storage, or a failure that is logged here.
fn authz_error(e: PolicyError) -> AuthzError {
    match e {
        PolicyError::Db(e) if e.is_unavailable() => AuthzError::Unavailable,
        e => {
            tracing::error!(error = %e, "authorization failed");
            AuthzError::Internal
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_dates() {
        assert_eq!(super::iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::iso8601(1_795_478_400), "2026-11-24T00:00:00Z");
        assert_eq!(super::iso8601(951_782_400 + 3_661), "2000-02-29T01:01:01Z");
    }
}
