//! HTTP adapters of the policy service and the one place its errors become responses:
//! 400 bad input (invalid documents list every problem with its JSON path), 401 no valid bearer
//! token, 403 not allowed (with the action, resource and reason), 404 unknown, 409 conflict,
//! 500 storage failure (detail logged, never sent).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use capstan_core::authz::Caller;
use capstan_iam::PolicyKind;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use utoipa::OpenApi;

use crate::api::{
    AuthorizeRequest, AuthorizeResponse, BatchRequest, BatchResponse, BoundaryRequest,
    DecisionView, PolicySummary, PolicyView, PutPolicyResult, TagsRequest, Validation,
};
use crate::error::PolicyError;
use crate::simulate::{SimulateRequest, SimulateResponse};
use crate::store::Keyed;
use crate::PolicyService;

type Svc = State<Arc<PolicyService>>;

impl IntoResponse for PolicyError {
    fn into_response(self) -> Response {
        let body = |status: StatusCode, error: &str, message: &str| {
            (status, Json(json!({"error": error, "message": message}))).into_response()
        };
        match self {
            PolicyError::BadRequest(m) => body(StatusCode::BAD_REQUEST, "bad_request", &m),
            PolicyError::InvalidDocument(issues) => {
                let errors: Vec<_> = issues.iter().map(|i| json!({"path": i.path, "message": i.message})).collect();
                let first = issues.first().map(|i| format!("{}: {}", i.path, i.message)).unwrap_or_default();
                (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": "invalid_policy", "message": format!("invalid policy document: {first}"), "errors": errors})),
                )
                    .into_response()
            }
            PolicyError::NotFound(m) => body(StatusCode::NOT_FOUND, "not_found", &m),
            PolicyError::Conflict(m) => body(StatusCode::CONFLICT, "conflict", &m),
            PolicyError::Unauthenticated(m) => {
                let mut r = body(StatusCode::UNAUTHORIZED, "unauthenticated", &m);
                let challenge = format!("Bearer realm=\"capstan\", error=\"invalid_token\", error_description=\"{}\"", m.replace('"', "'"));
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                r
            }
            PolicyError::Forbidden { action, resource, reason } => (
                StatusCode::FORBIDDEN,
                Json(json!({"error": "forbidden", "message": format!("not allowed to {action} on {resource}"),
                    "action": action, "resource": resource, "reason": reason})),
            )
                .into_response(),
            PolicyError::Db(e) => {
                tracing::error!(error = %e, "storage failure");
                body(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
        }
    }
}

/// The authenticated caller (bearer token with the Capstan API audience).
pub struct Bearer(pub Caller);

impl FromRequestParts<Arc<PolicyService>> for Bearer {
    type Rejection = PolicyError;

    async fn from_request_parts(
        parts: &mut Parts,
        svc: &Arc<PolicyService>,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or_else(|| {
                PolicyError::Unauthenticated("a bearer access token is required".into())
            })?;
        let verifier = svc.verifier.get().ok_or_else(|| {
            PolicyError::Unauthenticated("token verification is not available".into())
        })?;
        let mut caller = verifier
            .authenticate_caller(token)
            .await
            .map_err(PolicyError::Unauthenticated)?;
        caller.source_ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip().to_string());
        Ok(Bearer(caller))
    }
}

fn text(body: Result<Bytes, BytesRejection>) -> Result<String, PolicyError> {
    let bytes = body.map_err(|r| PolicyError::BadRequest(r.body_text()))?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| PolicyError::BadRequest("body must be UTF-8 JSON".into()))
}

fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, PolicyError> {
    serde_json::from_str(&text(body)?)
        .map_err(|e| PolicyError::BadRequest(format!("invalid JSON body: {e}")))
}

fn respond<T: serde::Serialize>(status: StatusCode, r: Result<T, PolicyError>) -> Response {
    match r {
        Ok(v) => (status, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn no_content(r: Result<(), PolicyError>) -> Response {
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Create a new version of a managed policy (the body is the document); it becomes the default.
#[utoipa::path(put, path = "/v1/policies/{name}", tag = "policy", params(("name" = String, Path)),
    request_body(content = Object, description = "IAM policy document"),
    responses((status = 200, body = PutPolicyResult), (status = 400), (status = 403), (status = 409)), security(("bearer" = [])))]
async fn put_policy(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = async { svc.put_policy(&c, &name, &text(body)?).await }.await;
    respond(StatusCode::OK, r)
}

/// List managed and built-in policies.
#[utoipa::path(get, path = "/v1/policies", tag = "policy",
    responses((status = 200, body = Vec<PolicySummary>), (status = 403)), security(("bearer" = [])))]
