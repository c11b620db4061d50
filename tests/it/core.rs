//! The sidecar core through the real binary: TLS and mTLS, routing, forwarding, the RFC 9440
//! client-certificate header, admin endpoints, bad input, lifecycle.

use crate::harness::*;
use base64::Engine;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn rfc9440(der: &[u8]) -> String {
    format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

#[test]
fn forwards_method_path_query_body_and_headers() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    let client = bg.client(&pki, None, Http::One);
    let resp = client
        .post(bg.url("/api/things?x=1&y=two"))
        .header("x-custom", "kept")
        .header("content-type", "application/json")
        .body(r#"{"hello":"world"}"#)
        .send()
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "recorder");
    let got = upstream.wait_for(1);
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.target, "/api/things?x=1&y=two");
    assert_eq!(r.body, br#"{"hello":"world"}"#);
    assert_eq!(r.header("x-custom"), Some("kept"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("client-cert"), None, "no certificate, no header");
}

#[test]
fn spoofed_client_cert_header_never_arrives_and_the_real_one_does() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    let spoof = rfc9440(&pki.der("client2"));

    // Without a certificate: the spoofed header is removed.
    let anonymous = bg.client(&pki, None, Http::One);
    let resp = anonymous
        .get(bg.url("/a"))
        .header("Client-Cert", &spoof)
        .send()
        .expect("request");
    assert_eq!(resp.status(), 200);

    // With client1's certificate: the spoofed client2 header is replaced by client1's.
    let with_cert = bg.client(&pki, Some("client1"), Http::One);
    let resp = with_cert
        .get(bg.url("/b"))
        .header("client-cert", &spoof)
        .send()
        .expect("request");
    assert_eq!(resp.status(), 200);

    let got = upstream.wait_for(2);
    assert_eq!(got.len(), 2);
    assert!(got[0].all("client-cert").is_empty(), "{:?}", got[0].headers);
    assert_eq!(
        got[1].all("client-cert"),
        vec![rfc9440(&pki.der("client1")).as_str()]
    );
    let log = bg.wait_log(&pki.thumbprint("client1"));
    assert!(
        log.contains(&pki.thumbprint("client1")),
        "access log names the thumbprint:\n{log}"
    );
}

#[test]
fn http2_request_carries_the_client_certificate_upstream() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    let client = bg.client(&pki, Some("client2"), Http::Alpn);
    let spoof = rfc9440(&pki.der("client1"));
    for i in 0..3 {
        // Spoofed headers, some twice, over HTTP/2 too; a POST with a body (one write to the
        // HTTP/1.1 upstream) on the last one.
        let request = if i == 2 {
            client.post(bg.url("/h2/2")).body(r#"{"h2":"body"}"#)
        } else {
            client.get(bg.url(&format!("/h2/{i}")))
        };
        let resp = request
            .header("client-cert", &spoof)
            .header("client-cert", &spoof)
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-original-url", "/clients")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .send()
            .expect("request");
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
    }
    let got = upstream.wait_for(3);
    assert_eq!(got.len(), 3);
    for r in &got {
        assert_eq!(
            r.all("client-cert"),
            vec![rfc9440(&pki.der("client2")).as_str()]
        );
        assert_eq!(r.all("x-forwarded-for"), vec!["127.0.0.1"]);
        assert!(r.all("x-original-url").is_empty());
        assert!(r.all("proxy-authorization").is_empty());
    }
    let post = got.iter().find(|r| r.method == "POST").expect("the POST");
    assert_eq!(post.body, br#"{"h2":"body"}"#);
}

/// Keep-alive requests over both protocols arrive whole, one after another, bodies that span
/// several TLS records included.
#[test]
fn keep_alive_requests_with_multi_record_bodies_arrive_whole() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let config = passthrough_config(upstream.addr).replace("max_body: 1KiB", "max_body: 256KiB");
    let bg = Bindgate::start(&pki, &config);
    let mut sent = Vec::new();
    for http in [Http::One, Http::Alpn] {
        let client = bg.client(&pki, Some("client1"), http);
        for i in 0..4u8 {
            // 0, 40 000 and 80 000 bytes: one record, three, five.
            let body = vec![b'a' + i; (i as usize % 3) * 40_000];
            let resp = client
                .post(bg.url(&format!("/records/{i}")))
                .body(body.clone())
                .send()
                .expect("request");
            assert_eq!(resp.status(), 200);
            sent.push(body);
        }
    }
    let got = upstream.wait_for(sent.len());
    assert_eq!(got.len(), sent.len());
    for (r, body) in got.iter().zip(&sent) {
        assert_eq!(r.body.len(), body.len(), "{}", r.target);
        assert!(r.body == *body, "{}: the body arrived altered", r.target);
        assert_eq!(
            r.all("client-cert"),
            vec![rfc9440(&pki.der("client1")).as_str()]
        );
    }
}

