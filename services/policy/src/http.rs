//! HTTP adapters of the policy service: thin handlers over [`PolicyService`]. Statuses and
//! bodies are decided by the platform kit; [`PolicyError`] only converts into its `ApiError`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{post, put};
use axum::Json;
use capstan_core::authz::{Caller, TokenVerifier};
use capstan_http::{
    Api, ApiError, ApiResult, Bearer, BearerScheme, BoxError, JsonBody, JsonText, Metric, Path,
    Query, RouteList, Routes, Service,
};
use capstan_iam::PolicyKind;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::api::{
    AuthorizeRequest, AuthorizeResponse, BatchRequest, BatchResponse, BoundaryRequest,
    DecisionQuery, DecisionView, GroupView, GuardrailView, PolicySummary, PolicyVersionView,
    PolicyView, PutPolicyResult, ResourcePolicyView, TagsRequest, Validation,
};
use crate::error::PolicyError;
use crate::service::{TOPIC_POLICY, TOPIC_POLICY_DELETED};
use crate::simulate::{SimulateRequest, SimulateResponse};
use crate::store::Keyed;
use crate::PolicyService;

type Svc = State<Api<PolicyService>>;

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> ApiError {
        match e {
            PolicyError::BadRequest(m) => ApiError::BadRequest(m),
            PolicyError::InvalidDocument(issues) => {
                let errors: Vec<_> = issues
                    .iter()
                    .map(|i| json!({"path": i.path, "message": i.message}))
                    .collect();
                let first = issues
                    .first()
                    .map(|i| format!("{}: {}", i.path, i.message))
                    .unwrap_or_default();
                ApiError::Invalid {
                    code: "invalid_policy",
                    message: format!("invalid policy document: {first}"),
                    errors: Value::Array(errors),
                }
            }
            PolicyError::NotFound(m) => ApiError::NotFound(m),
            PolicyError::Conflict(m) => ApiError::Conflict(m),
            PolicyError::Guard(g) => g.into(),
            PolicyError::Db(e) => e.into(),
        }
    }
}

fn verifier(svc: &Api<PolicyService>) -> &dyn TokenVerifier {
    svc.verifier.0.as_ref()
}

fn no_content(r: Result<(), PolicyError>) -> ApiResult<StatusCode> {
    r?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create a new version of a managed policy (the body is the document); it becomes the default.
#[utoipa::path(put, path = "/v1/policies/{name}", tag = "policy", params(("name" = String, Path)),
    request_body(content = Object, description = "IAM policy document"),
    responses((status = 200, body = PutPolicyResult), (status = 400), (status = 403), (status = 409)), security(("bearer" = [])))]
async fn put_policy(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(name): Path<String>,
    JsonText(doc): JsonText,
) -> ApiResult<Json<PutPolicyResult>> {
    Ok(Json(svc.put_policy(&c, &name, &doc).await?))
}

/// List managed and built-in policies.
#[utoipa::path(get, path = "/v1/policies", tag = "policy",
    responses((status = 200, body = Vec<PolicySummary>), (status = 403)), security(("bearer" = [])))]
async fn list_policies(State(svc): Svc, Bearer(c): Bearer) -> ApiResult<Json<Vec<PolicySummary>>> {
    Ok(Json(svc.list_policies(&c).await?))
}

#[derive(Deserialize)]
struct VersionQuery {
    version: Option<i64>,
}

/// Read a policy (default version, or `?version=N`).
#[utoipa::path(get, path = "/v1/policies/{name}", tag = "policy",
    params(("name" = String, Path), ("version" = Option<i64>, Query)),
    responses((status = 200, body = PolicyView), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn get_policy(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> ApiResult<Json<PolicyView>> {
    Ok(Json(svc.get_policy(&c, &name, q.version).await?))
}

/// Delete a managed policy and all its versions (refused while attached).
#[utoipa::path(delete, path = "/v1/policies/{name}", tag = "policy", params(("name" = String, Path)),
    responses((status = 204), (status = 403), (status = 404), (status = 409)), security(("bearer" = [])))]
async fn delete_policy(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    no_content(svc.delete_policy(&c, &name).await)
}

