//! Traces (OpenTelemetry over OTLP/HTTP): a span per request with children for what it waited
//! on (authorisation, key fetch, introspection, DPoP, state, the upstream), W3C trace context
//! taken from the client when trusted and always given to the upstream, and an export that
//! never holds a request up: a bounded queue, spans dropped and counted when it is full.

mod export;
mod otlp;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use export::{Exporter, Queue};

/// What `telemetry` in `proxy.yaml` says.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// OTLP/HTTP base, e.g. `http://127.0.0.1:4318` (spans go to `/v1/traces`).
    pub endpoint: url::Url,
    /// Share of new traces recorded (a client's sampled flag decides for trusted ones).
    pub sample_ratio: f64,
    pub service_name: String,
    /// Take `traceparent`/`tracestate` from the client (otherwise a new trace starts here).
    pub trust_incoming_trace: bool,
    /// Spans waiting for export at most; more are dropped and counted.
    pub queue: usize,
    /// One export's deadline.
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone)]
pub enum Value {
    Str(String),
    Int(i64),
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// A finished span, as exported.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub remote_parent: bool,
    pub trace_state: Option<String>,
    pub name: String,
    pub kind: Kind,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// The status message of a failed span (the rejection reason).
    pub error: Option<String>,
}

/// The trace a request belongs to.
#[derive(Debug, Clone)]
pub struct Trace {
    pub trace_id: [u8; 16],
    /// The request's own (server) span.
    pub span_id: [u8; 8],
    /// The client's span, when its trace context was trusted.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
    pub trace_state: Option<String>,
    started: Instant,
    started_unix_nano: u64,
    /// The upstream call's span id: the parent the upstream sees in `traceparent`.
    pub upstream_span: [u8; 8],
    children: Vec<Span>,
}

