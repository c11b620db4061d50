//! `oha` as the load generator: many keep-alive mTLS connections, HTTP/1.1 or HTTP/2, the
//! request repeated; its own CPU time is read with `/usr/bin/time` so that a table can show
//! that the generator was not what limited a proxy.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// What one oha run measured.
pub struct Run {
    pub rps: f64,
    pub requests: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub statuses: BTreeMap<String, u64>,
    pub errors: u64,
    /// CPU seconds (user + system) the generator used.
    pub cpu_seconds: f64,
    pub seconds: f64,
}

/// The request to repeat.
pub struct Request<'a> {
    pub url: String,
    pub method: &'a str,
    pub headers: Vec<String>,
    pub body: Option<&'a str>,
}

pub fn binary() -> Option<String> {
    let home = std::env::var("HOME").unwrap_or_default();
    ["oha".to_string(), format!("{home}/.cargo/bin/oha")]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// Runs oha for `duration` with `connections` connections presenting `client1`'s
/// certificate (from `pki`); on CPU 0 when `pin`.
pub fn run(
    req: &Request,
    pki: &Path,
    connections: usize,
    duration: Duration,
    http2: bool,
    pin: bool,
    rate: Option<u32>,
) -> Run {
    let oha = binary().expect("oha: cargo install oha (benches/compare.sh installs it)");
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", "/usr/bin/time", "-f", "%U %S", &oha]);
        c
    } else {
        let mut c = Command::new("/usr/bin/time");
        c.args(["-f", "%U %S", &oha]);
        c
    };
    cmd.arg(&req.url)
        .args(["--no-tui", "--output-format", "json", "-w", "--ipv4"])
        .args(["-z", &format!("{}ms", duration.as_millis())])
        .args(["-c", &connections.to_string()])
        .args(["--worker-threads", if pin { "1" } else { "2" }])
        .args(["-m", req.method]);
    if req.url.starts_with("https") {
        cmd.arg("--cacert")
            .arg(pki.join("ca.crt"))
            .arg("--cert")
            .arg(pki.join("client1.crt"))
            .arg("--key")
            .arg(pki.join("client1.key"));
    }
    if http2 {
        cmd.arg("--http2");
    }
    if let Some(q) = rate {
        cmd.args(["-q", &q.to_string()]);
    }
    for h in &req.headers {
        cmd.args(["-H", h]);
    }
    if let Some(b) = req.body {
        cmd.args(["-d", b]);
    }
    let out = cmd.output().expect("run oha");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "oha failed: {stderr}");
    let cpu_seconds = stderr
        .lines()
        .last()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|v| v.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("oha JSON");
    let ms = |key: &str| v["latencyPercentiles"][key].as_f64().unwrap_or(0.0) * 1000.0;
    let statuses: BTreeMap<String, u64> = v["statusCodeDistribution"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let errors = v["errorDistribution"]
        .as_object()
        .map(|m| m.values().filter_map(|n| n.as_u64()).sum())
        .unwrap_or(0);
    Run {
        rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        requests: statuses.values().sum(),
        p50_ms: ms("p50"),
        p90_ms: ms("p90"),
        p99_ms: ms("p99"),
        max_ms: v["summary"]["slowest"].as_f64().unwrap_or(0.0) * 1000.0,
        statuses,
        errors,
        cpu_seconds,
        seconds: v["summary"]["total"].as_f64().unwrap_or(0.0),
    }
}