#[test]
fn self_signed_client_certificate_is_accepted_without_client_ca() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    let client = bg.client(&pki, Some("selfsigned"), Http::One);
    assert_eq!(
        client.get(bg.url("/s")).send().expect("request").status(),
        200
    );
    let got = upstream.wait_for(1);
    assert_eq!(
        got[0].header("client-cert"),
        Some(rfc9440(&pki.der("selfsigned")).as_str())
    );
}

fn mtls_connector(pki: &Pki) -> openssl::ssl::SslConnector {
    use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslSessionCacheMode, SslVersion};
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(pki.path("ca.crt")).unwrap();
    b.set_certificate_file(pki.path("client1.crt"), SslFiletype::PEM)
        .unwrap();
    b.set_private_key_file(pki.path("client1.key"), SslFiletype::PEM)
        .unwrap();
    // TLS 1.2 hands the session out in the handshake itself, so resumption is deterministic.
    b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
    b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
    b.build()
}

/// A TLS connection with client1's certificate, resuming `session` when given.
fn mtls_request(
    connector: &openssl::ssl::SslConnector,
    port: u16,
    session: Option<&openssl::ssl::SslSessionRef>,
) -> (bool, openssl::ssl::SslSession, String) {
    let mut ssl = connector
        .configure()
        .unwrap()
        .into_ssl("localhost")
        .unwrap();
    if let Some(s) = session {
        // Safety: the session comes from a connection made with this same connector's context.
        unsafe { ssl.set_session(s).unwrap() };
    }
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = ssl.connect(tcp).expect("TLS handshake");
    stream
        .write_all(b"GET /resume HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    // Read exactly one response and close cleanly: an unclean close (EOF without close_notify)
    // makes OpenSSL mark the session non-resumable.
    let response = read_one_response(&mut stream);
    let _ = stream.shutdown();
    let reused = stream.ssl().session_reused();
    let session = stream.ssl().session().expect("session").to_owned();
    (reused, session, response)
}

/// Whether `buf` holds a whole HTTP/1.1 message: its header and its `Content-Length` body.
fn whole_message(buf: &[u8]) -> bool {
    crate::harness::http1::message_len(buf).is_some_and(|len| buf.len() >= len)
}

fn read_one_response(stream: &mut impl Read) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if whole_message(&buf) {
            return String::from_utf8_lossy(&buf).to_string();
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&buf).to_string(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn a_second_resumed_connection_with_a_client_certificate_still_works() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    let connector = mtls_connector(&pki);
    let (reused, session, first) = mtls_request(&connector, bg.port, None);
    assert!(!reused);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let (reused, _, second) = mtls_request(&connector, bg.port, Some(&session));
    assert!(reused, "the second connection resumes the TLS session");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    let got = upstream.wait_for(2);
    let expected = rfc9440(&pki.der("client1"));
    assert_eq!(got[0].header("client-cert"), Some(expected.as_str()));
    assert_eq!(
        got[1].header("client-cert"),
        Some(expected.as_str()),
        "certificate kept across resumption"
    );
}

#[test]
fn upstream_down_is_502_json() {
    let pki = Pki::new();
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let bg = Bindgate::start(&pki, &passthrough_config(dead));
    let client = bg.client(&pki, None, Http::One);
    let resp = client
        .get(bg.url("/x"))
        .send()
        .expect("an answer, not a hang");
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["error"], "bad_gateway");
    // And it keeps serving.
    let resp = client.get(bg.url("/y")).send().expect("second answer");
    assert_eq!(resp.status(), 502);
}

