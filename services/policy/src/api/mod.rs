//! The operations behind the `/v1` policy API. Each names an action and a CRN and is guarded by
//! the policy engine itself.

use std::collections::BTreeMap;

use capstan_core::authz::{guard, Caller, GuardError, TokenVerifier, VerifyError};
use capstan_core::crn::Crn;
use capstan_core::ids::{PrincipalId, TenantId};
use capstan_iam::{Context, Decision, Issue, Outcome, Policy, PolicyKind};
pub use capstan_proto::policy::{
    AuthorizeRequest, AuthorizeResponse, BatchRequest, BatchResponse, BoundaryRequest,
    ContextValue, DecisionView, GroupView, GuardrailView, IssueView, MatchedView, PolicySummary,
    PolicyVersionView, PolicyView, PutPolicyResult, ResourcePolicyView, TagsRequest, Validation,
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

/// The guard context key naming the managed policy an act attaches, detaches, writes or
/// deletes (by name), and its CRN.
pub const KEY_POLICY_NAME: &str = "policy:PolicyName";
/// The guard context key with the policy's CRN (`crn:capstan:policy:<tenant>:policy/<name>`).
pub const KEY_POLICY_CRN: &str = "policy:PolicyCrn";
/// The guard context key naming the permissions boundary an act sets, removes, or creates a
/// principal with.
pub const KEY_PERMISSIONS_BOUNDARY: &str = "policy:PermissionsBoundary";

impl PolicyService {
    pub(super) async fn guard(
        &self,
        caller: &Caller,
        action: &str,
        path: &str,
    ) -> Result<(), PolicyError> {
        self.guard_with(caller, action, path, &[]).await
    }

    /// [`guard`] with condition keys that say what the act touches besides its resource, so a
    /// policy can scope it (IAM's `iam:PolicyARN`, `iam:PermissionsBoundary`).
    pub(super) async fn guard_with(
        &self,
        caller: &Caller,
        action: &str,
        path: &str,
        context: capstan_core::authz::GuardContext<'_>,
    ) -> Result<(), PolicyError> {
        let resource = Crn::new("policy", &caller.tenant, path);
        Ok(guard(self, caller, action, &resource, context).await?)
    }

    pub(super) fn parse_doc(
        &self,
        text: &str,
        kind: PolicyKind,
    ) -> Result<(String, Vec<Issue>), PolicyError> {
        let parsed =
            Policy::parse(text, kind, self.limits()).map_err(PolicyError::InvalidDocument)?;
        // Store the canonical JSON text.
        let value: Value =
            serde_json::from_str(text).map_err(|e| PolicyError::BadRequest(e.to_string()))?;
        let mut warnings = parsed.warnings;
        warnings.extend(condition_key_warnings(&value));
        Ok((value.to_string(), warnings))
    }
}

/// The condition keys Capstan fills in itself (case-insensitive; `capstan:PrincipalTag/<key>`
/// for any tag).
const CAPSTAN_KEYS: [&str; 7] = [
    "capstan:principal",
    "capstan:tenant",
    "capstan:currenttime",
    "capstan:epochtime",
    "capstan:clientid",
    "capstan:tokenscopes",
    "capstan:sourceip",
];

/// Warnings for condition keys that nothing will ever fill: a `capstan:` key Capstan does not
/// set (callers cannot supply `capstan:` keys), or a key without a `<service>:` prefix. Such a
/// condition never matches, which is rarely what its author meant (a typo such as
/// `capstan:PrincipleTag/team` silently disables an Allow, or a Deny).
pub(crate) fn condition_key_warnings(doc: &Value) -> Vec<Issue> {
    let statements: Vec<(String, &Value)> = match doc.get("Statement") {
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("$.Statement[{i}]"), s))
            .collect(),
        Some(one) => vec![("$.Statement".to_owned(), one)],
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for (path, st) in statements {
        let Some(Value::Object(ops)) = st.get("Condition") else {
            continue;
        };
        for (op, keys) in ops {
            let Value::Object(keys) = keys else { continue };
            for key in keys.keys() {
                let lower = key.to_ascii_lowercase();
                let filled = CAPSTAN_KEYS.contains(&lower.as_str())
                    || lower.starts_with("capstan:principaltag/");
                let message = if lower.starts_with("capstan:") && !filled {
                    "Capstan never sets this key, and callers cannot: the condition never matches"
                } else if !lower.contains(':') {
                    "this key has no service prefix and nothing sets it: the condition never \
                     matches"
                } else {
                    continue;
                };
                out.push(Issue {
                    path: format!("{path}.Condition.{op}.{key}"),
                    message: message.to_owned(),
                });
            }
        }
    }
    out
}

mod authorize;
pub use authorize::DecisionQuery;
mod grants;
mod policies;
