//! `POST /v1/simulate`: what would these changes do? The changes are applied to an in-memory copy
//! of the tenant's compiled state; nothing is stored and no decision is logged.

use std::sync::Arc;

use capstan_core::authz::Caller;
use capstan_iam::{Policy, PolicyKind};
pub use capstan_proto::policy::{Change, SimulateRequest, SimulateResponse, SimulatedDecision};

use crate::api::{check_name, outcome_view, principal_id, MAX_BATCH};
use crate::builtin;
use crate::error::PolicyError;
use crate::service::{PolicyService, Subject};
use crate::snapshot::{Snapshot, Versioned};

fn target(
    principal: &Option<String>,
    group: &Option<String>,
) -> Result<(bool, String), PolicyError> {
    match (principal, group) {
        (Some(p), None) => Ok((false, principal_id(p)?.to_string())),
        (None, Some(g)) => Ok((true, g.clone())),
        _ => Err(PolicyError::BadRequest(
            "attach/detach: give exactly one of principal and group".into(),
        )),
    }
}

fn apply(
    snap: &mut Snapshot,
    change: &Change,
    limits: &capstan_iam::Limits,
) -> Result<(), PolicyError> {
    match change {
        Change::PutPolicy { name, document } => {
            check_name("policy name", name)?;
            if builtin::document(name).is_some() {
                return Err(PolicyError::Conflict(format!(
                    "{name} is a built-in policy"
                )));
            }
            let parsed = Policy::parse(&document.to_string(), PolicyKind::Identity, limits)
                .map_err(PolicyError::InvalidDocument)?;
            let version = snap.policies.get(name).map_or(1, |v| v.version + 1);
            snap.policies.insert(
                name.clone(),
                Versioned {
                    version,
                    policy: Arc::new(parsed.policy),
                },
            );
        }
        Change::DeletePolicy { name } => {
            if snap.policies.remove(name).is_none() {
                return Err(PolicyError::NotFound(format!("policy {name:?} not found")));
            }
        }
        Change::Attach {
            policy,
            principal,
            group,
        }
        | Change::Detach {
            policy,
            principal,
            group,
        } => {
            let (is_group, t) = target(principal, group)?;
            let map = if is_group {
                &mut snap.group_policies
            } else {
                &mut snap.principal_policies
            };
            let list = map.entry(t).or_default();
            if matches!(change, Change::Attach { .. }) {
                if !snap.policies.contains_key(policy) && builtin::document(policy).is_none() {
                    return Err(PolicyError::NotFound(format!(
                        "policy {policy:?} not found"
                    )));
                }
                if !list.contains(policy) {
                    list.push(policy.clone());
                }
            } else {
                list.retain(|p| p != policy);
            }
        }
    }
    Ok(())
}

impl PolicyService {
    /// `POST /v1/simulate`.
    pub async fn simulate(
        &self,
        verifier: &dyn capstan_core::authz::TokenVerifier,
        caller: &Caller,
        req: SimulateRequest,
    ) -> Result<SimulateResponse, PolicyError> {
        self.guard_simulate(caller).await?;
        if req.changes.len() > MAX_BATCH {
            return Err(PolicyError::BadRequest(format!(
                "changes: at most {MAX_BATCH}"
            )));
        }
        let current = self.snapshot(&caller.tenant).await?;
        let mut proposed = (*current).clone();
        for (i, c) in req.changes.iter().enumerate() {
            apply(&mut proposed, c, self.limits()).map_err(|e| match e {
                PolicyError::BadRequest(m) => PolicyError::BadRequest(format!("changes[{i}]: {m}")),
                PolicyError::NotFound(m) => PolicyError::BadRequest(format!("changes[{i}]: {m}")),
                other => other,
            })?;
        }
        let mut cases: Vec<(Subject, capstan_iam::Context, String, String)> = Vec::new();
        match (req.requests, req.replay) {
            (Some(requests), None) => {
                // Deciding requests is what /v1/authorize does: it needs that permission too.
                self.guard(caller, "policy:Authorize", "authorizer").await?;
                if requests.is_empty() || requests.len() > MAX_BATCH {
                    return Err(PolicyError::BadRequest(format!(
                        "requests: 1 to {MAX_BATCH} entries"
                    )));
                }
                for r in &requests {
                    let (subject, ctx) = self.prepare(verifier, caller, r).await?;
                    cases.push((subject, ctx, r.action.clone(), r.resource.clone()));
                }
            }
            (None, Some(n)) => {
                // Replaying reads the decision log: it needs that permission too.
                self.guard(caller, "policy:ListDecisions", "decision/*")
                    .await?;
                if !(1..=1000).contains(&n) {
                    return Err(PolicyError::BadRequest(
                        "replay must be between 1 and 1000".into(),
                    ));
                }
                self.flush_decisions().await;
                let filter = crate::store::DecisionFilter {
                    limit: n,
                    ..Default::default()
                };
                for (_, d) in self
                    .store
                    .list_decisions(caller.tenant.as_str(), &filter)
                    .await?
                {
                    let subject = Subject {
                        principal: d.principal,
                        ..Default::default()
                    };
                    cases.push((subject, capstan_iam::Context::new(), d.action, d.resource));
                }
            }
            _ => {
                return Err(PolicyError::BadRequest(
                    "give exactly one of requests and replay".into(),
                ))
            }
        }
        let mut results: Vec<SimulatedDecision> = cases
            .into_iter()
            .map(|(subject, ctx, action, resource)| {
                let before = self.evaluate_in(
                    &current,
                    &caller.tenant,
                    &subject,
                    &action,
                    &resource,
                    Some(&ctx),
                );
                let after = self.evaluate_in(
                    &proposed,
                    &caller.tenant,
                    &subject,
                    &action,
                    &resource,
                    Some(&ctx),
                );
                let changed = before.decision != after.decision;
                SimulatedDecision {
                    principal: subject.principal,
                    action,
                    resource,
                    before: outcome_view(before, current.revision),
                    after: outcome_view(after, current.revision),
                    changed,
                }
            })
            .collect();
        results.sort_by_key(|r| !r.changed);
        Ok(SimulateResponse {
            changed: results.iter().filter(|r| r.changed).count(),
            results,
        })
    }
}
