//! Dynamic config from Capstan (`/v1/config/{ns}/{env}`).
//!
//! - [`ConfigWatcher`]: a service's live view of one namespace-environment. It follows the
//!   watch stream (server-sent events), keeps the values in memory, resumes after any
//!   disconnect from the last revision it saw, and can keep a local snapshot file that it
//!   serves when Capstan is unreachable at start.
//! - [`ConfigClient`]: the rest of the API, typed with [`capstan_proto::config`]: reads,
//!   conditional writes, atomic patches, history, diffs, rollbacks, schemas and rollouts (the
//!   CLI's client).
//! - [`ConfigEvents`]: the watch stream itself, for callers that want every event.
//!
//! ```no_run
//! # async fn demo(api: capstan_sdk::ApiClient) -> Result<(), capstan_sdk::Error> {
//! use capstan_sdk::config::ConfigClient;
//! let watcher = ConfigClient::new(api)
//!     .watcher("payments", "prod")
//!     .snapshot_file("/var/lib/payments/config.json")
//!     .on_change(|event| tracing::info!(revision = event.revision, "config changed"))
//!     .start()
//!     .await?;
//! let timeout_ms: u64 = watcher.get("timeout_ms")?.unwrap_or(250);
//! # let _ = timeout_ms; Ok(()) }
//! ```
//!
//! Namespaces and environments are 1-64 of `[A-Za-z0-9._-]`, keys 1-256 of `[A-Za-z0-9._:-]`;
//! the server checks them (a 400 says which is wrong), the SDK percent-encodes whatever it is
//! given.

mod apply;
mod backoff;
mod events;
mod snapshot_file;
mod sse;
#[cfg(test)]
mod tests;
mod watcher;

use std::time::Duration;

use capstan_proto::config::{
    ConfigSnapshot, ConfigValue, Diff, History, PatchRequest, RollbackRequest, RolloutRequest,
    RolloutView, WriteResult,
};
use reqwest::header::IF_MATCH;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use backoff::Backoff;
pub use events::{ConfigEvent, ConfigEvents, DEFAULT_IDLE_TIMEOUT};
pub use sse::{SseEvent, SseParser};
pub use watcher::{ConfigWatcher, ConfigWatcherBuilder, DEFAULT_START_TIMEOUT};

use crate::api::{segment, to_body, ApiClient};
use crate::transport::read_json;
use crate::Error;

/// `/v1/config/{ns}/{env}`.
fn env_path(ns: &str, env: &str) -> String {
    format!("/v1/config/{}/{}", segment(ns), segment(env))
}

/// How a single-key write is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Store the value as a secret (masked for readers without `config:ReadSecret`).
    pub secret: bool,
    /// Write only if the namespace-environment is still at this revision (else a 409).
    pub if_match: Option<i64>,
}

/// The config API, typed. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConfigClient {
    api: ApiClient,
}

impl ConfigClient {
    /// A client calling as `api`'s principal.
    pub fn new(api: ApiClient) -> ConfigClient {
        ConfigClient { api }
    }

    /// The API client underneath.
    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    /// A watcher of `ns`/`env`, to configure and [`start`](ConfigWatcherBuilder::start).
    pub fn watcher(&self, ns: &str, env: &str) -> ConfigWatcherBuilder {
        ConfigWatcherBuilder::new(self.clone(), ns, env)
    }