#[derive(Deserialize)]
struct KindQuery {
    kind: Option<String>,
}

/// Validate a document without saving it: errors with JSON paths, and warnings.
#[utoipa::path(post, path = "/v1/policies:validate", tag = "policy",
    params(("kind" = Option<String>, Query, description = "identity (default) or resource")),
    request_body(content = Object, description = "IAM policy document"),
    responses((status = 200, body = Validation), (status = 403)), security(("bearer" = [])))]
async fn validate(
    State(svc): Svc,
    Bearer(c): Bearer,
    Query(q): Query<KindQuery>,
    JsonText(doc): JsonText,
) -> ApiResult<Json<Validation>> {
    let kind = match q.kind.as_deref() {
        None | Some("identity") => PolicyKind::Identity,
        Some("resource") => PolicyKind::Resource,
        Some(k) => {
            return Err(ApiError::BadRequest(format!(
                "kind {k:?} must be identity or resource"
            )))
        }
    };
    Ok(Json(svc.validate(&c, &doc, kind).await?))
}

/// List the stored versions of a managed policy (oldest first).
#[utoipa::path(get, path = "/v1/policies/{name}/versions", tag = "policy", params(("name" = String, Path)),
    responses((status = 200, body = Vec<PolicyVersionView>), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn list_policy_versions(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<PolicyVersionView>>> {
    Ok(Json(svc.list_policy_versions(&c, &name).await?))
}

/// List groups with their members and attached policies.
#[utoipa::path(get, path = "/v1/groups", tag = "policy",
    responses((status = 200, body = Vec<GroupView>), (status = 403)), security(("bearer" = [])))]
async fn list_groups(State(svc): Svc, Bearer(c): Bearer) -> ApiResult<Json<Vec<GroupView>>> {
    Ok(Json(svc.list_groups(&c).await?))
}

/// List resource policies.
#[utoipa::path(get, path = "/v1/resource-policies", tag = "policy",
    responses((status = 200, body = Vec<ResourcePolicyView>), (status = 403)), security(("bearer" = [])))]
async fn list_resource_policies(
    State(svc): Svc,
    Bearer(c): Bearer,
) -> ApiResult<Json<Vec<ResourcePolicyView>>> {
    let rows = svc.list_keyed(&c, Keyed::ResourcePolicy).await?;
    Ok(Json(
        rows.into_iter()
            .map(|(resource, document, updated_at)| ResourcePolicyView {
                resource,
                document,
                updated_at,
            })
            .collect(),
    ))
}

/// List guardrails.
#[utoipa::path(get, path = "/v1/guardrails", tag = "policy",
    responses((status = 200, body = Vec<GuardrailView>), (status = 403)), security(("bearer" = [])))]
async fn list_guardrails(
    State(svc): Svc,
    Bearer(c): Bearer,
) -> ApiResult<Json<Vec<GuardrailView>>> {
    let rows = svc.list_keyed(&c, Keyed::Guardrail).await?;
    Ok(Json(
        rows.into_iter()
            .map(|(name, document, updated_at)| GuardrailView {
                name,
                document,
                updated_at,
            })
            .collect(),
    ))
}

/// Create a group (idempotent).
#[utoipa::path(put, path = "/v1/groups/{group}", tag = "policy", params(("group" = String, Path)),
    responses((status = 204), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn put_group(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(g): Path<String>,
) -> ApiResult<StatusCode> {
    no_content(svc.put_group(&c, &g).await.map(|_| ()))
}

/// Delete a group, its memberships and attachments.
#[utoipa::path(delete, path = "/v1/groups/{group}", tag = "policy", params(("group" = String, Path)),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn delete_group(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(g): Path<String>,
) -> ApiResult<StatusCode> {
    no_content(svc.delete_group(&c, &g).await)
}

