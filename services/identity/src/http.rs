//! The identity service's HTTP API and its OpenAPI description.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use capstan_core::authz::TokenVerifier;
use capstan_http::{
    no_store, Api, ApiError, ApiResult, Bearer, BearerScheme, BoxError, JsonBody, JsonOrDefault,
    Metric, Path, Query, RouteList, Routes, Service,
};
use capstan_proto::identity::{
    CaView, EntryView, IssueJwtSvid, IssueSvid, JoinTokenResponse, JwtSvidResponse, NewEntry,
    NewJoinToken, RotateCa, SvidRecordView, SvidResponse, UpdateEntry,
};
use serde::Deserialize;
use utoipa::OpenApi;

use crate::service::{IdentityService, SvidAuth};
use crate::store::{TOPIC_CA, TOPIC_ENTRY};

type Svc = State<Api<IdentityService>>;

/// The bundle may be cached this long at most (a new CA is in the bundle well before it signs).
fn cache_for(svc: &IdentityService) -> i64 {
    svc.config()
        .refresh_hint
        .min(svc.config().ca_prepare.max(1))
}

/// The SPIFFE trust bundle: a JWK Set with one `x509-svid` key per root CA (its certificate in
/// `x5c`), the `jwt-svid` keys, `spiffe_sequence` and `spiffe_refresh_hint`. Public, like a JWKS.
#[utoipa::path(get, path = "/v1/identity/bundle", tag = "identity",
    responses((status = 200, description = "SPIFFE bundle (JWK Set)")))]
async fn bundle(State(svc): Svc) -> ApiResult<Response> {
    let doc = svc.bundle().await?;
    let mut r = Json(doc).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={}", cache_for(&svc))) {
        r.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    Ok(r)
}

/// The trust bundle's root certificates, PEM. Public.
#[utoipa::path(get, path = "/v1/identity/bundle.pem", tag = "identity",
    responses((status = 200, description = "Root CA certificates", content_type = "application/x-pem-file")))]
async fn bundle_pem(State(svc): Svc) -> ApiResult<Response> {
    let pem = svc.bundle_pem().await?;
    let mut r = pem.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={}", cache_for(&svc))) {
        h.insert(header::CACHE_CONTROL, v);
    }
    Ok(r)
}

/// Issue an X.509-SVID for the key of a CSR, to the caller's principal (`Authorization: Bearer`,
/// action `identity:IssueSvid`) or to a join token's principal (`Authorization: JoinToken`,
/// once).
#[utoipa::path(post, path = "/v1/identity/svids", tag = "identity", request_body = IssueSvid,
    responses((status = 201, body = SvidResponse), (status = 400), (status = 401), (status = 403), (status = 429), (status = 503)),
    security(("bearer" = []), ("join_token" = [])))]
async fn issue_svid(
    State(svc): Svc,
    headers: HeaderMap,
    peer: Option<axum::Extension<capstan_http::PeerCertificate>>,
    JsonBody(req): JsonBody<IssueSvid>,
) -> ApiResult<Response> {
    // Renewal over mTLS: the current SVID on the connection authenticates, like a bearer token.
    let peer = peer.map(|axum::Extension(p)| p);
    let svid = peer
        .as_ref()
        .and_then(|p| Some((p.spiffe_id.clone()?, p.serial.clone())));
    if let (None, Some((id, serial))) = (headers.get(header::AUTHORIZATION), svid) {
        let mut caller = svc.verifier.0.authenticate_svid(&id, &serial).await?;
        caller.trace_id = capstan_http::bearer::trace_id(&headers);
        let issued = svc.issue_svid(SvidAuth::Caller(caller), req).await?;
        return Ok(no_store(
            (StatusCode::CREATED, Json(issued)).into_response(),
        ));
    }
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::Unauthenticated(
                "a bearer access token or a join token (Authorization: JoinToken <token>) is required"
                    .into(),
            )
        })?
        .to_str()
        .map_err(|_| ApiError::Unauthenticated("the Authorization header is malformed".into()))?;
    let auth = match value.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("jointoken") && !t.trim().is_empty() => {
            SvidAuth::JoinToken(t.trim().to_owned())
        }
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
            let mut caller = svc.verifier.0.authenticate_caller(t.trim()).await?;
            capstan_http::bearer::check_binding(&caller, peer.as_ref())?;
            caller.trace_id = capstan_http::bearer::trace_id(&headers);
            SvidAuth::Caller(caller)
        }
        _ => {
            return Err(ApiError::Unauthenticated(
                "the Authorization header must use the Bearer or the JoinToken scheme".into(),
            ))
        }
    };
    let issued = svc.issue_svid(auth, req).await?;
    Ok(no_store(
        (StatusCode::CREATED, Json(issued)).into_response(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SvidQuery {
    principal: Option<String>,
    limit: Option<i64>,
}

/// Issued-certificate records of the caller's tenant (of one principal with `?principal=`),
/// newest first.
#[utoipa::path(get, path = "/v1/identity/svids", tag = "identity",
    params(("principal" = Option<String>, Query, description = "Only this principal's"),
           ("limit" = Option<i64>, Query, description = "At most this many (1-1000, default 100)")),
    responses((status = 200, body = Vec<SvidRecordView>), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])))]
