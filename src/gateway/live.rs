//! The live configuration: everything a request is decided by that a reload may replace, and
//! the two ways an authorised request goes — served here, or forwarded.

use crate::config::Problem;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::collections::HashMap;
use std::sync::Arc;

use std::time::Instant;

use super::answer::{refuse, send_reply};
use super::body::{needs_body_token_check, no_body_token, BodyLimits};
use super::journey::{Forwarding, Reading, Stage};
use super::upstream::UpstreamTarget;
use crate::auth::{Authoriser, Permit};
use crate::certificate::PeerCertificate;
use crate::config::Config;
use crate::metrics::{Metrics, PlaceMetrics};
use crate::rejection::Rejection;
use crate::routing::{Operation, Router, SessionOp, SessionRequest};
use crate::state::StateService;
use crate::target::{self, RequestTarget};
use crate::telemetry::step;

/// Everything a request is decided by that a reload may replace: a request takes the one
/// current when it starts and finishes on it, whatever is reloaded meanwhile.
pub struct Live {
    pub(super) router: Router,
    /// By `Router::place`, then one for requests refused before routing.
    pub(super) place_metrics: Vec<PlaceMetrics>,
    pub(super) authoriser: Authoriser,
    pub(super) state: Option<StateService>,
    pub(super) upstreams: HashMap<String, Arc<UpstreamTarget>>,
    pub(super) body: BodyLimits,
    pub(super) metrics: Arc<Metrics>,
    /// Every header a route sets from token claims: stripped from every forwarded request.
    pub(super) claim_header_names: Vec<http::HeaderName>,
    /// `server.trust_request_id`.
    pub(super) trust_request_id: bool,
}

/// What one request learnt on its way through the hooks.
pub struct RequestCtx {
    /// The configuration this request runs on, from its first hook to its log line.
    pub(super) live: Arc<Live>,
    pub(super) started: Instant,
    pub(super) peer_certificate: Option<PeerCertificate>,
    pub(super) stage: Stage,
    /// Why the request was refused (the access log's and the metrics' reason).
    pub(super) rejection: Option<Rejection>,
    /// Body bytes seen going upstream (a body without Content-Length is held to `max_body`).
    pub(super) body_bytes: u64,
    /// How long the authorisation took (the access log's `auth_us`).
    pub(super) authorising: std::time::Duration,
    /// The verified token the request was let through on (its `sub`, `client_id`, `jti` go
    /// to the access log; never the token).
    pub(super) token: Option<Arc<crate::auth::cache::Entry>>,
    /// The request's trace, when `telemetry` is configured.
    pub(super) trace: Option<crate::telemetry::Trace>,
    /// When bindgate asked for an upstream connection, and how long until the upstream's
    /// answer head (the access log's `upstream_us`).
    pub(super) upstream_started: Option<Instant>,
    pub(super) upstream_took: Option<std::time::Duration>,
    /// The request's id (`X-Request-Id`), named as it arrives.
    pub(super) request_id: http::HeaderValue,
}

impl RequestCtx {
    pub(super) fn new(live: Arc<Live>) -> Self {
        RequestCtx {
            live,
            started: Instant::now(),
            peer_certificate: None,
            stage: Stage::Received,
            rejection: None,
            body_bytes: 0,
            authorising: std::time::Duration::ZERO,
            token: None,
            trace: None,
            upstream_started: None,
            upstream_took: None,
            request_id: http::HeaderValue::from_static(""),
        }
    }

    /// The request as read, once it was.
    pub(super) fn reading(&self) -> Option<&Reading> {
        match &self.stage {
            Stage::Received => None,
            Stage::Read(reading) | Stage::Forwarding { reading, .. } => Some(reading),
        }
    }

    /// The forwarding decision: the upstream hooks run only after one was made.
    pub(super) fn forwarding(&mut self) -> Result<(&Reading, &mut Forwarding)> {
        self.stage.forwarding()
    }
}

impl Live {
    /// The balancers of the upstreams with several endpoints (tended in the background).
    pub fn balancers(&self) -> Vec<Arc<super::balance::Balancer>> {
        self.upstreams
            .values()
            .filter_map(|t| t.balancer.clone())
            .collect()
    }

    /// The process's DPoP replay record (the same across reloads).
    pub fn replay_record(&self) -> Arc<crate::auth::replay::ReplayRecord> {
        self.authoriser.replay_record()
    }

