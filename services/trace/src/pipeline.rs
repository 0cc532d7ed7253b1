//! The ingest pipeline: a bounded queue in front of batch writers.
//!
//! A request's valid spans enter the queue only if the queue has room for their bytes (else the
//! receiver answers 429 / `RESOURCE_EXHAUSTED` with a retry delay): memory is bounded by
//! `queue_bytes` whatever the load. Writers (2 by default) each take what is queued, up to
//! `max_batch` spans, waiting up to `linger` for at least `min_batch`, and store it in one
//! statement. A request is answered **after its spans are committed** — a 200 means stored, so
//! nothing acknowledged is lost if the server dies — and many requests share one batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_core::clock::Clock;
use capstan_db::DbError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::model::{row_bytes, SpanRow};
use crate::store::SqlTraceStore;

/// How the pipeline is sized.
#[derive(Debug, Clone, Copy)]
pub struct PipelineSettings {
    /// Bytes of spans queued or being written at most.
    pub queue_bytes: usize,
    /// Writer tasks.
    pub writers: usize,
    /// A writer waits for this many spans (up to `linger`) before writing.
    pub min_batch: usize,
    /// Most spans in one write.
    pub max_batch: usize,
    /// Longest wait for `min_batch`.
    pub linger: Duration,
}

/// Why spans were not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full: retry later.
    #[error("the trace queue is full")]
    Full,
    /// The server is stopping, or storage is unreachable: retry later (elsewhere).
    #[error("{0}")]
    Unavailable(String),
    /// The spans are more than the whole queue holds: send smaller batches.
    #[error("the export is larger than the trace queue")]
    TooLarge,
    /// Storage refused the write.
    #[error("storing spans failed: {0}")]
    Failed(String),
}

struct Job {
    rows: Vec<SpanRow>,
    _permit: OwnedSemaphorePermit,
    done: oneshot::Sender<Result<(), SubmitError>>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Spans committed.
    pub written: AtomicU64,
    /// Batches written.
    pub batches: AtomicU64,
    /// Requests refused because the queue was full.
    pub overloaded: AtomicU64,
    /// Writes that failed.
    pub failed: AtomicU64,
}

/// The queue and its writers.
pub struct Pipeline {
    settings: PipelineSettings,
    store: Arc<SqlTraceStore>,
    clock: Arc<dyn Clock>,
    tx: mpsc::UnboundedSender<Job>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>,
    permits: Arc<Semaphore>,
    /// Capacity in KiB permits.
    capacity: u32,
    closing: AtomicBool,
    /// Operations recorded recently (tenant, service, name, kind) → when, so each is upserted
    /// about once an hour, not per span.
    seen: Mutex<HashMap<(String, String, String, i16), i64>>,
    /// Counters.
    pub stats: Stats,
}

/// Most remembered operations before the memory is cleared.
const SEEN_MAX: usize = 100_000;
/// How often an operation's `last_seen` is refreshed.
const SEEN_REFRESH_NS: i64 = 3600 * 1_000_000_000;

