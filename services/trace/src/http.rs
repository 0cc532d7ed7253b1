//! The trace service's HTTP API: the OTLP/HTTP receiver (`POST /v1/traces`), Jaeger's query
//! APIs (v1 under `/api`, v3 under `/api/v3`), OTLP JSON by trace id and RED metrics, and the
//! OpenAPI description.
//!
//! The receiver follows the OTLP specification: protobuf or JSON in, the same out; gzip
//! accepted and capped after decompression (413); errors as a `google.rpc.Status`; 429 with
//! `Retry-After` when the queue is full; spans refused one by one reported in
//! `partial_success`. A 200 is sent once the accepted spans are committed.

use std::io::Read;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use capstan_core::authz::{Caller, TokenVerifier};
use capstan_http::{Api, ApiError, Bearer, BearerScheme, Path, PeerCertificate, RouteList, Routes};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::error::TraceError;
use crate::model::{self, kind_from_name, kind_name, parse_duration, parse_trace_id};
use crate::service::{Ingested, Sender, TraceService};
use crate::store::SearchQuery;

type Svc = State<Api<TraceService>>;

/// The receiver's route.
pub const RECEIVER_ROUTE: &str = "/v1/traces";

// ---------------------------------------------------------------------------------------------
// OTLP/HTTP receiver

#[derive(Clone, Copy, PartialEq)]
enum Wire {
    Proto,
    Json,
}

impl Wire {
    fn content_type(self) -> &'static str {
        match self {
            Wire::Proto => "application/x-protobuf",
            Wire::Json => "application/json",
        }
    }
}

/// A `google.rpc.Status` in the request's encoding, with the matching HTTP status.
fn rpc_status(wire: Wire, http: StatusCode, code: tonic::Code, message: &str) -> Response {
    let body = match wire {
        Wire::Proto => tonic_types::Status {
            code: code as i32,
            message: message.to_owned(),
            details: Vec::new(),
        }
        .encode_to_vec(),
        Wire::Json => json!({"code": code as i32, "message": message})
            .to_string()
            .into_bytes(),
    };
    let mut r = (http, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(wire.content_type()),
    );
    if matches!(
        http,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn receiver_error(wire: Wire, e: TraceError) -> Response {
    let code = e.grpc_code();
    let message = e.public_message();
    if code == tonic::Code::Internal {
        tracing::error!(error = %e, "trace: export failed");
    }
    let http = ApiError::from(e).status();
    rpc_status(wire, http, code, &message)
}

/// The export answer: empty, or `partial_success` when spans were refused.
pub fn export_response(i: &Ingested) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (i.rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: i.rejected,
            error_message: i.message.clone(),
        }),
    }
}

/// Decompresses gzip up to `cap` bytes; more is 413.
pub fn gunzip(body: &[u8], cap: usize) -> Result<Vec<u8>, TraceError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(body)
        .take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| TraceError::BadRequest(format!("the gzip body is malformed: {e}")))?;
    if out.len() > cap {
        return Err(TraceError::TooLarge(format!(
            "the body is larger than {cap} bytes once decompressed"
        )));
    }
    Ok(out)
}

/// Decodes an export request body.
pub fn decode_export(bytes: &[u8], json: bool) -> Result<ExportTraceServiceRequest, TraceError> {
    if json {
        // `resourceSpans` may be absent (an empty export); unknown fields are ignored.
        #[derive(serde::Deserialize)]
        struct Export {
            #[serde(default, rename = "resourceSpans")]
            resource_spans: Vec<opentelemetry_proto::tonic::trace::v1::ResourceSpans>,
        }
        let to_request = |e: Export| ExportTraceServiceRequest {
            resource_spans: e.resource_spans,
        };
        match serde_json::from_slice::<Export>(bytes) {
            Ok(e) => Ok(to_request(e)),
            Err(first) => {
                // The protobuf JSON mapping sends 64-bit times as decimal strings, and receivers
                // accept numbers too; opentelemetry-proto takes only strings. Only a body that
                // fails is parsed again with its numeric times turned into strings.
                let bad = |e: &dyn std::fmt::Display| {
                    TraceError::BadRequest(format!("the body is not OTLP/JSON: {e}"))
                };
                let mut v: Value = serde_json::from_slice(bytes).map_err(|_| bad(&first))?;
                if !times_as_strings(&mut v) {
                    return Err(bad(&first));
                }
                serde_json::from_value::<Export>(v)
                    .map(to_request)
                    .map_err(|e| bad(&e))
            }
        }
    } else {
        ExportTraceServiceRequest::decode(bytes)
            .map_err(|e| TraceError::BadRequest(format!("the body is not OTLP protobuf: {e}")))
    }
}

