//! Driving load: oha for repeated requests, the harness's own reqwest client for requests
//! that differ, the proxy's CPU and RSS sampled meanwhile, and the report of one run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::Options;
use crate::common::rss_kib;
use crate::material::Material;
use crate::oha;

#[derive(Default, serde::Serialize, Clone)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) proxy: String,
    pub(crate) connections: usize,
    pub(crate) seconds: f64,
    pub(crate) requests: u64,
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) statuses: BTreeMap<String, u64>,
    pub(crate) errors: u64,
    pub(crate) proxy_peak_rss_mib: f64,
    /// oha cells: the proxy's largest RSS over the cell's second half, all connections open and
    /// busy, the handshakes that opened them long done (the peak is often their storm).
    pub(crate) proxy_steady_rss_mib: Option<f64>,
    /// `reqwest` or `oha`, and the CPU seconds oha used (0 for reqwest).
    pub(crate) generator: String,
    pub(crate) generator_cpu_s: f64,
    /// The proxy's CPU time (user + system, all its threads) per answered request, in µs.
    pub(crate) proxy_cpu_us_per_request: f64,
    /// oha cells through a proxy: the same, over the cell's steady part only (from half the
    /// duration to nine tenths of it: every connection open, its handshake done), counting
    /// the requests the upstream answered meanwhile. The whole cell's figure also carries the
    /// handshakes of the connection storm, whose share grows with the connections and shrinks
    /// with the cell's length.
    pub(crate) proxy_steady_cpu_us_per_request: Option<f64>,
    /// With `--pin` (oha): where the time of the proxy's CPU went, per answered request.
    pub(crate) proxy_cpu_split: Option<CpuSplit>,
}

/// The time of CPU 1 (the proxy's alone with `--pin`) over one cell, per answered request,
/// from `/proc/stat`, and the function-call IPIs CPU 0 received meanwhile (`/proc/interrupts`
/// `CAL`): on loopback a send runs the receiver's TCP path in the sender's softirq, and a
/// reader asleep on CPU 0 is woken by such an IPI.
#[derive(Default, serde::Serialize, Clone, Copy)]
pub(crate) struct CpuSplit {
    pub(crate) user_us: f64,
    pub(crate) system_us: f64,
    pub(crate) softirq_us: f64,
    pub(crate) idle_us: f64,
    pub(crate) cpu0_call_ipis: f64,
}

