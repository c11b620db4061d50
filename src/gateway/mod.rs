//! The Pingora `ProxyHttp`: read → authorise → served here or forwarded. The hooks alone live
//! here; the decisions are made by `routing` (the operation) and `auth` (the permit), the
//! answers by `rejection`.
//!
//! Which hook sets what (see `journey` for the stages):
//!
//! | hook | reads | sets |
//! |---|---|---|
//! | `request_filter` | head, client certificate | `Read` (refused or served here) or `Forwarding` (body read whole, upstream place taken, single-use token taken) |
//! | `request_body_filter` | body chunks | `body_bytes` (413 past `max_body`) |
//! | `upstream_peer` | `Forwarding.upstream` | — |
//! | `upstream_request_filter` | `Reading`, `Forwarding` | the head that goes upstream |
//! | `response_filter` / `response_body_filter` | upstream answer | token kept on 2xx; quiet delete → 204 |
//! | `fail_to_proxy` | Pingora's error | the contract's answer |
//! | `logging` | everything | token given back unless kept; metrics; access log |

mod answer;
pub mod balance;
mod body;
mod journey;
mod live;
mod refusal;
mod spans;
mod upstream;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};
use std::sync::Arc;

use crate::auth::Facts;
use crate::config::Target;
use crate::rejection::Rejection;
use crate::telemetry;
use crate::tls;
use answer::write_answer;
use journey::Stage;
pub use live::Live;
use live::RequestCtx;
use upstream::Outgoing;
pub use upstream::UpstreamTarget;

/// The proxy: each request runs on the [`Live`] configuration current when it starts.
pub struct Gateway {
    live: Arc<arc_swap::ArcSwap<Live>>,
    /// Set once an upgrade or a shutdown has begun: every answer then closes its connection
    /// (`Connection: close`), so that clients leave on a clean close instead of sending a
    /// request into an idle connection the process is about to drop.
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// The process's metrics (upstream connection reuse is counted here, not per `Live`).
    metrics: Arc<crate::metrics::Metrics>,
    /// Traces, when `telemetry` is configured (fixed for the process's life).
    tracer: crate::telemetry::Shared,
}

impl Gateway {
    pub fn new(
        live: Arc<arc_swap::ArcSwap<Live>>,
        draining: Arc<std::sync::atomic::AtomicBool>,
        metrics: Arc<crate::metrics::Metrics>,
        tracer: crate::telemetry::Shared,
    ) -> Self {
        Gateway {
            live,
            draining,
            metrics,
            tracer,
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.live.load_full())
    }

