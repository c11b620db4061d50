//! The listener, the admin listener, the issuer, the state and the server sections.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::checks::*;
use super::Problems;
use crate::config::file::*;
use crate::config::units::parse_size;
use crate::config::*;

pub(super) fn listen(
    p: &mut Problems,
    file: &FileConfig,
    source: &Path,
) -> (Option<SocketAddr>, Option<ListenTls>) {
    let path_of = |written: &str| resolve_against(source, written);
    // listen
    let listen_address = socket_addr(p, "listen.address", &file.listen.address);
    let tls = &file.listen.tls;
    let cert = path_of(&tls.cert);
    let key = path_of(&tls.key);
    let identity = identity(p, "listen.tls", &cert, &key);
    let client_auth = match tls.client_auth.as_deref() {
        None | Some("optional") => ClientAuth::Optional,
        Some("none") => ClientAuth::None,
        Some("required") => ClientAuth::Required,
        Some(other) => {
            p.push(
                "listen.tls.client_auth",
                format!("`{other}` is not one of none, optional, required"),
            );
            ClientAuth::Optional
        }
    };
    let client_ca = tls
        .client_ca
        .as_deref()
        .and_then(|ca| certificates(p, "listen.tls.client_ca", &path_of(ca)));
    if tls.client_ca.is_some() && client_auth == ClientAuth::None {
        p.push(
            "listen.tls.client_ca",
            "has no effect with client_auth: none (remove it or choose optional/required)",
        );
    }

    let groups = tls.groups.as_deref().and_then(|g| groups(p, g));
    let tls = identity.map(|identity| ListenTls {
        cert,
        key,
        identity,
        client_auth,
        client_ca,
        watch: tls.watch.unwrap_or(false),
        groups,
    });
    (listen_address, tls)
}

/// `listen.tls.groups`: key exchange groups OpenSSL knows, each named once.
fn groups(p: &mut Problems, written: &[String]) -> Option<std::ffi::CString> {
    let key = "listen.tls.groups";
    if written.is_empty() {
        p.push(key, "is empty (leave it out for OpenSSL's default)");
        return None;
    }
    let mut good = true;
    for (i, name) in written.iter().enumerate() {
        let plain = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !plain {
            p.push(key, format!("`{name}` is not a group name"));
            good = false;
        } else if written[..i].iter().any(|n| n.eq_ignore_ascii_case(name)) {
            p.push(key, format!("`{name}` is named twice"));
            good = false;
        } else if !crate::tls::known_group(name) {
            p.push(
                key,
                format!("`{name}` is not a group this OpenSSL offers (e.g. X25519MLKEM768, X25519, P-256, P-384)"),
            );
            good = false;
        }
    }
    if !good {
        return None;
    }
    std::ffi::CString::new(written.join(":")).ok()
}

pub(super) fn admin(
    p: &mut Problems,
    file: &FileConfig,
    listen_address: Option<SocketAddr>,
) -> Option<Admin> {
    // admin
    let admin = file
        .admin
        .as_ref()
        .and_then(|a| socket_addr(p, "admin.address", &a.address))
        .map(|address| Admin { address });
    if let (Some(a), Some(l)) = (&admin, listen_address) {
        if a.address == l && l.port() != 0 {
            p.push("admin.address", "is the same as listen.address");
        }
    }

    admin
}

pub(super) fn issuer(p: &mut Problems, file: &FileConfig) -> Option<String> {
    // issuer
    let issuer = file.issuer.clone();
    if let Some(iss) = &issuer {
        if !is_http_uri(iss) {
            p.push("issuer", format!("`{iss}` is not an http(s) URI"));
        }
    }

    issuer
}

