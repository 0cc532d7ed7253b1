//! The config service's HTTP API (`/v1/config`), its watch stream and long poll, and its
//! OpenAPI description.
//!
//! Watch (`GET /v1/config/{ns}/{env}/watch`) is Server-Sent Events: `event: reset` (the whole
//! view, first when the watcher gives no revision or one older than the kept log),
//! `event: change` (id = the revision, data = `{revision, changes}`), `: heartbeat` comments,
//! and `event: dropped` before the server ends a stream (the watcher fell too far behind, or
//! the server is stopping): the client resumes with `Last-Event-ID`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use capstan_core::authz::{Caller, TokenVerifier};
use capstan_http::{
    Api, ApiError, ApiResult, Bearer, BearerScheme, BoxError, JsonBody, JsonText, Metric, Path,
    Query, RouteList, Routes, Service,
};
use capstan_proto::config::{
    ConfigSnapshot, ConfigValue, Diff, History, PatchRequest, RollbackRequest, RolloutRequest,
    RolloutView, WatchEvent, WriteResult,
};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use utoipa::OpenApi;

use crate::error::ConfigError;
use crate::hub::{Attached, Update};
use crate::model::{EnvState, Viewer};
use crate::service::ConfigService;
use crate::store::{EnvKey, TOPIC_VALUES};

type Svc = State<Api<ConfigService>>;

fn etag(rev: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{rev}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// A config answer: its revision as the ETag. What it holds depends on who asks (rollouts,
/// masking), so only the caller's own cache may keep it, revalidating by the ETag.
fn with_etag(rev: i64, r: impl IntoResponse) -> Response {
    let mut r = r.into_response();
    let h = r.headers_mut();
    h.insert(header::ETAG, etag(rev));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    h.insert(header::VARY, HeaderValue::from_static("authorization"));
    r
}

fn written(rev: i64) -> Response {
    with_etag(rev, Json(WriteResult { revision: rev }))
}

/// A revision from an `If-Match`, `If-None-Match` or `Last-Event-ID` header: `"5"`, `W/"5"`
/// or `5`. A header that is not one is a 400 (`*` means any revision: `None`).
fn revision_header(headers: &HeaderMap, name: header::HeaderName) -> ApiResult<Option<i64>> {
    let Some(v) = headers.get(&name) else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("").trim();
    if s == "*" {
        return Ok(None);
    }
    let bare = s.trim_start_matches("W/").trim_matches('"');
    bare.parse::<i64>()
        .ok()
        .filter(|r| *r >= 0)
        .map(Some)
        .ok_or_else(|| {
            ApiError::BadRequest(format!("{name} must be a revision (\"5\"), not `{s}`"))
        })
}

/// `30s`, `500ms`, `2m` or plain seconds.
fn parse_wait(s: &str) -> ApiResult<Duration> {
    let bad = || ApiError::BadRequest(format!("wait must be like 30s, 500ms or 2m, not `{s}`"));
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvQuery {
    since: Option<i64>,
    wait: Option<String>,
}

/// Every key of a namespace-environment as the caller sees it (its rollouts resolved, secrets
/// masked unless it may `config:ReadSecret`). With `since`, a long poll: answers once the
/// revision passes `since`, or 304 after `wait` (default 30s, at most the server's maximum).
#[utoipa::path(get, path = "/v1/config/{ns}/{env}", tag = "config",
    params(("ns" = String, Path), ("env" = String, Path),
           ("since" = Option<i64>, Query, description = "Long poll: answer when the revision is greater"),
           ("wait" = Option<String>, Query, description = "Longest wait, e.g. 30s")),
    responses((status = 200, body = ConfigSnapshot), (status = 304, description = "Not newer than since / If-None-Match"),
              (status = 400), (status = 401), (status = 403), (status = 503)),
    security(("bearer" = [])))]