async fn list_svids(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Query(q): Query<SvidQuery>,
) -> ApiResult<Json<Vec<SvidRecordView>>> {
    Ok(Json(
        svc.list_svids(&caller, q.principal.as_deref(), q.limit)
            .await?,
    ))
}

/// Issue a JWT-SVID: a JWT whose `sub` is the caller's SPIFFE ID, for the given audience.
#[utoipa::path(post, path = "/v1/identity/jwt-svids", tag = "identity", request_body = IssueJwtSvid,
    responses((status = 201, body = JwtSvidResponse), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])))]
async fn issue_jwt_svid(
    State(svc): Svc,
    Bearer(caller): Bearer,
    JsonBody(req): JsonBody<IssueJwtSvid>,
) -> ApiResult<Response> {
    let issued = svc.issue_jwt_svid(&caller, req).await?;
    Ok(no_store(
        (StatusCode::CREATED, Json(issued)).into_response(),
    ))
}

/// The deployment's CA generations with their rotation slots.
#[utoipa::path(get, path = "/v1/identity/ca", tag = "identity",
    responses((status = 200, body = Vec<CaView>), (status = 401), (status = 403)),
    security(("bearer" = [])))]
async fn list_cas(State(svc): Svc, Bearer(caller): Bearer) -> ApiResult<Json<Vec<CaView>>> {
    Ok(Json(svc.list_cas(&caller).await?))
}

/// Rotate the CA: prepare a new generation (in the bundle at once, signing after
/// `activate_in_seconds`), or activate the prepared one now.
#[utoipa::path(post, path = "/v1/identity/ca/rotate", tag = "identity", request_body = Option<RotateCa>,
    responses((status = 200, body = CaView), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])))]
async fn rotate_ca(
    State(svc): Svc,
    Bearer(caller): Bearer,
    JsonOrDefault(req): JsonOrDefault<RotateCa>,
) -> ApiResult<Json<CaView>> {
    Ok(Json(svc.rotate(&caller, req).await?))
}

/// Taint a CA after a compromise: it stops signing at once and another CA signs; holders of its
/// leaves re-issue at their next refresh.
#[utoipa::path(post, path = "/v1/identity/ca/{id}/taint", tag = "identity",
    params(("id" = String, Path, description = "CA id (g<generation>)")),
    responses((status = 200, body = CaView), (status = 401), (status = 403), (status = 404)),
    security(("bearer" = [])))]
async fn taint_ca(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path(id): Path<String>,
) -> ApiResult<Json<CaView>> {
    Ok(Json(svc.taint(&caller, &id).await?))
}

/// Register what a principal's SVIDs carry: a SPIFFE path under the tenant, DNS SANs, a TTL.
#[utoipa::path(post, path = "/v1/identity/entries", tag = "identity", request_body = NewEntry,
    responses((status = 201, body = EntryView), (status = 400), (status = 401), (status = 403), (status = 404), (status = 409)),
    security(("bearer" = [])))]
async fn create_entry(
    State(svc): Svc,
    Bearer(caller): Bearer,
    JsonBody(req): JsonBody<NewEntry>,
) -> ApiResult<(StatusCode, Json<EntryView>)> {
    Ok((
        StatusCode::CREATED,
        Json(svc.create_entry(&caller, req).await?),
    ))
}

/// The tenant's registration entries.
#[utoipa::path(get, path = "/v1/identity/entries", tag = "identity",
    responses((status = 200, body = Vec<EntryView>), (status = 401), (status = 403)),
    security(("bearer" = [])))]
async fn list_entries(State(svc): Svc, Bearer(caller): Bearer) -> ApiResult<Json<Vec<EntryView>>> {
    Ok(Json(svc.list_entries(&caller).await?))
}

/// A principal's registration entry.
#[utoipa::path(get, path = "/v1/identity/entries/{principal}", tag = "identity",
    params(("principal" = String, Path, description = "Principal id")),
    responses((status = 200, body = EntryView), (status = 401), (status = 403), (status = 404)),
    security(("bearer" = [])))]
async fn get_entry(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path(p): Path<String>,
) -> ApiResult<Json<EntryView>> {
    Ok(Json(svc.get_entry(&caller, &p).await?))
}

/// Replace a principal's registration entry.
#[utoipa::path(put, path = "/v1/identity/entries/{principal}", tag = "identity", request_body = UpdateEntry,
    params(("principal" = String, Path, description = "Principal id")),
    responses((status = 200, body = EntryView), (status = 400), (status = 401), (status = 403), (status = 404), (status = 409)),
    security(("bearer" = [])))]
