//! Single-flight cache fills.
//!
//! When many requests miss a cache for the same key at once — a replica that just started while
//! every client reconnects to it, or the first burst of traffic after a change dropped an entry —
//! one of them loads and the others wait for it and then read the cache, instead of each making
//! the same database query (and holding its memory) at the same time.
//!
//! ```ignore
//! self.flights.get_or_load(&key, || cache.get(&key), || self.load(&key)).await
//! ```
//!
//! A flight is only a lock: what the holder loads is put in the cache by its `load`, with the
//! cache's own rules (a load that raced an invalidation is not cached, and the next waiter loads
//! again). A load that fails (the database is down) stops serializing that key until every
//! flight of it is over, so an outage costs the crowd one timeout, not one timeout per waiter in
//! turn. Callers that need more than a cached value use [`Flights::enter`] and
//! [`Flight::landed`] themselves. Entries exist only while someone holds or waits for a key, so
//! the map is bounded by the requests in flight; a waiter whose request is dropped leaves
//! nothing behind.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// A key's lock and how many flights hold or wait for it.
struct Slot {
    lock: Arc<AsyncMutex<()>>,
    users: usize,
    /// A flight failed: the others go ahead without waiting for each other.
    open: bool,
}

/// Single-flight locks by key.
pub struct Flights<K> {
    slots: Mutex<HashMap<K, Slot>>,
}

impl<K> Default for Flights<K> {
    fn default() -> Self {
        Flights {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone> Flights<K> {
    /// No flights yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits until no other flight of `key` is under way, then holds it until the returned
    /// [`Flight`] is dropped. Read the cache again after this returns: the flight before this one
    /// has most likely filled it.
    pub async fn enter(&self, key: &K) -> Flight<'_, K> {
        let lock = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            let slot = slots.entry(key.clone()).or_insert_with(|| Slot {
                lock: Arc::default(),
                users: 0,
                open: false,
            });
            slot.users += 1;
            slot.lock.clone()
        };
        // Counted before waiting, so a request dropped while it waits still releases its count.
        let mut flight = Flight {
            flights: self,
            key: key.clone(),
            guard: None,
            landed: false,
        };
        let guard = lock.lock_owned().await;
        if !self.is_open(key) {
            flight.guard = Some(guard);
        }
        flight
    }

    /// What `cached` has for `key`; on a miss, what `load` returns (and puts in the cache),
    /// one load of `key` at a time: those that waited read the cache again first.
    pub async fn get_or_load<V, E, Fut>(
        &self,
        key: &K,
        cached: impl Fn() -> Option<V>,
        load: impl FnOnce() -> Fut,
    ) -> Result<V, E>
    where
        Fut: Future<Output = Result<V, E>>,
    {
        if let Some(v) = cached() {
            return Ok(v);
        }
        let flight = self.enter(key).await;
        if let Some(v) = cached() {
            flight.landed();
            return Ok(v);
        }
        // A failed load drops the flight unlanded: the waiters go ahead together.
        let v = load().await?;
        flight.landed();
        Ok(v)
    }

    fn is_open(&self, key: &K) -> bool {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.get(key).is_some_and(|s| s.open)
    }

    /// Keys with a flight under way or waited for (for tests).
    pub fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no flight is under way.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A held (or awaited) flight of one key; dropping it lets the next waiter in.
pub struct Flight<'a, K: Eq + Hash> {
    flights: &'a Flights<K>,
    key: K,
    guard: Option<OwnedMutexGuard<()>>,
    landed: bool,
}

impl<K: Eq + Hash> Flight<'_, K> {
    /// The holder has its answer (cached, or a verdict): the next waiter may go on.
    pub fn landed(mut self) {
        self.landed = true;
    }
}

impl<K: Eq + Hash> Drop for Flight<'_, K> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut slots = self
            .flights
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get_mut(&self.key) {
            slot.open |= !self.landed;
            slot.users -= 1;
            if slot.users == 0 {
                slots.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Flights;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[tokio::test]
    async fn one_load_for_a_crowd_of_misses() {
        let flights = Arc::new(Flights::<String>::new());
        let cache: Arc<Mutex<Option<u32>>> = Arc::default();
        let loads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (flights, cache, loads) = (flights.clone(), cache.clone(), loads.clone());
            tasks.push(tokio::spawn(async move {
                let cached = || *cache.lock().unwrap();
                let load = || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    *cache.lock().unwrap() = Some(7);
                    Ok::<_, ()>(7)
                };
                flights.get_or_load(&"k".to_string(), cached, load).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(7));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert!(flights.is_empty(), "no slot outlives its flights");
    }

    #[tokio::test]
    async fn after_a_failed_load_the_waiters_do_not_queue() {
        // Storage is down: each load takes 50 ms and fails. Ten waiters must not take 10 × 50 ms.
        let flights = Arc::new(Flights::<u8>::new());
        let start = std::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let flights = flights.clone();
            tasks.push(tokio::spawn(async move {
                let _f = flights.enter(&1).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Dropped without landing: the load failed.
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_millis(250),
            "waiters queued behind failures: {:?}",
            start.elapsed()
        );
        assert!(flights.is_empty());
        // A new crowd is serialized again.
        let held = flights.enter(&1).await;
        let next = tokio::time::timeout(Duration::from_millis(20), flights.enter(&1)).await;
        assert!(next.is_err(), "a fresh flight waits again");
        held.landed();
    }

    #[tokio::test]
    async fn different_keys_do_not_wait_for_each_other() {
        let flights = Flights::<u8>::new();
        let a = flights.enter(&1).await;
        let b = tokio::time::timeout(Duration::from_secs(1), flights.enter(&2)).await;
        assert!(b.is_ok(), "another key's flight must not wait");
        assert_eq!(flights.len(), 2);
        drop(a);
        drop(b);
        assert!(flights.is_empty());
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_nothing_behind() {
        let flights = Flights::<u8>::new();
        let held = flights.enter(&1).await;
        // Waits behind `held` and is given up.
        let waited = tokio::time::timeout(Duration::from_millis(20), flights.enter(&1)).await;
        assert!(waited.is_err());
        drop(held);
        assert!(flights.is_empty());
        // And the key can be flown again at once.
        let again = tokio::time::timeout(Duration::from_secs(1), flights.enter(&1)).await;
        assert!(again.is_ok());
    }
}
