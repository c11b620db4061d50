//! DPoP (RFC 9449) and token-protected routes through the real server over TLS. Proofs and
//! tokens are minted here with `jsonwebtoken` (ring), and key thumbprints computed here, not
//! with bindgate's code; a recording upstream shows what was forwarded.

use crate::harness::tokens::*;
use crate::harness::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const MISMATCH: &str = "Bearer error=\"invalid_token\", error_description=\"Missing / invalid client X.509 certificate for x5t#S256 bound access token\"";

struct Setup {
    pki: Pki,
    issuer: Signer,
    _jwks: Upstream,
    idp: Upstream,
    bg: Bindgate,
}

fn setup(require_nonce: bool) -> Setup {
    setup_with(require_nonce, "")
}

/// The test configuration; `dpop_extra` goes under `dpop:` (e.g. `replay_cache_entries`), and
/// `dpop_extra` "off" leaves DPoP out.
fn yaml(
    jwks: std::net::SocketAddr,
    idp: std::net::SocketAddr,
    require_nonce: bool,
    dpop_extra: &str,
) -> String {
    let dpop = if dpop_extra == "off" {
        String::new()
    } else {
        format!(
            r#"dpop:
  origins: ["https://localhost:{{PORT}}"]
  max_age: 60s
  require_nonce: {require_nonce}
  algorithms: [ES256, RS256, PS256, EdDSA]
{dpop_extra}"#
        )
    };
    format!(
        r#"{LISTENERS}issuer: "{ISSUER}"
jwks: {{uri: "http://{jwks}/jwks.json"}}
tokens: {{leeway: 5s}}
{dpop}registration:
  endpoint_uri: "{ENDPOINT}"
  target: idp
  master_tokens: [{{file: "{{PKI}}/master.token"}}]
  require_proof_of_possession: {require_nonce}
upstreams:
  idp: {{address: "{idp}"}}
routes:
  - prefix: /userinfo
    upstream: idp
    token: {{scope: [openid, profile], audience: ["https://api.example.com"]}}
  - prefix: /api
    upstream: idp
    token: {{require_proof_of_possession: true}}
  - prefix: /open
    upstream: idp
server: {{threads: 2}}
"#
    )
}

fn setup_with(require_nonce: bool, dpop_extra: &str) -> Setup {
    let issuer = Signer::new(Algorithm::ES256, "issuer-1");
    let pki = Pki::new();
    let (jwks_server, idp) = key_server_and_provider(&[&issuer]);
    let yaml = yaml(jwks_server.addr, idp.addr, require_nonce, dpop_extra);
    let bg = Bindgate::start(&pki, &yaml);
    Setup {
        pki,
        issuer,
        _jwks: jwks_server,
        idp,
        bg,
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7638 thumbprint of an EC public JWK, computed here.
fn thumbprint(jwk: &Value) -> String {
    let canonical = format!(
        r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["crv"].as_str().unwrap(),
        jwk["x"].as_str().unwrap(),
        jwk["y"].as_str().unwrap()
    );
    b64(&openssl::sha::sha256(canonical.as_bytes()))
}

/// The public members of a signer's JWK (no kid, use or alg).
fn public(jwk: &Value) -> Value {
    json!({"kty": jwk["kty"], "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"]})
}

/// A proof key and what a proof says.
struct Proof<'a> {
    key: &'a Signer,
    htm: &'a str,
    htu: String,
    token: Option<&'a str>,
    iat: i64,
    jti: String,
    nonce: Option<String>,
}

impl Proof<'_> {
    fn claims(&self) -> Value {
        let mut c = json!({"jti": self.jti, "htm": self.htm, "htu": self.htu, "iat": self.iat});
        if let Some(t) = self.token {
            c["ath"] = json!(b64(&openssl::sha::sha256(t.as_bytes())));
        }
        if let Some(n) = &self.nonce {
            c["nonce"] = json!(n);
        }
        c
    }

    fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public(&self.key.jwk)})
    }

    fn sign(&self) -> String {
        raw_signed(self.key, &self.header(), &self.claims().to_string())
    }

    fn sign_with(&self, header: Value, claims: Value) -> String {
        raw_signed(self.key, &header, &claims.to_string())
    }
}

