//! The admin listener: `/healthz`, `/readyz`, `/metrics`.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::metrics::Metrics;

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
        }
    }

    pub fn set_state_up(&self, up: bool) {
        self.state_up.store(up, Ordering::Release);
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
            Some("the shared state (Redis) does not answer")
        } else if self.state_evicts.load(Ordering::Acquire) {
            Some("the shared state (Redis) evicts keys (maxmemory-policy is not noeviction; state.redis.allow_eviction: true accepts it)")
        } else {
            None
        }
    }
}

pub struct AdminApp {
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json(status: u16, value: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", value.to_string().into_bytes())
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let get = session.req_header().method == http::Method::GET;
        let path = session.req_header().uri.path().to_string();
        match (get, path.as_str()) {
            (true, "/healthz") => json(200, serde_json::json!({"status": "ok"})),
            (true, "/readyz") => match self.readiness.missing() {
                None => json(200, serde_json::json!({"status": "ready"})),
                Some(why) => json(
                    503,
                    serde_json::json!({"status": "not_ready", "reason": why}),
                ),
            },
            (true, "/metrics") => reply(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render(),
            ),
            (false, "/healthz" | "/readyz" | "/metrics") => json(
                405,
                serde_json::json!({"error": "method_not_allowed", "error_description": "Use GET"}),
            ),
            _ => json(
                404,
                serde_json::json!({"error": "not_found", "error_description": "Try /healthz, /readyz or /metrics"}),
            ),
        }
    }
}