async fn get_env(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path((ns, env)): Path<(String, String)>,
    Query(q): Query<EnvQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Some(since) = q.since else {
        if q.wait.is_some() {
            return Err(ApiError::BadRequest("wait needs since".into()));
        }
        let snap = svc.get_env(&caller, &ns, &env).await?;
        if revision_header(&headers, header::IF_NONE_MATCH)? == Some(snap.revision) {
            return Ok(with_etag(snap.revision, StatusCode::NOT_MODIFIED));
        }
        return Ok(with_etag(snap.revision, Json(snap)));
    };
    let wait = match &q.wait {
        Some(w) => parse_wait(w)?,
        None => Duration::from_secs(30),
    }
    .min(svc.settings().max_wait);
    if since < 0 {
        return Err(ApiError::BadRequest(
            "since must be a revision (≥ 0)".into(),
        ));
    }
    let key = svc.target(&caller, &ns, &env)?;
    let mut stopping = svc.hub().stopping();
    if *stopping.borrow() {
        return Err(ConfigError::Unavailable("the server is stopping".into()).into());
    }
    svc.guard_env_read(&caller, &key).await?;
    // A long poll holds a watcher slot of its principal while it waits.
    let principal = caller.principal.to_string();
    let attached = svc.hub().attach(&key, Some(&principal)).await?;
    let (mut rx, rev, _) = attached.env().subscribe(false);
    if rev > since {
        let (_, _, state) = attached.env().subscribe(true);
        let state = state.unwrap_or_default();
        let snap = svc.view_for(&caller, &key, &state).await?;
        return Ok(with_etag(snap.revision, Json(snap)));
    }
    let newer = tokio::time::timeout(wait, async {
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(u) if u.revision() > since => return true,
                    Ok(_) => {}
                    // Fell behind: something newer certainly arrived.
                    Err(RecvError::Lagged(_)) => return true,
                    Err(RecvError::Closed) => return false,
                },
                _ = async { stopping.wait_for(|s| *s).await.map(|_| ()) } => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    let (_, rev, state) = attached.env().subscribe(true);
    if newer && rev > since {
        let state = state.unwrap_or_default();
        let snap = svc.view_for(&caller, &key, &state).await?;
        return Ok(with_etag(snap.revision, Json(snap)));
    }
    Ok(with_etag(rev, StatusCode::NOT_MODIFIED))
}

/// One key as the caller sees it.
#[utoipa::path(get, path = "/v1/config/{ns}/{env}/{key}", tag = "config",
    params(("ns" = String, Path), ("env" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = ConfigValue), (status = 400), (status = 401), (status = 403), (status = 404)),
    security(("bearer" = [])))]
async fn get_key(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path((ns, env, key)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let v = svc.get_key(&caller, &ns, &env, &key).await?;
    Ok(with_etag(v.revision, Json(v)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutQuery {
    #[serde(default)]
    secret: bool,
}

/// Set a key (the body is its JSON value). `If-Match: "<revision>"` makes it a
/// compare-and-set (409 when the revision moved); `?secret=true` stores it sealed.
#[utoipa::path(put, path = "/v1/config/{ns}/{env}/{key}", tag = "config",
    params(("ns" = String, Path), ("env" = String, Path), ("key" = String, Path),
           ("secret" = Option<bool>, Query, description = "Store as a secret"),
           ("If-Match" = Option<String>, Header, description = "Expected revision")),
    request_body = Object,
    responses((status = 200, body = WriteResult), (status = 400), (status = 401), (status = 403), (status = 409), (status = 422)),
    security(("bearer" = [])))]
async fn put_key(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path((ns, env, key)): Path<(String, String, String)>,
    Query(q): Query<PutQuery>,
    headers: HeaderMap,
    JsonText(text): JsonText,
) -> ApiResult<Response> {
    // Any JSON value, not only an object: a key holds `5`, `"text"` or `[…]` as well.
    let value: Value = capstan_http::body::parse_json(text.as_bytes())?;
    let if_match = revision_header(&headers, header::IF_MATCH)?;
    let rev = svc
        .put(&caller, &ns, &env, &key, value, q.secret, if_match)
        .await?;
    Ok(written(rev))
}

/// Delete a key (`If-Match` as for PUT).
#[utoipa::path(delete, path = "/v1/config/{ns}/{env}/{key}", tag = "config",
    params(("ns" = String, Path), ("env" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = WriteResult), (status = 401), (status = 403), (status = 404), (status = 409)),
    security(("bearer" = [])))]