async fn list_policies(State(svc): Svc, Bearer(c): Bearer) -> Response {
    respond(StatusCode::OK, svc.list_policies(&c).await)
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
    q: Result<Query<VersionQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let r = async {
        let Query(q) = q.map_err(|e| PolicyError::BadRequest(e.body_text()))?;
        svc.get_policy(&c, &name, q.version).await
    }
    .await;
    respond(StatusCode::OK, r)
}

/// Delete a managed policy and all its versions (refused while attached).
#[utoipa::path(delete, path = "/v1/policies/{name}", tag = "policy", params(("name" = String, Path)),
    responses((status = 204), (status = 403), (status = 404), (status = 409)), security(("bearer" = [])))]
async fn delete_policy(State(svc): Svc, Bearer(c): Bearer, Path(name): Path<String>) -> Response {
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
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = async {
        let kind = match q.kind.as_deref() {
            None | Some("identity") => PolicyKind::Identity,
            Some("resource") => PolicyKind::Resource,
            Some(k) => {
                return Err(PolicyError::BadRequest(format!(
                    "kind {k:?} must be identity or resource"
                )))
            }
        };
        svc.validate(&c, &text(body)?, kind).await
    }
    .await;
    respond(StatusCode::OK, r)
}

/// Create a group (idempotent).
#[utoipa::path(put, path = "/v1/groups/{group}", tag = "policy", params(("group" = String, Path)),
    responses((status = 204), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn put_group(State(svc): Svc, Bearer(c): Bearer, Path(g): Path<String>) -> Response {
    no_content(svc.put_group(&c, &g).await.map(|_| ()))
}

/// Delete a group, its memberships and attachments.
#[utoipa::path(delete, path = "/v1/groups/{group}", tag = "policy", params(("group" = String, Path)),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn delete_group(State(svc): Svc, Bearer(c): Bearer, Path(g): Path<String>) -> Response {
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
) -> Response {
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
) -> Response {
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
) -> Response {
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
) -> Response {
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
) -> Response {
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
) -> Response {
    no_content(svc.set_attachment(&c, true, &g, &n, false).await)
}

/// Set a principal's permissions boundary.
#[utoipa::path(put, path = "/v1/principals/{principal}/boundary", tag = "policy", params(("principal" = String, Path)),
    request_body = BoundaryRequest, responses((status = 204), (status = 400), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn put_boundary(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(p): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = async {
        let b: BoundaryRequest = json_body(body)?;
        svc.set_boundary(&c, &p, Some(&b.policy)).await
    }
    .await;
    no_content(r)
}

/// Remove a principal's permissions boundary.
#[utoipa::path(delete, path = "/v1/principals/{principal}/boundary", tag = "policy", params(("principal" = String, Path)),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn delete_boundary(State(svc): Svc, Bearer(c): Bearer, Path(p): Path<String>) -> Response {
    no_content(svc.set_boundary(&c, &p, None).await)
}

