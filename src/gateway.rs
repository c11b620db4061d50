//! The Pingora `ProxyHttp`: route → authorise → embedded or upstream. The glue stays thin: the
//! decisions are made by `routing`, the answers by `rejection`.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::auth::{Authoriser, Facts, Grant};
use crate::certificate::PeerCertificate;
use crate::config::{Config, Target, Upstream};
use crate::headers;
use crate::metrics::Metrics;
use crate::rejection::Rejection;
use crate::routing::{Operation, Router, SessionOp};
use crate::state::{Reply, SessionQuery, StateService, StreamingMap};
use crate::target::{self, RequestTarget};
use crate::tls;

/// An upstream with its connection settings made once.
pub struct UpstreamTarget {
    pub config: Upstream,
    peer: HttpPeer,
    /// One permit per request in flight to this upstream (`max_connections`).
    slots: Arc<tokio::sync::Semaphore>,
}

impl UpstreamTarget {
    pub fn new(config: &Upstream) -> Result<Self, String> {
        let mut peer = HttpPeer::new(config.address, config.tls, config.sni.clone());
        peer.options.connection_timeout = Some(config.connect_timeout);
        peer.options.total_connection_timeout = Some(config.connect_timeout);
        peer.options.read_timeout = Some(config.read_timeout);
        peer.options.write_timeout = Some(config.read_timeout);
        peer.options.idle_timeout = Some(std::time::Duration::from_secs(60));
        if config.tls {
            peer.options.verify_cert = true;
            // Without an SNI name there is no name to check the certificate against.
            peer.options.verify_hostname = !config.sni.is_empty();
            if let Some(ca) = &config.ca {
                let pem = std::fs::read(ca)
                    .map_err(|e| format!("upstreams.{}.ca: {}: {e}", config.name, ca.display()))?;
                let certs = pingora::tls::x509::X509::stack_from_pem(&pem)
                    .map_err(|e| format!("upstreams.{}.ca: {e}", config.name))?;
                peer.options.ca = Some(Arc::new(certs.into_boxed_slice()));
            }
        }
        Ok(UpstreamTarget {
            config: config.clone(),
            peer,
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
        })
    }
}

/// The request metrics of one place (route), resolved once: the hot path increments counters
/// instead of hashing label values on every request.
struct PlaceMetrics {
    latency: prometheus::Histogram,
    /// By status code (100..=599), created on first use.
    requests: Box<[std::sync::OnceLock<prometheus::IntCounter>]>,
    route: String,
    target: String,
}

impl PlaceMetrics {
    fn new(metrics: &Metrics, route: &str, target: &str) -> Self {
        PlaceMetrics {
            latency: metrics.latency.with_label_values(&[route, target]),
            requests: (100..600).map(|_| std::sync::OnceLock::new()).collect(),
            route: route.to_string(),
            target: target.to_string(),
        }
    }

