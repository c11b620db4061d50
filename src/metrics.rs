//! Prometheus metrics, in a registry of bindgate's own (served by the admin listener).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Requests by route, target and status.
    pub requests: IntCounterVec,
    /// Latency by route and target.
    pub latency: HistogramVec,
    /// Rejections by reason.
    pub rejections: IntCounterVec,
}

impl Metrics {
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
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(rejections.clone()),
        ] {
            registry
                .register(m)
                .expect("each metric is registered once");
        }
        Metrics {
            registry,
            requests,
            latency,
            rejections,
        }
    }

    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        // Registration only fails for duplicate names, which would be a programming error.
        if let Err(e) = self.registry.register(collector) {
            tracing::error!("metric registration failed: {e}");
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
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
