//! File structs → runtime `Config`, with every problem collected.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::*;
use super::units::{parse_duration, parse_size};
use super::*;

struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }

    /// A deadline: more than 0 (a zero deadline would refuse everything) and at most a day.
    fn positive_duration(
        &mut self,
        key: &str,
        given: Option<&String>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(key, given, default);
        if d.is_zero() || d > Duration::from_secs(86_400) {
            self.push(key, "must be more than 0 and at most 24h");
            return default;
        }
        d
    }

    fn duration(&mut self, key: &str, given: Option<&String>, default: Duration) -> Duration {
        match given.map(|t| parse_duration(t)) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.push(key, e);
                default
            }
        }
    }
}

pub fn validate(file: FileConfig, source: &Path) -> Result<Config, Vec<Problem>> {
    let mut p = Problems(Vec::new());
    let path_of = |written: &str| resolve_against(source, written);

    // listen
    let listen_address = socket_addr(&mut p, "listen.address", &file.listen.address);
    let tls = &file.listen.tls;
    let cert = path_of(&tls.cert);
    let key = path_of(&tls.key);
    check_cert_and_key(&mut p, "listen.tls", &cert, &key);
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
    let client_ca = tls.client_ca.as_deref().map(path_of);
    if let Some(ca) = &client_ca {
        check_certificates(&mut p, "listen.tls.client_ca", ca);
        if client_auth == ClientAuth::None {
            p.push(
                "listen.tls.client_ca",
                "has no effect with client_auth: none (remove it or choose optional/required)",
            );
        }
    }

    // admin
    let admin = file
        .admin
        .as_ref()
        .and_then(|a| socket_addr(&mut p, "admin.address", &a.address))
        .map(|address| Admin { address });
    if let (Some(a), Some(l)) = (&admin, listen_address) {
        if a.address == l && l.port() != 0 {
            p.push("admin.address", "is the same as listen.address");
        }
    }

    // issuer
    let issuer = file.issuer.clone();
    if let Some(iss) = &issuer {
        if !is_http_uri(iss) {
            p.push("issuer", format!("`{iss}` is not an http(s) URI"));
        }
    }

    // jwks
    let jwks = file.jwks.as_ref().and_then(|j| {
        let source = match (&j.uri, &j.file) {
            (Some(uri), None) => {
                if !is_http_uri(uri) {
                    p.push("jwks.uri", format!("`{uri}` is not an http(s) URI"));
                }
                JwksSource::Uri(uri.clone())
            }
            (None, Some(f)) => {
                let path = path_of(f);
                if !path.is_file() {
                    p.push("jwks.file", format!("{} does not exist", path.display()));
                }
                JwksSource::File(path)
            }
            _ => {
                p.push("jwks", "give exactly one of uri, file");
                return None;
            }
        };
        let ca = j.ca.as_deref().map(path_of);
        if let Some(ca) = &ca {
            check_certificates(&mut p, "jwks.ca", ca);
        }
        Some(Jwks {
            source,
            refresh_interval: p.duration(
                "jwks.refresh_interval",
                j.refresh_interval.as_ref(),
                Duration::from_secs(300),
            ),
            min_refetch_interval: p.duration(
                "jwks.min_refetch_interval",
                j.min_refetch_interval.as_ref(),
                Duration::from_secs(30),
            ),
            max_stale: p.duration(
                "jwks.max_stale",
                j.max_stale.as_ref(),
                Duration::from_secs(86_400),
            ),
            ca,
            fetch_timeout: p.duration(
                "jwks.fetch_timeout",
                j.fetch_timeout.as_ref(),
                Duration::from_secs(5),
            ),
        })
    });
    if let Some(j) = &jwks {
        if j.refresh_interval.is_zero() {
            p.push("jwks.refresh_interval", "must be more than 0");
        }
        if j.fetch_timeout.is_zero() {
            p.push("jwks.fetch_timeout", "must be more than 0");
        }
    }
    if jwks.is_some() && issuer.is_none() {
        p.push(
            "issuer",
            "required when jwks is set (the JWT iss must equal it)",
        );
    }

    // tokens
    let tokens_file = file.tokens.as_ref();
    let algorithms = algorithm_list(
        &mut p,
        "tokens.algorithms",
        tokens_file.and_then(|t| t.algorithms.as_ref()),
    );
    let tokens = Tokens {
        algorithms,
        leeway: p.duration(
            "tokens.leeway",
            tokens_file.and_then(|t| t.leeway.as_ref()),
            Duration::from_secs(60),
        ),
        verified_cache_entries: tokens_file
            .and_then(|t| t.verified_cache_entries)
            .unwrap_or(100_000),
    };

    // upstreams
    let mut upstreams = BTreeMap::new();
    for (name, u) in &file.upstreams {
        let key = format!("upstreams.{name}");
        if name == "embedded" {
            p.push(
                &key,
                "`embedded` is reserved for the embedded state service",
            );
        }
        let address = resolve_addr(&mut p, &format!("{key}.address"), &u.address);
        // Absent: `Client-Cert` (RFC 9440). "": the certificate is not passed on (the client's
        // own Client-Cert and Client-Cert-Chain are removed all the same).
        let given = u.client_cert_header.as_deref().unwrap_or("Client-Cert");
        let client_cert_header =
            Some(given)
                .filter(|h| !h.is_empty())
                .and_then(|h| match http::HeaderName::from_bytes(h.as_bytes()) {
                    Ok(n) if crate::headers::is_reserved(n.as_str()) => {
                        p.push(
                            format!("{key}.client_cert_header"),
                            format!(
                                "`{h}` is a header bindgate or HTTP already gives a meaning to"
                            ),
                        );
                        None
                    }
                    Ok(n) => Some(n),
                    Err(_) => {
                        p.push(
                            format!("{key}.client_cert_header"),
                            format!("`{h}` is not a valid header name"),
                        );
                        None
                    }
                });
        let ca = u.ca.as_deref().map(path_of);
        if let Some(ca) = &ca {
            check_certificates(&mut p, &format!("{key}.ca"), ca);
        }
        let tls = u.tls.unwrap_or(false);
        let sni = u.sni.clone().unwrap_or_default();
        if !tls && !sni.is_empty() {
            p.push(format!("{key}.sni"), "has no effect without tls: true");
        }
        let upstream = Upstream {
            name: name.clone(),
            address_text: u.address.clone(),
            address: address.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            tls,
            sni,
            client_cert_header,
            forwarded_headers: u.forwarded_headers.unwrap_or(true),
            ca,
            connect_timeout: p.duration(
                &format!("{key}.connect_timeout"),
                u.connect_timeout.as_ref(),
                Duration::from_secs(5),
            ),
            read_timeout: p.duration(
                &format!("{key}.read_timeout"),
                u.read_timeout.as_ref(),
                Duration::from_secs(60),
            ),
            forward_underscore_headers: u.forward_underscore_headers.unwrap_or(false),
            max_connections: match u.max_connections {
                None => 256,
                Some(n) if (1..=65_536).contains(&n) => n,
                Some(n) => {
                    p.push(
                        format!("{key}.max_connections"),
                        format!("{n}: must be between 1 and 65536"),
                    );
                    256
                }
            },
        };
        upstreams.insert(name.clone(), upstream);
    }

    let target_of =
        |p: &mut Problems, key: &str, given: Option<&String>| match given.map(String::as_str) {
            None | Some("embedded") => Target::Embedded,
            Some(name) => {
                if !file.upstreams.contains_key(name) {
                    p.push(
                        key,
                        format!("`{name}` is neither `embedded` nor the name of an upstream"),
                    );
                }
                Target::Upstream(name.to_string())
            }
        };

    // registration
    let reg = file.registration.as_ref();
    let reg_path = endpoint_path(
        &mut p,
        "registration.path",
        reg.and_then(|r| r.path.as_deref()).unwrap_or("/clients"),
    );
    let endpoint_uri = reg.and_then(|r| r.endpoint_uri.clone()).or_else(|| {
        issuer
            .as_ref()
            .map(|i| format!("{}{}", i.trim_end_matches('/'), reg_path))
    });
    if let Some(uri) = reg.and_then(|r| r.endpoint_uri.as_ref()) {
        if !is_http_uri(uri) {
            p.push(
                "registration.endpoint_uri",
                format!("`{uri}` is not an http(s) URI"),
            );
        }
    }
    let reg_target = target_of(
        &mut p,
        "registration.target",
        reg.and_then(|r| r.target.as_ref()),
    );
    let master_tokens = secrets(
        &mut p,
        "registration.master_tokens",
        reg.map(|r| &r.master_tokens[..]),
        source,
    );
    let scope = reg
        .and_then(|r| r.scope.clone())
        .unwrap_or_else(|| "client-reg".into());
    if scope.is_empty() || scope.contains(' ') || scope.contains('"') || scope.contains('\\') {
        p.push(
            "registration.scope",
            "must be one scope token (no spaces or quotes)",
        );
    }
    let registration = Registration {
        path: reg_path,
        endpoint_uri,
        target: reg_target,
        master_tokens,
        scope,
        require_initial_access_token_audience: reg
            .and_then(|r| r.require_initial_access_token_audience)
            .unwrap_or(true),
        require_certificate_binding: reg
            .and_then(|r| r.require_certificate_binding)
            .unwrap_or(false),
        require_proof_of_possession: reg
            .and_then(|r| r.require_proof_of_possession)
            .unwrap_or(false),
        single_use: reg.and_then(|r| r.single_use).unwrap_or(false),
    };

    // session_store
    let ss = file.session_store.as_ref();
    let ss_path = endpoint_path(
        &mut p,
        "session_store.path",
        ss.and_then(|s| s.path.as_deref())
            .unwrap_or("/session-store/rest/v2"),
    );
    let session_store = SessionStore {
        target: target_of(
            &mut p,
            "session_store.target",
            ss.and_then(|s| s.target.as_ref()),
        ),
        api_tokens: secrets(
            &mut p,
            "session_store.api_tokens",
            ss.map(|s| &s.api_tokens[..]),
            source,
        ),
        path: ss_path,
    };
    if overlaps(&registration.path, &session_store.path) {
        p.push(
            "session_store.path",
            format!("overlaps registration.path `{}`", registration.path),
        );
    }

    // routes
    let mut routes = Vec::new();
    for (i, r) in file.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        if !r.prefix.starts_with('/') {
            p.push(
                format!("{key}.prefix"),
                format!("`{}` must start with /", r.prefix),
            );
        }
        if !file.upstreams.contains_key(&r.upstream) {
            p.push(
                format!("{key}.upstream"),
                format!("`{}` is not the name of an upstream", r.upstream),
            );
        }
        let token = r.token.as_ref().map(|t| {
            for (j, scope) in t.scope.iter().enumerate() {
                if scope.is_empty() || scope.contains([' ', '"', '\\']) {
                    p.push(
                        format!("{key}.token.scope[{j}]"),
                        "must be one scope token (no spaces or quotes)",
                    );
                }
            }
            if jwks.is_none() {
                p.push(
                    format!("{key}.token"),
                    "needs jwks and issuer: the route's access tokens are verified with them",
                );
            }
            RouteToken {
                scope: t.scope.clone(),
                audience: t.audience.clone(),
                require_proof_of_possession: t.require_proof_of_possession.unwrap_or(false),
            }
        });
        routes.push(Route {
            prefix: r.prefix.clone(),
            upstream: r.upstream.clone(),
            token,
            upgrade: r.upgrade.unwrap_or(false),
        });
    }

    // dpop
    let dpop = file.dpop.as_ref().map(|d| {
        let mut origins = Vec::new();
        for (i, o) in d.origins.iter().enumerate() {
            match crate::target::normalise_origin(o) {
                Some(n) => origins.push(n),
                None => p.push(
                    format!("dpop.origins[{i}]"),
                    format!("`{o}` is not scheme://host[:port] (http or https, no path)"),
                ),
            }
        }
        if d.origins.is_empty() {
            p.push(
                "dpop.origins",
                "must list the origins clients address (scheme://host[:port])",
            );
        }
        let max_age = p.duration("dpop.max_age", d.max_age.as_ref(), Duration::from_secs(60));
        if max_age.is_zero() {
            p.push("dpop.max_age", "must be more than 0");
        }
        let replay_cache_entries = d.replay_cache_entries.unwrap_or(100_000);
        if replay_cache_entries == 0 {
            p.push(
                "dpop.replay_cache_entries",
                "must be more than 0: a proof must not be accepted twice",
            );
        }
        Dpop {
            origins,
            max_age,
            replay_cache_entries,
            require_nonce: d.require_nonce.unwrap_or(false),
            algorithms: algorithm_list(&mut p, "dpop.algorithms", d.algorithms.as_ref()),
        }
    });

    // state
    let st = file.state.as_ref();
    if st.is_some_and(|s| s.path.is_some() && s.redis.is_some()) {
        p.push("state", "give one of path (redb) and redis, not both");
    }
    let redis = st
        .and_then(|s| s.redis.as_ref())
        .map(|r| redis_settings(&mut p, r, source));
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
    let state = State {
        path: state_path,
        redis,
        sessions,
    };

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
    let server = Server {
        threads,
        grace_period: p.duration(
            "server.grace_period",
            sv.and_then(|s| s.grace_period.as_ref()),
            Duration::from_secs(5),
        ),
        max_body,
        pid_file: sv.and_then(|s| s.pid_file.as_deref()).map(path_of),
        upgrade_sock: path_of(
            sv.and_then(|s| s.upgrade_sock.as_deref())
                .unwrap_or("/tmp/bindgate_upgrade.sock"),
        ),
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
    };

    if !p.0.is_empty() {
        return Err(p.0);
    }
    Ok(Config {
        source: source.to_path_buf(),
        listen: Listen {
            // Both are Some: a None pushed a problem above.
            address: listen_address.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            tls: ListenTls {
                cert,
                key,
                client_auth,
                client_ca,
                watch: tls.watch.unwrap_or(false),
            },
        },
        admin,
        issuer,
        jwks,
        tokens,
        registration,
        session_store,
        upstreams,
        routes,
        state,
        server,
        dpop,
    })
}