fn jti() -> String {
    let mut b = [0u8; 16];
    openssl::rand::rand_bytes(&mut b).unwrap();
    b64(&b)
}

#[derive(Debug)]
struct Answer {
    status: u16,
    challenges: Vec<String>,
    nonce: Option<String>,
    body: Value,
}

impl Setup {
    fn url(&self, path: &str) -> String {
        self.bg.url(path)
    }

    fn htu(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.bg.port)
    }

    fn proof<'a>(&self, key: &'a Signer, htm: &'a str, path: &str, token: &'a str) -> Proof<'a> {
        Proof {
            key,
            htm,
            htu: self.htu(path),
            token: Some(token),
            iat: now(),
            jti: jti(),
            nonce: None,
        }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        authorization: Option<String>,
        proofs: &[String],
        identity: Option<&str>,
    ) -> Answer {
        let client = self.bg.client(&self.pki, identity, Http::One);
        let mut req = client
            .request(method.parse().unwrap(), self.url(path))
            .header("content-type", "application/json");
        if method == "POST" {
            req = req.body(r#"{"redirect_uris":["https://app.example.com/cb"]}"#);
        }
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        for p in proofs {
            req = req.header("dpop", p);
        }
        let resp = req.send().unwrap();
        Answer {
            status: resp.status().as_u16(),
            challenges: resp
                .headers()
                .get_all("www-authenticate")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect(),
            nonce: resp
                .headers()
                .get("dpop-nonce")
                .map(|v| v.to_str().unwrap().to_string()),
            body: resp.json().unwrap_or(Value::Null),
        }
    }

    fn token(&self, cnf: Value, scope: &[&str], aud: &str) -> String {
        let mut c = claims();
        c["scp"] = json!(scope);
        c["aud"] = json!(aud);
        if !cnf.is_null() {
            c["cnf"] = cnf;
        }
        self.issuer.sign(&c)
    }
}

fn assert_proof_refused(a: &Answer, what: &str) {
    assert_eq!(a.status, 401, "{what}: {a:?}");
    let c = a.challenges.first().map(String::as_str).unwrap_or_default();
    assert!(
        c.starts_with("DPoP error=\"invalid_dpop_proof\", error_description=\""),
        "{what}: {c}"
    );
    assert!(
        c.ends_with("algs=\"ES256 RS256 PS256 EdDSA\""),
        "{what}: {c}"
    );
    assert_eq!(a.body["error"], "invalid_dpop_proof", "{what}");
}