/// The OTLP/JSON fields holding 64-bit Unix-nanosecond times (fixed64).
const TIME_FIELDS: [&str; 3] = ["startTimeUnixNano", "endTimeUnixNano", "timeUnixNano"];

/// Rewrites every numeric time field of an OTLP/JSON body as the decimal string the protobuf
/// JSON mapping prefers; `true` when one was changed. Only object keys are matched: attribute
/// names are values of `key`, so user data is never rewritten. A number that is not a whole
/// non-negative value below 2^64 is left for the decoder to refuse.
fn times_as_strings(v: &mut Value) -> bool {
    let mut changed = false;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    if let Value::Number(n) = v {
                        if TIME_FIELDS.contains(&k.as_str()) {
                            let whole = n.as_u64().or_else(|| {
                                n.as_f64()
                                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1.8e19)
                                    .map(|f| f as u64)
                            });
                            if let Some(t) = whole {
                                *v = Value::String(t.to_string());
                                changed = true;
                            }
                        }
                    } else {
                        stack.push(v);
                    }
                }
            }
            Value::Array(a) => stack.extend(a.iter_mut()),
            _ => {}
        }
    }
    changed
}

async fn receive(
    api: &Api<TraceService>,
    req: Request,
    wire: Wire,
) -> Result<Response, TraceError> {
    let (mut parts, body) = req.into_parts();
    let encoding = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let gzip = match encoding.as_str() {
        "gzip" | "x-gzip" => true,
        "identity" | "" => false,
        other => {
            return Err(TraceError::UnsupportedMediaType(format!(
                "Content-Encoding {other:?} is not supported (gzip or none)"
            )))
        }
    };
    // Who sends: a bearer token (or a bound one with its certificate), or an SVID on the TLS
    // connection — the kit's extractor decides both — or nobody, when anonymous ingest is on.
    let sender = if parts.headers.contains_key(header::AUTHORIZATION)
        || parts.extensions.get::<PeerCertificate>().is_some()
    {
        match Bearer::from_request_parts(&mut parts, api).await {
            Ok(Bearer(c)) => Sender::Caller(c),
            Err(e) => {
                return Err(match e {
                    ApiError::Unavailable(m) => TraceError::Unavailable(m),
                    ApiError::Unauthenticated(m) => TraceError::Unauthenticated(m),
                    _ => TraceError::Internal("authentication failed".into()),
                });
            }
        }
    } else {
        api.sender(None).await?
    };
    let limit = api.settings().max_body_bytes;
    let raw = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                TraceError::TooLarge(format!("the body is larger than {limit} bytes"))
            } else {
                TraceError::BadRequest(format!("the body could not be read: {e}"))
            }
        })?
        .to_bytes();
    // Held while the body is inflated, decoded and ingested.
    let _budget = api.decode_budget(gzip, raw.len()).await?;
    let bytes: Bytes = if gzip {
        gunzip(&raw, api.settings().max_decompressed_bytes)?.into()
    } else {
        if raw.len() > api.settings().max_decompressed_bytes {
            return Err(TraceError::TooLarge("the body is too large".into()));
        }
        raw
    };
    let export = decode_export(&bytes, wire == Wire::Json)?;
    let ingested = api.ingest(&sender, export).await?;
    let resp = export_response(&ingested);
    let body = match wire {
        Wire::Proto => resp.encode_to_vec(),
        Wire::Json => serde_json::to_vec(&resp).map_err(|e| TraceError::Internal(e.to_string()))?,
    };
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(wire.content_type()),
    );
    Ok(r)
}

