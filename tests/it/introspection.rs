//! Opaque access tokens by RFC 7662 introspection (issue 17), through the real server over TLS,
//! with an introspection endpoint in the test that records what bindgate asks and answers what
//! the test says.

use crate::harness::tokens::*;
use crate::harness::*;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::time::Duration;

const MISMATCH: &str = "Bearer error=\"invalid_token\", error_description=\"Missing / invalid client X.509 certificate for x5t#S256 bound access token\"";

struct Setup {
    pki: Pki,
    introspection: Upstream,
    idp: Upstream,
    _jwks: Upstream,
    es: Signer,
    bg: Bindgate,
    /// The configuration as started (placeholders unfilled), for reloads.
    yaml: String,
}

struct Answer {
    status: u16,
    challenge: Option<String>,
    retry_after: Option<String>,
    body: Value,
}

fn setup(single_use: bool) -> Setup {
    let pki = Pki::new();
    let es = Signer::new(Algorithm::ES256, "es-1");
    let jwks = Upstream::start();
    jwks.set_reply(200, &crate::harness::tokens::jwks(&[&es]));
    let introspection = Upstream::start();
    introspection.set_reply(200, r#"{"active":false}"#);
    let idp = Upstream::start();
    let yaml = format!(
        r#"{LISTENERS}issuer: "{ISSUER}"
jwks: {{uri: "http://{jwks}/jwks.json"}}
tokens: {{algorithms: [ES256], leeway: 5s}}
introspection:
  endpoint: "http://{introspection}/token/introspect"
  auth:
    client_secret_basic: {{client_id: "bindgate", client_secret: {{value: "s3cret:/+"}}}}
  timeout: 1s
  cache: {{max_ttl: 1h, negative_ttl: 1s}}
registration:
  endpoint_uri: "{ENDPOINT}"
  target: idp
  single_use: {single_use}
  master_tokens: [{{file: "{{PKI}}/master.token"}}]
upstreams:
  idp: {{address: "{idp}"}}
routes:
  - {{prefix: /api, upstream: idp, token: {{scope: [read]}}}}
server: {{threads: 2}}
state: {{path: ":memory:"}}
"#,
        jwks = jwks.addr,
        introspection = introspection.addr,
        idp = idp.addr,
    );
    let bg = Bindgate::start(&pki, &yaml);
    Setup {
        pki,
        introspection,
        idp,
        _jwks: jwks,
        es,
        bg,
        yaml,
    }
}

fn active(extra: Value) -> String {
    let mut a = json!({
        "active": true,
        "scope": "client-reg",
        "aud": ENDPOINT,
        "exp": now() + 600,
        "client_id": "c1",
    });
    for (k, v) in extra.as_object().unwrap() {
        a[k] = v.clone();
    }
    a.to_string()
}

impl Setup {
    fn call(&self, path: &str, token: &str, identity: Option<&str>) -> Answer {
        let client = self.bg.client(&self.pki, identity, Http::One);
        let resp = client
            .post(self.bg.url(path))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .expect("an answer");
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let (challenge, retry_after) = (header("www-authenticate"), header("retry-after"));
        Answer {
            status: resp.status().as_u16(),
            challenge,
            retry_after,
            body: resp.json().unwrap_or(Value::Null),
        }
    }

    fn register(&self, token: &str) -> Answer {
        self.call("/clients", token, None)
    }

    fn asked(&self) -> usize {
        self.introspection.requests().len()
    }
}

#[test]
fn an_active_opaque_token_is_introspected_once_and_checked_on_every_request() {
    let s = setup(false);
    s.introspection.set_reply(200, &active(json!({})));
    let token = "2YotnFZFEjr1zCsicMWpAA";
    assert_eq!(s.register(token).status, 200);
    // RFC 7662 §2.1, authenticated with client_secret_basic (id and secret form-encoded).
    let asked = s.introspection.requests();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].method, "POST");
    assert_eq!(asked[0].target, "/token/introspect");
    assert_eq!(
        asked[0].body,
        b"token=2YotnFZFEjr1zCsicMWpAA&token_type_hint=access_token"
    );
    let basic = base64::engine::general_purpose::STANDARD.encode("bindgate:s3cret%3A%2F%2B");
    assert_eq!(
        asked[0].header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    // Cached: no second call; still checked (the route wants `read`, which it lacks).
    assert_eq!(s.register(token).status, 200);
    let a = s.call("/api/x", token, None);
    assert_eq!(a.status, 403);
    assert!(a.challenge.unwrap().contains("insufficient_scope"));
    assert_eq!(s.asked(), 1);
    assert_eq!(s.idp.wait_for(2).len(), 2);
    // The token is never logged.
    assert!(!s.bg.logs().contains(token));
    assert!(s.bg.metric("bindgate_introspection_cache_total{result=\"hit\"}") >= 2);
    assert_eq!(
        s.bg.metric("bindgate_introspection_requests_total{result=\"active\"}"),
        1
    );
    // Over HTTP/2 the cached answer serves and is checked the same way.
    let h2 =
        s.bg.client(&s.pki, None, Http::Alpn)
            .post(s.bg.url("/clients"))
            .bearer_auth(token)
            .body("{}")
            .send()
            .unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    assert_eq!(h2.status(), 200);
    assert_eq!(s.asked(), 1);
    // A JWT still goes the JWT way (tokens.format: auto), not to the endpoint.
    assert_eq!(s.register(&s.es.sign(&claims())).status, 200);
    assert_eq!(s.asked(), 1);
}

