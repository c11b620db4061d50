//! What an operator reads of a running bindgate (issue 19 §3): `GET /config` (the effective
//! configuration, no secret, the last reload's verdict), the metrics of its upstreams, key
//! sets and reloads, and `check`'s warnings.

use crate::harness::redis::RedisServer;
use crate::harness::tokens::*;
use crate::harness::*;
use jsonwebtoken::Algorithm;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Every secret the configuration below holds, as written.
const SECRETS: [&str; 6] = [
    "master-token-value-0123456789abcdef",
    "session-api-token-0123456789abcdef",
    "introspection-client-secret",
    "redis-url-password",
    "redis-password-field",
    "jwks-query-secret",
];

fn yaml(jwks: &Upstream, up: &Upstream, down: u16, redis: u16) -> String {
    format!(
        r#"{LISTENERS}issuer: "{ISSUER}"
jwks: {{uri: "http://{jwks}/jwks.json?key=jwks-query-secret"}}
tokens: {{format: auto}}
introspection:
  endpoint: "http://{jwks}/introspect"
  auth:
    client_secret_basic: {{client_id: "bindgate", client_secret: {{value: "introspection-client-secret"}}}}
registration:
  endpoint_uri: "{ENDPOINT}"
  master_tokens: [{{value: "master-token-value-0123456789abcdef"}}]
session_store:
  api_tokens: [{{value: "session-api-token-0123456789abcdef"}}]
upstreams:
  up: {{address: "{up}"}}
  down: {{address: "127.0.0.1:{down}", connect_timeout: 1s}}
routes:
  - {{prefix: /up, upstream: up, token: {{scope: [read]}}}}
  - {{prefix: /down, upstream: down}}
state:
  redis: {{url: "redis://:redis-url-password@127.0.0.1:{redis}/0", password: {{value: "redis-password-field"}}}}
telemetry: {{otlp: {{endpoint: "http://127.0.0.1:{down}"}}}}
server: {{threads: 2, grace_period: 3s, pid_file: "{{DIR}}/bindgate.pid"}}
"#,
        jwks = jwks.addr,
        up = up.addr,
    )
}

fn config_of(bg: &Bindgate) -> (String, Value) {
    let text = reqwest::blocking::get(bg.admin_url("/config"))
        .and_then(|r| {
            assert_eq!(r.status(), 200);
            r.text()
        })
        .expect("/config");
    let v = serde_json::from_str(&text).expect("JSON");
    (text, v)
}