#[test]
fn tls_upstream_with_sni_and_ca() {
    let pki = Pki::new();
    let upstream = Upstream::start_tls(&pki.path("server.crt"), &pki.path("server.key"));
    let yaml = format!(
        r#"
listen:
  address: "{{LISTEN}}"
  tls: {{cert: "{{PKI}}/server.crt", key: "{{PKI}}/server.key"}}
admin: {{address: "{{ADMIN}}"}}
upstreams:
  secure:
    address: "{}"
    tls: true
    sni: localhost
    ca: "{{PKI}}/ca.crt"
    client_cert_header: X-Client-Cert
routes:
  - {{prefix: /, upstream: secure}}
server: {{threads: 1}}
"#,
        upstream.addr
    );
    let bg = Bindgate::start(&pki, &yaml);
    let client = bg.client(&pki, Some("client1"), Http::One);
    for _ in 0..3 {
        assert_eq!(client.get(bg.url("/tls")).send().unwrap().status(), 200);
    }
    let got = upstream.wait_for(3);
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[0].header("x-client-cert"),
        Some(rfc9440(&pki.der("client1")).as_str())
    );
}

#[test]
fn unmatched_path_is_404_and_embedded_target_is_not_forwarded() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let yaml = format!(
        r#"
listen:
  address: "{{LISTEN}}"
  tls: {{cert: "{{PKI}}/server.crt", key: "{{PKI}}/server.key"}}
admin: {{address: "{{ADMIN}}"}}
registration: {{target: embedded}}
upstreams:
  idp: {{address: "{}"}}
routes:
  - {{prefix: /api/, upstream: idp}}
server: {{threads: 1}}
"#,
        upstream.addr
    );
    let bg = Bindgate::start(&pki, &yaml);
    let client = bg.client(&pki, None, Http::One);
    let resp = client.get(bg.url("/elsewhere")).send().unwrap();
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["error"], "not_found");
    // Dot segments and encoded letters cannot route a registration request to the upstream.
    for sneaky in [
        "/api/../clients",
        "/api/%2e%2e/clients",
        "//clients",
        "/%63lients",
    ] {
        let resp = client.post(bg.url(sneaky)).body("{}").send().unwrap();
        assert_ne!(resp.status(), 200, "{sneaky}");
        assert!(
            resp.status().is_client_error() || resp.status() == 401 || resp.status() == 501,
            "{sneaky}: {}",
            resp.status()
        );
    }
    assert_eq!(client.get(bg.url("/api/ok")).send().unwrap().status(), 200);
    let got = upstream.wait_for(1);
    assert_eq!(got.len(), 1, "only /api/ok reached the upstream: {got:?}");
    assert_eq!(got[0].target, "/api/ok");
}

#[test]
fn body_over_max_body_is_413_and_never_forwarded() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    let client = bg.client(&pki, None, Http::One);
    // Content-Length over the 1 KiB limit.
    let resp = client
        .post(bg.url("/big"))
        .body(vec![b'a'; 4096])
        .send()
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["error"], "request_too_large");
    // A chunked body growing over the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b'b'; 512])).collect();
    let stream = reqwest::blocking::Body::new(std::io::Cursor::new(
        chunks
            .into_iter()
            .flat_map(|c| c.unwrap())
            .collect::<Vec<u8>>(),
    ));
    let resp = client.post(bg.url("/big-chunked")).body(stream).send();
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 413);
    }
    // A body at the limit passes.
    let resp = client
        .post(bg.url("/fits"))
        .body(vec![b'c'; 1024])
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = upstream.wait_for(1);
    assert!(
        got.iter()
            .all(|r| r.target == "/fits" || r.body.len() <= 1024),
        "{got:?}"
    );
    assert!(got.iter().all(|r| r.target != "/big"));
}

