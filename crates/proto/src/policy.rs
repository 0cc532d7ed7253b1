//! Wire types of the policy service: policies, validation, authorization, decisions and
//! simulation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A problem in a document, at a JSON path.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IssueView {
    /// JSON path, e.g. `$.Statement[0].Effect`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Answer of `PUT /v1/policies/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PutPolicyResult {
    /// Policy name.
    pub name: String,
    /// The new version, now the default.
    pub version: i64,
    /// Warnings about the document.
    pub warnings: Vec<IssueView>,
}

/// A managed or built-in policy.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyView {
    /// Name.
    pub name: String,
    /// This version.
    pub version: i64,
    /// Whether this is the default version.
    pub default: bool,
    /// Built-in (read-only) policy.
    pub builtin: bool,
    /// The document.
    #[schema(value_type = Object)]
    pub document: Value,
}

/// A policy in a listing.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicySummary {
    /// Name.
    pub name: String,
    /// Default version.
    pub default_version: i64,
    /// Stored versions (at most 5).
    pub versions: Vec<i64>,
    /// Built-in (read-only) policy.
    pub builtin: bool,
}

/// Answer of `POST /v1/policies:validate`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Validation {
    /// No errors.
    pub valid: bool,
    /// Errors with JSON paths.
    pub errors: Vec<IssueView>,
    /// Warnings with JSON paths.
    pub warnings: Vec<IssueView>,
}

/// A context value: one string or a list.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ContextValue {
    /// Single value.
    One(String),
    /// Several values.
    Many(Vec<String>),
}

/// `POST /v1/authorize` body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    /// The principal asking (in the caller's tenant); or give `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// An access token: principal, tenant, scopes and client id are taken from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `<service>:<Action>`.
    pub action: String,
    /// The resource's CRN.
    pub resource: String,
    /// Extra condition keys.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub context: Option<BTreeMap<String, ContextValue>>,
}

/// A statement that produced a decision.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MatchedView {
    /// Policy name (a resource policy's CRN pattern, a guardrail's name).
    pub policy: String,
    /// Policy version.
    pub version: u32,
    /// Statement Sid (or `#<index>`).
    pub sid: String,
}

/// A decision.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuthorizeResponse {
    /// `Allow` or `Deny`.
    pub decision: String,
    /// `allowed`, `explicit_deny`, `implicit_deny`, `boundary` or `guardrail`.
    pub reason: String,
    /// The statements that decided.
    pub matched: Vec<MatchedView>,
    /// The tenant's policy revision the decision used.
    pub policy_revision: i64,
}

/// `POST /v1/authorize:batch` body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Up to 100 requests.
    pub requests: Vec<AuthorizeRequest>,
}

/// `POST /v1/authorize:batch` answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchResponse {
    /// Decisions in request order.
    pub decisions: Vec<AuthorizeResponse>,
}

/// A recorded decision.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionView {
    /// Its position in the log (`?after=` lists those that follow it).
    pub seq: i64,
    /// Principal.
    pub principal: String,
    /// Action.
    pub action: String,
    /// Resource.
    pub resource: String,
    /// `Allow` or `Deny`.
    pub decision: String,
    /// Reason code.
    pub reason: String,
    /// Policy revision.
    pub policy_revision: i64,
    /// Matched statements.
    #[schema(value_type = Vec<Object>)]
    pub matched: Value,
    /// When (Unix seconds).
    pub at: i64,
    /// The W3C trace id of the request the decision was made for, when it carried a valid
    /// `traceparent` (`?trace_id=` lists a trace's decisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// `PUT /v1/principals/{p}/boundary` body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BoundaryRequest {
    /// The managed or built-in policy that bounds the principal.
    pub policy: String,
}

/// `PUT /v1/principals/{p}/tags` body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagsRequest {
    /// The principal's tags (replacing the previous ones).
    pub tags: BTreeMap<String, String>,
}

/// One proposed change.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// A new default version of a managed policy.
    PutPolicy {
        /// Policy name.
        name: String,
        /// The document.
        #[schema(value_type = Object)]
        document: serde_json::Value,
    },
    /// Deleting a managed policy.
    DeletePolicy {
        /// Policy name.
        name: String,
    },
    /// Attaching a policy to a principal or a group (give one).
    Attach {
        /// Policy name.
        policy: String,
        /// Principal id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        principal: Option<String>,
        /// Group name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
    },
    /// Detaching a policy from a principal or a group (give one).
    Detach {
        /// Policy name.
        policy: String,
        /// Principal id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        principal: Option<String>,
        /// Group name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
    },
}

/// `POST /v1/simulate` body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateRequest {
    /// The proposed changes, applied in order.
    pub changes: Vec<Change>,
    /// The requests to decide; or `replay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Vec<AuthorizeRequest>>,
    /// Re-decide the last N recorded decisions (1–1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<i64>,
}

/// One request decided before and after the changes.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SimulatedDecision {
    /// Principal.
    pub principal: String,
    /// Action.
    pub action: String,
    /// Resource.
    pub resource: String,
    /// Decision with today's policies.
    pub before: AuthorizeResponse,
    /// Decision with the changes applied.
    pub after: AuthorizeResponse,
    /// Whether the decision (Allow/Deny) differs.
    pub changed: bool,
}

/// `POST /v1/simulate` answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SimulateResponse {
    /// How many decisions change.
    pub changed: usize,
    /// Every decision, the changed ones first.
    pub results: Vec<SimulatedDecision>,
}

/// A stored version of a managed policy, in `GET /v1/policies/{name}/versions`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyVersionView {
    /// Version number.
    pub version: i64,
    /// Whether it is the default version.
    pub default: bool,
    /// When it was written (Unix seconds).
    pub created_at: i64,
}

/// A group, in `GET /v1/groups`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupView {
    /// Group name.
    pub name: String,
    /// Members: principal ids and `group:<name>`.
    pub members: Vec<String>,
    /// Policies attached to the group.
    pub policies: Vec<String>,
}

/// A resource policy, in `GET /v1/resource-policies`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResourcePolicyView {
    /// The CRN pattern it is attached to.
    pub resource: String,
    /// The document.
    #[schema(value_type = Object)]
    pub document: Value,
    /// When it was last written (Unix seconds).
    pub updated_at: i64,
}

/// A guardrail, in `GET /v1/guardrails`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GuardrailView {
    /// Guardrail name.
    pub name: String,
    /// The document.
    #[schema(value_type = Object)]
    pub document: Value,
    /// When it was last written (Unix seconds).
    pub updated_at: i64,
}
