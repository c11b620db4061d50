//! The export: finished spans wait in a bounded queue; one task sends them in batches to the
//! collector (`POST {endpoint}/v1/traces`, protobuf), each send bounded by `timeout`. A full
//! queue drops the new spans and counts them: a slow or absent collector costs requests
//! nothing.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Span;

/// Spans per request body at most.
const BATCH: usize = 512;

/// Spans waiting for export, and the counts of what became of them.
pub struct Queue {
    waiting: Mutex<Vec<Span>>,
    capacity: usize,
    wake: tokio::sync::Notify,
    /// `bindgate_otlp_spans_total{outcome}`: exported, dropped (queue full), failed (the
    /// collector refused or did not answer).
    outcomes: prometheus::IntCounterVec,
}

impl Queue {
    pub fn new(capacity: usize) -> Queue {
        let outcomes = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "otlp_spans_total",
                "Spans by outcome: exported, dropped (the export queue was full), failed (the collector refused them or did not answer)",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        for o in ["exported", "dropped", "failed"] {
            outcomes.with_label_values(&[o]);
        }
        Queue {
            waiting: Mutex::new(Vec::new()),
            capacity,
            wake: tokio::sync::Notify::new(),
            outcomes,
        }
    }

    pub fn metric(&self) -> Box<dyn prometheus::core::Collector> {
        Box::new(self.outcomes.clone())
    }

    /// Queues a request's spans whole, or drops them (counted) when they do not fit.
    pub fn offer(&self, spans: Vec<Span>) {
        let n = spans.len();
        let queued = match self.waiting.lock() {
            Ok(mut waiting) if waiting.len() + n <= self.capacity => {
                waiting.extend(spans);
                Some(waiting.len())
            }
            Ok(_) => None,
            Err(_) => return,
        };
        match queued {
            None => self
                .outcomes
                .with_label_values(&["dropped"])
                .inc_by(n as u64),
            Some(len) if len >= BATCH => self.wake.notify_one(),
            Some(_) => {}
        }
    }

    fn take(&self) -> Vec<Span> {
        let Ok(mut waiting) = self.waiting.lock() else {
            return Vec::new();
        };
        let n = waiting.len().min(BATCH);
        waiting.drain(..n).collect()
    }
}

/// The background task that sends the queue's spans.
pub struct Exporter {
    pub tracer: Arc<super::Tracer>,
}

impl Exporter {
    async fn send(&self, client: &reqwest::Client, url: &url::Url, spans: Vec<Span>) {
        let n = spans.len() as u64;
        let body = super::otlp::export_request(&self.tracer.settings.service_name, &spans);
        let sent = client
            .post(url.clone())
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await;
        let outcome = match sent {
            Ok(r) if r.status().is_success() => "exported",
            Ok(r) => {
                tracing::debug!(target: "bindgate::telemetry", status = r.status().as_u16(), "the collector refused spans");
                "failed"
            }
            Err(e) => {
                tracing::debug!(target: "bindgate::telemetry", "the collector did not take spans: {e}");
                "failed"
            }
        };
        self.tracer
            .queue
            .outcomes
            .with_label_values(&[outcome])
            .inc_by(n);
    }
}

#[async_trait]
impl BackgroundService for Exporter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Ok(url) = self.tracer.settings.endpoint.join("v1/traces") else {
            return;
        };
        let Ok(client) = reqwest::Client::builder()
            .timeout(self.tracer.settings.timeout)
            .connect_timeout(self.tracer.settings.timeout)
            .build()
        else {
            tracing::error!(target: "bindgate::telemetry", "no HTTP client for the OTLP export");
            return;
        };
        loop {
            let stopping = tokio::select! {
                _ = shutdown.changed() => true,
                _ = self.tracer.queue.wake.notified() => false,
                _ = tokio::time::sleep(Duration::from_millis(500)) => false,
            };
            loop {
                let batch = self.tracer.queue.take();
                if batch.is_empty() {
                    break;
                }
                self.send(&client, &url, batch).await;
            }
            if stopping {
                return;
            }
        }
    }
}
