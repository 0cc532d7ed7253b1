//! The operations behind the `/v1` policy API. Each names an action and a CRN and is guarded by
//! the policy engine itself.

use std::collections::BTreeMap;

use capstan_core::authz::{guard, Caller, GuardError, TokenVerifier, VerifyError};
use capstan_core::crn::Crn;
use capstan_core::ids::{PrincipalId, TenantId};
use capstan_iam::{Context, Decision, Issue, Outcome, Policy, PolicyKind};
pub use capstan_proto::policy::{
    AuthorizeRequest, AuthorizeResponse, BatchRequest, BatchResponse, BoundaryRequest,
    ContextValue, DecisionView, IssueView, MatchedView, PolicySummary, PolicyView, PutPolicyResult,
    TagsRequest, Validation,
};
use serde_json::Value;

use crate::builtin;
use crate::error::PolicyError;
use crate::service::{PolicyService, Subject, GROUP_PREFIX};
use crate::store::Keyed;

/// An engine issue as the API shows it.
pub(crate) fn issue_view(i: &Issue) -> IssueView {
    IssueView {
        path: i.path.clone(),
        message: i.message.clone(),
    }
}

/// Limits of the authorization API.
pub(crate) const MAX_BATCH: usize = 100;
const MAX_DECISIONS: i64 = 1_000;

/// Policy and group names: 1–128 of `A-Z a-z 0-9 + = , . @ _ -` (as IAM).
pub fn check_name(what: &str, s: &str) -> Result<(), PolicyError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::BadRequest(format!(
            "{what} {s:?} must be 1-128 characters of letters, digits and +=,.@_-"
        )))
    }
}

pub(crate) fn principal_id(s: &str) -> Result<PrincipalId, PolicyError> {
    Ok(PrincipalId::parse(s)?)
}

pub(crate) fn outcome_view(o: Outcome, revision: i64) -> AuthorizeResponse {
    AuthorizeResponse {
        decision: if o.decision == Decision::Allow {
            "Allow"
        } else {
            "Deny"
        }
        .into(),
        reason: o.reason.as_str().into(),
        matched: o
            .matched
            .into_iter()
            .map(|m| MatchedView {
                policy: m.policy,
                version: m.version,
                sid: m.sid,
            })
            .collect(),
        policy_revision: revision,
    }
}

impl PolicyService {
    async fn guard(&self, caller: &Caller, action: &str, path: &str) -> Result<(), PolicyError> {
        let resource = Crn::new("policy", &caller.tenant, path);
        Ok(guard(self, caller, action, &resource, &[]).await?)
    }

    fn parse_doc(&self, text: &str, kind: PolicyKind) -> Result<(String, Vec<Issue>), PolicyError> {
        let parsed =
            Policy::parse(text, kind, self.limits()).map_err(PolicyError::InvalidDocument)?;
        // Store the canonical JSON text.
        let value: Value =
            serde_json::from_str(text).map_err(|e| PolicyError::BadRequest(e.to_string()))?;
        Ok((value.to_string(), parsed.warnings))
    }

    /// `PUT /v1/policies/{name}`.
    pub async fn put_policy(
        &self,
        caller: &Caller,
        name: &str,
        text: &str,
    ) -> Result<PutPolicyResult, PolicyError> {
        check_name("policy name", name)?;
        self.guard(caller, "policy:PutPolicy", &format!("policy/{name}"))
            .await?;
        if builtin::document(name).is_some() {
            return Err(PolicyError::Conflict(format!(
                "{name} is a built-in policy and cannot be changed"
            )));
        }
        let (doc, warnings) = self.parse_doc(text, PolicyKind::Identity)?;
        let version = self
            .store
            .put_version(caller.tenant.as_str(), name, &doc, self.clock.now())
            .await?;
        self.changed(&caller.tenant);
        Ok(PutPolicyResult {
            name: name.into(),
            version,
            warnings: warnings.iter().map(issue_view).collect(),
        })
    }

    /// `GET /v1/policies`.
    pub async fn list_policies(&self, caller: &Caller) -> Result<Vec<PolicySummary>, PolicyError> {
        self.guard(caller, "policy:ListPolicies", "policy/*")
            .await?;
        let mut out: Vec<PolicySummary> = builtin::BUILTIN
            .iter()
            .map(|(name, _)| PolicySummary {
                name: (*name).into(),
                default_version: 1,
                versions: vec![1],
                builtin: true,
            })
            .collect();
        for (name, default_version, versions) in
            self.store.list_policies(caller.tenant.as_str()).await?
        {
            out.push(PolicySummary {
                name,
                default_version,
                versions,
                builtin: false,
            });
        }
        Ok(out)
    }