/// Add a member (a principal id, or `group:<name>`).
#[utoipa::path(put, path = "/v1/groups/{group}/members/{principal}", tag = "policy",
    params(("group" = String, Path), ("principal" = String, Path)),
    responses((status = 204), (status = 400), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn add_member(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path((g, m)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    no_content(svc.set_member(&c, &g, &m, true).await)
}

/// Remove a member.
#[utoipa::path(delete, path = "/v1/groups/{group}/members/{principal}", tag = "policy",
    params(("group" = String, Path), ("principal" = String, Path)),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn remove_member(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path((g, m)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    no_content(svc.set_member(&c, &g, &m, false).await)
}

/// Attach a policy to a principal.
#[utoipa::path(put, path = "/v1/principals/{principal}/policies/{name}", tag = "policy",
    params(("principal" = String, Path), ("name" = String, Path)),
    responses((status = 204), (status = 400), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn attach_principal(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path((p, n)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    no_content(svc.set_attachment(&c, false, &p, &n, true).await)
}

/// Detach a policy from a principal.
#[utoipa::path(delete, path = "/v1/principals/{principal}/policies/{name}", tag = "policy",
    params(("principal" = String, Path), ("name" = String, Path)),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn detach_principal(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path((p, n)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    no_content(svc.set_attachment(&c, false, &p, &n, false).await)
}

/// Attach a policy to a group.
#[utoipa::path(put, path = "/v1/groups/{group}/policies/{name}", tag = "policy",
    params(("group" = String, Path), ("name" = String, Path)),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn attach_group(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path((g, n)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    no_content(svc.set_attachment(&c, true, &g, &n, true).await)
}

/// Detach a policy from a group.
#[utoipa::path(delete, path = "/v1/groups/{group}/policies/{name}", tag = "policy",
    params(("group" = String, Path), ("name" = String, Path)),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn detach_group(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path((g, n)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    no_content(svc.set_attachment(&c, true, &g, &n, false).await)
}

/// Set a principal's permissions boundary.
#[utoipa::path(put, path = "/v1/principals/{principal}/boundary", tag = "policy", params(("principal" = String, Path)),
    request_body = BoundaryRequest, responses((status = 204), (status = 400), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn put_boundary(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(p): Path<String>,
    JsonBody(b): JsonBody<BoundaryRequest>,
) -> ApiResult<StatusCode> {
    no_content(svc.set_boundary(&c, &p, Some(&b.policy)).await)
}

/// Remove a principal's permissions boundary.
#[utoipa::path(delete, path = "/v1/principals/{principal}/boundary", tag = "policy", params(("principal" = String, Path)),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn delete_boundary(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(p): Path<String>,
) -> ApiResult<StatusCode> {
    no_content(svc.set_boundary(&c, &p, None).await)
}

/// Replace a principal's tags (`capstan:PrincipalTag/<key>` in conditions).
#[utoipa::path(put, path = "/v1/principals/{principal}/tags", tag = "policy", params(("principal" = String, Path)),
    request_body = TagsRequest, responses((status = 204), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn put_tags(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(p): Path<String>,
    JsonBody(t): JsonBody<TagsRequest>,
) -> ApiResult<StatusCode> {
    no_content(svc.set_tags(&c, &p, t.tags).await)
}

async fn put_keyed(
    svc: &PolicyService,
    c: &Caller,
    table: Keyed,
    key: &str,
    doc: &str,
) -> ApiResult<Json<Value>> {
    let warnings = svc.put_keyed(c, table, key, doc).await?;
    Ok(Json(json!({"key": key, "warnings": warnings})))
}

/// Set the resource policy of a CRN or CRN pattern (the body is the document).
#[utoipa::path(put, path = "/v1/resource-policies/{crn}", tag = "policy", params(("crn" = String, Path)),
    request_body(content = Object), responses((status = 200), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn put_resource_policy(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(k): Path<String>,
    JsonText(doc): JsonText,
) -> ApiResult<Json<Value>> {
    put_keyed(&svc, &c, Keyed::ResourcePolicy, &k, &doc).await
}

/// Read a resource policy.
#[utoipa::path(get, path = "/v1/resource-policies/{crn}", tag = "policy", params(("crn" = String, Path)),
    responses((status = 200), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn get_resource_policy(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(k): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(svc.get_keyed(&c, Keyed::ResourcePolicy, &k).await?))
}

/// Delete a resource policy.
#[utoipa::path(delete, path = "/v1/resource-policies/{crn}", tag = "policy", params(("crn" = String, Path)),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn delete_resource_policy(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(k): Path<String>,
) -> ApiResult<StatusCode> {
    no_content(svc.delete_keyed(&c, Keyed::ResourcePolicy, &k).await)
}

/// Set a tenant guardrail (the analog of an SCP; the body is the document).
#[utoipa::path(put, path = "/v1/guardrails/{name}", tag = "policy", params(("name" = String, Path)),
    request_body(content = Object), responses((status = 200), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn put_guardrail(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(k): Path<String>,
    JsonText(doc): JsonText,
) -> ApiResult<Json<Value>> {
    put_keyed(&svc, &c, Keyed::Guardrail, &k, &doc).await
}

/// Read a guardrail.
#[utoipa::path(get, path = "/v1/guardrails/{name}", tag = "policy", params(("name" = String, Path)),
    responses((status = 200), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn get_guardrail(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(k): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(svc.get_keyed(&c, Keyed::Guardrail, &k).await?))
}

/// Delete a guardrail.
#[utoipa::path(delete, path = "/v1/guardrails/{name}", tag = "policy", params(("name" = String, Path)),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn delete_guardrail(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(k): Path<String>,
) -> ApiResult<StatusCode> {
    no_content(svc.delete_keyed(&c, Keyed::Guardrail, &k).await)
}

/// May a principal (or the bearer of a token) do an action on a resource?
#[utoipa::path(post, path = "/v1/authorize", tag = "policy", request_body = AuthorizeRequest,
    responses((status = 200, body = AuthorizeResponse), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn authorize(
    State(svc): Svc,
    Bearer(c): Bearer,
    JsonBody(req): JsonBody<AuthorizeRequest>,
) -> ApiResult<Json<AuthorizeResponse>> {
    Ok(Json(svc.authorize_api(verifier(&svc), &c, req).await?))
}

/// Several decisions in one call, in order.
#[utoipa::path(post, path = "/v1/authorize:batch", tag = "policy", request_body = BatchRequest,
    responses((status = 200, body = BatchResponse), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn authorize_batch(
    State(svc): Svc,
    Bearer(c): Bearer,
    JsonBody(req): JsonBody<BatchRequest>,
) -> ApiResult<Json<BatchResponse>> {
    Ok(Json(svc.authorize_batch(verifier(&svc), &c, req).await?))
}

/// Recent decisions: every `/v1/authorize` decision and every guarded API call, with the trace id
/// of the request that asked when it carried a valid `traceparent`.
#[utoipa::path(get, path = "/v1/decisions", tag = "policy",
    params(("principal" = Option<String>, Query), ("decision" = Option<String>, Query), ("since" = Option<i64>, Query), ("after" = Option<i64>, Query, description = "only decisions after this `seq`, oldest first"),
        ("trace_id" = Option<String>, Query, description = "only decisions made for requests of this W3C trace (the trace id of their `traceparent`: 32 hex digits)"), ("limit" = Option<i64>, Query)),
    responses((status = 200, body = Vec<DecisionView>), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn decisions(
    State(svc): Svc,
    Bearer(c): Bearer,
    Query(q): Query<DecisionQuery>,
) -> ApiResult<Json<Vec<DecisionView>>> {
    Ok(Json(svc.list_decisions(&c, &q).await?))
}

/// Decide requests before and after proposed policy changes, without applying them.
#[utoipa::path(post, path = "/v1/simulate", tag = "policy", request_body = SimulateRequest,
    responses((status = 200, body = SimulateResponse), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn simulate(
    State(svc): Svc,
    Bearer(c): Bearer,
    JsonBody(req): JsonBody<SimulateRequest>,
) -> ApiResult<Json<SimulateResponse>> {
    Ok(Json(svc.simulate(verifier(&svc), &c, req).await?))
}

/// The policy service's routes; bearer tokens are verified by `verifier` (the issuer).
pub fn routes(svc: Arc<PolicyService>, verifier: Arc<dyn TokenVerifier>) -> Routes {
    RouteList::new()
        .route("/v1/policies", axum::routing::get(list_policies))
        .route("/v1/policies:validate", post(validate))
        .route(
            "/v1/policies/{name}",
            put(put_policy).get(get_policy).delete(delete_policy),
        )
        .route(
            "/v1/policies/{name}/versions",
            axum::routing::get(list_policy_versions),
        )
        .route("/v1/groups", axum::routing::get(list_groups))
        .route(
            "/v1/resource-policies",
            axum::routing::get(list_resource_policies),
        )
        .route("/v1/guardrails", axum::routing::get(list_guardrails))
        .route("/v1/groups/{group}", put(put_group).delete(delete_group))
        .route(
            "/v1/groups/{group}/members/{principal}",
            put(add_member).delete(remove_member),
        )
        .route(
            "/v1/groups/{group}/policies/{name}",
            put(attach_group).delete(detach_group),
        )
        .route(
            "/v1/principals/{principal}/policies/{name}",
            put(attach_principal).delete(detach_principal),
        )
        .route(
            "/v1/principals/{principal}/boundary",
            put(put_boundary).delete(delete_boundary),
        )
        .route("/v1/principals/{principal}/tags", put(put_tags))
        .route(
            "/v1/resource-policies/{*crn}",
            put(put_resource_policy)
                .get(get_resource_policy)
                .delete(delete_resource_policy),
        )
        .route(
            "/v1/guardrails/{name}",
            put(put_guardrail)
                .get(get_guardrail)
                .delete(delete_guardrail),
        )
        .route("/v1/authorize", post(authorize))
        .route("/v1/authorize:batch", post(authorize_batch))
        .route("/v1/decisions", axum::routing::get(decisions))
        .route("/v1/simulate", post(simulate))
        .with_state(Api::new(svc, verifier))
}

/// The policy engine as a platform service: its API, its feed topics, its decision-log writer
/// (flushed at stop), decision pruning and metrics.
#[async_trait::async_trait]
impl Service for PolicyService {
    fn name(&self) -> &'static str {
        "policy"
    }

    fn routes(self: Arc<Self>, verifier: Arc<dyn TokenVerifier>) -> Routes {
        routes(self, verifier)
    }

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        PolicyApi::openapi()
    }

    fn topics(&self) -> &[&'static str] {
        &[TOPIC_POLICY, TOPIC_POLICY_DELETED]
    }

    fn on_change(&self, change: &capstan_db::Change) {
        PolicyService::on_change(self, change);
    }

    async fn start(self: Arc<Self>) -> Result<Vec<tokio::task::JoinHandle<()>>, BoxError> {
        Ok(PolicyService::start(&self).await?)
    }

    async fn housekeeping(&self) -> Result<(), BoxError> {
        self.prune_decisions().await?;
        Ok(())
    }

    fn metrics(&self) -> Vec<Metric> {
        let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        vec![
            Metric::counter(
                "capstan_policy_decisions_dropped_total",
                "Decisions not logged because the decision-log queue was full.",
                n(&self.dropped_decisions),
            ),
            Metric::counter(
                "capstan_policy_compile_failures_total",
                "Stored policies that did not compile (each denies everything until fixed).",
                n(&self.compile_failures),
            ),
            Metric::counter(
                "capstan_policy_snapshot_loads_total",
                "Tenant policy snapshots read from storage and built (at first use and after each change).",
                n(&self.snapshot_loads),
            ),
        ]
    }

    async fn stop(&self) {
        self.flush_decisions().await;
    }
}

/// The policy service's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(modifiers(&BearerScheme), paths(
    put_policy,
    list_policies,
    get_policy,
    delete_policy,
    validate,
    list_policy_versions,
    list_groups,
    list_resource_policies,
    list_guardrails,
    put_group,
    delete_group,
    add_member,
    remove_member,
    attach_principal,
    detach_principal,
    attach_group,
    detach_group,
    put_boundary,
    delete_boundary,
    put_tags,
    put_resource_policy,
    get_resource_policy,
    delete_resource_policy,
    put_guardrail,
    get_guardrail,
    delete_guardrail,
    authorize,
    authorize_batch,
    decisions,
    simulate
))]
pub struct PolicyApi;