/// The value of an unlabelled or fully labelled series, as a float.
fn value(bg: &Bindgate, series: &str) -> Option<f64> {
    bg.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn config_shows_the_effective_configuration_and_the_last_reload_without_a_secret() {
    let pki = Pki::new();
    let signer = Signer::new(Algorithm::ES256, "es-1");
    let (jwks, up) = key_server_and_provider(&[&signer]);
    let down = free_port();
    // A Redis that wants the password field's value (set once it runs: the harness's own
    // probe speaks without one).
    let redis = RedisServer::start();
    redis.cli(&["CONFIG", "SET", "requirepass", "redis-password-field"]);
    let yaml = yaml(&jwks, &up, down, redis.port);
    let bg = Bindgate::start_with_files(&pki, &yaml, &[], Ports::Chosen);
    let (text, v) = config_of(&bg);
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
    let c = &v["config"];
    // Written values, defaults and resolved paths, as the file would write them.
    assert_eq!(c["server"]["grace_period"], "3s");
    assert_eq!(c["server"]["idle_timeout"], "1m", "the default");
    assert_eq!(c["server"]["max_body"], 65536);
    assert_eq!(
        c["server"]["upgrade_sock"],
        bg.dir().join("bindgate.upgrade.sock").display().to_string(),
        "by default beside the pid file"
    );
    assert_eq!(c["registration"]["master_tokens"], "<1 redacted>");
    assert_eq!(c["session_store"]["api_tokens"], "<1 redacted>");
    assert_eq!(c["introspection"]["auth"]["client_id"], "bindgate");
    assert_eq!(c["introspection"]["auth"]["secret"], "<redacted>");
    assert_eq!(
        c["state"]["redis"]["url"],
        format!("redis://<redacted>@127.0.0.1:{}/0", redis.port)
    );
    assert_eq!(c["state"]["redis"]["password"], "<redacted>");
    assert_eq!(
        c["jwks"]["source"]["uri"],
        format!("http://{}/jwks.json?<redacted>", jwks.addr)
    );
    assert_eq!(c["upstreams"]["down"]["connect_timeout"], "1s");
    assert_eq!(c["routes"][0]["token"]["scope"][0], "read");
    assert_eq!(c["tokens"]["format"], "auto");
    assert!(v["last_reload"].is_null(), "{v}");
    let loaded_at = v["loaded_at"].as_str().unwrap().to_string();
    // Only GET.
    let post = reqwest::blocking::Client::new()
        .post(bg.admin_url("/config"))
        .send()
        .unwrap();
    assert_eq!(post.status(), 405);
    // Other methods and other spellings of the path: nothing is shown.
    let admin = reqwest::blocking::Client::new();
    for (method, path, status) in [
        ("HEAD", "/config", 405),
        ("DELETE", "/config", 405),
        ("GET", "/config/", 404),
        ("GET", "/CONFIG", 404),
        ("GET", "//config", 404),
        ("GET", "/config%2F", 404),
        ("GET", "/config/../config/x", 404),
    ] {
        let r = admin
            .request(method.parse().unwrap(), bg.admin_url(path))
            .send()
            .unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
        let body = r.text().unwrap();
        assert!(
            !body.contains("\"registration\""),
            "{method} {path}: {body}"
        );
    }
    // A query does not change the answer (and is not a way around the redaction).
    let with_query = admin
        .get(bg.admin_url("/config?raw=1&secrets=true"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for secret in SECRETS {
        assert!(!with_query.contains(secret), "{secret} shown with a query");
    }
    assert_eq!(
        value(&bg, "bindgate_config_last_reload_successful"),
        Some(1.0)
    );
    let started = value(&bg, "bindgate_config_last_reload_success_timestamp_seconds").unwrap();
    assert!((unix_now() - started).abs() < 60.0, "{started}");

    // A refused reload: its time and problems, the running configuration unchanged.
    std::thread::sleep(Duration::from_millis(1100));
    let broken = yaml.replace("grace_period: 3s", "grace_period: soon");
    bg.rewrite_config(&pki, &broken);
    bg.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let (_, v) = config_of(&bg);
        if !v["last_reload"].is_null() {
            break v;
        }
        assert!(Instant::now() < deadline, "no reload verdict");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(v["last_reload"]["result"], "refused");
    let problems = v["last_reload"]["problems"].to_string();
    assert!(problems.contains("server.grace_period"), "{problems}");
    assert_eq!(v["config"]["server"]["grace_period"], "3s");
    assert_eq!(v["loaded_at"], loaded_at.as_str());
    assert_eq!(
        value(&bg, "bindgate_config_last_reload_successful"),
        Some(0.0)
    );

    // A reload taken: the new values, a new load time.
    bg.reload_with(&pki, &yaml.replace("grace_period: 3s", "grace_period: 4s"));
    let (text, v) = config_of(&bg);
    assert_eq!(v["last_reload"]["result"], "ok");
    assert_eq!(v["config"]["server"]["grace_period"], "4s");
    assert_ne!(v["loaded_at"], loaded_at.as_str());
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
    assert_eq!(
        value(&bg, "bindgate_config_last_reload_successful"),
        Some(1.0)
    );
    let reloaded = value(&bg, "bindgate_config_last_reload_success_timestamp_seconds").unwrap();
    assert!(reloaded > started, "{reloaded} after {started}");
}

#[test]
fn metrics_name_each_upstream_and_key_set() {
    let pki = Pki::new();
    let signer = Signer::new(Algorithm::ES256, "es-1");
    let (jwks, up) = key_server_and_provider(&[&signer]);
    let down = free_port();
    let yaml = format!(
        r#"{LISTENERS}issuer: "{ISSUER}"
jwks: {{uri: "http://{jwks}/jwks.json"}}
upstreams:
  up: {{address: "{up}"}}
  down: {{address: "127.0.0.1:{down}", connect_timeout: 1s}}
routes:
  - {{prefix: /up, upstream: up, token: {{scope: [read]}}}}
  - {{prefix: /down, upstream: down}}
"#,
        jwks = jwks.addr,
        up = up.addr,
    );
    let bg = Bindgate::start(&pki, &yaml);
    // Every upstream's series exist before its first request.
    for name in ["up", "down"] {
        assert_eq!(
            value(
                &bg,
                &format!("bindgate_upstream_connect_failures_total{{upstream=\"{name}\"}}")
            ),
            Some(0.0)
        );
    }
    let client = bg.client(&pki, None, Http::One);
    let mut claims = claims();
    claims["scope"] = "read".into();
    let token = signer.sign(&claims);
    for _ in 0..3 {
        let r = client
            .get(bg.url("/up/x"))
            .bearer_auth(&token)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(client.get(bg.url("/down/x")).send().unwrap().status(), 502);
    }
    assert_eq!(
        value(
            &bg,
            "bindgate_upstream_response_duration_seconds_count{upstream=\"up\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &bg,
            "bindgate_upstream_response_duration_seconds_count{upstream=\"down\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &bg,
            "bindgate_upstream_connect_failures_total{upstream=\"down\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &bg,
            "bindgate_upstream_connect_failures_total{upstream=\"up\"}"
        ),
        Some(0.0)
    );
    // The key set: when it was fetched, and how old it is.
    let issuer = format!("{{issuer=\"{ISSUER}\"}}");
    let fetched = value(
        &bg,
        &format!("bindgate_jwks_last_success_timestamp_seconds{issuer}"),
    )
    .expect("the key set's fetch time");
    assert!((unix_now() - fetched).abs() < 60.0, "{fetched}");
    std::thread::sleep(Duration::from_millis(2100));
    let age = value(&bg, &format!("bindgate_jwks_key_set_age_seconds{issuer}"))
        .expect("the key set's age");
    assert!((2.0..60.0).contains(&age), "{age}");
    // The key server fails: the age grows, the fetch time stays.
    jwks.set_reply(500, "down");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        value(
            &bg,
            &format!("bindgate_jwks_last_success_timestamp_seconds{issuer}")
        ),
        Some(fetched)
    );
}

#[test]
fn check_warns_of_a_public_admin_listener_and_a_shared_upgrade_socket() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let base = passthrough_config(upstream.addr)
        .replace("{LISTEN}", "127.0.0.1:0")
        .replace("{ADMIN}", "127.0.0.1:0");
    let (ok, text) = check(&pki, &base);
    assert!(ok, "{text}");
    assert!(!text.contains("warning"), "{text}");
    let public = base.replace(
        "address: \"127.0.0.1:0\"\nupstreams",
        "address: \"0.0.0.0:0\"\nupstreams",
    );
    assert_ne!(public, base);
    let (ok, text) = check(&pki, &public);
    assert!(ok, "a warning is not a refusal: {text}");
    assert!(
        text.contains("warning: admin.address: 0.0.0.0:0 is not a loopback address"),
        "{text}"
    );
    let shared = with_server(&base, "  upgrade_sock: /tmp/bindgate-test.sock\n");
    assert_ne!(shared, base);
    let (ok, text) = check(&pki, &shared);
    assert!(ok, "{text}");
    assert!(
        text.contains("warning: server.upgrade_sock: /tmp/bindgate-test.sock is in a folder every user may write"),
        "{text}"
    );
    // A pid file whose folder is not there is refused, as `run` would; an upgrade socket's
    // missing folder is a warning (only an upgrade needs it).
    let missing = with_server(&base, "  pid_file: /nonexistent-bindgate/bindgate.pid\n  upgrade_sock: /nonexistent-bindgate-2/u.sock\n");
    let (ok, text) = check(&pki, &missing);
    assert!(!ok, "{text}");
    assert!(
        text.contains("server.pid_file: the folder /nonexistent-bindgate does not exist"),
        "{text}"
    );
    let missing_sock = with_server(&base, "  upgrade_sock: /nonexistent-bindgate-2/u.sock\n");
    let (ok, text) = check(&pki, &missing_sock);
    assert!(ok, "{text}");
    assert!(
        text.contains(
            "warning: server.upgrade_sock: the folder /nonexistent-bindgate-2 does not exist"
        ),
        "{text}"
    );
    // A path a Unix socket cannot have is refused.
    let long = with_server(
        &base,
        &format!("  upgrade_sock: /run/{}.sock\n", "x".repeat(120)),
    );
    let (ok, text) = check(&pki, &long);
    assert!(!ok && text.contains("server.upgrade_sock"), "{text}");
}

/// `base` (a `passthrough_config`) with `lines` added to its `server` section.
fn with_server(base: &str, lines: &str) -> String {
    let extended = base.replace("  max_body: 1KiB\n", &format!("  max_body: 1KiB\n{lines}"));
    assert_ne!(extended, base, "no server section to extend");
    extended
}
