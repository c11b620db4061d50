//! Assembles the Pingora server from a validated `Config`: the TLS proxy, the admin listener and
//! the background tasks, then runs it until a signal ends it.

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use crate::admin::{AdminApp, Readiness};
use crate::auth::jwks::JwksRefresher;
use crate::auth::Authoriser;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::tls;

/// Marks the listener up once it completes a TLS handshake (a bare TCP probe would log a failed
/// handshake).
/// The background services, run side by side on one runtime.
struct Housekeeping {
    probe: ListenerProbe,
    purge: Option<crate::state::SessionPurger>,
    jwks: Option<JwksRefresher>,
    state: Option<StateProbe>,
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, shutdown: ShutdownWatch) {
        let purge = async {
            if let Some(p) = &self.purge {
                p.start(shutdown.clone()).await
            }
        };
        let jwks = async {
            if let Some(j) = &self.jwks {
                j.start(shutdown.clone()).await
            }
        };
        let state = async {
            if let Some(s) = &self.state {
                s.start(shutdown.clone()).await
            }
        };
        tokio::join!(self.probe.start(shutdown.clone()), purge, jwks, state);
    }
}

/// Pings the shared state (Redis) every second: `/readyz` says 503 while it does not answer.
/// Recovery needs no restart: the connections reconnect by themselves.
struct StateProbe {
    store: crate::state::Store,
    readiness: Arc<Readiness>,
}

#[async_trait]
impl BackgroundService for StateProbe {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut was_up = true;
        loop {
            let store = self.store.clone();
            let up = matches!(
                tokio::task::spawn_blocking(move || store.ping()).await,
                Ok(Ok(()))
            );
            self.readiness.set_state_up(up);
            if up != was_up {
                if up {
                    tracing::info!(target: "bindgate::state", "the shared state answers again");
                } else {
                    tracing::warn!(target: "bindgate::state", "the shared state (Redis) does not answer");
                }
                was_up = up;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

struct ListenerProbe {
    address: SocketAddr,
    readiness: Arc<Readiness>,
}

#[async_trait]
impl BackgroundService for ListenerProbe {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let target = reachable(self.address);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                handshake = tokio::task::spawn_blocking(move || tls_handshake(target)) => {
                    if matches!(handshake, Ok(true)) {
                        self.readiness.set_listener_up();
                        tracing::info!("listening on https://{}", self.address);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

fn tls_handshake(target: SocketAddr) -> bool {
    use pingora::tls::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let Ok(tcp) = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(1)));
    let Ok(mut builder) = SslConnector::builder(SslMethod::tls_client()) else {
        return false;
    };
    // The probe checks that the listener answers; it trusts nothing it learns.
    builder.set_verify(SslVerifyMode::NONE);
    let connector = builder.build();
    match connector
        .configure()
        .map(|c| c.verify_hostname(false).connect("localhost", tcp))
    {
        Ok(Ok(mut stream)) => {
            let _ = stream.shutdown();
            true
        }
        _ => false,
    }
}

/// The address to reach a listener bound to `address` (a wildcard address is reached on loopback).
fn reachable(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), address.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), address.port())
        }
        _ => address,
    }
}

/// Fails early, with the key to blame, when an address cannot be bound.
fn check_bindable(key: &str, address: SocketAddr) -> Result<(), String> {
    TcpListener::bind(address)
        .map(drop)
        .map_err(|e| format!("{key}: cannot listen on {address}: {e}"))
}

/// Runs bindgate until SIGTERM (graceful, within `server.grace_period`) or SIGINT (at once).
pub fn run(config: Config) -> Result<(), String> {
    check_bindable("listen.address", config.listen.address)?;
    if let Some(admin) = &config.admin {
        check_bindable("admin.address", admin.address)?;
    }

    let mut conf = ServerConf {
        threads: config.server.threads,
        // On SIGTERM the listeners close and requests in flight have the grace period to finish.
        grace_period_seconds: Some(config.server.grace_period.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        // One current-thread runtime per thread (Pingora's "no steal" mode): no cross-thread
        // wake-ups for a proxy whose connections are independent.
        work_stealing: false,
        ..ServerConf::default()
    };
    conf.upstream_keepalive_pool_size = 128;
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::new(config.jwks.is_some()));

    let embedded = config.registration.target == crate::config::Target::Embedded
        || config.session_store.target == crate::config::Target::Embedded;
    // The storage engine: for the embedded targets, and with Redis for the shared replay
    // cache of DPoP proofs too.
    let store = if embedded || config.state.redis.is_some() {
        Some(crate::state::Store::open_state(&config.state)?)
    } else {
        None
    };
    let shared = store.clone().filter(|s| s.redis().is_some());
    let (authoriser, key_store) =
        Authoriser::new(&config, metrics.clone(), readiness.clone(), shared.clone())?;
    let state = match (&store, embedded) {
        (Some(store), true) => Some(crate::state::StateService::with_store(
            &config,
            store.clone(),
        )),
        _ => None,
    };
    let gateway = Gateway::new(&config, authoriser, state.clone(), metrics.clone())?;
    let mut proxy =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, gateway, "bindgate");
    let settings = tls::settings(&config.listen.tls)?;
    proxy.add_tls_with_settings(&config.listen.address.to_string(), None, settings);
    server.add_service(proxy);

    if let Some(admin) = &config.admin {
        let mut service = Service::new(
            "admin".to_string(),
            AdminApp {
                readiness: readiness.clone(),
                metrics: metrics.clone(),
            },
        );
        service.threads = Some(1);
        service.add_tcp(&admin.address.to_string());
        server.add_service(service);
    }

    // One thread for all background work: the listener probe, the session purge, the key
    // refresh (each would otherwise get a runtime thread of its own).
    server.add_service(background_service(
        "housekeeping",
        Housekeeping {
            probe: ListenerProbe {
                address: config.listen.address,
                readiness: readiness.clone(),
            },
            purge: state.map(|state| crate::state::SessionPurger {
                state,
                interval: Duration::from_secs(60),
            }),
            jwks: key_store.map(|store| JwksRefresher { store }),
            state: shared.map(|store| StateProbe {
                store,
                readiness: readiness.clone(),
            }),
        },
    ));

    tracing::info!(
        config = %config.source.display(),
        threads = config.server.threads,
        "bindgate starting"
    );
    server.run(pingora::server::RunArgs::default());
    Ok(())
}
