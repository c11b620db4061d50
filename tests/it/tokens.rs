//! Initial access tokens and certificate binding on the registration endpoint, through the real
//! server over TLS, with a JWKS server inside the test.

use crate::harness::tokens::*;
use crate::harness::*;
use jsonwebtoken::Algorithm;
use serde_json::json;
use std::time::{Duration, Instant};

const MISMATCH: &str = "Bearer error=\"invalid_token\", error_description=\"Missing / invalid client X.509 certificate for x5t#S256 bound access token\"";

struct Setup {
    pki: Pki,
    jwks: Upstream,
    idp: Upstream,
    bg: Bindgate,
}

struct Options {
    algorithms: &'static str,
    require_audience: bool,
    require_binding: bool,
    refresh: &'static str,
    min_refetch: &'static str,
    max_stale: &'static str,
    cache_entries: u64,
    /// false: the key server fails from the start, and the test waits for readiness itself.
    wait_ready: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            algorithms: "[RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA]",
            require_audience: true,
            require_binding: false,
            refresh: "5m",
            min_refetch: "1h",
            max_stale: "24h",
            cache_entries: 1000,
            wait_ready: true,
        }
    }
}

fn setup(signers: &[&Signer], o: Options) -> Setup {
    let pki = Pki::new();
    let jwks = Upstream::start();
    if o.wait_ready {
        jwks.set_reply(200, &crate::harness::tokens::jwks(signers));
    } else {
        // Not ready: the key server fails from the first fetch on.
        jwks.set_reply(503, "{}");
    }
    let idp = Upstream::start();
    std::fs::write(pki.path("api.token"), "session-api-token\n").unwrap();
    let yaml = format!(
        r#"
listen:
  address: "{{LISTEN}}"
  tls: {{cert: "{{PKI}}/server.crt", key: "{{PKI}}/server.key", client_auth: optional}}
admin: {{address: "{{ADMIN}}"}}
issuer: "{ISSUER}"
jwks:
  uri: "http://{jwks}/jwks.json"
  refresh_interval: {refresh}
  min_refetch_interval: {min_refetch}
  max_stale: {max_stale}
  fetch_timeout: 2s
tokens:
  algorithms: {algorithms}
  leeway: 5s
  verified_cache_entries: {cache}
registration:
  path: /clients
  endpoint_uri: "{ENDPOINT}"
  target: idp
  master_tokens:
    - file: "{{PKI}}/master.token"
  require_initial_access_token_audience: {aud}
  require_certificate_binding: {binding}
session_store:
  target: idp
  api_tokens:
    - file: "{{PKI}}/api.token"
upstreams:
  idp: {{address: "{idp}"}}
server: {{threads: 2}}
"#,
        jwks = jwks.addr,
        idp = idp.addr,
        refresh = o.refresh,
        min_refetch = o.min_refetch,
        max_stale = o.max_stale,
        algorithms = o.algorithms,
        cache = o.cache_entries,
        aud = o.require_audience,
        binding = o.require_binding,
    );
    let bg = Bindgate::spawn(&pki, &yaml, &[]);
    if o.wait_ready {
        bg.wait_ready();
    }
    Setup { pki, jwks, idp, bg }
}

struct Answer {
    status: u16,
    challenge: Option<String>,
    body: serde_json::Value,
}