#[test]
fn dpop_bound_registration_and_every_proof_check() {
    let s = setup(false);
    let key = Signer::new(Algorithm::ES256, "proof-key");
    let other = Signer::new(Algorithm::ES256, "other-key");
    let jkt = thumbprint(&key.jwk);
    let token = s.token(json!({ "jkt": jkt }), &["client-reg"], ENDPOINT);
    let dpop = || Some(format!("DPoP {token}"));

    // A valid proof: forwarded with Authorization and DPoP as sent.
    let proof = s.proof(&key, "POST", "/clients", &token).sign();
    let a = s.send(
        "POST",
        "/clients",
        dpop(),
        std::slice::from_ref(&proof),
        None,
    );
    assert_eq!(a.status, 200, "{a:?}");
    let got = s.idp.wait_for(1);
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("DPoP {token}").as_str())
    );
    assert_eq!(got[0].header("dpop"), Some(proof.as_str()));

    // The same proof again: a replay.
    let a = s.send(
        "POST",
        "/clients",
        dpop(),
        std::slice::from_ref(&proof),
        None,
    );
    assert_proof_refused(&a, "replayed jti");
    assert!(a.challenges[0].contains("already used"));

    // Each check of RFC 9449 §4.3 failing on its own.
    let base = || s.proof(&key, "POST", "/clients", &token);
    let mut cases: Vec<(&str, String)> = vec![
        (
            "wrong htm",
            Proof {
                htm: "GET",
                ..base()
            }
            .sign(),
        ),
        (
            "another origin",
            Proof {
                htu: "https://evil.example.com/clients".into(),
                ..base()
            }
            .sign(),
        ),
        (
            "another path",
            Proof {
                htu: s.htu("/other"),
                ..base()
            }
            .sign(),
        ),
        (
            "a query in htu",
            Proof {
                htu: s.htu("/clients?a=1"),
                ..base()
            }
            .sign(),
        ),
        (
            "stale iat",
            Proof {
                iat: now() - 120,
                ..base()
            }
            .sign(),
        ),
        (
            "future iat",
            Proof {
                iat: now() + 120,
                ..base()
            }
            .sign(),
        ),
        (
            "wrong ath",
            Proof {
                token: Some("another-token"),
                ..base()
            }
            .sign(),
        ),
        (
            "no ath",
            Proof {
                token: None,
                ..base()
            }
            .sign(),
        ),
        (
            "a jwk that is not cnf.jkt",
            Proof {
                key: &other,
                ..base()
            }
            .sign(),
        ),
    ];
    let p = base();
    let mut with_private = p.header();
    with_private["jwk"]["d"] = json!(b64(&[1u8; 32]));
    cases.push((
        "a private key in jwk",
        p.sign_with(with_private, p.claims()),
    ));
    let p = base();
    let mut no_typ = p.header();
    no_typ.as_object_mut().unwrap().remove("typ");
    cases.push(("typ missing", p.sign_with(no_typ, p.claims())));
    let p = base();
    let mut jwt_typ = p.header();
    jwt_typ["typ"] = json!("JWT");
    cases.push(("typ JWT", p.sign_with(jwt_typ, p.claims())));
    let p = base();
    let mut no_jwk = p.header();
    no_jwk.as_object_mut().unwrap().remove("jwk");
    cases.push(("jwk missing", p.sign_with(no_jwk, p.claims())));
    let p = base();
    let mut no_jti = p.claims();
    no_jti.as_object_mut().unwrap().remove("jti");
    cases.push(("jti missing", p.sign_with(p.header(), no_jti)));
    let p = base();
    let none_header = json!({"typ": "dpop+jwt", "alg": "none", "jwk": public(&key.jwk)});
    cases.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(none_header.to_string().as_bytes()),
            b64(p.claims().to_string().as_bytes())
        ),
    ));
    let p = base();
    let mut hs = Header::new(Algorithm::HS256);
    hs.typ = Some("dpop+jwt".into());
    hs.jwk = Some(serde_json::from_value(public(&key.jwk)).unwrap());
    cases.push((
        "alg HS256",
        jsonwebtoken::encode(&hs, &p.claims(), &EncodingKey::from_secret(b"secret")).unwrap(),
    ));
    let p = base();
    let signed = p.sign();
    let mut parts: Vec<&str> = signed.split('.').collect();
    let tampered_claims = b64(
        json!({"jti": jti(), "htm": "POST", "htu": s.htu("/clients"), "iat": now()})
            .to_string()
            .as_bytes(),
    );
    parts[1] = &tampered_claims;
    cases.push(("bad signature", parts.join(".")));
    cases.push(("not a JWS", "not-a-proof".into()));
    for (what, proof) in &cases {
        let a = s.send(
            "POST",
            "/clients",
            dpop(),
            std::slice::from_ref(proof),
            None,
        );
        assert_proof_refused(&a, what);
    }
    // No proof, and two proofs.
    assert_proof_refused(&s.send("POST", "/clients", dpop(), &[], None), "no proof");
    let two = [base().sign(), base().sign()];
    assert_proof_refused(
        &s.send("POST", "/clients", dpop(), &two, None),
        "two DPoP headers",
    );

    // The downgrade (RFC 9449 §7.2): a DPoP-bound token as a bearer token, proof or not.
    for proofs in [vec![], vec![base().sign()]] {
        let a = s.send(
            "POST",
            "/clients",
            Some(format!("Bearer {token}")),
            &proofs,
            None,
        );
        assert_eq!(a.status, 401, "{a:?}");
        assert!(
            a.challenges[0].starts_with("Bearer error=\"invalid_token\""),
            "{a:?}"
        );
    }
    // An unbound token with the DPoP scheme: DPoP's invalid_token.
    let unbound = s.token(Value::Null, &["client-reg"], ENDPOINT);
    let a = s.send(
        "POST",
        "/clients",
        Some(format!("DPoP {unbound}")),
        &[s.proof(&key, "POST", "/clients", &unbound).sign()],
        None,
    );
    assert_eq!(a.status, 401, "{a:?}");
    assert!(
        a.challenges[0].starts_with("DPoP error=\"invalid_token\""),
        "{a:?}"
    );
    // No credentials: the bare Bearer challenge, then DPoP's.
    let a = s.send("POST", "/clients", None, &[], None);
    assert_eq!(
        a.challenges,
        vec![
            "Bearer".to_string(),
            "DPoP algs=\"ES256 RS256 PS256 EdDSA\"".to_string()
        ]
    );
    assert_eq!(s.idp.requests().len(), 1, "nothing refused was forwarded");
    let metrics = s.bg.metrics();
    assert!(
        metrics.contains("bindgate_dpop_proofs_total{reason=\"replay\",result=\"refused\"} 1"),
        "{metrics}"
    );
}

