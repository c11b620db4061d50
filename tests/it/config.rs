//! `bindgate check` and the other commands, as a user runs them.

use crate::harness::*;
use std::path::Path;

const GOOD: &str = r#"
listen:
  address: "127.0.0.1:8443"
  tls: {cert: "{PKI}/server.crt", key: "{PKI}/server.key"}
upstreams:
  idp: {address: "127.0.0.1:8080"}
routes:
  - {prefix: /, upstream: idp}
"#;

#[test]
fn a_good_config_passes() {
    let pki = Pki::new();
    let (ok, out) = check(&pki, GOOD);
    assert!(ok, "{out}");
    assert!(out.contains(": ok"), "{out}");
}

#[test]
fn the_shipped_proxy_yaml_is_valid_once_dev_certs_exist() {
    // The shipped file names certs/dev relative to itself: check a copy next to a fresh set.
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::os::unix::fs::symlink(pki.dir.path(), certs.join("dev")).unwrap();
    std::fs::copy(repo_path("proxy.yaml"), dir.path().join("proxy.yaml")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .args(["check", "-c"])
        .arg(dir.path().join("proxy.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_problem_is_reported_at_once_with_its_key() {
    let pki = Pki::new();
    let yaml = r#"
listen:
  adress: "127.0.0.1:8443"
  address: "not an address"
  tls:
    cert: "{PKI}/missing.crt"
    key: "{PKI}/server.key"
    client_auth: sometimes
admin: {address: "127.0.0.1:99999"}
jwks: {uri: "https://idp.example.com/jwks.json", file: "{PKI}/ca.crt", refresh_interval: 5 minutes}
tokens: {algorithms: [RS256, HS256, none, XX999], leeway: 60}
registration:
  target: nowhere
  master_tokens:
    - {value: a, sha256: "00"}
    - {sha256: "abc"}
    - {env: BINDGATE_TEST_SURELY_UNSET_VARIABLE}
    - {file: "{PKI}/no-such.token"}
session_store:
  api_tokens:
    - {}
upstreams:
  idp: {address: "no-port-here", client_cert_header: "Authorization"}
routes:
  - {prefix: api, upstream: idp}
  - {prefix: /, upstream: ghost}
state: {sessions: {max_life: 0, max_idle: -5}}
server: {threads: 0, grace_period: soon, max_body: 64 potatoes}
"#;
    let (ok, out) = check(&pki, yaml);
    assert!(!ok);
    for expected in [
        "listen.adress: unknown key",
        "listen.address: `not an address` is not an IP address and port",
        "listen.tls.cert: cannot read",
        "listen.tls.client_auth: `sometimes` is not one of none, optional, required",
        "admin.address:",
        "jwks: give exactly one of uri, file",
        "tokens.algorithms[1]: `HS256` is never accepted",
        "tokens.algorithms[2]: `none` is never accepted",
        "tokens.algorithms[3]: `XX999` is not supported",
        "tokens.leeway:",
        "registration.target: `nowhere` is neither `embedded` nor the name of an upstream",
        "registration.master_tokens[0]: give exactly one of value, sha256, env, file",
        "registration.master_tokens[1]: sha256: ",
        "registration.master_tokens[2]: env: variable BINDGATE_TEST_SURELY_UNSET_VARIABLE is not set",
        "registration.master_tokens[3]: file: cannot read",
        "session_store.api_tokens[0]: give exactly one of value, sha256, env, file",
        "upstreams.idp.address: `no-port-here` has no port",
        "upstreams.idp.client_cert_header: `Authorization` is a header bindgate or HTTP already gives a meaning to",
        "routes[0].prefix: `api` must start with /",
        "routes[1].upstream: `ghost` is not the name of an upstream",
        "state.sessions.max_life: 0: must be a number of minutes > 0, or -1 for unlimited",
        "state.sessions.max_idle: -5",
        "server.threads: 0: must be between 1 and 1024",
        "server.grace_period: `soon`",
        "server.max_body: `64 potatoes`",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
}

#[test]
fn unknown_keys_everywhere_are_all_listed() {
    let pki = Pki::new();
    let yaml = GOOD.replace("routes:", "colour: blue\nroutes:").replace(
        "idp: {address: \"127.0.0.1:8080\"}",
        "idp: {address: \"127.0.0.1:8080\", timeout: 5s}",
    ) + "server: {thread: 2}\n";
    let (ok, out) = check(&pki, &yaml);
    assert!(!ok);
    assert!(out.contains("colour: unknown key"), "{out}");
    assert!(out.contains("upstreams.idp.timeout: unknown key"), "{out}");
    assert!(out.contains("server.thread: unknown key"), "{out}");
}

#[test]
fn wrong_types_missing_keys_and_broken_yaml() {
    let pki = Pki::new();
    let (ok, out) = check(&pki, "listen:\n  tls: {cert: a, key: b}\n");
    assert!(!ok);
    assert!(
        out.contains("listen.address: required key is missing"),
        "{out}"
    );
    let (ok, out) = check(&pki, &(GOOD.to_string() + "server: {threads: lots}\n"));
    assert!(!ok);
    assert!(out.contains("server.threads: invalid type"), "{out}");
    let (ok, out) = check(&pki, "listen: [unclosed\n");
    assert!(!ok);
    assert!(out.contains("not valid YAML"), "{out}");
    let (ok, out) = check(&pki, "");
    assert!(!ok);
    assert!(out.contains("the file is empty"), "{out}");
}

#[test]
fn key_not_matching_certificate_and_bad_ca() {
    let pki = Pki::new();
    let yaml = GOOD
        .replace("{PKI}/server.key", "{PKI}/client1.key")
        .replace("tls: {", "tls: {client_ca: \"{PKI}/master.token\", ");
    let (ok, out) = check(&pki, &yaml);
    assert!(!ok);
    assert!(
        out.contains("listen.tls.key: does not belong to the certificate"),
        "{out}"
    );
    assert!(
        out.contains("listen.tls.client_ca:") && out.contains("holds no PEM certificate"),
        "{out}"
    );
}

#[test]
fn run_refuses_an_invalid_config_and_a_busy_port() {
    let pki = Pki::new();
    let mut bg = Bindgate::spawn(&pki, "listen: {address: nope}\n", &[]);
    let status = bg
        .wait_exit(std::time::Duration::from_secs(20))
        .expect("exits");
    assert!(!status.success());
    assert!(
        bg.logs().contains("listen.tls: required key is missing"),
        "{}",
        bg.logs()
    );

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let yaml = GOOD.replace("127.0.0.1:8443", &busy.local_addr().unwrap().to_string());
    let mut bg = Bindgate::spawn(&pki, &yaml, &[]);
    let status = bg
        .wait_exit(std::time::Duration::from_secs(20))
        .expect("exits");
    assert!(!status.success());
    assert!(
        bg.logs().contains("listen.address: cannot listen on"),
        "{}",
        bg.logs()
    );
}

#[test]
fn thumbprint_matches_the_openssl_pipeline() {
    let pki = Pki::new();
    for stem in ["client1", "client2", "selfsigned"] {
        let cert = pki.path(&format!("{stem}.crt"));
        let ours = std::process::Command::new(env!("CARGO_BIN_EXE_bindgate"))
            .arg("thumbprint")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(ours.status.success());
        let pipeline = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl x509 -outform der -in '{}' | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '='",
                cert.display()
            ))
            .output()
            .unwrap();
        let ours = String::from_utf8_lossy(&ours.stdout).trim().to_string();
        assert_eq!(ours, String::from_utf8_lossy(&pipeline.stdout).trim());
        assert_eq!(ours.len(), 43);
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .arg("thumbprint")
        .arg(pki.path("master.token"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn dev_certs_chain_to_the_ca_and_are_kept_on_rerun() {
    let pki = Pki::new();
    let verify = |file: &str| {
        std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(pki.path("ca.crt"))
            .arg(pki.path(file))
            .status()
            .unwrap()
            .success()
    };
    assert!(verify("server.crt"));
    assert!(verify("client1.crt"));
    assert!(verify("client2.crt"));
    assert!(
        !verify("selfsigned.crt"),
        "the self-signed client is not issued by the CA"
    );
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(pki.path("server.crt"))
        .output()
        .unwrap();
    let sans = String::from_utf8_lossy(&text.stdout);
    assert!(
        sans.contains("DNS:localhost") && sans.contains("IP Address:127.0.0.1"),
        "{sans}"
    );

    let before = pki.read("ca.crt");
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .arg("dev-certs")
        .arg(pki.dir.path())
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(pki.read("ca.crt"), before, "an existing set is kept");
}

/// What `bindgate ARGS` prints, trimmed; it must succeed.
fn bindgate_output(args: &[&str]) -> String {
    bindgate_output_in(Path::new("."), args)
}

/// What `bindgate ARGS` run from `cwd` prints, trimmed; it must succeed.
fn bindgate_output_in(cwd: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The README tour on the shipped proxy.yaml: a development token bound to client1's
/// certificate registers a client with that certificate and is refused without it.
#[test]
fn shipped_config_and_dev_token_tour() {
    let pki = Pki::new();
    let (shipped, yaml) = shipped_proxy_yaml();
    let bg = Bindgate::start(&pki, &yaml);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        yaml.replace("{PKI}", &pki.dir.path().display().to_string())
            .replace("{LISTEN}", &bg.listen.to_string())
            .replace("{PORT}", &bg.port.to_string())
            .replace("{ADMIN}", &format!("127.0.0.1:{}", bg.admin_port)),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let dev_token = |args: &[&str]| {
        bindgate_output(&[&["dev-token", "-c", config_arg.as_str()], args].concat())
    };
    let cert = pki.path("client1.crt").display().to_string();
    let bound = dev_token(&["--cert", &cert]);
    let register = |token: &str, identity: Option<&str>| {
        bg.client(&pki, identity, Http::One)
            .post(bg.url("/clients"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(r#"{"redirect_uris":["https://app.example.com/cb"]}"#)
            .send()
            .unwrap()
    };
    let resp = register(&bound, Some("client1"));
    assert_eq!(resp.status(), 201);
    let client: serde_json::Value = resp.json().unwrap();
    assert!(client["registration_access_token"].is_string());
    let resp = register(&bound, None);
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\", error_description=\"Missing / invalid client X.509 certificate for x5t#S256 bound access token\""
    );
    assert_eq!(register(&dev_token(&["--expired"]), None).status(), 401);
    assert_eq!(
        register(&dev_token(&["--scope", "openid"]), None).status(),
        403
    );
    assert_eq!(
        register(
            &dev_token(&["--aud", "https://elsewhere.example.com"]),
            None
        )
        .status(),
        401
    );
    assert_eq!(register(&dev_token(&[]), None).status(), 201);

    // `bindgate reload -c proxy.yaml`, as the README says: the shipped file names its pid file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .args(["reload", "-c"])
        .arg(bg.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The narrowed-scope step: a code-flow client is 201, a client_credentials one is 403
    // naming the scope that would permit it.
    let code = dev_token(&["--scope", "client-reg:grant:code"]);
    assert_eq!(register(&code, None).status(), 201);
    let refused = bg
        .client(&pki, None, Http::One)
        .post(bg.url("/clients"))
        .bearer_auth(&code)
        .body(r#"{"grant_types":["client_credentials"]}"#)
        .send()
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .ends_with("scope=\"client-reg:grant:client_credentials\""));

    // The DPoP step of the tour: a proof key, a token bound to it, a proof for one request.
    let key = pki.path("dpop.key").display().to_string();
    let dev_proof =
        |args: &[&str]| bindgate_output(&[&["dev-proof", "--key", key.as_str()], args].concat());
    let jkt = dev_proof(&["--jkt"]);
    // A base64url thumbprint or nonce may start with `-`: still a value, not an option.
    assert!(!dev_token(&["--dpop-jkt", "-KnotAnOption"]).is_empty());
    assert!(!dev_proof(&["--htu", "https://localhost/x", "--nonce", "-n0nce"]).is_empty());
    let token = dev_token(&["--dpop-jkt", &jkt]);
    let htu = format!("https://localhost:{}/clients", bg.port);
    let proof = dev_proof(&["--htm", "POST", "--htu", &htu, "--token", &token]);
    let with_proof = |authorization: String| {
        bg.client(&pki, None, Http::One)
            .post(bg.url("/clients"))
            .header("authorization", authorization)
            .header("dpop", &proof)
            .header("content-type", "application/json")
            .body(r#"{"redirect_uris":["https://app.example.com/cb"]}"#)
            .send()
            .unwrap()
    };
    assert_eq!(with_proof(format!("DPoP {token}")).status(), 201);
    let replayed = with_proof(format!("DPoP {token}"));
    assert_eq!(replayed.status(), 401);
    assert!(replayed.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("DPoP error=\"invalid_dpop_proof\""));
    assert_eq!(register(&token, None).status(), 401, "the downgrade");

    // Run from another folder on a copy of the file whose secrets are not there (no master
    // token, TLS key or API token file): both commands read only the file and the keys they
    // need, found beside jwks.file as `run` resolves it (against the file's folder).
    let copy = tempfile::tempdir().unwrap();
    std::fs::create_dir(copy.path().join("dev")).unwrap();
    for name in ["jwks.json", "signing.key"] {
        std::fs::copy(pki.path(name), copy.path().join("dev").join(name)).unwrap();
    }
    std::fs::write(
        copy.path().join("proxy.yaml"),
        shipped.replace("certs/dev", "dev"),
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let copied = copy.path().join("proxy.yaml").display().to_string();
    let token = bindgate_output_in(elsewhere.path(), &["dev-token", "-c", &copied]);
    assert_eq!(register(&token, None).status(), 201);
    let jkt = bindgate_output_in(elsewhere.path(), &["dev-proof", "-c", &copied, "--jkt"]);
    assert!(
        copy.path().join("dev/dpop.key").exists(),
        "dpop.key is made beside jwks.file"
    );
    assert!(!elsewhere.path().join("dev").exists());
    // From the file's own folder with the default -c: the same key.
    assert_eq!(
        bindgate_output_in(copy.path(), &["dev-proof", "--jkt"]),
        jkt
    );
    // Without a jwks.file, each command asks for --key.
    let no_keys = copy.path().join("nokeys.yaml");
    std::fs::write(
        &no_keys,
        "listen: {address: \"127.0.0.1:1\", tls: {cert: a.crt, key: a.key}}\nissuer: \"https://i\"\n",
    )
    .unwrap();
    for cmd in ["dev-token", "dev-proof"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bindgate"))
            .args([cmd, "-c"])
            .arg(&no_keys)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("give --key"),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn state_redis_settings_are_checked_and_the_password_never_shown() {
    let pki = Pki::new();
    let with_state = |state: &str| format!("{GOOD}state: {state}\n");
    // A good one, password from the environment.
    let dir = tempfile::tempdir().unwrap();
    let yaml = with_state(
        r#"{redis: {url: "redis://127.0.0.1:6379/0", password: {env: BG_TEST_REDIS_PW}, wait_replicas: 1}}"#,
    );
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        yaml.replace("{PKI}", &pki.dir.path().display().to_string()),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .args(["check", "-c"])
        .arg(&config)
        .env("BG_TEST_REDIS_PW", "s3cret-redis-pw")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("s3cret-redis-pw"), "{text}");

    for (state, expected) in [
        (
            r#"{path: ":memory:", redis: {url: "redis://127.0.0.1:6379"}}"#,
            "state: give one of path (redb) and redis, not both",
        ),
        (r#"{redis: {key_prefix: "x:"}}"#, "state.redis: give url"),
        (
            r#"{redis: {url: "redis://a:1", cluster: ["redis://b:1"]}}"#,
            "state.redis: give one of url and cluster",
        ),
        (
            r#"{redis: {url: "http://127.0.0.1:6379"}}"#,
            "state.redis.url: must start with redis:// or rediss://",
        ),
        (
            r#"{redis: {cluster: ["redis://a:1", "tcp://b:2"]}}"#,
            "state.redis.cluster[1]: must start with redis://",
        ),
        (
            r#"{redis: {cluster: []}}"#,
            "state.redis.cluster: lists no seed URL",
        ),
        // What `run` refuses, `check` refuses: the client's own parse, the URL not repeated.
        (
            r#"{redis: {url: "redis://:s3cret@127.0.0.1:6379/zero"}}"#,
            "state.redis.url: is not a Redis URL bindgate can connect with",
        ),
        (
            r#"{redis: {url: "redis://"}}"#,
            "state.redis.url: is not a Redis URL bindgate can connect with",
        ),
        (
            r#"{redis: {cluster: ["redis://a:1", "redis://b:1/x"]}}"#,
            "state.redis.cluster[1]: is not a Redis URL",
        ),
        (
            r#"{redis: {url: "redis://a:1", password: {sha256: "00"}}}"#,
            "state.redis.password: bindgate presents this secret",
        ),
        (
            r#"{redis: {url: "redis://a:1", password: {env: BG_TEST_UNSET_VARIABLE}}}"#,
            "state.redis.password: env: variable BG_TEST_UNSET_VARIABLE is not set",
        ),
        (
            r#"{redis: {cluster: ["redis://a:1"], wait_replicas: 2}}"#,
            "state.redis.wait_replicas: is not supported with cluster",
        ),
        (
            r#"{redis: {url: "redis://a:1", colour: red}}"#,
            "state.redis.colour: unknown key",
        ),
    ] {
        let (ok, out) = check(&pki, &with_state(state));
        assert!(!ok, "{state} passed");
        assert!(
            out.contains(expected),
            "{state}: wanted {expected:?} in\n{out}"
        );
    }
}

#[test]
fn the_systemd_unit_is_accepted_by_systemd_analyze() {
    // The unit names the installed binary; verify a copy naming the one just built.
    let unit = std::fs::read_to_string(repo_path("deploy/bindgate.service")).unwrap();
    assert!(unit.contains("ExecReload=/usr/local/libexec/bindgate-reload $MAINPID"));
    assert!(unit.contains("Type=notify\nNotifyAccess=all\n"));
    assert!(unit.contains("NoNewPrivileges=yes") && unit.contains("ProtectSystem=strict"));
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("bindgate.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/bindgate", env!("CARGO_BIN_EXE_bindgate"))
            .replace(
                "/usr/local/libexec/bindgate-reload",
                &repo_path("deploy/bindgate-reload").display().to_string(),
            ),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (apt-get install -y systemd; scripts/test.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("bindgate.service"), "warnings: {text}");
}

#[test]
fn a_secret_written_in_the_wrong_shape_is_never_echoed_by_check_or_run() {
    let pki = Pki::new();
    for extra in [
        "registration: {master_tokens: [\"s3cr3t-master-token\"]}\n",
        "session_store: {api_tokens: [\"s3cr3t-master-token\"]}\n",
        "state: {redis: {url: \"redis://127.0.0.1:6379\", password: \"s3cr3t-master-token\"}}\n",
    ] {
        let yaml = format!("{GOOD}{extra}");
        let (ok, out) = check(&pki, &yaml);
        assert!(!ok, "{out}");
        assert!(!out.contains("s3cr3t"), "check echoed the secret: {out}");
        assert!(
            out.contains("master_tokens[0]")
                || out.contains("api_tokens[0]")
                || out.contains("password"),
            "{out}"
        );
        let mut bg = Bindgate::spawn(&pki, &yaml, &[]);
        bg.wait_exit(std::time::Duration::from_secs(20))
            .expect("run exits");
        assert!(
            !bg.logs().contains("s3cr3t"),
            "run echoed the secret: {}",
            bg.logs()
        );
    }
}

/// The registration policy's keys (issue 16) are checked like every other.
#[test]
fn the_registration_policy_keys_are_checked() {
    let pki = Pki::new();
    let yaml = r#"
listen:
  address: "127.0.0.1:8443"
  tls: {cert: "{PKI}/server.crt", key: "{PKI}/server.key"}
registration:
  grant_scopes: maybe
  open: {grant_types: [authorization_code, urn:example:mine]}
  software_statement:
    required: true
    issuers:
      - {iss: "https://directory.example", jwks: {uri: "ftp://directory.example/jwks"}}
      - {iss: "https://directory.example", jwks: {file: "{PKI}/nowhere.json"}}
      - {iss: "", jwks: {}}
    algorithms: [HS256]
routes: []
"#;
    refused_with(
        &pki,
        yaml,
        &[
        "registration.grant_scopes:",
        "registration.open.grant_types[1]: `urn:example:mine` is not a grant type",
        "registration.software_statement.issuers[0].jwks.uri: `ftp://directory.example/jwks` is not an http(s) URI",
        "registration.software_statement.issuers[1].iss: `https://directory.example` is listed twice",
        "registration.software_statement.issuers[1].jwks.file:",
        "registration.software_statement.issuers[2].iss: must not be empty",
        "registration.software_statement.issuers[2].jwks: give exactly one of uri, file",
        "registration.software_statement.algorithms[0]: `HS256` is never accepted",
        ],
    );
    refused_with(
        &pki,
        &GOOD.replace(
            "routes:",
            "registration: {open: {grant_types: []}, software_statement: {}}\nroutes:",
        ),
        &[
            "registration.open.grant_types: is empty",
            "registration.software_statement.issuers: list at least one issuer",
        ],
    );
}

/// `introspection` and `tokens.format` are checked like every other key; the secret is never
/// shown.
#[test]
fn the_introspection_keys_are_checked() {
    let pki = Pki::new();
    let yaml = r#"
listen:
  address: "127.0.0.1:8443"
  tls: {cert: "{PKI}/server.crt", key: "{PKI}/server.key"}
tokens: {format: sometimes}
introspection:
  endpoint: "ldap://idp.example.com"
  auth:
    client_secret_basic: {client_id: bindgate, client_secret: {value: hunter2-very-secret}}
    client_secret_post: {client_id: bindgate, client_secret: {value: hunter2-very-secret}}
  timeout: 0s
routes: []
"#;
    let out = refused_with(
        &pki,
        yaml,
        &[
            "tokens.format: `sometimes` is not one of jwt, opaque, auto",
            "introspection.endpoint: `ldap://idp.example.com` is not an http(s) URI",
            "introspection.auth: give exactly one of",
        ],
    );
    assert!(!out.contains("hunter2"), "{out}");
    refused_with(
        &pki,
        &GOOD.replace("routes:", "tokens: {format: opaque}\nroutes:"),
        &["tokens.format: opaque and auto need an introspection section"],
    );
    refused_with(
        &pki,
        &GOOD.replace(
            "routes:",
            "introspection:\n  endpoint: https://idp.example.com/introspect\n  auth: {private_key_jwt: {client_id: b, key: \"{PKI}/ca.crt\", alg: HS256}}\nroutes:",
        ),
        &["introspection.auth.private_key_jwt.alg: `HS256` is not one of ES256, RS256"],
    );
}

/// `deploy/proxy.production.yaml` passes `check`, its /etc/bindgate files stood in for by the
/// test's own (development certificates and tokens), its /run/bindgate by a folder of the
/// test's, and its secrets given by environment.
#[test]
fn the_production_example_passes_check() {
    let pki = Pki::new();
    let etc = tempfile::tempdir().unwrap();
    let tls = etc.path().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    for (from, to) in [
        ("server.crt", "tls/server.crt"),
        ("server.key", "tls/server.key"),
        ("ca.crt", "tls/clients-ca.crt"),
        ("ca.crt", "tls/idp-ca.crt"),
        ("ca.crt", "tls/redis-ca.crt"),
        ("session-store.token", "session-store.token"),
    ] {
        std::fs::copy(pki.path(from), etc.path().join(to)).unwrap();
    }
    // /run/bindgate is the unit's RuntimeDirectory: made by systemd before start.
    let run = tempfile::tempdir().unwrap();
    let yaml = std::fs::read_to_string(repo_path("deploy/proxy.production.yaml"))
        .unwrap()
        .replace("/etc/bindgate", &etc.path().display().to_string())
        .replace("/run/bindgate", &run.path().display().to_string());
    let config = etc.path().join("proxy.yaml");
    std::fs::write(&config, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .args(["check", "-c"])
        .arg(&config)
        .env("BINDGATE_MASTER_TOKEN", "a-master-token-of-enough-length")
        .env("BINDGATE_REDIS_PASSWORD", "a-redis-password")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The window of requests (`server.active_requests`, `server.active_hold`) is checked like
/// every other key: a window too large to mean anything, a hold of nothing or past 1 s, a
/// count that is not a number.
#[test]
fn the_window_of_requests_is_checked() {
    let pki = Pki::new();
    refused_with(
        &pki,
        &format!("{GOOD}server: {{active_requests: 100000, active_hold: 0ms}}\n"),
        &[
            "server.active_requests: 100000: must be at most 65536",
            "server.active_hold: must be more than 0",
        ],
    );
    refused_with(
        &pki,
        &format!("{GOOD}server: {{active_hold: 2s}}\n"),
        &["server.active_hold: must be at most 1s"],
    );
    refused_with(
        &pki,
        &format!("{GOOD}server: {{active_requests: many}}\n"),
        &["server.active_requests: invalid type"],
    );
    let (ok, out) = check(
        &pki,
        &format!("{GOOD}server: {{active_requests: 0, active_hold: 5ms}}\n"),
    );
    assert!(ok, "the window turned off is a good file:\n{out}");
}
