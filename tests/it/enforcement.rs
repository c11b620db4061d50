//! Enforcement that cannot be dodged, tried from outside as an attacker would: other spellings
//! of the protected paths, non-origin-form targets, `;` parameters, HEAD, spoofed forwarding
//! headers, malformed bindings. Each case runs against the real server over HTTP/1.1 (a raw
//! TLS socket, so the target is sent byte for byte) and HTTP/2 (`curl --path-as-is`), once with
//! the embedded targets and once with an upstream target behind a catch-all route, asserting
//! the answer and that the recording upstream received nothing it should not.

use crate::harness::tokens::*;
use crate::harness::*;
use jsonwebtoken::Algorithm;
use std::io::{Read, Write};
use std::time::Duration;

const MISMATCH: &str = "Bearer error=\"invalid_token\", error_description=\"Missing / invalid client X.509 certificate for x5t#S256 bound access token\"";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Registration and session store served by the embedded state service.
    Embedded,
    /// Both forwarded to the upstream `idp`, which a catch-all route also reaches.
    Upstream,
}

struct Setup {
    pki: Pki,
    signer: Signer,
    _jwks: Upstream,
    idp: Upstream,
    bg: Bindgate,
}

fn setup(mode: Mode) -> Setup {
    let signer = Signer::new(Algorithm::ES256, "es-1");
    let pki = Pki::new();
    let (jwks_server, idp) = key_server_and_provider(&[&signer]);
    std::fs::write(pki.path("api.token"), "session-api-token\n").unwrap();
    let target = match mode {
        Mode::Embedded => "embedded",
        Mode::Upstream => "idp",
    };
    // `idp` leaves client_cert_header out: the documented default (Client-Cert) applies.
    let yaml = format!(
        r#"{LISTENERS}issuer: "{ISSUER}"
jwks: {{uri: "http://{jwks}/jwks.json", fetch_timeout: 2s}}
registration:
  path: /clients
  endpoint_uri: "{ENDPOINT}"
  target: {target}
  master_tokens:
    - file: "{{PKI}}/master.token"
  require_certificate_binding: true
session_store:
  target: {target}
  api_tokens:
    - file: "{{PKI}}/api.token"
upstreams:
  idp: {{address: "{idp}"}}
  bare: {{address: "{idp}", forwarded_headers: false, client_cert_header: ""}}
routes:
  - prefix: /bare
    upstream: bare
  - prefix: /
    upstream: idp
state: {{path: ":memory:"}}
server: {{threads: 2, max_body: 64KiB}}
"#,
        jwks = jwks_server.addr,
        idp = idp.addr,
    );
    let bg = Bindgate::start(&pki, &yaml);
    Setup {
        pki,
        signer,
        _jwks: jwks_server,
        idp,
        bg,
    }
}

