//! The verified-token cache: SHA-256 of the token → the outcome of its signature and
//! time-independent claim checks, with the key that verified it. An entry lives until the
//! token's `exp` (plus leeway) at the latest; the clock, the certificate binding and whether
//! the key is still published with the same material are checked again on every hit.
//!
//! A token enters the cache on its second verification, not its first: a doorkeeper (one
//! 64-bit tag per slot, a fixed array sized with the cache) remembers tokens seen once. A
//! stream of tokens each used once (initial access tokens, a client minting a token per
//! call, a flood of distinct valid tokens) then costs no insert, no memory and evicts none of
//! the tokens in steady use; a token used again is verified twice, then served from the cache.

use moka::sync::Cache;
use moka::Expiry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::claims::Verified;

/// A verified token and the key that vouched for it.
#[derive(Debug)]
pub struct Entry {
    pub verified: Verified,
    /// The `kid` the token named.
    pub kid: Option<String>,
    /// The fingerprint of the key that verified the signature.
    pub key: [u8; 32],
}

pub struct VerifiedCache {
    inner: Cache<[u8; 32], Arc<Entry>>,
    leeway: f64,
    /// Bumped by every clear: a verification that began before a clear does not insert after
    /// it (its key may be the one that was revoked).
    epoch: AtomicU64,
    /// Tokens verified once and not (yet) cached, by a tag of their digest.
    doorkeeper: Doorkeeper,
}

/// Tokens seen once: slot `digest[0..8] mod len` holds `digest[8..16]`. A later token taking
/// the slot makes the first one wait for a third verification; nothing more.
struct Doorkeeper {
    slots: Box<[AtomicU64]>,
    mask: usize,
}

impl Doorkeeper {
    fn new(entries: u64) -> Self {
        // As many slots as cache entries (a power of two, 1 Ki .. 1 Mi: 8 KiB .. 8 MiB).
        let len = (entries.clamp(1 << 10, 1 << 20) as usize).next_power_of_two();
        Doorkeeper {
            slots: (0..len).map(|_| AtomicU64::new(0)).collect(),
            mask: len - 1,
        }
    }

    /// Whether the token with `digest` was seen before; remembers it either way.
    fn seen_again(&self, digest: &[u8; 32]) -> bool {
        let (index, tag) = digest.split_at(8);
        let index = u64::from_le_bytes(index.try_into().unwrap_or_default()) as usize;
        // Never 0, the empty slot's value.
        let tag = u64::from_le_bytes(tag[..8].try_into().unwrap_or_default()) | 1;
        self.slots[index & self.mask].swap(tag, Ordering::Relaxed) == tag
    }
}

struct UntilExpiry {
    leeway: f64,
}

impl Expiry<[u8; 32], Arc<Entry>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let remaining = value.verified.exp + self.leeway - now_secs();
        Some(Duration::from_secs_f64(
            remaining.clamp(0.0, 86_400.0 * 365.0),
        ))
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl VerifiedCache {
    pub fn new(entries: u64, leeway: Duration) -> Self {
        let leeway = leeway.as_secs_f64();
        VerifiedCache {
            inner: Cache::builder()
                .max_capacity(entries)
                .expire_after(UntilExpiry { leeway })
                .build(),
            leeway,
            epoch: AtomicU64::new(0),
            doorkeeper: Doorkeeper::new(entries),
        }
    }

    pub fn get(&self, digest: &[u8; 32]) -> Option<Arc<Entry>> {
        self.inner.get(digest)
    }

    pub fn remove(&self, digest: &[u8; 32]) {
        self.inner.invalidate(digest);
    }

    /// The epoch to pass to [`Self::insert`]: read it before looking the key up.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Keeps `entry` unless it has already expired, the cache was cleared since `epoch`, or
    /// this is the first time the token was verified (see the doorkeeper).
    pub fn insert(&self, digest: [u8; 32], entry: Arc<Entry>, now: f64, epoch: u64) {
        if entry.verified.exp + self.leeway > now
            && self.epoch() == epoch
            && self.doorkeeper.seen_again(&digest)
        {
            self.inner.insert(digest, entry);
            // A clear that raced with the insert: undo it rather than keep what it revoked.
            if self.epoch() != epoch {
                self.inner.invalidate(&digest);
            }
        }
    }

    /// Forgets everything, e.g. when signing keys are removed or replaced.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.inner.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(exp: f64) -> Arc<Entry> {
        Arc::new(Entry {
            verified: Verified {
                exp,
                nbf: None,
                iat: None,
                audiences: vec![],
                scopes: vec![],
                x5t_s256: None,
                jkt: None,
                jti: None,
                sub: None,
                client_id: None,
                raw: std::sync::Arc::from(&b"{}"[..]),
            },
            kid: Some("k1".into()),
            key: [1; 32],
        })
    }

    #[test]
    fn a_verification_begun_before_a_clear_is_not_inserted_after_it() {
        let cache = VerifiedCache::new(100, Duration::from_secs(0));
        let now = now_secs();
        let before = cache.epoch();
        cache.insert([7; 32], entry(now + 600.0), now, before);
        cache.clear();
        cache.insert([7; 32], entry(now + 600.0), now, before);
        assert!(cache.get(&[7; 32]).is_none());
        cache.insert([7; 32], entry(now + 600.0), now, cache.epoch());
        assert!(cache.get(&[7; 32]).is_some());
        // Expired on arrival: not kept.
        cache.insert([8; 32], entry(now - 1.0), now, cache.epoch());
        cache.insert([8; 32], entry(now - 1.0), now, cache.epoch());
        assert!(cache.get(&[8; 32]).is_none());
    }

    #[test]
    fn a_token_is_cached_on_its_second_verification() {
        let cache = VerifiedCache::new(100, Duration::from_secs(0));
        let now = now_secs();
        let mut once = [3u8; 32];
        cache.insert([9; 32], entry(now + 600.0), now, cache.epoch());
        assert!(cache.get(&[9; 32]).is_none(), "cached on first sight");
        // 5 000 tokens each seen once (50 times the cache's size): none is kept.
        for i in 0..5_000u32 {
            once[..4].copy_from_slice(&i.to_le_bytes());
            once[8..12].copy_from_slice(&i.to_be_bytes());
            cache.insert(once, entry(now + 600.0), now, cache.epoch());
        }
        cache.inner.run_pending_tasks();
        assert_eq!(cache.inner.entry_count(), 0);
        // Seen again (the one-time tokens may have taken its slot: at most twice more).
        for _ in 0..2 {
            cache.insert([9; 32], entry(now + 600.0), now, cache.epoch());
        }
        assert!(cache.get(&[9; 32]).is_some(), "not cached when seen again");
    }
}
