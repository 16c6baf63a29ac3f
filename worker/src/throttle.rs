//! The replay throttle: token buckets for events and bytes per second; a tenant's budgets
//! (its replays' events and bytes, its requests to sources) are throttles of the same kind.
//!
//! One `Throttle` serves every shard of a job in a process. In embedded mode that is the whole
//! job. In the distributed mode each worker process takes the share of the job's rate that its
//! running attempts are of all the job's running attempts (counted from the attempts' live keys
//! in etcd, refreshed every second), so the workers together stay at the job's rate without a
//! round trip per event.

use std::io::Read;
use std::sync::{Arc, Mutex};

use rewind_common::storage::{IoStats, ObjectMeta, ObjectSource, StorageError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The fraction is kept in millionths.
const WHOLE: u64 = 1_000_000;
/// Unused budget saved up for at most this long (bounds a burst after a pause).
const BURST: f64 = 0.1;

#[derive(Debug)]
struct Buckets {
    events: f64,
    bytes: f64,
    last: Instant,
}

#[derive(Debug)]
pub struct Throttle {
    events_per_sec: Option<u64>,
    bytes_per_sec: Option<u64>,
    fraction: AtomicU64,
    state: Mutex<Buckets>,
}

impl Throttle {
    /// `None` when neither limit is set.
    pub fn new(events_per_sec: Option<u64>, bytes_per_sec: Option<u64>) -> Option<Throttle> {
        if events_per_sec.is_none() && bytes_per_sec.is_none() {
            return None;
        }
        Some(Throttle {
            events_per_sec,
            bytes_per_sec,
            fraction: AtomicU64::new(WHOLE),
            state: Mutex::new(Buckets {
                events: 0.0,
                bytes: 0.0,
                last: Instant::now(),
            }),
        })
    }

    /// Sets this process's share of the job's rate (`part` of `whole` running attempts).
    pub fn set_share(&self, part: u64, whole: u64) {
        let f = (part.min(whole) * WHOLE)
            .checked_div(whole)
            .map_or(WHOLE, |f| f.max(1));
        self.fraction.store(f, Ordering::Relaxed);
    }

    fn share(&self) -> f64 {
        self.fraction.load(Ordering::Relaxed) as f64 / WHOLE as f64
    }

    /// Waits until one event of `bytes` may go. The buckets may go into debt by one event,
    /// which is then waited off, so the average rate is exact.
    pub fn acquire(&self, bytes: u64) {
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let elapsed = now.duration_since(s.last).as_secs_f64();
            s.last = now;
            let share = self.share();
            let mut wait: f64 = 0.0;
            if let Some(rate) = self.events_per_sec {
                let rate = rate as f64 * share;
                s.events = (s.events + elapsed * rate).min(rate * BURST) - 1.0;
                if s.events < 0.0 {
                    wait = wait.max(-s.events / rate);
                }
            }
            if let Some(rate) = self.bytes_per_sec {
                let rate = rate as f64 * share;
                s.bytes = (s.bytes + elapsed * rate).min(rate * BURST) - bytes as f64;
                if s.bytes < 0.0 {
                    wait = wait.max(-s.bytes / rate);
                }
            }
            wait
        };
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait.min(5.0)));
        }
    }
}

/// A tenant's budgets in this process (from one stamped `TenantBudget`): every attempt of the
/// tenant's jobs accepted with that budget shares them. The share of the fleet's budget this
/// process takes is its attempts of those jobs over all of theirs across the fleet.
#[derive(Debug, Clone, Default)]
pub struct TenantThrottles {
    /// Events and bytes replayed into stream sinks.
    pub replay: Option<Arc<Throttle>>,
    /// Requests to the source's object store (as events).
    pub source: Option<Arc<Throttle>>,
}

impl TenantThrottles {
    pub fn new(budget: &rewind_common::job::TenantBudget) -> TenantThrottles {
        TenantThrottles {
            replay: Throttle::new(budget.replay_events_per_sec, budget.replay_bytes_per_sec)
                .map(Arc::new),
            source: Throttle::new(budget.source_requests_per_sec, None).map(Arc::new),
        }
    }

    pub fn set_share(&self, part: u64, whole: u64) {
        for t in self.replay.iter().chain(&self.source) {
            t.set_share(part, whole);
        }
    }
}

/// A source whose listings and object reads each wait for a request of the tenant's budget.
pub struct ThrottledSource {
    inner: Arc<dyn ObjectSource>,
    throttle: Arc<Throttle>,
}

impl ThrottledSource {
    pub fn wrap(
        inner: Arc<dyn ObjectSource>,
        throttle: Option<Arc<Throttle>>,
    ) -> Arc<dyn ObjectSource> {
        match throttle {
            Some(throttle) => Arc::new(ThrottledSource { inner, throttle }),
            None => inner,
        }
    }
}

impl ObjectSource for ThrottledSource {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.throttle.acquire(0);
        self.inner.list(prefix)
    }

    fn list_pages(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(Vec<ObjectMeta>) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        self.throttle.acquire(0);
        self.inner.list_pages(prefix, each)
    }

    fn open(&self, meta: &ObjectMeta) -> Result<Box<dyn Read + Send>, StorageError> {
        self.throttle.acquire(0);
        self.inner.open(meta)
    }

    fn read_ahead(&self) -> usize {
        self.inner.read_ahead()
    }

    fn with_stats(&self, stats: Arc<IoStats>) -> Arc<dyn ObjectSource> {
        Arc::new(ThrottledSource {
            inner: self.inner.with_stats(stats),
            throttle: self.throttle.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate_of(t: &Throttle, events: u64, bytes: u64) -> f64 {
        let start = Instant::now();
        for _ in 0..events {
            t.acquire(bytes);
        }
        events as f64 / start.elapsed().as_secs_f64()
    }

    #[test]
    fn holds_the_event_rate_and_the_byte_rate() {
        let t = Throttle::new(Some(400), None).unwrap();
        let r = rate_of(&t, 200, 10);
        assert!((360.0..=440.0).contains(&r), "{r}");
        // 100 bytes per event at 20,000 bytes/s: 200 events/s.
        let t = Throttle::new(None, Some(20_000)).unwrap();
        let r = rate_of(&t, 100, 100);
        assert!((180.0..=220.0).contains(&r), "{r}");
        assert!(Throttle::new(None, None).is_none());
    }

    #[test]
    fn a_share_scales_the_rate() {
        let t = Throttle::new(Some(800), None).unwrap();
        t.set_share(1, 2);
        let r = rate_of(&t, 200, 1);
        assert!((360.0..=440.0).contains(&r), "{r}");
    }
}