#[test]
fn client_auth_required_with_client_ca() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let yaml = format!(
        r#"
listen:
  address: "{{LISTEN}}"
  tls:
    cert: "{{PKI}}/server.crt"
    key: "{{PKI}}/server.key"
    client_auth: required
    client_ca: "{{PKI}}/ca.crt"
admin: {{address: "{{ADMIN}}"}}
upstreams:
  idp: {{address: "{}"}}
routes:
  - {{prefix: /, upstream: idp}}
server: {{threads: 1}}
"#,
        upstream.addr
    );
    let bg = Bindgate::start(&pki, &yaml);
    assert_eq!(
        bg.client(&pki, Some("client1"), Http::One)
            .get(bg.url("/ok"))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert!(bg
        .client(&pki, None, Http::One)
        .get(bg.url("/no-cert"))
        .send()
        .is_err());
    assert!(bg
        .client(&pki, Some("selfsigned"), Http::One)
        .get(bg.url("/not-from-ca"))
        .send()
        .map(|r| r.status() != 200)
        .unwrap_or(true));
    let got = upstream.wait_for(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].target, "/ok");
}

#[test]
fn admin_endpoints() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    let health = reqwest::blocking::get(bg.admin_url("/healthz")).unwrap();
    assert_eq!(health.status(), 200);
    let client = bg.client(&pki, None, Http::One);
    client.get(bg.url("/counted")).send().unwrap();
    // The request is counted once its answer is out: wait for it (bounded).
    let wanted = r#"bindgate_requests_total{route="route:/",status="200",target="idp"} 1"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut metrics = bg.metrics();
    while !metrics.contains(wanted) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        metrics = bg.metrics();
    }
    assert!(metrics.contains(wanted), "{metrics}");
    assert!(
        metrics.contains("bindgate_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert_eq!(
        reqwest::blocking::get(bg.admin_url("/nope"))
            .unwrap()
            .status(),
        404
    );
}

#[test]
fn garbage_malformed_http_and_huge_headers_do_not_stop_the_server() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let mut bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));

    // Garbage instead of a TLS handshake.
    let mut tcp = std::net::TcpStream::connect(bg.listen).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = tcp.write_all(b"\x16\x03\x01\x00\x05hello garbage that is not TLS\r\n\r\n");
    let mut sink = Vec::new();
    let _ = tcp.read_to_end(&mut sink);

    // Malformed HTTP inside TLS.
    let raw = |request: &[u8]| -> String {
        use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_verify(SslVerifyMode::NONE);
        let tcp = std::net::TcpStream::connect(bg.listen).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut s = b
            .build()
            .configure()
            .unwrap()
            .verify_hostname(false)
            .connect("localhost", tcp)
            .unwrap();
        let _ = s.write_all(request);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).to_string()
    };
    let answer = raw(b"NOT HTTP AT ALL\r\n\r\n");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    let answer = raw(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    let mut huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 2 * 1024 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    let answer = raw(&huge);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{}",
        &answer[..answer.len().min(200)]
    );

    assert!(bg.is_running());
    let client = bg.client(&pki, None, Http::One);
    assert_eq!(
        client.get(bg.url("/still-alive")).send().unwrap().status(),
        200
    );
    let got = upstream.requests();
    assert!(
        got.iter().all(|r| r.target == "/still-alive"),
        "nothing malformed was forwarded: {got:?}"
    );
}

#[test]
fn access_log_never_holds_credentials() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    let client = bg.client(&pki, None, Http::One);
    client
        .get(bg.url("/logged?access_token=query-secret-123"))
        .header("authorization", "Bearer header-secret-456")
        .send()
        .unwrap();
    upstream.wait_for(1);
    let log = bg.wait_log("path=/logged");
    assert!(log.contains("status=200"), "{log}");
    assert!(!log.contains("query-secret-123"), "{log}");
    assert!(!log.contains("header-secret-456"), "{log}");
}

/// As the README says: SIGTERM ends within `grace_period` + 1 s (the listeners closed at
/// once, requests in flight given the grace period), SIGINT at once.
#[test]
fn sigterm_exits_within_the_grace_period_and_sigint_at_once() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let mut bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    let sent = Instant::now();
    bg.signal("TERM");
    // grace_period is 1s; 0.5 s more for process teardown on a loaded machine.
    let status = bg.wait_exit(Duration::from_secs(15));
    let took = sent.elapsed();
    assert!(status.is_some(), "still running after SIGTERM");
    assert!(
        took < Duration::from_millis(2500),
        "SIGTERM took {took:?}, more than grace_period + 1 s"
    );
    let mut bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    let sent = Instant::now();
    bg.signal("INT");
    let status = bg.wait_exit(Duration::from_secs(15));
    let took = sent.elapsed();
    assert!(status.is_some(), "still running after SIGINT");
    assert!(took < Duration::from_millis(800), "SIGINT took {took:?}");
}

