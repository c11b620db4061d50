//! Live operations under continuous load (issue 13): a reload that changes a route and a master
//! token, a broken configuration, a certificate file replaced, a binary upgrade — each with
//! every request answered and no connection reset by the server.

use crate::harness::*;
use openssl::asn1::Asn1Time;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Registration embedded (master tokens from `{DIR}/master.token`), `/a` to the first upstream
/// and, with `second_route`, `/b` to the second; a pid file for `bindgate reload`.
fn config(a: &Upstream, b: &Upstream, second_route: bool, extra_tls: &str) -> String {
    let route_b = if second_route {
        "  - {prefix: /b, upstream: second}\n"
    } else {
        ""
    };
    format!(
        r#"
listen:
  address: "{{LISTEN}}"
  tls: {{cert: "{{DIR}}/server.crt", key: "{{DIR}}/server.key", client_auth: optional, client_ca: "{{PKI}}/ca.crt"{extra_tls}}}
admin: {{address: "{{ADMIN}}"}}
registration:
  endpoint_uri: "https://idp.example.com/clients"
  master_tokens: [{{file: "{{DIR}}/master.token"}}]
upstreams:
  first: {{address: "{a}"}}
  second: {{address: "{b}"}}
routes:
  - {{prefix: /a, upstream: first}}
{route_b}state: {{path: ":memory:"}}
server: {{threads: 2, grace_period: 3s, pid_file: "{{DIR}}/bindgate.pid", upgrade_sock: "{{DIR}}/upgrade.sock"}}
"#,
        a = a.addr,
        b = b.addr,
    )
}

/// Starts bindgate with its certificate, key and master token in its own directory, for the
/// test to replace.
fn start(pki: &Pki, yaml: &str) -> Bindgate {
    start_on(pki, yaml, Ports::Chosen)
}

fn start_on(pki: &Pki, yaml: &str, ports: Ports) -> Bindgate {
    Bindgate::start_with_files(
        pki,
        yaml,
        &[
            ("server.crt", pki.read("server.crt")),
            ("server.key", pki.read("server.key")),
            ("master.token", b"first-master-token-0123456789".to_vec()),
        ],
        ports,
    )
}

/// What the load saw.
#[derive(Default, Debug)]
struct Seen {
    ok: u64,
    failures: Vec<String>,
    /// GETs sent again once because the connection closed before any answer (see `load`).
    retried: u64,
}

/// Keep-alive clients over HTTP/1.1 and HTTP/2 (made before, so that the process may change
/// under them) sending `GET {base}/a/...` until `stop`; each request must be answered 200.
fn clients(bg: &Bindgate, pki: &Pki) -> Vec<reqwest::blocking::Client> {
    [Http::One, Http::Alpn, Http::One, Http::Alpn]
        .into_iter()
        .map(|http| bg.client(pki, Some("client1"), http))
        .collect()
}

