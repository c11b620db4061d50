//! The live configuration: everything a request is decided by that a reload may replace, and
//! the two ways an authorised request goes — served here, or forwarded.

use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::collections::HashMap;
use std::sync::Arc;

use super::body::{needs_body_token_check, no_body_token};
use super::journey::{Forwarding, Reading, RequestCtx, Stage};
use super::upstream::UpstreamTarget;
use crate::auth::{Authoriser, Permit};
use crate::config::Config;
use crate::metrics::{Metrics, PlaceMetrics};
use crate::rejection::Rejection;
use crate::routing::{Operation, Router, SessionOp, SessionRequest};
use crate::state::StateService;
use crate::target::{self, RequestTarget};

/// Everything a request is decided by that a reload may replace: a request takes the one
/// current when it starts and finishes on it, whatever is reloaded meanwhile.
pub struct Live {
    pub(super) router: Router,
    /// By `Router::place`, then one for requests refused before routing.
    pub(super) place_metrics: Vec<PlaceMetrics>,
    pub(super) authoriser: Authoriser,
    pub(super) state: Option<StateService>,
    pub(super) upstreams: HashMap<String, Arc<UpstreamTarget>>,
    pub(super) max_body: u64,
    /// The whole request body must arrive within this.
    pub(super) body_timeout: std::time::Duration,
    /// How much of an unread request body is read and discarded after an early answer.
    pub(super) linger_bytes: u64,
    pub(super) metrics: Arc<Metrics>,
}

impl Live {
    /// The process's DPoP replay record (the same across reloads).
    pub fn replay_record(&self) -> Arc<crate::auth::replay::ReplayRecord> {
        self.authoriser.replay_record()
    }

    pub fn new(
        config: &Config,
        authoriser: Authoriser,
        state: Option<StateService>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let mut upstreams = HashMap::new();
        for (name, u) in &config.upstreams {
            upstreams.insert(name.clone(), Arc::new(UpstreamTarget::new(u)?));
        }
        let router = Router::new(config);
        let mut place_metrics = Vec::with_capacity(router.places() + 1);
        let places = [
            Operation::Registry(crate::routing::RegistryOp::Register),
            Operation::Sessions(SessionOp::Read),
        ]
        .into_iter()
        .chain((0..config.routes.len()).map(|route| Operation::Forward { route }));
        for op in places {
            place_metrics.push(PlaceMetrics::new(
                &metrics,
                router.label(&op),
                router.target(&op).label(),
            ));
        }
        place_metrics.push(PlaceMetrics::new(&metrics, "none", "none"));
        Ok(Live {
            router,
            place_metrics,
            authoriser,
            state,
            upstreams,
            max_body: config.server.max_body,
            body_timeout: config.server.body_timeout,
            linger_bytes: config.server.max_body.saturating_mul(4).max(1 << 20),
            metrics,
        })
    }

    pub fn authoriser(&self) -> &Authoriser {
        &self.authoriser
    }

    /// The one reading of the request: its target, the host it addressed, its operation.
    pub(super) fn read(
        &self,
        session: &Session,
    ) -> std::result::Result<(Reading, Option<SessionRequest>), Rejection> {
        let req = session.req_header();
        let target = target::parse(req.raw_path())?;
        let served_host = served_host(req, &target)?;
        if let Some(len) = req.headers.get(http::header::CONTENT_LENGTH) {
            let len: u64 = len
                .to_str()
                .ok()
                .and_then(|l| l.trim().parse().ok())
                .ok_or(Rejection::InvalidRequest("Invalid Content-Length"))?;
            if len > self.max_body {
                return Err(Rejection::BodyTooLarge {
                    limit: self.max_body,
                });
            }
        }
        let operation = self.router.route(&req.method, &target.path)?;
        if req.headers.contains_key(http::header::UPGRADE)
            && !self.router.allows_upgrade(&operation)
        {
            // A tunnel would carry requests that no policy saw.
            return Err(Rejection::InvalidRequest(
                "Upgrade is not allowed on this path",
            ));
        }
        // The session store's parameters, read once, for every method and target: the
        // provider behind reads them too.
        let session_request = match operation {
            Operation::Sessions(op) => Some(SessionRequest::read(
                op,
                target.query.as_deref(),
                &req.headers,
            )?),
            _ => None,
        };
        Ok((
            Reading {
                target,
                served_host,
                operation,
            },
            session_request,
        ))
    }