impl Setup {
    fn register(&self, token: Option<&str>, identity: Option<&str>) -> Answer {
        let client = self.bg.client(&self.pki, identity, Http::One);
        let mut req = client
            .post(self.bg.url("/clients"))
            .header("content-type", "application/json")
            .body(r#"{"redirect_uris":["https://app.example.com/cb"]}"#);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        answer(req.send().expect("request"))
    }

    fn metric(&self, name: &str) -> f64 {
        self.bg
            .metrics()
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn answer(resp: reqwest::blocking::Response) -> Answer {
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.json().unwrap_or(serde_json::Value::Null);
    Answer {
        status,
        challenge,
        body,
    }
}

fn assert_invalid_token(a: &Answer, what: &str) {
    assert_eq!(a.status, 401, "{what}: {:?}", a.body);
    let c = a.challenge.as_deref().unwrap_or_default();
    assert!(
        c.starts_with("Bearer error=\"invalid_token\""),
        "{what}: {c}"
    );
    assert_eq!(a.body["error"], "invalid_token", "{what}");
}

#[test]
fn every_row_of_the_answer_table() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(&[&es], Options::default());

    // No credentials: a bare challenge.
    let a = s.register(None, None);
    assert_eq!(a.status, 401);
    assert_eq!(a.challenge.as_deref(), Some("Bearer"));
    assert_eq!(a.body["error"], "unauthorized");

    // Master token.
    assert_eq!(
        s.register(Some(&s.pki.token("master.token")), None).status,
        200
    );
    // A valid initial access token.
    assert_eq!(s.register(Some(&es.sign(&claims())), None).status, 200);

    // Every invalid case.
    let mut c = claims();
    c["iss"] = json!("https://evil.example.com");
    assert_invalid_token(&s.register(Some(&es.sign(&c)), None), "wrong iss");
    let mut c = claims();
    c["exp"] = json!(now() - 3600);
    assert_invalid_token(&s.register(Some(&es.sign(&c)), None), "expired");
    let mut c = claims();
    c["nbf"] = json!(now() + 3600);
    assert_invalid_token(&s.register(Some(&es.sign(&c)), None), "not yet valid");
    let mut c = claims();
    c["aud"] = json!("https://other.example.com");
    assert_invalid_token(&s.register(Some(&es.sign(&c)), None), "audience");
    let stranger = Signer::new(Algorithm::ES256, "es-1");
    assert_invalid_token(
        &s.register(Some(&stranger.sign(&claims())), None),
        "bad signature",
    );
    assert_invalid_token(
        &s.register(Some(&tampered(&es.sign(&claims()), &json!({"iss": ISSUER, "exp": now() + 60, "aud": ENDPOINT, "scp": ["client-reg", "admin"]}))), None),
        "tampered payload",
    );
    let unknown = s.register(Some("not-a-jwt"), None);
    assert_invalid_token(&unknown, "unknown master token");
    // Said as what it is, not as a malformed JWT.
    assert_eq!(
        unknown.body["error_description"],
        "The token is not a JWT (nor, on the registration endpoint, a master token)"
    );
    assert_invalid_token(&s.register(Some("aaa.bbb.ccc"), None), "malformed JWT");
    let unknown = Signer::new(Algorithm::ES256, "nobody-knows-me");
    assert_invalid_token(
        &s.register(Some(&unknown.sign(&claims())), None),
        "unknown key",
    );

    // Valid token without the scope.
    let mut c = claims();
    c["scp"] = json!(["openid"]);
    let a = s.register(Some(&es.sign(&c)), None);
    assert_eq!(a.status, 403);
    assert_eq!(
        a.challenge.as_deref(),
        Some("Bearer error=\"insufficient_scope\", error_description=\"The access token lacks the required scope client-reg\", scope=\"client-reg\"")
    );
    assert_eq!(a.body["error"], "insufficient_scope");

    // Malformed header, token sent twice.
    let client = s.bg.client(&s.pki, None, Http::One);
    let a = answer(
        client
            .post(s.bg.url("/clients"))
            .header("authorization", "Bearer two words")
            .send()
            .unwrap(),
    );
    assert_eq!(a.status, 400);
    assert!(a
        .challenge
        .unwrap()
        .starts_with("Bearer error=\"invalid_request\""));
    let token = es.sign(&claims());
    let a = answer(
        client
            .post(s.bg.url(&format!("/clients?access_token={token}")))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .unwrap(),
    );
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"], "invalid_request");
    let a = answer(
        client
            .post(s.bg.url("/clients"))
            .header("authorization", format!("Bearer {token}"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .unwrap(),
    );
    assert_eq!(a.status, 400);

    // Only the two accepted requests reached the provider.
    let got = s.idp.wait_for(2);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(s.metric("bindgate_authorisations_total{decision=\"rejected\"") >= 13.0);
}

#[test]
fn every_algorithm_is_accepted() {
    let signers: Vec<Signer> = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ]
    .into_iter()
    .map(|alg| Signer::new(alg, &format!("{alg:?}-key")))
    .collect();
    // A key whose JWK names its algorithm may be used with that algorithm only.
    let mut pinned = Signer::new(Algorithm::RS256, "rs-pinned");
    pinned.jwk["alg"] = json!("RS256");
    let mut refs: Vec<&Signer> = signers.iter().collect();
    refs.push(&pinned);
    let s = setup(&refs, Options::default());
    for signer in &signers {
        let a = s.register(Some(&signer.sign(&claims())), None);
        assert_eq!(a.status, 200, "{:?}: {:?}", signer.alg, a.body);
    }
    assert_eq!(s.register(Some(&pinned.sign(&claims())), None).status, 200);
    let mut header = pinned.header();
    header.alg = Algorithm::PS256;
    let other_alg = pinned.sign_with(header, &claims());
    assert_invalid_token(
        &s.register(Some(&other_alg), None),
        "JWK alg RS256, token PS256",
    );
    // An EC key cannot verify an RSA algorithm, whatever the token says.
    let mut header = signers[6].header();
    header.alg = Algorithm::RS256;
    let rs = &signers[0];
    let confused = rs.sign_with(header, &claims());
    assert_invalid_token(
        &s.register(Some(&confused), None),
        "RS256 token naming an EC key",
    );
    assert_eq!(s.idp.wait_for(10).len(), 10);
}

#[test]
fn algorithms_outside_the_list_and_key_confusion_are_refused() {
    let rs = Signer::new(Algorithm::RS256, "rs-1");
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(
        &[&rs, &es],
        Options {
            algorithms: "[ES256]",
            ..Options::default()
        },
    );
    assert_eq!(s.register(Some(&es.sign(&claims())), None).status, 200);
    assert_invalid_token(
        &s.register(Some(&rs.sign(&claims())), None),
        "RS256 not in tokens.algorithms",
    );
    // HS256 "signed" with the provider's public key as the HMAC secret.
    for secret in [
        rs.public_pem.clone(),
        es.public_pem.clone(),
        rs.jwk.to_string().into_bytes(),
    ] {
        assert_invalid_token(
            &s.register(Some(&hs256("rs-1", &secret, &claims())), None),
            "HS256 confusion",
        );
    }
    assert_invalid_token(
        &s.register(Some(&unsigned("es-1", &claims())), None),
        "alg none",
    );
    // A header that brings its own key (jwk, jku, x5u, x5c) is never followed.
    let attacker = Signer::new(Algorithm::ES256, "es-1");
    let mut header = attacker.header();
    header.jwk = serde_json::from_value(attacker.jwk.clone()).ok();
    header.jku = Some(format!("http://{}/attacker.json", s.jwks.addr));
    header.x5u = Some("https://attacker.example.com/cert.pem".into());
    let a = s.register(Some(&attacker.sign_with(header, &claims())), None);
    assert_invalid_token(&a, "embedded jwk / jku");
    assert!(
        s.jwks.requests().iter().all(|r| r.target == "/jwks.json"),
        "jku never fetched"
    );
    assert_eq!(s.idp.requests().len(), 1);
}

#[test]
fn rfc9068_tokens_and_typ() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(&[&es], Options::default());
    let c = json!({"iss": ISSUER, "aud": [ENDPOINT, "other"], "scope": "openid client-reg",
        "client_id": "abc", "exp": now() + 300, "iat": now(), "jti": "1"});
    let mut h = es.header();
    h.typ = Some("at+jwt".into());
    assert_eq!(s.register(Some(&es.sign_with(h, &c)), None).status, 200);
    let mut h = es.header();
    h.typ = Some("JWT".into());
    assert_eq!(
        s.register(Some(&es.sign_with(h, &claims())), None).status,
        200
    );
    let mut h = es.header();
    h.typ = Some("dpop+jwt".into());
    assert_invalid_token(
        &s.register(Some(&es.sign_with(h, &claims())), None),
        "typ dpop+jwt",
    );
    // The issuer is an accepted audience too.
    let mut c = claims();
    c["aud"] = json!(ISSUER);
    assert_eq!(s.register(Some(&es.sign(&c)), None).status, 200);
}

#[test]
fn claims_of_the_wrong_type_are_invalid_tokens_never_500() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(&[&es], Options::default());
    let header = json!({"alg": "ES256", "kid": "es-1"});
    let exp = now() + 600;
    for payload in [
        format!(r#"{{"iss":"{ISSUER}","aud":"{ENDPOINT}","scp":["client-reg"],"exp":"{exp}"}}"#),
        format!(r#"{{"iss":"{ISSUER}","aud":5,"scp":["client-reg"],"exp":{exp}}}"#),
        format!(
            r#"{{"iss":"{ISSUER}","aud":"{ENDPOINT}","scp":["client-reg"],"exp":{exp},"cnf":"x"}}"#
        ),
        format!(r#"{{"iss":"{ISSUER}","aud":"{ENDPOINT}","scp":{{"a":1}},"exp":{exp}}}"#),
        format!(r#"{{"iss":["{ISSUER}"],"aud":"{ENDPOINT}","scp":["client-reg"],"exp":{exp}}}"#),
        format!(
            r#"{{"iss":"{ISSUER}","aud":"{ENDPOINT}","scp":["client-reg"],"exp":{exp},"exp":{exp}}}"#
        ),
        "[]".to_string(),
        "\u{0}\u{1}garbage".to_string(),
    ] {
        let a = s.register(Some(&raw_signed(&es, &header, &payload)), None);
        assert_invalid_token(&a, &payload);
    }
    for header in [
        json!({"alg": "ES256", "kid": 5}),
        json!({"alg": 256}),
        json!([1]),
        json!({"alg": "ES256", "kid": "es-1", "crit": ["exp"]}),
    ] {
        let a = s.register(Some(&raw_signed(&es, &header, &claims().to_string())), None);
        assert_invalid_token(&a, &header.to_string());
    }
    assert!(s.idp.requests().is_empty());
}

#[test]
fn certificate_bound_tokens() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(&[&es], Options::default());
    let token = es.sign(&bound(&s.pki.thumbprint("client1")));
    assert_eq!(s.register(Some(&token), Some("client1")).status, 200);
    // Again: verified a second time, and now cached (a token enters the verified-token cache
    // on its second use); the refusals below are cache hits, and still check the binding.
    assert_eq!(s.register(Some(&token), Some("client1")).status, 200);
    for (identity, what) in [
        (Some("client2"), "another certificate"),
        (Some("selfsigned"), "a self-signed one"),
        (None, "none"),
    ] {
        let a = s.register(Some(&token), identity);
        assert_eq!(a.status, 401, "{what}");
        assert_eq!(a.challenge.as_deref(), Some(MISMATCH), "{what}");
        assert_eq!(a.body["error"], "invalid_token");
        assert_eq!(
            a.body["error_description"],
            "Missing / invalid client X.509 certificate for x5t#S256 bound access token"
        );
    }
    // A token bound to the self-signed certificate, presented with it (RFC 8705 §2.2).
    let selfsigned = es.sign(&bound(&s.pki.thumbprint("selfsigned")));
    assert_eq!(
        s.register(Some(&selfsigned), Some("selfsigned")).status,
        200
    );
    assert_eq!(s.register(Some(&selfsigned), Some("client1")).status, 401);
    // Over HTTP/2 too.
    let client = s.bg.client(&s.pki, Some("client1"), Http::Alpn);
    let resp = client
        .post(s.bg.url("/clients"))
        .header("authorization", format!("Bearer {token}"))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(s.idp.wait_for(4).len(), 4);
    assert!(s.metric("bindgate_verified_token_cache_total{result=\"hit\"}") >= 1.0);
}

#[test]
fn audience_switch_both_ways() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let mut c = claims();
    c["aud"] = json!("https://somewhere.else.example.com");
    let strict = setup(&[&es], Options::default());
    assert_invalid_token(
        &strict.register(Some(&es.sign(&c)), None),
        "audience checked",
    );
    let mut no_aud = claims();
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_invalid_token(
        &strict.register(Some(&es.sign(&no_aud)), None),
        "no audience",
    );
    let lax = setup(
        &[&es],
        Options {
            require_audience: false,
            ..Options::default()
        },
    );
    assert_eq!(lax.register(Some(&es.sign(&c)), None).status, 200);
    assert_eq!(lax.register(Some(&es.sign(&no_aud)), None).status, 200);
}

#[test]
fn require_certificate_binding() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(
        &[&es],
        Options {
            require_binding: true,
            ..Options::default()
        },
    );
    assert_invalid_token(
        &s.register(Some(&es.sign(&claims())), Some("client1")),
        "unbound token",
    );
    let token = es.sign(&bound(&s.pki.thumbprint("client1")));
    assert_eq!(s.register(Some(&token), Some("client1")).status, 200);
    // Master tokens are not JWTs and are not subject to binding.
    assert_eq!(
        s.register(Some(&s.pki.token("master.token")), None).status,
        200
    );
}

#[test]
fn key_rotation_new_kid_is_accepted_on_first_use() {
    let old = Signer::new(Algorithm::RS256, "2026-old");
    let s = setup(&[&old], Options::default());
    assert_eq!(s.register(Some(&old.sign(&claims())), None).status, 200);
    let new = Signer::new(Algorithm::ES256, "2026-new");
    s.jwks.set_reply(200, &jwks(&[&new]));
    assert_eq!(s.register(Some(&new.sign(&claims())), None).status, 200);
    assert_eq!(s.metric("bindgate_jwks_unknown_kid_refetches_total"), 1.0);
    let forced = s.jwks.requests().last().cloned().unwrap();
    assert_eq!(forced.header("cache-control"), Some("no-cache"));
    // The old key left the set: its tokens, even one verified before, are refused now.
    assert_invalid_token(&s.register(Some(&old.sign(&claims())), None), "removed key");
}

#[test]
fn a_key_replaced_under_the_same_kid_revokes_what_it_verified() {
    let leaked = Signer::new(Algorithm::ES256, "k1");
    let s = setup(
        &[&leaked],
        Options {
            refresh: "200ms",
            ..Options::default()
        },
    );
    let cached = leaked.sign(&claims());
    let mut other = claims();
    other["jti"] = json!("unused-before-the-replacement");
    let unused = leaked.sign(&other);
    // Verified twice (cached on its second use), then served from the verified-token cache.
    for _ in 0..3 {
        assert_eq!(s.register(Some(&cached), None).status, 200);
    }
    assert!(s.metric("bindgate_verified_token_cache_total{result=\"hit\"}") >= 1.0);
    // The provider replaces the leaked key under the same kid.
    let replacement = Signer::new(Algorithm::ES256, "k1");
    s.jwks.set_reply(200, &jwks(&[&replacement]));
    // The next refresh (every 200ms) brings the new key: from then on, the cached token is
    // refused although its cache entry had not expired.
    let deadline = Instant::now() + Duration::from_secs(20);
    let a = loop {
        let a = s.register(Some(&cached), None);
        if a.status != 200 || Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_invalid_token(&a, "a cached token of the replaced key");
    assert_eq!(a.body["error_description"], "Invalid token signature");
    assert_invalid_token(
        &s.register(Some(&unused), None),
        "an unused token of the replaced key",
    );
    assert_eq!(
        s.register(Some(&replacement.sign(&claims())), None).status,
        200
    );
    // And it stays refused: nothing put the old verification back.
    for _ in 0..5 {
        assert_invalid_token(&s.register(Some(&cached), None), "still the replaced key");
    }
}

#[test]
fn key_server_down_keeps_known_keys() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(
        &[&es],
        Options {
            refresh: "200ms",
            cache_entries: 0,
            ..Options::default()
        },
    );
    s.jwks.set_reply(503, r#"{"error":"down"}"#);
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.metric(&format!(
        "bindgate_jwks_fetches_total{{issuer=\"{ISSUER}\",outcome=\"failed\"}}"
    )) < 1.0
    {
        assert!(Instant::now() < deadline, "no failed fetch seen");
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..3 {
        assert_eq!(s.register(Some(&es.sign(&claims())), None).status, 200);
    }
    assert!(s.metric("bindgate_jwks_stale_key_uses_total") >= 1.0);
    let ready = reqwest::blocking::get(s.bg.admin_url("/readyz")).unwrap();
    assert_eq!(ready.status(), 200, "known keys keep it ready");
}

#[test]
fn keys_are_dropped_after_max_stale() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(
        &[&es],
        Options {
            refresh: "200ms",
            max_stale: "1s",
            ..Options::default()
        },
    );
    assert_eq!(s.register(Some(&es.sign(&claims())), None).status, 200);
    s.jwks.set_reply(500, "{}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = reqwest::blocking::get(s.bg.admin_url("/readyz"))
            .unwrap()
            .status();
        if ready == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "keys never dropped");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_invalid_token(
        &s.register(Some(&es.sign(&claims())), None),
        "no keys after max_stale",
    );
    // The key server comes back: keys load again.
    s.jwks.set_reply(200, &jwks(&[&es]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::blocking::get(s.bg.admin_url("/readyz"))
        .unwrap()
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "keys never reloaded");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.register(Some(&es.sign(&claims())), None).status, 200);
}

#[test]
fn unknown_kid_flood_fetches_at_most_once_per_interval() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(&[&es], Options::default());
    let before = s.jwks.requests().len();
    let forged = Signer::new(Algorithm::ES256, "x");
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let pki_dir = s.pki.dir.path().to_path_buf();
            let url = s.bg.url("/clients");
            let listen = s.bg.listen;
            let tokens: Vec<String> = (0..15)
                .map(|i| {
                    let mut h = forged.header();
                    h.kid = Some(format!("flood-{t}-{i}"));
                    forged.sign_with(h, &claims())
                })
                .collect();
            std::thread::spawn(move || {
                let ca =
                    reqwest::Certificate::from_pem(&std::fs::read(pki_dir.join("ca.crt")).unwrap())
                        .unwrap();
                let client = reqwest::blocking::Client::builder()
                    .use_native_tls()
                    .add_root_certificate(ca)
                    .resolve("localhost", listen)
                    .build()
                    .unwrap();
                tokens
                    .iter()
                    .map(|t| {
                        client
                            .post(&url)
                            .bearer_auth(t)
                            .send()
                            .unwrap()
                            .status()
                            .as_u16()
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap().iter().all(|s| *s == 401));
    }
    let fetches = s.jwks.requests().len() - before;
    assert_eq!(fetches, 1, "60 unknown kids, one refetch");
    assert_eq!(s.metric("bindgate_jwks_unknown_kid_refetches_total"), 1.0);
    assert_eq!(s.register(Some(&es.sign(&claims())), None).status, 200);
}

#[test]
fn readyz_waits_for_the_first_key_set() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(
        &[&es],
        Options {
            wait_ready: false,
            ..Options::default()
        },
    );
    // Until a key set is loaded, /readyz is 503 and tokens are refused (bounded wait for the
    // listener to be up first).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::blocking::get(s.bg.admin_url("/readyz")) {
            let body: serde_json::Value = r.json().unwrap();
            if body["reason"] == "no signing keys are loaded" {
                break;
            }
            assert_ne!(body["status"], "ready", "ready without keys");
        }
        assert!(Instant::now() < deadline, "listener never came up");
        std::thread::sleep(Duration::from_millis(25));
    }
    s.jwks.set_reply(200, &jwks(&[&es]));
    s.bg.wait_ready();
    assert_eq!(s.register(Some(&es.sign(&claims())), None).status, 200);
}

#[test]
fn session_store_requires_an_api_token() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(&[&es], Options::default());
    let client = s.bg.client(&s.pki, None, Http::One);
    let url = s.bg.url("/session-store/rest/v2/sessions");
    let a = answer(client.get(&url).send().unwrap());
    assert_eq!((a.status, a.challenge.as_deref()), (401, Some("Bearer")));
    let a = answer(client.get(&url).bearer_auth("wrong").send().unwrap());
    assert_invalid_token(&a, "wrong API token");
    let a = answer(
        client
            .get(&url)
            .bearer_auth(s.pki.token("master.token"))
            .send()
            .unwrap(),
    );
    assert_invalid_token(&a, "a master token is not a session store token");
    let resp = client
        .get(&url)
        .bearer_auth("session-api-token")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = s.idp.wait_for(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].target, "/session-store/rest/v2/sessions");
}