#[test]
fn both_bindings_must_hold() {
    let s = setup(false);
    let key = Signer::new(Algorithm::ES256, "proof-key");
    let cnf = json!({"jkt": thumbprint(&key.jwk), "x5t#S256": s.pki.thumbprint("client1")});
    let token = s.token(cnf, &["client-reg"], ENDPOINT);
    let auth = || Some(format!("DPoP {token}"));
    let proof = || vec![s.proof(&key, "POST", "/clients", &token).sign()];
    assert_eq!(
        s.send("POST", "/clients", auth(), &proof(), Some("client1"))
            .status,
        200
    );
    let a = s.send("POST", "/clients", auth(), &proof(), None);
    assert_eq!(a.status, 401);
    assert_eq!(a.challenges, vec![MISMATCH.to_string()], "no certificate");
    let a = s.send("POST", "/clients", auth(), &proof(), Some("client2"));
    assert_eq!(
        a.challenges,
        vec![MISMATCH.to_string()],
        "another certificate"
    );
    assert_proof_refused(
        &s.send("POST", "/clients", auth(), &[], Some("client1")),
        "no proof",
    );
    assert_eq!(s.idp.requests().len(), 1);
}

#[test]
fn nonce_round_trip_and_proof_of_possession_required() {
    let s = setup(true);
    let key = Signer::new(Algorithm::ES256, "proof-key");
    let token = s.token(
        json!({ "jkt": thumbprint(&key.jwk) }),
        &["client-reg"],
        ENDPOINT,
    );
    let auth = || Some(format!("DPoP {token}"));
    let a = s.send(
        "POST",
        "/clients",
        auth(),
        &[s.proof(&key, "POST", "/clients", &token).sign()],
        None,
    );
    assert_eq!(a.status, 401, "{a:?}");
    assert!(
        a.challenges[0].starts_with("DPoP error=\"use_dpop_nonce\""),
        "{a:?}"
    );
    let nonce = a.nonce.expect("a DPoP-Nonce header");
    let with_nonce = Proof {
        nonce: Some(nonce.clone()),
        ..s.proof(&key, "POST", "/clients", &token)
    };
    assert_eq!(
        s.send("POST", "/clients", auth(), &[with_nonce.sign()], None)
            .status,
        200
    );
    // A nonce bindgate did not issue is not one.
    let forged = Proof {
        nonce: Some(b64(&[0u8; 24])),
        ..s.proof(&key, "POST", "/clients", &token)
    };
    let a = s.send("POST", "/clients", auth(), &[forged.sign()], None);
    assert!(
        a.challenges[0].starts_with("DPoP error=\"use_dpop_nonce\""),
        "{a:?}"
    );
    // registration.require_proof_of_possession: an unbound initial access token is refused.
    let unbound = s.token(Value::Null, &["client-reg"], ENDPOINT);
    let a = s.send(
        "POST",
        "/clients",
        Some(format!("Bearer {unbound}")),
        &[],
        None,
    );
    assert_eq!(a.status, 401);
    assert!(
        a.body["error_description"]
            .as_str()
            .unwrap()
            .contains("bound"),
        "{a:?}"
    );
    let bound = s.token(
        json!({"x5t#S256": s.pki.thumbprint("client1")}),
        &["client-reg"],
        ENDPOINT,
    );
    let a = s.send(
        "POST",
        "/clients",
        Some(format!("Bearer {bound}")),
        &[],
        Some("client1"),
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(s.idp.requests().len(), 2);
}

#[test]
fn protected_routes() {
    let s = setup(false);
    let key = Signer::new(Algorithm::ES256, "proof-key");
    let api = "https://api.example.com";
    let bearer = |t: &str| Some(format!("Bearer {t}"));
    // /userinfo: scopes openid and profile, audience api.example.com.
    let good = s.token(Value::Null, &["openid", "profile"], api);
    assert_eq!(
        s.send("GET", "/userinfo", bearer(&good), &[], None).status,
        200
    );
    let got = s.idp.wait_for(1);
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("Bearer {good}").as_str())
    );
    let a = s.send(
        "GET",
        "/userinfo",
        bearer(&s.token(Value::Null, &["openid"], api)),
        &[],
        None,
    );
    assert_eq!(a.status, 403, "{a:?}");
    assert!(
        a.challenges[0].ends_with("scope=\"openid profile\""),
        "{:?}",
        a.challenges
    );
    let a = s.send(
        "GET",
        "/userinfo",
        bearer(&s.token(Value::Null, &["openid", "profile"], ENDPOINT)),
        &[],
        None,
    );
    assert_eq!(a.status, 401, "wrong audience: {a:?}");
    assert_eq!(a.body["error"], "invalid_token");
    let a = s.send("GET", "/userinfo", None, &[], None);
    assert_eq!(a.status, 401);
    assert_eq!(a.challenges.len(), 2, "{a:?}");
    let a = s.send("GET", "/userinfo", bearer("not-a-jwt"), &[], None);
    assert_eq!(a.status, 401);
    // A certificate-bound token on a route: the binding holds there too.
    let bound = s.token(
        json!({"x5t#S256": s.pki.thumbprint("client1")}),
        &["openid", "profile"],
        api,
    );
    assert_eq!(
        s.send("GET", "/userinfo", bearer(&bound), &[], Some("client1"))
            .status,
        200
    );
    assert_eq!(
        s.send("GET", "/userinfo", bearer(&bound), &[], None)
            .challenges,
        vec![MISMATCH.to_string()]
    );
    // /api: proof of possession required, no scope or audience.
    let unbound = s.token(Value::Null, &[], "https://anything.example.com");
    let a = s.send("GET", "/api/x", bearer(&unbound), &[], None);
    assert_eq!(a.status, 401, "{a:?}");
    let dpop_token = s.token(json!({ "jkt": thumbprint(&key.jwk) }), &[], "x");
    let proof = s.proof(&key, "GET", "/api/x", &dpop_token).sign();
    let a = s.send(
        "GET",
        "/api/x",
        Some(format!("DPoP {dpop_token}")),
        &[proof],
        None,
    );
    assert_eq!(a.status, 200, "{a:?}");
    // A proof for another route's path is refused.
    let elsewhere = s.proof(&key, "GET", "/api/y", &dpop_token).sign();
    assert_proof_refused(
        &s.send(
            "GET",
            "/api/x",
            Some(format!("DPoP {dpop_token}")),
            &[elsewhere],
            None,
        ),
        "another path",
    );
    // A route without `token` is as it was.
    assert_eq!(s.send("GET", "/open/x", None, &[], None).status, 200);
    assert_eq!(s.idp.requests().len(), 4);
}

