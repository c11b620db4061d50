//! Upstreams of several endpoints — a list, or a DNS name resolved again every
//! `resolve_interval` — balanced round robin over the healthy ones with Pingora's
//! `pingora-load-balancing`: active health checks (`health_check`), and passive ejection of
//! an endpoint a connection just failed to (left out for `ejection_time`).
//!
//! The background thread tends every balancer once a second ([`Balancer::tend`]): resolving,
//! checking and forgetting ejections when each is due. A request only reads: one selection
//! and, while something is ejected, one look at the ejection list.

use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{Problem, Upstream};

/// How long one DNS lookup may take before the last good set is kept.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many addresses from one name.
const MAX_ADDRESSES: usize = 64;

pub struct Balancer {
    lb: LoadBalancer<RoundRobin>,
    /// The settings it was made from: a reload that keeps them keeps this balancer (and its
    /// health state).
    pub(super) settings: String,
    /// The peer each request's is made from (TLS, timeouts, CA); only its address changes.
    template: HttpPeer,
    ejection_time: Duration,
    ejected: Mutex<HashMap<SocketAddr, Instant>>,
    /// Whether `ejected` holds anything (requests skip the lock when not).
    any_ejected: AtomicBool,
    /// Some: a name to resolve again this often.
    resolve_every: Option<Duration>,
    check_every: Option<Duration>,
    next_resolve: Mutex<Instant>,
    next_check: Mutex<Instant>,
    name: String,
}

/// The endpoints as written, resolved again (the first answer is the set seen at validation).
struct Resolve {
    endpoints: Vec<String>,
    seed: Mutex<Option<BTreeSet<Backend>>>,
}

#[async_trait]
impl ServiceDiscovery for Resolve {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        if let Some(seed) = self.seed.lock().ok().and_then(|mut s| s.take()) {
            return Ok((seed, HashMap::new()));
        }
        let mut all = BTreeSet::new();
        for e in &self.endpoints {
            let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(e.as_str()))
                .await
                .map_err(|_| {
                    pingora::Error::explain(
                        pingora::ErrorType::ConnectTimedout,
                        "DNS lookup timed out",
                    )
                })?
                .map_err(|e| {
                    pingora::Error::because(
                        pingora::ErrorType::ConnectNoRoute,
                        "DNS lookup failed",
                        e,
                    )
                })?;
            for a in found.take(MAX_ADDRESSES) {
                all.insert(backend(a));
            }
        }
        if all.is_empty() {
            // An empty answer keeps the last good set.
            return Err(pingora::Error::explain(
                pingora::ErrorType::ConnectNoRoute,
                "no address",
            ));
        }
        Ok((all, HashMap::new()))
    }
}

fn backend(a: SocketAddr) -> Backend {
    Backend {
        addr: pingora::protocols::l4::socket::SocketAddr::Inet(a),
        weight: 1,
        ext: Default::default(),
    }
}

/// What a balancer is made from: equal settings, the same balancer across a reload.
pub fn settings_of(u: &Upstream) -> String {
    format!(
        "{:?} {} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
        u.endpoints,
        u.tls,
        u.sni,
        u.ca.as_ref().map(|c| c.pem().to_vec()),
        u.connect_timeout,
        u.read_timeout,
        u.resolve_interval,
        u.health_check,
        u.ejection_time,
    )
}

