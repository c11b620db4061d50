//! Every answer arrives: rejections written before the request body is read (401, 403, 413)
//! reach curl over HTTP/2 and HTTP/1.1 on every try, bodies several times the limit included,
//! with Content-Length and without (chunked), for the embedded target and an upstream route.

use crate::harness::tokens::*;
use crate::harness::*;
use jsonwebtoken::Algorithm;

struct Setup {
    pki: Pki,
    signer: Signer,
    _jwks: Upstream,
    idp: Upstream,
    bg: Bindgate,
    big: std::path::PathBuf,
}

fn setup() -> Setup {
    let signer = Signer::new(Algorithm::ES256, "es-1");
    let pki = Pki::new();
    let (jwks_server, idp) = key_server_and_provider(&[&signer]);
    let yaml = format!(
        r#"{LISTENERS}issuer: "{ISSUER}"
jwks: {{uri: "http://{jwks}/jwks.json"}}
registration:
  endpoint_uri: "{ENDPOINT}"
  master_tokens: [{{file: "{{PKI}}/master.token"}}]
upstreams:
  idp: {{address: "{idp}"}}
routes:
  - {{prefix: /api, upstream: idp}}
state: {{path: ":memory:"}}
server: {{threads: 2, max_body: 64KiB}}
"#,
        jwks = jwks_server.addr,
        idp = idp.addr,
    );
    let bg = Bindgate::start(&pki, &yaml);
    // 300 000 bytes: more than four times the 64 KiB limit.
    let big = pki.path("big.json");
    std::fs::write(&big, vec![b'a'; 300_000]).unwrap();
    Setup {
        pki,
        signer,
        _jwks: jwks_server,
        idp,
        bg,
        big,
    }
}

impl Setup {
    /// Runs curl `tries` times; every try must exit 0 with `status`.
    fn every_try(&self, tries: usize, status: &str, args: &[&str]) {
        for i in 0..tries {
            let out = std::process::Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "20",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                ])
                .arg("--cacert")
                .arg(self.pki.path("ca.crt"))
                .args([
                    "--resolve",
                    &format!("localhost:{}:127.0.0.1", self.bg.port),
                ])
                .args(args)
                .output()
                .expect("curl");
            assert!(
                out.status.success(),
                "try {i} of {args:?}: curl exit {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                status,
                "try {i} of {args:?}"
            );
        }
    }
}

#[test]
fn early_rejections_reach_curl_on_every_try() {
    let s = setup();
    let clients = s.bg.url("/clients");
    let big = format!("@{}", s.big.display());
    let mut unscoped = claims();
    unscoped["scp"] = serde_json::json!(["openid"]);
    let unscoped = format!("Authorization: Bearer {}", s.signer.sign(&unscoped));
    for version in ["--http2", "--http1.1"] {
        // The README's first tour command: no credentials, a small body.
        s.every_try(30, "401", &[version, &clients, "-d", "{}"]);
        // A valid token without the scope: 403.
        s.every_try(30, "403", &[version, &clients, "-H", &unscoped, "-d", "{}"]);
        // A body several times max_body, announced by Content-Length: 413 before reading.
        s.every_try(30, "413", &[version, &clients, "--data-binary", &big]);
        // The same without Content-Length: 413 once the counted body passes the limit.
        s.every_try(
            10,
            "413",
            &[
                version,
                &s.bg.url("/api/upload"),
                "-H",
                "Transfer-Encoding: chunked",
                "-H",
                "Content-Length:",
                "--data-binary",
                &big,
            ],
        );
        s.every_try(
            10,
            "413",
            &[
                version,
                &clients,
                "-H",
                &format!("Authorization: Bearer {}", s.pki.token("master.token")),
                "-H",
                "Transfer-Encoding: chunked",
                "-H",
                "Content-Length:",
                "--data-binary",
                &big,
            ],
        );
    }
    // Nothing over the limit was handed to the provider whole.
    assert!(s.idp.requests().iter().all(|r| r.body.len() <= 64 * 1024));
}
