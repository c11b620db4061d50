//! Prometheus metrics, in a registry of bindgate's own (served by the admin listener).

mod operations;

pub use operations::Operations;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::atomic::{AtomicI64, Ordering};

/// The policy an authorisation decision was made under (the `policy` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Registration,
    SessionStore,
    Route,
}

impl Policy {
    const ALL: [Policy; 3] = [Policy::Registration, Policy::SessionStore, Policy::Route];

    pub fn label(self) -> &'static str {
        match self {
            Policy::Registration => "registration",
            Policy::SessionStore => "session_store",
            Policy::Route => "route",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    /// Requests by route, target and status.
    pub requests: IntCounterVec,
    /// Latency by route and target.
    pub latency: HistogramVec,
    /// Rejections by reason.
    pub rejections: IntCounterVec,
    /// Authorisation decisions by policy, decision and reason.
    pub decisions: IntCounterVec,
    /// `decisions` accepted, by [`Policy`], resolved once (the hot path hashes no labels).
    accepted: [IntCounter; Policy::ALL.len()],
    /// JWKS fetches by outcome (ok, failed).
    pub jwks_fetches: IntCounterVec,
    /// Refetches triggered by tokens naming an unknown kid.
    pub unknown_kid_refetches: IntCounterVec,
    /// Key lookups served from the last good key set while fetches fail.
    pub stale_key_uses: IntCounterVec,
    /// Introspection calls by result (active, inactive, error).
    pub introspection_requests: IntCounterVec,
    /// How long an introspection call took.
    pub introspection_duration: prometheus::Histogram,
    /// Introspection answer cache lookups by result (hit, miss).
    pub introspection_cache: IntCounterVec,
    /// Verified-token cache lookups by result (hit, miss).
    pub verified_cache: IntCounterVec,
    /// `verified_cache` with its label resolved once (the hot path does not look labels up).
    pub verified_cache_hit: IntCounter,
    pub verified_cache_miss: IntCounter,
    /// A cached token whose key is no longer published with the same material.
    pub verified_cache_revoked: IntCounter,
    /// DPoP proofs by result (`accepted`, `refused`) and reason of a refusal.
    pub dpop_proofs: IntCounterVec,
    /// Configuration reloads by result (`ok`, `failed`, `certificates`, `pending_pair`).
    pub reloads: IntCounterVec,
    /// Connections ended by a deadline, by reason (idle_timeout, header_timeout,
    /// handshake_timeout, body_timeout).
    pub connections_closed: IntCounterVec,
    /// Client TLS handshakes that failed, by kind (Pingora counts them; copied on scrape).
    tls_handshake_failures: IntCounterVec,
    /// The request window's events (`server.active_requests`; Pingora counts them; copied on
    /// scrape): waited, grew, reopened, shrank, expired, overran.
    request_window: IntCounterVec,
    /// Places the request windows of all worker threads have now.
    request_window_places: IntGauge,
    /// Connections the listener could not accept for want of a file descriptor.
    pub connections_refused: IntCounter,
    /// Upstream connections: opened, reused from the keep-alive pool, closed after leaving
    /// the pool unused (idle timeout, closed by the upstream, pushed out of a full pool).
    pub upstream_opened: IntCounter,
    pub upstream_reused: IntCounter,
    pub upstream_closed: IntCounter,
    /// Serialises the copy of Pingora's counters in [`Metrics::tick`].
    deadline_sync: std::sync::Mutex<()>,
    /// Seconds until the served certificate's `notAfter` (negative once expired).
    certificate_expiry_seconds: IntGauge,
    certificate_not_after: AtomicI64,
    /// Reloads, key sets, the shared state, upstreams.
    pub ops: Operations,
}

impl Metrics {
    /// An accepted authorisation under `policy`.
    pub fn accepted(&self, policy: Policy) {
        self.accepted[policy as usize].inc();
    }