async fn delete_key(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path((ns, env, key)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let if_match = revision_header(&headers, header::IF_MATCH)?;
    Ok(written(
        svc.delete(&caller, &ns, &env, &key, if_match).await?,
    ))
}

/// Set and delete keys atomically, in one revision.
#[utoipa::path(patch, path = "/v1/config/{ns}/{env}", tag = "config", request_body = PatchRequest,
    params(("ns" = String, Path), ("env" = String, Path)),
    responses((status = 200, body = WriteResult), (status = 400), (status = 401), (status = 403), (status = 409), (status = 422)),
    security(("bearer" = [])))]
async fn patch_env(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path((ns, env)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(mut req): JsonBody<PatchRequest>,
) -> ApiResult<Response> {
    if let Some(m) = revision_header(&headers, header::IF_MATCH)? {
        req.expect_revision.get_or_insert(m);
    }
    Ok(written(svc.patch(&caller, &ns, &env, req).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<i64>,
    before: Option<i64>,
}

/// Revisions, newest first: who, when, which keys.
#[utoipa::path(get, path = "/v1/config/{ns}/{env}/history", tag = "config",
    params(("ns" = String, Path), ("env" = String, Path),
           ("limit" = Option<i64>, Query, description = "1-1000, default 50"),
           ("before" = Option<i64>, Query, description = "Only revisions below this")),
    responses((status = 200, body = History), (status = 401), (status = 403)),
    security(("bearer" = [])))]
async fn history(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path((ns, env)): Path<(String, String)>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Json<History>> {
    Ok(Json(
        svc.history(&caller, &ns, &env, q.limit, q.before).await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffQuery {
    from: i64,
    to: Option<i64>,
}

/// The base keys that differ between two revisions (`to` defaults to the current one).
#[utoipa::path(get, path = "/v1/config/{ns}/{env}/diff", tag = "config",
    params(("ns" = String, Path), ("env" = String, Path), ("from" = i64, Query), ("to" = Option<i64>, Query)),
    responses((status = 200, body = Diff), (status = 401), (status = 403), (status = 404)),
    security(("bearer" = [])))]
async fn diff(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path((ns, env)): Path<(String, String)>,
    Query(q): Query<DiffQuery>,
) -> ApiResult<Json<Diff>> {
    Ok(Json(svc.diff(&caller, &ns, &env, q.from, q.to).await?))
}

/// Make a new revision whose base values equal those of `to_revision`.
#[utoipa::path(post, path = "/v1/config/{ns}/{env}/rollback", tag = "config", request_body = RollbackRequest,
    params(("ns" = String, Path), ("env" = String, Path)),
    responses((status = 200, body = WriteResult), (status = 401), (status = 403), (status = 404), (status = 422)),
    security(("bearer" = [])))]
async fn rollback(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path((ns, env)): Path<(String, String)>,
    JsonBody(req): JsonBody<RollbackRequest>,
) -> ApiResult<Response> {
    Ok(written(
        svc.rollback(&caller, &ns, &env, req.to_revision).await?,
    ))
}

/// The namespace's JSON Schema.
#[utoipa::path(get, path = "/v1/config/{ns}/schema", tag = "config",
    params(("ns" = String, Path)),
    responses((status = 200, body = Object), (status = 401), (status = 403), (status = 404)),
    security(("bearer" = [])))]
async fn get_schema(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path(ns): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(svc.get_schema(&caller, &ns).await?))
}

/// Set the namespace's JSON Schema (draft 2020-12): every environment's values must satisfy
/// it (422 otherwise, now and on every later write). `"x-capstan-secret": true` on a property
/// makes that key a secret.
#[utoipa::path(put, path = "/v1/config/{ns}/schema", tag = "config", request_body = Object,
    params(("ns" = String, Path)),
    responses((status = 200, body = Object), (status = 400), (status = 401), (status = 403), (status = 422)),
    security(("bearer" = [])))]
async fn put_schema(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path(ns): Path<String>,
    JsonBody(schema): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    svc.put_schema(&caller, &ns, schema).await?;
    Ok(Json(json!({ "namespace": ns })))
}

/// Drop the namespace's schema.
#[utoipa::path(delete, path = "/v1/config/{ns}/schema", tag = "config",
    params(("ns" = String, Path)),
    responses((status = 204), (status = 401), (status = 403), (status = 404)),
    security(("bearer" = [])))]