/// Receives spans (OTLP/HTTP): protobuf or JSON, optionally gzip. Needs `trace:Ingest` on
/// each claimed service; the answer comes once accepted spans are committed.
#[utoipa::path(post, path = "/v1/traces", tag = "trace",
    request_body(content = Vec<u8>, content_type = "application/x-protobuf", description = "ExportTraceServiceRequest (or application/json)"),
    responses((status = 200, description = "ExportTraceServiceResponse (partial_success lists refused spans)"),
              (status = 400, description = "Malformed (google.rpc.Status)"), (status = 401), (status = 413),
              (status = 415), (status = 429, description = "Queue full; Retry-After"), (status = 503)),
    security(("bearer" = [])))]
pub(crate) async fn export(State(api): Svc, req: Request) -> Response {
    let mime = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let wire = match mime.as_str() {
        "application/x-protobuf" | "application/protobuf" => Wire::Proto,
        "application/json" => Wire::Json,
        _ => {
            return rpc_status(
                Wire::Proto,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                tonic::Code::InvalidArgument,
                "Content-Type must be application/x-protobuf or application/json",
            )
        }
    };
    match receive(&api, req, wire).await {
        Ok(r) => r,
        Err(e) => receiver_error(wire, e),
    }
}

/// The router of the OTLP/HTTP listener (`--otlp-http-listen`): the receiver only.
pub fn receiver_router(svc: Arc<TraceService>, verifier: Arc<dyn TokenVerifier>) -> axum::Router {
    axum::Router::new()
        .route(RECEIVER_ROUTE, post(export))
        .fallback(capstan_http::error::not_found)
        .with_state(Api::new(svc, verifier))
}

// ---------------------------------------------------------------------------------------------
// Query parameters

/// Query parameters in order, repeated ones kept (`tag=`, `traceID=`).
struct Params(Vec<(String, String)>);

impl Params {
    fn new(raw: Option<String>) -> Params {
        Params(
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .take(256)
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn int(&self, name: &str) -> Result<Option<i64>, TraceError> {
        self.get(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| TraceError::BadRequest(format!("{name} must be an integer")))
            })
            .transpose()
    }

    fn duration(&self, name: &str) -> Result<Option<i64>, TraceError> {
        self.get(name)
            .map(|v| {
                parse_duration(v).ok_or_else(|| {
                    TraceError::BadRequest(format!(
                        "{name} must be a duration like 250ms, 1.5s, 1h (got {v:?})"
                    ))
                })
            })
            .transpose()
    }
}

/// Tags of a search: `tags={"k":"v"}` (JSON object; values compared as text) and `tag=k:v`.
fn tags(p: &Params, json_name: &str, pair_name: &str) -> Result<Vec<(String, String)>, TraceError> {
    let mut out = Vec::new();
    if let Some(t) = p.get(json_name) {
        let v: serde_json::Map<String, Value> = serde_json::from_str(t)
            .map_err(|_| TraceError::BadRequest(format!("{json_name} must be a JSON object")))?;
        for (k, v) in v {
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            out.push((k, text));
        }
    }
    for pair in p.all(pair_name) {
        let (k, v) = pair
            .split_once(':')
            .ok_or_else(|| TraceError::BadRequest(format!("{pair_name} must be key:value")))?;
        out.push((k.to_owned(), v.to_owned()));
    }
    if out.len() > 32 {
        return Err(TraceError::BadRequest("at most 32 tags".into()));
    }
    if out
        .iter()
        .any(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        return Err(TraceError::BadRequest("tags must not contain NUL".into()));
    }
    Ok(out)
}

fn trace_id(s: &str) -> Result<Vec<u8>, TraceError> {
    parse_trace_id(s).ok_or_else(|| {
        TraceError::BadRequest(format!(
            "{s:?} is not a trace id (up to 32 hex digits, not zero)"
        ))
    })
}

