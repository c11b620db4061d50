//! The session store at scale, through the real server over TLS:
//!
//! - with N sessions stored (default 1 000 000): `DELETE ?all=true&quiet=true` time;
//!   `DELETE ?all=true` time to first byte, total time, and the server's RSS growth while the
//!   map streams (sampled from /proc every 5 ms);
//! - session create and read throughput (POST, then GET by SID, over TLS, keep-alive) with
//!   `:memory:`, a durable file and Redis;
//! - all of it on redb and on Redis (a `redis-server` the bench starts, `appendfsync always`).
//!
//! ```sh
//! cargo bench --bench sessions                       # N = 1 000 000, 5 s of creates
//! cargo bench --bench sessions -- --sessions 100000 --seconds 2 --engine redis
//! ```
//!
//! Under `cargo test` (no `--bench` argument) it runs a small smoke version. Results:
//! BENCHMARKS.md.

mod common;
use common::{free_ports, rss_kib};

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bindgate::config::{RedisSettings, SessionLimits, State, StatePath};
use bindgate::state::{sessions, Store};

/// Where the sessions live.
#[derive(Clone)]
enum Engine {
    Redb(PathBuf),
    Memory,
    /// A redis-server's port; each run takes a key prefix of its own.
    Redis(u16, String),
}