/// One answer: status, headers (lower-cased names), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Setup {
    fn connector(&self, identity: Option<&str>) -> openssl::ssl::SslConnector {
        use openssl::ssl::{SslConnector, SslFiletype, SslMethod};
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_ca_file(self.pki.path("ca.crt")).unwrap();
        b.set_alpn_protos(b"\x08http/1.1").unwrap();
        if let Some(stem) = identity {
            b.set_certificate_file(self.pki.path(&format!("{stem}.crt")), SslFiletype::PEM)
                .unwrap();
            b.set_private_key_file(self.pki.path(&format!("{stem}.key")), SslFiletype::PEM)
                .unwrap();
        }
        b.build()
    }

    /// Sends `head` (request line and headers, without the blank line) and `body` over a new
    /// HTTP/1.1 TLS connection, byte for byte; reads one answer.
    fn raw(&self, identity: Option<&str>, head: &str, body: &str) -> Answer {
        let tcp = std::net::TcpStream::connect(self.bg.listen).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = self
            .connector(identity)
            .connect("localhost", tcp)
            .expect("TLS handshake");
        let mut request = format!("{head}\r\nContent-Length: {}\r\n", body.len());
        if !head.contains("\r\nHost:") {
            request.push_str("Host: localhost\r\n");
        }
        request.push_str("Connection: close\r\n\r\n");
        request.push_str(body);
        tls.write_all(request.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw);
        parse_answer(&raw)
            .unwrap_or_else(|| panic!("no answer to {head:?}: {:?}", String::from_utf8_lossy(&raw)))
    }

    /// The same over HTTP/2 with curl, the path sent as is.
    fn h2(&self, method: &str, path: &str, headers: &[String]) -> Answer {
        let dir = tempfile::tempdir().unwrap();
        let head_file = dir.path().join("head");
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--http2", "--path-as-is", "--max-time", "10"])
            .arg("--cacert")
            .arg(self.pki.path("ca.crt"))
            .args([
                "--resolve",
                &format!("localhost:{}:127.0.0.1", self.bg.port),
            ])
            .arg("-D")
            .arg(&head_file)
            .args(["-X", method]);
        if method == "HEAD" {
            cmd.arg("-I");
        }
        for h in headers {
            cmd.args(["-H", h]);
        }
        let out = cmd.arg(self.bg.url(path)).output().expect("curl");
        assert!(
            out.status.success(),
            "curl {method} {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let head = std::fs::read_to_string(&head_file).unwrap();
        let mut lines = head.lines();
        let status_line = lines.next().unwrap_or_default();
        assert!(status_line.starts_with("HTTP/2 "), "{status_line}");
        Answer {
            status: status_line[7..10].parse().unwrap(),
            headers: lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect(),
            body: String::from_utf8_lossy(&out.stdout).to_string(),
        }
    }

    fn bearer_bound_to(&self, x5t: &str) -> String {
        self.signer.sign(&bound(x5t))
    }
}

fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&raw[end + 4..]).to_string(),
    })
}

/// A hostile request and what it must get.
struct Case {
    /// Request line, e.g. `POST /clients/ HTTP/1.1`.
    line: &'static str,
    /// Extra headers (`Name: value`).
    headers: &'static [&'static str],
    status: u16,
    /// The JSON `error` of the answer.
    error: &'static str,
}

const ATTACKER: &[&str] = &["Authorization: Bearer x"];