pub(super) fn state(p: &mut Problems, file: &FileConfig, source: &Path) -> State {
    let path_of = |written: &str| resolve_against(source, written);
    // state
    let st = file.state.as_ref();
    if st.is_some_and(|s| s.path.is_some() && s.redis.is_some()) {
        p.push("state", "give one of path (redb) and redis, not both");
    }
    let redis = st
        .and_then(|s| s.redis.as_ref())
        .map(|r| redis_settings(p, r, source));
    let state_path = match st.and_then(|s| s.path.as_deref()) {
        None | Some(":memory:") => StatePath::Memory,
        Some("") => {
            p.push("state.path", "is empty (use \":memory:\" or a file path)");
            StatePath::Memory
        }
        Some(f) => StatePath::File(path_of(f)),
    };
    let limits = st.and_then(|s| s.sessions.as_ref());
    let mut minutes = |key: &str, given: Option<i64>, default: i64| {
        let v = given.unwrap_or(default);
        if v == 0 || v < -1 {
            p.push(
                key,
                format!("{v}: must be a number of minutes > 0, or -1 for unlimited"),
            );
        }
        v
    };
    let sessions = SessionLimits {
        max_life: minutes(
            "state.sessions.max_life",
            limits.and_then(|l| l.max_life),
            20160,
        ),
        auth_life: minutes(
            "state.sessions.auth_life",
            limits.and_then(|l| l.auth_life),
            10080,
        ),
        max_idle: minutes(
            "state.sessions.max_idle",
            limits.and_then(|l| l.max_idle),
            15,
        ),
    };
    State {
        path: state_path,
        redis,
        sessions,
    }
}

pub(super) fn server(p: &mut Problems, file: &FileConfig, source: &Path) -> Server {
    let path_of = |written: &str| resolve_against(source, written);
    // server
    let sv = file.server.as_ref();
    let threads = sv.and_then(|s| s.threads).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if threads == 0 || threads > 1024 {
        p.push(
            "server.threads",
            format!("{threads}: must be between 1 and 1024"),
        );
    }
    let max_body = match sv.and_then(|s| s.max_body.as_deref()).map(parse_size) {
        None => 64 * 1024,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            p.push("server.max_body", e);
            64 * 1024
        }
    };
    let pid_file = sv.and_then(|s| s.pid_file.as_deref()).map(path_of);
    // `run` writes it at start: a folder that is not there is refused here, not there.
    if let Some(folder) = pid_file
        .as_deref()
        .and_then(Path::parent)
        .filter(|f| !f.as_os_str().is_empty() && !f.is_dir())
    {
        p.push(
            "server.pid_file",
            format!(
                "the folder {} does not exist (create it, owned by bindgate's user)",
                folder.display()
            ),
        );
    }
    // Each instance its own, in a folder its operator chose: beside the pid file (a runtime
    // folder bindgate's user owns), else beside the configuration file. Never one shared path
    // in a world-writable folder, where another user could listen first and be handed the
    // listening sockets.
    let upgrade_sock = match sv.and_then(|s| s.upgrade_sock.as_deref()) {
        Some(written) => path_of(written),
        None => pid_file
            .as_deref()
            .unwrap_or(source)
            .with_extension("upgrade.sock"),
    };
    // sockaddr_un holds 108 bytes, the final NUL included.
    if upgrade_sock.as_os_str().len() > 107 {
        p.push(
            "server.upgrade_sock",
            format!(
                "{} is longer than a Unix socket path may be (107 bytes); set a shorter one",
                upgrade_sock.display()
            ),
        );
    }
    let active_requests = sv.and_then(|s| s.active_requests).unwrap_or(16);
    if active_requests > 65_536 {
        p.push(
            "server.active_requests",
            format!("{active_requests}: must be at most 65536 (0 turns the window off)"),
        );
    }
    let active_hold = p.positive_duration(
        "server.active_hold",
        sv.and_then(|s| s.active_hold.as_ref()),
        Duration::from_millis(20),
    );
    if active_hold > Duration::from_secs(1) {
        p.push("server.active_hold", "must be at most 1s");
    }
    let server = Server {
        threads,
        grace_period: p.duration(
            "server.grace_period",
            sv.and_then(|s| s.grace_period.as_ref()),
            Duration::from_secs(5),
        ),
        max_body,
        pid_file: pid_file.clone(),
        upgrade_sock,
        idle_timeout: p.positive_duration(
            "server.idle_timeout",
            sv.and_then(|s| s.idle_timeout.as_ref()),
            Duration::from_secs(60),
        ),
        header_timeout: p.positive_duration(
            "server.header_timeout",
            sv.and_then(|s| s.header_timeout.as_ref()),
            Duration::from_secs(10),
        ),
        body_timeout: p.positive_duration(
            "server.body_timeout",
            sv.and_then(|s| s.body_timeout.as_ref()),
            Duration::from_secs(30),
        ),
        trust_request_id: sv.and_then(|s| s.trust_request_id).unwrap_or(false),
        active_requests,
        active_hold,
    };

    server
}