    fn count(&self, metrics: &Metrics, status: u16, elapsed: std::time::Duration) {
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

/// Everything a request is decided by that a reload may replace: a request takes the one
/// current when it starts and finishes on it, whatever is reloaded meanwhile.
pub struct Live {
    router: Router,
    /// By `Router::place`, then one for requests refused before routing.
    place_metrics: Vec<PlaceMetrics>,
    authoriser: Authoriser,
    state: Option<StateService>,
    upstreams: HashMap<String, Arc<UpstreamTarget>>,
    max_body: u64,
    /// The whole request body must arrive within this.
    body_timeout: std::time::Duration,
    /// How much of an unread request body is read and discarded after an early answer.
    linger_bytes: u64,
    metrics: Arc<Metrics>,
}

/// How long an unread request body is read and discarded after an early answer.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// What one request learnt on its way through the filters.
pub struct RequestCtx {
    /// The configuration this request runs on, from its first hook to its log line.
    live: Arc<Live>,
    started: Instant,
    /// The one reading of the request target: what is routed, authorised and forwarded.
    target: Option<RequestTarget>,
    /// The one decision: what the request asks for.
    operation: Option<Operation>,
    /// The host the request addressed (absolute-form authority, `:authority` or `Host`).
    served_host: Option<String>,
    peer_certificate: Option<PeerCertificate>,
    upstream: Option<Arc<UpstreamTarget>>,
    rejection: Option<Rejection>,
    grant: Option<Grant>,
    body_bytes: u64,
    /// The length of a request body read whole before the upstream was chosen (Pingora's
    /// retry buffer holds it and sends it).
    body_buffered: Option<u64>,
    /// This request's place among the upstream's `max_connections`.
    upstream_slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// A single-use token taken for a registration forwarded to an upstream: given back at the
    /// end unless the provider answered 2xx.
    taken_token: Option<crate::state::Ledger>,
    /// A quiet delete on an upstream session store: the answer becomes a bodiless 204.
    quiet_delete: bool,
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

    /// Answers the request with `rejection` and ends it.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rejection: Rejection,
    ) -> Result<bool> {
        let (header, body) = rejection.response();
        if rejection.closes_connection() {
            session.set_keepalive(None);
        }
        let lingers = rejection != Rejection::BodyTimeout;
        if rejection == Rejection::BodyTimeout {
            self.metrics
                .connections_closed
                .with_label_values(&["body_timeout"])
                .inc();
        }
        ctx.rejection = Some(rejection);
        write_answer(session, header, body).await?;
        if lingers {
            self.linger(session).await;
        }
        Ok(true)
    }

    /// After an answer written before the request body was read: reads and discards what is
    /// left of it, at most `linger_bytes` and [`LINGER_TIME`] (lingering close, as nginx and
    /// HAProxy do). An HTTP/1.1 client then reads the answer instead of a connection reset; an
    /// HTTP/2 stream ends when the client's does, with no `RST_STREAM` that some clients (curl
    /// 7.88) report as an error and lose the answer over. Past the bound, HTTP/1.1 closes the
    /// connection and HTTP/2 resets the stream with `NO_ERROR` (RFC 9113 §8.1).
    async fn linger(&self, session: &mut Session) {
        if session.is_body_done() {
            return;
        }
        let expects_continue = session
            .req_header()
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            // The client waits for a 100 that will not come and sends no body (RFC 9110
            // §10.1.1): nothing to drain, and the connection cannot be reused.
            session.set_keepalive(None);
            return;
        }
        let limit = self.linger_bytes;
        let drained = tokio::time::timeout(LINGER_TIME, async {
            let mut read = 0u64;
            loop {
                match session.read_request_body().await {
                    Ok(Some(chunk)) => {
                        read += chunk.len() as u64;
                        if read > limit {
                            return false;
                        }
                    }
                    Ok(None) => return true,
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        if !drained {
            session.set_keepalive(None);
        }
    }

    /// Reads the whole request body within `body_timeout`, refusing it past `max_body`. With
    /// `keep`, the bytes are returned (the embedded service); without, only their number
    /// (the forwarder's buffer keeps them).
    async fn read_body(
        &self,
        session: &mut Session,
        keep: bool,
    ) -> std::result::Result<(Bytes, u64), Rejection> {
        if session.is_body_done() {
            return Ok((Bytes::new(), 0));
        }
        // RFC 9110 §10.1.1: a client waiting for 100 Continue sends its body once told to.
        // (HTTP/2 clients do not wait for it.)
        let expects_continue = session
            .req_header()
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue && !session.is_http2() {
            if let Ok(h) = pingora::http::ResponseHeader::build(100, Some(0)) {
                if session
                    .as_mut()
                    .write_response_header(Box::new(h))
                    .await
                    .is_err()
                {
                    return Err(Rejection::InvalidRequest(
                        "The request body could not be read",
                    ));
                }
            }
        }
        let max_body = self.max_body;
        let deadline = std::time::Instant::now() + self.body_timeout;
        let http2 = session.is_http2();
        let per_read = session.as_mut().get_read_timeout();
        let read = async {
            let mut body = bytes::BytesMut::new();
            let mut len = 0u64;
            let mut first = true;
            loop {
                if !http2 {
                    // HTTP/1.1: each read's own timeout (Pingora's timer, there anyway) is cut to
                    // what is left of the body's: one deadline, no second timer. (The first
                    // read has all of it: no clock read for a body that comes at once.)
                    let left = if first {
                        self.body_timeout
                    } else {
                        deadline.saturating_duration_since(std::time::Instant::now())
                    };
                    if left.is_zero() {
                        return Err(Rejection::BodyTimeout);
                    }
                    let cut = per_read.map_or(left, |t| t.min(left));
                    session.as_mut().set_read_timeout(Some(cut));
                }
                first = false;
                match session.read_request_body().await {
                    Ok(Some(chunk)) => {
                        len += chunk.len() as u64;
                        if len > max_body {
                            return Err(Rejection::BodyTooLarge { limit: max_body });
                        }
                        if keep {
                            body.extend_from_slice(&chunk);
                        }
                        if session.is_body_done() {
                            return Ok((body.freeze(), len));
                        }
                    }
                    Ok(None) => return Ok((body.freeze(), len)),
                    Err(e)
                        if *e.etype() == ErrorType::ReadTimedout
                            || std::time::Instant::now() >= deadline =>
                    {
                        return Err(Rejection::BodyTimeout)
                    }
                    Err(_) => {
                        return Err(Rejection::InvalidRequest(
                            "The request body could not be read",
                        ))
                    }
                }
            }
        };
        let read = if http2 {
            // HTTP/2 reads have no timeout of their own: Pingora's timer, created only if the
            // body is not there at once.
            pingora::prelude::timeout(self.body_timeout, read)
                .await
                .unwrap_or(Err(Rejection::BodyTimeout))
        } else {
            read.await
        };
        if !http2 {
            session.as_mut().set_read_timeout(per_read);
        }
        read
    }

    /// Reads the whole body of a request bound for an upstream (≤ `max_body`, within
    /// `body_timeout`) before any upstream connection is taken: a body that never completes
    /// never reaches, nor holds, the upstream.
    async fn buffer_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<(), Rejection> {
        // An upgrade (allowed on its route) has no body before its 101: what follows is the
        // tunnel, which Pingora carries once the upstream has switched.
        if session.is_body_done() || session.is_upgrade_req() {
            return Ok(());
        }
        session
            .as_mut()
            .enable_retry_buffering_up_to(usize::try_from(self.max_body).unwrap_or(usize::MAX));
        let (_, len) = self.read_body(session, false).await?;
        ctx.body_buffered = Some(len);
        if needs_body_token_check(session.req_header(), ctx) {
            let body = session.as_ref().get_retry_buffer().unwrap_or_default();
            no_body_token(session.req_header(), &body)?;
        }
        Ok(())
    }

    /// Takes a place among the upstream's `max_connections`, waiting at most its connect
    /// timeout.
    async fn upstream_slot(
        upstream: &UpstreamTarget,
    ) -> std::result::Result<tokio::sync::OwnedSemaphorePermit, Rejection> {
        // A free place is taken at once; only a full upstream makes a request wait.
        if let Ok(permit) = upstream.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        match pingora::prelude::timeout(
            upstream.config.connect_timeout,
            upstream.slots.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Rejection::UpstreamBusy),
        }
    }

    /// Serves an operation from the embedded state service.
    async fn embedded(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
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
            if needs_body_token_check(session.req_header(), ctx) {
                no_body_token(session.req_header(), &b)?;
            }
            Ok(b)
        }) {
            Ok(b) => b,
            Err(r) => return self.reject(session, ctx, r).await,
        };
        let query = ctx.target.as_ref().and_then(|t| t.query.as_deref());
        let reply = match &ctx.operation {
            Some(Operation::Registry(op)) => {
                let grant = ctx.grant.clone().unwrap_or(Grant::Open);
                state.registration(op, &grant, body).await
            }
            Some(Operation::Sessions(op)) => {
                let sid = session.req_header().headers.get("sid");
                state.sessions(*op, query, sid, body).await
            }
            // Routes always name an upstream.
            Some(Operation::Forward { .. } | Operation::Protected { .. }) | None => {
                Err(Rejection::NoRoute)
            }
        };
        match reply {
            Ok(reply) => {
                self.send_reply(session, reply).await?;
                Ok(true)
            }
            Err(r) => self.reject(session, ctx, r).await,
        }
    }

    /// Writes an embedded answer.
    async fn send_reply(&self, session: &mut Session, reply: Reply) -> Result<()> {
        match reply {
            Reply::Json {
                status,
                body,
                pragma_no_cache,
            } => {
                let mut header = crate::rejection::json_header(status, body.len());
                if pragma_no_cache {
                    header.insert_header("pragma", "no-cache")?;
                }
                write_answer(session, header, Bytes::from(body)).await
            }
            Reply::NoContent => {
                let mut header = pingora::http::ResponseHeader::build(204, Some(2))?;
                header.insert_header("cache-control", "no-store")?;
                session.write_response_header(Box::new(header), true).await
            }
            Reply::Stream(stream) => self.stream(session, stream).await,
        }
    }

    /// Streams a session map chunk by chunk: memory stays flat whatever the store holds.
    async fn stream(&self, session: &mut Session, mut stream: Box<StreamingMap>) -> Result<()> {
        let mut header = pingora::http::ResponseHeader::build(200, Some(4))?;
        header.insert_header("content-type", "application/json")?;
        header.insert_header("cache-control", "no-store")?;
        if session.req_header().method == http::Method::HEAD {
            return session.write_response_header(Box::new(header), true).await;
        }
        if !session.is_http2() {
            header.insert_header("transfer-encoding", "chunked")?;
        }
        session
            .write_response_header(Box::new(header), false)
            .await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        loop {
            let (back, piece) = tokio::task::spawn_blocking(move || {
                let piece = stream.next_piece(now);
                (stream, piece)
            })
            .await
            .map_err(|_| Error::explain(ErrorType::InternalError, "stream task failed"))?;
            stream = back;
            match piece {
                Ok(Some(bytes)) => {
                    session
                        .write_response_body(Some(Bytes::from(bytes)), false)
                        .await?
                }
                Ok(None) => break,
                Err(_) => {
                    // Headers are out: the only honest signal left is an aborted body.
                    return Error::e_explain(ErrorType::InternalError, "delete-all stream failed");
                }
            }
        }
        session.write_response_body(None, true).await
    }

    /// The one reading of the request: its target, the host it addressed, its operation.
    fn decide(
        &self,
        session: &Session,
    ) -> std::result::Result<(RequestTarget, String, Operation), Rejection> {
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
        if matches!(operation, Operation::Sessions(_))
            && req.headers.get_all("sid").iter().nth(1).is_some()
        {
            // The provider behind could read the other one.
            return Err(Rejection::InvalidRequest("More than one SID header"));
        }
        Ok((target, served_host, operation))
    }
}

/// Whether the request's body is a form that could carry an access token and its operation
/// takes one: then the token must not be in the body too.
fn needs_body_token_check(req: &RequestHeader, ctx: &RequestCtx) -> bool {
    let takes_token = ctx
        .operation
        .as_ref()
        .is_some_and(|op| op.credential() != crate::routing::Credential::None);
    takes_token && form_kind(req).is_some()
}

/// `Some(true)` for `application/x-www-form-urlencoded`, `Some(false)` for
/// `multipart/form-data`, else None.
fn form_kind(req: &RequestHeader) -> Option<bool> {
    let mut types = req.headers.get_all(http::header::CONTENT_TYPE).iter();
    let first = types.next()?.to_str().ok()?;
    let media = first.split(';').next().unwrap_or_default().trim();
    if media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Some(true)
    } else if media.eq_ignore_ascii_case("multipart/form-data") {
        Some(false)
    } else {
        None
    }
}

