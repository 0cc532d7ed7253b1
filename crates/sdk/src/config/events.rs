//! The watch stream of one namespace-environment as a sequence of events that survives
//! disconnects: each reconnection resumes from the last revision seen (`Last-Event-ID`) after
//! a jittered, capped backoff.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capstan_core::rng::{Rng, SystemRng};
use capstan_proto::config::{ConfigSnapshot, WatchEvent};
use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use reqwest::{Method, Response};
use serde::Deserialize;

use super::backoff::{Backoff, DEFAULT_BASE, DEFAULT_MAX};
use super::sse::{SseEvent, SseParser};
use crate::api::ApiClient;
use crate::transport::read_json;
use crate::Error;

/// One event of a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigEvent {
    /// Everything, at a revision: the first event of a watch without a revision to resume
    /// from, or after the one to resume from was compacted away. Replaces what the watcher
    /// had.
    Reset(ConfigSnapshot),
    /// What changed at a revision.
    Change(WatchEvent),
}

impl ConfigEvent {
    /// The revision the event brings the watcher to.
    pub fn revision(&self) -> i64 {
        match self {
            ConfigEvent::Reset(s) => s.revision,
            ConfigEvent::Change(c) => c.revision,
        }
    }
}

/// How long a stream may stay silent before it is taken for dead: the server sends a
/// heartbeat every ~15 s, so three missed ones.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// A stream lives as long as it is fed; this only bounds the transport's whole-request
/// timeout, which would otherwise cut it after seconds.
const STREAM_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// The events of `GET /v1/config/{ns}/{env}/watch`, across reconnections.
///
/// [`ConfigEvents::next`] returns the next event; an `Err` reports a failed connection or a
/// stream that ended (the server dropped a slow watcher, restarted, or went silent), and is not
/// the end: the next call reconnects after the backoff, resuming with `Last-Event-ID` = the
/// last revision seen. Errors that retrying cannot fix (see [`Error::is_transient`]) are for
/// the caller to act on.
pub struct ConfigEvents {
    api: ApiClient,
    path: String,
    /// The whole URL, for errors.
    url: String,
    last: Option<i64>,
    conn: Option<Conn>,
    backoff: Backoff,
    /// The previous attempt failed: wait before the next.
    wait_first: bool,
    /// A stream is open (shared with a watcher, which reads it between events).
    connected: Arc<AtomicBool>,
    idle_timeout: Duration,
}

struct Conn {
    resp: Response,
    parser: SseParser,
    queue: VecDeque<SseEvent>,
}

impl std::fmt::Debug for ConfigEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigEvents")
            .field("path", &self.path)
            .field("last", &self.last)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Dropped {
    #[serde(default)]
    reason: String,
}