/// An operation filter: at most the stored length, no NUL.
fn operation_param(p: &Params, name: &str) -> Result<Option<String>, TraceError> {
    match p.get(name) {
        Some(o) if o.contains('\0') || o.len() > model::MAX_NAME_BYTES => {
            Err(TraceError::BadRequest(format!(
                "{name} must be at most {} bytes, without NUL",
                model::MAX_NAME_BYTES
            )))
        }
        o => Ok(o.map(str::to_owned)),
    }
}

fn service_param(p: &Params, name: &str) -> Result<String, TraceError> {
    let s = p
        .get(name)
        .ok_or_else(|| TraceError::BadRequest(format!("parameter '{name}' is required")))?;
    model::check_service_name(s).map_err(TraceError::BadRequest)?;
    Ok(s.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Jaeger v1

/// A Jaeger v1 answer or error (`{data, total, limit, offset, errors}`).
struct Jaeger(Result<Value, TraceError>);

impl IntoResponse for Jaeger {
    fn into_response(self) -> Response {
        match self.0 {
            Ok(data) => {
                let total = data.as_array().map_or(0, Vec::len);
                Json(json!({"data": data, "total": total, "limit": 0, "offset": 0, "errors": null}))
                    .into_response()
            }
            Err(e @ (TraceError::BadRequest(_) | TraceError::NotFound(_))) => {
                let status = ApiError::from(TraceError::BadRequest(String::new())).status();
                let status = if matches!(e, TraceError::NotFound(_)) {
                    StatusCode::NOT_FOUND
                } else {
                    status
                };
                (
                    status,
                    Json(json!({"data": null, "total": 0, "limit": 0, "offset": 0,
                        "errors": [{"code": status.as_u16(), "msg": e.to_string()}]})),
                )
                    .into_response()
            }
            Err(e) => ApiError::from(e).into_response(),
        }
    }
}

/// Services with spans the caller may query (Jaeger v1).
#[utoipa::path(get, path = "/api/services", tag = "trace",
    responses((status = 200, description = "{data: [service]}"), (status = 401)), security(("bearer" = [])))]
async fn v1_services(State(api): Svc, Bearer(c): Bearer) -> Jaeger {
    Jaeger(api.services(&c).await.map(|s| json!(s)))
}

/// A service's operation names (Jaeger v1).
#[utoipa::path(get, path = "/api/services/{service}/operations", tag = "trace",
    params(("service" = String, Path)),
    responses((status = 200, description = "{data: [operation]}"), (status = 401), (status = 403)), security(("bearer" = [])))]
async fn v1_service_operations(
    State(api): Svc,
    Bearer(c): Bearer,
    Path(service): Path<String>,
) -> Jaeger {
    Jaeger(
        async {
            model::check_service_name(&service).map_err(TraceError::BadRequest)?;
            let mut names: Vec<String> = api
                .operations(&c, &service)
                .await?
                .into_iter()
                .map(|o| o.name)
                .collect();
            names.dedup();
            Ok(json!(names))
        }
        .await,
    )
}

/// A service's operations with their span kinds (Jaeger v1, `spanKind` filters).
#[utoipa::path(get, path = "/api/operations", tag = "trace",
    params(("service" = String, Query), ("spanKind" = Option<String>, Query)),
    responses((status = 200, description = "{data: [{name, spanKind}]}"), (status = 400), (status = 401), (status = 403)), security(("bearer" = [])))]
async fn v1_operations(State(api): Svc, Bearer(c): Bearer, RawQuery(q): RawQuery) -> Jaeger {
    Jaeger(operations_json(&api, &c, &Params::new(q), "service", "spanKind").await)
}

async fn operations_json(
    api: &TraceService,
    c: &Caller,
    p: &Params,
    service_name: &str,
    kind_param: &str,
) -> Result<Value, TraceError> {
    let service = service_param(p, service_name)?;
    let kind = match p.get(kind_param) {
        Some(k) => Some(kind_from_name(&k.to_ascii_lowercase()).ok_or_else(|| {
            TraceError::BadRequest(format!(
                "{kind_param} must be server, client, producer, consumer, internal or unspecified"
            ))
        })?),
        None => None,
    };
    let ops: Vec<Value> = api
        .operations(c, &service)
        .await?
        .into_iter()
        .filter(|o| kind.is_none_or(|k| o.kind == k))
        .map(|o| json!({"name": o.name, "spanKind": kind_name(o.kind.into()).unwrap_or("")}))
        .collect();
    Ok(json!(ops))
}

