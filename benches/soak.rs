//! Soak: mixed traffic at a fixed rate against one bindgate for a long time, counting every
//! answer by kind and status, every answer lost (a client-side error: reset, protocol error,
//! timeout), every 5xx, and bindgate's resident memory at the start and the end.
//!
//! ```sh
//! cargo bench --bench soak                              # 10 minutes at 200 requests/s
//! cargo bench --bench soak -- --duration 60 --rate 400 --json soak.json
//! ```
//!
//! The mix, each over HTTP/1.1 or HTTP/2 at random: a registration with a certificate-bound
//! token and its certificate, then the client's deletion with its registration access token
//! (201, 204); the bound token without the certificate (401); a token with a bad signature
//! (401); a token without the scope (403); no credentials (401); a body several times the limit
//! (413); a session created, read and deleted (201, 200, 204); a passthrough route to a static
//! upstream (200); a trailing-slash spelling of the registration path (404) and a `;` parameter
//! (400). Targets: 0 answers lost, 0 5xx, memory drift under 10 % (measured from the end of a
//! warm-up, a tenth of the run). Under `cargo test` a 3-second smoke runs and asserts the
//! first two.

mod common;
use common::{free_ports, rss_kib, static_upstream};

use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ISSUER: &str = "https://idp.example.com";
const ENDPOINT: &str = "https://idp.example.com/clients";

struct Options {
    duration: Duration,
    rate: u64,
    json: Option<std::path::PathBuf>,
    smoke: bool,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let smoke = !args.iter().any(|a| a == "--bench");
    Options {
        duration: Duration::from_secs_f64(
            get("--duration")
                .and_then(|d| d.parse().ok())
                .unwrap_or(if smoke { 3.0 } else { 600.0 }),
        ),
        rate: get("--rate")
            .and_then(|r| r.parse().ok())
            .unwrap_or(if smoke { 100 } else { 200 }),
        json: get("--json").map(Into::into),
        smoke,
    }
}

type Bindgate = common::Running;

fn start(dir: &Path, upstream: u16) -> Bindgate {
    let [port, admin] = free_ports();
    let d = dir.display();
    let config = dir.join("soak.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
listen:
  address: "127.0.0.1:{port}"
  tls: {{cert: "{d}/server.crt", key: "{d}/server.key", client_auth: optional}}
admin: {{address: "127.0.0.1:{admin}"}}
issuer: "{ISSUER}"
jwks: {{file: "{d}/jwks.json"}}
registration:
  endpoint_uri: "{ENDPOINT}"
  master_tokens: [{{file: "{d}/master.token"}}]
session_store:
  api_tokens: [{{file: "{d}/session-store.token"}}]
upstreams:
  static: {{address: "127.0.0.1:{upstream}"}}
routes:
  - {{prefix: /passthrough, upstream: static}}
state: {{path: "{d}/soak.db"}}
server: {{threads: 2, grace_period: 1s, max_body: 64KiB}}
"#
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("soak.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .args(["run", "-c", config.to_str().unwrap()])
        .env("BINDGATE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    common::wait_ready(admin, &dir.join("soak.log"));
    Bindgate { child, port }
}

/// Keys, tokens and clients, made before the run.
struct Kit {
    base: String,
    bound: Vec<String>,
    unscoped: String,
    forged: String,
    session_token: String,
    big: Vec<u8>,
    /// [HTTP/1.1, HTTP/2] × [without, with client1's certificate].
    clients: [[reqwest::Client; 2]; 2],
}

fn kit(dir: &Path, port: u16) -> Kit {
    let key =
        bindgate::devtoken::load_key(&std::fs::read(dir.join("signing.key")).unwrap()).unwrap();
    let kid = bindgate::devtoken::public_jwk(&key).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let x5t =
        bindgate::certificate::thumbprint_of_pem(&std::fs::read(dir.join("client1.crt")).unwrap())
            .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |jti: usize, scope: &str, bound: bool| {
        let mut c = json!({"iss": ISSUER, "aud": ENDPOINT, "scp": [scope], "iat": now,
            "exp": now + 7200, "jti": jti.to_string()});
        if bound {
            c["cnf"] = json!({"x5t#S256": x5t});
        }
        c
    };
    let sign = |c: &serde_json::Value| bindgate::devtoken::sign_es256(&key, &kid, c).unwrap();
    // 200 bound tokens: cache hits and misses both.
    let bound: Vec<String> = (0..200)
        .map(|i| sign(&claims(i, "client-reg", true)))
        .collect();
    let unscoped = sign(&claims(0, "openid", false));
    let mut forged = bound[0].clone();
    forged.pop();
    forged.push(if bound[0].ends_with('A') { 'B' } else { 'A' });
    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.join("ca.crt")).unwrap()).unwrap();
    let identity = reqwest::Identity::from_pkcs8_pem(
        &std::fs::read(dir.join("client1.crt")).unwrap(),
        &std::fs::read(dir.join("client1.key")).unwrap(),
    )
    .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let client = |h1: bool, cert: bool| {
        let mut b = reqwest::Client::builder()
            .use_native_tls()
            .add_root_certificate(ca.clone())
            .tls_built_in_root_certs(false)
            .resolve("localhost", addr)
            .timeout(Duration::from_secs(30));
        if cert {
            b = b.identity(identity.clone());
        }
        if h1 {
            b = b.http1_only();
        }
        b.build().unwrap()
    };
    Kit {
        base: format!("https://localhost:{port}"),
        bound,
        unscoped,
        forged,
        session_token: std::fs::read_to_string(dir.join("session-store.token"))
            .unwrap()
            .trim()
            .to_string(),
        big: vec![b'a'; 300_000],
        clients: [
            [client(true, false), client(true, true)],
            [client(false, false), client(false, true)],
        ],
    }
}

/// What was counted: (kind, status) → answers; kind → answers lost.
#[derive(Default)]
struct Tally {
    answers: BTreeMap<(String, u16), u64>,
    lost: BTreeMap<String, u64>,
    unexpected: BTreeMap<(String, u16), u64>,
}

impl Tally {
    fn record(&mut self, kind: &str, expected: &[u16], outcome: Result<u16, String>) {
        match outcome {
            Ok(status) => {
                *self.answers.entry((kind.to_string(), status)).or_default() += 1;
                if !expected.contains(&status) {
                    *self
                        .unexpected
                        .entry((kind.to_string(), status))
                        .or_default() += 1;
                }
            }
            Err(e) => {
                eprintln!("{kind}: lost: {e}");
                *self.lost.entry(kind.to_string()).or_default() += 1;
            }
        }
    }
}

async fn status(req: reqwest::RequestBuilder) -> Result<(u16, serde_json::Value), String> {
    let resp = req.send().await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| format!("{e:?}"))?;
    Ok((status, serde_json::from_slice(&body).unwrap_or_default()))
}