#[test]
fn binding_audience_and_time_are_checked_as_for_a_jwt() {
    let s = setup(false);
    let x5t = s.pki.thumbprint("client1");
    s.introspection
        .set_reply(200, &active(json!({"cnf": {"x5t#S256": x5t}})));
    let token = "bound-opaque-token";
    assert_eq!(s.call("/clients", token, Some("client1")).status, 200);
    for identity in [None, Some("client2")] {
        let a = s.call("/clients", token, identity);
        assert_eq!(a.status, 401);
        assert_eq!(a.challenge.as_deref(), Some(MISMATCH));
    }
    assert_eq!(s.asked(), 1, "the binding is checked on the cached answer");
    // Another audience, an expired token, another issuer: refused like JWT claims.
    for (answer, what) in [
        (
            active(json!({"aud": "https://elsewhere.example"})),
            "audience",
        ),
        (active(json!({"exp": now() - 3600})), "expired"),
        (active(json!({"iss": "https://evil.example.com"})), "issuer"),
        (active(json!({"exp": "tomorrow"})), "exp as a string"),
    ] {
        s.introspection.set_reply(200, &answer);
        let a = s.register(&format!("token-{what}").replace(' ', "-"));
        assert_eq!(a.status, 401, "{what}: {:?}", a.body);
        assert_eq!(a.body["error"], "invalid_token", "{what}");
    }
}

#[test]
fn inactive_is_401_for_negative_ttl_then_asked_again() {
    let s = setup(false);
    let token = "soon-active";
    let a = s.register(token);
    assert_eq!(a.status, 401);
    assert_eq!(
        a.body["error_description"],
        "The access token is not active"
    );
    s.introspection.set_reply(200, &active(json!({})));
    // Within negative_ttl (1 s) the cached answer stands.
    assert_eq!(s.register(token).status, 401);
    assert_eq!(s.asked(), 1);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(s.register(token).status, 200);
    assert_eq!(s.asked(), 2);
}

