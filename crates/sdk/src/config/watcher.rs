//! [`ConfigWatcher`]: a live, in-memory view of one namespace-environment, fed by the watch
//! stream, backed by an optional local snapshot file.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use capstan_core::rng::{Rng, SystemRng};
use capstan_proto::config::{ConfigSnapshot, WatchEvent, MASK};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::apply::{apply, empty};
use super::backoff::{DEFAULT_BASE, DEFAULT_MAX};
use super::events::{ConfigEvent, ConfigEvents, DEFAULT_IDLE_TIMEOUT};
use super::snapshot_file::{load_snapshot_file, write_snapshot_file, SnapshotFile};
use super::ConfigClient;
use crate::Error;

/// How long [`ConfigWatcherBuilder::start`] waits for the server by default.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(5);

/// Changes closer together than this reach the snapshot file as one write.
const FILE_DEBOUNCE: Duration = Duration::from_millis(200);

type Callback = Arc<dyn Fn(&WatchEvent) + Send + Sync>;

/// Configures a [`ConfigWatcher`]; from [`ConfigClient::watcher`].
pub struct ConfigWatcherBuilder {
    client: ConfigClient,
    ns: String,
    env: String,
    snapshot_file: Option<PathBuf>,
    start_timeout: Duration,
    callbacks: Vec<Callback>,
    backoff: (Duration, Duration),
    rng: Arc<dyn Rng>,
    idle_timeout: Duration,
}

impl std::fmt::Debug for ConfigWatcherBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatcherBuilder")
            .field("ns", &self.ns)
            .field("env", &self.env)
            .field("snapshot_file", &self.snapshot_file)
            .field("start_timeout", &self.start_timeout)
            .finish_non_exhaustive()
    }
}

impl ConfigWatcherBuilder {
    pub(super) fn new(client: ConfigClient, ns: &str, env: &str) -> ConfigWatcherBuilder {
        ConfigWatcherBuilder {
            client,
            ns: ns.to_owned(),
            env: env.to_owned(),
            snapshot_file: None,
            start_timeout: DEFAULT_START_TIMEOUT,
            callbacks: Vec::new(),
            backoff: (DEFAULT_BASE, DEFAULT_MAX),
            rng: Arc::new(SystemRng::new()),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }

    /// Keeps a copy of the values in `path`, rewritten (atomically, mode 0600: secrets the
    /// principal may read are in it) shortly after each change; when Capstan cannot be reached
    /// at start, the watcher serves the file's values until it can.
    pub fn snapshot_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.snapshot_file = Some(path.into());
        self
    }

    /// How long [`start`](Self::start) waits for the first snapshot from Capstan before it
    /// falls back to the snapshot file (5 s by default). A refused connection falls back at
    /// once.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Calls `f` after each change is applied to the snapshot, with the keys that changed
    /// (a reset, such as the first snapshot from Capstan after serving the file, is reported
    /// as the keys that differ). Not called for the snapshot `start` returns with, nor for
    /// revisions that changed nothing this principal sees. Callbacks run on the watcher's
    /// task, in registration order: keep them short.
    pub fn on_change(mut self, f: impl Fn(&WatchEvent) + Send + Sync + 'static) -> Self {
        self.callbacks.push(Arc::new(f));
        self
    }

