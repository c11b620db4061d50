//! The embedded state service through the real server over TLS: client registry (RFC 7591 /
//! RFC 7592), session store v2, durability across `kill -9`, streamed delete-all.

use crate::harness::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// `state_path`: a redb path (or `:memory:`), or `redis {...}` for a Redis engine.
fn config(state_path: &str, max_body: &str) -> String {
    let engine = match state_path.strip_prefix("redis ") {
        Some(settings) => format!("redis: {settings}"),
        None => format!("path: \"{state_path}\""),
    };
    format!(
        r#"
listen:
  address: "{{LISTEN}}"
  tls: {{cert: "{{PKI}}/server.crt", key: "{{PKI}}/server.key", client_auth: optional}}
admin: {{address: "{{ADMIN}}"}}
issuer: "https://idp.example.com"
registration:
  endpoint_uri: "https://idp.example.com/clients"
  master_tokens:
    - file: "{{PKI}}/master.token"
session_store:
  api_tokens:
    - file: "{{PKI}}/session-store.token"
state:
  {engine}
  sessions: {{max_life: 60, auth_life: 30, max_idle: 15}}
server: {{threads: 2, max_body: {max_body}}}
"#
    )
}

struct Api<'a> {
    bg: &'a Bindgate,
    client: reqwest::blocking::Client,
    master: String,
    sessions_token: String,
}

struct Out {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
    raw: Vec<u8>,
}

fn out(resp: reqwest::blocking::Response) -> Out {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let raw = resp.bytes().map(|b| b.to_vec()).unwrap_or_default();
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    Out {
        status,
        headers,
        body,
        raw,
    }
}

impl<'a> Api<'a> {
    fn new(bg: &'a Bindgate, pki: &Pki) -> Self {
        Api {
            bg,
            client: bg.client(pki, None, Http::One),
            master: pki.token("master.token"),
            sessions_token: pki.token("session-store.token"),
        }
    }

    fn register(&self, metadata: &Value) -> Out {
        out(self
            .client
            .post(self.bg.url("/clients"))
            .bearer_auth(&self.master)
            .json(metadata)
            .send()
            .unwrap())
    }

