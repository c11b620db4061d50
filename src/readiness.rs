//! What `/readyz` waits for: set by the listener probe, the key refresh and the state probe,
//! read by the admin listener.

use std::sync::atomic::{AtomicBool, Ordering};

/// What `/readyz` waits for.
#[derive(Default)]
pub struct Readiness {
    listener_up: AtomicBool,
    keys_loaded: AtomicBool,
    /// The shared state (Redis) answers; always true with redb. False until the first probe.
    state_up: AtomicBool,
    /// The shared state evicts keys under memory pressure (a `maxmemory-policy` other than
    /// `noeviction`, and `state.redis.allow_eviction` is false): ledger and replay records
    /// could vanish.
    state_evicts: AtomicBool,
    /// While the state is down: it refused bindgate's credentials (rather than not answering).
    state_refuses_credentials: AtomicBool,
}

impl Readiness {
    /// `keys_needed`: false when no JWKS is configured, so nothing has to load.
    pub fn new(keys_needed: bool) -> Self {
        Self::with_state_probe(keys_needed, false)
    }

    /// With `state_probed`, not ready until the shared state's first probe succeeds.
    pub fn with_state_probe(keys_needed: bool, state_probed: bool) -> Self {
        Readiness {
            listener_up: AtomicBool::new(false),
            keys_loaded: AtomicBool::new(!keys_needed),
            state_up: AtomicBool::new(!state_probed),
            state_evicts: AtomicBool::new(false),
            state_refuses_credentials: AtomicBool::new(false),
        }
    }

    pub fn set_state_up(&self, up: bool) {
        self.state_up.store(up, Ordering::Release);
    }

    /// The state is down because it refuses bindgate's credentials (`/readyz` says so).
    pub fn set_state_refuses_credentials(&self, refuses: bool) {
        self.state_refuses_credentials
            .store(refuses, Ordering::Release);
    }

    pub fn set_state_evicts(&self, evicts: bool) {
        self.state_evicts.store(evicts, Ordering::Release);
    }

    pub fn set_listener_up(&self) {
        self.listener_up.store(true, Ordering::Release);
    }

    pub fn set_keys_loaded(&self, loaded: bool) {
        self.keys_loaded.store(loaded, Ordering::Release);
    }

    /// `None` when ready, or what is still missing.
    pub fn missing(&self) -> Option<&'static str> {
        if !self.listener_up.load(Ordering::Acquire) {
            Some("the TLS listener is not accepting connections yet")
        } else if !self.keys_loaded.load(Ordering::Acquire) {
            Some("no signing keys are loaded")
        } else if !self.state_up.load(Ordering::Acquire) {
            if self.state_refuses_credentials.load(Ordering::Acquire) {
                Some("the shared state (Redis) refuses bindgate's password (state.redis.password or the url's)")
            } else {
                Some("the shared state (Redis) does not answer")
            }
        } else if self.state_evicts.load(Ordering::Acquire) {
            Some("the shared state (Redis) evicts keys (maxmemory-policy is not noeviction; state.redis.allow_eviction: true accepts it)")
        } else {
            None
        }
    }
}