/// Replace a principal's tags (`capstan:PrincipalTag/<key>` in conditions).
#[utoipa::path(put, path = "/v1/principals/{principal}/tags", tag = "policy", params(("principal" = String, Path)),
    request_body = TagsRequest, responses((status = 204), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn put_tags(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(p): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = async {
        let t: TagsRequest = json_body(body)?;
        svc.set_tags(&c, &p, t.tags).await
    }
    .await;
    no_content(r)
}

async fn put_keyed(
    svc: &PolicyService,
    c: &Caller,
    table: Keyed,
    key: &str,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = async { svc.put_keyed(c, table, key, &text(body)?).await }.await;
    respond(
        StatusCode::OK,
        r.map(|w| json!({"key": key, "warnings": w})),
    )
}

/// Set the resource policy of a CRN or CRN pattern (the body is the document).
#[utoipa::path(put, path = "/v1/resource-policies/{crn}", tag = "policy", params(("crn" = String, Path)),
    request_body(content = Object), responses((status = 200), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn put_resource_policy(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(k): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    put_keyed(&svc, &c, Keyed::ResourcePolicy, &k, body).await
}

/// Read a resource policy.
#[utoipa::path(get, path = "/v1/resource-policies/{crn}", tag = "policy", params(("crn" = String, Path)),
    responses((status = 200), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn get_resource_policy(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(k): Path<String>,
) -> Response {
    respond(
        StatusCode::OK,
        svc.get_keyed(&c, Keyed::ResourcePolicy, &k).await,
    )
}

/// Delete a resource policy.
#[utoipa::path(delete, path = "/v1/resource-policies/{crn}", tag = "policy", params(("crn" = String, Path)),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn delete_resource_policy(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(k): Path<String>,
) -> Response {
    no_content(svc.delete_keyed(&c, Keyed::ResourcePolicy, &k).await)
}

/// Set a tenant guardrail (the analog of an SCP; the body is the document).
#[utoipa::path(put, path = "/v1/guardrails/{name}", tag = "policy", params(("name" = String, Path)),
    request_body(content = Object), responses((status = 200), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn put_guardrail(
    State(svc): Svc,
    Bearer(c): Bearer,
    Path(k): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    put_keyed(&svc, &c, Keyed::Guardrail, &k, body).await
}

/// Read a guardrail.
#[utoipa::path(get, path = "/v1/guardrails/{name}", tag = "policy", params(("name" = String, Path)),
    responses((status = 200), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn get_guardrail(State(svc): Svc, Bearer(c): Bearer, Path(k): Path<String>) -> Response {
    respond(
        StatusCode::OK,
        svc.get_keyed(&c, Keyed::Guardrail, &k).await,
    )
}

/// Delete a guardrail.
#[utoipa::path(delete, path = "/v1/guardrails/{name}", tag = "policy", params(("name" = String, Path)),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn delete_guardrail(State(svc): Svc, Bearer(c): Bearer, Path(k): Path<String>) -> Response {
    no_content(svc.delete_keyed(&c, Keyed::Guardrail, &k).await)
}

/// May a principal (or the bearer of a token) do an action on a resource?
#[utoipa::path(post, path = "/v1/authorize", tag = "policy", request_body = AuthorizeRequest,
    responses((status = 200, body = AuthorizeResponse), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn authorize(
    State(svc): Svc,
    Bearer(c): Bearer,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = async { svc.authorize_api(&c, json_body(body)?).await }.await;
    respond(StatusCode::OK, r)
}

/// Several decisions in one call, in order.
#[utoipa::path(post, path = "/v1/authorize:batch", tag = "policy", request_body = BatchRequest,
    responses((status = 200, body = BatchResponse), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn authorize_batch(
    State(svc): Svc,
    Bearer(c): Bearer,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = async { svc.authorize_batch(&c, json_body(body)?).await }.await;
    respond(StatusCode::OK, r)
}

#[derive(Deserialize)]
struct DecisionQuery {
    principal: Option<String>,
    decision: Option<String>,
    since: Option<i64>,
    limit: Option<i64>,
}

/// Recent decisions: every `/v1/authorize` decision and every guarded API call.
#[utoipa::path(get, path = "/v1/decisions", tag = "policy",
    params(("principal" = Option<String>, Query), ("decision" = Option<String>, Query), ("since" = Option<i64>, Query), ("limit" = Option<i64>, Query)),
    responses((status = 200, body = Vec<DecisionView>), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn decisions(
    State(svc): Svc,
    Bearer(c): Bearer,
    q: Result<Query<DecisionQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let r = async {
        let Query(q) = q.map_err(|e| PolicyError::BadRequest(e.body_text()))?;
        svc.list_decisions(
            &c,
            q.principal.as_deref(),
            q.decision.as_deref(),
            q.since,
            q.limit,
        )
        .await
    }
    .await;
    respond(StatusCode::OK, r)
}

/// Decide requests before and after proposed policy changes, without applying them.
#[utoipa::path(post, path = "/v1/simulate", tag = "policy", request_body = SimulateRequest,
    responses((status = 200, body = SimulateResponse), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn simulate(
    State(svc): Svc,
    Bearer(c): Bearer,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = async { svc.simulate(&c, json_body(body)?).await }.await;
    respond(StatusCode::OK, r)
}

/// The policy service's routes.
pub fn router(svc: Arc<PolicyService>) -> Router {
    Router::new()
        .route("/v1/policies", axum::routing::get(list_policies))
        .route("/v1/policies:validate", post(validate))
        .route(
            "/v1/policies/{name}",
            put(put_policy).get(get_policy).delete(delete_policy),
        )
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
        .with_state(svc)
}

/// The policy service's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(paths(
    put_policy,
    list_policies,
    get_policy,
    delete_policy,
    validate,
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
    decisions
))]
pub struct PolicyApi;
