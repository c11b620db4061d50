//! The record of accepted DPoP proofs (RFC 9449 §11.1): every proof is refused again for as
//! long as it is acceptable. The record never forgets a proof to make room: when it is full, the
//! next proof is refused (fail closed) until old ones age out.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// What recording a proof found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Not seen within the window: now recorded.
    Fresh,
    /// Seen within the window: a replay.
    Replay,
    /// Not seen, but the record holds `capacity` proofs still in their window: not recorded.
    Full,
}

pub struct ReplayRecord {
    inner: Mutex<Inner>,
    /// When this record began (seconds since the epoch). A proof issued before it may have been
    /// accepted by a process whose record is gone (a restart, an upgrade).
    began: f64,
}

struct Inner {
    /// Proof key → when it was accepted.
    seen: HashMap<[u8; 32], f64>,
    /// (key, accepted) in acceptance order: the oldest leave first.
    order: VecDeque<([u8; 32], f64)>,
    capacity: usize,
    /// How long a proof stays acceptable: `max_age` + leeway, as configured now (a reload that
    /// widens it keeps the proofs already recorded for the wider window).
    window: f64,
}

impl ReplayRecord {
    pub fn new(capacity: u64, window: f64, now: f64) -> Self {
        ReplayRecord {
            inner: Mutex::new(Inner {
                seen: HashMap::new(),
                order: VecDeque::new(),
                capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
                window,
            }),
            // Whole seconds, as a proof's `iat` is written: a proof of the second the record
            // began is taken as after it.
            began: now.floor(),
        }
    }

    pub fn began(&self) -> f64 {
        self.began
    }

    /// Applies a reloaded size and window to what is recorded.
    pub fn configure(&self, capacity: u64, window: f64) {
        let mut inner = self.lock();
        inner.capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        inner.window = window;
    }

    /// Records `key`, accepted at `now`, unless it is a replay or the record is full. One lock
    /// for the look and the insert: of two concurrent uses, one is `Fresh`.
    pub fn record(&self, key: [u8; 32], now: f64) -> Recorded {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let window = inner.window;
        while let Some(&(k, at)) = inner.order.front() {
            if at + window > now {
                break;
            }
            inner.order.pop_front();
            if inner.seen.get(&k) == Some(&at) {
                inner.seen.remove(&k);
            }
        }
        if inner.seen.get(&key).is_some_and(|at| at + window > now) {
            return Recorded::Replay;
        }
        if inner.seen.len() >= inner.capacity {
            return Recorded::Full;
        }
        inner.seen.insert(key, now);
        inner.order.push_back((key, now));
        Recorded::Fresh
    }

    pub fn len(&self) -> usize {
        self.lock().seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map (each step is one insert or
        // remove): keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn a_proof_is_a_replay_for_its_whole_window_and_fresh_after() {
        let r = ReplayRecord::new(10, 60.0, 1000.0);
        assert_eq!(r.record(key(1), 1000.0), Recorded::Fresh);
        assert_eq!(r.record(key(1), 1059.9), Recorded::Replay);
        assert_eq!(r.record(key(1), 1060.0), Recorded::Fresh);
    }

    #[test]
    fn a_full_record_refuses_instead_of_forgetting() {
        let r = ReplayRecord::new(3, 60.0, 0.0);
        for n in 0..3 {
            assert_eq!(r.record(key(n), 10.0), Recorded::Fresh);
        }
        assert_eq!(r.record(key(9), 11.0), Recorded::Full);
        // The victims are still remembered.
        for n in 0..3 {
            assert_eq!(r.record(key(n), 12.0), Recorded::Replay);
        }
        // Once the oldest leave their window, there is room again.
        assert_eq!(r.record(key(9), 70.0), Recorded::Fresh);
    }

    #[test]
    fn a_wider_window_applies_to_what_is_recorded() {
        let r = ReplayRecord::new(10, 60.0, 0.0);
        assert_eq!(r.record(key(1), 100.0), Recorded::Fresh);
        r.configure(10, 300.0);
        assert_eq!(r.record(key(1), 250.0), Recorded::Replay);
        r.configure(1, 300.0);
        assert_eq!(r.record(key(2), 250.0), Recorded::Full);
    }

    #[test]
    fn concurrent_uses_of_one_proof_are_fresh_once() {
        let r = std::sync::Arc::new(ReplayRecord::new(1000, 60.0, 0.0));
        let fresh: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    let r = r.clone();
                    s.spawn(move || usize::from(r.record(key(7), 1.0) == Recorded::Fresh))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(fresh, 1);
    }
}