// The replay record fails closed (issue 14 §5).

impl Setup {
    /// A DPoP-bound access token for `/api` and a fresh proof of `key` for one GET of it.
    fn api_call(&self, key: &Signer) -> (String, String) {
        let jkt = thumbprint(&public(&key.jwk));
        let token = self.token(json!({"jkt": jkt}), &["openid"], ENDPOINT);
        let proof = self.proof(key, "GET", "/api/x", &token).sign();
        (token, proof)
    }

    fn call(&self, token: &str, proof: &str) -> Answer {
        self.send(
            "GET",
            "/api/x",
            Some(format!("DPoP {token}")),
            &[proof.to_string()],
            None,
        )
    }

    fn reload(&self, yaml: &str) {
        self.bg.reload_with(&self.pki, yaml);
    }
}

#[test]
fn a_full_replay_record_refuses_new_proofs_and_still_refuses_replays() {
    let s = setup_with(false, "  replay_cache_entries: 3\n");
    let key = Signer::new(Algorithm::ES256, "proof-key");
    let used: Vec<(String, String)> = (0..3).map(|_| s.api_call(&key)).collect();
    for (t, p) in &used {
        assert_eq!(s.call(t, p).status, 200);
    }
    // Full: a new proof is refused, never accepted unrecorded.
    let (t, p) = s.api_call(&key);
    let a = s.call(&t, &p);
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.body["error"], "temporarily_unavailable");
    assert_eq!(
        s.bg.metric("bindgate_dpop_proofs_total{reason=\"replay_record_full\",result=\"refused\"}"),
        1
    );
    // The recorded ones (the victims) are still refused as replays.
    for (t, p) in &used {
        assert_proof_refused(&s.call(t, p), "a replay while the record is full");
    }
    // The refused one was not recorded: once there is room it is good.
    assert_eq!(s.idp.requests().len(), 3);
}