    /// A rejected authorisation under `policy`, with the rejection's reason.
    pub fn rejected(&self, policy: Policy, reason: &str) {
        self.decisions
            .with_label_values(&[policy.label(), "rejected", reason])
            .inc();
    }

    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("bindgate".into()), None).expect("a static prefix is valid");
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests by route, target and status"),
            &["route", "target", "status"],
        )
        .expect("static metric definition");
        let latency = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Request latency").buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route", "target"],
        )
        .expect("static metric definition");
        let rejections = IntCounterVec::new(
            Opts::new("rejections_total", "Rejected requests by reason"),
            &["reason"],
        )
        .expect("static metric definition");
        let decisions = IntCounterVec::new(
            Opts::new(
                "authorisations_total",
                "Authorisation decisions by policy, decision (accepted, rejected) and reason",
            ),
            &["policy", "decision", "reason"],
        )
        .expect("static metric definition");
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "jwks_fetches_total",
                "JWKS fetches by key set (issuer: the tokens' or a software statement \
                 issuer's) and outcome",
            ),
            &["issuer", "outcome"],
        )
        .expect("static metric definition");
        let unknown_kid_refetches = IntCounterVec::new(
            Opts::new(
                "jwks_unknown_kid_refetches_total",
                "JWKS refetches triggered by an unknown kid, by key set",
            ),
            &["issuer"],
        )
        .expect("static metric definition");
        let stale_key_uses = IntCounterVec::new(
            Opts::new(
                "jwks_stale_key_uses_total",
                "Key lookups served from the last good key set while fetches fail, by key set",
            ),
            &["issuer"],
        )
        .expect("static metric definition");
        let introspection_requests = IntCounterVec::new(
            Opts::new(
                "introspection_requests_total",
                "Token introspection calls (RFC 7662) by result: active, inactive, error",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let introspection_duration = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "introspection_duration_seconds",
                "How long a token introspection call took",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("static metric definition");
        let introspection_cache = IntCounterVec::new(
            Opts::new(
                "introspection_cache_total",
                "Introspection answer cache lookups by result: hit, miss",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let verified_cache = IntCounterVec::new(
            Opts::new(
                "verified_token_cache_total",
                "Verified-token cache lookups by result",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let dpop_proofs = IntCounterVec::new(
            Opts::new(
                "dpop_proofs_total",
                "DPoP proofs by result and the reason of a refusal (replay: a jti seen before)",
            ),
            &["result", "reason"],
        )
        .expect("static metric definition");
        let reloads = IntCounterVec::new(
            Opts::new(
                "config_reloads_total",
                "Configuration reloads by result (ok, failed, certificates: new certificate files, \
                 pending_pair: a new key waiting for its certificate)",
            ),
            &["result"],
        )
        .expect("static metric definition");
        // Every series exists from the start, at 0: a dashboard's rate() needs no first event.
        for result in ["ok", "failed", "certificates", "pending_pair"] {
            reloads.with_label_values(&[result]);
        }
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "tls_handshake_failures_total",
                "Client TLS handshakes that failed, by reason: tls (no shared version or cipher, \
                 a certificate refused, not TLS), closed (the client went away), timeout \
                 (server.header_timeout), other",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        for reason in ["tls", "closed", "timeout", "other"] {
            tls_handshake_failures.with_label_values(&[reason]);
        }
        let request_window = IntCounterVec::new(
            Opts::new(
                "request_window_total",
                "The window of HTTP/1.x requests each thread works on at once \
                 (server.active_requests): waited (a request waited for a place), grew (a \
                 window doubled: requests waited while its thread had time to spare), reopened \
                 (a window that had just closed opened again at once: its thread starved), shrank \
                 (a window gave back an 8th of its places, a 64th when open: its thread was \
                 busy), expired (a \
                 place taken from a request that held it past server.active_hold), overran \
                 (a request waited 1 s and started without one)",
            ),
            &["event"],
        )
        .expect("static metric definition");
        for event in ["waited", "grew", "reopened", "shrank", "expired", "overran"] {
            request_window.with_label_values(&[event]);
        }
        let request_window_places = IntGauge::new(
            "request_window_places",
            "Places the windows of requests of all worker threads have now (each starts at \
             server.active_requests and follows its thread's load; 0 when off)",
        )
        .expect("static metric definition");
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "connections_closed_total",
                "Client connections bindgate closed on a deadline, by reason (idle_timeout, \
                 header_timeout, handshake_timeout, body_timeout)",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        for reason in [
            "idle_timeout",
            "header_timeout",
            "handshake_timeout",
            "body_timeout",
        ] {
            connections_closed.with_label_values(&[reason]);
        }
        let connections_refused = IntCounter::new(
            "connections_refused_total",
            "Connections the listener refused: past the connection cap (the file descriptor \
             limit less a reserve for upstream connections) or no descriptor left",
        )
        .expect("static metric definition");
        let upstream_connections = IntCounterVec::new(
            Opts::new(
                "upstream_connections_total",
                "Upstream connections by event: opened, reused (taken from the keep-alive \
                 pool), closed (left the pool without being reused)",
            ),
            &["event"],
        )
        .expect("static metric definition");
        let certificate_expiry_seconds = IntGauge::new(
            "server_certificate_expiry_seconds",
            "Seconds until the served certificate expires",
        )
        .expect("static metric definition");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "build_info",
                "The bindgate build that runs: its version and commit (always 1)",
            ),
            &["version", "commit"],
        )
        .expect("static metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("BINDGATE_COMMIT")])
            .set(1);
        // RSS, CPU, open and maximum descriptors, threads, start time (process_*).
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            registry
                .register(Box::new(process))
                .expect("the process collector is registered once");
        }
        for m in [
            Box::new(build_info) as Box<dyn prometheus::core::Collector>,
            Box::new(reloads.clone()),
            Box::new(connections_closed.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(request_window.clone()),
            Box::new(request_window_places.clone()),
            Box::new(connections_refused.clone()),
            Box::new(upstream_connections.clone()),
            Box::new(certificate_expiry_seconds.clone()),
            Box::new(dpop_proofs.clone()),
            Box::new(requests.clone()),
            Box::new(latency.clone()),
            Box::new(rejections.clone()),
            Box::new(decisions.clone()),
            Box::new(jwks_fetches.clone()),
            Box::new(unknown_kid_refetches.clone()),
            Box::new(stale_key_uses.clone()),
            Box::new(verified_cache.clone()),
            Box::new(introspection_requests.clone()),
            Box::new(introspection_duration.clone()),
            Box::new(introspection_cache.clone()),
        ] {
            registry
                .register(m)
                .expect("each metric is registered once");
        }
        let ops = Operations::new();
        for m in ops.collectors() {
            registry
                .register(m)
                .expect("each metric is registered once");
        }
        Metrics {
            registry,
            requests,
            latency,
            rejections,
            accepted: Policy::ALL
                .map(|p| decisions.with_label_values(&[p.label(), "accepted", "-"])),
            decisions,
            jwks_fetches,
            unknown_kid_refetches,
            stale_key_uses,
            verified_cache_hit: verified_cache.with_label_values(&["hit"]),
            verified_cache_miss: verified_cache.with_label_values(&["miss"]),
            verified_cache_revoked: verified_cache.with_label_values(&["revoked"]),
            dpop_proofs,
            introspection_requests,
            introspection_duration,
            introspection_cache,
            verified_cache,
            reloads,
            connections_closed,
            tls_handshake_failures,
            request_window,
            request_window_places,
            connections_refused,
            upstream_opened: upstream_connections.with_label_values(&["opened"]),
            upstream_reused: upstream_connections.with_label_values(&["reused"]),
            upstream_closed: upstream_connections.with_label_values(&["closed"]),
            deadline_sync: std::sync::Mutex::new(()),
            certificate_expiry_seconds,
            certificate_not_after: AtomicI64::new(0),
            ops,
        }
    }

    /// The served certificate expires at `not_after` (seconds since the epoch).
    pub fn certificate_expiry(&self, not_after: i64) {
        self.certificate_not_after
            .store(not_after, Ordering::Relaxed);
        self.tick();
    }

    /// Brings time-based gauges up to date (called every second and at every scrape).
    pub fn tick(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let not_after = self.certificate_not_after.load(Ordering::Relaxed);
        if not_after != 0 {
            self.certificate_expiry_seconds.set(not_after - now);
        }
        self.copy_deadline_counts();
        self.ops.tick(now);
    }

    /// A reload taken: `result` is `ok` (the file) or `certificates` (the watched files).
    pub fn reloads_done(&self, result: &str) {
        self.reloads.with_label_values(&[result]).inc();
        self.ops.reloaded(true);
    }

    /// A reload of the file refused.
    pub fn reload_refused(&self) {
        self.reloads.with_label_values(&["failed"]).inc();
        self.ops.reloaded(false);
    }

    /// The shared state's metrics (with Redis only).
    pub fn register_state(&self) {
        for m in self.ops.state_collectors() {
            self.register(m);
        }
    }

    /// Brings the counts of Pingora's deadlines (kept in `pingora_core::apps::deadlines`) into
    /// the registry.
    fn copy_deadline_counts(&self) {
        use pingora::apps::{deadlines, window};
        let Ok(_one_at_a_time) = self.deadline_sync.lock() else {
            return;
        };
        let catch_up = |counter: &IntCounter, total: u64| {
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        };
        for (reason, total) in [
            ("idle_timeout", &deadlines::IDLE),
            ("header_timeout", &deadlines::HEADER),
            ("handshake_timeout", &deadlines::HANDSHAKE),
        ] {
            catch_up(
                &self.connections_closed.with_label_values(&[reason]),
                total.load(Ordering::Relaxed),
            );
        }
        for (reason, total) in [
            ("tls", &deadlines::HANDSHAKE_FAILED_TLS),
            ("closed", &deadlines::HANDSHAKE_FAILED_CLOSED),
            ("timeout", &deadlines::HANDSHAKE),
            ("other", &deadlines::HANDSHAKE_FAILED_OTHER),
        ] {
            catch_up(
                &self.tls_handshake_failures.with_label_values(&[reason]),
                total.load(Ordering::Relaxed),
            );
        }
        catch_up(
            &self.connections_refused,
            deadlines::ACCEPT_FD_LIMIT.load(Ordering::Relaxed),
        );
        for (event, total) in [
            ("waited", &window::WAITED),
            ("grew", &window::GREW),
            ("reopened", &window::REOPENED),
            ("shrank", &window::SHRANK),
            ("expired", &window::EXPIRED),
            ("overran", &window::OVERRAN),
        ] {
            catch_up(
                &self.request_window.with_label_values(&[event]),
                total.load(Ordering::Relaxed),
            );
        }
        self.request_window_places
            .set(i64::try_from(window::PLACES.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    }

    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        // Registration only fails for duplicate names, which would be a programming error.
        if let Err(e) = self.registry.register(collector) {
            tracing::error!("metric registration failed: {e}");
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        self.tick();
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The request metrics of one place (route), resolved once: the hot path increments counters
/// instead of hashing label values on every request.
pub struct PlaceMetrics {
    latency: prometheus::Histogram,
    /// By status code (100..=599), created on first use.
    requests: Box<[std::sync::OnceLock<prometheus::IntCounter>]>,
    route: String,
    target: String,
}

impl PlaceMetrics {
    pub fn new(metrics: &Metrics, route: &str, target: &str) -> Self {
        PlaceMetrics {
            latency: metrics.latency.with_label_values(&[route, target]),
            requests: (100..600).map(|_| std::sync::OnceLock::new()).collect(),
            route: route.to_string(),
            target: target.to_string(),
        }
    }

    pub fn count(&self, metrics: &Metrics, status: u16, elapsed: std::time::Duration) {
        self.latency.observe(elapsed.as_secs_f64());
        match self.requests.get(usize::from(status).wrapping_sub(100)) {
            Some(slot) => slot
                .get_or_init(|| {
                    metrics.requests.with_label_values(&[
                        &self.route,
                        &self.target,
                        &status.to_string(),
                    ])
                })
                .inc(),
            // No answer written (status 0): rare, looked up.
            None => metrics
                .requests
                .with_label_values(&[&self.route, &self.target, &status.to_string()])
                .inc(),
        }
    }
}