/// Searches traces (Jaeger v1): by service (required), operation, tags, time and duration;
/// or fetches the given `traceID`s.
#[utoipa::path(get, path = "/api/traces", tag = "trace",
    params(("service" = Option<String>, Query), ("operation" = Option<String>, Query),
           ("tags" = Option<String>, Query, description = "JSON object of tag values"),
           ("start" = Option<i64>, Query, description = "µs"), ("end" = Option<i64>, Query, description = "µs"),
           ("lookback" = Option<String>, Query, description = "e.g. 1h"),
           ("minDuration" = Option<String>, Query), ("maxDuration" = Option<String>, Query),
           ("limit" = Option<i64>, Query), ("traceID" = Option<String>, Query)),
    responses((status = 200, description = "{data: [trace]}"), (status = 400), (status = 401), (status = 403)), security(("bearer" = [])))]
async fn v1_search(State(api): Svc, Bearer(c): Bearer, RawQuery(q): RawQuery) -> Jaeger {
    Jaeger(
        async {
            let p = Params::new(q);
            let ids: Vec<Vec<u8>> = p.all("traceID").map(trace_id).collect::<Result<_, _>>()?;
            if !ids.is_empty() {
                let mut out = Vec::new();
                for id in ids.iter().take(100) {
                    match api.trace(&c, id).await {
                        Ok(spans) => out.extend(model::to_jaeger(spans, std::slice::from_ref(id))),
                        Err(TraceError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                return Ok(json!(out));
            }
            let lookback = match p.get("lookback") {
                Some("custom") | None => None,
                Some(_) => p.duration("lookback")?,
            };
            let us = |v: Option<i64>| v.map(|v| v.saturating_mul(1000));
            let (start, end) = api.window(us(p.int("start")?), us(p.int("end")?), lookback)?;
            let query = SearchQuery {
                service: service_param(&p, "service")?,
                operation: operation_param(&p, "operation")?,
                tags: tags(&p, "tags", "tag")?,
                start_ns: start,
                end_ns: end,
                min_duration_ns: p.duration("minDuration")?,
                max_duration_ns: p.duration("maxDuration")?,
                limit: p.int("limit")?.unwrap_or(20),
            };
            let (ids, spans) = api.search(&c, query).await?;
            Ok(json!(model::to_jaeger(spans, &ids)))
        }
        .await,
    )
}

/// One trace (Jaeger v1).
#[utoipa::path(get, path = "/api/traces/{trace_id}", tag = "trace",
    params(("trace_id" = String, Path)),
    responses((status = 200, description = "{data: [trace]}"), (status = 404), (status = 401)), security(("bearer" = [])))]
async fn v1_trace(State(api): Svc, Bearer(c): Bearer, Path(id): Path<String>) -> Jaeger {
    Jaeger(
        async {
            let id = trace_id(&id)?;
            let spans = api.trace(&c, &id).await?;
            Ok(json!(model::to_jaeger(spans, &[id])))
        }
        .await,
    )
}

/// Calls between services (Jaeger v1): `endTs` and `lookback` in milliseconds.
#[utoipa::path(get, path = "/api/dependencies", tag = "trace",
    params(("endTs" = Option<i64>, Query, description = "ms"), ("lookback" = Option<i64>, Query, description = "ms")),
    responses((status = 200, description = "{data: [{parent, child, callCount}]}"), (status = 401)), security(("bearer" = [])))]
async fn v1_dependencies(State(api): Svc, Bearer(c): Bearer, RawQuery(q): RawQuery) -> Jaeger {
    Jaeger(
        async {
            let p = Params::new(q);
            let ms = |v: Option<i64>| v.map(|v| v.saturating_mul(1_000_000));
            let (start, end) = api.window(
                None,
                ms(p.int("endTs")?),
                ms(p.int("lookback")?.or(Some(3_600_000))),
            )?;
            let deps = api.dependencies(&c, start, end).await?;
            Ok(json!(deps
                .into_iter()
                .map(|d| json!({"parent": d.parent, "child": d.child, "callCount": d.calls}))
                .collect::<Vec<_>>()))
        }
        .await,
    )
}

