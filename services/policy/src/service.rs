//! The policy service: a per-tenant snapshot of everything that decides authorizations, built
//! from storage, cached, and dropped on every server when the change feed says it changed.
//!
//! A decision looks up only what applies to the request: the policies attached to the principal
//! and to its groups (membership resolved transitively by casbin's role manager, with the tenant
//! as domain), the resource policies whose CRN pattern matches, the principal's boundary and the
//! tenant's guardrails. Evaluation itself is `capstan_iam::evaluate`.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use capstan_core::authz::{Authorizer, AuthzError, Caller, GuardContext};
use capstan_core::clock::Clock;
use capstan_core::crn::Crn;
use capstan_core::ids::{PrincipalId, TenantId};
use capstan_iam::{evaluate, Context, Decision, Limits, Outcome, Policy, Reason, Request};
use tokio::sync::mpsc;

use crate::builtin;
use crate::decisions::LogMsg;
use crate::error::PolicyError;
use crate::snapshot::Snapshot;
use crate::store::PolicyStore;

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

/// The principal facts a decision's context is built from, and the trace it is logged under.
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
    /// The W3C trace id of the request that asked (its `traceparent`). Only the decision log
    /// records it: no condition key reads it.
    pub trace_id: Option<String>,
}

/// The policy service.
pub struct PolicyService {
    pub(crate) store: Arc<dyn PolicyStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) cfg: PolicyConfig,
    pub(crate) cache: RwLock<HashMap<TenantId, Arc<Snapshot>>>,
    /// Compiled managed policies by (tenant, name, version), kept across snapshot rebuilds.
    pub(crate) compiled: RwLock<HashMap<(TenantId, String, i64), Arc<Policy>>>,
    pub(crate) generation: AtomicU64,
    /// Single-flight snapshot builds: a crowd of requests finding no snapshot (a replica that
    /// just started, the first burst after a policy change) reads and compiles the tenant once.
    pub(crate) snapshot_flights: capstan_core::flight::Flights<TenantId>,
    pub(crate) log: mpsc::Sender<LogMsg>,
    pub(crate) log_rx: std::sync::Mutex<Option<mpsc::Receiver<LogMsg>>>,
    /// Decisions dropped because the log queue was full.
    pub dropped_decisions: AtomicU64,
    /// Stored documents that did not compile (each replaced by a deny-everything policy).
    pub compile_failures: AtomicU64,
    /// Tenant snapshots read from storage and built (first use, and after every change).
    pub snapshot_loads: AtomicU64,
}

impl PolicyService {
    /// Builds the service; [`PolicyService::start`] runs its background tasks.
    pub fn new(
        store: Arc<dyn PolicyStore>,
        clock: Arc<dyn Clock>,
        cfg: PolicyConfig,
    ) -> PolicyService {
        let (tx, rx) = mpsc::channel(65_536);
        PolicyService {
            store,
            clock,
            cfg,
            cache: RwLock::default(),
            compiled: RwLock::default(),
            generation: AtomicU64::new(0),
            snapshot_flights: capstan_core::flight::Flights::new(),
            log: tx,
            log_rx: std::sync::Mutex::new(Some(rx)),
            dropped_decisions: AtomicU64::new(0),
            compile_failures: AtomicU64::new(0),
            snapshot_loads: AtomicU64::new(0),
        }
    }

    /// How many per-principal indexes the tenant's current snapshot keeps (bounded).
    pub async fn cached_indexes(&self, tenant: &TenantId) -> Result<usize, PolicyError> {
        Ok(self.snapshot(tenant).await?.cached_indexes())
    }

    /// The limits documents are checked against.
    pub fn limits(&self) -> &Limits {
        &self.cfg.limits
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
        self.record(tenant, subject, action, resource, &outcome, snap.revision);
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
        // Tenants are isolated before any policy is read: a Capstan resource of another tenant
        // (or one whose tenant part is not a tenant, such as a wildcard) is never allowed.
        if resource.starts_with("crn:capstan:")
            && Crn::parse(resource).map_or(true, |c| c.tenant() != tenant.as_str())
        {
            return Outcome {
                decision: Decision::Deny,
                reason: Reason::OtherTenant,
                matched: Vec::new(),
            };
        }
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
        resource: &Crn,
        context: GuardContext<'_>,
    ) -> Result<(), AuthzError> {
        // Tenants are isolated before any policy is read.
        if resource.tenant() != caller.tenant.as_str() {
            return Err(AuthzError::denied("other_tenant"));
        }
        let subject = Subject {
            principal: caller.principal.to_string(),
            client_id: Some(caller.client_id.clone()),
            scopes: Some(caller.scopes.clone()),
            source_ip: caller.source_ip.clone(),
            trace_id: caller.trace_id.clone(),
        };
        let extra = (!context.is_empty()).then(|| {
            let mut ctx = Context::new();
            for (k, v) in context {
                ctx.set(k, [*v]);
            }
            ctx
        });
        match self
            .decide(
                &caller.tenant,
                &subject,
                action,
                resource.as_str(),
                extra.as_ref(),
            )
            .await
        {
            Ok((o, _)) if o.decision == Decision::Allow => Ok(()),
            Ok((o, _)) => Err(AuthzError::denied(o.reason.as_str())),
            // No decision could be made: an outage is a 503, never a Deny that looks like one.
            Err(e) => Err(authz_error(e)),
        }
    }

    async fn principal_tags(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
    ) -> Result<Vec<(String, String)>, AuthzError> {
        let snap = self.snapshot(tenant).await.map_err(authz_error)?;
        Ok(snap
            .tags
            .get(principal.as_str())
            .cloned()
            .unwrap_or_default())
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

    async fn set_boundary(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
        policy: &str,
    ) -> Result<(), AuthzError> {
        match self.policy_exists(tenant, policy).await {
            Ok(()) => {}
            Err(PolicyError::NotFound(m)) => return Err(AuthzError::Denied { reason: m }),
            Err(e) => return Err(authz_error(e)),
        }
        self.store
            .set_boundary(
                tenant.as_str(),
                principal.as_str(),
                policy,
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