/// Every spelling that once reached a protected resource without its check: refused, and never
/// forwarded, whatever the target.
#[rustfmt::skip]
const REFUSED: &[Case] = &[
    // 1. Trailing slash and its spellings: no resource of the registration endpoint.
    Case { line: "POST /clients/ HTTP/1.1", headers: ATTACKER, status: 404, error: "not_found" },
    Case { line: "POST //clients/ HTTP/1.1", headers: ATTACKER, status: 404, error: "not_found" },
    Case { line: "POST /clients/. HTTP/1.1", headers: ATTACKER, status: 404, error: "not_found" },
    Case { line: "POST /x/../clients/ HTTP/1.1", headers: ATTACKER, status: 404, error: "not_found" },
    Case { line: "POST /%63lients/ HTTP/1.1", headers: ATTACKER, status: 404, error: "not_found" },
    Case { line: "GET /clients/abc/ HTTP/1.1", headers: ATTACKER, status: 404, error: "not_found" },
    Case { line: "GET /clients/abc/def HTTP/1.1", headers: ATTACKER, status: 404, error: "not_found" },
    Case { line: "DELETE /session-store/rest/v2/sessions/?all=true HTTP/1.1", headers: &[], status: 404, error: "not_found" },
    Case { line: "DELETE /session-store/rest/v2/?all=true HTTP/1.1", headers: &[], status: 404, error: "not_found" },
    // 2. Targets that are not origin-form (and not http(s) absolute-form).
    Case { line: "POST clients HTTP/1.1", headers: ATTACKER, status: 400, error: "invalid_request" },
    Case { line: "POST x:/clients HTTP/1.1", headers: ATTACKER, status: 400, error: "invalid_request" },
    Case { line: "DELETE myproto:/session-store/rest/v2/sessions?all=true HTTP/1.1", headers: &[], status: 400, error: "invalid_request" },
    // Pingora's parser refuses an ambiguous absolute-form itself: a bare 400, before bindgate.
    Case { line: "POST http:/clients HTTP/1.1", headers: ATTACKER, status: 400, error: "" },
    Case { line: "OPTIONS * HTTP/1.1", headers: &[], status: 400, error: "invalid_request" },
    // 3. `;` parameters, raw or encoded; encoded separators.
    Case { line: "POST /clients;x HTTP/1.1", headers: ATTACKER, status: 400, error: "invalid_request" },
    Case { line: "POST /clients;jsessionid=1 HTTP/1.1", headers: ATTACKER, status: 400, error: "invalid_request" },
    Case { line: "DELETE /session-store;x/rest/v2/sessions?all=true HTTP/1.1", headers: &[], status: 400, error: "invalid_request" },
    Case { line: "POST /clients%3bx HTTP/1.1", headers: ATTACKER, status: 400, error: "invalid_request" },
    Case { line: "GET /clients%2fabc HTTP/1.1", headers: ATTACKER, status: 400, error: "invalid_request" },
    Case { line: "GET /clients%5cabc HTTP/1.1", headers: ATTACKER, status: 400, error: "invalid_request" },
    Case { line: "GET /clients\\abc HTTP/1.1", headers: ATTACKER, status: 400, error: "invalid_request" },
    // Absolute-form is its path: the registration policy applies.
    Case { line: "POST https://localhost/clients HTTP/1.1", headers: ATTACKER, status: 401, error: "invalid_token" },
    Case { line: "POST http://localhost/x/../clients HTTP/1.1", headers: &[], status: 401, error: "unauthorized" },
    Case { line: "DELETE https://localhost/session-store/rest/v2/sessions?all=true HTTP/1.1", headers: &[], status: 401, error: "unauthorized" },
    // 5. HEAD on the collection is the list: a master token only.
    Case { line: "HEAD /clients HTTP/1.1", headers: ATTACKER, status: 401, error: "" },
    // Other methods on protected resources: 405, never forwarded.
    Case { line: "PATCH /clients HTTP/1.1", headers: ATTACKER, status: 405, error: "method_not_allowed" },
    Case { line: "DELETE /clients HTTP/1.1", headers: ATTACKER, status: 405, error: "method_not_allowed" },
    Case { line: "OPTIONS /clients HTTP/1.1", headers: &[], status: 405, error: "method_not_allowed" },
    Case { line: "POST /clients/abc HTTP/1.1", headers: ATTACKER, status: 405, error: "method_not_allowed" },
    Case { line: "PATCH /session-store/rest/v2/sessions HTTP/1.1", headers: &[], status: 405, error: "method_not_allowed" },
    // The same header twice, the host twice.
    Case { line: "POST /clients HTTP/1.1", headers: &["Authorization: Bearer x", "Authorization: Bearer y"], status: 400, error: "invalid_request" },
    Case { line: "GET /other HTTP/1.1", headers: &["Host: localhost", "Host: evil.example.com"], status: 400, error: "" },
    Case { line: "GET /session-store/rest/v2/sessions HTTP/1.1", headers: &["Authorization: Bearer session-api-token", "SID: a", "SID: b"], status: 400, error: "invalid_request" },
    Case { line: "DELETE /session-store/rest/v2/sessions?all=true&all=false HTTP/1.1", headers: &["Authorization: Bearer session-api-token"], status: 400, error: "invalid_request" },
    Case { line: "DELETE /session-store/rest/v2/sessions?quiet=true&quiet=false&all=true HTTP/1.1", headers: &["Authorization: Bearer session-api-token"], status: 400, error: "invalid_request" },
    Case { line: "GET /session-store/rest/v2/sessions?skip_last_used_update=true&skip_last_used_update=false HTTP/1.1", headers: &["Authorization: Bearer session-api-token", "SID: abc"], status: 400, error: "invalid_request" },
    Case { line: "GET /session-store/rest/v2/sessions?skip_last_used_update=yes HTTP/1.1", headers: &["Authorization: Bearer session-api-token", "SID: abc"], status: 400, error: "invalid_request" },
];

fn check_refused(s: &Setup, mode: Mode) {
    for case in REFUSED {
        let before = s.idp.requests().len();
        let mut head = case.line.to_string();
        for h in case.headers {
            head.push_str("\r\n");
            head.push_str(h);
        }
        let a = s.raw(None, &head, "");
        let what = format!("{mode:?} HTTP/1.1 {}", case.line);
        assert_eq!(a.status, case.status, "{what}: {a:?}");
        if !case.error.is_empty() {
            let body: serde_json::Value = serde_json::from_str(&a.body).unwrap_or_default();
            assert_eq!(body["error"], case.error, "{what}: {a:?}");
        }
        if case.status == 405 {
            assert!(a.header("allow").is_some(), "{what}: {a:?}");
        }
        assert_eq!(
            s.idp.requests().len(),
            before,
            "{what} reached the upstream"
        );
    }
}

