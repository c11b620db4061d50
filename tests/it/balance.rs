//! Upstreams as a cluster gives them (issue 19 §4): a list of endpoints, balanced round robin
//! over the healthy ones, active health checks and passive ejection — with three upstream
//! processes, one killed mid-run and started again.

use crate::harness::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `tests/upstream/server.py`: a process answering every GET with its name.
struct Server {
    name: &'static str,
    port: u16,
    child: Child,
}

impl Server {
    fn start(name: &'static str, port: u16) -> Server {
        Self::start_as(name, port, "well")
    }

    /// `state`: `sick` answers its health check with 503.
    fn start_as(name: &'static str, port: u16, state: &str) -> Server {
        Self::launch(name, &port.to_string(), state)
    }

    /// On another loopback address than 127.0.0.1.
    fn start_at(name: &'static str, ip: &str, port: u16) -> Server {
        Self::launch(name, &format!("{ip}:{port}"), "well")
    }

    fn launch(name: &'static str, address: &str, state: &str) -> Server {
        let mut child = Command::new("python3")
            .arg(repo_path("tests/upstream/server.py"))
            .args([name, address, state])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the port line");
        let port = line.trim().parse().expect("a port");
        Server { name, port, child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `count` GETs, each on a connection of its own or kept alive; who answered each.
fn answers(bg: &Bindgate, client: &reqwest::blocking::Client, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| match client.get(bg.url(&format!("/x/{i}"))).send() {
            Ok(r) if r.status() == 200 => r.text().unwrap_or_default(),
            Ok(r) => format!("status {}", r.status()),
            Err(e) => format!("error {e}"),
        })
        .collect()
}

fn healthy(bg: &Bindgate) -> Vec<(String, bool)> {
    let v: serde_json::Value = reqwest::blocking::get(bg.admin_url("/config"))
        .and_then(|r| r.json())
        .expect("/config");
    v["upstream_endpoints"]["pool"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["address"].as_str().unwrap_or_default().to_string(),
                        e["healthy"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn three_endpoints_one_killed_and_back() {
    let pki = Pki::new();
    let mut servers = [
        Server::start("one", 0),
        Server::start("two", 0),
        Server::start("three", 0),
    ];
    let list = servers
        .iter()
        .map(|s| format!("\"127.0.0.1:{}\"", s.port))
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = format!(
        r#"{LISTENERS}upstreams:
  pool:
    address: [{list}]
    health_check: {{path: /healthz, interval: 1s, timeout: 500ms}}
    ejection_time: 0s                # what is noticed here, the health check noticed
    connect_timeout: 1s
routes:
  - {{prefix: /, upstream: pool}}
"#
    );
    let bg = Bindgate::start(&pki, &yaml);
    let client = bg.client(&pki, None, Http::One);
    let count = |seen: &[String], name: &str| seen.iter().filter(|s| *s == name).count();

    // Round robin over all three.
    let seen = answers(&bg, &client, 60);
    for s in &servers {
        assert!(
            count(&seen, s.name) >= 15,
            "{} got {}: {seen:?}",
            s.name,
            count(&seen, s.name)
        );
    }
    assert_eq!(
        seen.len(),
        count(&seen, "one") + count(&seen, "two") + count(&seen, "three")
    );

    // Two is killed under load: a request that meets it is sent to another endpoint (nothing
    // was sent yet), so none fails; the health check notices within its interval.
    let killed_port = servers[1].port;
    servers[1].kill();
    let killed_at = Instant::now();
    let mut during = Vec::new();
    let noticed = loop {
        during.extend(answers(&bg, &client, 5));
        let h = healthy(&bg);
        if h.iter()
            .any(|(a, up)| a.ends_with(&format!(":{killed_port}")) && !up)
        {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "not noticed: {h:?}"
        );
    };
    let failed: Vec<&String> = during
        .iter()
        .filter(|s| *s != "one" && *s != "three")
        .collect();
    assert!(
        failed.is_empty(),
        "failed before the check noticed: {failed:?}"
    );
    assert!(
        noticed < Duration::from_secs(5),
        "noticed after {noticed:?}"
    );
    let seen = answers(&bg, &client, 60);
    assert_eq!(count(&seen, "two"), 0);
    assert_eq!(
        count(&seen, "one") + count(&seen, "three"),
        60,
        "every request answered after the check noticed: {seen:?}"
    );
    assert!(
        count(&seen, "one") >= 20 && count(&seen, "three") >= 20,
        "{seen:?}"
    );

    // Back on its port: healthy again at the next check, and served again.
    servers[1] = Server::start("two", killed_port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = answers(&bg, &client, 30);
        assert!(
            seen.iter()
                .all(|s| ["one", "two", "three"].contains(&s.as_str())),
            "{seen:?}"
        );
        if count(&seen, "two") >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "two was not taken back: {:?}",
            healthy(&bg)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An endpoint that answers its health check with 503 gets no request, though it accepts
/// connections.
#[test]
fn an_endpoint_failing_its_health_check_gets_nothing() {
    let pki = Pki::new();
    let well = Server::start("well", 0);
    let sick = Server::start_as("sick", 0, "sick");
    let yaml = format!(
        r#"{LISTENERS}upstreams:
  pool:
    address: ["127.0.0.1:{}", "127.0.0.1:{}"]
    health_check: {{path: /healthz, interval: 500ms, timeout: 500ms}}
routes:
  - {{prefix: /, upstream: pool}}
"#,
        well.port, sick.port
    );
    let bg = Bindgate::start(&pki, &yaml);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthy(&bg).contains(&(format!("127.0.0.1:{}", sick.port), false)) {
        assert!(Instant::now() < deadline, "{:?}", healthy(&bg));
        std::thread::sleep(Duration::from_millis(100));
    }
    let client = bg.client(&pki, None, Http::One);
    let seen = answers(&bg, &client, 30);
    assert!(seen.iter().all(|s| s == "well"), "{seen:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while bg.metric("bindgate_upstream_endpoints{state=\"out\",upstream=\"pool\"}") != 1 {
        assert!(Instant::now() < deadline, "{}", bg.metrics());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        bg.metric("bindgate_upstream_endpoints{state=\"healthy\",upstream=\"pool\"}"),
        1
    );
    assert_eq!(
        bg.metric("bindgate_upstream_connect_failures_total{upstream=\"pool\"}"),
        0
    );
}

/// Without health checks, a connection refused leaves the endpoint out for `ejection_time`:
/// the requests after it go to the other one at once, and none fails.
#[test]
fn a_refused_endpoint_is_left_out_without_health_checks() {
    let pki = Pki::new();
    let alive = Server::start("alive", 0);
    let dead = free_port();
    let yaml = format!(
        r#"{LISTENERS}upstreams:
  pool:
    address: ["127.0.0.1:{dead}", "127.0.0.1:{}"]
    ejection_time: 30s
routes:
  - {{prefix: /, upstream: pool}}
"#,
        alive.port
    );
    let bg = Bindgate::start(&pki, &yaml);
    let client = bg.client(&pki, None, Http::Alpn);
    let seen = answers(&bg, &client, 40);
    assert!(seen.iter().all(|s| s == "alive"), "{seen:?}");
    // Tried once, then left out: one failure, not one per round.
    assert_eq!(
        bg.metric("bindgate_upstream_connect_failures_total{upstream=\"pool\"}"),
        1
    );
    let h = healthy(&bg);
    assert!(h.contains(&(format!("127.0.0.1:{dead}"), false)), "{h:?}");
}

/// A DNS name is an endpoint list of its own: `localhost` resolved at start (and again every
/// `resolve_interval`), each address it gives balanced.
#[test]
fn a_name_is_resolved_to_its_addresses() {
    let pki = Pki::new();
    let server = Server::start("named", 0);
    let yaml = format!(
        r#"{LISTENERS}upstreams:
  pool: {{address: "localhost:{}", resolve_interval: 1s}}
routes:
  - {{prefix: /, upstream: pool}}
"#,
        server.port
    );
    let bg = Bindgate::start(&pki, &yaml);
    let client = bg.client(&pki, None, Http::One);
    let seen = answers(&bg, &client, 20);
    assert!(seen.iter().all(|s| s == "named"), "{seen:?}");
    std::thread::sleep(Duration::from_millis(2500));
    let seen = answers(&bg, &client, 20);
    assert!(
        seen.iter().all(|s| s == "named"),
        "after resolving again: {seen:?}"
    );
    let h = healthy(&bg);
    assert!(
        h.iter()
            .any(|(a, _)| a == &format!("127.0.0.1:{}", server.port)),
        "{h:?}"
    );
}

/// A name follows its records: bindgate runs in a mount namespace of its own whose
/// `/etc/hosts` is the test's file (the system resolver reads it at every lookup), so the
/// test can change what the name resolves to. Needs root for the namespace, as CI runs.
#[test]
fn a_name_follows_its_records() {
    let pki = Pki::new();
    let port = free_port();
    let first = Server::start_at("first", "127.0.0.2", port);
    let second = Server::start_at("second", "127.0.0.3", port);
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    let name = "upstream.bindgate.test";
    std::fs::write(&hosts, format!("127.0.0.2 {name}\n")).unwrap();
    let wrapper = dir.path().join("bindgate-in-namespace");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec unshare -m sh -c 'mount --bind \"$0\" /etc/hosts && exec \"$@\"' {} {} \"$@\"\n",
            hosts.display(),
            env!("CARGO_BIN_EXE_bindgate")
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let yaml = format!(
        r#"{LISTENERS}upstreams:
  pool: {{address: "{name}:{port}", resolve_interval: 1s}}
routes:
  - {{prefix: /, upstream: pool}}
"#
    );
    let bg = Bindgate::start_program(&pki, &yaml, &wrapper, &[], &[]);
    let client = bg.client(&pki, None, Http::One);
    let seen = answers(&bg, &client, 10);
    assert!(seen.iter().all(|s| s == first.name), "{seen:?}");
    // The record moves (written in place, as the bind mount needs).
    std::fs::write(&hosts, format!("127.0.0.3 {name}\n")).unwrap();
    let moved = Instant::now();
    loop {
        let seen = answers(&bg, &client, 5);
        assert!(
            seen.iter().all(|s| s == first.name || s == second.name),
            "a request failed while the record moved: {seen:?}"
        );
        if seen.iter().all(|s| s == second.name) {
            break;
        }
        assert!(
            moved.elapsed() < Duration::from_secs(10),
            "the new record was not followed: {:?}",
            healthy(&bg)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Within about one resolve_interval (1 s) and the tender's round.
    assert!(
        moved.elapsed() < Duration::from_secs(4),
        "{:?}",
        moved.elapsed()
    );
    assert_eq!(healthy(&bg), vec![(format!("127.0.0.3:{port}"), true)]);
}

#[test]
fn endpoint_settings_are_checked() {
    let pki = Pki::new();
    let with = |upstream: &str| {
        format!(
            "{LISTENERS}upstreams:\n  pool: {upstream}\nroutes:\n  - {{prefix: /, upstream: pool}}\n"
        )
        .replace("{LISTEN}", "127.0.0.1:0")
        .replace("{ADMIN}", "127.0.0.1:0")
    };
    for (upstream, expected) in [
        (
            "{address: []}",
            "upstreams.pool.address: give one host:port, or a list of 1 to 64",
        ),
        (
            "{address: [\"127.0.0.1:1\", \"nowhere\"]}",
            "upstreams.pool.address[1]: `nowhere` has no port",
        ),
        ("{address: {host: x}}", "upstreams.pool.address"),
        (
            "{address: \"127.0.0.1:1\", health_check: {path: \"healthz\"}}",
            "upstreams.pool.health_check.path: `healthz` must be a plain path starting with /",
        ),
        (
            "{address: \"127.0.0.1:1\", health_check: {path: \"/h\", interval: 0s}}",
            "upstreams.pool.health_check.interval",
        ),
        (
            "{address: \"127.0.0.1:1\", health_check: {path: \"/h\", mode: tcp}}",
            "upstreams.pool.health_check.mode",
        ),
        (
            "{address: \"127.0.0.1:1\", resolve_interval: never}",
            "upstreams.pool.resolve_interval",
        ),
    ] {
        let (ok, text) = check(&pki, &with(upstream));
        assert!(!ok, "{upstream} accepted");
        assert!(text.contains(expected), "{upstream}: {text}");
    }
}