    /// The watch stream of `ns`/`env` after revision `since` (`None`: everything first).
    pub fn events(&self, ns: &str, env: &str, since: Option<i64>) -> ConfigEvents {
        ConfigEvents::new(self.api.clone(), ns, env, since)
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<T, Error> {
        let v = self.api.call(method, path, query, body).await?;
        serde_json::from_value(v).map_err(|e| Error::Protocol(format!("{path}: {e}")))
    }

    /// Every key of `ns`/`env` as the caller sees it (rollouts that match it applied; secrets
    /// it may not read masked).
    pub async fn snapshot(&self, ns: &str, env: &str) -> Result<ConfigSnapshot, Error> {
        self.json(Method::GET, &env_path(ns, env), &[], None).await
    }

    /// Long poll: the snapshot once the revision is past `since`, or `None` when `wait` (at
    /// most 60 s) passes first.
    pub async fn poll(
        &self,
        ns: &str,
        env: &str,
        since: i64,
        wait: Duration,
    ) -> Result<Option<ConfigSnapshot>, Error> {
        let path = env_path(ns, env);
        let query = [
            ("since", since.to_string()),
            ("wait", format!("{}ms", wait.as_millis())),
        ];
        let resp = self
            .api
            .request(Method::GET, &path, |b| {
                b.query(&query).timeout(wait + Duration::from_secs(10))
            })
            .await?;
        if resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        let v = read_json(resp).await?;
        serde_json::from_value(v)
            .map(Some)
            .map_err(|e| Error::Protocol(format!("{path}: {e}")))
    }

    /// One key (an [`Error::Api`] 404 when it does not exist).
    pub async fn get(&self, ns: &str, env: &str, key: &str) -> Result<ConfigValue, Error> {
        let path = format!("{}/{}", env_path(ns, env), segment(key));
        self.json(Method::GET, &path, &[], None).await
    }

    /// Sets one key to `value`.
    pub async fn put(
        &self,
        ns: &str,
        env: &str,
        key: &str,
        value: &Value,
        opts: PutOptions,
    ) -> Result<WriteResult, Error> {
        let path = format!("{}/{}", env_path(ns, env), segment(key));
        let query: Vec<(&str, String)> = if opts.secret {
            vec![("secret", "true".into())]
        } else {
            Vec::new()
        };
        self.conditional(Method::PUT, &path, &query, Some(value), opts.if_match)
            .await
    }

    /// Deletes one key (only at revision `if_match`, when given).
    pub async fn delete(
        &self,
        ns: &str,
        env: &str,
        key: &str,
        if_match: Option<i64>,
    ) -> Result<WriteResult, Error> {
        let path = format!("{}/{}", env_path(ns, env), segment(key));
        self.conditional(Method::DELETE, &path, &[], None, if_match)
            .await
    }

    async fn conditional(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        if_match: Option<i64>,
    ) -> Result<WriteResult, Error> {
        let resp = self
            .api
            .request(method, path, |mut b| {
                if !query.is_empty() {
                    b = b.query(query);
                }
                if let Some(r) = if_match {
                    b = b.header(IF_MATCH, format!("\"{r}\""));
                }
                if let Some(v) = body {
                    b = b.json(v);
                }
                b
            })
            .await?;
        let v = read_json(resp).await?;
        serde_json::from_value(v).map_err(|e| Error::Protocol(format!("{path}: {e}")))
    }

    /// Sets and deletes keys in one revision.
    pub async fn patch(
        &self,
        ns: &str,
        env: &str,
        patch: &PatchRequest,
    ) -> Result<WriteResult, Error> {
        let body = to_body(patch)?;
        self.json(Method::PATCH, &env_path(ns, env), &[], Some(&body))
            .await
    }

    /// Revisions, newest first: at most `limit`, older than `before` when given.
    pub async fn history(
        &self,
        ns: &str,
        env: &str,
        limit: Option<i64>,
        before: Option<i64>,
    ) -> Result<History, Error> {
        let mut q = Vec::new();
        if let Some(l) = limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(b) = before {
            q.push(("before", b.to_string()));
        }
        let path = format!("{}/history", env_path(ns, env));
        self.json(Method::GET, &path, &q, None).await
    }

    /// The base keys that differ between revisions `from` and `to`.
    pub async fn diff(&self, ns: &str, env: &str, from: i64, to: i64) -> Result<Diff, Error> {
        let q = [("from", from.to_string()), ("to", to.to_string())];
        let path = format!("{}/diff", env_path(ns, env));
        self.json(Method::GET, &path, &q, None).await
    }

    /// A new revision with the base values of revision `to`.
    pub async fn rollback(&self, ns: &str, env: &str, to: i64) -> Result<WriteResult, Error> {
        let body = to_body(&RollbackRequest { to_revision: to })?;
        let path = format!("{}/rollback", env_path(ns, env));
        self.json(Method::POST, &path, &[], Some(&body)).await
    }

    fn schema_path(ns: &str) -> String {
        format!("/v1/config/{}/schema", segment(ns))
    }

    /// The JSON Schema that every value written to `ns` must satisfy (404 when none).
    pub async fn schema(&self, ns: &str) -> Result<Value, Error> {
        self.api
            .call(Method::GET, &Self::schema_path(ns), &[], None)
            .await
    }

    /// Sets `ns`'s JSON Schema; writes that violate it are refused with a 422 listing where.
    pub async fn put_schema(&self, ns: &str, schema: &Value) -> Result<(), Error> {
        self.api
            .call(Method::PUT, &Self::schema_path(ns), &[], Some(schema))
            .await
            .map(drop)
    }

    /// Removes `ns`'s JSON Schema.
    pub async fn delete_schema(&self, ns: &str) -> Result<(), Error> {
        self.api
            .call(Method::DELETE, &Self::schema_path(ns), &[], None)
            .await
            .map(drop)
    }

    fn rollout_path(ns: &str, env: &str, name: Option<&str>) -> String {
        let base = format!("{}/rollouts", env_path(ns, env));
        match name {
            Some(n) => format!("{base}/{}", segment(n)),
            None => base,
        }
    }

    /// The rollouts of `ns`/`env`.
    pub async fn rollouts(&self, ns: &str, env: &str) -> Result<Vec<RolloutView>, Error> {
        self.json(Method::GET, &Self::rollout_path(ns, env, None), &[], None)
            .await
    }

    /// One rollout.
    pub async fn rollout(&self, ns: &str, env: &str, name: &str) -> Result<RolloutView, Error> {
        self.json(
            Method::GET,
            &Self::rollout_path(ns, env, Some(name)),
            &[],
            None,
        )
        .await
    }

    /// Creates or replaces a rollout: the principals it matches see its values instead of the
    /// base ones.
    pub async fn put_rollout(
        &self,
        ns: &str,
        env: &str,
        name: &str,
        rollout: &RolloutRequest,
    ) -> Result<RolloutView, Error> {
        let body = to_body(rollout)?;
        let path = Self::rollout_path(ns, env, Some(name));
        self.json(Method::PUT, &path, &[], Some(&body)).await
    }

    /// Makes a rollout's values the base values for everyone, and ends it.
    pub async fn promote_rollout(
        &self,
        ns: &str,
        env: &str,
        name: &str,
    ) -> Result<WriteResult, Error> {
        let path = format!("{}/promote", Self::rollout_path(ns, env, Some(name)));
        self.json(Method::POST, &path, &[], None).await
    }

    /// Ends a rollout; its principals see the base values again.
    pub async fn abort_rollout(
        &self,
        ns: &str,
        env: &str,
        name: &str,
    ) -> Result<WriteResult, Error> {
        let path = format!("{}/abort", Self::rollout_path(ns, env, Some(name)));
        self.json(Method::POST, &path, &[], None).await
    }
}