impl Trace {
    /// `trace_id` in the hexadecimal form logs and `traceparent` use.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The `traceparent` for the upstream: this trace, the upstream call's span as parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            hex::encode(self.trace_id),
            hex::encode(self.upstream_span),
            if self.sampled { "01" } else { "00" }
        )
    }

    fn nanos_at(&self, at: Instant) -> u64 {
        self.started_unix_nano + at.saturating_duration_since(self.started).as_nanos() as u64
    }

    /// Records a span that ran from `start` to `end`, a child of `parent` (None: of the
    /// request's span); its id.
    #[allow(clippy::too_many_arguments)]
    pub fn child(
        &mut self,
        name: &str,
        kind: Kind,
        start: Instant,
        end: Instant,
        attributes: Vec<(&'static str, Value)>,
        span_id: Option<[u8; 8]>,
        parent: Option<[u8; 8]>,
        error: Option<String>,
    ) -> [u8; 8] {
        let span_id = span_id.unwrap_or_else(random_id);
        if self.sampled {
            self.children.push(Span {
                trace_id: self.trace_id,
                span_id,
                parent_span_id: Some(parent.unwrap_or(self.span_id)),
                remote_parent: false,
                trace_state: None,
                name: name.to_string(),
                kind,
                start_unix_nano: self.nanos_at(start),
                end_unix_nano: self.nanos_at(end),
                attributes,
                error,
            });
        }
        span_id
    }

    /// Takes what the code under [`collect`] recorded, as children of `parent`.
    pub fn adopt(&mut self, recorded: Steps, parent: Option<[u8; 8]>) {
        for (name, start, end) in recorded {
            self.child(
                &name,
                Kind::Internal,
                start,
                end,
                Vec::new(),
                None,
                parent,
                None,
            );
        }
    }

    /// The request's span and its children, finished now.
    pub fn finish(
        mut self,
        name: String,
        attributes: Vec<(&'static str, Value)>,
        error: Option<String>,
    ) -> Vec<Span> {
        let end = self.nanos_at(Instant::now());
        let mut spans = std::mem::take(&mut self.children);
        spans.push(Span {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent,
            remote_parent: self.parent.is_some(),
            trace_state: self.trace_state.clone(),
            name,
            kind: Kind::Server,
            start_unix_nano: self.started_unix_nano,
            end_unix_nano: end,
            attributes,
            error,
        });
        spans
    }
}

/// The process's tracer: the settings and the export queue.
pub struct Tracer {
    pub settings: Settings,
    pub queue: Queue,
}

impl Tracer {
    /// The trace of a request with these headers: the client's, when trusted and well formed
    /// (exactly one `traceparent`), else a new one sampled at `sample_ratio`.
    pub fn begin(&self, headers: &http::HeaderMap) -> Trace {
        let incoming = if self.settings.trust_incoming_trace {
            one(headers, "traceparent").and_then(parse_traceparent)
        } else {
            None
        };
        let (trace_id, parent, sampled, trace_state) = match incoming {
            Some((trace_id, parent, sampled)) => (
                trace_id,
                Some(parent),
                sampled,
                one(headers, "tracestate")
                    .filter(|s| s.len() <= 512 && s.bytes().all(|b| (0x20..0x7f).contains(&b)))
                    .map(str::to_string),
            ),
            None => {
                let trace_id = random_trace_id();
                (
                    trace_id,
                    None,
                    sampled_by_ratio(&trace_id, self.settings.sample_ratio),
                    None,
                )
            }
        };
        Trace {
            trace_id,
            span_id: random_id(),
            parent,
            sampled,
            trace_state,
            started: Instant::now(),
            started_unix_nano: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            upstream_span: random_id(),
            children: Vec::new(),
        }
    }

    /// Hands a finished request's spans to the exporter; never waits.
    pub fn end(&self, spans: Vec<Span>) {
        self.queue.offer(spans);
    }
}

fn one<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` (W3C Trace Context §3.2); all-zero
/// ids are invalid. Version 00 only: a later version's extra fields are not trusted.
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let [version, trace, parent, flags] = parts.as_slice() else {
        return None;
    };
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if *version != "00" || !lower_hex(trace, 32) || !lower_hex(parent, 16) || !lower_hex(flags, 2) {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    hex::decode_to_slice(trace, &mut trace_id).ok()?;
    hex::decode_to_slice(parent, &mut parent_id).ok()?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id, parent_id, flags & 1 == 1))
}

/// OpenTelemetry's TraceIdRatioBased: the trace id's last 8 bytes against the ratio.
fn sampled_by_ratio(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    (x as f64) < ratio * (1u64 << 63) as f64
}

fn random_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    while id == [0; 16] {
        let _ = openssl::rand::rand_bytes(&mut id);
    }
    id
}

fn random_id() -> [u8; 8] {
    let mut id = [0u8; 8];
    while id == [0; 8] {
        let _ = openssl::rand::rand_bytes(&mut id);
    }
    id
}

/// Steps recorded under [`collect`]: name, start, end.
pub type Steps = Vec<(String, Instant, Instant)>;

tokio::task_local! {
    static RECORDED: RefCell<Steps>;
}

/// Runs `f` with a recorder for the [`step`]s it awaits; returns what they recorded.
pub async fn collect<F: std::future::Future>(f: F) -> (F::Output, Steps) {
    RECORDED
        .scope(RefCell::new(Vec::new()), async move {
            let out = f.await;
            let recorded = RECORDED.with(|r| std::mem::take(&mut *r.borrow_mut()));
            (out, recorded)
        })
        .await
}

/// A step worth a span of its own (a key fetch, an introspection call), recorded when the
/// request it runs for is traced; nothing otherwise.
pub async fn step<F: std::future::Future>(name: &str, f: F) -> F::Output {
    let start = Instant::now();
    let out = f.await;
    let _ = RECORDED.try_with(|r| {
        r.borrow_mut()
            .push((name.to_string(), start, Instant::now()));
    });
    out
}

/// A shared tracer, when `telemetry` is configured.
pub type Shared = Option<Arc<Tracer>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_strictly() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, p, s) = parse_traceparent(good).unwrap();
        assert_eq!(hex::encode(t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(p), "00f067aa0ba902b7");
        assert!(s);
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_ratio_samples_its_share() {
        let n = 20_000;
        let kept = (0..n)
            .filter(|_| sampled_by_ratio(&random_trace_id(), 0.25))
            .count();
        assert!((4_000..6_000).contains(&kept), "{kept}");
        assert!(!sampled_by_ratio(&random_trace_id(), 0.0));
    }
}