#[test]
fn hostile_spellings_are_refused_over_http1_embedded() {
    let s = setup(Mode::Embedded);
    check_refused(&s, Mode::Embedded);
}

#[test]
fn hostile_spellings_are_refused_over_http1_upstream() {
    let s = setup(Mode::Upstream);
    check_refused(&s, Mode::Upstream);
}

#[test]
fn hostile_spellings_are_refused_over_http2() {
    for mode in [Mode::Embedded, Mode::Upstream] {
        let s = setup(mode);
        let attacker = vec!["Authorization: Bearer x".to_string()];
        let cases: &[(&str, &str, &[String], u16)] = &[
            ("POST", "/clients/", &attacker, 404),
            ("POST", "//clients/", &attacker, 404),
            ("POST", "/clients/.", &attacker, 404),
            ("POST", "/x/../clients/", &attacker, 404),
            ("POST", "/clients;x", &attacker, 400),
            ("POST", "/clients%3Bx", &attacker, 400),
            ("GET", "/clients%2Fabc", &attacker, 400),
            (
                "DELETE",
                "/session-store;x/rest/v2/sessions?all=true",
                &[],
                400,
            ),
            (
                "DELETE",
                "/session-store/rest/v2/sessions/?all=true",
                &[],
                404,
            ),
            ("HEAD", "/clients", &attacker, 401),
            ("PATCH", "/clients", &attacker, 405),
            ("POST", "/x/../clients", &attacker, 401),
        ];
        for (method, path, headers, status) in cases {
            let before = s.idp.requests().len();
            let a = s.h2(method, path, headers);
            assert_eq!(a.status, *status, "{mode:?} HTTP/2 {method} {path}: {a:?}");
            assert_eq!(
                s.idp.requests().len(),
                before,
                "{mode:?} HTTP/2 {method} {path} reached the upstream"
            );
        }
    }
}

#[test]
fn collection_methods_and_head_need_a_master_token() {
    for mode in [Mode::Embedded, Mode::Upstream] {
        let s = setup(mode);
        let master = s.pki.token("master.token");
        let iat = s.bearer_bound_to(&s.pki.thumbprint("client1"));
        // A valid initial access token, presented with its certificate, registers...
        let a = s.raw(
            Some("client1"),
            &format!("POST /clients HTTP/1.1\r\nAuthorization: Bearer {iat}\r\nContent-Type: application/json"),
            r#"{"redirect_uris":["https://app.example.com/cb"]}"#,
        );
        let expected = if mode == Mode::Embedded { 201 } else { 200 };
        assert_eq!(a.status, expected, "{mode:?}: {a:?}");
        let forwarded = s.idp.requests().len();
        // ...but neither lists nor HEADs the collection.
        for method in ["GET", "HEAD"] {
            let a = s.raw(
                Some("client1"),
                &format!("{method} /clients HTTP/1.1\r\nAuthorization: Bearer {iat}"),
                "",
            );
            assert_eq!(a.status, 401, "{mode:?} {method}: {a:?}");
            assert!(a
                .header("www-authenticate")
                .is_some_and(|c| c.starts_with("Bearer error=\"invalid_token\"")));
            assert_eq!(s.idp.requests().len(), forwarded, "{mode:?} {method}");
        }
        // The master token does.
        let a = s.raw(
            None,
            &format!("HEAD /clients HTTP/1.1\r\nAuthorization: Bearer {master}"),
            "",
        );
        assert_eq!(a.status, 200, "{mode:?}: {a:?}");
        assert_eq!(a.body, "", "HEAD has no body");
        let a = s.raw(
            None,
            &format!("GET /clients HTTP/1.1\r\nAuthorization: Bearer {master}"),
            "",
        );
        assert_eq!(a.status, 200, "{mode:?}: {a:?}");
        let a = s.raw(None, "PUT /clients HTTP/1.1", "{}");
        assert_eq!(a.status, 405);
        assert_eq!(a.header("allow"), Some("GET, HEAD, POST"));
        let a = s.raw(None, "PATCH /clients/abc HTTP/1.1", "{}");
        assert_eq!(a.header("allow"), Some("GET, HEAD, PUT, DELETE"));
        if mode == Mode::Upstream {
            let got = s.idp.wait_for(3);
            assert_eq!(got.len(), 3);
            assert_eq!(got[1].method, "HEAD");
            assert_eq!(got[1].target, "/clients");
        }
    }
}

