//! Claims to the upstream (issue 18 §3): `routes[].token.headers` set from the verified token
//! only, after every check; the same names sent by a client removed on every route.

use crate::harness::tokens::*;
use crate::harness::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

fn setup() -> (Pki, Upstream, Upstream, Signer, Bindgate) {
    let pki = Pki::new();
    let es = Signer::new(Algorithm::ES256, "es-1");
    let jwks = Upstream::start();
    jwks.set_reply(200, &crate::harness::tokens::jwks(&[&es]));
    let api = Upstream::start();
    let yaml = format!(
        r#"{LISTENERS}issuer: "{ISSUER}"
jwks: {{uri: "http://{jwks}/jwks.json"}}
tokens: {{algorithms: [ES256]}}
upstreams:
  api: {{address: "{api}"}}
routes:
  - prefix: /userinfo
    upstream: api
    token:
      scope: [openid]
      headers: {{X-Auth-Subject: sub, X-Auth-Client: client_id, X-Auth-Scope: scope, X-Auth-Roles: roles}}
  - {{prefix: /open, upstream: api}}
"#,
        jwks = jwks.addr,
        api = api.addr,
    );
    let bg = Bindgate::start(&pki, &yaml);
    (pki, jwks, api, es, bg)
}

fn token(es: &Signer, extra: serde_json::Value) -> String {
    let mut c = claims();
    c["scp"] = json!(["openid", "profile"]);
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    es.sign(&c)
}

#[test]
fn verified_claims_reach_the_upstream_as_headers_and_nothing_else_does() {
    let (pki, _jwks, api, es, bg) = setup();
    let client = bg.client(&pki, None, Http::One);
    let get = |path: &str, token: Option<&str>, spoof: bool| {
        let mut req = client.get(bg.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if spoof {
            req = req
                .header("x-auth-subject", "admin")
                .header("X-Auth-Subject", "root")
                .header("x-auth-roles", "superuser");
        }
        req.send().unwrap().status().as_u16()
    };
    let t = token(
        &es,
        json!({"client_id": "app-1", "roles": ["reader", "writer"]}),
    );
    assert_eq!(get("/userinfo", Some(&t), true), 200);
    let got = api.wait_for(1);
    assert_eq!(got[0].all("x-auth-subject"), ["tester"]);
    assert_eq!(got[0].header("x-auth-client"), Some("app-1"));
    assert_eq!(got[0].header("x-auth-roles"), Some("reader writer"));
    // `scope` is not in this token (it carries `scp`): a missing claim sets nothing.
    assert_eq!(got[0].header("x-auth-scope"), None);
    // The access line names who the token is about and for, never the token.
    let log = bg.wait_log("path=/userinfo");
    let line = log
        .lines()
        .find(|l| l.contains("path=/userinfo"))
        .unwrap()
        .to_string();
    assert!(line.contains("sub=") && line.contains("tester"), "{line}");
    assert!(
        line.contains("client_id=") && line.contains("app-1"),
        "{line}"
    );
    assert!(!log.contains(&t), "the token was logged");
    // On a route without a token, the names are removed all the same.
    assert_eq!(get("/open/x", None, true), 200);
    let got = api.wait_for(2);
    assert!(
        got[1].header("x-auth-subject").is_none(),
        "{:?}",
        got[1].headers
    );
    assert!(got[1].header("x-auth-roles").is_none());
    // A claim no header can carry refuses the request; nothing is forwarded for it.
    let injected = token(&es, json!({"sub": "alice\r\nX-Admin: true"}));
    assert_eq!(get("/userinfo", Some(&injected), false), 401);
    // Refused tokens set nothing and reach nothing.
    assert_eq!(
        get(
            "/userinfo",
            Some(&token(&es, json!({"scp": ["email"]}))),
            false
        ),
        403
    );
    assert_eq!(api.requests().len(), 2);
    // Over HTTP/2 the same: the client's copies go, the verified claim is set.
    let h2 = bg.client(&pki, None, Http::Alpn);
    let resp = h2
        .get(bg.url("/userinfo"))
        .bearer_auth(&t)
        .header("x-auth-subject", "admin")
        .header("x-auth-subject", "root")
        .send()
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let got = api.wait_for(3);
    assert_eq!(got[2].all("x-auth-subject"), ["tester"]);
}

#[test]
fn a_claim_header_must_be_a_name_bindgate_may_set() {
    let pki = Pki::new();
    let yaml = r#"
listen:
  address: "127.0.0.1:8443"
  tls: {cert: "{PKI}/server.crt", key: "{PKI}/server.key"}
issuer: "https://idp.example.com"
jwks: {uri: "https://idp.example.com/jwks"}
upstreams:
  api: {address: "127.0.0.1:8080"}
routes:
  - {prefix: /a, upstream: api, token: {headers: {Authorization: sub, "Bad Name": sub, X-Ok: ""}}}
"#;
    refused_with(
        &pki,
        yaml,
        &[
            "routes[0].token.headers.Authorization: is a header bindgate or HTTP already gives a meaning to",
            "routes[0].token.headers.Bad Name: is not a valid header name",
            "routes[0].token.headers.X-Ok: names no claim",
        ],
    );
}