#[test]
fn a_reload_keeps_the_replay_record_whatever_it_changes() {
    let issuer = Signer::new(Algorithm::ES256, "issuer-1");
    let pki = Pki::new();
    let (jwks, idp) = key_server_and_provider(&[&issuer]);
    let bg = Bindgate::start(&pki, &yaml(jwks.addr, idp.addr, false, ""));
    let s = Setup {
        pki,
        issuer,
        _jwks: jwks,
        idp,
        bg,
    };
    let key = Signer::new(Algorithm::ES256, "proof-key");
    let (t, p) = s.api_call(&key);
    assert_eq!(s.call(&t, &p).status, 200);
    // A wider window and another size: the proof stays recorded.
    s.reload(
        &yaml(
            s._jwks.addr,
            s.idp.addr,
            false,
            "  replay_cache_entries: 50\n",
        )
        .replace("max_age: 60s", "max_age: 120s"),
    );
    assert_proof_refused(&s.call(&t, &p), "after a reload that widened the window");
    // DPoP off, then on again: still recorded.
    let off = yaml(s._jwks.addr, s.idp.addr, false, "off")
        .replace("    token: {require_proof_of_possession: true}\n", "");
    s.reload(&off);
    s.reload(&yaml(s._jwks.addr, s.idp.addr, false, ""));
    assert_proof_refused(&s.call(&t, &p), "after DPoP was off and on");
    assert_eq!(s.idp.requests().len(), 1);
}

#[test]
fn after_a_restart_proofs_from_before_it_are_refused() {
    let issuer = Signer::new(Algorithm::ES256, "issuer-1");
    let pki = Pki::new();
    let (jwks, idp) = key_server_and_provider(&[&issuer]);
    let config = yaml(jwks.addr, idp.addr, false, "");
    let first = Bindgate::start(&pki, &config);
    let s = Setup {
        pki,
        issuer,
        _jwks: jwks,
        idp,
        bg: first,
    };
    let key = Signer::new(Algorithm::ES256, "proof-key");
    let (t, p) = s.api_call(&key);
    assert_eq!(s.call(&t, &p).status, 200);
    // The same proof against a new process (its record is new and empty), a second later.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let Setup {
        pki,
        issuer,
        _jwks,
        idp,
        bg,
    } = s;
    drop(bg);
    let s = Setup {
        bg: Bindgate::start(&pki, &config),
        pki,
        issuer,
        _jwks,
        idp,
    };
    // The new process listens on other ports: the proof names the new origin, as a replayer
    // in front of a restarted process on the same address would send it.
    let moved = Proof {
        iat: now() - 2,
        ..s.proof(&key, "GET", "/api/x", &t)
    }
    .sign();
    let a = s.call(&t, &moved);
    assert_proof_refused(&a, "a proof issued before the process started");
    assert!(
        a.body["error_description"]
            .as_str()
            .unwrap()
            .contains("before"),
        "{a:?}"
    );
    // A proof issued since is fine.
    let (t2, p2) = s.api_call(&key);
    assert_eq!(s.call(&t2, &p2).status, 200);
}

// A token in a second place, however it is spelled (issue 14 §6).