#[test]
fn client_uris_pass_any_bearer_token_to_the_target_and_listing_needs_the_master() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(&[&es], Options::default());
    let client = s.bg.client(&s.pki, None, Http::One);
    let a = answer(client.get(s.bg.url("/clients/abc")).send().unwrap());
    assert_eq!(a.status, 401);
    let resp = client
        .get(s.bg.url("/clients/abc"))
        .bearer_auth("registration-access-token")
        .send()
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the provider checks its registration access token"
    );
    let a = answer(
        client
            .get(s.bg.url("/clients"))
            .bearer_auth(es.sign(&claims()))
            .send()
            .unwrap(),
    );
    assert_invalid_token(&a, "listing with an initial access token");
    let resp = client
        .get(s.bg.url("/clients"))
        .bearer_auth(s.pki.token("master.token"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(s.idp.wait_for(2).len(), 2);
}

#[test]
fn jwks_over_https_with_a_private_ca() {
    let es = Signer::new(Algorithm::ES256, "es-tls");
    let pki = Pki::new();
    let jwks_server = Upstream::start_tls(&pki.path("server.crt"), &pki.path("server.key"));
    jwks_server.set_reply(200, &jwks(&[&es]));
    let idp = Upstream::start();
    let yaml = format!(
        r#"
listen:
  address: "{{LISTEN}}"
  tls: {{cert: "{{PKI}}/server.crt", key: "{{PKI}}/server.key"}}
admin: {{address: "{{ADMIN}}"}}
issuer: "{ISSUER}"
jwks:
  uri: "https://localhost:{port}/jwks.json"
  ca: "{{PKI}}/ca.crt"
registration:
  endpoint_uri: "{ENDPOINT}"
  target: idp
upstreams:
  idp: {{address: "{idp}"}}
server: {{threads: 1}}
"#,
        port = jwks_server.addr.port(),
        idp = idp.addr
    );
    let bg = Bindgate::start(&pki, &yaml);
    let client = bg.client(&pki, None, Http::One);
    let resp = client
        .post(bg.url("/clients"))
        .bearer_auth(es.sign(&claims()))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(jwks_server.requests()[0].target, "/jwks.json");
}

#[test]
fn a_hanging_key_server_never_hangs_requests() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(&[&es], Options::default());
    // From now on the key server takes 30 s to answer; fetch_timeout is 2 s.
    s.jwks.set_delay(Duration::from_secs(30));
    let stranger = Signer::new(Algorithm::ES256, "unknown-kid");
    let unknown = stranger.sign(&claims());
    let known = es.sign(&claims());
    let client = s.bg.client(&s.pki, None, Http::One);
    let url = s.bg.url("/clients");
    let fetches_before = s.jwks.requests().len();
    let waiting = {
        let client = client.clone();
        let url = url.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let status = client
                .post(url)
                .bearer_auth(unknown)
                .body("{}")
                .send()
                .map(|r| r.status().as_u16());
            (status, started.elapsed())
        })
    };
    // While the refetch for the unknown kid waits on the key server (it has arrived there),
    // a known key still works.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.jwks.requests().len() == fetches_before {
        assert!(
            Instant::now() < deadline,
            "the refetch never reached the key server"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let resp = client
        .post(&url)
        .bearer_auth(&known)
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, took) = waiting.join().unwrap();
    assert_eq!(
        status.unwrap(),
        401,
        "the unknown kid is refused once the fetch gives up"
    );
    assert!(
        took < Duration::from_secs(20),
        "bounded by fetch_timeout, took {took:?}"
    );
    assert!(
        s.metric(&format!(
            "bindgate_jwks_fetches_total{{issuer=\"{ISSUER}\",outcome=\"failed\"}}"
        )) >= 1.0
    );
}