async fn delete_schema(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path(ns): Path<String>,
) -> ApiResult<StatusCode> {
    svc.delete_schema(&caller, &ns).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The environment's rollouts.
#[utoipa::path(get, path = "/v1/config/{ns}/{env}/rollouts", tag = "config",
    params(("ns" = String, Path), ("env" = String, Path)),
    responses((status = 200, body = Vec<RolloutView>), (status = 401), (status = 403)),
    security(("bearer" = [])))]
async fn list_rollouts(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path((ns, env)): Path<(String, String)>,
) -> ApiResult<Json<Vec<RolloutView>>> {
    Ok(Json(svc.list_rollouts(&caller, &ns, &env).await?))
}

/// One rollout.
#[utoipa::path(get, path = "/v1/config/{ns}/{env}/rollouts/{name}", tag = "config",
    params(("ns" = String, Path), ("env" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = RolloutView), (status = 401), (status = 403), (status = 404)),
    security(("bearer" = [])))]
async fn get_rollout(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path((ns, env, name)): Path<(String, String, String)>,
) -> ApiResult<Json<RolloutView>> {
    Ok(Json(svc.get_rollout(&caller, &ns, &env, &name).await?))
}

/// Create or replace a rollout: principals it matches (by tags, ids or a stable percentage)
/// see its values instead of the base ones, in reads and watches.
#[utoipa::path(put, path = "/v1/config/{ns}/{env}/rollouts/{name}", tag = "config", request_body = RolloutRequest,
    params(("ns" = String, Path), ("env" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = RolloutView), (status = 400), (status = 401), (status = 403), (status = 422)),
    security(("bearer" = [])))]
async fn put_rollout(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path((ns, env, name)): Path<(String, String, String)>,
    JsonBody(req): JsonBody<RolloutRequest>,
) -> ApiResult<Response> {
    let v = svc.put_rollout(&caller, &ns, &env, &name, req).await?;
    Ok(with_etag(v.revision, Json(v)))
}

/// Merge a rollout's values into the base (a new revision) and drop it.
#[utoipa::path(post, path = "/v1/config/{ns}/{env}/rollouts/{name}/promote", tag = "config",
    params(("ns" = String, Path), ("env" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = WriteResult), (status = 401), (status = 403), (status = 404), (status = 422)),
    security(("bearer" = [])))]
async fn promote(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path((ns, env, name)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    Ok(written(
        svc.end_rollout(&caller, &ns, &env, &name, true).await?,
    ))
}

/// Drop a rollout: everyone sees the base values again.
#[utoipa::path(post, path = "/v1/config/{ns}/{env}/rollouts/{name}/abort", tag = "config",
    params(("ns" = String, Path), ("env" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = WriteResult), (status = 401), (status = 403), (status = 404)),
    security(("bearer" = [])))]