#[test]
fn a_token_in_a_form_body_or_a_spelled_query_name_next_to_the_header_is_400() {
    let s = setup(false);
    let good = s.token(
        Value::Null,
        &["openid", "profile"],
        "https://api.example.com",
    );
    for http in [Http::One, Http::Alpn] {
        let client = s.bg.client(&s.pki, None, http);
        let send = |path: &str, content_type: &str, body: &str| {
            let r = client
                .post(s.url(path))
                .header("authorization", format!("Bearer {good}"))
                .header("content-type", content_type)
                .body(body.to_string())
                .send()
                .unwrap();
            (r.status().as_u16(), r.text().unwrap_or_default())
        };
        for (content_type, body) in [
            ("application/x-www-form-urlencoded", "a=1&access_token=other"),
            ("application/x-www-form-urlencoded; charset=utf-8", "access%5Ftoken=other"),
            (
                "multipart/form-data; boundary=XX",
                "--XX\r\nContent-Disposition: form-data; name=\"access_token\"\r\n\r\nother\r\n--XX--\r\n",
            ),
        ] {
            let (status, body) = send("/userinfo", content_type, body);
            assert_eq!(status, 400, "{content_type}: {body}");
            assert!(body.contains("more than once"), "{body}");
        }
        for query in [
            "?access%5Ftoken=other",
            "?%61ccess_token=x",
            "?x=1;access_token=y",
        ] {
            let (status, _) = send(&format!("/userinfo{query}"), "application/json", "{}");
            assert_eq!(status, 400, "{query}");
        }
        assert!(
            s.idp.requests().is_empty(),
            "a request with two tokens was forwarded"
        );
        // A form body without a token goes through.
        let (status, _) = send("/userinfo", "application/x-www-form-urlencoded", "a=1&b=2");
        assert_eq!(status, 200);
        assert_eq!(s.idp.wait_for(1)[0].body, b"a=1&b=2");
        s.idp.clear();
    }
}

/// A binary upgrade hands the replay record over: a proof the old process accepted is a replay
/// on the new one — also one dated ahead within the leeway (which a new, empty record would
/// take as issued after it began).
#[test]
fn a_binary_upgrade_hands_the_replay_record_over() {
    let issuer = Signer::new(Algorithm::ES256, "issuer-1");
    let pki = Pki::new();
    let (jwks, idp) = key_server_and_provider(&[&issuer]);
    let config = yaml(jwks.addr, idp.addr, false, "").replace(
        "server: {threads: 2}",
        r#"server: {threads: 2, grace_period: 2s, pid_file: "{DIR}/bindgate.pid", upgrade_sock: "{DIR}/upgrade.sock"}"#,
    );
    let mut s = Setup {
        bg: Bindgate::start_named(&pki, &config),
        pki,
        issuer,
        _jwks: jwks,
        idp,
    };
    let key = Signer::new(Algorithm::ES256, "proof-key");
    let (t, _) = s.api_call(&key);
    // Dated 4 s ahead (the leeway is 5 s), and one of now.
    let ahead = Proof {
        iat: now() + 4,
        ..s.proof(&key, "GET", "/api/x", &t)
    }
    .sign();
    let (t2, p2) = s.api_call(&key);
    assert_eq!(s.call(&t, &ahead).status, 200);
    assert_eq!(s.call(&t2, &p2).status, 200);

    // The documented steps: the new binary with --upgrade, then SIGQUIT to the old one.
    let _new = Reaped(s.bg.spawn_beside(&["--upgrade"], "upgraded.log"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    s.bg.signal("QUIT");
    let exited = s.bg.wait_exit(std::time::Duration::from_secs(20));
    let upgraded_log = || std::fs::read_to_string(s.bg.dir().join("upgraded.log")).unwrap();
    assert!(exited.is_some(), "the old process did not exit");
    assert!(
        s.bg.logs().contains("DPoP replay record handed over"),
        "{}",
        s.bg.logs()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !upgraded_log().contains("bindgate starting") {
        assert!(std::time::Instant::now() < deadline, "{}", upgraded_log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        upgraded_log().contains("taken over from the old process"),
        "{}",
        upgraded_log()
    );

    // Both proofs are replays on the new process; a fresh one is good.
    for (token, proof) in [(&t, &ahead), (&t2, &p2)] {
        let a = s.call(token, proof);
        assert_proof_refused(&a, "a proof the old process accepted");
        assert!(
            a.body["error_description"]
                .as_str()
                .unwrap()
                .contains("already used"),
            "{a:?}"
        );
    }
    let (t3, p3) = s.api_call(&key);
    assert_eq!(s.call(&t3, &p3).status, 200);
    assert_eq!(s.idp.requests().len(), 3);
}
