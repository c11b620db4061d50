//! Assembles the Pingora server from a validated `Config`: the TLS proxy, the admin listener and
//! the background tasks, then runs it until a signal ends it.

mod connection;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::admin::AdminApp;
use crate::auth::cache::now_secs;
use crate::auth::jwks::JwksRefresher;
use crate::auth::replay::{ReplayRecord, Snapshot};
use crate::config::{Config, Problem};
use crate::gateway::Gateway;
use crate::listeners::{bind_listener, hand_to_pingora, no_port_zero, ListenerProbe};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::reload::Control;
use crate::tls;

/// The background services, run side by side on one runtime.
struct Housekeeping {
    probe: ListenerProbe,
    purge: Option<crate::state::SessionPurger>,
    jwks: JwksRefresher,
    state: Option<StateProbe>,
    operator: Operator,
    upstreams: crate::gateway::balance::Tender,
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, shutdown: ShutdownWatch) {
        let purge = async {
            if let Some(p) = &self.purge {
                p.start(shutdown.clone()).await
            }
        };
        let jwks = self.jwks.start(shutdown.clone());
        let state = async {
            if let Some(s) = &self.state {
                s.start(shutdown.clone()).await
            }
        };
        tokio::join!(
            self.probe.start(shutdown.clone()),
            purge,
            jwks,
            state,
            self.operator.start(shutdown.clone()),
            self.upstreams.start(shutdown.clone())
        );
    }
}