/// A list of JWS algorithms (default RS256, PS256, ES256, EdDSA): public-key algorithms only.
fn algorithm_list(p: &mut Problems, key: &str, given: Option<&Vec<String>>) -> Vec<JwsAlgorithm> {
    let Some(names) = given else {
        return vec![
            JwsAlgorithm::RS256,
            JwsAlgorithm::PS256,
            JwsAlgorithm::ES256,
            JwsAlgorithm::EdDSA,
        ];
    };
    let mut algs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match JwsAlgorithm::from_name(name) {
            Some(a) => algs.push(a),
            None if name.eq_ignore_ascii_case("none") || name.starts_with("HS") => p.push(
                format!("{key}[{i}]"),
                format!(
                    "`{name}` is never accepted: tokens and proofs are verified with public keys"
                ),
            ),
            None => p.push(
                format!("{key}[{i}]"),
                format!(
                    "`{name}` is not supported (supported: {})",
                    JwsAlgorithm::ALL.map(|a| a.name()).join(", ")
                ),
            ),
        }
    }
    if names.is_empty() {
        p.push(key, "must list at least one algorithm");
    }
    algs
}

fn socket_addr(p: &mut Problems, key: &str, text: &str) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p.push(
                key,
                format!(
                    "`{text}` is not an IP address and port (e.g. 127.0.0.1:8443 or [::1]:8443)"
                ),
            );
            None
        }
    }
}