impl Pipeline {
    /// A pipeline writing to `store`.
    pub fn new(
        settings: PipelineSettings,
        store: Arc<SqlTraceStore>,
        clock: Arc<dyn Clock>,
    ) -> Pipeline {
        let (tx, rx) = mpsc::unbounded_channel();
        let capacity =
            u32::try_from(settings.queue_bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        Pipeline {
            settings,
            store,
            clock,
            tx,
            rx: tokio::sync::Mutex::new(rx),
            permits: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            closing: AtomicBool::new(false),
            seen: Mutex::new(HashMap::new()),
            stats: Stats::default(),
        }
    }

    /// Bytes queued or being written now.
    pub fn queued_bytes(&self) -> u64 {
        u64::from(self.capacity).saturating_sub(self.permits.available_permits() as u64) * 1024
    }

    /// Queues `rows` if there is room; the receiver resolves once they are committed.
    pub fn submit(
        &self,
        rows: Vec<SpanRow>,
    ) -> Result<oneshot::Receiver<Result<(), SubmitError>>, SubmitError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(SubmitError::Unavailable("the server is stopping".into()));
        }
        let bytes: usize = rows.iter().map(row_bytes).sum();
        let need = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        if need > self.capacity {
            return Err(SubmitError::TooLarge);
        }
        let permit = match self.permits.clone().try_acquire_many_owned(need) {
            Ok(p) => p,
            Err(_) => {
                self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                return Err(SubmitError::Full);
            }
        };
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job {
                rows,
                _permit: permit,
                done,
            })
            .map_err(|_| SubmitError::Unavailable("the trace writers have stopped".into()))?;
        Ok(rx)
    }

    /// Starts the writers.
    pub fn spawn_writers(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        (0..self.settings.writers.max(1))
            .map(|_| {
                let me = self.clone();
                tokio::spawn(async move { me.write_loop().await })
            })
            .collect()
    }

    /// Refuses new spans and waits (up to `timeout`) until what was queued is written.
    pub async fn close(&self, timeout: Duration) {
        self.closing.store(true, Ordering::Release);
        let all = self.permits.clone();
        let cap = self.capacity;
        let _ = tokio::time::timeout(timeout, async move {
            let _ = all.acquire_many(cap).await;
        })
        .await;
    }

    /// Takes the next batch: at least one job, more while queued, waiting up to `linger` for
    /// `min_batch` spans.
    async fn next_batch(&self) -> Option<Vec<Job>> {
        let mut rx = self.rx.lock().await;
        let first = rx.recv().await?;
        let mut n = first.rows.len();
        let mut jobs = vec![first];
        let deadline = tokio::time::Instant::now() + self.settings.linger;
        while n < self.settings.max_batch {
            let next = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(_) if n >= self.settings.min_batch => None,
                Err(_) => tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .ok()
                    .flatten(),
            };
            match next {
                Some(j) => {
                    n += j.rows.len();
                    jobs.push(j);
                }
                None => break,
            }
        }
        Some(jobs)
    }

    async fn write_loop(self: Arc<Self>) {
        while let Some(jobs) = self.next_batch().await {
            let rows: Vec<&SpanRow> = jobs.iter().flat_map(|j| j.rows.iter()).collect();
            match self.write(&rows).await {
                Ok(()) => {
                    for j in jobs {
                        let _ = j.done.send(Ok(()));
                    }
                }
                Err(e) if e.is_unavailable() => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "trace: storage unavailable");
                    for j in jobs {
                        let _ = j.done.send(Err(SubmitError::Unavailable(
                            "storage is unavailable".into(),
                        )));
                    }
                }
                Err(e) => {
                    // One request's rows must not fail the others': write each alone.
                    tracing::warn!(error = %e, "trace: batch write failed; writing requests one by one");
                    for j in jobs {
                        let rows: Vec<&SpanRow> = j.rows.iter().collect();
                        let r = self.write(&rows).await.map_err(|e| {
                            self.stats.failed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "trace: write failed");
                            if e.is_unavailable() {
                                SubmitError::Unavailable("storage is unavailable".into())
                            } else {
                                SubmitError::Failed("the spans could not be stored".into())
                            }
                        });
                        let _ = j.done.send(r);
                    }
                }
            }
        }
    }

    async fn write(&self, rows: &[&SpanRow]) -> Result<(), DbError> {
        self.store.write(rows).await?;
        self.stats
            .written
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now().saturating_mul(1_000_000_000);
        let fresh: Vec<(String, String, String, i16)> = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() > SEEN_MAX {
                seen.clear();
            }
            let mut fresh = Vec::new();
            for r in rows {
                let key = (r.tenant.clone(), r.service.clone(), r.name.clone(), r.kind);
                match seen.get(&key) {
                    Some(t) if now - t < SEEN_REFRESH_NS => {}
                    _ => {
                        seen.insert(key.clone(), now);
                        fresh.push(key);
                    }
                }
            }
            fresh
        };
        if !fresh.is_empty() {
            if let Err(e) = self.store.touch_operations(&fresh, now).await {
                // Forget them, so the next batch records them again.
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                for k in &fresh {
                    seen.remove(k);
                }
                return Err(e);
            }
        }
        Ok(())
    }
}
