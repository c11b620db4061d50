//! The listening sockets: bound by bindgate itself and handed to Pingora (so a taken port is
//! named at once and port 0 is read back), and the probe that marks the listener up.

use async_trait::async_trait;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Problem;
use crate::readiness::Readiness;

/// Marks the listener up once it completes a TLS handshake (a bare TCP probe would log a failed
/// handshake).
pub struct ListenerProbe {
    pub address: SocketAddr,
    pub readiness: Arc<Readiness>,
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
                        crate::notify::ready(self.address);
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

/// A listening socket bindgate bound itself, and the address it has (the port the kernel
/// chose when the configuration said 0).
pub struct Bound {
    socket: socket2::Socket,
    pub address: SocketAddr,
}

/// Binds `address` as Pingora would (SO_REUSEADDR, its backlog, non-blocking), failing early
/// with the key to blame. The socket is handed to Pingora, which then does not bind again: no
/// window in which another process takes the port, and port 0 is read back.
pub fn bind_listener(key: &str, address: SocketAddr) -> Result<Bound, Problem> {
    use socket2::{Domain, Socket, Type};
    let refused = |e: std::io::Error| Problem::new(key, format!("cannot listen on {address}: {e}"));
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None).map_err(refused)?;
    socket.set_reuse_address(true).map_err(refused)?;
    socket.bind(&address.into()).map_err(refused)?;
    // Pingora's LISTENER_BACKLOG.
    socket.listen(65_535).map_err(refused)?;
    socket.set_nonblocking(true).map_err(refused)?;
    let address = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| {
            Problem::new(key, format!("cannot listen on {address}: no local address"))
        })?;
    Ok(Bound { socket, address })
}

/// Gives Pingora the sockets bound here: each service whose address is in the table takes
/// the descriptor instead of binding.
pub fn hand_to_pingora(server: &Server, bound: Vec<Bound>) {
    use std::os::fd::IntoRawFd;
    let table = server.listen_fds();
    let mut table = table.lock();
    for b in bound {
        table.add(b.address.to_string(), b.socket.into_raw_fd());
    }
}

/// `run --upgrade` takes the sockets over by their addresses: a port the kernel chose is not
/// in the configuration, so it cannot be found.
pub fn no_port_zero(key: &str, address: SocketAddr) -> Result<(), Problem> {
    if address.port() == 0 {
        return Err(Problem::new(
            key,
            "port 0 cannot be taken over by `run --upgrade`: name the port the running bindgate listens on",
        ));
    }
    Ok(())
}

/// Raises the soft limit on open descriptors (never lowers it) to what the configuration
/// needs, within the hard limit, as HAProxy derives its own from `maxconn`: each request in
/// flight to an upstream holds two descriptors (its client's connection and the upstream's),
/// so twice the upstreams' `max_connections` and 256 to spare (listeners, files, keys, Redis,
/// idle clients). Many systems start processes with a soft limit of 1 024, under which the
/// default `max_connections` (1 024) would run out of descriptors at ~500 requests in flight.
/// A higher soft limit set by the operator (`ulimit -n`, `LimitNOFILE=`) is kept: that is how
/// to allow more idle client connections. Warns when the hard limit is below the need.
pub fn raise_descriptor_limit(config: &crate::config::Config) {
    let upstream: u64 = config
        .upstreams
        .values()
        .map(|u| u.max_connections as u64)
        .sum();
    let needed = upstream.saturating_mul(2).saturating_add(256);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let before = limit.rlim_cur;
    let wanted = needed.min(limit.rlim_max);
    if wanted > before {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = wanted;
            tracing::info!(
                "open descriptor limit raised from {before} to {wanted} (the upstreams' max_connections {upstream}, two descriptors each, and 256)"
            );
        }
    }
    if limit.rlim_cur < needed {
        tracing::warn!(
            "open descriptor limit {} is below the {needed} the upstreams' max_connections ({upstream}) can hold open with their clients' connections: \
             new connections will be refused before max_connections is reached; raise the hard limit (LimitNOFILE= under systemd, ulimit -Hn, --ulimit nofile= for a container)",
            limit.rlim_cur
        );
    }
}