#[test]
fn no_usable_answer_is_503_never_401_nor_a_pass() {
    let s = setup(false);
    for (status, body, what) in [
        (500, r#"{"error":"down"}"#, "a 5xx"),
        (200, "not json", "not JSON"),
        (
            200,
            r#"{"active":"true","scope":"client-reg"}"#,
            "active as a string",
        ),
        (302, "{}", "a redirect"),
        (
            401,
            r#"{"error":"invalid_client"}"#,
            "bindgate's own credentials refused",
        ),
    ] {
        s.introspection.set_reply(status, body);
        let a = s.register(&format!("token-{status}-{}", what.len()));
        assert_eq!(a.status, 503, "{what}: {:?}", a.body);
        assert_eq!(a.body["error"], "temporarily_unavailable", "{what}");
        assert_eq!(a.retry_after.as_deref(), Some("1"), "{what}");
    }
    // A slow endpoint: the timeout (1 s) is a 503 too.
    s.introspection.set_reply(200, &active(json!({})));
    s.introspection.set_delay(Duration::from_millis(1500));
    assert_eq!(s.register("slow-token").status, 503);
    // Errors are not cached: once it answers, the same token passes.
    s.introspection.set_delay(Duration::ZERO);
    assert_eq!(s.register("slow-token").status, 200);
    assert!(
        s.idp.requests().len() == 1,
        "only the accepted request was forwarded"
    );
    assert!(s.bg.metric("bindgate_introspection_requests_total{result=\"error\"}") >= 6);
}

#[test]
fn concurrent_requests_with_one_new_token_make_one_call() {
    let s = setup(false);
    s.introspection.set_reply(200, &active(json!({})));
    s.introspection.set_delay(Duration::from_millis(300));
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..40)
            .map(|_| scope.spawn(|| s.register("one-new-token").status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(s.asked(), 1);
}

#[test]
fn single_use_keys_an_opaque_token_by_its_jti_or_digest() {
    let s = setup(true);
    s.introspection.set_reply(200, &active(json!({})));
    assert_eq!(s.register("once-only").status, 200);
    let again = s.register("once-only");
    assert_eq!(again.status, 401, "{:?}", again.body);
    // Two tokens with one jti are one token.
    s.introspection
        .set_reply(200, &active(json!({"jti": "shared-jti"})));
    assert_eq!(s.register("first-with-jti").status, 200);
    assert_eq!(s.register("second-with-jti").status, 401);
}

/// Without a JWKS, a token-protected route takes introspected tokens alone.
#[test]
fn a_protected_route_with_introspection_and_no_jwks() {
    let pki = Pki::new();
    let introspection = Upstream::start();
    introspection.set_reply(200, r#"{"active":true,"scope":"read"}"#);
    let idp = Upstream::start();
    let yaml = format!(
        r#"{LISTENERS}introspection:
  endpoint: "http://{}/introspect"
  auth: {{client_secret_post: {{client_id: b, client_secret: {{value: s}}}}}}
upstreams:
  idp: {{address: "{}"}}
routes:
  - {{prefix: /api, upstream: idp, token: {{scope: [read]}}}}
"#,
        introspection.addr, idp.addr
    );
    let bg = Bindgate::start(&pki, &yaml);
    let resp = bg
        .client(&pki, None, Http::One)
        .get(bg.url("/api/x"))
        .bearer_auth("an-opaque-token")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        introspection.requests()[0].body,
        b"token=an-opaque-token&token_type_hint=access_token&client_id=b&client_secret=s"
    );
}

#[test]
fn a_reload_that_changes_introspection_forgets_its_answers_and_huge_answers_are_refused() {
    let s = setup(false);
    s.introspection.set_reply(200, &active(json!({})));
    assert_eq!(s.register("kept-until-reload").status, 200);
    assert_eq!(s.register("kept-until-reload").status, 200);
    assert_eq!(s.asked(), 1);
    // A reload that changes nothing of introspection keeps the cache...
    s.bg.reload_with(&s.pki, &s.yaml.replace("threads: 2", "threads: 2 "));
    assert_eq!(s.register("kept-until-reload").status, 200);
    assert_eq!(s.asked(), 1);
    // ...one that changes it (here its secret) starts a new one.
    s.bg.reload_with(&s.pki, &s.yaml.replace("s3cret:/+", "another-secret"));
    s.introspection.set_reply(200, r#"{"active":false}"#);
    assert_eq!(s.register("kept-until-reload").status, 401);
    assert_eq!(s.asked(), 2);
    // An answer of more than 64 KiB is no answer.
    let padding = "x".repeat(70 * 1024);
    s.introspection
        .set_reply(200, &active(json!({ "padding": padding })));
    let a = s.register("huge-answer");
    assert_eq!(a.status, 503, "{:?}", a.body);
}