async fn update_entry(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path(p): Path<String>,
    JsonBody(req): JsonBody<UpdateEntry>,
) -> ApiResult<Json<EntryView>> {
    Ok(Json(svc.update_entry(&caller, &p, req).await?))
}

/// Delete a principal's registration entry (its SVIDs get the defaults again).
#[utoipa::path(delete, path = "/v1/identity/entries/{principal}", tag = "identity",
    params(("principal" = String, Path, description = "Principal id")),
    responses((status = 204), (status = 401), (status = 403), (status = 404)),
    security(("bearer" = [])))]
async fn delete_entry(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path(p): Path<String>,
) -> ApiResult<StatusCode> {
    svc.delete_entry(&caller, &p).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create a single-use join token that yields one SVID for a principal (shown once).
#[utoipa::path(post, path = "/v1/identity/join-tokens", tag = "identity", request_body = NewJoinToken,
    responses((status = 201, body = JoinTokenResponse), (status = 400), (status = 401), (status = 403), (status = 404)),
    security(("bearer" = [])))]
async fn create_join_token(
    State(svc): Svc,
    Bearer(caller): Bearer,
    JsonBody(req): JsonBody<NewJoinToken>,
) -> ApiResult<Response> {
    let t = svc.create_join_token(&caller, req).await?;
    Ok(no_store((StatusCode::CREATED, Json(t)).into_response()))
}

/// The join-token security scheme of the OpenAPI document.
struct JoinTokenScheme;

impl utoipa::Modify for JoinTokenScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "join_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "JoinToken <token>: a single-use token from POST /v1/identity/join-tokens",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    paths(
        bundle,
        bundle_pem,
        issue_svid,
        list_svids,
        issue_jwt_svid,
        list_cas,
        rotate_ca,
        taint_ca,
        create_entry,
        list_entries,
        get_entry,
        update_entry,
        delete_entry,
        create_join_token,
    ),
    modifiers(&BearerScheme, &JoinTokenScheme)
)]
struct IdentityApi;

#[async_trait::async_trait]
impl Service for IdentityService {
    fn workload_identity(
        self: Arc<Self>,
    ) -> Option<Arc<dyn capstan_core::authz::WorkloadIdentity>> {
        Some(self)
    }

    fn name(&self) -> &'static str {
        "identity"
    }

    fn routes(self: Arc<Self>, verifier: Arc<dyn TokenVerifier>) -> Routes {
        RouteList::new()
            .route("/v1/identity/bundle", get(bundle))
            .route("/v1/identity/bundle.pem", get(bundle_pem))
            .route("/v1/identity/svids", post(issue_svid).get(list_svids))
            .route("/v1/identity/jwt-svids", post(issue_jwt_svid))
            .route("/v1/identity/ca", get(list_cas))
            .route("/v1/identity/ca/rotate", post(rotate_ca))
            .route("/v1/identity/ca/{id}/taint", post(taint_ca))
            .route("/v1/identity/entries", post(create_entry).get(list_entries))
            .route(
                "/v1/identity/entries/{principal}",
                get(get_entry).put(update_entry).delete(delete_entry),
            )
            .route("/v1/identity/join-tokens", post(create_join_token))
            .with_state(Api::new(self, verifier))
    }

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        IdentityApi::openapi()
    }

    fn topics(&self) -> &[&'static str] {
        &[TOPIC_CA, TOPIC_ENTRY]
    }

    fn on_change(&self, change: &capstan_db::Change) {
        IdentityService::on_change(self, change);
    }

    async fn start(self: Arc<Self>) -> Result<Vec<tokio::task::JoinHandle<()>>, BoxError> {
        self.ensure_ca().await?;
        Ok(Vec::new())
    }

    async fn housekeeping(&self) -> Result<(), BoxError> {
        IdentityService::housekeeping(self).await?;
        Ok(())
    }

    fn metrics(&self) -> Vec<Metric> {
        let m = &self.metrics;
        let counts = self.ca_counts();
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        vec![
            Metric::counter(
                "capstan_identity_svids_issued_total",
                "X.509-SVIDs issued.",
                n(&m.svids_issued),
            ),
            Metric::counter(
                "capstan_identity_jwt_svids_issued_total",
                "JWT-SVIDs issued.",
                n(&m.jwt_svids_issued),
            ),
            Metric::counter(
                "capstan_identity_svid_refusals_total",
                "SVID requests refused (bad CSR, bad join token, denied).",
                n(&m.svid_refusals),
            ),
            Metric::gauge(
                "capstan_identity_cas_active",
                "CA generations signing now (1 when healthy).",
                counts.get("active").copied().unwrap_or(0) as f64,
            ),
            Metric::gauge(
                "capstan_identity_cas_prepared",
                "CA generations prepared (in the bundle, not signing yet).",
                counts.get("prepared").copied().unwrap_or(0) as f64,
            ),
        ]
    }
}