    /// Reconnection delays: from `base` doubling to `max` (250 ms and 30 s by default),
    /// jittered.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff = (base, max);
        self
    }

    /// The randomness of the backoff's jitter (tests).
    pub fn rng(mut self, rng: Arc<dyn Rng>) -> Self {
        self.rng = rng;
        self
    }

    /// How long the stream may stay silent (no event, no heartbeat) before it is taken for
    /// dead and resumed (45 s by default; the server sends a heartbeat every ~15 s).
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Connects, waits for the first snapshot (up to the start timeout), and keeps it current
    /// in the background until the last clone of the watcher is dropped.
    ///
    /// When Capstan is unreachable (or answers 5xx) and a snapshot file of this
    /// namespace-environment exists, its values are served while the watcher keeps trying to
    /// connect. Errors: a 4xx from Capstan (a refused token, a denial: a stale file would
    /// hide them), or Capstan unreachable with no usable file.
    pub async fn start(self) -> Result<ConfigWatcher, Error> {
        let events = self
            .client
            .events(&self.ns, &self.env, None)
            .with_backoff(self.backoff.0, self.backoff.1, self.rng.clone())
            .with_idle_timeout(self.idle_timeout);
        let shared = Arc::new(Shared {
            snapshot: RwLock::new(None),
            revision: watch::Sender::new(-1),
            connected: events.connected_flag(),
            last_error: Mutex::new(None),
            callbacks: self.callbacks,
        });
        let (tx, mut started) = mpsc::unbounded_channel();
        // Made now, so that returning early aborts the task.
        let handle = Arc::new(Handle {
            tasks: Mutex::new(vec![tokio::spawn(follow(shared.clone(), events, tx))]),
        });
        let deadline = tokio::time::Instant::now() + self.start_timeout;
        let file = self.snapshot_file.as_deref();
        let mut server_error = None;
        let mut file_tried = false;
        let from_file = loop {
            let outcome = tokio::time::timeout_at(deadline, started.recv()).await;
            // The task ended (it cannot) or the time is up: this is the last chance.
            let last_chance = matches!(outcome, Ok(None) | Err(_));
            let fall_back = match outcome {
                Ok(Some(Ok(()))) => break false,
                Ok(Some(Err(e))) if !e.is_transient() => return Err(e),
                Ok(Some(Err(e))) => {
                    server_error = Some(e);
                    !file_tried
                }
                Ok(None) => true,
                Err(_) => true,
            };
            if fall_back && !file_tried {
                file_tried = true;
                if let Some(path) = file {
                    match load_snapshot_file(path, &self.ns, &self.env).await {
                        Ok(Some(s)) => {
                            tracing::warn!(
                                namespace = %self.ns, environment = %self.env, file = %path.display(),
                                revision = s.revision,
                                error = server_error.as_ref().map(|e| e.to_string()),
                                "capstan: config served from the snapshot file until Capstan answers"
                            );
                            shared.seed(s);
                            break true;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "capstan: the config snapshot file is unusable")
                        }
                    }
                }
            }
            if last_chance {
                return Err(server_error.unwrap_or_else(|| Error::Timeout {
                    url: format!(
                        "{}{}",
                        self.client.api().base(),
                        super::env_path(&self.ns, &self.env)
                    ),
                    timeout: self.start_timeout,
                }));
            }
        };
        if let Some(path) = self.snapshot_file {
            let last = from_file.then(|| shared.current());
            let task = tokio::spawn(persist(
                shared.clone(),
                path,
                self.ns.clone(),
                self.env.clone(),
                last,
            ));
            handle
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(task);
        }
        Ok(ConfigWatcher {
            shared,
            _handle: handle,
            ns: self.ns,
            env: self.env,
        })
    }
}

/// State shared by the watcher's handles and its tasks.
struct Shared {
    snapshot: RwLock<Option<Arc<ConfigSnapshot>>>,
    revision: watch::Sender<i64>,
    connected: Arc<AtomicBool>,
    last_error: Mutex<Option<String>>,
    callbacks: Vec<Callback>,
}

impl Shared {
    fn current(&self) -> Arc<ConfigSnapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| Arc::new(empty()))
    }

    /// The file's snapshot, unless Capstan's arrived meanwhile.
    fn seed(&self, s: ConfigSnapshot) {
        let revision = s.revision;
        {
            let mut cur = self
                .snapshot
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if cur.is_some() {
                return;
            }
            *cur = Some(Arc::new(s));
        }
        self.revision.send_replace(revision);
    }

    /// Applies an event: snapshot first, then callbacks, then the revision for waiters.
    fn apply(&self, ev: ConfigEvent) {
        let report = {
            let mut cur = self
                .snapshot
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            match apply(cur.as_deref(), ev) {
                None => return,
                Some((next, report)) => {
                    *cur = Some(Arc::new(next));
                    report
                }
            }
        };
        if let Some(ev) = report.filter(|e| !e.changes.is_empty()) {
            for f in &self.callbacks {
                if std::panic::catch_unwind(AssertUnwindSafe(|| f(&ev))).is_err() {
                    tracing::error!(
                        revision = ev.revision,
                        "capstan: a config on_change callback panicked"
                    );
                }
            }
        }
        let revision = self.current().revision;
        self.revision.send_replace(revision);
    }
}

