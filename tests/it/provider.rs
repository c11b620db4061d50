//! Introspection against a real provider (issue 17): node-oidc-provider (tests/oidc, pinned in
//! its package-lock.json, installed by `npm ci` on first use) issues opaque client-credentials
//! tokens, certificate-bound and DPoP-bound ones; bindgate introspects them with client
//! authentication, over TLS, and enforces what the provider says.

use crate::harness::*;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const MISMATCH: &str = "Bearer error=\"invalid_token\", error_description=\"Missing / invalid client X.509 certificate for x5t#S256 bound access token\"";

fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// `npm ci` once per test run (the lock file pins every package).
fn installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = provider_dir();
        if dir
            .join("node_modules/oidc-provider/package.json")
            .is_file()
        {
            return;
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("npm (install nodejs and npm: scripts/test.sh does)");
        assert!(status.success(), "npm ci in tests/oidc failed");
    });
}

/// A running provider; stopped when dropped.
struct Provider {
    child: Child,
    port: u16,
}

impl Provider {
    /// Starts the provider on `port` (0: any) and reads the port it took back.
    fn start(pki: &Pki, port: u16) -> Provider {
        installed();
        let mut child = Command::new("node")
            .arg(provider_dir().join("provider.mjs"))
            .arg(port.to_string())
            .arg(pki.dir.path())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(pki.dir.path().join("provider.log")).unwrap())
            .spawn()
            .expect("node");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        reader
            .read_line(&mut line)
            .expect("the provider's first line");
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the provider did not start: {line:?}"));
        // Keep reading what it prints, so that it never writes into a closed pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        Provider { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of the provider (trusting the test CA), presenting `identity` when given.
fn provider_client(pki: &Pki, identity: Option<&str>) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder()
        .use_native_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pki.read("ca.crt")).unwrap());
    if let Some(id) = identity {
        b = b.identity(
            reqwest::Identity::from_pkcs8_pem(
                &pki.read(&format!("{id}.crt")),
                &pki.read(&format!("{id}.key")),
            )
            .unwrap(),
        );
    }
    b.build().unwrap()
}

