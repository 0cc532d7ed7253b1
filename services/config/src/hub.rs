//! The in-process fan-out of config changes.
//!
//! A namespace-environment that has watchers (or long polls) is *attached*: the hub holds its
//! state in memory and a broadcast channel. The change feed wakes the hub when any replica
//! writes; one task per server reads the new log rows once (one database read per change per
//! replica, never one per watcher), applies them to the state and broadcasts what each revision
//! touched. Each watcher resolves its own view (rollouts, secrets) from that.
//!
//! - Subscribing takes the state's revision under the same lock the broadcaster applies
//!   under, so a watcher gets exactly the revisions after the one it started from: none missed,
//!   none twice, in order.
//! - The channel is bounded: a watcher that falls more than the buffer behind is dropped (it
//!   resumes from its last revision), so a slow client costs nothing but its slot.
//! - When the log no longer reaches back to the attached state (compacted while this replica
//!   was behind), the state is reloaded and watchers get a reset.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{broadcast, watch, Notify};

use crate::codec::Codec;
use crate::error::ConfigError;
use crate::model::{EnvState, Published};
use crate::store::{ConfigStore, EnvKey};

/// One revision as broadcast: what it touched, or a whole new state after a reload.
#[derive(Debug, Clone)]
pub enum Update {
    /// The next revision, with its event encoded once for all who see it alike.
    Next(Published, SharedEvent),
    /// The state was reloaded (the log did not reach back): watchers start over from it.
    Reset(Arc<EnvState>),
}

/// A revision's watch event encoded once and shared (by reference count) by every watcher that
/// sees it alike: `[masked, clear]`, the first watcher of each kind encoding it. `None` when
/// the revision is not [`Published::uniform`] (a rollout sets one of its keys), so each watcher
/// encodes its own view.
pub type SharedEvent = Option<[std::sync::OnceLock<bytes::Bytes>; 2]>;

impl Update {
    /// The revision it brings watchers to.
    pub fn revision(&self) -> i64 {
        match self {
            Update::Next(p, _) => p.revision,
            Update::Reset(s) => s.revision,
        }
    }
}

/// An attached namespace-environment.
pub struct EnvHub {
    state: RwLock<EnvState>,
    tx: broadcast::Sender<Arc<Update>>,
    attached: AtomicUsize,
}

impl EnvHub {
    /// Subscribes: the receiver gets every revision after the returned one; with `want_state`
    /// the state at that revision too.
    pub fn subscribe(
        &self,
        want_state: bool,
    ) -> (broadcast::Receiver<Arc<Update>>, i64, Option<EnvState>) {
        let s = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let rx = self.tx.subscribe();
        (rx, s.revision, want_state.then(|| s.clone()))
    }
}

/// A hold on an attached namespace-environment; the last one dropped detaches it.
pub struct Attached {
    hub: Arc<Hub>,
    key: EnvKey,
    env: Arc<EnvHub>,
    /// The watcher's principal (a long poll is not counted).
    watcher: Option<String>,
}

impl Attached {
    /// The attached namespace-environment.
    pub fn env(&self) -> &EnvHub {
        &self.env
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(p) = &self.watcher {
            self.hub.release(p);
        }
        if self.env.attached.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut envs = self.hub.envs.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = envs.get(&self.key) {
                if Arc::ptr_eq(e, &self.env) && e.attached.load(Ordering::Acquire) == 0 {
                    envs.remove(&self.key);
                }
            }
        }
    }
}

/// The server's fan-out of config changes.
pub struct Hub {
    store: Arc<dyn ConfigStore>,
    codec: Arc<Codec>,
    envs: Mutex<HashMap<EnvKey, Arc<EnvHub>>>,
    dirty: Mutex<BTreeSet<EnvKey>>,
    wake: Notify,
    buffer: usize,
    max_watchers: usize,
    max_per_principal: usize,
    watchers: AtomicUsize,
    per_principal: Mutex<HashMap<String, usize>>,
    loading: tokio::sync::Mutex<()>,
    shutdown: watch::Sender<bool>,
    /// Log reads made to fan out changes.
    pub reads: AtomicU64,
    /// Watchers dropped for falling behind.
    pub dropped: AtomicU64,
}

impl Hub {
    /// A hub reading `store`, with a channel of `buffer` revisions per attached environment and
    /// at most `max_watchers` watchers, `max_per_principal` of one principal.
    pub fn new(
        store: Arc<dyn ConfigStore>,
        codec: Arc<Codec>,
        buffer: usize,
        max_watchers: usize,
        max_per_principal: usize,
    ) -> Hub {
        Hub {
            store,
            codec,
            envs: Mutex::default(),
            dirty: Mutex::default(),
            wake: Notify::new(),
            buffer: buffer.max(1),
            max_watchers,
            max_per_principal,
            watchers: AtomicUsize::new(0),
            per_principal: Mutex::default(),
            loading: tokio::sync::Mutex::new(()),
            shutdown: watch::channel(false).0,
            reads: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Watchers connected now.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Relaxed)
    }

