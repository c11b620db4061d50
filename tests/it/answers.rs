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

/// HTTP/2: an answer decided before the body (here a 401) is written once the body is in,
/// not before. A client that sees an error answer while it still sends (curl) stops and ends
/// its stream short of its Content-Length, which the HTTP/2 layer must reset as malformed:
/// the client then reports an error instead of the answer.
#[test]
fn http2_early_answer_waits_for_the_rest_of_the_body() {
    use openssl::ssl::{SslConnector, SslMethod};
    use std::time::Duration;
    let s = setup();
    let port = s.bg.port;
    let ca = s.pki.path("ca.crt");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_ca_file(&ca).unwrap();
        b.set_alpn_protos(b"\x02h2").unwrap();
        let ssl = b
            .build()
            .configure()
            .unwrap()
            .into_ssl("localhost")
            .unwrap();
        let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
        std::pin::Pin::new(&mut tls).connect().await.unwrap();
        let (client, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::post(format!("https://localhost:{port}/clients"))
            .header("content-length", "2")
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        tokio::pin!(response);
        // The body has not come: no answer yet.
        let early = tokio::time::timeout(Duration::from_millis(500), &mut response).await;
        assert!(early.is_err(), "answered before the body: {early:?}");
        body.send_data(bytes::Bytes::from_static(b"{}"), true)
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("an answer once the body is in")
            .expect("the stream is not reset");
        assert_eq!(answer.status(), 401);
        let mut data = answer.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = data.data().await {
            got.extend_from_slice(&chunk.expect("the answer's body arrives whole"));
        }
        let json: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(json["error"], "unauthorized", "{json}");
    });
}