#[test]
fn curl_with_and_without_client_certificate() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    let curl = |extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(pki.path("ca.crt"))
            .args(["--resolve", &format!("localhost:{}:127.0.0.1", bg.port)])
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .args(extra)
            .arg(bg.url("/curl"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(curl(&[]), "200");
    let cert = pki.path("client1.crt").display().to_string();
    let key = pki.path("client1.key").display().to_string();
    assert_eq!(curl(&["--cert", &cert, "--key", &key]), "200");
    let got = upstream.wait_for(2);
    assert_eq!(got[0].header("client-cert"), None);
    assert_eq!(
        got[1].header("client-cert"),
        Some(rfc9440(&pki.der("client1")).as_str())
    );
}

#[test]
fn sigterm_lets_a_request_in_flight_finish() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    upstream.set_delay(Duration::from_millis(700));
    let mut bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    let client = bg.client(&pki, None, Http::One);
    let url = bg.url("/slow");
    let in_flight = std::thread::spawn(move || client.get(url).send().map(|r| r.status().as_u16()));
    // The request has reached the upstream (which holds it 700 ms) before the signal.
    assert_eq!(upstream.wait_for(1).len(), 1);
    bg.signal("TERM");
    assert_eq!(
        in_flight.join().unwrap().expect("an answer"),
        200,
        "drained, not cut"
    );
    assert!(
        bg.wait_exit(Duration::from_secs(15)).is_some(),
        "exits after the grace period"
    );
}

#[test]
fn an_upstream_that_never_answers_is_a_502_after_read_timeout() {
    let pki = Pki::new();
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let _holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().take(4).flatten() {
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let yaml = passthrough_config(addr).replace(
        "client_cert_header: Client-Cert",
        "client_cert_header: Client-Cert\n    read_timeout: 1s",
    );
    let bg = Bindgate::start(&pki, &yaml);
    let resp = bg
        .client(&pki, None, Http::One)
        .get(bg.url("/hang"))
        .send()
        .expect("an answer, not a hang");
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["error"], "bad_gateway");
}

#[test]
fn error_logs_never_hold_a_query_token() {
    let pki = Pki::new();
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let bg = Bindgate::start(&pki, &passthrough_config(dead));
    let resp = bg
        .client(&pki, None, Http::One)
        .get(bg.url("/upstream-down?access_token=query-secret-789"))
        .header("authorization", "Bearer header-secret-012")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 502);
    let log = bg.wait_log("path=/upstream-down");
    // Pingora's own error line names the request, without its query.
    assert!(log.contains("Fail to proxy"), "{log}");
    assert!(log.contains("GET /upstream-down, Host:"), "{log}");
    assert!(!log.contains("query-secret-789"), "{log}");
    assert!(!log.contains("header-secret-012"), "{log}");
}

/// A raw HTTP/1.1 upstream for one request: reports what it has received each time more
/// arrives, and answers 200 once the whole `Content-Length` body is in.
fn raw_upstream() -> (
    std::net::SocketAddr,
    std::sync::mpsc::Receiver<Vec<u8>>,
    std::thread::JoinHandle<()>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).unwrap_or(0);
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
            let _ = tx.send(got.clone());
            if whole_message(&got) {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                return;
            }
        }
    });
    (addr, rx, worker)
}

