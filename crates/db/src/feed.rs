//! The change feed: how every server sharing a database learns that something changed.
//!
//! - **Outbox.** A write appends its feed row (`tenant`, `topic`, `key`) to `core_changes` in
//!   the write's own transaction ([`append_change!`]), so a committed change can never be missing
//!   from the feed, and a rolled-back one never appears in it.
//! - **Wake-up.** On Postgres a trigger sends `NOTIFY capstan_changes` when such a transaction
//!   commits; every server `LISTEN`s and polls at once. In one process, [`Feed::wake`] does the
//!   same. The table stays the source of truth: the notification carries nothing, and a timer
//!   polls too, so a lost notification only delays a change to the next tick.
//! - **No skipped rows.** Postgres assigns `BIGSERIAL` values before commit, so rows can become
//!   visible out of order. [`FeedCursor`] remembers the positions it jumped over and reads them
//!   again until they appear or are old enough to be rollbacks.
//! - **One runner per server** ([`Feed::start`]) reads the feed and hands each change to the
//!   [`Subscriber`]s of its topic, and prunes the table by age.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::{Change, Db, DbError};

/// The channel the Postgres trigger notifies.
pub const CHANNEL: &str = "capstan_changes";

/// Appends a feed row inside an open transaction `tx` (same SQL on both backends). Evaluates to
/// the `execute` future: `append_change!(tx, tenant, topic, key, now).await?`.
#[macro_export]
macro_rules! append_change {
    ($tx:expr, $tenant:expr, $topic:expr, $key:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO core_changes (tenant, topic, key, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind($tenant)
        .bind($topic)
        .bind($key)
        .bind::<i64>($now)
        .execute(&mut *$tx)
    };
}

/// Runs `$body` in one transaction as `tx` on the store's `db`; the body evaluates to how many
/// rows it changed. When it changed any, the feed row `($topic, $key)` of `$tenant` is appended
/// in the same transaction (the outbox); after the commit the store's `woke()` wakes the
/// server's feed. Evaluates to the count; a failure returns from the calling function.
#[macro_export]
macro_rules! write_tx {
    ($store:expr, $tenant:expr, $topic:expr, $key:expr, $now:expr, |$tx:ident| $body:expr) => {{
        let n = $crate::on_pool!(&$store.db, |p| {
            let mut $tx = $crate::BeginWrite::begin_write(p).await?;
            let n: u64 = $body;
            if n > 0 {
                $crate::append_change!($tx, $tenant, $topic, $key, $now).await?;
            }
            $tx.commit().await?;
            Ok::<u64, sqlx::Error>(n)
        })?;
        $store.woke();
        n
    }};
}

/// Receives the changes of some topics. Called on the runner's task: keep it quick (drop a
/// cache entry, wake a watcher), never block.
pub trait Subscriber: Send + Sync + 'static {
    /// The topics it wants.
    fn topics(&self) -> &[&'static str];
    /// One change, in feed order.
    fn on_change(&self, change: &Change);
}

/// A reader's position in the change feed, with the positions it has jumped over.
#[derive(Debug, Default)]
pub struct FeedCursor {
    cursor: i64,
    /// Positions below the cursor not seen yet, with when they were first missed.
    gaps: BTreeMap<i64, Instant>,
}

impl FeedCursor {
    /// How long a missing position is waited for. A transaction open longer than this that
    /// then publishes is missed; a rolled-back one leaves a gap that is dropped after it.
    pub const GAP_TIMEOUT: Duration = Duration::from_secs(60);
    /// At most this many missing positions are remembered (the oldest are dropped).
    pub const MAX_GAPS: usize = 10_000;
    /// Rows read per query.
    const BATCH: i64 = 10_000;

    /// A cursor at the feed's current end: only later changes are returned, plus those of the
    /// last [`FeedCursor::MAX_GAPS`] positions that are not visible yet (transactions still
    /// open at start-up).
    pub async fn at_end(db: &Db) -> Result<FeedCursor, DbError> {
        let end = db.latest_change().await?;
        let from = (end - Self::MAX_GAPS as i64 + 1).max(1);
        let now = Instant::now();
        let mut gaps: BTreeMap<i64, Instant> = (from..=end).map(|s| (s, now)).collect();
        if !gaps.is_empty() {
            let candidates: Vec<i64> = gaps.keys().copied().collect();
            for c in db.changes_at(&candidates).await? {
                gaps.remove(&c.seq);
            }
        }
        Ok(FeedCursor { cursor: end, gaps })
    }

    /// Changes not returned before, oldest first.
    pub async fn poll(&mut self, db: &Db) -> Result<Vec<Change>, DbError> {
        let mut rows = Vec::new();
        if !self.gaps.is_empty() {
            let missing: Vec<i64> = self.gaps.keys().copied().collect();
            rows.extend(db.changes_at(&missing).await?);
        }
        rows.extend(db.changes_after(self.cursor, Self::BATCH).await?);
        let now = Instant::now();
        let mut fresh = Vec::with_capacity(rows.len());
        for c in rows {
            if c.seq > self.cursor {
                // The positions just below a new row are the ones most likely still committing.
                let from = (self.cursor + 1).max(c.seq - Self::MAX_GAPS as i64);
                for missing in from..c.seq {
                    self.gaps.insert(missing, now);
                }
                self.cursor = c.seq;
            } else if self.gaps.remove(&c.seq).is_none() {
                continue;
            }
            fresh.push(c);
        }
        self.gaps
            .retain(|_, seen| now.duration_since(*seen) < Self::GAP_TIMEOUT);
        while self.gaps.len() > Self::MAX_GAPS {
            self.gaps.pop_first();
        }
        Ok(fresh)
    }

    /// The newest position returned.
    pub fn position(&self) -> i64 {
        self.cursor
    }
}

/// The server's change feed: the runner, its subscribers and the in-process wake-up.
pub struct Feed {
    db: Db,
    wake: Notify,
    subscribers: RwLock<Vec<Arc<dyn Subscriber>>>,
}

/// How the runner behaves.
#[derive(Debug, Clone, Copy)]
pub struct FeedConfig {
    /// The fallback poll when no notification arrives.
    pub poll_every: Duration,
    /// How often rows older than `retention_seconds` are pruned.
    pub prune_every: Duration,
    /// How long rows are kept (seconds): longer than any server may be cut off and still
    /// catch up from its cursor.
    pub retention_seconds: i64,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            poll_every: Duration::from_millis(250),
            prune_every: Duration::from_secs(60),
            retention_seconds: 3600,
        }
    }
}