    fn client_op(
        &self,
        method: reqwest::Method,
        id: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Out {
        let mut req = self
            .client
            .request(method, self.bg.url(&format!("/clients/{id}")))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        out(req.send().unwrap())
    }

    fn sessions(
        &self,
        method: reqwest::Method,
        query: &str,
        sid: Option<&str>,
        body: Option<&str>,
    ) -> Out {
        let mut req = self
            .client
            .request(
                method,
                self.bg
                    .url(&format!("/session-store/rest/v2/sessions{query}")),
            )
            .bearer_auth(&self.sessions_token);
        if let Some(sid) = sid {
            req = req.header("SID", sid);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        out(req.send().unwrap())
    }

    fn create_session(&self, body: &str) -> String {
        let o = self.sessions(reqwest::Method::POST, "", None, Some(body));
        assert_eq!(o.status, 201, "{:?}", o.body);
        o.body["sid"].as_str().unwrap().to_string()
    }
}

fn start(pki: &Pki, state_path: &str) -> Bindgate {
    Bindgate::start(pki, &config(state_path, "64KiB"))
}

#[test]
fn register_read_update_delete_a_client() {
    register_read_update_delete_a_client_on(":memory:");
}

fn register_read_update_delete_a_client_on(state: &str) {
    let pki = Pki::new();
    let bg = start(&pki, state);
    let api = Api::new(&bg, &pki);

    let o = api.register(&json!({"redirect_uris": ["https://app.example.com/cb"], "client_name": "My app", "x_custom": {"kept": true}}));
    assert_eq!(o.status, 201, "{:?}", o.body);
    assert_eq!(o.headers["cache-control"], "no-store");
    assert_eq!(o.headers["pragma"], "no-cache");
    let c = &o.body;
    let id = c["client_id"].as_str().unwrap().to_string();
    let rat = c["registration_access_token"].as_str().unwrap().to_string();
    assert!(rat.len() >= 43, "256-bit registration access token");
    assert!(c["client_id_issued_at"].as_i64().unwrap() > 1_700_000_000);
    assert!(c["client_secret"].as_str().unwrap().len() >= 43);
    assert_eq!(c["client_secret_expires_at"], 0);
    assert_eq!(
        c["registration_client_uri"],
        format!("https://idp.example.com/clients/{id}")
    );
    assert_eq!(c["grant_types"], json!(["authorization_code"]));
    assert_eq!(c["response_types"], json!(["code"]));
    assert_eq!(c["token_endpoint_auth_method"], "client_secret_basic");
    assert_eq!(c["x_custom"], json!({"kept": true}));

    // Read with its own token.
    let o = api.client_op(reqwest::Method::GET, &id, &rat, None);
    assert_eq!(o.status, 200);
    assert_eq!(o.body["client_name"], "My app");
    assert!(
        o.body.get("registration_access_token").is_none(),
        "the token is never shown again"
    );

    // Another client's token is refused.
    let other = api.register(&json!({"redirect_uris": ["https://other.example.com/cb"]}));
    let other_rat = other.body["registration_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let o = api.client_op(reqwest::Method::GET, &id, &other_rat, None);
    assert_eq!(o.status, 401);
    assert!(o.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer error=\"invalid_token\""));
    assert_eq!(
        api.client_op(reqwest::Method::DELETE, &id, &other_rat, None)
            .status,
        401
    );

    // Full replacement.
    let update = json!({"client_id": id, "redirect_uris": ["https://app.example.com/cb2"], "client_name": "Renamed",
        "token_endpoint_auth_method": "none"});
    let o = api.client_op(reqwest::Method::PUT, &id, &rat, Some(&update));
    assert_eq!(o.status, 200, "{:?}", o.body);
    assert_eq!(o.body["client_name"], "Renamed");
    assert_eq!(
        o.body["redirect_uris"],
        json!(["https://app.example.com/cb2"])
    );
    assert!(
        o.body.get("client_secret").is_none(),
        "a public client has no secret"
    );
    assert!(
        o.body.get("x_custom").is_none(),
        "a PUT replaces the whole metadata"
    );
    for bad in [
        json!({"client_id": "someone-else", "redirect_uris": ["https://a.example.com/cb"]}),
        json!({"redirect_uris": ["https://a.example.com/cb"]}),
        json!({"client_id": id, "redirect_uris": ["https://a.example.com/cb"], "registration_access_token": rat}),
        json!({"client_id": id, "redirect_uris": ["https://a.example.com/cb"], "registration_client_uri": "x"}),
        json!({"client_id": id, "redirect_uris": ["https://a.example.com/cb"], "client_id_issued_at": 1}),
        json!({"client_id": id, "redirect_uris": ["https://a.example.com/cb"], "client_secret_expires_at": 0}),
    ] {
        let o = api.client_op(reqwest::Method::PUT, &id, &rat, Some(&bad));
        assert_eq!(o.status, 400, "{bad}");
        assert_eq!(o.body["error"], "invalid_client_metadata", "{bad}");
    }

    // The master token may manage any client and list them all.
    assert_eq!(
        api.client_op(reqwest::Method::GET, &id, &api.master, None)
            .status,
        200
    );
    let list = out(api
        .client
        .get(bg.url("/clients"))
        .bearer_auth(&api.master)
        .send()
        .unwrap());
    assert_eq!(list.status, 200);
    assert_eq!(list.body.as_array().unwrap().len(), 2);
    let list = out(api
        .client
        .get(bg.url("/clients"))
        .bearer_auth(&rat)
        .send()
        .unwrap());
    assert_eq!(list.status, 401, "listing needs the master token");

    // Delete.
    let o = api.client_op(reqwest::Method::DELETE, &id, &rat, None);
    assert_eq!(o.status, 204);
    assert!(o.raw.is_empty());
    assert_eq!(
        api.client_op(reqwest::Method::GET, &id, &rat, None).status,
        401
    );
    assert_eq!(
        api.client_op(reqwest::Method::GET, &id, &api.master, None)
            .status,
        404
    );
    assert_eq!(
        api.client_op(
            reqwest::Method::POST,
            other.body["client_id"].as_str().unwrap(),
            &other_rat,
            None
        )
        .status,
        405
    );
}

#[test]
fn invalid_client_metadata_names_the_field() {
    invalid_client_metadata_names_the_field_on(":memory:");
}

fn invalid_client_metadata_names_the_field_on(state: &str) {
    let pki = Pki::new();
    let bg = start(&pki, state);
    let api = Api::new(&bg, &pki);
    let cases = [
        (
            json!({"redirect_uris": ["javascript:alert(1)"]}),
            "invalid_redirect_uri",
            "redirect_uris[0]",
        ),
        (
            json!({"redirect_uris": ["data:text/html,x"]}),
            "invalid_redirect_uri",
            "redirect_uris[0]",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/cb", "vbscript:x"]}),
            "invalid_redirect_uri",
            "redirect_uris[1]",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/cb#frag"]}),
            "invalid_redirect_uri",
            "fragment",
        ),
        (
            json!({"redirect_uris": ["/relative"]}),
            "invalid_redirect_uri",
            "absolute",
        ),
        (
            json!({"redirect_uris": ["http://app.example.com/cb"]}),
            "invalid_redirect_uri",
            "https",
        ),
        (
            json!({"client_name": "no redirect"}),
            "invalid_redirect_uri",
            "redirect_uris",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/cb"], "response_types": ["token"]}),
            "invalid_client_metadata",
            "implicit",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/cb"], "token_endpoint_auth_method": "tls_client_auth"}),
            "invalid_client_metadata",
            "tls_client_auth",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/cb"], "token_endpoint_auth_method": "self_signed_tls_client_auth"}),
            "invalid_client_metadata",
            "jwks",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/cb"], "jwks": {"keys": []}, "jwks_uri": "https://a.example.com/j"}),
            "invalid_client_metadata",
            "jwks",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/cb"], "client_name": 42}),
            "invalid_client_metadata",
            "client_name",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/cb"], "client_id": "mine"}),
            "invalid_client_metadata",
            "client_id",
        ),
        (json!([1, 2, 3]), "invalid_client_metadata", "JSON object"),
    ];
    for (metadata, error, mention) in cases {
        let o = api.register(&metadata);
        assert_eq!(o.status, 400, "{metadata}");
        assert_eq!(o.body["error"], error, "{metadata}");
        assert!(
            o.body["error_description"]
                .as_str()
                .unwrap()
                .contains(mention),
            "{metadata}: {}",
            o.body
        );
    }
    let o = out(api
        .client
        .post(bg.url("/clients"))
        .bearer_auth(&api.master)
        .body("{not json")
        .send()
        .unwrap());
    assert_eq!(
        (o.status, o.body["error"].as_str()),
        (400, Some("invalid_client_metadata"))
    );
    // Good ones: loopback http, native scheme, tls_client_auth with one subject, self-signed with jwks.
    for metadata in [
        json!({"redirect_uris": ["http://127.0.0.1:5000/cb", "com.example.app:/cb"], "token_endpoint_auth_method": "none"}),
        json!({"redirect_uris": ["https://a.example.com/cb"], "token_endpoint_auth_method": "tls_client_auth", "tls_client_auth_subject_dn": "CN=client1,O=bindgate development"}),
        json!({"grant_types": ["client_credentials"], "response_types": [], "token_endpoint_auth_method": "self_signed_tls_client_auth", "jwks": {"keys": []}}),
    ] {
        let o = api.register(&metadata);
        assert_eq!(o.status, 201, "{metadata}: {}", o.body);
        assert!(o.body.get("client_secret").is_none(), "{metadata}");
    }
}

#[test]
fn session_store_operations() {
    session_store_operations_on(":memory:");
}

fn session_store_operations_on(state: &str) {
    let pki = Pki::new();
    let bg = start(&pki, state);
    let api = Api::new(&bg, &pki);
    use reqwest::Method as M;

    let a1 = api.create_session(r#"{"sub":"alice","acr":"urn:acr:1","amr":["pwd"],"claims":{"email":"a@example.com"},"data":{"x":1}}"#);
    let a2 = api.create_session(r#"{"sub":"alice"}"#);
    let b1 = api.create_session(r#"{"sub":"bob","max_idle":-1}"#);
    assert_eq!(a1.len(), 43, "256-bit session id");
    assert_ne!(a1, a2);

    let o = api.sessions(M::GET, "", Some(&a1), None);
    assert_eq!(o.status, 200);
    assert_eq!(o.body["sub"], "alice");
    assert_eq!(o.body["acr"], "urn:acr:1");
    assert_eq!(o.body["claims"]["email"], "a@example.com");
    assert_eq!(o.body["max_life"], 60, "the configured default");
    assert_eq!(o.body["max_idle"], 15);
    let o = api.sessions(M::GET, "", Some(&b1), None);
    assert_eq!(o.body["max_idle"], -1, "overridden per session");

    let o = api.sessions(M::GET, "?subject=alice", None, None);
    assert_eq!(o.status, 200);
    let map = o.body.as_object().unwrap();
    assert_eq!(map.len(), 2);
    assert!(map.contains_key(&a1) && map.contains_key(&a2));

    // Replace.
    let o = api.sessions(
        M::PUT,
        "",
        Some(&a2),
        Some(r#"{"sub":"alice","acr":"urn:acr:2"}"#),
    );
    assert_eq!(o.status, 204);
    assert_eq!(
        api.sessions(M::GET, "", Some(&a2), None).body["acr"],
        "urn:acr:2"
    );
    // Moving a session to another subject moves it in the subject index too.
    assert_eq!(
        api.sessions(M::PUT, "", Some(&a2), Some(r#"{"sub":"carol"}"#))
            .status,
        204
    );
    assert_eq!(
        api.sessions(M::GET, "?subject=alice", None, None)
            .body
            .as_object()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        api.sessions(M::GET, "?subject=carol", None, None)
            .body
            .as_object()
            .unwrap()
            .len(),
        1
    );

    // Delete one, with and without quiet.
    let o = api.sessions(M::DELETE, "", Some(&a1), None);
    assert_eq!(o.status, 200);
    assert_eq!(o.body["sub"], "alice");
    assert_eq!(api.sessions(M::GET, "", Some(&a1), None).status, 404);
    let o = api.sessions(M::DELETE, "?quiet=true", Some(&a2), None);
    assert_eq!(o.status, 204);
    assert!(o.raw.is_empty());

    // Delete by subject.
    api.create_session(r#"{"sub":"dave"}"#);
    api.create_session(r#"{"sub":"dave"}"#);
    let o = api.sessions(M::DELETE, "?subject=dave", None, None);
    assert_eq!(o.status, 200);
    assert_eq!(o.body.as_object().unwrap().len(), 2);
    api.create_session(r#"{"sub":"erin"}"#);
    let o = api.sessions(M::DELETE, "?subject=erin&quiet=true", None, None);
    assert_eq!((o.status, o.raw.len()), (204, 0));
    assert!(api
        .sessions(M::GET, "?subject=erin", None, None)
        .body
        .as_object()
        .unwrap()
        .is_empty());

    // Bad input: 400 or 404, never 500.
    assert_eq!(
        api.sessions(M::GET, "", Some("unknown-sid"), None).status,
        404
    );
    assert_eq!(
        api.sessions(M::PUT, "", Some("unknown-sid"), Some(r#"{"sub":"x"}"#))
            .status,
        404
    );
    assert_eq!(
        api.sessions(M::DELETE, "", Some("unknown-sid"), None)
            .status,
        404
    );
    assert_eq!(
        api.sessions(M::GET, "", Some(&"a".repeat(500)), None)
            .status,
        400
    );
    assert_eq!(
        api.sessions(M::GET, "", Some("has spaces in it"), None)
            .status,
        400
    );
    let o = out(api
        .client
        .get(bg.url("/session-store/rest/v2/sessions"))
        .bearer_auth(&api.sessions_token)
        .header(
            "SID",
            reqwest::header::HeaderValue::from_bytes(b"\xc3\xa9t\xc3\xa9").unwrap(),
        )
        .send()
        .unwrap());
    assert_eq!(o.status, 400);
    for body in [
        "{not json",
        r#"{"sub":5}"#,
        r#"{"acr":"1"}"#,
        r#"{"sub":"a","max_idle":"soon"}"#,
        "[]",
    ] {
        let o = api.sessions(M::POST, "", None, Some(body));
        assert_eq!(o.status, 400, "{body}");
        assert_eq!(o.body["error"], "invalid_request", "{body}");
    }
    assert_eq!(
        api.sessions(M::GET, "", None, None).status,
        400,
        "neither SID nor subject"
    );
    assert_eq!(
        api.sessions(M::DELETE, "", None, None).status,
        400,
        "delete needs a target"
    );
    assert_eq!(api.sessions(M::PATCH, "", Some(&b1), None).status, 405);
    let o = out(api
        .client
        .get(bg.url("/session-store/rest/v2/other"))
        .bearer_auth(&api.sessions_token)
        .send()
        .unwrap());
    assert_eq!(o.status, 404);
}

#[test]
fn expired_sessions_are_never_returned() {
    expired_sessions_are_never_returned_on(":memory:");
}

fn expired_sessions_are_never_returned_on(state: &str) {
    let pki = Pki::new();
    let bg = start(&pki, state);
    let api = Api::new(&bg, &pki);
    let long_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    // Authenticated an hour ago with an auth_life of 30 minutes: already expired.
    let stale = api.create_session(&format!(r#"{{"sub":"frank","auth_time":{long_ago}}}"#));
    let fresh = api.create_session(&format!(
        r#"{{"sub":"frank","auth_time":{long_ago},"auth_life":120}}"#
    ));
    use reqwest::Method as M;
    assert_eq!(api.sessions(M::GET, "", Some(&stale), None).status, 404);
    assert_eq!(api.sessions(M::GET, "", Some(&fresh), None).status, 200);
    let map = api.sessions(M::GET, "?subject=frank", None, None).body;
    assert_eq!(map.as_object().unwrap().len(), 1);
    assert!(map.get(&fresh).is_some());
}

#[test]
fn body_over_max_body_is_413_on_the_embedded_service() {
    let pki = Pki::new();
    let bg = Bindgate::start(&pki, &config(":memory:", "1KiB"));
    let api = Api::new(&bg, &pki);
    let big = format!(r#"{{"sub":"a","data":{{"pad":"{}"}}}}"#, "x".repeat(4096));
    let o = api.sessions(reqwest::Method::POST, "", None, Some(&big));
    assert_eq!(o.status, 413);
    // Chunked (no Content-Length): refused once the limit is passed.
    let o = api
        .client
        .post(bg.url("/session-store/rest/v2/sessions"))
        .bearer_auth(&api.sessions_token)
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(
            big.into_bytes(),
        )))
        .send();
    if let Ok(resp) = o {
        assert_eq!(resp.status(), 413);
    }
    assert_eq!(
        api.sessions(reqwest::Method::POST, "", None, Some(r#"{"sub":"small"}"#))
            .status,
        201
    );
}

#[test]
fn concurrent_writers() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let bg = start(&pki, &db.display().to_string());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let client = bg.client(&pki, None, Http::Alpn);
            let url = bg.url("/session-store/rest/v2/sessions");
            let token = pki.token("session-store.token");
            std::thread::spawn(move || {
                (0..25)
                    .map(|_| {
                        let r = client
                            .post(&url)
                            .bearer_auth(&token)
                            .body(format!(r#"{{"sub":"writer-{t}"}}"#))
                            .send()
                            .unwrap();
                        assert_eq!(r.status(), 201);
                        r.json::<Value>().unwrap()["sid"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut sids: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let api = Api::new(&bg, &pki);
    for t in 0..4 {
        let map = api
            .sessions(
                reqwest::Method::GET,
                &format!("?subject=writer-{t}"),
                None,
                None,
            )
            .body;
        assert_eq!(map.as_object().unwrap().len(), 25);
    }
    sids.sort();
    sids.dedup();
    assert_eq!(sids.len(), 100);
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("bindgate.db");
    let path = db.display().to_string();
    let (id, rat, sid) = {
        let mut bg = start(&pki, &path);
        let api = Api::new(&bg, &pki);
        let c = api.register(
            &json!({"redirect_uris": ["https://app.example.com/cb"], "client_name": "durable"}),
        );
        assert_eq!(c.status, 201);
        let sid = api.create_session(r#"{"sub":"grace","acr":"1"}"#);
        bg.signal("KILL");
        assert!(bg.wait_exit(Duration::from_secs(10)).is_some());
        (
            c.body["client_id"].as_str().unwrap().to_string(),
            c.body["registration_access_token"]
                .as_str()
                .unwrap()
                .to_string(),
            sid,
        )
    };
    let bg = start(&pki, &path);
    let api = Api::new(&bg, &pki);
    let o = api.client_op(reqwest::Method::GET, &id, &rat, None);
    assert_eq!(o.status, 200, "the client survived");
    assert_eq!(o.body["client_name"], "durable");
    let o = api.sessions(reqwest::Method::GET, "", Some(&sid), None);
    assert_eq!(o.status, 200, "the session survived");
    assert_eq!(o.body["sub"], "grace");
}

/// Fills a state file with `n` sessions through the library (an import), before the server
/// opens it.
fn populate(db: &Path, n: usize) {
    populate_with(db, n, |i| format!("user-{}", i % 1000));
}

fn populate_with(db: &Path, n: usize, subject: impl Fn(usize) -> String) {
    use bindgate::config::{SessionLimits, StatePath};
    use bindgate::state::{sessions, Store};
    let store = Store::open(&StatePath::File(db.to_path_buf())).unwrap();
    let limits = SessionLimits {
        max_life: 60,
        auth_life: 30,
        max_idle: 15,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let items = (0..n).map(|i| {
        let body = format!(r#"{{"sub":"{}","acr":"1","data":{{"i":{i}}}}}"#, subject(i));
        let r = sessions::record_from_body(body.as_bytes(), &limits, now, now).unwrap();
        (format!("sid-{i:08}"), r.subject.clone(), r.encode())
    });
    store.insert_sessions(items).unwrap();
    assert_eq!(store.session_count().unwrap(), n as u64);
}

#[test]
fn delete_all_100k_streams_the_map_and_quiet_answers_204() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    populate(&db, 100_000);
    let bg = start(&pki, &db.display().to_string());
    let api = Api::new(&bg, &pki);
    use reqwest::Method as M;

    let resp = api
        .client
        .delete(bg.url("/session-store/rest/v2/sessions?all=true"))
        .bearer_auth(&api.sessions_token)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("content-length").is_none(),
        "streamed, not buffered"
    );
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let map: serde_json::Map<String, Value> = resp.json().unwrap();
    assert_eq!(map.len(), 100_000);
    assert_eq!(map["sid-00000042"]["data"]["i"], 42);
    assert!(api
        .sessions(M::GET, "?subject=user-7", None, None)
        .body
        .as_object()
        .unwrap()
        .is_empty());
    assert_eq!(
        api.sessions(M::GET, "", Some("sid-00000042"), None).status,
        404
    );

    // Quiet: refill, then 204 with no body, and nothing left.
    drop(bg);
    populate(&db, 100_000);
    let bg = start(&pki, &db.display().to_string());
    let api = Api::new(&bg, &pki);
    let o = api.sessions(M::DELETE, "?all=true&quiet=true", None, None);
    assert_eq!(o.status, 204);
    assert!(o.raw.is_empty());
    assert_eq!(
        api.sessions(M::GET, "", Some("sid-00099999"), None).status,
        404
    );
    // New sessions work after a delete-all.
    api.create_session(r#"{"sub":"after"}"#);
    assert_eq!(
        api.sessions(M::GET, "?subject=after", None, None)
            .body
            .as_object()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_subject_with_100k_sessions_is_streamed_when_read_and_deleted() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    // 100 000 sessions of alice, one of bob (sorted after alice in the index).
    populate_with(&db, 100_001, |i| {
        if i == 100_000 {
            "bob".into()
        } else {
            "alice".into()
        }
    });
    let bg = start(&pki, &db.display().to_string());
    let api = Api::new(&bg, &pki);
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let resp = api
            .client
            .request(
                method.clone(),
                bg.url("/session-store/rest/v2/sessions?subject=alice"),
            )
            .bearer_auth(&api.sessions_token)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200, "{method}");
        assert!(
            resp.headers().get("content-length").is_none(),
            "{method}: streamed, not buffered"
        );
        let map: serde_json::Map<String, Value> = resp.json().unwrap();
        assert_eq!(map.len(), 100_000, "{method}");
        assert_eq!(map["sid-00000042"]["data"]["i"], 42);
        assert!(map.values().all(|s| s["sub"] == "alice"));
    }
    use reqwest::Method as M;
    let left = api.sessions(M::GET, "?subject=alice", None, None);
    assert_eq!(left.body, json!({}), "every session of alice deleted");
    assert_eq!(
        api.sessions(M::GET, "", Some("sid-00000042"), None).status,
        404
    );
    let bob = api.sessions(M::GET, "?subject=bob", None, None);
    assert_eq!(bob.body.as_object().unwrap().len(), 1, "bob's untouched");
}

#[test]
fn a_store_written_with_the_earlier_subject_index_is_migrated() {
    use bindgate::config::SessionLimits;
    use bindgate::state::sessions;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    {
        // The layout of earlier releases: a multimap subject → sid.
        let limits = SessionLimits {
            max_life: 60,
            auth_life: 30,
            max_idle: 15,
        };
        let now = tokens_now();
        let r = sessions::record_from_body(br#"{"sub":"legacy"}"#, &limits, now, now).unwrap();
        let file = redb::Database::create(&db).unwrap();
        let txn = file.begin_write().unwrap();
        {
            let mut t = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("sessions.0"))
                .unwrap();
            t.insert("sid-legacy", r.encode().as_slice()).unwrap();
            let mut m = txn
                .open_multimap_table(redb::MultimapTableDefinition::<&str, &str>::new(
                    "sessions_by_subject.0",
                ))
                .unwrap();
            m.insert("legacy", "sid-legacy").unwrap();
        }
        txn.commit().unwrap();
    }
    let bg = start(&pki, &db.display().to_string());
    let api = Api::new(&bg, &pki);
    use reqwest::Method as M;
    let listed = api.sessions(M::GET, "?subject=legacy", None, None);
    assert_eq!(
        listed.body["sid-legacy"]["sub"], "legacy",
        "{:?}",
        listed.body
    );
    let o = api.sessions(M::DELETE, "?subject=legacy&quiet=true", None, None);
    assert_eq!(o.status, 204);
    assert_eq!(
        api.sessions(M::GET, "", Some("sid-legacy"), None).status,
        404
    );
}

fn tokens_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn quiet_delete_all_is_honoured_when_the_provider_ignores_it() {
    let pki = Pki::new();
    let provider = Upstream::start();
    // A provider that answers every delete with the full map, quiet or not.
    provider.set_reply(200, r#"{"sid-1":{"sub":"alice"},"sid-2":{"sub":"bob"}}"#);
    let yaml = format!(
        r#"
listen:
  address: "{{LISTEN}}"
  tls: {{cert: "{{PKI}}/server.crt", key: "{{PKI}}/server.key"}}
admin: {{address: "{{ADMIN}}"}}
session_store:
  target: idp
  api_tokens:
    - file: "{{PKI}}/session-store.token"
upstreams:
  idp: {{address: "{}"}}
server: {{threads: 1}}
"#,
        provider.addr
    );
    let bg = Bindgate::start(&pki, &yaml);
    for http in [Http::One, Http::Alpn] {
        let client = bg.client(&pki, None, http);
        let resp = client
            .delete(bg.url("/session-store/rest/v2/sessions?all=true&quiet=true"))
            .bearer_auth(pki.token("session-store.token"))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 204);
        assert!(resp.bytes().unwrap().is_empty());
        let resp = client
            .delete(bg.url("/session-store/rest/v2/sessions?all=true"))
            .bearer_auth(pki.token("session-store.token"))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.json::<Value>().unwrap().as_object().unwrap().len(), 2);
    }
    let got = provider.wait_for(4);
    assert_eq!(got.len(), 4);
    assert_eq!(
        got[0].target,
        "/session-store/rest/v2/sessions?all=true&quiet=true"
    );
}

#[test]
fn delete_all_streams_over_http2_too() {
    delete_all_streams_over_http2_too_on(":memory:");
}

fn delete_all_streams_over_http2_too_on(state: &str) {
    let pki = Pki::new();
    let bg = start(&pki, state);
    let api = Api::new(&bg, &pki);
    for i in 0..1200 {
        api.create_session(&format!(r#"{{"sub":"h2-{}"}}"#, i % 10));
    }
    let resp = bg
        .client(&pki, None, Http::Alpn)
        .delete(bg.url("/session-store/rest/v2/sessions?all=true"))
        .bearer_auth(&api.sessions_token)
        .send()
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let map: serde_json::Map<String, Value> = resp.json().unwrap();
    assert_eq!(map.len(), 1200, "three chunks of 512 and the rest");
}

#[test]
fn a_deleted_session_stays_deleted_under_concurrent_reads_and_replaces() {
    a_deleted_session_stays_deleted_under_concurrent_reads_and_replaces_on(":memory:");
}

fn a_deleted_session_stays_deleted_under_concurrent_reads_and_replaces_on(state: &str) {
    let pki = Pki::new();
    let bg = start(&pki, state);
    let api = Api::new(&bg, &pki);
    let token = pki.token("session-store.token");
    let url = bg.url("/session-store/rest/v2/sessions");
    // Each trial: three readers and one replacer loop on one SID while it is deleted by SID, by
    // subject or by delete-all; afterwards it must be gone, whatever they did in between.
    for trial in 0..100 {
        let subject = format!("user-{trial}");
        let sid = api.create_session(&format!(r#"{{"sub":"{subject}"}}"#));
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            for worker in 0..8 {
                let (bg, pki, url, token, sid, stop) = (&bg, &pki, &url, &token, &sid, &stop);
                let subject = subject.clone();
                scope.spawn(move || {
                    let client = bg.client(pki, None, Http::One);
                    // Bounded: stops when told, and after 2 000 requests at most.
                    for _ in 0..2000 {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        let req = if worker == 0 {
                            client
                                .put(url)
                                .body(format!(r#"{{"sub":"{subject}","acr":"x"}}"#))
                        } else {
                            client.get(url)
                        };
                        let status = req
                            .bearer_auth(token)
                            .header("SID", sid)
                            .send()
                            .map(|r| r.status().as_u16())
                            .unwrap_or(0);
                        assert!(matches!(status, 200 | 204 | 404), "status {status}");
                    }
                });
            }
            // Let the loops start before the delete.
            std::thread::sleep(Duration::from_millis(5));
            let deleted = match trial % 3 {
                0 => api.sessions(reqwest::Method::DELETE, "?quiet=true", Some(&sid), None),
                1 => api.sessions(
                    reqwest::Method::DELETE,
                    &format!("?subject={subject}&quiet=true"),
                    None,
                    None,
                ),
                _ => api.sessions(reqwest::Method::DELETE, "?all=true&quiet=true", None, None),
            };
            assert_eq!(deleted.status, 204, "trial {trial}");
            // The loops keep going a little after the delete: a write-back would land here.
            std::thread::sleep(Duration::from_millis(5));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let after = api.sessions(reqwest::Method::GET, "", Some(&sid), None);
        assert_eq!(
            after.status, 404,
            "trial {trial}: the deleted session came back"
        );
        let listed = api.sessions(
            reqwest::Method::GET,
            &format!("?subject={subject}"),
            None,
            None,
        );
        assert_eq!(listed.body, json!({}), "trial {trial}");
    }
}

/// The registry and session suites above, once on a three-master Redis Cluster (issue 12).
#[test]
fn the_registry_and_session_suites_on_a_redis_cluster() {
    let cluster = crate::harness::redis::RedisCluster::start();
    let on = |prefix: &str| {
        format!(
            r#"redis {{cluster: {}, key_prefix: "{prefix}:"}}"#,
            cluster.seeds()
        )
    };
    register_read_update_delete_a_client_on(&on("registry"));
    invalid_client_metadata_names_the_field_on(&on("metadata"));
    session_store_operations_on(&on("sessions"));
    expired_sessions_are_never_returned_on(&on("expiry"));
    delete_all_streams_over_http2_too_on(&on("h2"));
    a_deleted_session_stays_deleted_under_concurrent_reads_and_replaces_on(&on("races"));
    assert!(
        cluster.key_counts().iter().all(|n| *n > 0),
        "keys on every master: {:?}",
        cluster.key_counts()
    );
}

/// `bindgate_sessions` counts what the store holds (Connect2id's `numSessions`), and a read
/// with `skip_last_used_update=true` answers like any read.
#[test]
fn the_sessions_gauge_and_a_read_that_skips_the_last_used_update() {
    let pki = Pki::new();
    let bg = start(&pki, ":memory:");
    let api = Api::new(&bg, &pki);
    let sid = api.create_session(r#"{"sub":"alice"}"#);
    api.create_session(r#"{"sub":"bob"}"#);
    let read = api.sessions(
        reqwest::Method::GET,
        "?skip_last_used_update=true",
        Some(&sid),
        None,
    );
    assert_eq!(read.status, 200, "{:?}", read.body);
    assert_eq!(read.body["sub"], "alice");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while bg.metric("bindgate_sessions ") != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "bindgate_sessions never said 2: {}",
            bg.metrics()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