/// Waits (at most 10 s) until the upstream has received something `ready` accepts.
fn upstream_sees(rx: &std::sync::mpsc::Receiver<Vec<u8>>, ready: impl Fn(&str) -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(got) if ready(&String::from_utf8_lossy(&got)) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// A request body is read whole before an upstream connection is taken (issue 14): a body that
/// comes in parts reaches the upstream only once complete, with the header, and a client's
/// `Expect: 100-continue` is answered by bindgate (the upstream never sees it). Nothing waits
/// in the upstream write buffer (vendor/pingora-core) once the body is complete.
#[test]
fn a_request_body_reaches_the_upstream_whole_once_complete() {
    let pki = Pki::new();
    for expect in [false, true] {
        let (addr, rx, worker) = raw_upstream();
        let bg = Bindgate::start(&pki, &passthrough_config(addr));
        let mut s = tls_to(&bg);
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 10\r\n{}\r\n",
            if expect { "Expect: 100-continue\r\n" } else { "" }
        );
        if expect {
            s.write_all(head.as_bytes()).unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap();
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 100"),
                "no 100 Continue from bindgate: {}",
                String::from_utf8_lossy(&buf[..n])
            );
            s.write_all(b"part1").unwrap();
        } else {
            s.write_all(format!("{head}part1").as_bytes()).unwrap();
        }
        assert!(
            rx.recv_timeout(Duration::from_millis(500)).is_err(),
            "the upstream saw a request whose body was not complete (expect: {expect})"
        );
        s.write_all(b"part2").unwrap();
        assert!(
            upstream_sees(&rx, |got| got.ends_with("\r\n\r\npart1part2")
                && !got.to_ascii_lowercase().contains("expect:")),
            "the whole request did not reach the upstream (expect: {expect})"
        );
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.contains("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        worker.join().unwrap();
    }
}

/// HTTP/1 header names are not kept in the client's case (`vendor/pingora-core`, change 5):
/// they reach the upstream titled when standard and lowercase otherwise, as HAProxy sends
/// them, each once and with its value untouched.
#[test]
fn header_names_reach_the_upstream_titled_or_lowercase() {
    let pki = Pki::new();
    let (addr, rx, worker) = raw_upstream();
    let bg = Bindgate::start(&pki, &passthrough_config(addr));
    let mut s = tls_to(&bg);
    s.write_all(
        b"POST /api/case HTTP/1.1\r\nHost: localhost\r\nX-Correlation-ID: Abc-1\r\n\
          CONTENT-TYPE: text/plain\r\nX-Dup: a\r\nx-DUP: b\r\n\
          X-FORWARDED-FOR: 203.0.113.9\r\nCLIENT-CERT: :c3Bvb2Y=:\r\n\
          connection: close\r\ncontent-length: 2\r\n\r\nhi",
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    worker.join().unwrap();
    let mut got = String::new();
    while let Ok(part) = rx.try_recv() {
        got = String::from_utf8_lossy(&part).into_owned();
    }
    assert!(got.ends_with("\r\n\r\nhi"), "{got}");
    let lines: Vec<&str> = got.split("\r\n").collect();
    assert!(lines.contains(&"x-correlation-id: Abc-1"), "{got}");
    assert!(lines.contains(&"Content-Type: text/plain"), "{got}");
    assert!(lines.contains(&"Content-Length: 2"), "{got}");
    // The same name twice, in two cases: both values, in order, under one spelling.
    let dup: Vec<&&str> = lines
        .iter()
        .filter(|l| l.to_ascii_lowercase().starts_with("x-dup:"))
        .collect();
    assert_eq!(dup, [&"x-dup: a", &"x-dup: b"], "{got}");
    // Spoofed in capitals, still stripped: bindgate's own X-Forwarded-For, no Client-Cert
    // (this connection presented no certificate).
    assert!(lines.contains(&"x-forwarded-for: 127.0.0.1"), "{got}");
    assert!(!got.to_ascii_lowercase().contains("client-cert"), "{got}");
    assert!(!got.contains("203.0.113.9"), "{got}");
    for name in [
        "x-correlation-id:",
        "content-type:",
        "content-length:",
        "x-forwarded-for:",
    ] {
        let n = lines
            .iter()
            .filter(|l| l.to_ascii_lowercase().starts_with(name))
            .count();
        assert_eq!(n, 1, "{name} {got}");
    }
}

/// A TLS connection to bindgate without a client certificate, for raw HTTP/1.1.
fn tls_to(bg: &Bindgate) -> openssl::ssl::SslStream<std::net::TcpStream> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_alpn_protos(b"\x08http/1.1").unwrap();
    let tcp = std::net::TcpStream::connect(bg.listen).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    b.build()
        .configure()
        .unwrap()
        .verify_hostname(false)
        .connect("localhost", tcp)
        .unwrap()
}

fn groups_config(upstream: std::net::SocketAddr, groups: &str) -> String {
    passthrough_config(upstream).replace(
        "    client_auth: optional\n",
        &format!("    client_auth: optional\n    groups: {groups}\n"),
    )
}

