//! What an operator watches of bindgate's own dependencies: the configuration's reloads, the
//! key sets, the shared state (Redis) and the upstreams.

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

/// Buckets for the calls bindgate waits on (Redis commands, upstream answers): 100 µs to 10 s.
const WAIT_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

pub struct Operations {
    /// When the running configuration was last loaded (at start or by a reload) or its
    /// certificate files were last taken.
    pub last_reload_success: IntGauge,
    /// 1 when the last reload was taken, 0 when it was refused.
    pub last_reload_successful: IntGauge,
    /// When each key set (by issuer) was last fetched and installed.
    pub jwks_last_success: IntGaugeVec,
    /// How old each served key set is: seconds since that fetch (brought up to date on scrape).
    jwks_key_set_age: IntGaugeVec,
    /// 1 while the shared state (Redis) answers the probe, 0 while not; absent without Redis.
    pub state_up: IntGauge,
    /// How long each command (or pipeline, or script) sent to Redis took, answered or not.
    pub redis_command_duration: Histogram,
    /// Connections to an upstream that could not be made (refused, timed out, TLS), by
    /// upstream.
    pub upstream_connect_failures: IntCounterVec,
    /// From choosing an upstream to its response head, by upstream.
    pub upstream_response_duration: HistogramVec,
    /// A balanced upstream's endpoints by state: `healthy` (taken) or `out` (failing its
    /// health check, or left out after a failed connection).
    pub upstream_endpoints: IntGaugeVec,
}

impl Operations {
    pub fn new() -> Self {
        let last_reload_success = IntGauge::new(
            "config_last_reload_success_timestamp_seconds",
            "When the running configuration was loaded (start or reload) or its certificate \
             files were taken (seconds since the epoch)",
        )
        .expect("static metric definition");
        last_reload_success.set(unix_now());
        let last_reload_successful = IntGauge::new(
            "config_last_reload_successful",
            "1 when the last reload was taken, 0 when it was refused",
        )
        .expect("static metric definition");
        last_reload_successful.set(1);
        let jwks_last_success = IntGaugeVec::new(
            Opts::new(
                "jwks_last_success_timestamp_seconds",
                "When the key set was last fetched and installed (seconds since the epoch)",
            ),
            &["issuer"],
        )
        .expect("static metric definition");
        let jwks_key_set_age = IntGaugeVec::new(
            Opts::new(
                "jwks_key_set_age_seconds",
                "Seconds since the served key set was fetched",
            ),
            &["issuer"],
        )
        .expect("static metric definition");
        let state_up = IntGauge::new(
            "state_up",
            "1 while the shared state (Redis) answers, 0 while it does not",
        )
        .expect("static metric definition");
        let redis_command_duration = Histogram::with_opts(
            HistogramOpts::new(
                "redis_command_duration_seconds",
                "How long a command, pipeline or script sent to Redis took, answered or failed",
            )
            .buckets(WAIT_BUCKETS.to_vec()),
        )
        .expect("static metric definition");
        let upstream_connect_failures = IntCounterVec::new(
            Opts::new(
                "upstream_connect_failures_total",
                "Connections to an upstream that could not be made (refused, timed out, TLS)",
            ),
            &["upstream"],
        )
        .expect("static metric definition");
        let upstream_response_duration = HistogramVec::new(
            HistogramOpts::new(
                "upstream_response_duration_seconds",
                "From choosing the upstream to its response head (connecting and sending \
                 the request included)",
            )
            .buckets(WAIT_BUCKETS.to_vec()),
            &["upstream"],
        )
        .expect("static metric definition");
        let upstream_endpoints = IntGaugeVec::new(
            Opts::new(
                "upstream_endpoints",
                "A balanced upstream's endpoints by state: healthy, or out (failing its health \
                 check or left out after a failed connection)",
            ),
            &["upstream", "state"],
        )
        .expect("static metric definition");
        Operations {
            last_reload_success,
            upstream_endpoints,
            last_reload_successful,
            jwks_last_success,
            jwks_key_set_age,
            state_up,
            redis_command_duration,
            upstream_connect_failures,
            upstream_response_duration,
        }
    }

    /// Every metric, to register.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.last_reload_success.clone()),
            Box::new(self.last_reload_successful.clone()),
            Box::new(self.jwks_last_success.clone()),
            Box::new(self.jwks_key_set_age.clone()),
            Box::new(self.upstream_connect_failures.clone()),
            Box::new(self.upstream_response_duration.clone()),
            Box::new(self.upstream_endpoints.clone()),
        ]
    }

    /// The shared state's metrics, registered only where there is one.
    pub fn state_collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.state_up.clone()),
            Box::new(self.redis_command_duration.clone()),
        ]
    }

    /// A reload (or certificate files) taken, or refused.
    pub fn reloaded(&self, taken: bool) {
        if taken {
            self.last_reload_success.set(unix_now());
        }
        self.last_reload_successful.set(i64::from(taken));
    }

    /// Brings the key sets' ages up to date.
    pub fn tick(&self, now: i64) {
        for family in self.jwks_last_success.collect() {
            for m in family.get_metric() {
                let Some(issuer) = m.get_label().first().map(|l| l.get_value()) else {
                    continue;
                };
                let at = m.get_gauge().get_value() as i64;
                self.jwks_key_set_age
                    .with_label_values(&[issuer])
                    .set(now - at);
            }
        }
    }
}

impl Default for Operations {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
