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
    pub(super) async fn guard(
        &self,
        caller: &Caller,
        action: &str,
        path: &str,
    ) -> Result<(), PolicyError> {
        let resource = Crn::new("policy", &caller.tenant, path);
        Ok(guard(self, caller, action, &resource, &[]).await?)
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
        Ok((value.to_string(), parsed.warnings))
    }
}

mod authorize;
mod grants;
mod policies;