async fn abort(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path((ns, env, name)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    Ok(written(
        svc.end_rollout(&caller, &ns, &env, &name, false).await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    since: Option<i64>,
}

/// One Server-Sent Event, encoded: `event:`, `id:` (when given) and one `data:` line. The data
/// is compact JSON, which has no line breaks (they are escaped inside strings).
fn sse_event(kind: &str, id: Option<i64>, data: &impl serde::Serialize) -> Bytes {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    if let Some(id) = id {
        out.extend_from_slice(format!("\nid: {id}").as_bytes());
    }
    out.extend_from_slice(b"\ndata: ");
    if serde_json::to_writer(&mut out, data).is_err() {
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn reset_event(snap: &ConfigSnapshot) -> Bytes {
    sse_event("reset", Some(snap.revision), snap)
}

fn change_event(ev: &WatchEvent) -> Bytes {
    sse_event("change", Some(ev.revision), ev)
}

fn dropped_event(reason: &str, revision: i64) -> Bytes {
    sse_event(
        "dropped",
        None,
        &json!({"reason": reason, "revision": revision}),
    )
}

/// The comment that keeps idle streams open through proxies.
const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// One watcher's stream.
///
/// A change wakes thousands of these at once, so what each waits on besides the broadcast is
/// made once and kept: one timer for its heartbeat, its permission recheck and its token's
/// expiry (whichever is due first), and one wait for the server to stop. Timers and `Notify`
/// waits made and dropped on every event were a tenth of the server's CPU per change.
struct Watch {
    _attached: Attached,
    rx: tokio::sync::broadcast::Receiver<Arc<Update>>,
    /// Resolves when the server begins to stop (or the hub is gone).
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Fires at the earliest of the three instants below.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// When the next `: heartbeat` comment is due (events or not, so proxies keep the stream).
    heartbeat_at: tokio::time::Instant,
    /// When the caller's permissions are checked again.
    recheck_at: tokio::time::Instant,
    /// When the caller's access token expires.
    expires_at: Option<tokio::time::Instant>,
    pending: VecDeque<Bytes>,
    viewer: Viewer,
    cursor: i64,
    done: bool,
    svc: Arc<ConfigService>,
    caller: Caller,
    key: EnvKey,
}

impl Watch {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            tokio::select! {
                r = self.rx.recv() => match r {
                    Ok(u) => match u.as_ref() {
                        Update::Next(p, shared) if p.revision > self.cursor => {
                            self.cursor = p.revision;
                            let Some(kinds) = shared else {
                                return Some(change_event(&p.view(&self.viewer)));
                            };
                            let kind = &kinds[usize::from(self.viewer.read_secrets)];
                            let e = kind.get_or_init(|| change_event(&p.view(&self.viewer)));
                            return Some(e.clone());
                        }
                        Update::Next(..) => {}
                        Update::Reset(s) => {
                            self.cursor = s.revision;
                            return Some(reset_event(&s.view(&self.viewer)));
                        }
                    },
                    Err(RecvError::Lagged(_)) => {
                        self.done = true;
                        self.svc.hub().dropped.fetch_add(1, Ordering::Relaxed);
                        return Some(dropped_event(
                            "the watcher fell too far behind; resume with Last-Event-ID",
                            self.cursor,
                        ));
                    }
                    Err(RecvError::Closed) => return None,
                },
                () = &mut self.timer => {
                    if let Some(e) = self.on_timer().await {
                        return Some(e);
                    }
                }
                () = &mut self.stopping => {
                    self.done = true;
                    return Some(dropped_event(
                        "the server is stopping; resume on another replica with Last-Event-ID",
                        self.cursor,
                    ));
                }
            }
        }
    }

    /// When the timer must fire next: the earliest of heartbeat, recheck and token expiry.
    fn due(&self) -> tokio::time::Instant {
        let next = self.heartbeat_at.min(self.recheck_at);
        self.expires_at.map_or(next, |at| next.min(at))
    }

    /// The timer fired: end the stream if the token expired, recheck the caller's permissions
    /// if due, send a heartbeat if due, and set the timer to what comes next.
    async fn on_timer(&mut self) -> Option<Bytes> {
        let now = tokio::time::Instant::now();
        if self.expires_at.is_some_and(|at| at <= now) {
            self.done = true;
            return Some(dropped_event(
                "the access token expired; reconnect with a new one and Last-Event-ID",
                self.cursor,
            ));
        }
        let mut out = None;
        if self.recheck_at <= now {
            self.recheck_at = now + self.svc.settings().reauthorize;
            match self.svc.recheck_watch(&self.caller, &self.key).await {
                Ok(Some(read_secrets)) => self.viewer.read_secrets = read_secrets,
                Ok(None) => {
                    self.done = true;
                    return Some(dropped_event(
                        "the caller may no longer watch this environment",
                        self.cursor,
                    ));
                }
                // No decision now (storage down): keep serving from memory.
                Err(_) => {}
            }
        }
        if self.heartbeat_at <= now {
            self.heartbeat_at = now + self.svc.settings().heartbeat;
            out = Some(Bytes::from_static(HEARTBEAT));
        }
        let next = self.due();
        self.timer.as_mut().reset(next);
        out
    }
}

/// The events that bring a watcher from `since` to `state` (the attached state it subscribed
/// at): the log's revisions in between, or a reset when the log no longer reaches back (or the
/// gap is larger than replaying is worth).
async fn catch_up_events(
    svc: &ConfigService,
    key: &EnvKey,
    state: &EnvState,
    since: Option<i64>,
    viewer: &Viewer,
) -> Result<(VecDeque<Bytes>, i64), ConfigError> {
    let mut out = VecDeque::new();
    let rev = state.revision;
    let since = match since {
        Some(s) if s >= rev => return Ok((out, s)),
        Some(s) if rev - s <= svc.settings().watch_buffer as i64 * 4 => s,
        _ => {
            out.push_back(reset_event(&state.view(viewer)));
            return Ok((out, rev));
        }
    };
    let rows = match svc.store().log_after(key, since, rev - since).await {
        Ok(rows) => rows,
        // Storage down: what is in memory still serves, as a reset.
        Err(e) if e.is_unavailable() => {
            out.push_back(reset_event(&state.view(viewer)));
            return Ok((out, rev));
        }
        Err(e) => return Err(e.into()),
    };
    let mut log = Vec::with_capacity(rows.len());
    for r in rows.iter().filter(|r| r.revision <= rev) {
        log.push(svc.codec().revision(key, r)?);
    }
    match state.at(since, &log) {
        Some(mut s) => {
            for r in &log {
                out.push_back(change_event(&s.apply(r).view(viewer)));
            }
        }
        None => out.push_back(reset_event(&state.view(viewer))),
    }
    Ok((out, rev))
}

/// Watch a namespace-environment: Server-Sent Events from `since` (or `Last-Event-ID`), or a
/// `reset` with everything first when neither is given or the revision was compacted away.
#[utoipa::path(get, path = "/v1/config/{ns}/{env}/watch", tag = "config",
    params(("ns" = String, Path), ("env" = String, Path),
           ("since" = Option<i64>, Query, description = "Resume after this revision"),
           ("Last-Event-ID" = Option<String>, Header, description = "Resume after this revision")),
    responses((status = 200, description = "text/event-stream of reset, change and dropped events", content_type = "text/event-stream"),
              (status = 401), (status = 403), (status = 429)),
    security(("bearer" = [])))]
async fn watch(
    State(svc): Svc,
    Bearer(caller): Bearer,
    Path((ns, env)): Path<(String, String)>,
    Query(q): Query<WatchQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let key = svc.target(&caller, &ns, &env)?;
    let last = revision_header(&headers, header::HeaderName::from_static("last-event-id"))?;
    let since = last.or(q.since);
    if since.is_some_and(|s| s < 0) {
        return Err(ApiError::BadRequest(
            "since must be a revision (≥ 0)".into(),
        ));
    }
    // Taken first: a stop that begins while this request is set up still ends its stream.
    let mut stopping = svc.hub().stopping();
    if *stopping.borrow() {
        return Err(ConfigError::Unavailable("the server is stopping".into()).into());
    }
    svc.guard_watch(&caller, &key).await?;
    let viewer = svc.watch_viewer(&caller, &key).await?;
    let principal = caller.principal.to_string();
    let attached = svc.hub().attach(&key, Some(&principal)).await?;
    let (rx, _, state) = attached.env().subscribe(true);
    let state = state.unwrap_or_default();
    let (pending, cursor) = catch_up_events(&svc, &key, &state, since, &viewer).await?;
    drop(state);
    let now = tokio::time::Instant::now();
    let expires_at = caller.expires_at.map(|exp| {
        let left = u64::try_from(exp.saturating_sub(svc.now())).unwrap_or(0);
        now + Duration::from_secs(left)
    });
    let heartbeat_at = now + svc.settings().heartbeat;
    let mut w = Box::new(Watch {
        _attached: attached,
        rx,
        // A dropped sender (the hub is gone) ends the stream too.
        stopping: Box::pin(async move {
            let _ = stopping.wait_for(|s| *s).await;
        }),
        timer: Box::pin(tokio::time::sleep_until(heartbeat_at)),
        heartbeat_at,
        recheck_at: now + svc.settings().reauthorize,
        expires_at,
        pending,
        viewer,
        cursor,
        done: false,
        svc: svc.svc.clone(),
        caller,
        key,
    });
    let first = w.due();
    w.timer.as_mut().reset(first);
    // Boxed: `unfold` moves its state in and out on every event.
    let events = stream::unfold(w, |mut w| async move {
        let e = w.next().await?;
        Some((Ok::<Bytes, Infallible>(e), w))
    });
    // Events are encoded here (shared by watchers that see a revision alike), so the body is
    // the encoded bytes as they are, not axum's `Sse` re-encoding each one.
    let mut r = Response::new(Body::from_stream(events));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies must not buffer the stream (nginx honours this header).
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}

#[derive(OpenApi)]
#[openapi(
    paths(get_env, patch_env, get_key, put_key, delete_key, history, diff, rollback, watch,
          get_schema, put_schema, delete_schema, list_rollouts, get_rollout, put_rollout,
          promote, abort),
    components(schemas(ConfigSnapshot, ConfigValue, WriteResult, PatchRequest, History,
                        capstan_proto::config::HistoryEntry, Diff, capstan_proto::config::DiffEntry,
                        RollbackRequest, WatchEvent, capstan_proto::config::KeyChange,
                        RolloutRequest, RolloutView, capstan_proto::config::RolloutMatch)),
    modifiers(&BearerScheme),
    tags((name = "config", description = "Dynamic configuration: values, history, schemas, rollouts, watch"))
)]
struct ConfigApi;