/// A client-credentials token for `client` (`client-secret`), with `dpop` as its proof.
fn token(
    pki: &Pki,
    p: &Provider,
    client: &str,
    identity: Option<&str>,
    dpop: Option<String>,
) -> String {
    let mut req = provider_client(pki, identity)
        .post(p.url("/token"))
        .basic_auth(client, Some(format!("{client}-secret")))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "client-reg"),
        ]);
    if let Some(proof) = dpop {
        req = req.header("dpop", proof);
    }
    let resp = req.send().unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            std::fs::read_to_string(pki.dir.path().join("provider.log")).unwrap_or_default()
        )
    });
    let status = resp.status();
    let body: serde_json::Value = resp.json().unwrap();
    assert!(status.is_success(), "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

fn start_bindgate(pki: &Pki, p: &Provider, idp: &Upstream) -> Bindgate {
    start_with_auth(
        pki,
        p,
        idp,
        "client_secret_basic: {client_id: bindgate, client_secret: {value: bindgate-secret}}",
    )
}

fn start_with_auth(pki: &Pki, p: &Provider, idp: &Upstream, auth: &str) -> Bindgate {
    let yaml = format!(
        r#"{LISTENERS}issuer: "https://localhost:{port}"
tokens: {{format: opaque, leeway: 5s}}
introspection:
  endpoint: "https://localhost:{port}/token/introspection"
  ca: "{{PKI}}/ca.crt"
  auth:
    {auth}
  timeout: 2s
  cache: {{max_ttl: 1s, negative_ttl: 1s}}
registration:
  target: idp
  require_initial_access_token_audience: false
upstreams:
  idp: {{address: "{idp}"}}
dpop: {{origins: ["https://localhost:{{PORT}}"]}}
server: {{threads: 2}}
"#,
        port = p.port,
        idp = idp.addr,
    );
    Bindgate::start(pki, &yaml)
}

fn register(
    bg: &Bindgate,
    pki: &Pki,
    authorization: &str,
    dpop: Option<&str>,
    identity: Option<&str>,
) -> reqwest::blocking::Response {
    let mut req = bg
        .client(pki, identity, Http::One)
        .post(bg.url("/clients"))
        .header("authorization", authorization)
        .header("content-type", "application/json")
        .body(r#"{"redirect_uris":["https://app.example.com/cb"]}"#);
    if let Some(proof) = dpop {
        req = req.header("dpop", proof);
    }
    req.send().unwrap()
}

#[test]
fn tokens_of_a_real_provider_by_introspection() {
    let pki = Pki::new();
    let provider = Provider::start(&pki, 0);
    let idp = Upstream::start();
    let bg = start_bindgate(&pki, &provider, &idp);

    // A certificate-bound opaque token: accepted with its certificate, the exact 401 without.
    let bound = token(&pki, &provider, "mtls-app", Some("client1"), None);
    assert!(!bound.contains('.'), "an opaque token: {bound}");
    assert_eq!(
        register(&bg, &pki, &format!("Bearer {bound}"), None, Some("client1")).status(),
        200
    );
    for identity in [None, Some("client2")] {
        let resp = register(&bg, &pki, &format!("Bearer {bound}"), None, identity);
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["www-authenticate"], MISMATCH);
    }

    // A DPoP-bound opaque token: accepted with a proof, refused as a bearer token.
    let key = bindgate::devtoken::load_key(&bindgate::devtoken::new_key_pem().unwrap()).unwrap();
    let to_provider =
        bindgate::devtoken::dpop_proof(&key, "POST", &provider.url("/token"), None, None).unwrap();
    let dpop_token = token(&pki, &provider, "dpop-app", None, Some(to_provider));
    let htu = format!("https://localhost:{}/clients", bg.port);
    let proof =
        bindgate::devtoken::dpop_proof(&key, "POST", &htu, Some(&dpop_token), None).unwrap();
    let resp = register(&bg, &pki, &format!("DPoP {dpop_token}"), Some(&proof), None);
    assert_eq!(resp.status(), 200, "{:?}", resp.text());
    let resp = register(&bg, &pki, &format!("Bearer {dpop_token}"), None, None);
    assert_eq!(resp.status(), 401);

    // Revoked at the provider: refused once the cached answer (max_ttl 1 s) is gone.
    let plain = token(&pki, &provider, "app", None, None);
    assert_eq!(
        register(&bg, &pki, &format!("Bearer {plain}"), None, None).status(),
        200
    );
    let revoked = provider_client(&pki, None)
        .post(provider.url("/token/revocation"))
        .basic_auth("app", Some("app-secret"))
        .form(&[("token", plain.as_str())])
        .send()
        .unwrap();
    assert!(revoked.status().is_success());
    std::thread::sleep(Duration::from_millis(1200));
    let resp = register(&bg, &pki, &format!("Bearer {plain}"), None, None);
    assert_eq!(resp.status(), 401);

    // The provider stopped: 503 (never 401, never a pass); back: served again.
    let fresh = token(&pki, &provider, "app", None, None);
    let port = provider.port;
    drop(provider);
    let resp = register(&bg, &pki, &format!("Bearer {fresh}"), None, None);
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let provider = Provider::start(&pki, port);
    let again = token(&pki, &provider, "app", None, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = register(&bg, &pki, &format!("Bearer {again}"), None, None).status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "bindgate did not recover");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!bg.logs().contains(&again), "a token was logged");
}

#[test]
fn every_client_authentication_method_is_accepted_by_the_provider() {
    let pki = Pki::new();
    // The key bindgate signs its client assertions with; the provider trusts its public half.
    let pem = bindgate::devtoken::new_key_pem().unwrap();
    std::fs::write(pki.path("introspect.key"), &pem).unwrap();
    let jwk = bindgate::devtoken::public_jwk(&bindgate::devtoken::load_key(&pem).unwrap()).unwrap();
    std::fs::write(pki.path("introspect.jwk.json"), jwk.to_string()).unwrap();
    let provider = Provider::start(&pki, 0);
    let idp = Upstream::start();
    let pki_dir = pki.dir.path().display().to_string();
    for (auth, expected) in [
        ("client_secret_post: {client_id: bindgate-post, client_secret: {value: bindgate-post-secret}}".to_string(), 200),
        (format!("private_key_jwt: {{client_id: bindgate-jwt, key: \"{pki_dir}/introspect.key\", alg: ES256}}"), 200),
        (format!("tls_client_auth: {{client_id: bindgate-mtls, cert: \"{pki_dir}/client1.crt\", key: \"{pki_dir}/client1.key\"}}"), 200),
        // The provider refuses bindgate's own credentials: no answer, so 503, never a pass.
        ("client_secret_basic: {client_id: bindgate, client_secret: {value: wrong}}".to_string(), 503),
        (format!("tls_client_auth: {{client_id: bindgate-mtls, cert: \"{pki_dir}/client2.crt\", key: \"{pki_dir}/client2.key\"}}"), 503),
    ] {
        let bg = start_with_auth(&pki, &provider, &idp, &auth);
        let plain = token(&pki, &provider, "app", None, None);
        let status = register(&bg, &pki, &format!("Bearer {plain}"), None, None).status();
        assert_eq!(status, expected, "{auth}\n{}", bg.logs());
        assert!(!bg.logs().contains("bindgate-post-secret"), "a secret was logged");
    }
}
