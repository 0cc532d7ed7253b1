//! HTTP to Capstan: one client with timeouts on every call, and retries with backoff on 429 and
//! 503 that honour `Retry-After`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::Value;

use crate::Error;

/// How calls are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
    /// First backoff; doubled on each retry.
    pub base_delay: Duration,
    /// No single wait is longer (a `Retry-After` beyond it ends the retries).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// Timeouts and retries of every call.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// Retries on 429 and 503.
    pub retry: RetryPolicy,
    /// Extra PEM root certificates to trust (a private CA).
    pub root_certificates_pem: Vec<Vec<u8>>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            root_certificates_pem: Vec::new(),
        }
    }
}

/// The HTTP client every SDK part shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Transport {
    http: reqwest::Client,
    streams: Arc<OnceLock<reqwest::Client>>,
    cfg: TransportConfig,
}

impl Transport {
    /// A transport with these settings. Redirects are never followed (a token endpoint that
    /// redirects is refused, RFC 6749 §3.2 servers must not).
    pub fn new(cfg: TransportConfig) -> Result<Transport, Error> {
        let http = client(&cfg, false)?;
        Ok(Transport {
            http,
            streams: Arc::default(),
            cfg,
        })
    }

    /// The underlying client, to build requests.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The client for long-lived streams (config watches): the same settings, but every
    /// request opens a connection of its own and the connection closes with the stream. A
    /// stream holds its HTTP/1.1 connection for hours anyway; on a fresh one Capstan serves it
    /// outside its HTTP stack's per-connection buffers (about 4 KiB per watcher instead of
    /// 25), which it can only do for a connection's first request.
    pub fn streams(&self) -> Result<&reqwest::Client, Error> {
        if let Some(c) = self.streams.get() {
            return Ok(c);
        }
        let c = client(&self.cfg, true)?;
        Ok(self.streams.get_or_init(|| c))
    }

    /// Sends the request (a copy of `template` per attempt), again after a backoff while Capstan answers 429 or 503
    /// (waiting what `Retry-After` says when it says), and maps transport failures.
    pub async fn send(&self, template: RequestBuilder) -> Result<Response, Error> {
        let policy = &self.cfg.retry;
        let mut delay = policy.base_delay;
        let mut attempt = 1;
        loop {
            let (client, req) = template
                .try_clone()
                .ok_or_else(|| Error::Config("request body cannot be repeated".into()))?
                .build_split();
            let req = req.map_err(|e| Error::Config(format!("request: {e}")))?;
            let url = redact(req.url());
            let resp = client
                .execute(req)
                .await
                .map_err(|e| self.transport_error(url, e))?;
            let retryable = matches!(
                resp.status(),
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            );
            if !retryable || attempt >= policy.max_attempts.max(1) {
                return Ok(resp);
            }
            let wait = retry_after(&resp).unwrap_or(delay);
            if wait > policy.max_delay {
                return Ok(resp);
            }
            tracing::debug!(status = %resp.status(), ?wait, attempt, "capstan: retrying");
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(policy.max_delay);
            attempt += 1;
        }
    }

    fn transport_error(&self, url: String, e: reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::Timeout {
                url,
                timeout: self.cfg.timeout,
            }
        } else {
            let mut detail = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                detail = format!("{detail}: {s}");
                source = s.source();
            }
            Error::Unreachable { url, detail }
        }
    }

    /// Sends, and reads a JSON answer: 2xx bodies are returned (`Null` when empty), others become
    /// [`Error::Api`].
    pub async fn json(&self, req: RequestBuilder) -> Result<Value, Error> {
        let resp = self.send(req).await?;
        read_json(resp).await
    }
}

/// The URL without query or credentials, for messages.
fn redact(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

/// A client with `cfg`'s timeouts and roots; `streams`: no idle connection is kept for reuse.
fn client(cfg: &TransportConfig, streams: bool) -> Result<reqwest::Client, Error> {
    let mut b = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("capstan-sdk/", env!("CARGO_PKG_VERSION")));
    if streams {
        b = b.pool_max_idle_per_host(0);
    }
    for pem in &cfg.root_certificates_pem {
        let cert = reqwest::Certificate::from_pem(pem)
            .map_err(|e| Error::Config(format!("root certificate: {e}")))?;
        b = b.add_root_certificate(cert);
    }
    b.build()
        .map_err(|e| Error::Config(format!("HTTP client: {e}")))
}

/// `Retry-After` in seconds (the form Capstan sends).
fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp.headers().get(reqwest::header::RETRY_AFTER)?;
    let secs: u64 = v.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// A response as JSON: the body of a 2xx, or [`Error::Api`] for anything else.
pub async fn read_json(resp: Response) -> Result<Value, Error> {
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| Error::Protocol(format!("reading the answer: {e}")))?;
    let body: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    if status.is_success() {
        return Ok(body);
    }
    Err(api_error(status, body))
}

/// A non-2xx answer with its body (JSON, or the text as a JSON string) as [`Error::Api`].
pub(crate) fn api_error(status: StatusCode, body: Value) -> Error {
    let field = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    Error::Api {
        status: status.as_u16(),
        code: field("error").unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("error")
                .to_lowercase()
                .replace(' ', "_")
        }),
        message: field("message")
            .or_else(|| field("error_description"))
            .unwrap_or_else(|| format!("HTTP {status}")),
        body,
    }
}