    pub fn new(
        config: &Config,
        authoriser: Authoriser,
        state: Option<StateService>,
        metrics: Arc<Metrics>,
        previous: Option<&Live>,
    ) -> Result<Self, Problem> {
        let mut upstreams = HashMap::new();
        for (name, u) in &config.upstreams {
            // A balancer whose settings a reload kept is kept, with its health and ejections.
            let kept = previous
                .and_then(|p| p.upstreams.get(name))
                .and_then(|t| t.balancer.clone())
                .filter(|b| b.settings == super::balance::settings_of(u));
            upstreams.insert(
                name.clone(),
                Arc::new(UpstreamTarget::new(u, &metrics, kept)?),
            );
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
            body: BodyLimits {
                max_body: config.server.max_body,
                body_timeout: config.server.body_timeout,
                linger_bytes: config.server.max_body.saturating_mul(4).max(1 << 20),
            },
            metrics,
            claim_header_names: config.claim_header_names(),
            trust_request_id: config.server.trust_request_id,
        })
    }

    pub fn authoriser(&self) -> &Authoriser {
        &self.authoriser
    }

    /// Answers the request with `rejection`, which the access log names, and ends it.
    pub(super) async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rejection: Rejection,
    ) -> Result<bool> {
        if let Rejection::StorageUnavailable { cause: Some(cause) } = &rejection {
            tracing::error!(target: "bindgate::state", "answered 503: {cause}");
        }
        if let Rejection::IntrospectionUnavailable { cause } = &rejection {
            tracing::error!(target: "bindgate::introspection", "answered 503: {cause}");
        }
        refuse(
            session,
            &rejection,
            self.body,
            &self.metrics,
            &ctx.request_id,
        )
        .await?;
        ctx.rejection = Some(rejection);
        Ok(true)
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
            if len > self.body.max_body {
                return Err(Rejection::BodyTooLarge {
                    limit: self.body.max_body,
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
        let body = match self.body.read(session, true).await.and_then(|(b, _)| {
            if needs_body_token_check(session.req_header(), operation) {
                no_body_token(session.req_header(), &b)?;
            }
            Ok(b)
        }) {
            Ok(b) => b,
            Err(r) => return self.reject(session, ctx, r).await,
        };
        let body = match &permit {
            Permit::Registry(p) => match self.authoriser.judge_registration(p, &body).await {
                Ok(Some(merged)) => bytes::Bytes::from(merged),
                Ok(None) => body,
                Err(d) => return self.reject(session, ctx, d.into()).await,
            },
            _ => body,
        };
        let reply = match &permit {
            Permit::Registry(p) => step("state registration", state.registration(p, body))
                .await
                .map_err(Rejection::from),
            Permit::Sessions(p) => step("state sessions", state.sessions(p, body))
                .await
                .map_err(Rejection::from),
            // Routes always name an upstream.
            Permit::Route(_) => Err(Rejection::NoRoute),
        };
        match reply {
            Ok(reply) => {
                send_reply(session, reply, &ctx.request_id).await?;
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
            let body_buffered = self.body.buffer(session, &reading.operation).await?;
            // A registration's body is judged against its credential before anything is
            // taken for it (a place upstream, a single-use token); it goes on unchanged.
            if let Permit::Registry(p) = &permit {
                let body = session.as_ref().get_retry_buffer().unwrap_or_default();
                self.authoriser.judge_registration(p, &body).await?;
            }
            let slot = upstream.slot().await?;
            let (method_bound, quiet_delete, ledger) = match &permit {
                Permit::Registry(p) => (true, false, p.ledger().cloned()),
                Permit::Sessions(p) => (true, p.request().quiet_delete(), None),
                Permit::Route(p) => (p.method_bound(), false, None),
            };
            // Single use in front of a provider: the token is taken before the registration
            // is forwarded, given back if the provider does not register.
            if let Some(l) = &ledger {
                let state = self.state.as_ref().ok_or(Rejection::StorageUnavailable {
                    cause: Some("single-use tokens need the embedded state".into()),
                })?;
                step("state take token", state.take_token(l)).await?;
            }
            let claim_headers = match &permit {
                Permit::Route(p) => p.claim_headers().to_vec(),
                _ => Vec::new(),
            };
            Ok::<_, Rejection>(Forwarding {
                upstream: upstream.clone(),
                _slot: slot,
                body_buffered,
                method_bound,
                taken_token: ledger,
                quiet_delete,
                claim_headers,
                connect_retries: 0,
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
