//! How long a write on one replica takes to reach another replica's caches through the change
//! feed: replica A writes through the policy store (the feed row commits with the write), and
//! replica B, with its own pool and its own feed runner (LISTEN, plus the fallback poll),
//! records when the change is delivered to its subscriber.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_db::feed::FeedConfig;
use capstan_db::{on_pool, Change, Db, Feed, Subscriber};
use capstan_policy::store::{GroupStore, SqlPolicyStore};

/// Delivery delays in microseconds, sorted, over `writes` sequential writes.
pub struct Delays {
    /// Sorted delays (µs), from the start of the write on A to delivery on B.
    pub sorted: Vec<u64>,
    /// Sorted durations of the writes themselves on A (µs).
    pub writes: Vec<u64>,
}

struct Recorder(Mutex<mpsc::Sender<Instant>>);

impl Subscriber for Recorder {
    fn topics(&self) -> &[&'static str] {
        &["policy"]
    }

    fn on_change(&self, _: &Change) {
        let _ = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(Instant::now());
    }
}

/// Runs the measurement on the migrated database at `url`.
pub async fn measure(url: &str, writes: usize) -> Result<Delays, String> {
    let e = |e: capstan_db::DbError| e.to_string();
    let a = Db::connect(url, 4).await.map_err(e)?;
    let b = Db::connect(url, 4).await.map_err(e)?;
    a.migrate().await.map_err(e)?;
    on_pool!(&a, |p| sqlx::query(
        "INSERT INTO core_tenants (id, signing_alg, created_at) VALUES ('default', 'ES256', 0) \
         ON CONFLICT DO NOTHING"
    )
    .execute(p)
    .await
    .map(|_| ()))
    .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    let feed = Feed::new(b);
    feed.subscribe(Arc::new(Recorder(Mutex::new(tx))));
    let tasks = feed
        .start(FeedConfig::default(), Arc::new(|| 0))
        .await
        .map_err(e)?;
    let store = SqlPolicyStore::new(a);
    let mut sorted = Vec::with_capacity(writes);
    let mut write_us = Vec::with_capacity(writes);
    for i in 0..writes {
        let start = Instant::now();
        store
            .put_group("default", &format!("g{i}"), 1)
            .await
            .map_err(e)?;
        write_us.push(start.elapsed().as_micros() as u64);
        let delivered = tokio::task::block_in_place(|| rx.recv_timeout(Duration::from_secs(5)))
            .map_err(|_| format!("write {i} did not reach the other replica within 5 s"))?;
        sorted.push(delivered.saturating_duration_since(start).as_micros() as u64);
    }
    for t in tasks {
        t.abort();
    }
    sorted.sort_unstable();
    write_us.sort_unstable();
    Ok(Delays {
        sorted,
        writes: write_us,
    })
}
