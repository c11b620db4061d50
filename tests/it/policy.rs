//! Connect2id's registration policy (issue 16): narrowed scopes, privileged metadata, open
//! registration and registration access token rotation, in front of a recording provider and on
//! the embedded registry, through the real server over TLS with a JWKS server in the test.

use crate::harness::redis::RedisServer;
use crate::harness::tokens::*;
use crate::harness::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

struct Setup {
    pki: Pki,
    idp: Upstream,
    _jwks: Upstream,
    bg: Bindgate,
}

struct Answer {
    status: u16,
    challenge: Option<String>,
    body: Value,
}

/// `target`: `idp` (the recording provider) or `embedded`; `extra` lines go under
/// `registration:`; `state` is the `state:` value.
fn setup(signer: &Signer, target: &str, extra: &str, state: &str) -> Setup {
    let pki = Pki::new();
    let jwks = Upstream::start();
    jwks.set_reply(200, &crate::harness::tokens::jwks(&[signer]));
    let idp = Upstream::start();
    idp.set_reply(201, r#"{"client_id":"from-the-provider"}"#);
    let yaml = format!(
        r#"{LISTENERS}issuer: "{ISSUER}"
jwks: {{uri: "http://{jwks}/jwks.json"}}
tokens: {{algorithms: [ES256]}}
registration:
  endpoint_uri: "{ENDPOINT}"
  target: {target}
  master_tokens: [{{file: "{{PKI}}/master.token"}}]
{extra}
upstreams:
  idp: {{address: "{idp}"}}
dpop: {{origins: ["https://localhost:{{PORT}}"]}}
state: {state}
server: {{threads: 2}}
"#,
        jwks = jwks.addr,
        idp = idp.addr,
    );
    let bg = Bindgate::start(&pki, &yaml);
    Setup {
        pki,
        idp,
        _jwks: jwks,
        bg,
    }
}

fn scoped(scopes: &[&str]) -> Value {
    let mut c = claims();
    c["scp"] = json!(scopes);
    c
}

impl Setup {
    fn send(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Answer {
        self.send_as(method, path, token, body, None)
    }

    fn send_as(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
        identity: Option<&str>,
    ) -> Answer {
        let client = self.bg.client(&self.pki, identity, Http::One);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = client
            .request(method, self.bg.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = req.send().expect("an answer");
        let status = resp.status().as_u16();
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        Answer {
            status,
            challenge,
            body: resp.json().unwrap_or(Value::Null),
        }
    }

    fn register(&self, token: Option<&str>, body: &str) -> Answer {
        self.send("POST", "/clients", token, body)
    }

    fn master(&self) -> String {
        self.pki.token("master.token")
    }
}

/// A 403 naming `scope` (or no scope attribute), and nothing forwarded for it.
fn assert_not_permitted(a: &Answer, scope: Option<&str>, what: &str) {
    assert_eq!(a.status, 403, "{what}: {:?}", a.body);
    assert_eq!(a.body["error"], "insufficient_scope", "{what}");
    let c = a.challenge.as_deref().unwrap_or_default();
    assert!(
        c.starts_with("Bearer error=\"insufficient_scope\""),
        "{what}: {c}"
    );
    match scope {
        Some(s) => assert!(c.ends_with(&format!(", scope=\"{s}\"")), "{what}: {c}"),
        None => assert!(!c.contains("scope=\""), "{what}: {c}"),
    }
}

#[test]
fn narrowed_scopes_in_front_of_a_provider() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(&es, "idp", "  grant_scopes: true", r#"{path: ":memory:"}"#);
    let code = es.sign(&scoped(&["client-reg:grant:code"]));

    // Within its grant (the defaults: authorization_code, code): forwarded, the body as sent.
    let body = r#"{"redirect_uris":["https://app.example.com/cb"],  "client_name":"x"}"#;
    assert_eq!(s.register(Some(&code), body).status, 201);
    let got = s.idp.wait_for(1);
    assert_eq!(got[0].body, body.as_bytes());
    assert_eq!(
        s.register(
            Some(&code),
            r#"{"grant_types":["authorization_code","refresh_token"],"response_types":["code"]}"#
        )
        .status,
        201
    );
    // The same scope twice is the same scope.
    let twice = es.sign(&scoped(&["client-reg:grant:code", "client-reg:grant:code"]));
    assert_eq!(s.register(Some(&twice), "{}").status, 201);
    s.idp.wait_for(3);
    s.idp.clear();

    // Beyond it: 403 naming the scope that would do, nothing forwarded.
    for (body, scope, what) in [
        (
            r#"{"grant_types":["client_credentials"]}"#,
            "client-reg:grant:client_credentials",
            "another grant",
        ),
        (
            r#"{"grant_types":["client_credentials","client_credentials"]}"#,
            "client-reg:grant:client_credentials",
            "duplicates",
        ),
        (
            r#"{"grant_types":["authorization_code","password"]}"#,
            "client-reg:grant:password",
            "one grant too many",
        ),
        (
            r#"{"response_types":["token"]}"#,
            "client-reg:grant:implicit",
            "a response type of another grant",
        ),
        (
            r#"{"grant_types":["urn:example:custom"]}"#,
            "client-reg",
            "an unknown grant",
        ),
        (
            r#"{"scope":"openid email"}"#,
            "client-reg",
            "scope metadata",
        ),
        (r#"{"scope":["openid"]}"#, "client-reg", "scope as an array"),
    ] {
        assert_not_permitted(&s.register(Some(&code), body), Some(scope), what);
    }
    // What cannot be judged is refused, not passed on.
    for body in [r#"{"grant_types":"client_credentials"}"#, "not json", "[]"] {
        let a = s.register(Some(&code), body);
        assert_eq!(a.status, 400, "{body}");
        assert_eq!(a.body["error"], "invalid_client_metadata", "{body}");
    }
    // Privileged metadata: a master token only, not even the full scope.
    let full = es.sign(&claims());
    let preferred = r#"{"preferred_client_id":"my-client"}"#;
    assert_not_permitted(
        &s.register(Some(&full), preferred),
        None,
        "full scope, preferred id",
    );
    assert_not_permitted(
        &s.register(Some(&code), preferred),
        None,
        "narrowed, preferred id",
    );
    assert!(
        s.idp.requests().is_empty(),
        "a refused registration was forwarded"
    );
    assert_eq!(s.register(Some(&s.master()), preferred).status, 201);
    // The full scope registers any grant.
    assert_eq!(
        s.register(
            Some(&full),
            r#"{"grant_types":["client_credentials"],"scope":"x"}"#
        )
        .status,
        201
    );
    assert_eq!(s.idp.wait_for(2).len(), 2);
    // Over HTTP/2 the same refusal, nothing forwarded.
    let h2 =
        s.bg.client(&s.pki, None, Http::Alpn)
            .post(s.bg.url("/clients"))
            .bearer_auth(&code)
            .body(r#"{"grant_types":["client_credentials"]}"#)
            .send()
            .unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    assert_eq!(h2.status(), 403);
    assert_eq!(s.idp.requests().len(), 2);
    assert!(
        s.bg.metric("bindgate_authorisations_total{decision=\"rejected\",policy=\"registration\",reason=\"registration_not_permitted\"}")
            >= 9
    );
}

#[test]
fn narrowed_scopes_need_the_switch_and_keep_single_use_and_binding() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    // Without grant_scopes, a narrowed scope is not the registration scope.
    let off = setup(&es, "idp", "", r#"{path: ":memory:"}"#);
    let a = off.register(Some(&es.sign(&scoped(&["client-reg:grant:code"]))), "{}");
    assert_eq!(a.status, 403);
    assert!(a.challenge.unwrap().ends_with("scope=\"client-reg\""));
    drop(off);

    let s = setup(
        &es,
        "idp",
        "  grant_scopes: true\n  single_use: true",
        r#"{path: ":memory:"}"#,
    );
    // A refused body does not use the token up; the allowed one does.
    let mut c = scoped(&["client-reg:grant:code"]);
    c["jti"] = json!("narrowed-once");
    let once = es.sign(&c);
    assert_eq!(
        s.register(Some(&once), r#"{"grant_types":["password"]}"#)
            .status,
        403
    );
    assert_eq!(s.register(Some(&once), "{}").status, 201);
    let again = s.register(Some(&once), "{}");
    assert_eq!(again.status, 401, "{:?}", again.body);
    // Certificate binding holds for narrowed tokens too.
    let mut c = scoped(&["client-reg:grant:code"]);
    c["cnf"] = json!({"x5t#S256": s.pki.thumbprint("client1")});
    let bound = es.sign(&c);
    assert_eq!(
        s.send_as("POST", "/clients", Some(&bound), "{}", None)
            .status,
        401
    );
    assert_eq!(
        s.send_as("POST", "/clients", Some(&bound), "{}", Some("client2"))
            .status,
        401
    );
    assert_eq!(
        s.send_as("POST", "/clients", Some(&bound), "{}", Some("client1"))
            .status,
        201
    );
    assert_eq!(s.idp.wait_for(2).len(), 2);
}

#[test]
fn open_registration_within_its_grants() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(
        &es,
        "embedded",
        "  grant_scopes: true\n  open: {grant_types: [authorization_code, implicit, refresh_token]}",
        r#"{path: ":memory:"}"#,
    );
    let a = s.register(None, r#"{"redirect_uris":["https://app.example.com/cb"]}"#);
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert!(a.body["registration_access_token"].is_string());
    // Beyond the open grants, scope or privileged metadata: the 401 a token would answer.
    for body in [
        r#"{"grant_types":["client_credentials"]}"#,
        r#"{"scope":"openid"}"#,
        r#"{"preferred_client_id":"mine"}"#,
    ] {
        let a = s.register(None, body);
        assert_eq!(a.status, 401, "{body}");
        assert_eq!(a.challenge.as_deref(), Some("Bearer"), "{body}");
    }
    // A request with a token is judged on the token, never downgraded to open.
    let code = es.sign(&scoped(&["client-reg:grant:code"]));
    assert_not_permitted(
        &s.register(Some(&code), r#"{"response_types":["id_token"]}"#),
        Some("client-reg:grant:implicit"),
        "narrowed token, open grant",
    );
    let expired = {
        let mut c = claims();
        c["exp"] = json!(now() - 3600);
        es.sign(&c)
    };
    assert_eq!(s.register(Some(&expired), "{}").status, 401);
    // Open clients keep to the open grants on their own updates.
    let id = a.body["client_id"].as_str().unwrap().to_string();
    let rat = a.body["registration_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let update = json!({"client_id": id, "redirect_uris": ["https://app.example.com/cb"], "grant_types": ["client_credentials"]});
    assert_not_permitted(
        &s.send(
            "PUT",
            &format!("/clients/{id}"),
            Some(&rat),
            &update.to_string(),
        ),
        Some("client-reg:grant:client_credentials"),
        "open client widening itself",
    );
}

#[test]
fn the_embedded_registry_keeps_clients_to_their_grants_and_honours_preferred_values() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(
        &es,
        "embedded",
        "  grant_scopes: true",
        r#"{path: ":memory:"}"#,
    );
    let code = es.sign(&scoped(&["client-reg:grant:code"]));
    let a = s.register(
        Some(&code),
        r#"{"redirect_uris":["https://app.example.com/cb"]}"#,
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let id = a.body["client_id"].as_str().unwrap().to_string();
    let rat = a.body["registration_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let put = |body: Value| {
        s.send(
            "PUT",
            &format!("/clients/{id}"),
            Some(&rat),
            &body.to_string(),
        )
    };
    let mut body = json!({"client_id": id, "redirect_uris": ["https://app.example.com/cb"]});
    body["grant_types"] = json!(["authorization_code", "refresh_token"]);
    assert_eq!(put(body.clone()).status, 200);
    body["grant_types"] = json!(["client_credentials"]);
    assert_not_permitted(
        &put(body.clone()),
        Some("client-reg:grant:client_credentials"),
        "widening",
    );
    body["grant_types"] = json!(["authorization_code"]);
    body["scope"] = json!("admin");
    assert_not_permitted(&put(body.clone()), Some("client-reg"), "scope on update");
    // A master token may change anything.
    let master = s.send(
        "PUT",
        &format!("/clients/{id}"),
        Some(&s.master()),
        &body.to_string(),
    );
    assert_eq!(master.status, 200, "{:?}", master.body);

    // preferred_client_id and preferred_client_secret: a master token's, honoured.
    let secret = "s".repeat(32);
    let a = s.register(
        Some(&s.master()),
        &json!({"preferred_client_id": "chosen-id", "preferred_client_secret": secret, "redirect_uris": ["https://app.example.com/cb"]}).to_string(),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.body["client_id"], "chosen-id");
    assert_eq!(a.body["client_secret"], secret);
    assert!(a.body.get("preferred_client_id").is_none());
    // Unique, long enough, well formed.
    for (body, what) in [
        (json!({"preferred_client_id": "chosen-id"}), "an id in use"),
        (
            json!({"preferred_client_secret": "short"}),
            "a short secret",
        ),
        (
            json!({"preferred_client_id": "no spaces please"}),
            "a malformed id",
        ),
        (
            json!({"preferred_client_id": 7}),
            "an id that is not a string",
        ),
    ] {
        let mut body = body;
        body["redirect_uris"] = json!(["https://app.example.com/cb"]);
        let a = s.register(Some(&s.master()), &body.to_string());
        assert_eq!(a.status, 400, "{what}: {:?}", a.body);
        assert_eq!(a.body["error"], "invalid_client_metadata", "{what}");
    }
    // The first client kept its secret and id.
    let read = s.send("GET", "/clients/chosen-id", Some(&s.master()), "");
    assert_eq!(read.body["client_secret"], secret);
}

fn rotation(state: &str) {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(
        &es,
        "embedded",
        "  rotate_registration_access_token: true",
        state,
    );
    let a = s.register(
        Some(&es.sign(&claims())),
        r#"{"redirect_uris":["https://app.example.com/cb"]}"#,
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let id = a.body["client_id"].as_str().unwrap().to_string();
    let first = a.body["registration_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let body =
        json!({"client_id": id, "redirect_uris": ["https://app.example.com/cb"]}).to_string();
    let path = format!("/clients/{id}");
    let updated = s.send("PUT", &path, Some(&first), &body);
    assert_eq!(updated.status, 200, "{:?}", updated.body);
    let second = updated.body["registration_access_token"]
        .as_str()
        .expect("a new registration access token")
        .to_string();
    assert_ne!(first, second);
    // The old one stops at once, the new one works.
    assert_eq!(s.send("GET", &path, Some(&first), "").status, 401);
    assert_eq!(s.send("GET", &path, Some(&second), "").status, 200);
    // Two updates with the same token at once: exactly one wins, its token is the one.
    let mut token = second;
    for _ in 0..5 {
        let answers: Vec<Answer> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|_| scope.spawn(|| s.send("PUT", &path, Some(&token), &body)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        let won: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
        assert_eq!(won.len(), 1, "{statuses:?}");
        assert!(statuses.contains(&401), "{statuses:?}");
        let fresh = won[0].body["registration_access_token"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(s.send("GET", &path, Some(&fresh), "").status, 200);
        assert_eq!(s.send("GET", &path, Some(&token), "").status, 401);
        token = fresh;
    }
}

#[test]
fn registration_access_tokens_rotate_on_update_on_redb() {
    rotation(r#"{path: ":memory:"}"#);
}

#[test]
fn registration_access_tokens_rotate_on_update_on_redis() {
    let redis = RedisServer::start();
    rotation(&format!(
        r#"{{redis: {{url: "redis://127.0.0.1:{}/0", key_prefix: "rot:"}}}}"#,
        redis.port
    ));
}

const DIRECTORY: &str = "https://directory.example";

/// A software statement from the directory (or whoever `signer` is), with `claims` over the
/// defaults.
fn statement(signer: &Signer, claims: Value) -> String {
    let mut c = json!({
        "iss": DIRECTORY,
        "iat": now(),
        "exp": now() + 600,
        "software_id": "4NRB1-0XZABZI9E6-5SM3R",
        "client_name": "From the statement",
    });
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    signer.sign(&c)
}

/// A bindgate trusting statements of the directory (its keys served by `directory`).
fn with_directory(es: &Signer, dir: &Signer, target: &str, required: bool) -> (Setup, Upstream) {
    let directory = Upstream::start();
    directory.set_reply(200, &crate::harness::tokens::jwks(&[dir]));
    let extra = format!(
        "  grant_scopes: true\n  software_statement:\n    required: {required}\n    issuers:\n      - iss: \"{DIRECTORY}\"\n        jwks: {{uri: \"http://{}/jwks.json\"}}\n    algorithms: [RS256, ES256]",
        directory.addr
    );
    (
        setup(es, target, &extra, r#"{path: ":memory:"}"#),
        directory,
    )
}

#[test]
fn software_statements_are_verified_and_take_precedence() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let dir = Signer::new(Algorithm::RS256, "dir-1");
    let (s, directory) = with_directory(&es, &dir, "embedded", false);
    let full = es.sign(&claims());
    let good = statement(&dir, json!({}));
    let body = json!({
        "redirect_uris": ["https://app.example.com/cb"],
        "client_name": "From the body",
        "software_statement": good,
    });
    let a = s.register(Some(&full), &body.to_string());
    assert_eq!(a.status, 201, "{:?}", a.body);
    // The statement's claims win; the statement is returned as sent (RFC 7591 §3.2.1).
    assert_eq!(a.body["client_name"], "From the statement");
    assert_eq!(a.body["software_id"], "4NRB1-0XZABZI9E6-5SM3R");
    assert_eq!(a.body["software_statement"], good);
    assert!(a.body.get("iss").is_none() && a.body.get("exp").is_none());
    assert!(directory
        .requests()
        .iter()
        .all(|r| r.target == "/jwks.json"));

    let stranger = Signer::new(Algorithm::RS256, "dir-1");
    for (statement, code, what) in [
        (
            statement(&dir, json!({"exp": now() - 3600})),
            "invalid_software_statement",
            "expired",
        ),
        (
            statement(&dir, json!({"iat": now() + 3600})),
            "invalid_software_statement",
            "issued in the future",
        ),
        (
            unsigned("dir-1", &json!({"iss": DIRECTORY, "software_id": "x"})),
            "invalid_software_statement",
            "alg none",
        ),
        (
            statement(&stranger, json!({})),
            "invalid_software_statement",
            "an untrusted key under a trusted iss",
        ),
        (
            statement(&Signer::new(Algorithm::RS256, "nobody"), json!({})),
            "invalid_software_statement",
            "an unknown kid",
        ),
        (
            statement(&dir, json!({"iss": "https://other.example"})),
            "unapproved_software_statement",
            "an untrusted issuer",
        ),
        (
            "not-a-jwt".to_string(),
            "invalid_software_statement",
            "not a JWT",
        ),
        (
            es.sign_with(
                {
                    let mut h = es.header();
                    h.typ = Some("dpop+jwt".into());
                    h
                },
                &json!({"iss": DIRECTORY}),
            ),
            "invalid_software_statement",
            "a DPoP proof",
        ),
    ] {
        let body = json!({"redirect_uris": ["https://app.example.com/cb"], "software_statement": statement});
        let a = s.register(Some(&full), &body.to_string());
        assert_eq!(a.status, 400, "{what}: {:?}", a.body);
        assert_eq!(a.body["error"], code, "{what}");
    }
    let a = s.register(Some(&full), &json!({"software_statement": 7}).to_string());
    assert_eq!(a.body["error"], "invalid_software_statement");
    // The statement's members are judged like the body's: a narrowed token cannot register
    // the grant a statement asks for.
    let code = es.sign(&scoped(&["client-reg:grant:code"]));
    let contradicting = json!({
        "grant_types": ["authorization_code"],
        "software_statement": statement(&dir, json!({"grant_types": ["client_credentials"]})),
    });
    assert_not_permitted(
        &s.register(Some(&code), &contradicting.to_string()),
        Some("client-reg:grant:client_credentials"),
        "a statement asking for more than the token",
    );
    assert!(
        s.bg.metric(&format!(
            "bindgate_jwks_fetches_total{{issuer=\"{DIRECTORY}\",outcome=\"ok\"}}"
        )) >= 1
    );
}

#[test]
fn a_required_statement_in_front_of_a_provider() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let dir = Signer::new(Algorithm::ES256, "dir-es");
    let (s, _directory) = with_directory(&es, &dir, "idp", true);
    let full = es.sign(&claims());
    let a = s.register(
        Some(&full),
        r#"{"redirect_uris":["https://app.example.com/cb"]}"#,
    );
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"], "invalid_software_statement");
    assert!(s.idp.requests().is_empty());
    // A master token needs none.
    assert_eq!(s.register(Some(&s.master()), "{}").status, 201);
    // With one: the provider gets the body unchanged (it applies the statement itself).
    let body =
        json!({"client_name": "From the body", "software_statement": statement(&dir, json!({}))})
            .to_string();
    assert_eq!(s.register(Some(&full), &body).status, 201);
    let got = s.idp.wait_for(2);
    assert_eq!(got[1].body, body.as_bytes());
}

#[test]
fn open_registration_in_front_of_a_provider_forwards_only_what_it_allows() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(
        &es,
        "idp",
        "  open: {grant_types: [authorization_code]}",
        r#"{path: ":memory:"}"#,
    );
    let body = r#"{"redirect_uris":["https://app.example.com/cb"]}"#;
    assert_eq!(s.register(None, body).status, 201);
    assert_eq!(s.idp.wait_for(1)[0].body, body.as_bytes());
    s.idp.clear();
    for body in [
        r#"{"response_types":["token"]}"#,
        r#"{"grant_types":["refresh_token"]}"#,
        r#"{"scope":"openid"}"#,
        "not json",
    ] {
        let a = s.register(None, body);
        assert!(a.status == 401 || a.status == 400, "{body}: {}", a.status);
    }
    assert!(
        s.idp.requests().is_empty(),
        "a refused open registration was forwarded"
    );
    // Listing and reading clients still need their credentials.
    assert_eq!(s.send("GET", "/clients", None, "").status, 401);
    assert_eq!(s.send("GET", "/clients/abc", None, "").status, 401);
    assert!(s.idp.requests().is_empty());
}

#[test]
fn a_dpop_bound_narrowed_token_needs_its_proof() {
    let es = Signer::new(Algorithm::ES256, "es-1");
    let s = setup(&es, "idp", "  grant_scopes: true", r#"{path: ":memory:"}"#);
    let key = bindgate::devtoken::load_key(&bindgate::devtoken::new_key_pem().unwrap()).unwrap();
    let jkt = bindgate::devtoken::public_jwk(&key).unwrap()["kid"].clone();
    let mut c = scoped(&["client-reg:grant:code"]);
    c["cnf"] = json!({ "jkt": jkt });
    let token = es.sign(&c);
    let client = s.bg.client(&s.pki, None, Http::One);
    let htu = format!("https://localhost:{}/clients", s.bg.port);
    let send = |scheme: &str, body: &str| {
        let proof = bindgate::devtoken::dpop_proof(&key, "POST", &htu, Some(&token), None).unwrap();
        client
            .post(s.bg.url("/clients"))
            .header("authorization", format!("{scheme} {token}"))
            .header("dpop", proof)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(send("DPoP", "{}"), 201);
    assert_eq!(send("Bearer", "{}"), 401);
    // The proof does not widen the scope.
    assert_eq!(
        send("DPoP", r#"{"grant_types":["client_credentials"]}"#),
        403
    );
    assert_eq!(s.idp.wait_for(1).len(), 1);
}