#[async_trait::async_trait]
impl Service for ConfigService {
    fn name(&self) -> &'static str {
        "config"
    }

    fn routes(self: Arc<Self>, verifier: Arc<dyn TokenVerifier>) -> Routes {
        RouteList::new()
            .route(
                "/v1/config/{ns}/schema",
                get(get_schema).put(put_schema).delete(delete_schema),
            )
            .route("/v1/config/{ns}/{env}", get(get_env).patch(patch_env))
            .route("/v1/config/{ns}/{env}/watch", get(watch))
            .route("/v1/config/{ns}/{env}/history", get(history))
            .route("/v1/config/{ns}/{env}/diff", get(diff))
            .route("/v1/config/{ns}/{env}/rollback", post(rollback))
            .route("/v1/config/{ns}/{env}/rollouts", get(list_rollouts))
            .route(
                "/v1/config/{ns}/{env}/rollouts/{name}",
                get(get_rollout).put(put_rollout),
            )
            .route(
                "/v1/config/{ns}/{env}/rollouts/{name}/promote",
                post(promote),
            )
            .route("/v1/config/{ns}/{env}/rollouts/{name}/abort", post(abort))
            .route(
                "/v1/config/{ns}/{env}/{key}",
                get(get_key).put(put_key).delete(delete_key),
            )
            .with_state(Api::new(self, verifier))
    }

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        ConfigApi::openapi()
    }

    fn topics(&self) -> &[&'static str] {
        &[TOPIC_VALUES]
    }

    fn on_change(&self, change: &capstan_db::Change) {
        if let Some(key) = EnvKey::from_feed(&change.tenant, &change.key) {
            self.hub().changed(key);
        }
    }

    fn long_poll_routes(&self) -> &[&'static str] {
        &["/v1/config/{ns}/{env}"]
    }

    async fn start(self: Arc<Self>) -> Result<Vec<tokio::task::JoinHandle<()>>, BoxError> {
        Ok(vec![tokio::spawn(self.hub().clone().run())])
    }

    async fn housekeeping(&self) -> Result<(), BoxError> {
        let n = self.compact().await?;
        if n > 0 {
            tracing::debug!(rows = n, "config: change log compacted");
        }
        Ok(())
    }

    fn draining(&self) {
        self.hub().stop();
    }

    async fn stop(&self) {
        self.hub().stop();
    }

    fn metrics(&self) -> Vec<Metric> {
        let hub = self.hub();
        vec![
            Metric::gauge(
                "capstan_config_watchers",
                "Config watch streams open on this server.",
                hub.watchers() as f64,
            ),
            Metric::gauge(
                "capstan_config_environments_attached",
                "Namespace-environments with watchers or long polls on this server.",
                hub.attached() as f64,
            ),
            Metric::counter(
                "capstan_config_fanout_reads_total",
                "Change-log reads made to fan changes out (one per change per server).",
                hub.reads.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "capstan_config_watchers_dropped_total",
                "Watchers dropped for falling too far behind.",
                hub.dropped.load(Ordering::Relaxed),
            ),
        ]
    }
}