/// CPU 1's user (with nice), system, softirq (with irq) and idle ticks, and the `CAL`
/// interrupts CPU 0 has received; `None` where either file cannot be read as expected.
fn cpu1_counters() -> Option<[u64; 5]> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat
        .lines()
        .find(|l| l.starts_with("cpu1 "))?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let interrupts = std::fs::read_to_string("/proc/interrupts").ok()?;
    let cal: u64 = interrupts
        .lines()
        .find(|l| l.trim_start().starts_with("CAL:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    // user nice system idle iowait irq softirq
    Some([
        f.first()? + f.get(1)?,
        *f.get(2)?,
        f.get(5)? + f.get(6)?,
        f.get(3)? + f.get(4)?,
        cal,
    ])
}

fn cpu_split(before: Option<[u64; 5]>, requests: u64) -> Option<CpuSplit> {
    let (b, a) = (before?, cpu1_counters()?);
    let n = requests.max(1) as f64;
    // USER_HZ ticks of 10 ms.
    let us = |i: usize| a[i].saturating_sub(b[i]) as f64 * 10_000.0 / n;
    Some(CpuSplit {
        user_us: us(0),
        system_us: us(1),
        softirq_us: us(2),
        idle_us: us(3),
        cpu0_call_ipis: a[4].saturating_sub(b[4]) as f64 / n,
    })
}

/// A run with oha of a repeated request (scenarios a-es256, a-rs256, e), sampling the proxy's
/// RSS meanwhile. `upstream`: the port of the harness's upstream each request reaches once
/// (its answers count the requests of the cell's steady part), if any.
pub(crate) fn run_oha(
    o: &Options,
    m: &Material,
    url: String,
    work: Work,
    token: &str,
    pid: u32,
    upstream: Option<u16>,
) -> Report {
    let (headers, body) = match work {
        Work::Registration => (
            vec![
                format!("authorization: Bearer {token}"),
                "content-type: application/json".to_string(),
            ],
            r#"{"redirect_uris":["https://app.example.com/cb"]}"#,
        ),
        _ => (
            vec!["content-type: application/json".to_string()],
            r#"{"redirect_uris":["https://app.example.com/cb"]}"#,
        ),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let steady = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peak, steady, stop) = (peak.clone(), steady.clone(), stop.clone());
        let (started, half, late) = (Instant::now(), o.duration / 2, o.duration * 9 / 10);
        std::thread::spawn(move || {
            // (CPU seconds, requests answered) at half the duration and at nine tenths of it.
            let mark = || Some((cpu_seconds(pid), crate::common::answered(upstream?)?));
            let (mut from, mut to) = (None, None);
            while !stop.load(Ordering::Relaxed) {
                if pid != 0 {
                    let rss = rss_kib(pid);
                    peak.fetch_max(rss, Ordering::Relaxed);
                    let elapsed = started.elapsed();
                    if elapsed >= half {
                        steady.fetch_max(rss, Ordering::Relaxed);
                        if from.is_none() {
                            from = mark();
                        }
                    }
                    if elapsed >= late && to.is_none() {
                        to = mark();
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let ((cpu0, n0), (cpu1, n1)) = (from?, to?);
            (n1 > n0).then(|| (cpu1 - cpu0) * 1e6 / (n1 - n0) as f64)
        })
    };
    let cpu_before = cpu_seconds(pid);
    let split_before = if o.pin { cpu1_counters() } else { None };
    let run = oha::run(
        &oha::Request {
            url,
            method: "POST",
            headers,
            body: Some(body),
        },
        &m.dir,
        o.connections,
        o.duration,
        o.http2,
        o.pin,
        o.rate,
    );
    stop.store(true, Ordering::Relaxed);
    let steady_cpu = sampler.join().ok().flatten();
    Report {
        connections: o.connections,
        seconds: run.seconds,
        requests: run.requests,
        rps: run.rps,
        p50_ms: run.p50_ms,
        p90_ms: run.p90_ms,
        p99_ms: run.p99_ms,
        max_ms: run.max_ms,
        statuses: run.statuses,
        errors: run.errors,
        proxy_peak_rss_mib: peak.load(Ordering::Relaxed) as f64 / 1024.0,
        proxy_steady_rss_mib: Some(steady.load(Ordering::Relaxed) as f64 / 1024.0)
            .filter(|&mib| mib > 0.0),
        generator: "oha".into(),
        generator_cpu_s: run.cpu_seconds,
        proxy_cpu_us_per_request: (cpu_seconds(pid) - cpu_before) * 1e6
            / run.requests.max(1) as f64,
        proxy_cpu_split: cpu_split(split_before, run.requests),
        proxy_steady_cpu_us_per_request: steady_cpu,
        ..Report::default()
    }
}

/// CPU time (user + system, every thread) a process has used, in seconds; 0 for pid 0 or
/// when it cannot be read.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    if pid == 0 {
        return 0.0;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses: utime and stime
    // are the 14th and 15th fields of the line, the 12th and 13th after ") ".
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // /proc counts in USER_HZ, 100 on Linux whatever the kernel's own tick.
    ticks as f64 / 100.0
}

/// Every proxy compared does the whole job: the bound token without its certificate is
/// refused (401), so no row measures a proxy that skips the binding.
pub(crate) fn enforces_binding(m: &Material, port: u16, token: &str, proxy: &str) {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(m.dir.join("ca.crt")).unwrap()).unwrap();
    let client = reqwest::blocking::Client::builder()
        .use_native_tls()
        .add_root_certificate(ca)
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .http1_only()
        .build()
        .unwrap();
    let status = client
        .post(format!("https://localhost:{port}/clients"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(r#"{"redirect_uris":["https://app.example.com/cb"]}"#)
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    assert_eq!(
        status, 401,
        "{proxy} let a certificate-bound token through without its certificate"
    );
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Work {
    Registration,
    /// `token` is "ACCESS-TOKEN PROOF": sent as `Authorization: DPoP` and `DPoP`.
    RegistrationDpop,
    RegisterEmbedded,
    Sessions,
    Passthrough,
}

pub(crate) fn build(
    work: Work,
    base: &str,
    st: &str,
    c: &reqwest::Client,
    token: &str,
    i: u64,
) -> Vec<reqwest::RequestBuilder> {
    match work {
        Work::Registration => vec![c
            .post(format!("{base}/clients"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(r#"{"redirect_uris":["https://app.example.com/cb"]}"#)],
        Work::RegistrationDpop => {
            let (access, proof) = token.split_once(' ').unwrap_or((token, ""));
            vec![c
                .post(format!("{base}/clients"))
                .header("authorization", format!("DPoP {access}"))
                .header("dpop", proof)
                .header("content-type", "application/json")
                .body(r#"{"redirect_uris":["https://app.example.com/cb"]}"#)]
        }
        Work::RegisterEmbedded => vec![c
            .post(format!("{base}/clients"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(r#"{"redirect_uris":["https://app.example.com/cb"],"client_name":"load"}"#)],
        Work::Sessions => vec![c
            .post(format!("{base}/session-store/rest/v2/sessions"))
            .bearer_auth(st)
            .body(format!(r#"{{"sub":"load-{i}","acr":"1"}}"#))],
        Work::Passthrough => vec![c
            .post(format!("{base}/passthrough/api"))
            .header("content-type", "application/json")
            .body(r#"{"redirect_uris":["https://app.example.com/cb"]}"#)],
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_load(
    o: &Options,
    m: &Material,
    port: u16,
    work: Work,
    tokens: Arc<Vec<String>>,
    pid: u32,
    scenario: &str,
    proxy: &str,
) -> Report {
    let identity = reqwest::Identity::from_pkcs8_pem(
        &std::fs::read(m.dir.join("client1.crt")).unwrap(),
        &std::fs::read(m.dir.join("client1.key")).unwrap(),
    )
    .unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(m.dir.join("ca.crt")).unwrap()).unwrap();
    let st = std::fs::read_to_string(m.dir.join("session-store.token"))
        .unwrap()
        .trim()
        .to_string();
    let next_token = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    // Timed iterations taken so far: a bound on requests holds even with every connection's
    // request still in flight, so one-use tokens (DPoP proofs, c-fresh) are never sent twice.
    let claimed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let base = format!("https://localhost:{port}");
    let mut clients = Vec::new();
    for _ in 0..o.connections {
        clients.push(
            reqwest::Client::builder()
                .use_native_tls()
                .add_root_certificate(ca.clone())
                .identity(identity.clone())
                .resolve("localhost", ([127, 0, 0, 1], port).into())
                .http1_only()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        );
    }
    // Warm-up: one request per connection (the TLS handshake is not part of the timing).
    for c in &clients {
        // From the same sequence as the timed requests: a DPoP proof is good once.
        let t = tokens[next_token.fetch_add(1, Ordering::Relaxed) % tokens.len()].clone();
        for r in build(work, &base, &st, c, &t, 0) {
            let _ = r.send().await.map(|r| r.bytes());
        }
    }
    let cpu_before = cpu_seconds(pid);
    let split_before = if o.pin { cpu1_counters() } else { None };
    let started = Instant::now();
    let deadline = started + o.duration;
    let mut tasks = Vec::new();
    for c in clients {
        let (tokens, next_token, sent, claimed, o2, st) = (
            tokens.clone(),
            next_token.clone(),
            sent.clone(),
            claimed.clone(),
            o.clone(),
            st.clone(),
        );
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            let mut errors = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline
                && (o2.requests == 0 || sent.load(Ordering::Relaxed) < o2.requests)
            {
                if o2.requests != 0 && claimed.fetch_add(1, Ordering::Relaxed) >= o2.requests {
                    break;
                }
                let token = &tokens[next_token.fetch_add(1, Ordering::Relaxed) % tokens.len()];
                i += 1;
                for r in build(work, &base, &st, &c, token, i) {
                    let t = Instant::now();
                    match r.send().await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let sid = if work == Work::Sessions && status == 201 {
                                resp.json::<serde_json::Value>()
                                    .await
                                    .ok()
                                    .and_then(|v| v["sid"].as_str().map(String::from))
                            } else {
                                let _ = resp.bytes().await;
                                None
                            };
                            lat.push(t.elapsed().as_micros() as u32);
                            *statuses.entry(status).or_default() += 1;
                            sent.fetch_add(1, Ordering::Relaxed);
                            // Scenario d: read the session back.
                            if let Some(sid) = sid {
                                let t = Instant::now();
                                match c
                                    .get(format!("{base}/session-store/rest/v2/sessions"))
                                    .bearer_auth(&st)
                                    .header("SID", sid)
                                    .send()
                                    .await
                                {
                                    Ok(resp) => {
                                        let status = resp.status().as_u16();
                                        let _ = resp.bytes().await;
                                        lat.push(t.elapsed().as_micros() as u32);
                                        *statuses.entry(status).or_default() += 1;
                                        sent.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(_) => errors += 1,
                                }
                            }
                        }
                        Err(_) => errors += 1,
                    }
                }
            }
            (lat, statuses, errors)
        }));
    }
    let mut lat: Vec<u32> = Vec::new();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = 0;
    for t in tasks {
        let (l, s, e) = t.await.unwrap();
        lat.extend(l);
        for (k, v) in s {
            *statuses.entry(k.to_string()).or_default() += v;
        }
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Report {
        scenario: scenario.into(),
        proxy: proxy.into(),
        connections: o.connections,
        seconds,
        requests: lat.len() as u64,
        rps: lat.len() as f64 / seconds,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        statuses,
        errors,
        proxy_peak_rss_mib: peak.load(Ordering::Relaxed) as f64 / 1024.0,
        proxy_steady_rss_mib: None,
        generator: "reqwest".into(),
        generator_cpu_s: 0.0,
        proxy_cpu_us_per_request: (cpu_seconds(pid) - cpu_before) * 1e6
            / (lat.len() as f64).max(1.0),
        proxy_cpu_split: cpu_split(split_before, lat.len() as u64),
        proxy_steady_cpu_us_per_request: None,
    }
}

/// The machine a run measures, as far as it changes the numbers: CPUs, model, kernel, and how
/// an idle CPU waits. On loopback every request wakes the generator or the upstream on the
/// other CPU; a CPU that halts at once (a guest with `guest_halt_poll_ns` 0, as this VM ships)
/// must be woken by an IPI through the hypervisor, where one that polls a while first (the
/// kernel's default, 200 µs) is not, and that weighs more on a proxy whose requests take longer
/// (BENCHMARKS.md, "An idle CPU that halts at once").
pub(crate) fn machine() -> serde_json::Value {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    serde_json::json!({
        "cpus": cpus,
        "model": model,
        "kernel": read("/proc/sys/kernel/osrelease"),
        "cpuidle_driver": read("/sys/devices/system/cpu/cpuidle/current_driver"),
        "cpuidle_governor": read("/sys/devices/system/cpu/cpuidle/current_governor_ro")
            .or_else(|| read("/sys/devices/system/cpu/cpuidle/current_governor")),
        "guest_halt_poll_ns": read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
            .and_then(|v| v.parse::<u64>().ok()),
    })
}

/// `machine()` on one line.
pub(crate) fn machine_line(m: &serde_json::Value) -> String {
    let s = |k: &str| m[k].as_str().unwrap_or("?").to_string();
    let poll = match m["guest_halt_poll_ns"].as_u64() {
        Some(0) => ", guest halt polling off (an idle CPU halts at once)".to_string(),
        Some(ns) => format!(", guest halt polling up to {} µs", ns / 1000),
        None => String::new(),
    };
    format!(
        "machine: {} CPUs, {}, Linux {}, cpuidle {} / {}{poll}",
        m["cpus"],
        s("model"),
        s("kernel"),
        s("cpuidle_driver"),
        s("cpuidle_governor"),
    )
}