/// Pings the shared state (Redis) every second: `/readyz` says 503 while it does not answer.
/// Recovery needs no restart: the connections reconnect by themselves.
struct StateProbe {
    store: crate::state::Store,
    readiness: Arc<Readiness>,
    /// The live configuration: an instance that started while Redis was down takes the shared
    /// DPoP nonce key once Redis answers.
    live: Arc<arc_swap::ArcSwap<crate::gateway::Live>>,
    /// `state.redis.allow_eviction`.
    allow_eviction: bool,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl BackgroundService for StateProbe {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut was_up = true;
        let mut was_evicting = false;
        loop {
            let store = self.store.clone();
            let live = self.live.load_full();
            let probed = tokio::task::spawn_blocking(move || {
                store.ping()?;
                live.authoriser().adopt_shared_nonce_key();
                // A Redis that does not say (INFO refused) is taken at its word: up.
                Ok::<_, crate::state::store::StoreError>(store.eviction_policy().ok().flatten())
            })
            .await;
            let (up, policy, refused) = match probed {
                Ok(Ok(policy)) => (true, policy, None),
                Ok(Err(e)) if e.refuses_credentials() => (false, None, Some(e)),
                _ => (false, None, None),
            };
            self.readiness
                .set_state_refuses_credentials(refused.is_some());
            if up {
                // Keys an evicting policy may drop: the single-use ledger, the replay record.
                let evicting =
                    policy.as_deref().is_some_and(|p| p != "noeviction") && !self.allow_eviction;
                if evicting && !was_evicting {
                    tracing::error!(target: "bindgate::state", "Redis maxmemory-policy is {}: single-use tokens and DPoP replay records could be evicted; not ready (set maxmemory-policy noeviction, or state.redis.allow_eviction: true)", policy.as_deref().unwrap_or_default());
                }
                was_evicting = evicting;
                self.readiness.set_state_evicts(evicting);
            }
            self.readiness.set_state_up(up);
            self.metrics.ops.state_up.set(i64::from(up));
            if up != was_up {
                if up {
                    tracing::info!(target: "bindgate::state", "the shared state answers again");
                } else if let Some(e) = &refused {
                    tracing::error!(target: "bindgate::state", "the shared state (Redis) refuses bindgate's password: {e}");
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

/// Runs bindgate until SIGTERM (graceful, within `server.grace_period`) or SIGINT (at once).
/// With `upgrade`, takes the listening sockets over from the running bindgate (which hands them
/// over on SIGQUIT and drains) instead of binding them.
pub fn run(config: Config, upgrade: bool) -> Result<(), Problem> {
    // Bound here, before anything else, so that a taken port is the first thing said; with
    // `upgrade` the running bindgate's sockets are taken over instead. The configuration keeps
    // the addresses as written (a reload compares them); `listen` and `admin_address` are the
    // bound ones.
    let mut listen = config.listen.address;
    let mut admin_address = config.admin.as_ref().map(|a| a.address);
    let mut bound = Vec::new();
    if upgrade {
        no_port_zero("listen.address", listen)?;
        if let Some(admin) = admin_address {
            no_port_zero("admin.address", admin)?;
        }
    } else {
        let b = bind_listener("listen.address", listen)?;
        listen = b.address;
        bound.push(b);
        if let Some(admin) = &mut admin_address {
            let b = bind_listener("admin.address", *admin)?;
            *admin = b.address;
            bound.push(b);
        }
    }
    // SIGHUP reloads; its handler is installed before anything else runs, so that an early
    // SIGHUP never takes the default action (terminating the process).
    install_hangup_handler()?;
    crate::listeners::raise_descriptor_limit(&config);

    let conf = ServerConf {
        threads: config.server.threads,
        // On SIGTERM the listeners close and requests in flight have the grace period to finish.
        grace_period_seconds: Some(config.server.grace_period.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        // One current-thread runtime per thread (Pingora's "no steal" mode): no cross-thread
        // wake-ups for a proxy whose connections are independent.
        work_stealing: false,
        upgrade_sock: config.server.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    // The upstream keep-alive pool holds every upstream's `keepalive_pool` (by default its
    // `max_connections`): a steady load reuses its connections instead of opening and closing
    // one per request once more than a fixed 128 are in flight.
    let keepalive_pool: usize = config
        .upstreams
        .values()
        .map(|u| u.keepalive_pool)
        .sum::<usize>()
        .max(1);
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    // The old process writes its DPoP replay record here once it hands the sockets over; one
    // left from an earlier upgrade is not this one's.
    let handover = handover_path(&config.server.upgrade_sock);
    if upgrade {
        let _ = std::fs::remove_file(&handover);
    }
    // With `upgrade`: waits here for the old process's listening sockets.
    server.bootstrap();
    hand_to_pingora(&server, bound);

    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::with_state_probe(
        config.jwks.is_some(),
        config.state.redis.is_some(),
    ));
    let allow_eviction = config
        .state
        .redis
        .as_ref()
        .is_some_and(|r| r.allow_eviction);
    let pid_file = config.server.pid_file.clone();
    let threads = config.server.threads;
    let config_server = config.server.clone();
    let source = config.source.clone();
    let leeway = config.tokens.leeway;
    let shared_state = config.state.redis.is_some();
    let startup = startup_summary(&config, listen, admin_address);
    let warnings = crate::config::advice::warnings(&config);
    let telemetry = config.telemetry.clone();
    let control = Control::start(config, metrics.clone(), readiness.clone())?;
    if upgrade && !shared_state {
        // Before serving: no proof the old process accepted is good here. (With Redis, the
        // record every instance shares already holds them.)
        take_over_replay_record(&control, &handover, leeway);
    }

    // From the moment an upgrade hands the sockets over (SIGQUIT) or a shutdown starts
    // (SIGTERM), answers close their connections: clients move to a new connection (the new
    // process's, after an upgrade) instead of racing the old process dropping idle ones.
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut phases = server.watch_execution_phase();
    let flag = draining.clone();
    let live = control.live.clone();
    std::thread::Builder::new()
        .name("bindgate-phase".into())
        .spawn(move || {
            use pingora::server::ExecutionPhase as P;
            use tokio::sync::broadcast::error::RecvError;
            let mut handed_over = false;
            loop {
                let phase = match phases.blocking_recv() {
                    Ok(p) => p,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                };
                let upgrading = matches!(
                    phase,
                    P::GracefulUpgradeTransferringFds | P::GracefulUpgradeCloseTimeout
                );
                let stopping = matches!(phase, P::GracefulTerminate | P::ShutdownStarted);
                // Running again after an upgrade began: no new process took the sockets, this
                // one serves on as before.
                if matches!(phase, P::Running) && flag.load(std::sync::atomic::Ordering::Relaxed) {
                    flag.store(false, std::sync::atomic::Ordering::Relaxed);
                    if handed_over {
                        handed_over = false;
                        live.load().replay_record().unseal();
                        let _ = std::fs::remove_file(&handover);
                    }
                    tracing::warn!(
                        "the upgrade did not happen: serving on, DPoP proofs accepted again"
                    );
                    crate::notify::notify("STATUS=serving; the upgrade did not happen");
                    continue;
                }
                if (upgrading || stopping) && !flag.swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::info!("draining: answers now close their connections");
                    // An upgrade is not a stop: the new process names itself MAINPID when it
                    // serves, and systemd follows it.
                    if upgrading {
                        crate::notify::notify(
                            "STATUS=handing the listening sockets to the new process",
                        );
                    } else {
                        crate::notify::stopping("draining requests in flight");
                    }
                }
                // Once, at the first upgrade phase seen (a lagging receiver may miss one).
                if upgrading && !shared_state && !handed_over {
                    handed_over = true;
                    hand_over_replay_record(&live.load().replay_record(), &handover);
                }
            }
        })
        .map_err(|e| Problem::new("", format!("cannot start a thread: {e}")))?;
    let tracer = telemetry.map(|settings| {
        let queue = crate::telemetry::Queue::new(settings.queue);
        metrics.register(queue.metric());
        Arc::new(crate::telemetry::Tracer { settings, queue })
    });
    let gateway = Gateway::new(
        control.live.clone(),
        draining,
        metrics.clone(),
        tracer.clone(),
    );
    let mut client_options =
        pingora::connectors::ConnectorOptions::from_server_conf(&server.configuration);
    client_options.keepalive_pool_size = keepalive_pool;
    let closed = metrics.upstream_closed.clone();
    client_options.keepalive_pool_callback = Some(Arc::new(move |_idle| closed.inc()));
    let mut proxy = pingora::proxy::ProxyServiceBuilder::new(&server.configuration, gateway)
        .name("bindgate")
        .server_options(connection::connection_deadlines(&config_server))
        .client_options(client_options)
        .build();
    let settings = tls::settings(control.tls.clone())?;
    // No read buffer under TLS: OpenSSL reads ahead into its own record buffer (released
    // when empty), so Pingora's default 64 KiB L4 read buffer, zeroed and kept for the
    // connection's life, would only copy the same bytes once more. The write buffer stays.
    let l4 = pingora::protocols::l4::stream::L4BufferSettings::default().read(0);
    proxy.add_listener(
        pingora::listeners::ListenerConfig::tcp(listen.to_string())
            .tls(settings)
            .l4_buffer(l4),
    );
    server.add_service(proxy);

    if let Some(tracer) = tracer {
        server.add_service(background_service(
            "telemetry",
            crate::telemetry::Exporter { tracer },
        ));
    }

    if let Some(address) = admin_address {
        let mut service = Service::new(
            "admin".to_string(),
            AdminApp {
                readiness: readiness.clone(),
                metrics: metrics.clone(),
                control: control.clone(),
            },
        );
        service.threads = Some(1);
        service.add_tcp(&address.to_string());
        server.add_service(service);
    }

    // One thread for all background work: the listener probe, the session purge, the key
    // refresh, the state probe, reloads (each would otherwise get a runtime thread of its own).
    let purge = control.store().map(|store| {
        let sessions = prometheus::IntGauge::new(
            "sessions",
            "Sessions stored now (Connect2id's sessionStore.numSessions), counted every 5 s",
        )
        .expect("static metric definition");
        metrics.register(Box::new(sessions.clone()));
        crate::state::SessionPurger {
            state: crate::state::StateService::with_store(&control.config(), store),
            interval: Duration::from_secs(60),
            count_every: Duration::from_secs(5),
            sessions,
        }
    });
    server.add_service(background_service(
        "housekeeping",
        Housekeeping {
            probe: ListenerProbe {
                address: listen,
                readiness: readiness.clone(),
            },
            purge,
            jwks: JwksRefresher {
                stores: control.keys.clone(),
            },
            state: control.shared_store().map(|store| StateProbe {
                store,
                readiness: readiness.clone(),
                live: control.live.clone(),
                allow_eviction,
                metrics: metrics.clone(),
            }),
            operator: Operator {
                control: control.clone(),
                metrics: metrics.clone(),
            },
            upstreams: crate::gateway::balance::Tender {
                live: control.live.clone(),
                metrics: metrics.clone(),
            },
        },
    ));

    if let Some(path) = &pid_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| Problem::new("server.pid_file", format!("{}: {e}", path.display())))?;
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %source.display(),
        threads,
        upgrade,
        listen = %startup.listen,
        admin = %startup.admin,
        state = %startup.state,
        routes = %startup.routes,
        "bindgate starting"
    );
    for w in warnings {
        tracing::warn!("{w}");
    }
    server.run(pingora::server::RunArgs::default());
    // After an upgrade the file names the new process: only our own pid is removed.
    if let Some(path) = &pid_file {
        let ours =
            std::fs::read_to_string(path).is_ok_and(|p| p.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

/// Where an old process leaves its DPoP replay record for the new one: beside the upgrade
/// socket both are configured with.
fn handover_path(upgrade_sock: &Path) -> PathBuf {
    let mut name = upgrade_sock.as_os_str().to_owned();
    name.push(".dpop");
    PathBuf::from(name)
}

/// The old process, as it hands its sockets over: seals the replay record (from now on it
/// refuses every DPoP proof, 503; its answers close their connections) and writes what it
/// holds for the new process (owner-only; written whole, then renamed into place).
fn hand_over_replay_record(record: &ReplayRecord, path: &Path) {
    let snapshot = record.seal();
    let count = snapshot.entries.len();
    let written = (|| {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&snapshot.encode())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    match written {
        Ok(()) => tracing::info!(
            proofs = count,
            path = %path.display(),
            "DPoP replay record handed over; this process refuses DPoP proofs from now on"
        ),
        Err(e) => tracing::error!(
            path = %path.display(),
            "DPoP replay record: cannot hand it over ({e}); the new process refuses proofs issued before its start and the leeway"
        ),
    }
}

/// The new process, before it serves: takes the old process's replay record in. Without it
/// (the old one could not write it, or predates the hand-over) the record begins after the
/// leeway: a proof the old process accepted may be dated that far ahead.
fn take_over_replay_record(control: &Control, path: &Path, leeway: Duration) {
    let record = control.live.load().replay_record();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::read(path) {
            Ok(bytes) => {
                let _ = std::fs::remove_file(path);
                match Snapshot::decode(&bytes) {
                    Some(snapshot) => {
                        record.take_over(&snapshot, now_secs());
                        tracing::info!(
                            proofs = snapshot.entries.len(),
                            "DPoP replay record taken over from the old process"
                        );
                        return;
                    }
                    None => {
                        tracing::error!(path = %path.display(), "DPoP replay record from the old process is not whole");
                        break;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(path = %path.display(), "DPoP replay record from the old process: {e}");
                break;
            }
        }
        if std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let from = now_secs() + leeway.as_secs_f64();
    record.begin_at(from);
    tracing::warn!(
        "no DPoP replay record from the old process: proofs issued before the next {}s are refused",
        leeway.as_secs()
    );
}

fn install_hangup_handler() -> Result<(), Problem> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Problem::new("", format!("signal setup: {e}")))?;
    // The handler stays installed for the life of the process once registered.
    rt.block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) })
        .map(drop)
        .map_err(|e| Problem::new("", format!("signal setup: {e}")))
}

/// Reloads on SIGHUP; watches the certificate files (`listen.tls.watch`); keeps time-based
/// gauges current.
struct Operator {
    control: Arc<Control>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl BackgroundService for Operator {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("SIGHUP cannot be received, reload by signal is off: {e}");
                None
            }
        };
        loop {
            let signalled = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = signalled => {
                    tracing::info!(target: "bindgate::reload", "SIGHUP: reloading the configuration");
                    crate::notify::reloading();
                    let verdict = self.control.reload().await;
                    crate::notify::reloaded(if verdict.is_ok() {
                        "serving; configuration reloaded"
                    } else {
                        "serving; the new configuration was refused, the running one kept"
                    });
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if self.control.config().listen.tls.watch {
                        self.control.reload_certificates_if_changed().await;
                    }
                    self.metrics.tick();
                }
            }
        }
    }
}

/// What the startup line says of a configuration.
struct Startup {
    listen: String,
    admin: String,
    state: String,
    routes: String,
}

fn startup_summary(
    config: &crate::config::Config,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
) -> Startup {
    let state = match (&config.state.redis, &config.state.path) {
        (Some(r), _) if !r.cluster.is_empty() => {
            format!("redis cluster ({} seeds)", r.cluster.len())
        }
        (Some(_), _) => "redis".to_string(),
        (None, p) => format!("redb {p:?}"),
    };
    let routes = config
        .routes
        .iter()
        .map(|r| format!("{}→{}", r.prefix, r.upstream))
        .collect::<Vec<_>>()
        .join(" ");
    Startup {
        listen: listen.to_string(),
        admin: admin.map_or_else(|| "-".into(), |a| a.to_string()),
        state,
        routes,
    }
}