    /// `GET /v1/policies/{name}[?version=N]`.
    pub async fn get_policy(
        &self,
        caller: &Caller,
        name: &str,
        version: Option<i64>,
    ) -> Result<PolicyView, PolicyError> {
        self.guard(caller, "policy:GetPolicy", &format!("policy/{name}"))
            .await?;
        let not_found =
            || PolicyError::NotFound(format!("policy {name:?} (version {version:?}) not found"));
        if let Some(text) = builtin::document(name) {
            if version.is_some_and(|v| v != 1) {
                return Err(not_found());
            }
            let document =
                serde_json::from_str(text).map_err(|e| PolicyError::BadRequest(e.to_string()))?;
            return Ok(PolicyView {
                name: name.into(),
                version: 1,
                default: true,
                builtin: true,
                document,
            });
        }
        let v = self
            .store
            .get_version(caller.tenant.as_str(), name, version)
            .await?
            .ok_or_else(not_found)?;
        let document = serde_json::from_str(&v.document)
            .map_err(|e| PolicyError::BadRequest(e.to_string()))?;
        Ok(PolicyView {
            name: name.into(),
            version: v.version,
            default: v.is_default,
            builtin: false,
            document,
        })
    }

    /// `DELETE /v1/policies/{name}`: refused while the policy is attached or a boundary.
    pub async fn delete_policy(&self, caller: &Caller, name: &str) -> Result<(), PolicyError> {
        self.guard(caller, "policy:DeletePolicy", &format!("policy/{name}"))
            .await?;
        if builtin::document(name).is_some() {
            return Err(PolicyError::Conflict(format!(
                "{name} is a built-in policy and cannot be deleted"
            )));
        }
        let uses = self.store.uses(caller.tenant.as_str(), name).await?;
        if uses > 0 {
            return Err(PolicyError::Conflict(format!(
                "policy {name:?} is attached or used as a boundary {uses} time(s); detach it first"
            )));
        }
        if !self
            .store
            .delete_policy(caller.tenant.as_str(), name, self.clock.now())
            .await?
        {
            return Err(PolicyError::NotFound(format!("policy {name:?} not found")));
        }
        self.forget_compiled(caller.tenant.as_str(), name);
        self.changed(&caller.tenant);
        Ok(())
    }

    /// `POST /v1/policies:validate`.
    pub async fn validate(
        &self,
        caller: &Caller,
        text: &str,
        kind: PolicyKind,
    ) -> Result<Validation, PolicyError> {
        self.guard(caller, "policy:ValidatePolicy", "policy/*")
            .await?;
        Ok(match Policy::parse(text, kind, self.limits()) {
            Ok(p) => Validation {
                valid: true,
                errors: vec![],
                warnings: p.warnings.iter().map(issue_view).collect(),
            },
            Err(errors) => Validation {
                valid: false,
                errors: errors.iter().map(issue_view).collect(),
                warnings: vec![],
            },
        })
    }

    async fn policy_exists(&self, tenant: &TenantId, name: &str) -> Result<(), PolicyError> {
        if builtin::document(name).is_some()
            || self
                .store
                .get_version(tenant.as_str(), name, None)
                .await?
                .is_some()
        {
            Ok(())
        } else {
            Err(PolicyError::NotFound(format!("policy {name:?} not found")))
        }
    }

    async fn group_exists(&self, tenant: &TenantId, group: &str) -> Result<(), PolicyError> {
        if self.store.group_exists(tenant.as_str(), group).await? {
            Ok(())
        } else {
            Err(PolicyError::NotFound(format!("group {group:?} not found")))
        }
    }

    /// `PUT /v1/groups/{group}`; true when created.
    pub async fn put_group(&self, caller: &Caller, group: &str) -> Result<bool, PolicyError> {
        check_name("group name", group)?;
        self.guard(caller, "policy:PutGroup", &format!("group/{group}"))
            .await?;
        let created = self
            .store
            .put_group(caller.tenant.as_str(), group, self.clock.now())
            .await?;
        self.changed(&caller.tenant);
        Ok(created)
    }

    /// `DELETE /v1/groups/{group}`.
    pub async fn delete_group(&self, caller: &Caller, group: &str) -> Result<(), PolicyError> {
        self.guard(caller, "policy:DeleteGroup", &format!("group/{group}"))
            .await?;
        if !self
            .store
            .delete_group(caller.tenant.as_str(), group, self.clock.now())
            .await?
        {
            return Err(PolicyError::NotFound(format!("group {group:?} not found")));
        }
        self.changed(&caller.tenant);
        Ok(())
    }