fn resolve_addr(p: &mut Problems, key: &str, text: &str) -> Option<SocketAddr> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Some(a);
    }
    if !text.contains(':') {
        p.push(key, format!("`{text}` has no port (write host:port)"));
        return None;
    }
    match text.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => Some(a),
        Ok(None) | Err(_) => {
            p.push(key, format!("`{text}` does not resolve to an address"));
            None
        }
    }
}

fn endpoint_path(p: &mut Problems, key: &str, given: &str) -> String {
    if !given.starts_with('/') || given.len() < 2 {
        p.push(
            key,
            format!("`{given}` must start with / and name a path other than /"),
        );
    }
    if given.contains(['?', '#', ' ']) {
        p.push(key, format!("`{given}` must be a plain path"));
    }
    given.trim_end_matches('/').to_string()
}

fn overlaps(a: &str, b: &str) -> bool {
    let inside =
        |outer: &str, inner: &str| inner == outer || inner.starts_with(&format!("{outer}/"));
    inside(a, b) || inside(b, a)
}

fn is_http_uri(s: &str) -> bool {
    (s.starts_with("https://") || s.starts_with("http://"))
        && s.parse::<http::Uri>()
            .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()))
}

fn redis_settings(p: &mut Problems, r: &RedisFile, source: &Path) -> RedisSettings {
    let cluster = r.cluster.clone().unwrap_or_default();
    let url = r.url.clone().unwrap_or_default();
    let redis_url = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
    match (r.url.is_some(), r.cluster.is_some()) {
        (true, true) => p.push("state.redis", "give one of url and cluster, not both"),
        (false, false) => p.push(
            "state.redis",
            "give url (\"redis://host:6379/0\") or cluster (a list of seed URLs)",
        ),
        _ => {}
    }
    if r.url.is_some() && !redis_url(&url) {
        p.push("state.redis.url", "must start with redis:// or rediss://");
    } else if r.url.is_some() && !usable_redis_url(&url) {
        p.push("state.redis.url", UNUSABLE_REDIS_URL);
    }
    if r.cluster.is_some() && cluster.is_empty() {
        p.push("state.redis.cluster", "lists no seed URL");
    }
    for (i, u) in cluster.iter().enumerate() {
        if !redis_url(u) {
            p.push(
                format!("state.redis.cluster[{i}]"),
                "must start with redis:// or rediss://",
            );
        } else if !usable_redis_url(u) {
            p.push(format!("state.redis.cluster[{i}]"), UNUSABLE_REDIS_URL);
        }
    }
    let key_prefix = r.key_prefix.clone().unwrap_or_else(|| "bindgate:".into());
    if key_prefix.chars().any(|c| c.is_control() || c == ' ') {
        p.push(
            "state.redis.key_prefix",
            "must not hold spaces or control characters",
        );
    }
    let base = source.parent().unwrap_or(Path::new("."));
    let password = r.password.as_ref().and_then(|entry| {
        if entry.sha256.is_some() {
            p.push(
                "state.redis.password",
                "bindgate presents this secret: give value, env or file, not sha256",
            );
            return None;
        }
        match secret::resolve_plain(entry, base) {
            Ok(s) => Some(Password::new(s)),
            Err(reason) => {
                p.push("state.redis.password", reason);
                None
            }
        }
    });
    let wait_replicas = r.wait_replicas.unwrap_or(0);
    if wait_replicas > 0 && !cluster.is_empty() {
        p.push(
            "state.redis.wait_replicas",
            "is not supported with cluster yet (WAIT needs the connection that wrote)",
        );
    }
    let ca = r.ca.as_deref().map(|c| base.join(c));
    if let Some(ca) = &ca {
        if !url.starts_with("rediss://") {
            p.push(
                "state.redis.ca",
                "is for a rediss:// url (TLS); with cluster, the system's roots are used",
            );
        } else {
            check_certificates(p, "state.redis.ca", ca);
        }
    }
    RedisSettings {
        url,
        cluster,
        key_prefix,
        password,
        wait_replicas,
        allow_eviction: r.allow_eviction.unwrap_or(false),
        ca,
    }
}

