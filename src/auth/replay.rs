//! The record of accepted DPoP proofs (RFC 9449 §11.1): every proof is refused again for as
//! long as it is acceptable. The record never forgets a proof to make room: when it is full, the
//! next proof is refused (fail closed) until old ones age out.
//!
//! A binary upgrade hands the record over: the old process seals it (from then on it refuses
//! every proof) and writes what it holds for the new process, which takes it in before it
//! serves. No proof the old process accepted is good on the new one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// The record was handed over to a new process (a binary upgrade): this one records no
    /// more proofs.
    HandedOver,
}

/// What a sealed record held, for the process that takes over.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub began: f64,
    /// (proof key, when it was accepted), oldest first.
    pub entries: Vec<([u8; 32], f64)>,
}

const MAGIC: &[u8; 8] = b"BGDPOP1\n";

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.entries.len() * 40);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.began.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for (key, at) in &self.entries {
            out.extend_from_slice(key);
            out.extend_from_slice(&at.to_le_bytes());
        }
        out
    }

    /// `None` for anything but a whole snapshot.
    pub fn decode(bytes: &[u8]) -> Option<Snapshot> {
        let rest = bytes.strip_prefix(MAGIC.as_slice())?;
        let (began, rest) = rest.split_first_chunk::<8>()?;
        let (count, mut rest) = rest.split_first_chunk::<8>()?;
        let count = usize::try_from(u64::from_le_bytes(*count)).ok()?;
        if rest.len() != count.checked_mul(40)? {
            return None;
        }
        let mut entries = Vec::with_capacity(count);
        while let Some((key, tail)) = rest.split_first_chunk::<32>() {
            let (at, tail) = tail.split_first_chunk::<8>()?;
            entries.push((*key, f64::from_le_bytes(*at)));
            rest = tail;
        }
        Some(Snapshot {
            began: f64::from_le_bytes(*began),
            entries,
        })
    }
}

pub struct ReplayRecord {
    inner: Mutex<Inner>,
    /// When this record began (seconds since the epoch, as f64 bits). A proof issued before it
    /// may have been accepted by a process whose record is gone (a restart). Taking over an old
    /// process's record moves it back to when that one began.
    began: AtomicU64,
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
    /// Handed over: every proof is refused from now on.
    sealed: bool,
}

impl ReplayRecord {
    pub fn new(capacity: u64, window: f64, now: f64) -> Self {
        ReplayRecord {
            inner: Mutex::new(Inner {
                seen: HashMap::new(),
                order: VecDeque::new(),
                capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
                window,
                sealed: false,
            }),
            // Whole seconds, as a proof's `iat` is written: a proof of the second the record
            // began is taken as after it.
            began: AtomicU64::new(now.floor().to_bits()),
        }
    }

    pub fn began(&self) -> f64 {
        f64::from_bits(self.began.load(Ordering::Relaxed))
    }

    /// Refuses every proof from now on and returns what is recorded: one lock for both, so
    /// that no proof is accepted after the snapshot.
    pub fn seal(&self) -> Snapshot {
        let mut inner = self.lock();
        inner.sealed = true;
        Snapshot {
            began: self.began(),
            entries: inner.order.iter().copied().collect(),
        }
    }

    /// Accepts proofs again after a [`Self::seal`] for an upgrade that did not happen (no new
    /// process took the sockets): the record kept everything meanwhile.
    pub fn unseal(&self) {
        self.lock().sealed = false;
    }

    /// Takes in what an old process recorded (before this one serves): its proofs stay
    /// replays here, and this record begins when the old one began. Entries past their window
    /// at `now` are left out; the rest are kept even beyond the capacity (never forgotten:
    /// the record refuses new proofs until they age out).
    pub fn take_over(&self, old: &Snapshot, now: f64) {
        let mut inner = self.lock();
        let window = inner.window;
        for &(key, at) in &old.entries {
            if at + window > now && !inner.seen.contains_key(&key) {
                inner.seen.insert(key, at);
                inner.order.push_back((key, at));
            }
        }
        // Keep acceptance order (the oldest leave first).
        inner
            .order
            .make_contiguous()
            .sort_by(|a, b| a.1.total_cmp(&b.1));
        if old.began < self.began() {
            self.began.store(old.began.to_bits(), Ordering::Relaxed);
        }
    }

    /// Refuses proofs issued before `at` (an old process's record is missing: what it
    /// accepted cannot be known, up to the future-dated proofs the leeway lets in).
    pub fn begin_at(&self, at: f64) {
        self.began.store(at.ceil().to_bits(), Ordering::Relaxed);
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
        if inner.sealed {
            return Recorded::HandedOver;
        }
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
    fn a_sealed_record_refuses_and_its_snapshot_is_a_replay_on_the_next() {
        let old = ReplayRecord::new(10, 60.0, 900.0);
        assert_eq!(old.record(key(1), 1000.0), Recorded::Fresh);
        assert_eq!(old.record(key(2), 1001.0), Recorded::Fresh);
        let snapshot = old.seal();
        assert_eq!(old.record(key(3), 1002.0), Recorded::HandedOver);
        assert_eq!(old.record(key(1), 1002.0), Recorded::HandedOver);
        let bytes = snapshot.encode();
        let read = Snapshot::decode(&bytes).unwrap();
        assert_eq!(read, snapshot);
        // Truncated or padded: not a snapshot.
        assert!(Snapshot::decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(Snapshot::decode(&[bytes.as_slice(), &[0]].concat()).is_none());
        assert!(Snapshot::decode(b"BGDPOP1\n").is_none());

        let new = ReplayRecord::new(10, 60.0, 1003.0);
        assert_eq!(new.began(), 1003.0);
        new.take_over(&read, 1003.0);
        assert_eq!(new.began(), 900.0);
        assert_eq!(new.record(key(1), 1003.0), Recorded::Replay);
        assert_eq!(new.record(key(2), 1003.0), Recorded::Replay);
        assert_eq!(new.record(key(3), 1003.0), Recorded::Fresh);
        // The taken-over ones leave at the end of their own window.
        assert_eq!(new.record(key(1), 1060.0), Recorded::Fresh);
        assert_eq!(new.record(key(2), 1060.5), Recorded::Replay);
    }

    #[test]
    fn a_taken_over_record_beyond_the_capacity_is_kept_and_refuses_new_proofs() {
        let old = ReplayRecord::new(10, 60.0, 0.0);
        for n in 0..5 {
            assert_eq!(old.record(key(n), 10.0), Recorded::Fresh);
        }
        let new = ReplayRecord::new(2, 60.0, 11.0);
        new.take_over(&old.seal(), 11.0);
        assert_eq!(new.record(key(9), 12.0), Recorded::Full);
        for n in 0..5 {
            assert_eq!(new.record(key(n), 12.0), Recorded::Replay);
        }
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