impl Balancer {
    pub fn new(u: &Upstream, template: HttpPeer) -> Result<Balancer, Problem> {
        let dynamic = u.endpoints.iter().any(|e| e.parse::<SocketAddr>().is_err());
        let discovery = Resolve {
            endpoints: u.endpoints.clone(),
            seed: Mutex::new(Some(u.resolved.iter().copied().map(backend).collect())),
        };
        let mut lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(discovery)));
        if let Some(h) = &u.health_check {
            let host = if u.sni.is_empty() {
                u.endpoints[0]
                    .rsplit_once(':')
                    .map_or(u.endpoints[0].as_str(), |(h, _)| h)
                    .to_string()
            } else {
                u.sni.clone()
            };
            let mut check = HttpHealthCheck::new(&host, u.tls);
            check.req = pingora::http::RequestHeader::build("GET", h.path.as_bytes(), None)
                .map_err(|e| {
                    Problem::new(
                        format!("upstreams.{}.health_check.path", u.name),
                        e.to_string(),
                    )
                })?;
            check
                .req
                .insert_header("host", host.as_str())
                .map_err(|e| {
                    Problem::new(format!("upstreams.{}.health_check", u.name), e.to_string())
                })?;
            check
                .req
                .insert_header(
                    "user-agent",
                    concat!("bindgate/", env!("CARGO_PKG_VERSION")),
                )
                .map_err(|e| {
                    Problem::new(format!("upstreams.{}.health_check", u.name), e.to_string())
                })?;
            let mut peer = template.clone();
            peer.options.connection_timeout = Some(h.timeout);
            peer.options.total_connection_timeout = Some(h.timeout);
            peer.options.read_timeout = Some(h.timeout);
            peer.options.write_timeout = Some(h.timeout);
            check.peer_template = peer;
            check.validator = Some(Box::new(|head: &pingora::http::ResponseHeader| {
                if head.status.is_success() {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::HTTPStatus(head.status.as_u16()),
                        "not 2xx",
                    )
                }
            }));
            lb.set_health_check(Box::new(check));
        }
        // The seed: no lookup, no wait.
        let _ = futures_util::FutureExt::now_or_never(lb.update());
        let now = Instant::now();
        Ok(Balancer {
            lb,
            settings: settings_of(u),
            template,
            ejection_time: u.ejection_time,
            ejected: Mutex::new(HashMap::new()),
            any_ejected: AtomicBool::new(false),
            resolve_every: dynamic.then_some(u.resolve_interval),
            check_every: u.health_check.as_ref().map(|h| h.interval),
            next_resolve: Mutex::new(now + u.resolve_interval),
            next_check: Mutex::new(now),
            name: u.name.clone(),
        })
    }

    fn is_ejected(&self, a: &SocketAddr) -> bool {
        if !self.any_ejected.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        self.ejected
            .lock()
            .map(|e| e.get(a).is_some_and(|until| *until > now))
            .unwrap_or(false)
    }

    /// The peer for one request: the next healthy endpoint not ejected; else the next healthy
    /// one; else any (every endpoint failing its checks is no reason to refuse outright).
    pub fn peer(&self) -> Option<HttpPeer> {
        let chosen = self
            .lb
            .select_with(b"", 256, |b, healthy| {
                healthy && b.addr.as_inet().is_some_and(|a| !self.is_ejected(a))
            })
            .or_else(|| self.lb.select(b"", 256))
            .or_else(|| self.lb.select_with(b"", 256, |_, _| true))?;
        let mut peer = self.template.clone();
        peer._address = chosen.addr;
        Some(peer)
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many endpoints it has now.
    pub fn endpoints(&self) -> usize {
        self.lb.backends().get_backend().len()
    }

    /// A connection to `a` failed: left out for `ejection_time`.
    pub fn eject(&self, a: SocketAddr) {
        if self.ejection_time.is_zero() {
            return;
        }
        if let Ok(mut e) = self.ejected.lock() {
            if e.insert(a, Instant::now() + self.ejection_time).is_none() {
                tracing::warn!(target: "bindgate::upstream", upstream = %self.name, endpoint = %a, "connection failed: endpoint left out for {:?}", self.ejection_time);
            }
            self.any_ejected.store(true, Ordering::Relaxed);
        }
    }

    /// Whether each endpoint is healthy now (for tests and `/config`).
    pub fn health(&self) -> Vec<(SocketAddr, bool)> {
        self.lb
            .backends()
            .get_backend()
            .iter()
            .filter_map(|b| {
                let a = *b.addr.as_inet()?;
                Some((a, self.lb.backends().ready(b) && !self.is_ejected(&a)))
            })
            .collect()
    }

    /// What is due: a new lookup, a health check, ejections that ended.
    pub async fn tend(&self) {
        let now = Instant::now();
        let due = |next: &Mutex<Instant>, every: Option<Duration>| -> bool {
            let Some(every) = every else { return false };
            let Ok(mut n) = next.lock() else { return false };
            if *n > now {
                return false;
            }
            *n = now + every;
            true
        };
        if due(&self.next_resolve, self.resolve_every) {
            if let Err(e) = self.lb.update().await {
                tracing::warn!(target: "bindgate::upstream", upstream = %self.name, "resolving again failed, the last addresses stay: {e}");
            }
        }
        if due(&self.next_check, self.check_every) {
            self.lb.backends().run_health_check(true).await;
        }
        if self.any_ejected.load(Ordering::Relaxed) {
            if let Ok(mut e) = self.ejected.lock() {
                e.retain(|_, until| *until > now);
                self.any_ejected.store(!e.is_empty(), Ordering::Relaxed);
            }
        }
    }
}

/// Tends the balancers of the live configuration (a reload's new ones from its next round).
pub struct Tender {
    pub live: std::sync::Arc<arc_swap::ArcSwap<super::Live>>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

#[async_trait]
impl pingora::services::background::BackgroundService for Tender {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            let balancers = self.live.load().balancers();
            if !balancers.is_empty() {
                futures_util::future::join_all(balancers.iter().map(|b| b.tend())).await;
            }
            let counts = &self.metrics.ops.upstream_endpoints;
            for b in &balancers {
                let health = b.health();
                let healthy = health.iter().filter(|(_, up)| *up).count();
                counts
                    .with_label_values(&[b.name(), "healthy"])
                    .set(healthy as i64);
                counts
                    .with_label_values(&[b.name(), "out"])
                    .set((health.len() - healthy) as i64);
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }
}