// ---------------------------------------------------------------------------------------------
// Jaeger v3 (OTLP JSON inside `{result}`)

/// A Jaeger v3 answer or error (`{"error": {httpCode, message}}`).
struct V3(Result<Value, TraceError>);

impl IntoResponse for V3 {
    fn into_response(self) -> Response {
        match self.0 {
            Ok(v) => Json(v).into_response(),
            Err(e @ (TraceError::BadRequest(_) | TraceError::NotFound(_))) => {
                let status = if matches!(e, TraceError::NotFound(_)) {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::BAD_REQUEST
                };
                (
                    status,
                    Json(json!({"error": {"httpCode": status.as_u16(), "message": e.to_string()}})),
                )
                    .into_response()
            }
            Err(e) => ApiError::from(e).into_response(),
        }
    }
}

fn otlp_json(spans: Vec<model::StoredSpan>) -> Result<Value, TraceError> {
    serde_json::to_value(model::to_otlp(spans)).map_err(|e| TraceError::Internal(e.to_string()))
}

/// Services (Jaeger v3).
#[utoipa::path(get, path = "/api/v3/services", tag = "trace",
    responses((status = 200, description = "{services: [..]}"), (status = 401)), security(("bearer" = [])))]
async fn v3_services(State(api): Svc, Bearer(c): Bearer) -> V3 {
    V3(api.services(&c).await.map(|s| json!({"services": s})))
}

/// Operations of a service (Jaeger v3).
#[utoipa::path(get, path = "/api/v3/operations", tag = "trace",
    params(("service" = String, Query), ("span_kind" = Option<String>, Query)),
    responses((status = 200, description = "{operations: [{name, spanKind}]}"), (status = 400), (status = 401)), security(("bearer" = [])))]
async fn v3_operations(State(api): Svc, Bearer(c): Bearer, RawQuery(q): RawQuery) -> V3 {
    V3(
        operations_json(&api, &c, &Params::new(q), "service", "span_kind")
            .await
            .map(|ops| json!({"operations": ops})),
    )
}

fn rfc3339_ns(name: &str, v: Option<&str>) -> Result<Option<i64>, TraceError> {
    v.map(|s| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .ok()
            .and_then(|t| i64::try_from(t.unix_timestamp_nanos()).ok())
            .ok_or_else(|| TraceError::BadRequest(format!("{name} must be an RFC 3339 time")))
    })
    .transpose()
}

/// Searches traces (Jaeger v3): `query.service_name` (required), `query.operation_name`,
/// `query.start_time_min`/`max` (RFC 3339), `query.duration_min`/`max`, `query.search_depth`,
/// `query.attributes` (JSON object).
#[utoipa::path(get, path = "/api/v3/traces", tag = "trace",
    params(("query.service_name" = String, Query), ("query.operation_name" = Option<String>, Query),
           ("query.start_time_min" = Option<String>, Query), ("query.start_time_max" = Option<String>, Query),
           ("query.duration_min" = Option<String>, Query), ("query.duration_max" = Option<String>, Query),
           ("query.search_depth" = Option<i64>, Query), ("query.attributes" = Option<String>, Query)),
    responses((status = 200, description = "{result: TracesData (OTLP JSON)}"), (status = 400), (status = 401)), security(("bearer" = [])))]
async fn v3_search(State(api): Svc, Bearer(c): Bearer, RawQuery(q): RawQuery) -> V3 {
    V3(async {
        let p = Params::new(q);
        let (start, end) = api.window(
            rfc3339_ns("query.start_time_min", p.get("query.start_time_min"))?,
            rfc3339_ns("query.start_time_max", p.get("query.start_time_max"))?,
            None,
        )?;
        let limit = match p.int("query.search_depth")? {
            Some(n) => Some(n),
            None => p.int("query.num_traces")?,
        };
        let query = SearchQuery {
            service: service_param(&p, "query.service_name")?,
            operation: operation_param(&p, "query.operation_name")?,
            tags: tags(&p, "query.attributes", "query.attribute")?,
            start_ns: start,
            end_ns: end,
            min_duration_ns: p.duration("query.duration_min")?,
            max_duration_ns: p.duration("query.duration_max")?,
            limit: limit.unwrap_or(20),
        };
        let (_, spans) = api.search(&c, query).await?;
        Ok(json!({"result": otlp_json(spans)?}))
    }
    .await)
}