/// One unit of the mix; `n` picks the kind and the protocol.
async fn one(kit: &Kit, n: u64, tally: &Mutex<Tally>) {
    let h = ((n / 11) % 2) as usize;
    let plain = &kit.clients[h][0];
    let with_cert = &kit.clients[h][1];
    let proto = if h == 0 { "h1" } else { "h2" };
    let url = |p: &str| format!("{}{p}", kit.base);
    let bound = &kit.bound[(n as usize / 11) % kit.bound.len()];
    let json_body = r#"{"redirect_uris":["https://app.example.com/cb"]}"#;
    let record = |kind: &str, expected: &[u16], outcome: Result<u16, String>| {
        tally
            .lock()
            .unwrap()
            .record(&format!("{kind} {proto}"), expected, outcome)
    };
    match n % 11 {
        0 => {
            let r = status(
                with_cert
                    .post(url("/clients"))
                    .bearer_auth(bound)
                    .header("content-type", "application/json")
                    .body(json_body),
            )
            .await;
            let client = r.as_ref().ok().map(|(_, b)| b.clone());
            record("register bound", &[201], r.map(|(s, _)| s));
            if let Some(c) = client {
                if let (Some(id), Some(rat)) = (
                    c["client_id"].as_str(),
                    c["registration_access_token"].as_str(),
                ) {
                    let r = status(
                        plain
                            .delete(url(&format!("/clients/{id}")))
                            .bearer_auth(rat),
                    )
                    .await;
                    record("delete client", &[204], r.map(|(s, _)| s));
                }
            }
        }
        1 => {
            let r = status(
                plain
                    .post(url("/clients"))
                    .bearer_auth(bound)
                    .body(json_body),
            )
            .await;
            record("bound, no certificate", &[401], r.map(|(s, _)| s));
        }
        2 => {
            let r = status(
                plain
                    .post(url("/clients"))
                    .bearer_auth(&kit.forged)
                    .body(json_body),
            )
            .await;
            record("bad signature", &[401], r.map(|(s, _)| s));
        }
        3 => {
            let r = status(
                plain
                    .post(url("/clients"))
                    .bearer_auth(&kit.unscoped)
                    .body(json_body),
            )
            .await;
            record("no scope", &[403], r.map(|(s, _)| s));
        }
        4 => {
            let r = status(plain.post(url("/clients")).body("{}")).await;
            record("no credentials", &[401], r.map(|(s, _)| s));
        }
        5 => {
            let r = status(plain.post(url("/clients")).body(kit.big.clone())).await;
            record("body over limit", &[413], r.map(|(s, _)| s));
        }
        6..=7 => {
            let sessions = url("/session-store/rest/v2/sessions");
            let r = status(
                plain
                    .post(&sessions)
                    .bearer_auth(&kit.session_token)
                    .body(r#"{"sub":"soak"}"#),
            )
            .await;
            let sid = r
                .as_ref()
                .ok()
                .and_then(|(_, b)| b["sid"].as_str().map(String::from));
            record("session create", &[201], r.map(|(s, _)| s));
            if let Some(sid) = sid {
                let r = status(
                    plain
                        .get(&sessions)
                        .bearer_auth(&kit.session_token)
                        .header("SID", &sid),
                )
                .await;
                record("session read", &[200], r.map(|(s, _)| s));
                let r = status(
                    plain
                        .delete(format!("{sessions}?quiet=true"))
                        .bearer_auth(&kit.session_token)
                        .header("SID", &sid),
                )
                .await;
                record("session delete", &[204], r.map(|(s, _)| s));
            }
        }
        8 | 9 => {
            let r = status(plain.post(url("/passthrough/x")).body(r#"{"a":1}"#)).await;
            record("passthrough", &[200], r.map(|(s, _)| s));
        }
        _ => {
            let r = status(plain.post(url("/clients/")).bearer_auth("x")).await;
            record("trailing slash", &[404], r.map(|(s, _)| s));
            let r = status(plain.post(url("/clients;x")).bearer_auth("x")).await;
            record("path parameter", &[400], r.map(|(s, _)| s));
        }
    }
}

fn main() {
    let o = options();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let ok = Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .arg("dev-certs")
        .arg(&pki)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "dev-certs");
    let upstream = static_upstream();
    let bg = start(&pki, upstream);
    let pid = bg.child.id();
    let kit = Arc::new(kit(&pki, bg.port));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let warmup = o.duration / 10;
    let started = Instant::now();
    let mut rss_start = 0;
    let mut rss_peak = 0;
    let mut sent = 0u64;
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Bounded: at most this many units in flight, and the run ends at the deadline.
        let in_flight = Arc::new(tokio::sync::Semaphore::new(512));
        let mut tasks = tokio::task::JoinSet::new();
        while started.elapsed() < o.duration {
            tick.tick().await;
            if rss_start == 0 && started.elapsed() >= warmup {
                rss_start = rss_kib(pid);
            }
            if sent.is_multiple_of(1000) {
                rss_peak = rss_peak.max(rss_kib(pid));
            }
            let permit = in_flight.clone().acquire_owned().await.unwrap();
            let (kit, tally) = (kit.clone(), tally.clone());
            let n = sent;
            tasks.spawn(async move {
                one(&kit, n, &tally).await;
                drop(permit);
            });
            sent += 1;
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    });
    let elapsed = started.elapsed();
    let rss_end = rss_kib(pid);
    let t = tally.lock().unwrap();
    let answers: u64 = t.answers.values().sum();
    let lost: u64 = t.lost.values().sum();
    let fivexx: u64 = t
        .answers
        .iter()
        .filter(|((_, s), _)| *s >= 500)
        .map(|(_, n)| n)
        .sum();
    let unexpected: u64 = t.unexpected.values().sum();
    let drift = if rss_start > 0 {
        (rss_end as f64 - rss_start as f64) / rss_start as f64 * 100.0
    } else {
        0.0
    };
    println!(
        "soak: {:.0} s, {} units at {} units/s, {} answers",
        elapsed.as_secs_f64(),
        sent,
        o.rate,
        answers
    );
    println!("| kind | status | answers |");
    println!("|---|---|---|");
    for ((kind, status), n) in &t.answers {
        println!("| {kind} | {status} | {n} |");
    }
    println!(
        "answers lost: {lost}; 5xx: {fivexx}; unexpected statuses: {unexpected}; RSS after warm-up {rss_start} KiB, peak {rss_peak} KiB, end {rss_end} KiB, drift {drift:+.1} %"
    );
    if let Some(path) = &o.json {
        let rows: Vec<_> = t
            .answers
            .iter()
            .map(|((k, s), n)| json!({"kind": k, "status": s, "answers": n}))
            .collect();
        let doc = json!({"seconds": elapsed.as_secs_f64(), "rate": o.rate, "units": sent,
            "answers": rows, "lost": lost, "5xx": fivexx, "unexpected": unexpected,
            "rss_kib": {"start": rss_start, "peak": rss_peak, "end": rss_end}, "drift_percent": drift});
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    }
    if o.smoke {
        assert_eq!(lost, 0, "answers lost");
        assert_eq!(unexpected, 0, "unexpected statuses: {:?}", t.unexpected);
    }
}
