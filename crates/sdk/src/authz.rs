//! Decisions from Capstan's policy engine (`/v1/authorize` and `:batch`), with an optional
//! small cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use capstan_core::clock::{Clock, SystemClock, UnixTime};
pub use capstan_proto::policy::{AuthorizeRequest, AuthorizeResponse, ContextValue};
use capstan_proto::policy::{BatchRequest, BatchResponse};
use reqwest::Method;

use crate::api::{to_body, ApiClient};
use crate::transport::read_json;
use crate::Error;

struct Cache {
    ttl: i64,
    capacity: usize,
    entries: Mutex<HashMap<String, (UnixTime, AuthorizeResponse)>>,
}

/// Asks Capstan for decisions. The caller needs `policy:Authorize` on
/// `crn:capstan:policy:<tenant>:authorizer`. Cheap to clone.
#[derive(Clone)]
pub struct Authorizer {
    api: ApiClient,
    clock: Arc<dyn Clock>,
    cache: Option<Arc<Cache>>,
}

impl Authorizer {
    /// An authorizer over `api` (whose credentials are the asking service's).
    pub fn new(api: ApiClient) -> Authorizer {
        Authorizer {
            api,
            clock: Arc::new(SystemClock),
            cache: None,
        }
    }

    /// Keeps decisions for `ttl_seconds`, at most `capacity` of them. A cached decision does
    /// not see policy changes made meanwhile: keep the TTL short (a few seconds).
    pub fn with_cache(mut self, ttl_seconds: i64, capacity: usize) -> Authorizer {
        self.cache = Some(Arc::new(Cache {
            ttl: ttl_seconds.max(0),
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }));
        self
    }

    /// The clock the cache uses.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Authorizer {
        self.clock = clock;
        self
    }

    /// One decision.
    pub async fn authorize(&self, req: AuthorizeRequest) -> Result<AuthorizeResponse, Error> {
        self.authorize_traced(req, None).await
    }

    /// One decision made for a request that carries a W3C `traceparent`: Capstan records the
    /// trace id with the decision, so `GET /v1/decisions?trace_id=` (and `capstanctl decisions
    /// --trace-id`) finds it. A header that is not a valid `traceparent` is not sent. A decision
    /// served from the cache is not asked for again, so it is not recorded again either.
    pub async fn authorize_traced(
        &self,
        req: AuthorizeRequest,
        traceparent: Option<&str>,
    ) -> Result<AuthorizeResponse, Error> {
        let traceparent = traceparent
            .map(str::trim)
            .filter(|t| capstan_core::trace_context::parse_traceparent(t).is_some());
        let body = to_body(&req)?;
        let key = self.cache.as_ref().map(|_| body.to_string());
        if let (Some(cache), Some(k)) = (&self.cache, &key) {
            let now = self.clock.now();
            let hit = cache
                .entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(k)
                .filter(|(exp, _)| now < *exp)
                .map(|(_, d)| d.clone());
            if let Some(d) = hit {
                return Ok(d);
            }
        }
        let resp = self
            .api
            .request(Method::POST, "/v1/authorize", |mut b| {
                if let Some(t) = traceparent {
                    b = b.header("traceparent", t);
                }
                b.json(&body)
            })
            .await?;
        let d: AuthorizeResponse = serde_json::from_value(read_json(resp).await?)
            .map_err(|e| Error::Protocol(format!("/v1/authorize: {e}")))?;
        if let (Some(cache), Some(k)) = (&self.cache, key) {
            let now = self.clock.now();
            let mut entries = cache.entries.lock().unwrap_or_else(|e| e.into_inner());
            if entries.len() >= cache.capacity {
                entries.retain(|_, (exp, _)| now < *exp);
                if entries.len() >= cache.capacity {
                    entries.clear();
                }
            }
            entries.insert(k, (now + cache.ttl, d.clone()));
        }
        Ok(d)
    }

    /// Up to 100 decisions in one call, in request order.
    pub async fn authorize_batch(
        &self,
        requests: Vec<AuthorizeRequest>,
    ) -> Result<Vec<AuthorizeResponse>, Error> {
        let r: BatchResponse = self
            .api
            .send(
                Method::POST,
                "/v1/authorize:batch",
                Some(to_body(&BatchRequest { requests })?),
            )
            .await?;
        Ok(r.decisions)
    }
}
