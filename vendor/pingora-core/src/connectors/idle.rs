// bindgate: idle upstream connections kept without a task each (vendor/README.md, change 11).
//
// Pingora's pool (`pingora_pool::ConnectionPool`) spawns a task for every connection released
// to it, which watches the idle connection, and a reuse waits for that task to hand the
// connection back. A proxied request then costs a task spawn, an LRU entry, a oneshot, a
// notify, a timer and two more trips of the request's own task through the run queue: with
// hundreds of requests in flight, the request's state has gone cold by the time it goes on.
//
// Here an idle connection is only kept. A reuse takes the connection released last and checks
// that the server has neither closed it nor written on it (the reactor keeps marking readiness
// while nobody waits on it). When the pool is full, the connection idle longest makes room. A
// sweep, once a second on the runtime that first released a connection, closes those past
// their idle timeout and those the server closed.

use super::{test_reusable_stream, PoolCallback};
use crate::protocols::Stream;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How often idle connections are looked at between reuses.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

struct Idle {
    stream: Stream,
    since: Instant,
    deadline: Option<Instant>,
}

#[derive(Default)]
struct Set {
    by_key: HashMap<u64, VecDeque<Idle>>,
    count: usize,
}

impl Set {
    fn take(&mut self, key: u64) -> Option<Idle> {
        let queue = self.by_key.get_mut(&key)?;
        let idle = queue.pop_back()?;
        if queue.is_empty() {
            self.by_key.remove(&key);
        }
        self.count -= 1;
        Some(idle)
    }

    /// The connection idle longest, whatever its server.
    fn take_oldest(&mut self) -> Option<Idle> {
        let key = *self
            .by_key
            .iter()
            .filter_map(|(k, q)| q.front().map(|i| (k, i.since)))
            .min_by_key(|(_, since)| *since)?
            .0;
        let queue = self.by_key.get_mut(&key)?;
        let idle = queue.pop_front()?;
        if queue.is_empty() {
            self.by_key.remove(&key);
        }
        self.count -= 1;
        Some(idle)
    }
}

pub(super) struct IdlePool {
    capacity: usize,
    set: Mutex<Set>,
    sweeping: std::sync::Once,
    /// Told how long each connection the pool closes had been idle.
    closed: Option<PoolCallback>,
}

impl IdlePool {
    pub(super) fn new(capacity: usize, closed: Option<PoolCallback>) -> Arc<Self> {
        Arc::new(IdlePool {
            capacity,
            set: Mutex::new(Set::default()),
            sweeping: std::sync::Once::new(),
            closed,
        })
    }

    /// Close a connection the pool lets go of unused (outside the lock).
    fn close(&self, idle: Idle) {
        if let Some(callback) = &self.closed {
            callback(idle.since.elapsed());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Set> {
        // The set stays consistent at every await-free step; a panic elsewhere does not
        // poison what it holds.
        self.set.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep `stream` for `key`; when the pool is full, the connection idle longest makes room.
    pub(super) fn put(self: &Arc<Self>, key: u64, stream: Stream, idle_timeout: Option<Duration>) {
        if self.capacity == 0 {
            return;
        }
        self.sweeping.call_once(|| spawn_sweeper(Arc::downgrade(self)));
        let now = Instant::now();
        let idle = Idle {
            stream,
            since: now,
            deadline: idle_timeout.map(|t| now + t),
        };
        let evicted = {
            let mut set = self.lock();
            let evicted = if set.count >= self.capacity {
                set.take_oldest()
            } else {
                None
            };
            set.by_key.entry(key).or_default().push_back(idle);
            set.count += 1;
            evicted
        };
        if let Some(evicted) = evicted {
            self.close(evicted);
        }
    }

    /// The connection to `key` released last that is still fit to carry a request.
    pub(super) fn take(&self, key: u64, unexpected_data: &AtomicU64) -> Option<Stream> {
        loop {
            let mut idle = self.lock().take(key)?;
            let expired = idle.deadline.is_some_and(|d| d <= Instant::now());
            if !expired && test_reusable_stream(&mut idle.stream, unexpected_data) {
                return Some(idle.stream);
            }
            self.close(idle);
        }
    }

    /// Close the connections past their idle timeout and those the server closed or wrote on.
    fn sweep(&self, unexpected_data: &AtomicU64) {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut set = self.lock();
            let mut removed = 0;
            for queue in set.by_key.values_mut() {
                let before = queue.len();
                let mut kept = VecDeque::with_capacity(before);
                for mut idle in queue.drain(..) {
                    let expired = idle.deadline.is_some_and(|d| d <= now);
                    if expired || !test_reusable_stream(&mut idle.stream, unexpected_data) {
                        closed.push(idle);
                    } else {
                        kept.push_back(idle);
                    }
                }
                removed += before - kept.len();
                *queue = kept;
            }
            set.by_key.retain(|_, q| !q.is_empty());
            set.count -= removed;
        }
        for idle in closed {
            self.close(idle);
        }
    }
}

fn spawn_sweeper(pool: Weak<IdlePool>) {
    let counter = Arc::new(AtomicU64::new(0));
    pingora_runtime::current_handle().spawn(async move {
        loop {
            tokio::time::sleep(SWEEP_INTERVAL).await;
            match pool.upgrade() {
                Some(pool) => pool.sweep(&counter),
                None => return,
            }
        }
    });
}