/// Whether a TLS 1.3 handshake offering only the key exchange `group` succeeds.
fn handshake_with_group(port: u16, pki: &Pki, group: &str) -> bool {
    use openssl::ssl::{SslConnector, SslMethod, SslVersion};
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(pki.path("ca.crt")).unwrap();
    b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    b.set_groups_list(group).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    b.build().connect("localhost", tcp).is_ok()
}

/// `listen.tls.groups` chooses the key exchanges offered, and a reload changes them for the
/// next handshake; by default OpenSSL's own list (the hybrid post-quantum group first).
#[test]
fn listen_tls_groups_choose_the_key_exchange_and_reload() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let default = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    for group in ["X25519MLKEM768", "X25519", "P-256"] {
        assert!(handshake_with_group(default.port, &pki, group), "{group}");
    }
    drop(default);

    let bg = Bindgate::start(&pki, &groups_config(upstream.addr, "[P-256]"));
    assert!(handshake_with_group(bg.port, &pki, "P-256"));
    assert!(!handshake_with_group(bg.port, &pki, "X25519"));
    assert!(!handshake_with_group(bg.port, &pki, "X25519MLKEM768"));

    bg.reload_with(
        &pki,
        &groups_config(upstream.addr, "[X25519, X25519MLKEM768]"),
    );
    assert!(handshake_with_group(bg.port, &pki, "X25519"));
    assert!(handshake_with_group(bg.port, &pki, "X25519MLKEM768"));
    assert!(!handshake_with_group(bg.port, &pki, "P-256"));
    // Served after all that.
    let client = bg.client(&pki, None, Http::One);
    assert_eq!(client.get(bg.url("/g")).send().unwrap().status(), 200);
}

#[test]
fn check_names_unknown_empty_and_repeated_groups() {
    let pki = Pki::new();
    let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (groups, said) in [
        (
            "[X25519, nosuchgroup]",
            "`nosuchgroup` is not a group this OpenSSL offers",
        ),
        ("[]", "is empty"),
        ("[X25519, x25519]", "`x25519` is named twice"),
        ("[\"X25519:P-256\"]", "`X25519:P-256` is not a group name"),
    ] {
        let out = refused_with(
            &pki,
            &groups_config(upstream, groups),
            &["listen.tls.groups"],
        );
        assert!(out.contains(said), "{groups}: {out}");
    }
}

/// Port 0 in `listen.address` and `admin.address`: bindgate binds, names the ports it got in
/// its startup line and serves there; a reload of the same file keeps them; `run --upgrade`
/// cannot take over a port it cannot name.
#[test]
fn port_zero_is_bound_and_named_in_the_startup_line() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let yaml = passthrough_config(upstream.addr);
    let bg = Bindgate::start(&pki, &yaml);
    let written = std::fs::read_to_string(bg.config_path()).unwrap();
    assert!(written.contains("address: \"127.0.0.1:0\""), "{written}");
    assert_ne!(bg.port, 0);
    assert_ne!(bg.admin_port, 0);
    assert_ne!(bg.port, bg.admin_port);
    let log = bg.logs();
    assert!(
        log.contains(&format!("listening on https://127.0.0.1:{}", bg.port)),
        "{log}"
    );
    let client = bg.client(&pki, None, Http::One);
    assert_eq!(client.get(bg.url("/p0")).send().unwrap().status(), 200);
    // The same file again: nothing that needs a restart changed.
    bg.reload_with(&pki, &yaml);
    assert_eq!(client.get(bg.url("/p0")).send().unwrap().status(), 200);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .args(["run", "--upgrade", "-c"])
        .arg(bg.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("listen.address: port 0 cannot be taken over by `run --upgrade`"),
        "{said}"
    );
    // The running process was not touched.
    assert_eq!(client.get(bg.url("/p0")).send().unwrap().status(), 200);
}