/// RFC 6750 §2.2: an access token in a form body, next to the one in the header, is an invalid
/// request (the server behind could take either).
fn no_body_token(req: &RequestHeader, body: &[u8]) -> std::result::Result<(), Rejection> {
    let found = match form_kind(req) {
        Some(true) => crate::auth::bearer::form_has_access_token(body),
        // A multipart part named access_token, in any case or quoting.
        Some(false) => {
            let lower = body.to_ascii_lowercase();
            lower
                .windows(b"name=\"access_token".len())
                .any(|w| w == b"name=\"access_token")
                || lower
                    .windows(b"name=access_token".len())
                    .any(|w| w == b"name=access_token")
        }
        None => false,
    };
    if found {
        Err(Rejection::InvalidRequest(
            "The access token was sent more than once",
        ))
    } else {
        Ok(())
    }
}

/// Writes a complete answer; for `HEAD`, the header alone (RFC 9110 §9.3.2: a body would be a
/// protocol error on HTTP/2).
async fn write_answer(
    session: &mut Session,
    header: pingora::http::ResponseHeader,
    body: Bytes,
) -> Result<()> {
    if session.req_header().method == http::Method::HEAD {
        return session.write_response_header(Box::new(header), true).await;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
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

/// The proxy: each request runs on the [`Live`] configuration current when it starts.
pub struct Gateway {
    live: Arc<arc_swap::ArcSwap<Live>>,
    /// Set once an upgrade or a shutdown has begun: every answer then closes its connection
    /// (`Connection: close`), so that clients leave on a clean close instead of sending a
    /// request into an idle connection the process is about to drop.
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl Gateway {
    pub fn new(
        live: Arc<arc_swap::ArcSwap<Live>>,
        draining: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        Gateway { live, draining }
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
        live.request_filter(session, ctx).await
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let live = ctx.live.clone();
        live.request_body_filter(session, body, end_of_stream, ctx)
            .await
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let live = ctx.live.clone();
        live.upstream_peer(session, ctx).await
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let live = ctx.live.clone();
        live.upstream_request_filter(session, upstream_request, ctx)
            .await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut pingora::http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let live = ctx.live.clone();
        live.response_filter(session, upstream_response, ctx).await
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        let live = ctx.live.clone();
        live.response_body_filter(session, body, end_of_stream, ctx)
    }

    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        ctx.live.request_summary(session, ctx)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        let live = ctx.live.clone();
        live.fail_to_connect(session, peer, ctx, e)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let live = ctx.live.clone();
        live.fail_to_proxy(session, e, ctx).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let live = ctx.live.clone();
        live.logging(session, e, ctx).await
    }
}

impl RequestCtx {
    fn new(live: Arc<Live>) -> Self {
        RequestCtx {
            live,
            started: Instant::now(),
            target: None,
            operation: None,
            served_host: None,
            peer_certificate: None,
            upstream: None,
            rejection: None,
            grant: None,
            body_bytes: 0,
            body_buffered: None,
            upstream_slot: None,
            taken_token: None,
            quiet_delete: false,
        }
    }
}

/// The proxy's hooks, on one configuration.
impl Live {
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.peer_certificate = tls::peer_certificate(session.digest());
        let (target, served_host, operation) = match self.decide(session) {
            Ok(d) => d,
            Err(rejection) => return self.reject(session, ctx, rejection).await,
        };
        let req = session.req_header();
        let facts = Facts {
            method: &req.method,
            path: &target.path,
            headers: &req.headers,
            query: target.query.as_deref(),
            peer: ctx.peer_certificate.as_ref(),
        };
        let grant = self.authoriser.authorise(&operation, &facts).await;
        // The session store's parameters, checked for every method and target: the provider
        // behind reads them too.
        let quiet = match operation {
            Operation::Sessions(op) => SessionQuery::parse(target.query.as_deref()).and_then(|q| {
                if q.all && (q.subject.is_some() || req.headers.contains_key("sid")) {
                    return Err(Rejection::InvalidInput(
                        "all=true cannot be combined with subject or an SID header".into(),
                    ));
                }
                Ok(op == SessionOp::Delete && q.quiet)
            }),
            _ => Ok(false),
        };
        ctx.target = Some(target);
        ctx.served_host = Some(served_host);
        let target = self.router.target(&operation).clone();
        ctx.operation = Some(operation);
        match grant.and_then(|g| quiet.map(|q| (g, q))) {
            Ok((grant, quiet)) => {
                ctx.grant = Some(grant);
                ctx.quiet_delete = quiet;
            }
            Err(rejection) => return self.reject(session, ctx, rejection).await,
        }
        match target {
            Target::Embedded => {
                ctx.quiet_delete = false;
                self.embedded(session, ctx).await
            }
            Target::Upstream(name) => match self.upstreams.get(&name) {
                Some(u) => {
                    let u = u.clone();
                    if let Err(r) = self.buffer_body(session, ctx).await {
                        return self.reject(session, ctx, r).await;
                    }
                    match Self::upstream_slot(&u).await {
                        Ok(slot) => ctx.upstream_slot = Some(slot),
                        Err(r) => return self.reject(session, ctx, r).await,
                    }
                    // Single use in front of a provider: the token is taken before the
                    // registration is forwarded, given back if the provider does not register.
                    if let Some(Grant::InitialAccessToken { ledger: Some(l) }) = &ctx.grant {
                        let Some(state) = &self.state else {
                            return self
                                .reject(session, ctx, Rejection::StorageUnavailable)
                                .await;
                        };
                        let l = l.clone();
                        if let Err(r) = state.take_token(&l).await {
                            return self.reject(session, ctx, r).await;
                        }
                        ctx.taken_token = Some(l);
                    }
                    ctx.upstream = Some(u);
                    Ok(false)
                }
                // Validation guarantees every target names an upstream.
                None => {
                    self.reject(session, ctx, Rejection::UpstreamUnavailable)
                        .await
                }
            },
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
            if ctx.body_bytes > self.max_body {
                // A body without Content-Length (chunked, HTTP/2) that grows past the limit.
                ctx.rejection = Some(Rejection::BodyTooLarge {
                    limit: self.max_body,
                });
                *body = None;
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over server.max_body",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        match &ctx.upstream {
            Some(u) => Ok(Box::new(u.peer.clone())),
            None => Error::e_explain(ErrorType::InternalError, "no upstream chosen"),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // What travels is the target that was authorised, never the bytes as received.
        let Some(target) = &ctx.target else {
            return Error::e_explain(ErrorType::InternalError, "no authorised target");
        };
        let uri = target
            .path_and_query()
            .parse::<http::Uri>()
            .or_err(ErrorType::InternalError, "normalised target is not a URI")?;
        upstream_request.set_uri(uri);
        if let Some(authority) = &target.authority {
            upstream_request.insert_header(http::header::HOST, authority.as_str())?;
        }
        headers::strip_connection_listed(upstream_request, session.is_upgrade_req());
        if let Some(len) = ctx.body_buffered {
            // The body was read whole: it travels with its length, whatever framing it came
            // in (chunked, HTTP/2 frames), and any 100 Continue was bindgate's to send. The
            // common case, a Content-Length that was right, is left as it is.
            let framed = upstream_request
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|given| given == len)
                && !upstream_request
                    .headers
                    .contains_key(http::header::TRANSFER_ENCODING);
            if !framed {
                upstream_request.remove_header(&http::header::TRANSFER_ENCODING);
                upstream_request.insert_header(http::header::CONTENT_LENGTH, len)?;
            }
            upstream_request.remove_header(&http::header::EXPECT);
        }
        let Some(upstream) = &ctx.upstream else {
            return Error::e_explain(ErrorType::InternalError, "no upstream chosen");
        };
        // Protected routes too: the route's policy was decided with this method. The method
        // was authorised: no framework behind may read another one.
        let method_bound = !matches!(ctx.operation, Some(Operation::Forward { .. }));
        headers::strip_untrusted(
            upstream_request,
            upstream.config.client_cert_header.as_ref(),
            method_bound,
            upstream.config.forward_underscore_headers,
        );
        if let (Some(name), Some(cert)) =
            (&upstream.config.client_cert_header, &ctx.peer_certificate)
        {
            upstream_request.insert_header(name.clone(), cert.header_value().clone())?;
        }
        if upstream.config.forwarded_headers {
            let peer = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            let host = ctx.served_host.as_deref().unwrap_or_default();
            // The address is written once, for both headers.
            let node = peer.map(|ip| {
                let mut node = String::with_capacity(39);
                push_ip(&mut node, ip);
                node
            });
            let rfc7239 = forwarded(node.as_deref(), host);
            if let Some(node) = node {
                upstream_request.insert_header("x-forwarded-for", node)?;
            }
            upstream_request.insert_header("x-forwarded-proto", "https")?;
            if !host.is_empty() {
                upstream_request.insert_header("x-forwarded-host", host)?;
            }
            upstream_request.insert_header("forwarded", rfc7239)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut pingora::http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream_response.status.is_success() {
            // The provider registered the client: the single-use token stays used.
            ctx.taken_token = None;
        }
        // `quiet=true` is honoured even when the provider ignores it: a successful delete
        // becomes 204 No Content and its body is dropped.
        if ctx.quiet_delete && upstream_response.status.is_success() {
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
            ctx.quiet_delete = false;
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
        if ctx.quiet_delete {
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
        _peer: &HttpPeer,
        _ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // A refused or timed-out connection is answered at once, not retried into a hang.
        e.set_retry(false);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let rejection = match e.etype() {
            ErrorType::HTTPStatus(413) => Some(Rejection::BodyTooLarge {
                limit: self.max_body,
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
            let (header, body) = rejection.response();
            if write_answer(session, header, body).await.is_ok() {
                self.linger(session).await;
            }
        }
        ctx.rejection.get_or_insert(rejection);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let (Some(l), Some(state)) = (ctx.taken_token.take(), &self.state) {
            // Forwarded and not registered (an error answer, no answer): usable again.
            state.give_back_token(&l).await;
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let (route, target) = match &ctx.operation {
            Some(op) => (self.router.label(op), self.router.target(op).label()),
            None => ("none", "none"),
        };
        let elapsed = ctx.started.elapsed();
        let place = match &ctx.operation {
            Some(op) => self.router.place(op),
            None => self.place_metrics.len() - 1,
        };
        if let Some(m) = self.place_metrics.get(place) {
            m.count(&self.metrics, status, elapsed);
        }
        let reason = ctx.rejection.as_ref().map(Rejection::reason);
        if let Some(reason) = reason {
            self.metrics.rejections.with_label_values(&[reason]).inc();
        }
        let req = session.req_header();
        // The path only: a query may carry a token (RFC 6750 §2.3) and is never logged.
        let path = match &ctx.target {
            Some(t) => t.path.as_str(),
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
            reason = reason.unwrap_or("-"),
            client_cert = ctx.peer_certificate.as_ref().map(|c| c.thumbprint()).unwrap_or("-"),
            client = %session.client_addr().map(|a| a.to_string()).unwrap_or_default(),
            error = %e.map(|e| e.etype().as_str()).unwrap_or("-"),
        );
    }
}

/// RFC 7239 `Forwarded`: `for` (an IPv6 address quoted in brackets), `proto`, `host` (quoted:
/// `served_host` holds only authority characters, never `"` or `\`).
/// `node` is the peer's address as [`push_ip`] writes it (an IPv6 one, and only it, has `:`).
fn forwarded(node: Option<&str>, host: &str) -> String {
    let mut value = String::with_capacity(64 + host.len());
    value.push_str("for=");
    match node {
        Some(v6) if v6.contains(':') => {
            value.push_str("\"[");
            value.push_str(v6);
            value.push_str("]\"");
        }
        Some(v4) => value.push_str(v4),
        None => value.push_str("unknown"),
    }
    value.push_str(";proto=https");
    if !host.is_empty() {
        value.push_str(";host=\"");
        value.push_str(host);
        value.push('"');
    }
    value
}

/// Appends an address as `Display` writes it; IPv4, the common case, without the formatting
/// machinery (it ran on every forwarded request).
fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn shown(ip: IpAddr) -> String {
        let mut s = String::new();
        push_ip(&mut s, ip);
        s
    }

    proptest! {
        #[test]
        fn addresses_are_written_as_display_writes_them(v4 in any::<u32>(), v6 in any::<u128>()) {
            let v4 = IpAddr::V4(Ipv4Addr::from(v4));
            let v6 = IpAddr::V6(Ipv6Addr::from(v6));
            prop_assert_eq!(shown(v4), v4.to_string());
            prop_assert_eq!(shown(v6), v6.to_string());
        }
    }

    #[test]
    fn address_edges_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(shown(ip), ip.to_string());
        }
    }

    #[test]
    fn forwarded_names_the_node_protocol_and_host() {
        let v4 = shown("192.0.2.60".parse().unwrap());
        let v6 = shown("2001:db8:cafe::17".parse().unwrap());
        assert_eq!(
            forwarded(Some(&v4), "idp.example.com"),
            "for=192.0.2.60;proto=https;host=\"idp.example.com\""
        );
        // RFC 7239 §6: an IPv6 node is bracketed and quoted.
        assert_eq!(
            forwarded(Some(&v6), ""),
            "for=\"[2001:db8:cafe::17]\";proto=https"
        );
        assert_eq!(forwarded(None, ""), "for=unknown;proto=https");
    }
}
