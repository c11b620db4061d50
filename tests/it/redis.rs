//! Several bindgate instances on one Redis (issue 12): a real `redis-server` per test on a free
//! port (and a three-master Redis Cluster), two bindgate processes, real TLS clients.

use crate::harness::redis::{RedisCluster, RedisServer};
use crate::harness::tokens::*;
use crate::harness::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Registry and session store embedded, on `state` (a YAML flow mapping), initial access tokens
/// from `signer`'s key server, DPoP on `/api` for the public origin both instances share.
fn config(
    state: &str,
    jwks: std::net::SocketAddr,
    idp: std::net::SocketAddr,
    single_use: bool,
) -> String {
    format!(
        r#"{LISTENERS}issuer: "{ISSUER}"
jwks: {{uri: "http://{jwks}/jwks.json"}}
dpop: {{origins: ["https://idp.example.com"], max_age: 60s}}
registration:
  endpoint_uri: "{ENDPOINT}"
  master_tokens: [{{file: "{{PKI}}/master.token"}}]
  single_use: {single_use}
session_store:
  api_tokens: [{{file: "{{PKI}}/session-store.token"}}]
upstreams:
  idp: {{address: "{idp}"}}
routes:
  - prefix: /api
    upstream: idp
    token: {{require_proof_of_possession: true}}
  - prefix: /userinfo
    upstream: idp
    token: {{scope: [client-reg]}}
state: {state}
server: {{threads: 2}}
"#
    )
}

struct Out {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

fn out(r: reqwest::Result<reqwest::blocking::Response>) -> Out {
    match r {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.json().unwrap_or(Value::Null);
            Out {
                status,
                headers,
                body,
            }
        }
        Err(_) => Out {
            status: 0,
            headers: Default::default(),
            body: Value::Null,
        },
    }
}

/// One bindgate instance seen by a client.
struct Node {
    bg: Bindgate,
    client: reqwest::blocking::Client,
    master: String,
    st: String,
}

impl Node {
    fn start(pki: &Pki, yaml: &str) -> Node {
        let bg = Bindgate::start(pki, yaml);
        let client = bg.client(pki, None, Http::One);
        Node {
            bg,
            client,
            master: pki.token("master.token"),
            st: pki.token("session-store.token"),
        }
    }

    fn register(&self, token: &str, metadata: &Value) -> Out {
        out(self
            .client
            .post(self.bg.url("/clients"))
            .bearer_auth(token)
            .json(metadata)
            .send())
    }

    fn client_op(&self, method: &str, id: &str, token: &str, body: Option<&Value>) -> Out {
        let mut req = self
            .client
            .request(
                method.parse().unwrap(),
                self.bg.url(&format!("/clients/{id}")),
            )
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        out(req.send())
    }