    /// `PUT|DELETE /v1/groups/{group}/members/{member}`; a member is a principal id or
    /// `group:<name>`.
    pub async fn set_member(
        &self,
        caller: &Caller,
        group: &str,
        member: &str,
        present: bool,
    ) -> Result<(), PolicyError> {
        let action = if present {
            "policy:AddGroupMember"
        } else {
            "policy:RemoveGroupMember"
        };
        self.guard(caller, action, &format!("group/{group}"))
            .await?;
        self.group_exists(&caller.tenant, group).await?;
        match member.strip_prefix(GROUP_PREFIX) {
            Some(inner) => {
                if inner == group {
                    return Err(PolicyError::BadRequest(
                        "a group cannot contain itself".into(),
                    ));
                }
                self.group_exists(&caller.tenant, inner).await?;
            }
            None => {
                principal_id(member)?;
            }
        }
        let t = caller.tenant.as_str();
        let now = self.clock.now();
        if present {
            self.store.add_member(t, group, member, now).await?;
        } else if !self.store.remove_member(t, group, member, now).await? {
            return Err(PolicyError::NotFound(format!(
                "{member:?} is not a member of {group:?}"
            )));
        }
        self.changed(&caller.tenant);
        Ok(())
    }

    /// `PUT|DELETE /v1/{principals|groups}/{target}/policies/{name}`.
    pub async fn set_attachment(
        &self,
        caller: &Caller,
        group: bool,
        target: &str,
        policy: &str,
        present: bool,
    ) -> Result<(), PolicyError> {
        let (kind, action, path) = if group {
            let a = if present {
                "policy:AttachGroupPolicy"
            } else {
                "policy:DetachGroupPolicy"
            };
            ("group", a, format!("group/{target}"))
        } else {
            let a = if present {
                "policy:AttachPrincipalPolicy"
            } else {
                "policy:DetachPrincipalPolicy"
            };
            ("principal", a, format!("principal/{target}"))
        };
        self.guard(caller, action, &path).await?;
        if group {
            self.group_exists(&caller.tenant, target).await?;
        } else {
            principal_id(target)?;
        }
        let t = caller.tenant.as_str();
        let now = self.clock.now();
        if present {
            self.policy_exists(&caller.tenant, policy).await?;
            self.store.attach(t, kind, target, policy, now).await?;
        } else if !self.store.detach(t, kind, target, policy, now).await? {
            return Err(PolicyError::NotFound(format!(
                "policy {policy:?} is not attached to {target:?}"
            )));
        }
        self.changed(&caller.tenant);
        Ok(())
    }

    /// `PUT|DELETE /v1/principals/{principal}/boundary`.
    pub async fn set_boundary(
        &self,
        caller: &Caller,
        principal: &str,
        policy: Option<&str>,
    ) -> Result<(), PolicyError> {
        let action = if policy.is_some() {
            "policy:PutPermissionsBoundary"
        } else {
            "policy:DeletePermissionsBoundary"
        };
        self.guard(caller, action, &format!("principal/{principal}"))
            .await?;
        principal_id(principal)?;
        let t = caller.tenant.as_str();
        let now = self.clock.now();
        match policy {
            Some(p) => {
                self.policy_exists(&caller.tenant, p).await?;
                self.store.set_boundary(t, principal, p, now).await?;
            }
            None => {
                if !self.store.delete_boundary(t, principal, now).await? {
                    return Err(PolicyError::NotFound(format!(
                        "{principal:?} has no permissions boundary"
                    )));
                }
            }
        }
        self.changed(&caller.tenant);
        Ok(())
    }