    /// Environments attached now.
    pub fn attached(&self) -> usize {
        self.envs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Resolves when the server begins to stop (watch streams end then).
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Ends every watch stream (the server is stopping: clients resume on another replica).
    pub fn stop(&self) {
        self.shutdown.send_replace(true);
    }

    /// Takes a watcher slot for `principal`, within both limits.
    fn reserve(&self, principal: &str) -> Result<(), ConfigError> {
        let mut per = self
            .per_principal
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mine = per.get(principal).copied().unwrap_or(0);
        if mine >= self.max_per_principal {
            return Err(ConfigError::Busy(format!(
                "this principal has {mine} watchers on this server, its limit"
            )));
        }
        if self.watchers.fetch_add(1, Ordering::Relaxed) >= self.max_watchers {
            self.watchers.fetch_sub(1, Ordering::Relaxed);
            return Err(ConfigError::Busy(format!(
                "this server has {} watchers, its limit; retry later or on another replica",
                self.max_watchers
            )));
        }
        per.insert(principal.to_owned(), mine + 1);
        Ok(())
    }

    fn release(&self, principal: &str) {
        self.watchers.fetch_sub(1, Ordering::Relaxed);
        let mut per = self
            .per_principal
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = per.get_mut(principal) {
            *n -= 1;
            if *n == 0 {
                per.remove(principal);
            }
        }
    }

    /// Attaches `key` (loading its state if no one has), as the watcher of a principal
    /// (counted against the limits) or, with `None`, a long poll.
    pub async fn attach(
        self: &Arc<Self>,
        key: &EnvKey,
        watcher: Option<&str>,
    ) -> Result<Attached, ConfigError> {
        if let Some(p) = watcher {
            self.reserve(p)?;
        }
        let attached = |env: Arc<EnvHub>| Attached {
            hub: self.clone(),
            key: key.clone(),
            env,
            watcher: watcher.map(str::to_owned),
        };
        if let Some(env) = self.lookup(key) {
            return Ok(attached(env));
        }
        // One load at a time: a crowd of watchers arriving together for an environment not
        // attached yet makes one database read, not one each.
        let _loading = self.loading.lock().await;
        if let Some(env) = self.lookup(key) {
            return Ok(attached(env));
        }
        let loaded = match self.store.load(key).await {
            Ok(s) => self.codec.state(key, &s),
            Err(e) => Err(e.into()),
        };
        let state = match loaded {
            Ok(s) => s,
            Err(e) => {
                if let Some(p) = watcher {
                    self.release(p);
                }
                return Err(e);
            }
        };
        let env = {
            let mut envs = self.envs.lock().unwrap_or_else(PoisonError::into_inner);
            let env = envs
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(EnvHub {
                        state: RwLock::new(state),
                        tx: broadcast::channel(self.buffer).0,
                        attached: AtomicUsize::new(0),
                    })
                })
                .clone();
            env.attached.fetch_add(1, Ordering::AcqRel);
            env
        };
        // Anything committed between the load and now is read by the next catch-up.
        self.changed(key.clone());
        Ok(attached(env))
    }

    fn lookup(&self, key: &EnvKey) -> Option<Arc<EnvHub>> {
        let envs = self.envs.lock().unwrap_or_else(PoisonError::into_inner);
        let env = envs.get(key)?.clone();
        env.attached.fetch_add(1, Ordering::AcqRel);
        Some(env)
    }

    /// A change of `key` was committed (on any replica): catch up if it is attached.
    pub fn changed(&self, key: EnvKey) {
        let attached = self
            .envs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&key);
        if attached {
            self.dirty
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key);
            self.wake.notify_one();
        }
    }

    /// The fan-out task: catches up every attached environment the feed says changed.
    pub async fn run(self: Arc<Self>) {
        let mut retry: BTreeSet<EnvKey> = BTreeSet::new();
        loop {
            if retry.is_empty() {
                self.wake.notified().await;
            } else {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            let mut batch =
                std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner));
            batch.append(&mut retry);
            for key in batch {
                match self.catch_up(&key).await {
                    Ok(true) => {
                        // More to read: give the watchers a turn at what was sent, then go on.
                        tokio::task::yield_now().await;
                        self.dirty
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(key);
                        self.wake.notify_one();
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, ns = %key.ns, env = %key.env, "config fan-out: catch-up failed");
                        retry.insert(key);
                    }
                }
            }
        }
    }

    /// Reads and broadcasts the revisions of `key` after its attached state; true if there may
    /// be more.
    async fn catch_up(&self, key: &EnvKey) -> Result<bool, ConfigError> {
        let Some(env) = self
            .envs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
        else {
            return Ok(false);
        };
        let from = env
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .revision;
        self.reads.fetch_add(1, Ordering::Relaxed);
        // At most half a channel per round, so a burst of writes does not overrun watchers
        // that keep up.
        let batch = (self.buffer / 2).max(1) as i64;
        let rows = self.store.log_after(key, from, batch).await?;
        let more = rows.len() as i64 == batch;
        let mut revisions = Vec::with_capacity(rows.len());
        for r in &rows {
            revisions.push(self.codec.revision(key, r)?);
        }
        if revisions.first().is_some_and(|r| r.revision != from + 1) {
            // The log was compacted past this state: reload and reset every watcher.
            let stored = self.store.load(key).await?;
            let fresh = self.codec.state(key, &stored)?;
            let mut s = env.state.write().unwrap_or_else(PoisonError::into_inner);
            *s = fresh.clone();
            let _ = env.tx.send(Arc::new(Update::Reset(Arc::new(fresh))));
            return Ok(false);
        }
        let mut s = env.state.write().unwrap_or_else(PoisonError::into_inner);
        for r in &revisions {
            if r.revision != s.revision + 1 {
                continue;
            }
            let p = s.apply(r);
            let shared: SharedEvent = p.uniform().then(Default::default);
            // No receivers is fine: the state still advances.
            let _ = env.tx.send(Arc::new(Update::Next(p, shared)));
        }
        Ok(more)
    }
}