/// Follows the stream for as long as the watcher lives, reporting to `start` how it goes.
async fn follow(
    shared: Arc<Shared>,
    mut events: ConfigEvents,
    started: mpsc::UnboundedSender<Result<(), Error>>,
) {
    loop {
        match events.next().await {
            Ok(ev) => {
                shared.apply(ev);
                *shared
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                let _ = started.send(Ok(()));
            }
            Err(e) => {
                if e.is_transient() {
                    tracing::info!(error = %e, revision = events.revision(), "capstan: config watch interrupted; resuming");
                } else {
                    tracing::warn!(error = %e, "capstan: config watch refused; retrying");
                }
                *shared
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                let _ = started.send(Err(e));
            }
        }
    }
}

/// Writes the snapshot file after each change (coalescing bursts), skipping what it holds.
async fn persist(
    shared: Arc<Shared>,
    path: PathBuf,
    ns: String,
    env: String,
    mut last: Option<Arc<ConfigSnapshot>>,
) {
    let mut rx = shared.revision.subscribe();
    loop {
        let snap = shared.current();
        if last.as_deref() != Some(&*snap) {
            let file = SnapshotFile {
                namespace: ns.clone(),
                environment: env.clone(),
                snapshot: (*snap).clone(),
            };
            let p = path.clone();
            match tokio::task::spawn_blocking(move || write_snapshot_file(&p, &file)).await {
                Ok(Ok(())) => last = Some(snap),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "capstan: cannot write the config snapshot file")
                }
                Err(e) => tracing::warn!(error = %e, "capstan: the config snapshot writer failed"),
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(FILE_DEBOUNCE).await;
    }
}

/// Aborts the tasks when the last watcher handle goes.
struct Handle {
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            t.abort();
        }
    }
}

/// A live view of one namespace-environment's config, as this principal sees it. Cheap to
/// clone; the background work stops when the last clone is dropped.
///
/// Reads are served from memory and never wait for the network. While Capstan is unreachable
/// the last values stay served; the watcher reconnects with backoff and resumes from its last
/// revision, so no change is missed (if that revision was compacted away, Capstan sends
/// everything again and the difference is reported as one change).
#[derive(Clone)]
pub struct ConfigWatcher {
    shared: Arc<Shared>,
    _handle: Arc<Handle>,
    ns: String,
    env: String,
}

impl std::fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatcher")
            .field("ns", &self.ns)
            .field("env", &self.env)
            .field("revision", &self.revision())
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl ConfigWatcher {
    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The environment.
    pub fn environment(&self) -> &str {
        &self.env
    }

    /// The revision of the values served.
    pub fn revision(&self) -> i64 {
        self.shared.current().revision
    }

    /// Every value, at one revision (a cheap handle: later changes make a new snapshot).
    pub fn snapshot(&self) -> Arc<ConfigSnapshot> {
        self.shared.current()
    }

    /// The raw JSON value of `key`, if set.
    pub fn get_value(&self, key: &str) -> Option<Value> {
        self.shared.current().values.get(key).cloned()
    }

    /// The value of `key` as a `T`; `None` when the key is not set. An [`Error::Value`] when
    /// it does not decode as a `T`, or is a secret masked for this principal (which would
    /// otherwise read as `"********"`; reading it takes `config:ReadSecret`).
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let snap = self.shared.current();
        let Some(v) = snap.values.get(key) else {
            return Ok(None);
        };
        if v.as_str() == Some(MASK) && snap.secrets.iter().any(|s| s == key) {
            return Err(Error::Value {
                key: key.to_owned(),
                detail: "a secret masked for this principal (reading it takes config:ReadSecret)"
                    .into(),
            });
        }
        T::deserialize(v).map(Some).map_err(|e| Error::Value {
            key: key.to_owned(),
            detail: e.to_string(),
        })
    }

    /// The revisions as they are applied (after the snapshot and the callbacks), to `await`
    /// with `changed()` or `wait_for()`.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.shared.revision.subscribe()
    }

    /// Resolves at the next change applied after this call (not after the first poll: call
    /// it, make the change, then await it); its revision.
    pub fn changed(&self) -> impl std::future::Future<Output = i64> + Send + 'static {
        let mut rx = self.subscribe();
        async move {
            let _ = rx.changed().await;
            let r = *rx.borrow();
            r
        }
    }

    /// Waits until the revision served is at least `revision`; the revision served then.
    pub async fn wait_for_revision(&self, revision: i64) -> i64 {
        let mut rx = self.subscribe();
        let r = match rx.wait_for(|r| *r >= revision).await {
            Ok(r) => *r,
            Err(_) => self.revision(),
        };
        r
    }

    /// Whether the watch stream is open now (false while serving the snapshot file or
    /// reconnecting).
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Why the last connection attempt or stream failed, while it has not recovered.
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