    /// Serves a permit from the embedded registry or session store.
    pub(super) async fn serve_embedded(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        operation: &Operation,
        permit: Permit,
    ) -> Result<bool> {
        let Some(state) = &self.state else {
            return self
                .reject(
                    session,
                    ctx,
                    Rejection::NotImplemented("the embedded state service"),
                )
                .await;
        };
        let body = match self.read_body(session, true).await.and_then(|(b, _)| {
            if needs_body_token_check(session.req_header(), operation) {
                no_body_token(session.req_header(), &b)?;
            }
            Ok(b)
        }) {
            Ok(b) => b,
            Err(r) => return self.reject(session, ctx, r).await,
        };
        let reply = match &permit {
            Permit::Registry(p) => state.registration(p, body).await,
            Permit::Sessions(p) => state.sessions(p, body).await,
            // Routes always name an upstream.
            Permit::Route(_) => Err(Rejection::NoRoute),
        };
        match reply {
            Ok(reply) => {
                self.send_reply(session, reply).await?;
                Ok(true)
            }
            Err(r) => self.reject(session, ctx, r).await,
        }
    }

    /// Readies a permit for `upstream`: the body read whole, a place among the upstream's
    /// connections, a single-use token taken. `Ok(false)`: Pingora goes on to the upstream.
    pub(super) async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reading: Reading,
        permit: Permit,
        upstream: &str,
    ) -> Result<bool> {
        let Some(upstream) = self.upstreams.get(upstream).cloned() else {
            // Validation guarantees every target names an upstream.
            ctx.stage = Stage::Read(reading);
            return self
                .reject(session, ctx, Rejection::UpstreamUnavailable)
                .await;
        };
        let prepared = async {
            let body_buffered = self.buffer_body(session, &reading.operation).await?;
            let slot = upstream.slot().await?;
            let (method_bound, quiet_delete, ledger) = match &permit {
                Permit::Registry(p) => (true, false, p.ledger().cloned()),
                Permit::Sessions(p) => (true, p.request().quiet_delete(), None),
                Permit::Route(p) => (p.method_bound(), false, None),
            };
            // Single use in front of a provider: the token is taken before the registration
            // is forwarded, given back if the provider does not register.
            if let Some(l) = &ledger {
                let state = self.state.as_ref().ok_or(Rejection::StorageUnavailable)?;
                state.take_token(l).await?;
            }
            Ok::<_, Rejection>(Forwarding {
                upstream: upstream.clone(),
                _slot: slot,
                body_buffered,
                method_bound,
                taken_token: ledger,
                quiet_delete,
            })
        }
        .await;
        match prepared {
            Ok(forwarding) => {
                ctx.stage = Stage::Forwarding {
                    reading,
                    forwarding,
                };
                Ok(false)
            }
            Err(r) => {
                ctx.stage = Stage::Read(reading);
                self.reject(session, ctx, r).await
            }
        }
    }
}

/// The host the request addressed: an absolute-form target's authority (RFC 9112 §3.2.2),
/// else HTTP/2's `:authority`, else the one `Host` header; "" when there is none (HTTP/1.0).
fn served_host(
    req: &RequestHeader,
    target: &RequestTarget,
) -> std::result::Result<String, Rejection> {
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Rejection::InvalidRequest("More than one Host header"));
    }
    let host = match (&target.authority, req.uri.authority(), host) {
        (Some(a), _, _) => a.as_bytes(),
        (None, Some(a), _) => a.as_str().as_bytes(),
        (None, None, Some(h)) => h.as_bytes(),
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400.
        (None, None, None) if req.version == http::Version::HTTP_11 => {
            return Err(Rejection::InvalidRequest("Missing Host header"))
        }
        (None, None, None) => b"",
    };
    if !host.is_empty() && !target::valid_authority(host) {
        return Err(Rejection::InvalidRequest("Invalid Host header"));
    }
    Ok(String::from_utf8_lossy(host).into_owned())
}