/// A failed key fetch names its cause: refused, TLS, HTTP status, not a key set.
#[test]
fn a_key_fetch_failure_names_its_cause() {
    let pki = Pki::new();
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let tls = Upstream::start_tls(&pki.path("server.crt"), &pki.path("server.key"));
    let status = Upstream::start();
    status.set_reply(404, "{}");
    let garbage = Upstream::start();
    garbage.set_reply(200, "[1, 2, 3]");
    for (uri, cause) in [
        (format!("http://{dead}/jwks.json"), "connection refused"),
        // The test CA is not among the system's roots: the server's certificate is not trusted.
        (
            format!("https://localhost:{}/jwks.json", tls.addr.port()),
            "TLS",
        ),
        (format!("http://{}/jwks.json", status.addr), "HTTP 404"),
        (
            format!("http://{}/jwks.json", garbage.addr),
            "not a JWK set",
        ),
    ] {
        let yaml = format!(
            "{LISTENERS}issuer: \"{ISSUER}\"\njwks: {{uri: \"{uri}\", fetch_timeout: 2s}}\nroutes: []\n"
        );
        let bg = Bindgate::spawn(&pki, &yaml, &[]);
        let log = bg.wait_log("key set fetch failed");
        let line = log
            .lines()
            .find(|l| l.contains("key set fetch failed"))
            .unwrap()
            .to_string();
        assert!(line.contains(cause), "{cause}: {line}");
    }
}