impl Engine {
    /// The `state:` value of proxy.yaml.
    fn yaml(&self) -> String {
        match self {
            Engine::Redb(p) => format!(r#"{{path: "{}"}}"#, p.display()),
            Engine::Memory => r#"{path: ":memory:"}"#.to_string(),
            Engine::Redis(port, prefix) => format!(
                r#"{{redis: {{url: "redis://127.0.0.1:{port}/0", key_prefix: "{prefix}"}}}}"#
            ),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Engine::Redb(_) => "redb file",
            Engine::Memory => "redb :memory:",
            Engine::Redis(..) => "Redis (appendfsync always)",
        }
    }

    fn open(&self, limits: SessionLimits) -> Store {
        let (path, redis) = match self {
            Engine::Redb(p) => (StatePath::File(p.clone()), None),
            Engine::Memory => (StatePath::Memory, None),
            Engine::Redis(port, prefix) => (
                StatePath::Memory,
                Some(RedisSettings {
                    url: format!("redis://127.0.0.1:{port}/0"),
                    cluster: vec![],
                    key_prefix: prefix.clone(),
                    password: None,
                    wait_replicas: 0,
                    allow_eviction: false,
                    ca: None,
                }),
            ),
        };
        Store::open_state(&State {
            path,
            redis,
            sessions: limits,
        })
        .unwrap()
    }
}

type Server = common::Running;

fn start(pki: &Path, state: &Engine, threads: usize) -> Server {
    let [port, admin] = free_ports();
    let dir = pki.join(format!("run-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
listen:
  address: "127.0.0.1:{port}"
  tls: {{cert: "{pki}/server.crt", key: "{pki}/server.key"}}
admin: {{address: "127.0.0.1:{admin}"}}
session_store:
  api_tokens:
    - file: "{pki}/session-store.token"
state: {state}
server: {{threads: {threads}, max_body: 64KiB}}
"#,
            pki = pki.display(),
            state = state.yaml(),
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .args(["run", "-c"])
        .arg(&config)
        .env("BINDGATE_LOG", "warn")
        .stdout(std::fs::File::create(dir.join("bindgate.log")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    crate::common::wait_ready(admin, &dir.join("bindgate.log"));
    Server { child, port }
}

fn client(pki: &Path, port: u16) -> reqwest::blocking::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.join("ca.crt")).unwrap()).unwrap();
    reqwest::blocking::Client::builder()
        .use_native_tls()
        .add_root_certificate(ca)
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .http1_only()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap()
}

fn populate(engine: &Engine, n: usize) -> Duration {
    if let Engine::Redb(db) = engine {
        let _ = std::fs::remove_file(db);
    }
    let started = Instant::now();
    let limits = SessionLimits {
        max_life: 20160,
        auth_life: 10080,
        max_idle: 15,
    };
    let store = engine.open(limits);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // In batches, so the importing process's memory stays bounded too.
    for start in (0..n).step_by(100_000) {
        let end = (start + 100_000).min(n);
        store
            .insert_sessions((start..end).map(|i| {
                let body = format!(
                    r#"{{"sub":"user-{}","acr":"urn:acr:1","amr":["pwd"],"claims":{{"email":"user{}@example.com"}}}}"#,
                    i % 100_000,
                    i
                );
                let r = sessions::record_from_body(body.as_bytes(), &limits, now, now).unwrap();
                (format!("{:043}", i), r.subject.clone(), r.encode())
            }))
            .unwrap();
    }
    started.elapsed()
}

fn delete_all(pki: &Path, engine: &Engine, n: usize) {
    let token = std::fs::read_to_string(pki.join("session-store.token"))
        .unwrap()
        .trim()
        .to_string();

    let fill = populate(engine, n);
    println!(
        "{}: populated {n} sessions in {:.1} s",
        engine.label(),
        fill.as_secs_f64(),
    );
    let server = start(pki, engine, 1);
    let c = client(pki, server.port);
    let url = format!(
        "https://localhost:{}/session-store/rest/v2/sessions",
        server.port
    );
    let t = Instant::now();
    let r = c
        .delete(format!("{url}?all=true&quiet=true"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    let quiet = t.elapsed();
    assert_eq!(r.status(), 204);
    println!(
        "{}: DELETE ?all=true&quiet=true with {n} sessions: {:.1} ms (status 204)",
        engine.label(),
        quiet.as_secs_f64() * 1e3
    );
    drop(server);

    // On Redis, the streamed run takes keys of its own (the sweep of the quiet run's old
    // generation must not run under it).
    let engine = &match engine {
        Engine::Redis(port, prefix) => Engine::Redis(*port, format!("{prefix}stream:")),
        other => other.clone(),
    };
    populate(engine, n);
    let server = start(pki, engine, 1);
    let pid = server.child.id();
    let c = client(pki, server.port);
    let url = format!(
        "https://localhost:{}/session-store/rest/v2/sessions",
        server.port
    );
    // Warm the connection so that the first byte measures the delete, not the handshake.
    let _ = c
        .get(format!("{url}?subject=nobody"))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .bytes();
    let before = rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let t = Instant::now();
    let mut r = c
        .delete(format!("{url}?all=true"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let first = r.read(&mut buf).unwrap();
    let first_byte = t.elapsed();
    assert!(first > 0 && buf[0] == b'{');
    let mut total = first as u64;
    let mut entries = buf[..first].iter().filter(|b| **b == b'{').count() as u64;
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        // Each session object holds two objects ({session}, {claims}); the map adds one.
        entries += buf[..n].iter().filter(|b| **b == b'{').count() as u64;
    }
    let all = t.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let growth = peak.load(Ordering::Relaxed).saturating_sub(before);
    println!(
        "{}: DELETE ?all=true with {n} sessions: first byte {:.1} ms, whole map {:.2} s ({:.0} MiB, {} sessions), RSS before {:.1} MiB, peak growth while streaming {:.1} MiB",
        engine.label(),
        first_byte.as_secs_f64() * 1e3,
        all.as_secs_f64(),
        total as f64 / 1048576.0,
        entries.saturating_sub(1) / 2,
        before as f64 / 1024.0,
        growth as f64 / 1024.0
    );
}

fn creates_and_reads(pki: &Path, engine: &Engine, seconds: u64, clients: usize) {
    let token = std::fs::read_to_string(pki.join("session-store.token"))
        .unwrap()
        .trim()
        .to_string();
    let server = start(pki, engine, 1);
    let url = format!(
        "https://localhost:{}/session-store/rest/v2/sessions",
        server.port
    );
    let count = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let (c, url, token, count, reads) = (
                client(pki, server.port),
                url.clone(),
                token.clone(),
                count.clone(),
                reads.clone(),
            );
            std::thread::spawn(move || {
                let mut sids = Vec::new();
                while Instant::now() < deadline {
                    let r = c
                        .post(&url)
                        .bearer_auth(&token)
                        .body(format!(r#"{{"sub":"load-{i}-{}","acr":"1"}}"#, sids.len()))
                        .send()
                        .unwrap();
                    assert_eq!(r.status(), 201);
                    let v: serde_json::Value = r.json().unwrap();
                    sids.push(v["sid"].as_str().unwrap().to_string());
                }
                count.fetch_add(sids.len() as u64, Ordering::Relaxed);
                // Then the same time of reads by SID (each a last-access update too).
                let deadline = Instant::now() + Duration::from_secs(seconds);
                let mut n = 0u64;
                while Instant::now() < deadline && !sids.is_empty() {
                    let sid = &sids[n as usize % sids.len()];
                    let r = c
                        .get(&url)
                        .bearer_auth(&token)
                        .header("SID", sid)
                        .send()
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    let _ = r.bytes();
                    n += 1;
                }
                reads.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let (n, r) = (count.load(Ordering::Relaxed), reads.load(Ordering::Relaxed));
    println!(
        "{}: over TLS, {clients} keep-alive clients, 1 server thread: create {:.0}/s, read by SID {:.0}/s",
        engine.label(),
        n as f64 / seconds as f64,
        r as f64 / seconds as f64
    );
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let n: usize = arg("--sessions")
        .and_then(|s| s.parse().ok())
        .unwrap_or(if benching { 1_000_000 } else { 2_000 });
    let seconds: u64 = arg("--seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(if benching { 5 } else { 1 });
    let dir = tempfile::tempdir().unwrap();
    let pki: PathBuf = dir.path().join("pki");
    let ok = Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .arg("dev-certs")
        .arg(&pki)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok);
    let engine = arg("--engine").unwrap_or_else(|| "both".into());
    let redis = (engine != "redb").then(|| common::redis_server(&dir.path().join("redis"), false));
    if engine != "redis" {
        delete_all(&pki, &Engine::Redb(dir.path().join("sessions.db")), n);
        creates_and_reads(&pki, &Engine::Memory, seconds, 8);
        creates_and_reads(
            &pki,
            &Engine::Redb(dir.path().join("create.db")),
            seconds,
            8,
        );
    }
    if let Some(r) = &redis {
        delete_all(&pki, &Engine::Redis(r.port, "delete-all:".into()), n);
        creates_and_reads(&pki, &Engine::Redis(r.port, "creates:".into()), seconds, 8);
    }
}
