//! The request's trace through the hooks: begun as the request arrives, its authorisation and
//! the steps under it recorded, the upstream call recorded when its answer head arrives (or
//! when it failed), the whole handed to the exporter in `logging`.

use pingora::http::RequestHeader;
use pingora::proxy::Session;
use std::time::Instant;

use super::live::RequestCtx;
use crate::telemetry::{Kind, Steps, Tracer, Value};

/// The authorisation's span, with the steps it waited on as its children.
pub(super) fn authorised(
    ctx: &mut RequestCtx,
    started: Instant,
    steps: Steps,
    refused: Option<&str>,
) {
    let Some(trace) = &mut ctx.trace else {
        return;
    };
    let mut attributes = vec![(
        "bindgate.decision",
        Value::Str(
            if refused.is_some() {
                "refused"
            } else {
                "allowed"
            }
            .into(),
        ),
    )];
    if let Some(reason) = refused {
        attributes.push(("bindgate.rejection_reason", Value::Str(reason.into())));
    }
    let id = trace.child(
        "authorise",
        Kind::Internal,
        started,
        Instant::now(),
        attributes,
        None,
        None,
        refused.map(str::to_string),
    );
    trace.adopt(steps, Some(id));
}

/// Steps outside the authorisation (state operations, a single-use token taken): children
/// of the request's span.
pub(super) fn steps(ctx: &mut RequestCtx, steps: Steps) {
    if let Some(trace) = &mut ctx.trace {
        trace.adopt(steps, None);
    }
}

/// The upstream's answer head arrived: its wait is the access log's `upstream_us` and the
/// upstream call's span.
pub(super) fn upstream_answered(ctx: &mut RequestCtx, status: u16) {
    let Some(started) = ctx.upstream_started else {
        return;
    };
    let now = Instant::now();
    ctx.upstream_took = Some(now - started);
    upstream_span(ctx, started, now, Some(status));
}

fn upstream_span(ctx: &mut RequestCtx, started: Instant, end: Instant, status: Option<u16>) {
    if !ctx.trace.as_ref().is_some_and(|t| t.sampled) {
        return;
    }
    let address = ctx
        .forwarding()
        .ok()
        .map(|(_, f)| f.upstream.config.address.to_string());
    let Some(trace) = &mut ctx.trace else {
        return;
    };
    let mut attributes = Vec::new();
    if let Some(a) = address {
        attributes.push(("server.address", Value::Str(a)));
    }
    if let Some(s) = status {
        attributes.push(("http.response.status_code", Value::Int(i64::from(s))));
    }
    let id = trace.upstream_span;
    trace.child(
        "upstream",
        Kind::Client,
        started,
        end,
        attributes,
        Some(id),
        None,
        status
            .is_none()
            .then(|| "no answer from the upstream".to_string()),
    );
}

/// The head that goes upstream carries this trace: `traceparent` names the upstream call's
/// span; `tracestate` passes on only from a trusted client.
pub(super) fn propagate(ctx: &RequestCtx, trusted: bool, upstream_request: &mut RequestHeader) {
    let Some(trace) = &ctx.trace else {
        return;
    };
    let _ = upstream_request.insert_header("traceparent", trace.traceparent());
    match (&trace.trace_state, trusted) {
        (Some(state), true) => {
            let _ = upstream_request.insert_header("tracestate", state.as_str());
        }
        _ => {
            upstream_request.remove_header("tracestate");
        }
    }
}

/// Ends the request's trace: its span (OpenTelemetry's HTTP server conventions) and children
/// go to the exporter.
pub(super) fn finish(
    tracer: &Tracer,
    ctx: &mut RequestCtx,
    session: &Session,
    status: u16,
    route: &str,
    reason: Option<&str>,
) {
    if let (Some(started), None) = (ctx.upstream_started, ctx.upstream_took) {
        upstream_span(ctx, started, Instant::now(), None);
    }
    let Some(trace) = ctx.trace.take() else {
        return;
    };
    if !trace.sampled {
        return;
    }
    let req = session.req_header();
    let path = match ctx.reading() {
        Some(r) => r.target.path.clone(),
        None => req.uri.path().to_string(),
    };
    let version = if session.is_http2() { "2" } else { "1.1" };
    let mut attributes = vec![
        ("http.request.method", Value::Str(req.method.to_string())),
        ("url.scheme", Value::Str("https".into())),
        ("url.path", Value::Str(path)),
        ("http.route", Value::Str(route.to_string())),
        ("network.protocol.name", Value::Str("http".into())),
        ("network.protocol.version", Value::Str(version.into())),
        (
            "bindgate.operation",
            Value::Str(
                ctx.reading()
                    .map(|r| r.operation.name())
                    .unwrap_or("-")
                    .into(),
            ),
        ),
        (
            "bindgate.decision",
            Value::Str(
                if reason.is_some() {
                    "refused"
                } else {
                    "allowed"
                }
                .into(),
            ),
        ),
    ];
    if status != 0 {
        attributes.push(("http.response.status_code", Value::Int(i64::from(status))));
    }
    if let Some(ip) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
    {
        attributes.push(("client.address", Value::Str(ip.to_string())));
    }
    if let Some(r) = reason {
        attributes.push(("bindgate.rejection_reason", Value::Str(r.into())));
    }
    let name = format!("{} {route}", req.method);
    tracer.end(trace.finish(name, attributes, reason.map(str::to_string)));
}