/// Failed client handshakes are counted by kind (`bindgate_tls_handshake_failures_total`), not
/// logged as an ERROR per attempt: plain HTTP on the TLS port, a client offering only TLS 1.1,
/// a client gone after half a ClientHello.
#[test]
fn failed_handshakes_are_counted_not_logged_as_errors() {
    use openssl::ssl::{SslConnector, SslMethod, SslVersion};
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    let metric = |r: &str| {
        bg.metric(&format!(
            "bindgate_tls_handshake_failures_total{{reason=\"{r}\"}}"
        ))
    };
    assert_eq!(metric("tls"), 0);
    for _ in 0..3 {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", bg.port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let _ = tcp.read(&mut [0u8; 512]);
    }
    let mut old = SslConnector::builder(SslMethod::tls_client()).unwrap();
    old.set_max_proto_version(Some(SslVersion::TLS1_1)).unwrap();
    old.set_security_level(0);
    let tcp = std::net::TcpStream::connect(("127.0.0.1", bg.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(old.build().connect("localhost", tcp).is_err());
    // Half a ClientHello (a record header promising 512 bytes, 5 of them), then gone.
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", bg.port)).unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(tcp);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while (metric("tls") < 4 || metric("closed") + metric("other") < 1)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric("tls"), 4, "{}", bg.metrics());
    assert!(metric("closed") + metric("other") >= 1, "{}", bg.metrics());
    // Served as ever, and not one ERROR line for any of it.
    let client = bg.client(&pki, None, Http::One);
    assert_eq!(client.get(bg.url("/ok")).send().unwrap().status(), 200);
    let log = bg.logs();
    assert!(
        !log.lines()
            .any(|l| l.contains("ERROR") && l.contains("andshake")),
        "{log}"
    );
}

fn request_id_config(upstream: std::net::SocketAddr, trust: bool) -> String {
    passthrough_config(upstream).replace(
        "  max_body: 1KiB\n",
        &format!("  max_body: 1KiB\n  trust_request_id: {trust}\n"),
    ) + "registration: {endpoint_uri: \"https://idp.example.com/clients\", master_tokens: [{file: \"{PKI}/master.token\"}]}\n"
}

fn request_ids(http: Http) {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let generated = |id: &str| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());

    // Not trusted (the default): the client's id is replaced by bindgate's own, the same one
    // upstream, in the answer and in the access line.
    let bg = Bindgate::start(&pki, &request_id_config(upstream.addr, false));
    let client = bg.client(&pki, None, http);
    let answer = client
        .get(bg.url("/r1"))
        .header("x-request-id", "client-chosen")
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    let id = answer.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(generated(&id), "{id}");
    let seen = upstream.wait_for(1);
    assert_eq!(seen[0].header("x-request-id"), Some(id.as_str()));
    assert!(bg
        .wait_log(&format!("request_id={id}"))
        .contains(&format!("request_id={id}")));
    // A refusal names it in its header and its body.
    let refused = client.post(bg.url("/clients")).body("{}").send().unwrap();
    assert_eq!(refused.status(), 401);
    let id = refused.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(generated(&id));
    let body: serde_json::Value = refused.json().unwrap();
    assert_eq!(body["request_id"], id.as_str());
    assert_eq!(body["error"], "unauthorized");
    drop(bg);

    // Trusted: a plain, single id is kept; a doubled or hostile one is replaced.
    let bg = Bindgate::start(&pki, &request_id_config(upstream.addr, true));
    let client = bg.client(&pki, None, http);
    let answer = client
        .get(bg.url("/r2"))
        .header("x-request-id", "3f9a-client:7")
        .send()
        .unwrap();
    assert_eq!(answer.headers()["x-request-id"], "3f9a-client:7");
    assert_eq!(
        upstream.wait_for(2)[1].header("x-request-id"),
        Some("3f9a-client:7")
    );
    let doubled = client
        .get(bg.url("/r3"))
        .header("x-request-id", "one")
        .header("x-request-id", "two")
        .send()
        .unwrap();
    let id = doubled.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(generated(&id), "{id}");
    let hostile = client
        .get(bg.url("/r4"))
        .header("x-request-id", "a\"b<script>")
        .send()
        .unwrap();
    let id = hostile.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(generated(&id), "{id}");
    let seen = upstream.wait_for(4);
    assert_eq!(seen[3].header("x-request-id"), Some(id.as_str()));
    let named = seen[3]
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))
        .count();
    assert_eq!(named, 1);
}

#[test]
fn every_request_has_an_id_http1() {
    request_ids(Http::One);
}

#[test]
fn every_request_has_an_id_http2() {
    request_ids(Http::Alpn);
}