fn secrets(
    p: &mut Problems,
    key: &str,
    entries: Option<&[SecretFile]>,
    source: &Path,
) -> SecretSet {
    let base = source.parent().unwrap_or(Path::new("."));
    let mut digests = Vec::new();
    for (i, entry) in entries.unwrap_or(&[]).iter().enumerate() {
        match secret::resolve(entry, base) {
            Ok(d) => digests.push(d),
            Err(reason) => p.push(format!("{key}[{i}]"), reason),
        }
    }
    SecretSet::new(digests)
}

fn check_certificates(p: &mut Problems, key: &str, path: &PathBuf) {
    match std::fs::read(path) {
        Err(e) => p.push(key, format!("cannot read {}: {e}", path.display())),
        Ok(pem) => match openssl::x509::X509::stack_from_pem(&pem) {
            Ok(certs) if !certs.is_empty() => {}
            _ => p.push(key, format!("{} holds no PEM certificate", path.display())),
        },
    }
}

fn check_cert_and_key(p: &mut Problems, key: &str, cert: &PathBuf, private_key: &PathBuf) {
    let certs = match std::fs::read(cert) {
        Err(e) => {
            p.push(
                format!("{key}.cert"),
                format!("cannot read {}: {e}", cert.display()),
            );
            None
        }
        Ok(pem) => match openssl::x509::X509::stack_from_pem(&pem) {
            Ok(c) if !c.is_empty() => Some(c),
            _ => {
                p.push(
                    format!("{key}.cert"),
                    format!("{} holds no PEM certificate", cert.display()),
                );
                None
            }
        },
    };
    let pkey = match std::fs::read(private_key) {
        Err(e) => {
            p.push(
                format!("{key}.key"),
                format!("cannot read {}: {e}", private_key.display()),
            );
            None
        }
        Ok(pem) => match openssl::pkey::PKey::private_key_from_pem(&pem) {
            Ok(k) => Some(k),
            Err(_) => {
                p.push(
                    format!("{key}.key"),
                    format!("{} holds no PEM private key", private_key.display()),
                );
                None
            }
        },
    };
    if let (Some(certs), Some(pkey)) = (certs, pkey) {
        let matches = certs[0]
            .public_key()
            .map(|pk| pk.public_eq(&pkey))
            .unwrap_or(false);
        if !matches {
            p.push(
                format!("{key}.key"),
                format!("does not belong to the certificate in {}", cert.display()),
            );
        }
    }
}

/// The reason for a URL the Redis client cannot use (the URL itself is not repeated: it may
/// hold a password).
const UNUSABLE_REDIS_URL: &str =
    "is not a Redis URL bindgate can connect with (redis[s]://[user:password@]host[:port][/db])";

/// Whether the Redis client `run` uses parses `url` (so that `check` refuses what `run` would).
fn usable_redis_url(url: &str) -> bool {
    use redis::IntoConnectionInfo;
    url.into_connection_info().is_ok()
}