/// One trace (Jaeger v3).
#[utoipa::path(get, path = "/api/v3/traces/{trace_id}", tag = "trace",
    params(("trace_id" = String, Path)),
    responses((status = 200, description = "{result: TracesData (OTLP JSON)}"), (status = 404), (status = 401)), security(("bearer" = [])))]
async fn v3_trace(State(api): Svc, Bearer(c): Bearer, Path(id): Path<String>) -> V3 {
    V3(async {
        let id = trace_id(&id)?;
        Ok(json!({"result": otlp_json(api.trace(&c, &id).await?)?}))
    }
    .await)
}

// ---------------------------------------------------------------------------------------------
// Capstan's own

/// One trace as OTLP JSON (`TracesData`); each resource carries `capstan.principal`.
#[utoipa::path(get, path = "/v1/traces/{trace_id}", tag = "trace",
    params(("trace_id" = String, Path)),
    responses((status = 200, description = "TracesData (OTLP JSON)"), (status = 400), (status = 401), (status = 404)), security(("bearer" = [])))]
async fn get_trace(
    State(api): Svc,
    Bearer(c): Bearer,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = trace_id(&id)?;
    Ok(Json(otlp_json(api.trace(&c, &id).await?)?))
}

/// Rate, errors and duration percentiles per operation of a service over a window
/// (`window=1h`, default 1 h, ending now).
#[utoipa::path(get, path = "/v1/trace-metrics", tag = "trace",
    params(("service" = String, Query), ("window" = Option<String>, Query, description = "e.g. 15m, 1h")),
    responses((status = 200, description = "{service, operations: [{operation, requests, errors, error_rate, rate_per_second, p50_ms, p95_ms, p99_ms}]}"),
              (status = 400), (status = 401), (status = 403)), security(("bearer" = [])))]
async fn trace_metrics(
    State(api): Svc,
    Bearer(c): Bearer,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = Params::new(q);
    let service = service_param(&p, "service")?;
    let window = p.duration("window")?.unwrap_or(3_600_000_000_000).max(1);
    let (start, end) = api.window(None, None, Some(window))?;
    Ok(Json(api.red(&c, &service, start, end).await?))
}

#[derive(OpenApi)]
#[openapi(
    paths(export, get_trace, trace_metrics, v1_services, v1_service_operations, v1_operations,
          v1_search, v1_trace, v1_dependencies, v3_services, v3_operations, v3_search, v3_trace),
    modifiers(&BearerScheme),
    tags((name = "trace", description = "OTLP receiver; Jaeger v1/v3 and OTLP queries; RED metrics"))
)]
pub(crate) struct TraceApi;

/// The service's routes.
pub(crate) fn routes(svc: Arc<TraceService>, verifier: Arc<dyn TokenVerifier>) -> Routes {
    RouteList::new()
        .route(RECEIVER_ROUTE, post(export))
        .route("/v1/traces/{trace_id}", get(get_trace))
        .route("/v1/trace-metrics", get(trace_metrics))
        .route("/api/services", get(v1_services))
        .route(
            "/api/services/{service}/operations",
            get(v1_service_operations),
        )
        .route("/api/operations", get(v1_operations))
        .route("/api/traces", get(v1_search))
        .route("/api/traces/{trace_id}", get(v1_trace))
        .route("/api/dependencies", get(v1_dependencies))
        .route("/api/v3/services", get(v3_services))
        .route("/api/v3/operations", get(v3_operations))
        .route("/api/v3/traces", get(v3_search))
        .route("/api/v3/traces/{trace_id}", get(v3_trace))
        .with_state(Api::new(svc, verifier))
}