impl ConfigEvents {
    /// The events of `ns`/`env` after revision `since` (`None`: a [`ConfigEvent::Reset`]
    /// first), with the default backoff (250 ms doubling to 30 s) and idle timeout (45 s).
    pub fn new(api: ApiClient, ns: &str, env: &str, since: Option<i64>) -> ConfigEvents {
        let path = format!("{}/watch", super::env_path(ns, env));
        ConfigEvents {
            url: format!("{}{path}", api.base()),
            path,
            api,
            last: since,
            conn: None,
            backoff: Backoff::new(DEFAULT_BASE, DEFAULT_MAX, Arc::new(SystemRng::new())),
            wait_first: false,
            connected: Arc::new(AtomicBool::new(false)),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }

    /// With reconnection delays of your own (`base` doubling to `max`, jittered by `rng`).
    pub fn with_backoff(mut self, base: Duration, max: Duration, rng: Arc<dyn Rng>) -> Self {
        self.backoff = Backoff::new(base, max, rng);
        self
    }

    /// With another idle timeout: a stream silent for this long (no event, no heartbeat) is
    /// closed and resumed.
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// The last revision seen (or the one given to start from).
    pub fn revision(&self) -> Option<i64> {
        self.last
    }

    /// Whether a stream is open now.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    pub(super) fn connected_flag(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    /// The next event, connecting or reconnecting as needed. Cancel-safe between events: a
    /// dropped call loses no event already received.
    pub async fn next(&mut self) -> Result<ConfigEvent, Error> {
        loop {
            let Some(conn) = &mut self.conn else {
                if std::mem::take(&mut self.wait_first) {
                    tokio::time::sleep(self.backoff.next_delay()).await;
                }
                match self.connect().await {
                    Ok(c) => {
                        self.conn = Some(c);
                        self.connected.store(true, Ordering::Relaxed);
                    }
                    Err(e) => return Err(self.fail(e)),
                }
                continue;
            };
            if let Some(ev) = conn.queue.pop_front() {
                match self.decode(ev) {
                    Ok(Some(e)) => return Ok(e),
                    Ok(None) => continue,
                    Err(e) => return Err(self.fail(e)),
                }
            }
            let chunk = match tokio::time::timeout(self.idle_timeout, conn.resp.chunk()).await {
                Err(_) => Err(Error::Timeout {
                    url: self.url.clone(),
                    timeout: self.idle_timeout,
                }),
                Ok(Err(e)) => Err(Error::Unreachable {
                    url: self.url.clone(),
                    detail: format!("the watch stream broke: {e}"),
                }),
                Ok(Ok(None)) => Err(Error::Unreachable {
                    url: self.url.clone(),
                    detail: "the watch stream ended".into(),
                }),
                Ok(Ok(Some(bytes))) => Ok(bytes),
            };
            match chunk.and_then(|b| conn.parser.feed(&b)) {
                Ok(events) => {
                    // Bytes flowed: the connection works, so the next outage starts over
                    // from the shortest delay.
                    self.backoff.reset();
                    conn.queue.extend(events);
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        self.conn = None;
        self.connected.store(false, Ordering::Relaxed);
        self.wait_first = true;
        e
    }

    async fn connect(&self) -> Result<Conn, Error> {
        let last = self.last;
        let resp = self
            .api
            .stream(Method::GET, &self.path, |mut b| {
                b = b
                    .header(ACCEPT, "text/event-stream")
                    .header(CACHE_CONTROL, "no-cache")
                    .timeout(STREAM_LIFETIME);
                if let Some(r) = last {
                    b = b.header("last-event-id", r.to_string());
                }
                b
            })
            .await?;
        if !resp.status().is_success() {
            return Err(read_json(resp).await.err().unwrap_or_else(|| {
                Error::Protocol("the watch answered without an event stream".into())
            }));
        }
        let kind = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !kind.starts_with("text/event-stream") {
            return Err(Error::Protocol(format!(
                "the watch answered {kind:?}, not text/event-stream"
            )));
        }
        Ok(Conn {
            resp,
            parser: SseParser::new(),
            queue: VecDeque::new(),
        })
    }

    /// An SSE event as a config event (`None`: one to skip).
    fn decode(&mut self, ev: SseEvent) -> Result<Option<ConfigEvent>, Error> {
        let bad =
            |e: serde_json::Error| Error::Protocol(format!("a watch `{}` event: {e}", ev.event));
        let out = match ev.event.as_str() {
            "reset" => ConfigEvent::Reset(serde_json::from_str(&ev.data).map_err(bad)?),
            "change" => {
                let c: WatchEvent = serde_json::from_str(&ev.data).map_err(bad)?;
                if self.last.is_some_and(|l| c.revision <= l) {
                    // Already seen (a resume that overlapped): applying it again is harmless
                    // but callers would see it twice.
                    return Ok(None);
                }
                ConfigEvent::Change(c)
            }
            "dropped" => {
                let reason = serde_json::from_str::<Dropped>(&ev.data)
                    .map(|d| d.reason)
                    .unwrap_or_else(|_| ev.data.clone());
                return Err(Error::Unreachable {
                    url: self.url.clone(),
                    detail: format!("the server dropped this watcher ({reason})"),
                });
            }
            _ => return Ok(None),
        };
        self.last = Some(out.revision());
        Ok(Some(out))
    }
}
