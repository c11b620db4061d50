//! `log.format: json` (issue 18 §1): every line bindgate writes is one JSON object, with the
//! documented names, whatever a client puts in its request.

use crate::harness::*;

#[test]
fn json_lines_for_events_and_the_access_log() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let yaml = format!(
        r#"{LISTENERS}upstreams:
  up: {{address: "{}"}}
routes:
  - {{prefix: /api, upstream: up}}
log: {{format: json}}
"#,
        upstream.addr
    );
    let bg = Bindgate::start(&pki, &yaml);
    let client = bg.client(&pki, Some("client1"), Http::One);
    assert_eq!(
        client
            .get(bg.url("/api/ok?secret-query=1"))
            .send()
            .unwrap()
            .status(),
        200
    );
    // A path a text log could be fooled by: quotes, backslashes, encoded line breaks.
    let hostile = "/nowhere%22%0A%5C%22,%22status%22:200";
    assert_eq!(client.get(bg.url(hostile)).send().unwrap().status(), 400);
    let over_h2 = bg.client(&pki, None, Http::Alpn);
    assert_eq!(over_h2.get(bg.url("/api/h2")).send().unwrap().status(), 200);
    let log = bg.wait_log("/api/h2");
    let mut access = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        assert!(v["level"].is_string() && v["target"].is_string(), "{line}");
        if v["target"] == "bindgate::access" {
            access.push(v);
        }
    }
    assert_eq!(access.len(), 3, "{log}");
    assert_eq!(access[0]["method"], "GET");
    assert_eq!(access[0]["path"], "/api/ok");
    assert_eq!(access[0]["status"], 200);
    assert_eq!(access[0]["client_cert"], pki.thumbprint("client1"));
    assert!(access[0]["latency_us"].is_u64() && access[0]["auth_us"].is_u64());
    assert_eq!(access[0]["operation"], "forward");
    assert_eq!(access[0]["decision"], "allowed");
    assert!(
        access[0]["bytes_out"].as_u64().is_some_and(|n| n > 0),
        "{}",
        access[0]
    );
    assert_eq!(access[1]["decision"], "refused");
    // The hostile path is one value of one line: no `status` of its choosing.
    assert_eq!(access[1]["status"], 400);
    assert_eq!(access[1]["reason"], "bad_path");
    assert!(access[1]["path"].as_str().unwrap().starts_with("/nowhere"));
    assert_eq!(access[2]["path"], "/api/h2");
    // The query is never logged.
    assert!(!log.contains("secret-query"));
    // The startup line says what runs.
    let start = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "bindgate starting")
        .expect("a startup line");
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(start["listen"], bg.listen.to_string());
    assert_eq!(start["routes"], "/api→up");
    // Every reload series exists from the start; the build and the process are described.
    let metrics = bg.metrics();
    let build = metrics
        .lines()
        .find(|l| l.starts_with("bindgate_build_info{"))
        .expect("bindgate_build_info");
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.contains("commit=\"")
            && build.ends_with(" 1"),
        "{build}"
    );
    for process in [
        "bindgate_process_resident_memory_bytes",
        "bindgate_process_open_fds",
        "bindgate_process_max_fds",
        "bindgate_process_cpu_seconds_total",
    ] {
        assert!(metrics.contains(process), "{process} missing");
    }
    for result in ["ok", "failed", "certificates", "pending_pair"] {
        let series = format!("bindgate_config_reloads_total{{result=\"{result}\"}} 0");
        assert!(metrics.contains(&series), "{series} missing");
    }
}

#[test]
fn an_unreadable_bindgate_log_is_an_error_and_sizes_take_plain_bytes() {
    let pki = Pki::new();
    let yaml = "listen:\n  address: \"{LISTEN}\"\n  tls: {cert: \"{PKI}/server.crt\", key: \"{PKI}/server.key\"}\nroutes: []\n";
    let mut bg = Bindgate::spawn(&pki, yaml, &[("BINDGATE_LOG", "bindgate=[")]);
    let status = bg
        .wait_exit(std::time::Duration::from_secs(10))
        .expect("bindgate exits");
    assert_eq!(status.code(), Some(2));
    assert!(
        bg.logs()
            .contains("BINDGATE_LOG=`bindgate=[` is not a log filter"),
        "{}",
        bg.logs()
    );
    let (ok, out) = check(
        &pki,
        "listen:\n  address: \"127.0.0.1:8443\"\n  tls: {cert: \"{PKI}/server.crt\", key: \"{PKI}/server.key\"}\nserver: {max_body: 1024}\nroutes: []\n",
    );
    assert!(ok, "{out}");
}