impl Feed {
    /// The feed of `db`; nothing runs until [`Feed::start`].
    pub fn new(db: Db) -> Arc<Feed> {
        Arc::new(Feed {
            db,
            wake: Notify::new(),
            subscribers: RwLock::default(),
        })
    }

    /// Adds a subscriber (before [`Feed::start`]).
    pub fn subscribe(&self, s: Arc<dyn Subscriber>) {
        self.subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(s);
    }

    /// Polls now: call after committing a write that appended to the feed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Appends a change in a transaction of its own, and wakes the runner. Writes that have a
    /// transaction append with [`append_change!`] instead, so the row commits with the write.
    pub async fn publish(
        &self,
        tenant: &str,
        topic: &str,
        key: &str,
        now: i64,
    ) -> Result<(), DbError> {
        self.db.publish_change(tenant, topic, key, now).await?;
        self.wake();
        Ok(())
    }

    fn deliver(&self, changes: &[Change]) {
        let subs = self
            .subscribers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for c in changes {
            for s in subs.iter() {
                if s.topics().iter().any(|t| *t == c.topic) {
                    s.on_change(c);
                }
            }
        }
    }

    /// Positions the cursor at the feed's end (before the server serves), then runs: the poll
    /// loop, woken by notifications, the timer and [`Feed::wake`]; pruning by age (`now` gives
    /// the injected clock's time); and on Postgres the `LISTEN` task.
    pub async fn start(
        self: &Arc<Self>,
        cfg: FeedConfig,
        now: Arc<dyn Fn() -> i64 + Send + Sync>,
    ) -> Result<Vec<JoinHandle<()>>, DbError> {
        let mut cursor = FeedCursor::at_end(&self.db).await?;
        let mut tasks = Vec::new();
        if let Db::Postgres(pool) = &self.db {
            // The listener holds its connection for good: it gets its own, not a pool slot.
            let own = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect_with(pool.connect_options().as_ref().clone())
                .await?;
            let mut listener = sqlx::postgres::PgListener::connect_with(&own).await?;
            listener.listen(CHANNEL).await?;
            let me = Arc::clone(self);
            tasks.push(tokio::spawn(async move {
                loop {
                    match listener.recv().await {
                        Ok(_) => me.wake(),
                        Err(e) => {
                            // Reconnects on the next recv; the timer polls meanwhile.
                            tracing::warn!(error = %e, "change feed: listen failed");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            me.wake();
                        }
                    }
                }
            }));
        }
        let me = Arc::clone(self);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(cfg.poll_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut pruned = Instant::now();
            loop {
                tokio::select! {
                    _ = me.wake.notified() => {}
                    _ = tick.tick() => {}
                }
                match cursor.poll(&me.db).await {
                    Ok(changes) => me.deliver(&changes),
                    Err(e) => tracing::warn!(error = %e, "change feed: poll failed"),
                }
                if pruned.elapsed() >= cfg.prune_every {
                    pruned = Instant::now();
                    if let Err(e) = me.db.prune_changes(now() - cfg.retention_seconds).await {
                        tracing::warn!(error = %e, "change feed: prune failed");
                    }
                }
            }
        }));
        Ok(tasks)
    }
}