    fn sessions(&self, method: &str, query: &str, sid: Option<&str>, body: Option<&Value>) -> Out {
        let mut req = self
            .client
            .request(
                method.parse().unwrap(),
                self.bg
                    .url(&format!("/session-store/rest/v2/sessions{query}")),
            )
            .bearer_auth(&self.st);
        if let Some(s) = sid {
            req = req.header("SID", s);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        out(req.send())
    }

    fn create_session(&self, subject: &str) -> String {
        let o = self.sessions("POST", "", None, Some(&json!({"sub": subject})));
        assert_eq!(
            o.status,
            201,
            "{:?}\n{}",
            o.body,
            self.bg
                .logs()
                .lines()
                .filter(|l| l.contains("ERROR"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        o.body["sid"].as_str().unwrap().to_string()
    }

    fn ready(&self) -> u16 {
        reqwest::blocking::Client::new()
            .get(self.bg.admin_url("/readyz"))
            .timeout(Duration::from_secs(3))
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }
}

struct Pair {
    pki: Pki,
    signer: Signer,
    _jwks: Upstream,
    idp: Upstream,
    a: Node,
    b: Node,
}

fn pair(state: &str, single_use: bool) -> Pair {
    let pki = Pki::new();
    let signer = Signer::new(Algorithm::ES256, "issuer-1");
    let (jwks, idp) = key_server_and_provider(&[&signer]);
    let yaml = config(state, jwks.addr, idp.addr, single_use);
    let a = Node::start(&pki, &yaml);
    let b = Node::start(&pki, &yaml);
    Pair {
        pki,
        signer,
        _jwks: jwks,
        idp,
        a,
        b,
    }
}

fn redis_state(r: &RedisServer) -> String {
    format!(
        r#"{{redis: {{url: "{}", key_prefix: "bg-test:"}}}}"#,
        r.url()
    )
}

const METADATA: &str = r#"{"redirect_uris":["https://app.example.com/cb"],"client_name":"shared"}"#;

/// The registry and the session store, used across two instances: what one writes, the other
/// reads, updates and deletes.
fn registry_and_sessions_across(p: &Pair) {
    let (a, b) = (&p.a, &p.b);
    let metadata: Value = serde_json::from_str(METADATA).unwrap();
    let reg = a.register(&a.master, &metadata);
    assert_eq!(reg.status, 201, "{:?}", reg.body);
    let id = reg.body["client_id"].as_str().unwrap().to_string();
    let rat = reg.body["registration_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let read = b.client_op("GET", &id, &rat, None);
    assert_eq!(read.status, 200, "{:?}", read.body);
    assert_eq!(read.body["client_name"], "shared");
    let mut updated = read.body.clone();
    updated["client_name"] = json!("renamed on B");
    for k in [
        "registration_access_token",
        "registration_client_uri",
        "client_secret_expires_at",
        "client_id_issued_at",
    ] {
        updated.as_object_mut().unwrap().remove(k);
    }
    let put = b.client_op("PUT", &id, &rat, Some(&updated));
    assert_eq!(put.status, 200, "{:?}", put.body);
    assert_eq!(
        a.client_op("GET", &id, &rat, None).body["client_name"],
        "renamed on B"
    );
    // The master token lists it on either instance.
    let list = out(a
        .client
        .get(a.bg.url("/clients"))
        .bearer_auth(&a.master)
        .send());
    assert_eq!(list.status, 200);
    assert!(list
        .body
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["client_id"] == id.as_str()));
    assert_eq!(b.client_op("DELETE", &id, &rat, None).status, 204);
    // Gone for A too: its token no longer opens anything (RFC 7592 §2: 401).
    assert_eq!(a.client_op("GET", &id, &rat, None).status, 401);

    // Sessions: made on A, read and replaced on B, by subject on either.
    let s1 = a.create_session("alice");
    let s2 = a.create_session("alice");
    let s3 = b.create_session("bob");
    let r = b.sessions("GET", "", Some(&s1), None);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["sub"], "alice");
    let by_subject = b.sessions("GET", "?subject=alice", None, None);
    assert_eq!(by_subject.status, 200);
    let map = by_subject
        .body
        .as_object()
        .unwrap_or_else(|| panic!("{:?} {}", by_subject.body, b.bg.logs()));
    assert_eq!(map.len(), 2, "{map:?}");
    assert!(map.contains_key(&s1) && map.contains_key(&s2));
    // Replaced on B with another subject: the index follows.
    assert_eq!(
        b.sessions("PUT", "", Some(&s2), Some(&json!({"sub": "carol"})))
            .status,
        204
    );
    let alice = a.sessions("GET", "?subject=alice", None, None).body;
    assert_eq!(alice.as_object().unwrap().len(), 1, "{alice}");
    // Delete by subject on A, streamed: what was deleted.
    let deleted = a.sessions("DELETE", "?subject=carol", None, None);
    assert_eq!(deleted.status, 200);
    assert!(deleted.body.as_object().unwrap().contains_key(&s2));
    assert_eq!(b.sessions("GET", "", Some(&s2), None).status, 404);
    // Quiet delete-all on B: gone on A.
    assert_eq!(
        b.sessions("DELETE", "?all=true&quiet=true", None, None)
            .status,
        204
    );
    for sid in [&s1, &s3] {
        assert_eq!(a.sessions("GET", "", Some(sid), None).status, 404);
    }
    // New sessions after the switch are served; a non-quiet delete-all streams them back.
    let s4 = a.create_session("dave");
    assert_eq!(b.sessions("GET", "", Some(&s4), None).status, 200);
    let all = b.sessions("DELETE", "?all=true", None, None);
    assert_eq!(all.status, 200);
    assert_eq!(
        all.body.as_object().map(|m| m.len()),
        Some(1),
        "{}",
        all.body
    );
    assert!(all.body.as_object().unwrap().contains_key(&s4));
    assert_eq!(a.sessions("GET", "", Some(&s4), None).status, 404);
}

#[test]
fn two_instances_share_the_registry_and_the_sessions() {
    let redis = RedisServer::start();
    let p = pair(&redis_state(&redis), false);
    registry_and_sessions_across(&p);
    // Everything under the configured prefix, and expiring sessions carry a TTL.
    let s = p.a.create_session("erin");
    let gen = redis.cli(&["GET", "bg-test:gen"]);
    let ttl: i64 = redis
        .cli(&["TTL", &format!("bg-test:s:{gen}:{s}")])
        .parse()
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 15 * 60 + 1,
        "session TTL {ttl} (max_idle 15 min)"
    );
}

#[test]
fn a_cluster_runs_the_registry_and_the_sessions() {
    let cluster = RedisCluster::start();
    let p = pair(
        &format!(
            r#"{{redis: {{cluster: {}, key_prefix: "bg-test:"}}}}"#,
            cluster.seeds()
        ),
        false,
    );
    // Enough clients and sessions that every master holds some.
    let metadata: Value = serde_json::from_str(METADATA).unwrap();
    for i in 0..30 {
        assert_eq!(p.a.register(&p.a.master, &metadata).status, 201);
        p.b.create_session(&format!("user-{i}"));
    }
    let counts = cluster.key_counts();
    assert!(counts.iter().all(|n| *n > 0), "keys per master: {counts:?}");
    let list = out(p
        .b
        .client
        .get(p.b.bg.url("/clients"))
        .bearer_auth(&p.b.master)
        .send());
    assert_eq!(
        list.body.as_array().map(|a| a.len()),
        Some(30),
        "listed on every master: {}",
        p.b.bg
            .logs()
            .lines()
            .filter(|l| l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A streamed delete-all reads every master.
    let all = p.a.sessions("DELETE", "?all=true", None, None);
    assert_eq!(all.status, 200);
    assert_eq!(all.body.as_object().unwrap().len(), 30);
    registry_and_sessions_across(&p);
}

fn initial_access_token(signer: &Signer, jti: Option<&str>) -> String {
    let mut c = claims();
    match jti {
        Some(j) => c["jti"] = json!(j),
        None => {
            c.as_object_mut().unwrap().remove("jti");
        }
    }
    signer.sign(&c)
}

fn single_use_on(p: &Pair) {
    let metadata: Value = serde_json::from_str(METADATA).unwrap();
    // With a jti: one registration, then refused on the other instance.
    let t = initial_access_token(&p.signer, Some("iat-1"));
    // A refused registration does not use the token up.
    let bad = p.a.register(&t, &json!({"redirect_uris": "not a list"}));
    assert_eq!(bad.status, 400, "{:?}", bad.body);
    assert_eq!(p.a.register(&t, &metadata).status, 201);
    let again = p.b.register(&t, &metadata);
    assert_eq!(again.status, 401, "{:?}", again.body);
    assert_eq!(again.body["error"], "invalid_token");
    let challenge = again.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("invalid_token"), "{challenge}");
    assert!(again.body["error_description"]
        .as_str()
        .unwrap()
        .contains("already used"));
    // Another token with the same jti is the same token for the ledger.
    let same_jti = initial_access_token(&p.signer, Some("iat-1"));
    assert_eq!(p.a.register(&same_jti, &metadata).status, 401);
    // Without a jti: the token's SHA-256 is the key.
    let t2 = initial_access_token(&p.signer, None);
    assert_eq!(p.b.register(&t2, &metadata).status, 201);
    assert_eq!(p.a.register(&t2, &metadata).status, 401);
    // Master tokens are not single-use.
    assert_eq!(p.a.register(&p.a.master, &metadata).status, 201);
    assert_eq!(p.b.register(&p.b.master, &metadata).status, 201);
    // Concurrent uses on both instances: exactly one 201.
    for round in 0..5 {
        let t = initial_access_token(&p.signer, Some(&format!("race-{round}")));
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let node = if i % 2 == 0 { &p.a } else { &p.b };
                    let (t, m) = (&t, &metadata);
                    s.spawn(move || node.register(t, m).status)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            statuses.iter().filter(|s| **s == 201).count(),
            1,
            "round {round}: {statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == 201 || *s == 401),
            "{statuses:?}"
        );
    }
}

#[test]
fn a_single_use_token_registers_one_client_across_instances() {
    let redis = RedisServer::start();
    let p = pair(&redis_state(&redis), true);
    single_use_on(&p);
    // The ledger entry expires with the token (10 minutes).
    let ttl: i64 = redis
        .cli(&["TTL", &format!("bg-test:u:jti:{}", hex_sha256(b"iat-1"))])
        .parse()
        .unwrap();
    // ... and its leeway (60 s): it is accepted that long.
    assert!(ttl > 560 && ttl <= 661, "ledger TTL {ttl}");
}

#[test]
fn a_single_use_token_on_redb() {
    // One instance per redb file: the same rules, within one process.
    let pki = Pki::new();
    let signer = Signer::new(Algorithm::ES256, "issuer-1");
    let (jwks, idp) = key_server_and_provider(&[&signer]);
    let yaml = config(r#"{path: ":memory:"}"#, jwks.addr, idp.addr, true);
    let a = Node::start(&pki, &yaml);
    let metadata: Value = serde_json::from_str(METADATA).unwrap();
    let t = initial_access_token(&signer, Some("redb-1"));
    assert_eq!(a.register(&t, &json!({"redirect_uris": 3})).status, 400);
    assert_eq!(a.register(&t, &metadata).status, 201);
    assert_eq!(a.register(&t, &metadata).status, 401);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let t = initial_access_token(&signer, Some("redb-race"));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (t, m, a) = (t.clone(), &metadata, &a);
                s.spawn(move || a.register(&t, m).status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    // Without single_use, a token registers as often as it is valid.
    let yaml = config(r#"{path: ":memory:"}"#, jwks.addr, idp.addr, false);
    let many = Node::start(&pki, &yaml);
    let t = initial_access_token(&signer, Some("reusable"));
    for _ in 0..3 {
        assert_eq!(many.register(&t, &metadata).status, 201);
    }
}

fn hex_sha256(b: &[u8]) -> String {
    openssl::sha::sha256(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A DPoP proof by `key` for `POST https://idp.example.com{path}` with `token`.
fn proof(key: &Signer, path: &str, token: &str) -> String {
    proof_with_nonce(key, path, token, None)
}

fn proof_with_nonce(key: &Signer, path: &str, token: &str, nonce: Option<&str>) -> String {
    let mut id = [0u8; 16];
    openssl::rand::rand_bytes(&mut id).unwrap();
    let jwk = &key.jwk;
    let header = json!({"typ": "dpop+jwt", "alg": "ES256",
        "jwk": {"kty": jwk["kty"], "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"]}});
    let mut claims = json!({"jti": b64(&id), "htm": "POST", "htu": format!("https://idp.example.com{path}"),
        "iat": now(), "ath": b64(&openssl::sha::sha256(token.as_bytes()))});
    if let Some(n) = nonce {
        claims["nonce"] = json!(n);
    }
    raw_signed(key, &header, &claims.to_string())
}

/// A DPoP-bound token for `holder` from `p`'s issuer.
fn dpop_token(p: &Pair, holder: &Signer) -> String {
    let jwk = &holder.jwk;
    let canonical = format!(
        r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["crv"].as_str().unwrap(),
        jwk["x"].as_str().unwrap(),
        jwk["y"].as_str().unwrap()
    );
    let mut c = claims();
    c["cnf"] = json!({"jkt": b64(&openssl::sha::sha256(canonical.as_bytes()))});
    p.signer.sign(&c)
}

#[test]
fn a_dpop_nonce_given_by_one_instance_is_good_on_another() {
    let redis = RedisServer::start();
    let pki = Pki::new();
    let signer = Signer::new(Algorithm::ES256, "issuer-1");
    let (jwks, idp) = key_server_and_provider(&[&signer]);
    let yaml = config(&redis_state(&redis), jwks.addr, idp.addr, false)
        .replace("max_age: 60s}", "max_age: 60s, require_nonce: true}");
    let (a, b) = (Node::start(&pki, &yaml), Node::start(&pki, &yaml));
    let p = Pair {
        pki,
        signer,
        _jwks: jwks,
        idp,
        a,
        b,
    };
    nonce_given_by_one_is_good_on_the_other(&p, &p.a, &p.b);
}

#[test]
fn a_dpop_proof_replayed_to_another_instance_is_refused() {
    let redis = RedisServer::start();
    let p = pair(&redis_state(&redis), false);
    let holder = Signer::new(Algorithm::ES256, "holder");
    let token = dpop_token(&p, &holder);
    let send = |node: &Node, proof: &str| {
        out(node
            .client
            .post(node.bg.url("/api/things"))
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .body("{}")
            .send())
    };
    let first = proof(&holder, "/api/things", &token);
    assert_eq!(send(&p.a, &first).status, 200);
    let replayed = send(&p.b, &first);
    assert_eq!(replayed.status, 401, "{:?}", replayed.body);
    assert_eq!(replayed.body["error"], "invalid_dpop_proof");
    assert_eq!(p.idp.requests().len(), 1, "the replay was not forwarded");
    // A fresh proof goes through on B.
    assert_eq!(
        send(&p.b, &proof(&holder, "/api/things", &token)).status,
        200
    );
    let _ = &p.pki;
}

#[test]
fn redis_down_then_back_without_restart_and_nothing_acknowledged_lost() {
    let mut redis = RedisServer::start();
    let p = pair(&redis_state(&redis), false);
    let a = &p.a;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // Traffic all along: sessions created on A; every acknowledged one must survive.
        let writer = s.spawn(|| {
            let (mut acked, mut statuses) = (Vec::new(), std::collections::BTreeMap::new());
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 100_000 {
                i += 1;
                let o = a.sessions("POST", "", None, Some(&json!({"sub": format!("u-{i}")})));
                *statuses.entry(o.status).or_insert(0u32) += 1;
                if o.status == 201 {
                    acked.push(o.body["sid"].as_str().unwrap().to_string());
                } else {
                    assert_eq!(o.status, 503, "{:?}", o.body);
                    assert_eq!(o.body["error"], "temporarily_unavailable");
                    assert!(o.headers.contains_key("retry-after"));
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            (acked, statuses)
        });
        std::thread::sleep(Duration::from_millis(500));
        redis.kill();
        // Down: /readyz 503 within the probe's second.
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.ready() != 503 {
            assert!(
                Instant::now() < deadline,
                "/readyz stayed 200 with Redis down"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The probe's verdict is a metric too.
        wait_metric(&a.bg, "bindgate_state_up", 0);
        // What needs no state keeps working: a bearer token on a protected route is checked
        // and forwarded, a bad token is still refused, health answers.
        let forwarded = out(a
            .client
            .get(a.bg.url("/userinfo"))
            .bearer_auth(p.signer.sign(&claims()))
            .send());
        assert_eq!(forwarded.status, 200, "{:?}", forwarded.body);
        let bad_token = a.register("not-a-token", &json!({}));
        assert_eq!(bad_token.status, 401, "{:?}", bad_token.body);
        let health = reqwest::blocking::get(a.bg.admin_url("/healthz")).unwrap();
        assert_eq!(health.status(), 200);
        std::thread::sleep(Duration::from_millis(500));
        // Back on the same data: served again without restarting bindgate.
        redis.restart();
        let deadline = Instant::now() + Duration::from_secs(20);
        while a.ready() != 200 {
            assert!(Instant::now() < deadline, "/readyz did not come back");
            std::thread::sleep(Duration::from_millis(100));
        }
        wait_metric(&a.bg, "bindgate_state_up", 1);
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (acked, statuses) = writer.join().unwrap();
        // Every command was timed: at least one per acknowledged session.
        let timed = a.bg.metric("bindgate_redis_command_duration_seconds_count");
        assert!(timed as usize > acked.len(), "{timed} commands timed");
        assert!(statuses.get(&503).is_some_and(|n| *n > 0), "{statuses:?}");
        let after = a.sessions("POST", "", None, Some(&json!({"sub": "after"})));
        assert_eq!(after.status, 201, "{:?}", after.body);
        // Nothing acknowledged was lost (appendfsync always), read from the other instance.
        assert!(acked.len() > 10, "{statuses:?}");
        for sid in &acked {
            assert_eq!(
                p.b.sessions("GET", "", Some(sid), None).status,
                200,
                "{sid} lost"
            );
        }
    });
}

/// Waits (10 s at most) until `series` reads `value`.
fn wait_metric(bg: &Bindgate, series: &str, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while bg.metric(series) != value || !bg.metrics().contains(series) {
        assert!(
            Instant::now() < deadline,
            "{series} did not become {value}:\n{}",
            bg.metrics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn wait_replicas_holds_the_answer_until_a_replica_has_the_write() {
    // Replication starts at once (Redis 7 waits 5 s for more replicas by default).
    let primary = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !primary
        .cli(&["INFO", "replication"])
        .contains("connected_slaves:1")
    {
        assert!(Instant::now() < deadline, "the replica did not connect");
        std::thread::sleep(Duration::from_millis(100));
    }
    let state = format!(
        r#"{{redis: {{url: "{}", key_prefix: "bg-wait:", wait_replicas: 1}}}}"#,
        primary.url()
    );
    let p = pair(&state, false);
    let sid = p.a.create_session("wendy");
    // Acknowledged: on the replica too.
    let gen = primary.cli(&["GET", "bg-wait:gen"]);
    let key = format!(
        "bg-wait:s:{}:{sid}",
        if gen.is_empty() { "0" } else { &gen }
    );
    assert_eq!(replica.cli(&["EXISTS", &key]), "1");
    // Without a replica, a write cannot be acknowledged: 503, never a silent 201.
    drop(replica);
    let o =
        p.a.sessions("POST", "", None, Some(&json!({"sub": "walter"})));
    assert_eq!(o.status, 503, "{:?}", o.body);
    assert_eq!(o.body["error"], "temporarily_unavailable");
}

#[test]
fn rediss_with_a_private_ca() {
    let pki = Pki::new();
    let redis = RedisServer::start_tls(
        &pki.path("server.crt"),
        &pki.path("server.key"),
        &pki.path("ca.crt"),
    );
    let url = format!("rediss://localhost:{}/0", redis.port);
    // The pair makes a PKI of its own: the CA that signed Redis' certificate is this one's.
    let ca = pki.path("ca.crt");
    let p = pair(
        &format!(
            r#"{{redis: {{url: "{url}", ca: "{}", key_prefix: "tls:"}}}}"#,
            ca.display()
        ),
        false,
    );
    let sid = p.a.create_session("tess");
    assert_eq!(p.b.sessions("GET", "", Some(&sid), None).status, 200);
    assert_eq!(redis.cli(&["EXISTS", &format!("tls:s:0:{sid}")]), "1");
    // Without the CA, the server's certificate is not trusted: no state, 503, not ready.
    let pki2 = &p.pki;
    let untrusted = Bindgate::spawn(
        pki2,
        &config(
            &format!(r#"{{redis: {{url: "{url}", key_prefix: "tls:"}}}}"#),
            p._jwks.addr,
            p.idp.addr,
            false,
        ),
        &[],
    );
    let client = untrusted.client(pki2, None, Http::One);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let s = client
            .post(untrusted.url("/session-store/rest/v2/sessions"))
            .bearer_auth(pki2.token("session-store.token"))
            .json(&json!({"sub": "x"}))
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if s != 0 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 503);
}

/// Subjects become parts of Redis keys: glob characters, hash-tag braces, the key separator
/// and control-free oddities must name exactly their own sessions, never others'.
#[test]
fn hostile_subjects_name_only_their_own_sessions_on_redis() {
    let redis = RedisServer::start();
    let p = pair(&redis_state(&redis), false);
    let subjects = [
        "a", "a*", "*", "a?", "[a]", "{a}", "a:b", "a\\", "s:0:x", "ä ö",
    ];
    let mut sids = Vec::new();
    for s in subjects {
        sids.push(p.a.create_session(s));
    }
    for (s, sid) in subjects.iter().zip(&sids) {
        let q: String = form_urlencoded::byte_serialize(s.as_bytes()).collect();
        let listed = p.b.sessions("GET", &format!("?subject={q}"), None, None);
        assert_eq!(listed.status, 200, "{s}");
        let map = listed.body.as_object().unwrap();
        assert_eq!(map.len(), 1, "subject {s:?} listed {map:?}");
        assert!(map.contains_key(sid), "{s}");
    }
    // Deleting the glob-looking subject deletes its session only.
    let q: String = form_urlencoded::byte_serialize(b"*").collect();
    assert_eq!(
        p.a.sessions("DELETE", &format!("?subject={q}&quiet=true"), None, None)
            .status,
        204
    );
    for (s, sid) in subjects.iter().zip(&sids) {
        let expected = if *s == "*" { 404 } else { 200 };
        assert_eq!(
            p.b.sessions("GET", "", Some(sid), None).status,
            expected,
            "{s}"
        );
    }
}

// Single use that fails closed (issue 14 §4).

/// A single-use token without `jti`, past `exp` by 10 s but inside the 60 s leeway.
fn token_in_its_leeway(signer: &Signer) -> String {
    let mut c = claims();
    c.as_object_mut().unwrap().remove("jti");
    c["iat"] = json!(now() - 700);
    c["exp"] = json!(now() - 10);
    signer.sign(&c)
}

/// The same ES256 token with its signature's `s` replaced by `n − s`: another valid encoding
/// of the same signature (ECDSA signatures are malleable).
fn reencoded_es256(token: &str) -> String {
    use openssl::bn::{BigNum, BigNumContext};
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    assert_eq!(sig.len(), 64);
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let mut n = BigNum::new().unwrap();
    group
        .order(&mut n, &mut BigNumContext::new().unwrap())
        .unwrap();
    let s = BigNum::from_slice(&sig[32..]).unwrap();
    let mut flipped = BigNum::new().unwrap();
    flipped.checked_sub(&n, &s).unwrap();
    let mut out = sig[..32].to_vec();
    out.extend_from_slice(&flipped.to_vec_padded(32).unwrap());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(out))
}

fn single_use_holds(a: &Node, signer: &Signer) {
    let metadata: Value = serde_json::from_str(METADATA).unwrap();
    // Past exp, inside the leeway: accepted once, then refused for as long as it is accepted.
    let late = token_in_its_leeway(signer);
    assert_eq!(a.register(&late, &metadata).status, 201);
    for _ in 0..3 {
        let again = a.register(&late, &metadata);
        assert_eq!(again.status, 401, "{:?}", again.body);
        assert!(again.body["error_description"]
            .as_str()
            .unwrap()
            .contains("already used"));
    }
    // Without jti, the signature's other encoding is the same token.
    let mut c = claims();
    c.as_object_mut().unwrap().remove("jti");
    let t = signer.sign(&c);
    let twin = reencoded_es256(&t);
    assert_ne!(t, twin);
    assert_eq!(a.register(&t, &metadata).status, 201);
    let again = a.register(&twin, &metadata);
    assert_eq!(
        again.status, 401,
        "the re-encoded token registered again: {:?}",
        again.body
    );
}

#[test]
fn single_use_holds_through_the_leeway_and_a_reencoded_signature_on_redis() {
    let redis = RedisServer::start();
    let p = pair(&redis_state(&redis), true);
    single_use_holds(&p.a, &p.signer);
}

#[test]
fn single_use_holds_through_the_leeway_and_a_reencoded_signature_on_redb() {
    let pki = Pki::new();
    let signer = Signer::new(Algorithm::ES256, "issuer-1");
    let (jwks, idp) = key_server_and_provider(&[&signer]);
    let a = Node::start(
        &pki,
        &config(r#"{path: ":memory:"}"#, jwks.addr, idp.addr, true),
    );
    single_use_holds(&a, &signer);
}

#[test]
fn a_stalled_redis_answers_503_and_does_not_use_the_token_up() {
    let redis = RedisServer::start();
    let p = pair(&redis_state(&redis), true);
    let metadata: Value = serde_json::from_str(METADATA).unwrap();
    let t = initial_access_token(&p.signer, Some("stalled-1"));
    // Writes wait 3 s on the server: bindgate's 2 s command timeout runs out first, and the
    // SET NX runs later, when the pause ends.
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "3000", "WRITE"]), "OK");
    let stalled = p.a.register(&t, &metadata);
    assert_eq!(stalled.status, 503, "{:?}", stalled.body);
    assert_eq!(stalled.body["error"], "temporarily_unavailable");
    std::thread::sleep(Duration::from_millis(3500));
    let retried = p.b.register(&t, &metadata);
    assert_eq!(
        retried.status, 201,
        "a 503 used the token up: {:?}",
        retried.body
    );
    assert_eq!(p.a.register(&t, &metadata).status, 401);
}

#[test]
fn a_wait_replicas_miss_leaves_no_client_and_keeps_the_token() {
    let redis = RedisServer::start();
    let state = format!(
        r#"{{redis: {{url: "{}", key_prefix: "bg-miss:", wait_replicas: 1}}}}"#,
        redis.url()
    );
    let p = pair(&state, true);
    let metadata: Value = serde_json::from_str(METADATA).unwrap();
    let t = initial_access_token(&p.signer, Some("no-replica"));
    let o = p.a.register(&t, &metadata);
    assert_eq!(o.status, 503, "{:?}", o.body);
    assert_eq!(
        redis.cli(&["KEYS", "bg-miss:c:*"]),
        "",
        "a client record was left behind"
    );
    assert_eq!(
        redis.cli(&[
            "EXISTS",
            &format!("bg-miss:u:jti:{}", hex_sha256(b"no-replica"))
        ]),
        "0",
        "the token was used up by a failed registration"
    );
}

#[test]
fn single_use_in_front_of_a_provider() {
    let pki = Pki::new();
    let signer = Signer::new(Algorithm::ES256, "issuer-1");
    let (jwks, idp) = key_server_and_provider(&[&signer]);
    let yaml = config(r#"{path: ":memory:"}"#, jwks.addr, idp.addr, true).replace(
        "  single_use: true\n",
        "  single_use: true\n  target: idp\n",
    );
    let a = Node::start(&pki, &yaml);
    let metadata: Value = serde_json::from_str(METADATA).unwrap();
    let t = initial_access_token(&signer, Some("upstream-1"));
    // The provider fails: its answer goes back, and the token is not used up.
    idp.set_reply(500, r#"{"error":"server_error"}"#);
    assert_eq!(a.register(&t, &metadata).status, 500);
    idp.set_reply(400, r#"{"error":"invalid_client_metadata"}"#);
    assert_eq!(a.register(&t, &metadata).status, 400);
    // The provider registers: used.
    idp.set_reply(201, r#"{"client_id":"abc"}"#);
    assert_eq!(a.register(&t, &metadata).status, 201);
    let again = a.register(&t, &metadata);
    assert_eq!(again.status, 401, "{:?}", again.body);
    assert_eq!(again.body["error"], "invalid_token");
    assert_eq!(
        idp.requests().len(),
        3,
        "the used token was forwarded again"
    );
    // Master tokens are not single-use.
    assert_eq!(a.register(&a.master, &metadata).status, 201);
    assert_eq!(a.register(&a.master, &metadata).status, 201);
}

#[test]
fn an_instance_started_while_redis_was_down_takes_the_shared_nonce_key_once_it_is_back() {
    let mut redis = RedisServer::start();
    let pki = Pki::new();
    let signer = Signer::new(Algorithm::ES256, "issuer-1");
    let (jwks, idp) = key_server_and_provider(&[&signer]);
    let yaml = config(&redis_state(&redis), jwks.addr, idp.addr, false)
        .replace("max_age: 60s}", "max_age: 60s, require_nonce: true}");
    redis.kill();
    let a = Bindgate::spawn(&pki, &yaml, &[]);
    a.wait_log("listening on");
    redis.restart();
    a.wait_ready();
    let a = Node {
        client: a.client(&pki, None, Http::One),
        bg: a,
        master: pki.token("master.token"),
        st: pki.token("session-store.token"),
    };
    let b = Node::start(&pki, &yaml);
    let p = Pair {
        pki,
        signer,
        _jwks: jwks,
        idp,
        a,
        b,
    };
    // Each way: a nonce one instance gives is good on the other.
    nonce_given_by_one_is_good_on_the_other(&p, &p.b, &p.a);
    nonce_given_by_one_is_good_on_the_other(&p, &p.a, &p.b);
}

fn readyz(bg: &Bindgate) -> (u16, String) {
    reqwest::blocking::Client::new()
        .get(bg.admin_url("/readyz"))
        .timeout(Duration::from_secs(3))
        .send()
        .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
        .unwrap_or((0, String::new()))
}

/// Polls `/readyz` until its reason names the shared state (the listener and the keys come
/// first and may still be on their way); every answer on the way must be 503.
fn readyz_state_reason(bg: &Bindgate) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = readyz(bg);
        assert_ne!(status, 200, "ready while Redis is not usable: {body}");
        if body.contains("shared state") || Instant::now() > deadline {
            assert_eq!(status, 503, "{body}");
            return body;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn not_ready_before_the_first_state_probe_nor_under_an_evicting_policy() {
    let pki = Pki::new();
    let signer = Signer::new(Algorithm::ES256, "issuer-1");
    let (jwks, idp) = key_server_and_provider(&[&signer]);

    // Redis down from the start: never ready, not even for a moment.
    let mut down = RedisServer::start();
    let yaml = config(&redis_state(&down), jwks.addr, idp.addr, true);
    down.kill();
    let bg = Bindgate::spawn(&pki, &yaml, &[]);
    bg.wait_log("listening on");
    let body = readyz_state_reason(&bg);
    assert!(body.contains("does not answer"), "{body}");
    drop(bg);

    // An evicting policy: not ready, and says why; allow_eviction accepts it.
    let evicting = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let yaml = config(&redis_state(&evicting), jwks.addr, idp.addr, true);
    let bg = Bindgate::spawn(&pki, &yaml, &[]);
    bg.wait_log("maxmemory-policy");
    let body = readyz_state_reason(&bg);
    assert!(body.contains("evicts"), "{body}");
    drop(bg);
    let allowed = config(
        &format!(
            r#"{{redis: {{url: "{}", key_prefix: "bg-test:", allow_eviction: true}}}}"#,
            evicting.url()
        ),
        jwks.addr,
        idp.addr,
        true,
    );
    let bg = Bindgate::start(&pki, &allowed);
    assert_eq!(readyz(&bg).0, 200);
    // Told at runtime: Redis switched to noeviction makes the first instance ready.
    let bg2 = Bindgate::spawn(&pki, &yaml, &[]);
    bg2.wait_log("maxmemory-policy");
    assert_eq!(
        evicting.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]),
        "OK"
    );
    bg2.wait_ready();
}

/// A DPoP nonce that `giver` hands out (to a proof without one) is accepted by `taker`.
fn nonce_given_by_one_is_good_on_the_other(p: &Pair, giver: &Node, taker: &Node) {
    let holder = Signer::new(Algorithm::ES256, "holder");
    let token = dpop_token(p, &holder);
    let send = |node: &Node, proof: &str| {
        node.client
            .post(node.bg.url("/api/things"))
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .body("{}")
            .send()
            .unwrap()
    };
    let first = send(giver, &proof(&holder, "/api/things", &token));
    assert_eq!(first.status(), 401);
    let nonce = first.headers()["dpop-nonce"].to_str().unwrap().to_string();
    let with_nonce = proof_with_nonce(&holder, "/api/things", &token, Some(&nonce));
    assert_eq!(
        send(taker, &with_nonce).status(),
        200,
        "the other instance takes the nonce"
    );
}

/// A wrong Redis password is said as such, in `/readyz` and in one log line.
#[test]
fn a_wrong_redis_password_is_named() {
    let pki = Pki::new();
    let signer = Signer::new(Algorithm::ES256, "issuer-1");
    let (jwks, idp) = key_server_and_provider(&[&signer]);
    let guarded = RedisServer::start();
    // A password set once it runs (the harness's own probe speaks without one).
    let set = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &guarded.port.to_string(),
            "CONFIG",
            "SET",
            "requirepass",
            "the-right-one",
        ])
        .output()
        .expect("redis-cli");
    assert!(String::from_utf8_lossy(&set.stdout).contains("OK"));
    let state = format!(
        r#"{{redis: {{url: "{}", key_prefix: "bg-test:", password: {{value: "a-wrong-one"}}}}}}"#,
        guarded.url()
    );
    let bg = Bindgate::spawn(&pki, &config(&state, jwks.addr, idp.addr, true), &[]);
    let body = readyz_state_reason(&bg);
    assert!(body.contains("refuses bindgate's password"), "{body}");
    let log = bg.wait_log("refuses bindgate's password");
    assert!(!log.contains("a-wrong-one"), "the password was logged");
    assert_eq!(
        log.matches("refuses bindgate's password").count(),
        1,
        "{log}"
    );
}