#[test]
fn a_client_uri_is_read_with_head_through_its_own_token() {
    let s = setup(Mode::Embedded);
    let master = s.pki.token("master.token");
    let a = s.raw(
        None,
        &format!("POST /clients HTTP/1.1\r\nAuthorization: Bearer {master}"),
        r#"{"redirect_uris":["https://app.example.com/cb"]}"#,
    );
    assert_eq!(a.status, 201, "{a:?}");
    let client: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    let id = client["client_id"].as_str().unwrap();
    let rat = client["registration_access_token"].as_str().unwrap();
    let a = s.raw(
        None,
        &format!("HEAD /clients/{id} HTTP/1.1\r\nAuthorization: Bearer {rat}"),
        "",
    );
    assert_eq!((a.status, a.body.as_str()), (200, ""));
    let a = s.raw(
        None,
        &format!("HEAD /clients/{id} HTTP/1.1\r\nAuthorization: Bearer x"),
        "",
    );
    assert_eq!(a.status, 401);
    // The trailing slash is no spelling of the client's URI.
    let a = s.raw(
        None,
        &format!("GET /clients/{id}/ HTTP/1.1\r\nAuthorization: Bearer {rat}"),
        "",
    );
    assert_eq!(a.status, 404);
}

#[test]
fn absolute_form_is_forwarded_as_its_normalised_path_with_its_host() {
    let s = setup(Mode::Upstream);
    let master = s.pki.token("master.token");
    let a = s.raw(
        None,
        &format!(
            "GET https://localhost/a/./b/../%63lients?x=1 HTTP/1.1\r\nAuthorization: Bearer {master}"
        ),
        "",
    );
    assert_eq!(a.status, 200, "{a:?}");
    let a = s.raw(None, "GET //other/%7Euser/./x?q=%2F HTTP/1.1", "");
    assert_eq!(a.status, 200, "{a:?}");
    let got = s.idp.wait_for(2);
    assert_eq!(got[0].target, "/a/clients?x=1");
    assert_eq!(got[0].header("host"), Some("localhost"));
    // The query travels as received; the path as it was routed.
    assert_eq!(got[1].target, "/other/~user/x?q=%2F");
}