/// With `retry_closed`, a GET whose connection closed before any byte of an answer is sent
/// again once, as RFC 9110 §9.2.2 allows for idempotent requests and browsers do: a process that
/// starts its shutdown drops connections it accepted but has not read a request from yet
/// (Pingora), which a request can race. Such retries are counted, never hidden.
fn load(
    clients: Vec<reqwest::blocking::Client>,
    base: String,
    stop: &AtomicBool,
    seen: &Mutex<Seen>,
    retry_closed: bool,
) {
    std::thread::scope(|s| {
        for client in clients {
            let base = &base;
            s.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && i < 200_000 {
                    i += 1;
                    let url = format!("{base}/a/{i}");
                    let mut r = client.get(&url).send();
                    // The connection was closed (a FIN: IncompleteMessage) or reset (the
                    // request reached a socket being closed) before any answer: a GET may be
                    // sent again (RFC 9110 §9.2.2).
                    let closed_early = |e: &reqwest::Error| {
                        let e = format!("{e:?}");
                        e.contains("IncompleteMessage") || e.contains("ConnectionReset")
                    };
                    if retry_closed && r.as_ref().is_err_and(closed_early) {
                        seen.lock().unwrap().retried += 1;
                        r = client.get(&url).send();
                    }
                    let mut seen = seen.lock().unwrap();
                    match r {
                        Ok(resp) if resp.status() == 200 => seen.ok += 1,
                        Ok(resp) => seen.failures.push(format!("status {}", resp.status())),
                        Err(e) => seen.failures.push(format!("{e:?}")),
                    }
                    drop(seen);
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
        }
    });
}

fn reloads(bg: &Bindgate, result: &str) -> u64 {
    let needle = format!("bindgate_config_reloads_total{{result=\"{result}\"}} ");
    bg.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&needle).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn bindgate_reload(bg: &Bindgate) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .args(["reload", "-c"])
        .arg(bg.config_path())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn register(bg: &Bindgate, pki: &Pki, token: &str) -> u16 {
    bg.client(pki, None, Http::One)
        .post(bg.url("/clients"))
        .bearer_auth(token)
        .json(&serde_json::json!({"redirect_uris": ["https://app.example.com/cb"]}))
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[test]
fn a_reload_changes_a_route_and_a_master_token_without_failing_a_request() {
    let pki = Pki::new();
    let (a, b) = (Upstream::start(), Upstream::start());
    let bg = start(&pki, &config(&a, &b, false, ""));
    let client = bg.client(&pki, None, Http::One);
    assert_eq!(client.get(bg.url("/b/x")).send().unwrap().status(), 404);
    assert_eq!(register(&bg, &pki, "first-master-token-0123456789"), 201);

    let (stop, seen) = (AtomicBool::new(false), Mutex::new(Seen::default()));
    std::thread::scope(|s| {
        s.spawn(|| load(clients(&bg, &pki), bg.url(""), &stop, &seen, false));
        std::thread::sleep(Duration::from_millis(500));
        // The new file: a route to the second upstream, another master token.
        std::fs::write(
            bg.dir().join("master.token"),
            "second-master-token-9876543210",
        )
        .unwrap();
        bg.rewrite_config(&pki, &config(&a, &b, true, ""));
        let (ok, out) = bindgate_reload(&bg);
        assert!(ok, "{out}");
        assert!(out.contains("reloaded by bindgate"), "{out}");
        // The verdict came from the process: the reload is done when the command returns.
        assert_eq!(reloads(&bg, "ok"), 1);
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
    });
    let seen = seen.into_inner().unwrap();
    assert!(seen.failures.is_empty(), "{:?}", seen.failures);
    assert!(seen.ok > 100, "{seen:?}");
    // New requests see the new configuration.
    assert_eq!(client.get(bg.url("/b/x")).send().unwrap().status(), 200);
    assert!(b.requests().iter().any(|r| r.target == "/b/x"));
    assert_eq!(register(&bg, &pki, "first-master-token-0123456789"), 401);
    assert_eq!(register(&bg, &pki, "second-master-token-9876543210"), 201);
    assert!(bg.logs().contains("configuration reloaded"));
}

#[test]
fn a_broken_or_unreloadable_config_keeps_the_running_one() {
    let pki = Pki::new();
    let (a, b) = (Upstream::start(), Upstream::start());
    let bg = start(&pki, &config(&a, &b, false, ""));
    let good = std::fs::read_to_string(bg.config_path()).unwrap();

    let (stop, seen) = (AtomicBool::new(false), Mutex::new(Seen::default()));
    std::thread::scope(|s| {
        s.spawn(|| load(clients(&bg, &pki), bg.url(""), &stop, &seen, false));
        std::thread::sleep(Duration::from_millis(300));
        // Broken: two problems, both named with their key; `bindgate reload` refuses to signal.
        let broken = good
            .replace("upstream: first}", "upstream: nowhere}")
            .replace("threads: 2", "threads: 0");
        std::fs::write(bg.config_path(), &broken).unwrap();
        let (ok, out) = bindgate_reload(&bg);
        assert!(!ok, "{out}");
        assert!(out.contains("routes[0].upstream"), "{out}");
        // Signalled anyway (as systemd's ExecReload would): refused and counted.
        bg.signal("HUP");
        wait_for("the failed reload", || reloads(&bg, "failed") == 1);
        let logs = bg.logs();
        assert!(logs.contains("routes[0].upstream"), "{logs}");
        assert!(logs.contains("server.threads"), "{logs}");
        // A valid file changing what cannot change live: refused, the key named.
        let moved = good.replacen(
            "address: \"127.0.0.1:0\"",
            &format!("address: \"127.0.0.1:{}\"", free_port()),
            1,
        );
        assert_ne!(moved, good);
        std::fs::write(bg.config_path(), &moved).unwrap();
        // `bindgate reload` passes its own check, then reports the running process's refusal.
        let (ok, out) = bindgate_reload(&bg);
        assert!(!ok, "{out}");
        assert!(
            out.contains("listen.address: cannot change while running"),
            "{out}"
        );
        assert!(out.contains("keeps its configuration"), "{out}");
        wait_for("the second failed reload", || reloads(&bg, "failed") == 2);
        assert!(bg
            .logs()
            .contains("listen.address: cannot change while running"));
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
    });
    let seen = seen.into_inner().unwrap();
    assert!(seen.failures.is_empty(), "{:?}", seen.failures);
    assert_eq!(reloads(&bg, "ok"), 0);
    assert!(bg.logs().contains("the running configuration is kept"));
}

/// A new server certificate for `localhost` from the test CA, with `serial`.
fn server_certificate(pki: &Pki, serial: u32) -> (Vec<u8>, Vec<u8>) {
    server_certificate_between(
        pki,
        serial,
        &Asn1Time::days_from_now(0).unwrap(),
        &Asn1Time::days_from_now(30).unwrap(),
    )
}

/// A server certificate valid from `not_before` to `not_after`, and its key.
fn server_certificate_between(
    pki: &Pki,
    serial: u32,
    not_before: &openssl::asn1::Asn1TimeRef,
    not_after: &openssl::asn1::Asn1TimeRef,
) -> (Vec<u8>, Vec<u8>) {
    use openssl::asn1::Asn1Integer;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509Builder, X509NameBuilder, X509};
    let ca = X509::from_pem(&pki.read("ca.crt")).unwrap();
    let ca_key = PKey::private_key_from_pem(&pki.read("ca.key")).unwrap();
    let key = PKey::from_ec_key(
        EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
    )
    .unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&Asn1Integer::from_bn(&BigNum::from_u32(serial).unwrap()).unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(ca.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(not_before).unwrap();
    b.set_not_after(not_after).unwrap();
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .build(&b.x509v3_context(Some(&ca), None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&ca_key, MessageDigest::sha256()).unwrap();
    (
        b.build().to_pem().unwrap(),
        key.private_key_to_pem_pkcs8().unwrap(),
    )
}

/// The serial of the certificate a new TLS handshake with the listener presents.
fn served_serial(bg: &Bindgate) -> String {
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let tcp = std::net::TcpStream::connect(bg.listen).unwrap();
    let tls = b.build().connect("localhost", tcp).unwrap();
    let cert = tls.ssl().peer_certificate().unwrap();
    cert.serial_number()
        .to_bn()
        .unwrap()
        .to_dec_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_replaced_certificate_is_served_to_new_handshakes_and_old_connections_keep_working() {
    let pki = Pki::new();
    let (a, b) = (Upstream::start(), Upstream::start());
    let yaml = config(&a, &b, false, ", watch: true");
    let bg = start(&pki, &yaml);
    let before = served_serial(&bg);
    let expiry = |bg: &Bindgate| -> i64 {
        bg.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("bindgate_server_certificate_expiry_seconds "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let first_expiry = expiry(&bg);
    assert!(first_expiry > 86_400, "{first_expiry}");

    let (stop, seen) = (AtomicBool::new(false), Mutex::new(Seen::default()));
    std::thread::scope(|s| {
        s.spawn(|| load(clients(&bg, &pki), bg.url(""), &stop, &seen, false));
        std::thread::sleep(Duration::from_millis(300));
        // As a certificate manager writes: new files beside, then renamed over (key first).
        let (cert, key) = server_certificate(&pki, 4242);
        std::fs::write(bg.dir().join("server.key.new"), key).unwrap();
        std::fs::write(bg.dir().join("server.crt.new"), cert).unwrap();
        std::fs::rename(bg.dir().join("server.key.new"), bg.dir().join("server.key")).unwrap();
        std::fs::rename(bg.dir().join("server.crt.new"), bg.dir().join("server.crt")).unwrap();
        wait_for("the new certificate", || served_serial(&bg) == "4242");
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
    });
    assert_ne!(before, "4242");
    let seen = seen.into_inner().unwrap();
    assert!(seen.failures.is_empty(), "{:?}", seen.failures);
    assert!(reloads(&bg, "certificates") >= 1);
    // 30 days now.
    let now_expiry = expiry(&bg);
    assert!(
        now_expiry <= 30 * 86_400 && now_expiry > 29 * 86_400,
        "{now_expiry}"
    );
    // A key renamed in before its certificate is a rotation under way, not a failure: the
    // old pair is served meanwhile, then the new one.
    assert_eq!(
        reloads(&bg, "failed"),
        0,
        "a rotation is not a failed reload"
    );
    let (cert, key) = server_certificate(&pki, 4343);
    let pending = reloads(&bg, "pending_pair");
    std::fs::write(bg.dir().join("server.key.new"), key).unwrap();
    std::fs::rename(bg.dir().join("server.key.new"), bg.dir().join("server.key")).unwrap();
    wait_for("the pending pair", || {
        reloads(&bg, "pending_pair") > pending
    });
    assert_eq!(served_serial(&bg), "4242");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        reloads(&bg, "pending_pair"),
        pending + 1,
        "counted once, not per look"
    );
    assert_eq!(reloads(&bg, "failed"), 0);
    std::fs::write(bg.dir().join("server.crt.new"), cert).unwrap();
    std::fs::rename(bg.dir().join("server.crt.new"), bg.dir().join("server.crt")).unwrap();
    wait_for("the rotated pair", || served_serial(&bg) == "4343");
    assert_eq!(reloads(&bg, "failed"), 0);
    // A key that does not match is not served: the old pair stays; once the certificate has
    // not followed within 5 s it is a failed reload.
    let pending = reloads(&bg, "pending_pair");
    let (other_cert, _) = server_certificate(&pki, 5151);
    std::fs::write(bg.dir().join("server.crt"), other_cert).unwrap();
    wait_for("the refused pair", || reloads(&bg, "failed") >= 1);
    assert_eq!(reloads(&bg, "pending_pair"), pending + 1);
    assert_eq!(served_serial(&bg), "4343");

    // An expired certificate is not served, and counted once, not at every retry.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let replace = |serial: u32, from: i64, to: i64| {
        let (cert, key) = server_certificate_between(
            &pki,
            serial,
            &Asn1Time::from_unix(from).unwrap(),
            &Asn1Time::from_unix(to).unwrap(),
        );
        std::fs::write(bg.dir().join("server.key.new"), key).unwrap();
        std::fs::write(bg.dir().join("server.crt.new"), cert).unwrap();
        std::fs::rename(bg.dir().join("server.key.new"), bg.dir().join("server.key")).unwrap();
        std::fs::rename(bg.dir().join("server.crt.new"), bg.dir().join("server.crt")).unwrap();
    };
    let failed = reloads(&bg, "failed");
    replace(6161, now - 7200, now - 3600);
    wait_for("the refused expired certificate", || {
        reloads(&bg, "failed") > failed
    });
    // (A rename of the key before the certificate may be refused once on its own.)
    std::thread::sleep(Duration::from_millis(300));
    let counted = reloads(&bg, "failed");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        served_serial(&bg),
        "4343",
        "an expired certificate was served"
    );
    assert_eq!(
        reloads(&bg, "failed"),
        counted,
        "counted once, not per retry"
    );
    assert!(bg.logs().contains("expired"), "the reason is logged");
    // Not valid yet: refused, then served once it is (the watcher retries).
    replace(7171, now + 5, now + 86_400);
    wait_for("the refused early certificate", || {
        reloads(&bg, "failed") > counted
    });
    assert_eq!(
        served_serial(&bg),
        "4343",
        "a not-yet-valid certificate was served"
    );
    wait_for("the certificate once valid", || {
        served_serial(&bg) == "7171"
    });
}

#[test]
fn a_binary_upgrade_hands_the_listeners_over_without_failing_a_request() {
    upgrade_with(r#"{path: ":memory:"}"#);
}

/// With a redb file the new process waits for the old one to release it (it has drained by
/// then): nothing fails meanwhile, and the state carries over.
#[test]
fn a_binary_upgrade_with_a_redb_file_keeps_the_state() {
    upgrade_with(r#"{path: "{DIR}/state.db"}"#);
}

fn upgrade_with(state: &str) {
    let pki = Pki::new();
    let (a, b) = (Upstream::start(), Upstream::start());
    let yaml = config(&a, &b, false, "")
        .replace(r#"state: {path: ":memory:"}"#, &format!("state: {state}"));
    // The new process takes the sockets over by the addresses the configuration names.
    let mut old = start_on(&pki, &yaml, Ports::Named);
    let master = "first-master-token-0123456789";
    let before = old
        .client(&pki, None, Http::One)
        .post(old.url("/clients"))
        .bearer_auth(master)
        .json(&serde_json::json!({"redirect_uris": ["https://app.example.com/cb"]}))
        .send()
        .unwrap();
    assert_eq!(before.status(), 201);
    let registered: serde_json::Value = before.json().unwrap();
    let client_id = registered["client_id"].as_str().unwrap().to_string();
    let old_pid = old.pid();

    let (stop, seen) = (AtomicBool::new(false), Mutex::new(Seen::default()));
    let mut new = None;
    let (load_clients, base) = (clients(&old, &pki), old.url(""));
    std::thread::scope(|s| {
        s.spawn(|| load(load_clients, base, &stop, &seen, true));
        std::thread::sleep(Duration::from_millis(500));
        // The documented steps: start the new binary with --upgrade, then SIGQUIT the old.
        let mut child = Reaped(old.spawn_beside(&["--upgrade"], "upgraded.log"));
        std::thread::sleep(Duration::from_millis(500));
        old.signal("QUIT");
        // The old process drains and exits; the new one serves on the same ports.
        let exited = old.wait_exit(Duration::from_secs(30));
        assert!(exited.is_some(), "the old process did not exit");
        wait_for("the pid file to name the new process", || {
            std::fs::read_to_string(old.dir().join("bindgate.pid"))
                .is_ok_and(|p| p.trim() == child.0.id().to_string())
        });
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the new process exited"
        );
        new = Some(child);
    });
    let new = new.unwrap();
    let seen = seen.into_inner().unwrap();
    assert!(seen.failures.is_empty(), "{:?}", seen.failures);
    // A rare race, not a pattern: at most one per client connection in flight at the switch.
    assert!(seen.retried <= 4, "{seen:?}");
    eprintln!(
        "upgrade under load: {} answered, {} sent again after an early close",
        seen.ok, seen.retried
    );
    assert!(seen.ok > 100, "{seen:?}");
    // New connections reach the new process.
    let client = old.client(&pki, Some("client1"), Http::One);
    assert_eq!(
        client.get(old.url("/a/after")).send().unwrap().status(),
        200
    );
    assert_ne!(old_pid, new.0.id());
    // What the old process stored, the new one serves (in memory, it starts empty).
    let read = client
        .get(old.url(&format!("/clients/{client_id}")))
        .bearer_auth(master)
        .send()
        .unwrap()
        .status();
    let expected = if state.contains("memory") { 404 } else { 200 };
    assert_eq!(read, expected, "{state}");
}

/// SIGQUIT with no new process waiting for the sockets: the old process says so and serves
/// on (it used to shut down); a later upgrade still works. `run --upgrade` with no process to
/// hand it sockets exits non-zero, saying why.
#[test]
fn sigquit_without_a_successor_keeps_serving() {
    let pki = Pki::new();
    let (a, b) = (Upstream::start(), Upstream::start());
    let mut old = start_on(&pki, &config(&a, &b, false, ""), Ports::Named);
    let client = old.client(&pki, None, Http::One);
    assert_eq!(
        client.get(old.url("/a/before")).send().unwrap().status(),
        200
    );
    old.signal("QUIT");
    let log = old.wait_log("no new process took the listening sockets");
    assert!(
        log.contains("no new process took the listening sockets"),
        "{log}"
    );
    wait_for("the process to say it serves on", || {
        old.logs().contains("the upgrade did not happen")
    });
    assert!(old.is_running(), "the old process exited");
    // A new connection and the kept one are both served; /readyz stays 200.
    let fresh = old.client(&pki, None, Http::One);
    assert_eq!(fresh.get(old.url("/a/after")).send().unwrap().status(), 200);
    assert_eq!(client.get(old.url("/a/kept")).send().unwrap().status(), 200);
    assert_eq!(
        reqwest::blocking::get(old.admin_url("/readyz"))
            .unwrap()
            .status(),
        200
    );

    // The documented upgrade still works afterwards.
    let mut new = Reaped(old.spawn_beside(&["--upgrade"], "upgraded.log"));
    std::thread::sleep(Duration::from_millis(500));
    old.signal("QUIT");
    assert!(old.wait_exit(Duration::from_secs(30)).is_some());
    let after = old.client(&pki, None, Http::One);
    assert_eq!(after.get(old.url("/a/new")).send().unwrap().status(), 200);
    assert!(new.0.try_wait().unwrap().is_none());
    let _ = new.0.kill();

    // Nobody to take sockets from: `run --upgrade` gives up, non-zero, and says why.
    let started = std::time::Instant::now();
    let mut lonely = Reaped(old.spawn_beside(&["--upgrade"], "lonely.log"));
    let status = loop {
        if let Some(status) = lonely.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "still waiting");
        std::thread::sleep(Duration::from_millis(100));
    };
    let said = std::fs::read_to_string(old.dir().join("lonely.log")).unwrap();
    assert!(!status.success(), "{status:?}: {said}");
    assert!(
        said.contains("no running process handed its listening sockets over"),
        "{said}"
    );
}

/// What systemd sees (`Type=notify`, `NotifyAccess=all`), with a datagram socket standing in
/// for its NOTIFY_SOCKET and the unit's own ExecReload helper run as systemd runs it: READY=1
/// naming the process once it serves; `systemctl reload` with the same binary a configuration
/// reload (RELOADING=1, then READY=1); with a new binary installed over the old one, an
/// upgrade after which the new process names itself MAINPID, the old one gone, nothing
/// refused.
#[test]
fn systemd_readiness_reload_and_upgrade_through_the_units_helper() {
    use std::os::unix::net::UnixDatagram;
    let pki = Pki::new();
    let (a, b) = (Upstream::start(), Upstream::start());
    let place = tempfile::tempdir().unwrap();
    let socket_path = place.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // Messages until one holds `want` (20 s at most each).
    let until = |want: &str| -> Vec<String> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = systemd.recv(&mut buf).expect("a notification in time");
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = m.contains(want);
            seen.push(m);
            if done {
                return seen;
            }
        }
    };
    // The installed binary: a copy, which the upgrade replaces.
    let bin = place.path().join("bindgate");
    std::fs::copy(env!("CARGO_BIN_EXE_bindgate"), &bin).unwrap();
    let notify = socket_path.display().to_string();
    let env = [("NOTIFY_SOCKET", notify.as_str())];
    let files = [
        ("server.crt", pki.read("server.crt")),
        ("server.key", pki.read("server.key")),
        ("master.token", b"first-master-token-0123456789".to_vec()),
    ];
    let mut old = Bindgate::start_program(&pki, &config(&a, &b, false, ""), &bin, &env, &files);
    let ready = until("READY=1");
    assert!(
        ready
            .last()
            .unwrap()
            .contains(&format!("MAINPID={}", old.pid())),
        "{ready:?}"
    );

    // The helper's output goes to a file, as systemd's to the journal: a new process it starts
    // keeps that open.
    let said_file = place.path().join("reload.log");
    let reload = || {
        let log = std::fs::File::create(&said_file).unwrap();
        let status = std::process::Command::new(repo_path("deploy/bindgate-reload"))
            .arg(
                std::fs::read_to_string(old.dir().join("bindgate.pid"))
                    .unwrap()
                    .trim(),
            )
            .env("BINDGATE_BIN", &bin)
            .env("BINDGATE_CONF", old.config_path())
            .env("NOTIFY_SOCKET", &notify)
            .env("BINDGATE_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .unwrap();
        (status, std::fs::read_to_string(&said_file).unwrap())
    };
    // Same binary: a configuration reload.
    let (status, said) = reload();
    assert!(status.success(), "{said}");
    let seen = until("READY=1");
    assert!(seen.iter().any(|m| m.contains("RELOADING=1")), "{seen:?}");
    assert!(
        seen.last().unwrap().contains("configuration reloaded"),
        "{seen:?}"
    );
    assert_eq!(reloads(&old, "ok"), 1);

    // A new binary installed over the old one (a new file renamed into place).
    let fresh = place.path().join("bindgate.new");
    std::fs::copy(env!("CARGO_BIN_EXE_bindgate"), &fresh).unwrap();
    std::fs::rename(&fresh, &bin).unwrap();
    let old_pid = old.pid();
    let (status, said) = reload();
    assert!(status.success(), "{said}");
    assert!(said.contains("is a new binary"), "{said}");
    let new_pid: u32 = std::fs::read_to_string(old.dir().join("bindgate.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new_pid, old_pid);
    let seen = until(&format!("MAINPID={new_pid}"));
    assert!(seen.last().unwrap().contains("READY=1"), "{seen:?}");
    assert!(
        !seen.iter().any(|m| m.contains("STOPPING=1")),
        "an upgrade is not a stop: {seen:?}"
    );
    assert!(old.wait_exit(Duration::from_secs(30)).is_some());
    let client = old.client(&pki, None, Http::One);
    assert_eq!(
        client.get(old.url("/a/upgraded")).send().unwrap().status(),
        200
    );

    // The new process stops as systemd stops it: STOPPING=1.
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &new_pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let seen = until("STOPPING=1");
    assert!(!seen.is_empty());
}