    /// `PUT /v1/principals/{principal}/tags`.
    pub async fn set_tags(
        &self,
        caller: &Caller,
        principal: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<(), PolicyError> {
        self.guard(
            caller,
            "policy:TagPrincipal",
            &format!("principal/{principal}"),
        )
        .await?;
        principal_id(principal)?;
        if tags.len() > 50 {
            return Err(PolicyError::BadRequest(
                "at most 50 tags per principal".into(),
            ));
        }
        for (k, v) in &tags {
            let ok = !k.is_empty()
                && k.len() <= 128
                && v.len() <= 256
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-=._:/@".contains(c));
            if !ok {
                return Err(PolicyError::BadRequest(format!("tag {k:?}: keys are 1-128 of letters, digits and +-=._:/@; values at most 256 characters")));
            }
        }
        let tags: Vec<(String, String)> = tags.into_iter().collect();
        self.store
            .set_tags(caller.tenant.as_str(), principal, &tags, self.clock.now())
            .await?;
        self.changed(&caller.tenant);
        Ok(())
    }

    /// `PUT /v1/resource-policies/{crn}` and `PUT /v1/guardrails/{name}`.
    pub async fn put_keyed(
        &self,
        caller: &Caller,
        table: Keyed,
        key: &str,
        text: &str,
    ) -> Result<Vec<IssueView>, PolicyError> {
        self.guard_keyed(caller, table, "Put", key).await?;
        self.check_key(caller, table, key)?;
        let kind = match table {
            Keyed::ResourcePolicy => PolicyKind::Resource,
            Keyed::Guardrail => PolicyKind::Identity,
        };
        let (doc, warnings) = self.parse_doc(text, kind)?;
        self.store
            .put_keyed(table, caller.tenant.as_str(), key, &doc, self.clock.now())
            .await?;
        self.changed(&caller.tenant);
        Ok(warnings.iter().map(issue_view).collect())
    }

    /// Guards `policy:<Verb>ResourcePolicy` on `resource-policy/<crn>`, or
    /// `policy:<Verb>Guardrail` on `guardrail/<name>`.
    async fn guard_keyed(
        &self,
        caller: &Caller,
        table: Keyed,
        verb: &str,
        key: &str,
    ) -> Result<(), PolicyError> {
        let (noun, prefix) = match table {
            Keyed::ResourcePolicy => ("ResourcePolicy", "resource-policy"),
            Keyed::Guardrail => ("Guardrail", "guardrail"),
        };
        self.guard(
            caller,
            &format!("policy:{verb}{noun}"),
            &format!("{prefix}/{key}"),
        )
        .await
    }

    fn check_key(&self, caller: &Caller, table: Keyed, key: &str) -> Result<(), PolicyError> {
        match table {
            Keyed::Guardrail => check_name("guardrail name", key),
            Keyed::ResourcePolicy => {
                let tenant_ok = Crn::parse(key).is_ok_and(|c| c.tenant() == caller.tenant.as_str());
                if tenant_ok && key.len() <= 1024 {
                    Ok(())
                } else {
                    Err(PolicyError::BadRequest(format!(
                        "resource {key:?} must be a CRN (pattern) of this tenant: crn:capstan:<service>:{}:<path>",
                        caller.tenant
                    )))
                }
            }
        }
    }

    /// `GET /v1/resource-policies/{crn}` and `GET /v1/guardrails/{name}`.
    pub async fn get_keyed(
        &self,
        caller: &Caller,
        table: Keyed,
        key: &str,
    ) -> Result<Value, PolicyError> {
        self.guard_keyed(caller, table, "Get", key).await?;
        let (doc, _) = self
            .store
            .get_keyed(table, caller.tenant.as_str(), key)
            .await?
            .ok_or_else(|| PolicyError::NotFound(format!("{key:?} not found")))?;
        serde_json::from_str(&doc).map_err(|e| PolicyError::BadRequest(e.to_string()))
    }

    /// `DELETE /v1/resource-policies/{crn}` and `DELETE /v1/guardrails/{name}`.
    pub async fn delete_keyed(
        &self,
        caller: &Caller,
        table: Keyed,
        key: &str,
    ) -> Result<(), PolicyError> {
        self.guard_keyed(caller, table, "Delete", key).await?;
        if !self
            .store
            .delete_keyed(table, caller.tenant.as_str(), key, self.clock.now())
            .await?
        {
            return Err(PolicyError::NotFound(format!("{key:?} not found")));
        }
        self.changed(&caller.tenant);
        Ok(())
    }

    async fn subject_of(
        &self,
        verifier: &dyn TokenVerifier,
        caller: &Caller,
        req: &AuthorizeRequest,
    ) -> Result<Subject, PolicyError> {
        match (&req.principal, &req.token) {
            (Some(p), None) => Ok(Subject {
                principal: principal_id(p)?.to_string(),
                ..Default::default()
            }),
            (None, Some(t)) => {
                let v = verifier.verify_access_token(t).await.map_err(|e| match e {
                    VerifyError::Invalid(e) => {
                        PolicyError::BadRequest(format!("token is not valid: {e}"))
                    }
                    VerifyError::Unavailable => PolicyError::Guard(GuardError::Unavailable),
                    VerifyError::Internal => PolicyError::Guard(GuardError::Internal),
                })?;
                if v.tenant != caller.tenant {
                    return Err(PolicyError::BadRequest(
                        "the token belongs to another tenant".into(),
                    ));
                }
                Ok(Subject {
                    principal: v.principal.to_string(),
                    client_id: Some(v.client_id),
                    scopes: Some(v.scopes),
                    source_ip: None,
                })
            }
            _ => Err(PolicyError::BadRequest(
                "give exactly one of principal and token".into(),
            )),
        }
    }

    /// The subject and context of an authorization request, checked.
    pub(crate) async fn prepare(
        &self,
        verifier: &dyn TokenVerifier,
        caller: &Caller,
        req: &AuthorizeRequest,
    ) -> Result<(Subject, Context), PolicyError> {
        let subject = self.subject_of(verifier, caller, req).await?;
        if !req.action.contains(':') {
            return Err(PolicyError::BadRequest(format!(
                "action {:?} must be <service>:<Action>",
                req.action
            )));
        }
        let mut ctx = Context::new();
        for (k, v) in req.context.iter().flatten() {
            if k.to_ascii_lowercase().starts_with("capstan:") {
                return Err(PolicyError::BadRequest(format!(
                    "context key {k:?}: capstan:* keys are set by Capstan"
                )));
            }
            match v {
                ContextValue::One(s) => ctx.set(k, [s.as_str()]),
                ContextValue::Many(list) => ctx.set(k, list.iter().map(String::as_str)),
            }
        }
        Ok((subject, ctx))
    }

    async fn authorize_one(
        &self,
        verifier: &dyn TokenVerifier,
        caller: &Caller,
        req: &AuthorizeRequest,
    ) -> Result<AuthorizeResponse, PolicyError> {
        let (subject, ctx) = self.prepare(verifier, caller, req).await?;
        let (o, rev) = self
            .decide(
                &caller.tenant,
                &subject,
                &req.action,
                &req.resource,
                Some(&ctx),
            )
            .await?;
        Ok(outcome_view(o, rev))
    }

    pub(crate) async fn guard_simulate(&self, caller: &Caller) -> Result<(), PolicyError> {
        self.guard(caller, "policy:Simulate", "simulation").await
    }

    /// `POST /v1/authorize`.
    pub async fn authorize_api(
        &self,
        verifier: &dyn TokenVerifier,
        caller: &Caller,
        req: AuthorizeRequest,
    ) -> Result<AuthorizeResponse, PolicyError> {
        self.guard(caller, "policy:Authorize", "authorizer").await?;
        self.authorize_one(verifier, caller, &req).await
    }

    /// `POST /v1/authorize:batch`.
    pub async fn authorize_batch(
        &self,
        verifier: &dyn TokenVerifier,
        caller: &Caller,
        req: BatchRequest,
    ) -> Result<BatchResponse, PolicyError> {
        self.guard(caller, "policy:Authorize", "authorizer").await?;
        if req.requests.is_empty() || req.requests.len() > MAX_BATCH {
            return Err(PolicyError::BadRequest(format!(
                "requests: 1 to {MAX_BATCH} entries"
            )));
        }
        let mut decisions = Vec::with_capacity(req.requests.len());
        for (i, r) in req.requests.iter().enumerate() {
            let d = self
                .authorize_one(verifier, caller, r)
                .await
                .map_err(|e| match e {
                    PolicyError::BadRequest(m) => {
                        PolicyError::BadRequest(format!("requests[{i}]: {m}"))
                    }
                    other => other,
                })?;
            decisions.push(d);
        }
        Ok(BatchResponse { decisions })
    }

    /// `GET /v1/decisions`.
    pub async fn list_decisions(
        &self,
        caller: &Caller,
        principal: Option<&str>,
        decision: Option<&str>,
        since: Option<i64>,
        limit: Option<i64>,
    ) -> Result<Vec<DecisionView>, PolicyError> {
        self.guard(caller, "policy:ListDecisions", "decision/*")
            .await?;
        if let Some(d) = decision {
            if d != "Allow" && d != "Deny" {
                return Err(PolicyError::BadRequest(
                    "decision must be Allow or Deny".into(),
                ));
            }
        }
        let limit = limit.unwrap_or(100);
        if !(1..=MAX_DECISIONS).contains(&limit) {
            return Err(PolicyError::BadRequest(format!(
                "limit must be between 1 and {MAX_DECISIONS}"
            )));
        }
        self.flush_decisions().await;
        let rows = self
            .store
            .list_decisions(caller.tenant.as_str(), principal, decision, since, limit)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let ctx: Value = serde_json::from_str(&r.context).unwrap_or(Value::Null);
                DecisionView {
                    principal: r.principal,
                    action: r.action,
                    resource: r.resource,
                    decision: r.decision,
                    reason: r.reason,
                    policy_revision: r.policy_revision,
                    matched: ctx.get("matched").cloned().unwrap_or(Value::Array(vec![])),
                    at: r.at,
                }
            })
            .collect())
    }
}