#[test]
fn forwarding_headers_are_removed_and_set_by_bindgate() {
    let s = setup(Mode::Upstream);
    let spoofed = "\r\nX-Original-URL: /clients\r\nX-Rewrite-URL: /clients\r\nX-HTTP-Method-Override: GET\r\nClient-Cert: :c3Bvb2Y=:\r\nClient-Cert: :dHdpY2U=:\r\nClient-Cert-Chain: :c3Bvb2Y=:\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: evil.example.com\r\nX-Forwarded-Port: 80\r\nX-Real-IP: 203.0.113.9\r\nForwarded: for=203.0.113.9;proto=http\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: gzip";
    let host = format!("localhost:{}", s.bg.port);
    for identity in [None, Some("client1")] {
        let a = s.raw(
            identity,
            &format!("GET /other HTTP/1.1\r\nHost: {host}{spoofed}"),
            "",
        );
        assert_eq!(a.status, 200);
    }
    // The upstream with forwarded_headers: false and no certificate header: removal only.
    let a = s.raw(
        Some("client1"),
        &format!("GET /bare HTTP/1.1\r\nHost: {host}{spoofed}"),
        "",
    );
    assert_eq!(a.status, 200);
    let got = s.idp.wait_for(3);
    assert_eq!(got.len(), 3);
    let der = s.pki.der("client1");
    let real = format!(
        ":{}:",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der)
    );
    for (i, r) in got.iter().enumerate() {
        let expected_cert = if i == 1 { vec![real.as_str()] } else { vec![] };
        assert_eq!(r.all("client-cert"), expected_cert, "request {i}");
        assert!(r.all("client-cert-chain").is_empty(), "request {i}");
        assert!(r.all("x-forwarded-port").is_empty(), "request {i}");
        assert!(r.all("x-real-ip").is_empty(), "request {i}");
        assert!(r.all("x-original-url").is_empty(), "request {i}");
        assert!(r.all("x-rewrite-url").is_empty(), "request {i}");
        // Hop-by-hop (RFC 9110 §7.6.1): the client's proxy credentials go no further (bindgate
        // removes them, and Pingora's own request sanitising does too).
        for name in [
            "proxy-authorization",
            "proxy-connection",
            "keep-alive",
            "te",
        ] {
            assert!(r.all(name).is_empty(), "{name}, request {i}");
        }
        // A route authorises no method: its method override is the application's business.
        assert_eq!(r.all("x-http-method-override"), vec!["GET"], "request {i}");
    }
    // On an authorised operation the method that was checked is the only one.
    let master = s.pki.token("master.token");
    let a = s.raw(
        None,
        &format!("POST /clients HTTP/1.1\r\nAuthorization: Bearer {master}\r\nX-HTTP-Method-Override: GET\r\nX-Method-Override: GET\r\nX-HTTP-Method: GET"),
        "{}",
    );
    assert_eq!(a.status, 200);
    let registered = s.idp.wait_for(4).pop().unwrap();
    assert_eq!(registered.method, "POST");
    for name in [
        "x-http-method-override",
        "x-method-override",
        "x-http-method",
    ] {
        assert!(registered.all(name).is_empty(), "{name}");
    }
    for r in &got[..2] {
        assert_eq!(r.all("x-forwarded-for"), vec!["127.0.0.1"]);
        assert_eq!(r.all("x-forwarded-proto"), vec!["https"]);
        assert_eq!(r.all("x-forwarded-host"), vec![host.as_str()]);
        assert_eq!(
            r.all("forwarded"),
            vec![format!("for=127.0.0.1;proto=https;host=\"{host}\"").as_str()]
        );
    }
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    ] {
        assert!(got[2].all(name).is_empty(), "{name} on the bare upstream");
    }
    // Over HTTP/2 the host is the :authority.
    let a = s.h2(
        "GET",
        "/other",
        &["X-Forwarded-Host: evil.example.com".to_string()],
    );
    assert_eq!(a.status, 200);
    let got = s.idp.wait_for(5);
    assert_eq!(got[4].all("x-forwarded-host"), vec![host.as_str()]);
    assert_eq!(got[4].all("x-forwarded-for"), vec!["127.0.0.1"]);
}

#[test]
fn any_thumbprint_that_is_not_the_certificate_gets_the_mismatch_answer() {
    for mode in [Mode::Embedded, Mode::Upstream] {
        let s = setup(mode);
        let right = s.pki.thumbprint("client1");
        let digest = openssl::sha::sha256(&s.pki.der("client1"));
        let padded = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE, digest);
        let standard = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest);
        for x5t in [
            hex::encode(digest),
            padded,
            standard,
            right[..20].to_string(),
            format!("{right}AA"),
            String::new(),
            "!!".to_string(),
        ] {
            let token = s.bearer_bound_to(&x5t);
            let a = s.raw(
                Some("client1"),
                &format!("POST /clients HTTP/1.1\r\nAuthorization: Bearer {token}"),
                "{}",
            );
            assert_eq!(a.status, 401, "{mode:?} {x5t}: {a:?}");
            assert_eq!(
                a.header("www-authenticate"),
                Some(MISMATCH),
                "{mode:?} {x5t}"
            );
        }
        assert!(s.idp.requests().is_empty());
        let token = s.bearer_bound_to(&right);
        let a = s.raw(
            Some("client1"),
            &format!("POST /clients HTTP/1.1\r\nAuthorization: Bearer {token}"),
            r#"{"redirect_uris":["https://app.example.com/cb"]}"#,
        );
        assert!(a.status == 200 || a.status == 201, "{mode:?}: {a:?}");
    }
}
