//! The verified-token cache: SHA-256 of the token → the outcome of its signature and
//! time-independent claim checks. An entry lives until the token's `exp` (plus leeway) at the
//! latest; the clock and the certificate binding are checked again on every hit.

use moka::sync::Cache;
use moka::Expiry;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::claims::Verified;

pub struct VerifiedCache {
    inner: Cache<[u8; 32], Arc<Verified>>,
    leeway: f64,
}

struct UntilExpiry {
    leeway: f64,
}

impl Expiry<[u8; 32], Arc<Verified>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Verified>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let remaining = value.exp + self.leeway - now_secs();
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
        }
    }

    pub fn get(&self, digest: &[u8; 32]) -> Option<Arc<Verified>> {
        self.inner.get(digest)
    }

    /// Keeps `verified` unless it has already expired.
    pub fn insert(&self, digest: [u8; 32], verified: Arc<Verified>, now: f64) {
        if verified.exp + self.leeway > now {
            self.inner.insert(digest, verified);
        }
    }

    /// Forgets everything, e.g. when signing keys are removed.
    pub fn clear(&self) {
        self.inner.invalidate_all();
    }
}