    /// No downstream modules: Pingora's default adds a (disabled) response-compression module,
    /// which still runs on every request; bindgate compresses nothing.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            session.set_keepalive(None);
        }
        let live = ctx.live.clone();
        ctx.request_id =
            crate::request_id::for_request(&session.req_header().headers, live.trust_request_id);
        if let Some(tracer) = &self.tracer {
            ctx.trace = Some(tracer.begin(&session.req_header().headers));
        }
        let traced = ctx.trace.as_ref().is_some_and(|t| t.sampled);
        ctx.peer_certificate = tls::peer_certificate(session.digest());
        let (reading, session_request) = match live.read(session) {
            Ok(read) => read,
            Err(rejection) => return live.reject(session, ctx, rejection).await,
        };
        let req = session.req_header();
        let facts = Facts {
            method: &req.method,
            path: &reading.target.path,
            headers: &req.headers,
            query: reading.target.query.as_deref(),
            peer: ctx.peer_certificate.as_ref(),
        };
        let authorising = std::time::Instant::now();
        // A traced request's steps are collected in a boxed future of its own: the hot path's
        // own future stays the size it was.
        let (permit, steps) = if traced {
            Box::pin(telemetry::collect(live.authoriser.authorise(
                &reading.operation,
                session_request,
                &facts,
            )))
            .await
        } else {
            let permit = live
                .authoriser
                .authorise(&reading.operation, session_request, &facts)
                .await;
            (permit, Vec::new())
        };
        ctx.authorising = authorising.elapsed();
        let permit = match permit {
            Ok(permit) => {
                spans::authorised(ctx, authorising, steps, None);
                ctx.token = permit.token().cloned();
                permit
            }
            Err(denial) => {
                let rejection: Rejection = denial.into();
                spans::authorised(ctx, authorising, steps, Some(rejection.reason()));
                ctx.stage = Stage::Read(reading);
                return live.reject(session, ctx, rejection).await;
            }
        };
        match live.router.target(&reading.operation) {
            Target::Embedded => {
                let operation = reading.operation.clone();
                ctx.stage = Stage::Read(reading);
                if !traced {
                    return live.serve_embedded(session, ctx, &operation, permit).await;
                }
                let (served, steps) = Box::pin(telemetry::collect(
                    live.serve_embedded(session, ctx, &operation, permit),
                ))
                .await;
                spans::steps(ctx, steps);
                served
            }
            Target::Upstream(name) => {
                if !traced {
                    return live.forward(session, ctx, reading, permit, name).await;
                }
                let (served, steps) = Box::pin(telemetry::collect(
                    live.forward(session, ctx, reading, permit, name),
                ))
                .await;
                spans::steps(ctx, steps);
                served
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            let limit = ctx.live.body.max_body;
            if ctx.body_bytes > limit {
                // A body without Content-Length (chunked, HTTP/2) that grows past the limit.
                ctx.rejection = Some(Rejection::BodyTooLarge { limit });
                *body = None;
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over server.max_body",
                ));
            }
        }
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if reused {
            self.metrics.upstream_reused.inc();
        } else {
            self.metrics.upstream_opened.inc();
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.upstream_started = Some(std::time::Instant::now());
        let (_, forwarding) = ctx.forwarding()?;
        match forwarding.upstream.peer_for_request() {
            Some(peer) => Ok(Box::new(peer)),
            None => Error::e_explain(ErrorType::ConnectNoRoute, "the upstream has no endpoint"),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let upgrade = session.is_upgrade_req();
        let (reading, forwarding) = ctx.stage.forwarding()?;
        upstream::prepare_request(
            upstream_request,
            &Outgoing {
                upstream: &forwarding.upstream.config,
                target: &reading.target,
                served_host: &reading.served_host,
                body_buffered: forwarding.body_buffered,
                method_bound: forwarding.method_bound,
                peer_certificate: ctx.peer_certificate.as_ref(),
                client,
                upgrade,
                claim_header_names: &ctx.live.claim_header_names,
                claim_headers: &forwarding.claim_headers,
            },
        )?;
        let trusted = self
            .tracer
            .as_ref()
            .is_some_and(|t| t.settings.trust_incoming_trace);
        spans::propagate(ctx, trusted, upstream_request);
        upstream_request.insert_header(crate::request_id::HEADER, ctx.request_id.clone())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut pingora::http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        spans::upstream_answered(ctx, upstream_response.status.as_u16());
        upstream_response.insert_header(crate::request_id::HEADER, ctx.request_id.clone())?;
        let took = ctx.upstream_took;
        let (_, forwarding) = ctx.forwarding()?;
        if let Some(took) = took {
            forwarding.upstream.answered.observe(took.as_secs_f64());
        }
        if upstream_response.status.is_success() {
            // The provider registered the client: the single-use token stays used.
            forwarding.taken_token = None;
        }
        // `quiet=true` is honoured even when the provider ignores it: a successful delete
        // becomes 204 No Content and its body is dropped.
        if forwarding.quiet_delete && upstream_response.status.is_success() {
            upstream_response.set_status(204)?;
            for name in [
                "content-length",
                "content-type",
                "transfer-encoding",
                "content-encoding",
            ] {
                upstream_response.remove_header(name);
            }
        } else {
            forwarding.quiet_delete = false;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if ctx.forwarding().is_ok_and(|(_, f)| f.quiet_delete) {
            *body = None;
        }
        Ok(None)
    }

    /// What Pingora's own error log lines name the request by: never the query, which may hold
    /// a token (RFC 6750 §2.3).
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host())
            .unwrap_or("-");
        format!("{} {}, Host: {host}", req.method, req.uri.path())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // A refused or timed-out connection is answered at once, not retried into a hang;
        // with several endpoints, the one that failed is left out and the next one tried
        // (nothing was sent yet), at most twice.
        e.set_retry(false);
        if let Ok((_, forwarding)) = ctx.forwarding() {
            forwarding.upstream.connect_failed.inc();
            if let Some(b) = &forwarding.upstream.balancer {
                if let Some(a) = peer._address.as_inet() {
                    b.eject(*a);
                }
                if forwarding.connect_retries < 2 && forwarding.connect_retries + 1 < b.endpoints()
                {
                    forwarding.connect_retries += 1;
                    e.set_retry(true);
                }
            }
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let live = ctx.live.clone();
        let rejection = match e.etype() {
            ErrorType::HTTPStatus(413) => Some(Rejection::BodyTooLarge {
                limit: live.body.max_body,
            }),
            _ => match e.esource() {
                ErrorSource::Upstream => Some(Rejection::UpstreamUnavailable),
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        None
                    }
                    _ => Some(Rejection::InvalidRequest("Malformed request")),
                },
                ErrorSource::Internal | ErrorSource::Unset => Some(Rejection::UpstreamUnavailable),
            },
        };
        let Some(rejection) = rejection else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let code = rejection.status();
        if session.response_written().is_none() {
            // The connection is not reused after a failure: say so, so that clients do not
            // send the next request into a closing connection.
            session.set_keepalive(None);
            let (header, body) =
                rejection.response_for(Some(crate::request_id::text(&ctx.request_id)));
            if write_answer(session, header, body, &ctx.request_id)
                .await
                .is_ok()
            {
                live.body.linger(session).await;
            }
        }
        ctx.rejection.get_or_insert(rejection);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let live = ctx.live.clone();
        let taken = ctx
            .forwarding()
            .ok()
            .and_then(|(_, f)| f.taken_token.take());
        if let (Some(l), Some(state)) = (taken, &live.state) {
            // Forwarded and not registered (an error answer, no answer): usable again.
            if let Err(e) = state.give_back_token(&l).await {
                tracing::error!(target: "bindgate::state", "a single-use token was not given back: {e}");
            }
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let trace_id = ctx.trace.as_ref().map(|t| t.trace_id_hex());
        if let Some(tracer) = &self.tracer {
            let route = match ctx.reading() {
                Some(r) => live.router.template(&r.operation).to_string(),
                None => "none".to_string(),
            };
            let reason = ctx.rejection.as_ref().map(Rejection::reason);
            spans::finish(tracer, ctx, session, status, &route, reason);
        }
        let operation = ctx.reading().map(|r| &r.operation);
        let (route, target) = match operation {
            Some(op) => (live.router.label(op), live.router.target(op).label()),
            None => ("none", "none"),
        };
        let elapsed = ctx.started.elapsed();
        let place = match operation {
            Some(op) => live.router.place(op),
            None => live.place_metrics.len() - 1,
        };
        if let Some(m) = live.place_metrics.get(place) {
            m.count(&live.metrics, status, elapsed);
        }
        let reason = ctx.rejection.as_ref().map(Rejection::reason);
        if let Some(reason) = reason {
            live.metrics.rejections.with_label_values(&[reason]).inc();
        }
        let token = ctx.token.as_ref().map(|t| &t.verified);
        let upstream_name = match &ctx.stage {
            Stage::Forwarding { forwarding, .. } => forwarding.upstream.config.name.as_str(),
            _ => "-",
        };
        let req = session.req_header();
        // The path only: a query may carry a token (RFC 6750 §2.3) and is never logged.
        let path = match ctx.reading() {
            Some(r) => r.target.path.as_str(),
            None => req.uri.path(),
        };
        tracing::info!(
            target: "bindgate::access",
            method = %req.method,
            path = %path,
            status,
            route,
            target,
            latency_us = elapsed.as_micros() as u64,
            auth_us = ctx.authorising.as_micros() as u64,
            upstream_us = ctx.upstream_took.map(|d| d.as_micros() as u64).unwrap_or(0),
            upstream = %upstream_name,
            trace_id = %trace_id.as_deref().unwrap_or("-"),
            request_id = %if ctx.request_id.is_empty() { "-" } else { crate::request_id::text(&ctx.request_id) },
            operation = operation.map(|o| o.name()).unwrap_or("-"),
            decision = if reason.is_some() { "refused" } else { "allowed" },
            bytes_in = ctx.body_bytes,
            bytes_out = session.body_bytes_sent() as u64,
            sub = token.and_then(|t| t.sub.as_deref()).unwrap_or("-"),
            client_id = token.and_then(|t| t.client_id.as_deref()).unwrap_or("-"),
            jti = token.and_then(|t| t.jti.as_deref()).unwrap_or("-"),
            reason = reason.unwrap_or("-"),
            client_cert = ctx.peer_certificate.as_ref().map(|c| c.thumbprint()).unwrap_or("-"),
            client = %session.client_addr().map(|a| a.to_string()).unwrap_or_default(),
            error = %e.map(|e| e.etype().as_str()).unwrap_or("-"),
        );
    }
}
