//! The load harness: many keep-alive HTTPS connections, each presenting a client certificate,
//! against bindgate (and HAProxy doing the same job), on loopback only.
//!
//! ```sh
//! cargo bench --bench load                                   # every scenario, bindgate only
//! cargo bench --bench load -- --proxy both --pin             # a, b, e side by side with HAProxy
//! cargo bench --bench load -- --scenario a-es256 --connections 64 --duration 10 --json out.json
//! cargo bench --bench load -- --scenario e --conns 8,128,512,2048   # a sweep: one run each
//! cargo bench --bench load -- --help                         # every option
//! ```
//!
//! Rooms: `load/args.rs` (the command line), `load/material.rs` (keys, tokens, proofs),
//! `load/proxies.rs` (the proxies and reference endpoints), `load/drive.rs` (generators and
//! the report of a run), `load/oha.rs` and `load/envoy.rs`; this file runs the cells.
//!
//! Scenarios: `a-es256` / `a-rs256` (a bound token, repeated, with the matching certificate, on
//! the registration path forwarded to a static upstream), `b` (a fresh ES256 token on every
//! request), `c` (`POST /clients` into the embedded registry), `d` (session create + read on the
//! embedded store), `e` (passthrough: a route with no authorisation), `a-dpop` (a DPoP-bound
//! ES256 token, repeated, each request with a fresh ES256 proof: the cost of one proof check
//! next to `a-es256`; bindgate only), `c-fresh` (`POST /clients` into the embedded registry
//! with a fresh initial access token each time; with `--single-use` each is used up).
//! `--state redis` puts bindgate's state on a `redis-server` the harness starts (durable:
//! `appendfsync always`). `--verified-cache N` sets bindgate's verified-token cache (0: off);
//! `--access-log` runs bindgate with its access log (its default; otherwise warnings only). Tokens and proofs are minted before timing starts. `--pin` runs the proxies on CPU 1 and the harness (load and upstream) on
//! CPU 0. Under `cargo test` (no `--bench` argument) a short smoke of every scenario runs and
//! checks that every answer was a success; no timing is asserted.

#[path = "load/args.rs"]
mod args;
mod common;
#[path = "load/drive.rs"]
mod drive;
#[path = "load/envoy.rs"]
mod envoy;
#[path = "load/material.rs"]
mod material;
#[path = "load/oha.rs"]
mod oha;
#[path = "load/proxies.rs"]
mod proxies;

use args::{Args, Options};
use common::static_upstream;
use drive::{enforces_binding, machine, machine_line, run_load, run_oha, Work};
use material::material;
use proxies::{start_bindgate, start_envoy, start_haproxy, start_tls_floor, start_tls_return};

use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let a = Args::read();
    if let Some([port, dir]) = a.tls_floor.as_deref() {
        let dir = Path::new(dir);
        common::tls_floor(
            port.parse().expect("--tls-floor PORT"),
            &dir.join("server.crt"),
            &dir.join("server.key"),
            &dir.join("ca.crt"),
        );
        return;
    }
    let counts: Vec<usize> = match &a.connections {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|c| {
                c.trim()
                    .parse()
                    .expect("--connections: counts, comma-separated")
            })
            .collect(),
    };
    // `--connections 8,128,512,2048`: one run per count (each its own process, cells and
    // ceilings measured afresh), `--json F` written as `F-<count>.json`.
    if counts.len() > 1 {
        // The other options as given, the list (`--connections L`, `--conns L`, `--conns=L`)
        // left out; each run gets its own count.
        let mut args: Vec<String> = Vec::new();
        let mut given = std::env::args().skip(1);
        while let Some(x) = given.next() {
            if x == "--connections" || x == "--conns" {
                given.next();
            } else if !x.starts_with("--connections=") && !x.starts_with("--conns=") {
                args.push(x);
            }
        }
        for count in counts {
            let mut again = args.clone();
            again.extend(["--connections".to_string(), count.to_string()]);
            if let Some(j) = again.iter().position(|x| x == "--json") {
                if let Some(path) = again.get_mut(j + 1) {
                    let stem = path.trim_end_matches(".json").to_string();
                    *path = format!("{stem}-{count}.json");
                }
            }
            eprintln!("== {count} connections");
            let status = Command::new(std::env::current_exe().expect("this harness"))
                .args(&again)
                .status()
                .expect("run the harness again");
            assert!(status.success(), "the run with {count} connections failed");
        }
        return;
    }
    let o = Options::of(&a, counts.first().copied());
    descriptors_for(o.connections);
    let machine = machine();
    eprintln!("{}", machine_line(&machine));
    if o.pin {
        // The harness (load generator and static upstream) on CPU 0, the proxy on CPU 1.
        let me = std::process::id().to_string();
        let _ = Command::new("taskset")
            .args(["-a", "-cp", "0", &me])
            .stdout(Stdio::null())
            .status();
    }
    let dir = tempfile::tempdir().unwrap();
    let m = material(&dir.path().join("pki"));
    let upstream = if o.upstream_delay.is_zero() {
        static_upstream()
    } else {
        common::slow_upstream(o.upstream_delay)
    };
    let minted = Instant::now();
    let es_repeat = Arc::new(vec![m.es256(0)]);
    let opaque_repeat = Arc::new(vec!["bench-opaque-token-0123456789".to_string()]);
    // With an a-opaque cell, every bindgate of the run introspects opaque tokens (the same
    // configuration for the JWT cells it is compared with).
    let introspection = o.scenarios.iter().any(|s| s == "a-opaque").then(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        common::json_upstream(
            json!({"active": true, "scope": "client-reg", "aud": material::ENDPOINT,
                   "iss": material::ISSUER, "exp": now + 3600, "client_id": "load",
                   "cnf": {"x5t#S256": m.x5t}})
            .to_string(),
        )
    });
    let rs_repeat = Arc::new(vec![m.rs256(0)]);
    let fresh = if o.scenarios.iter().any(|s| s == "b" || s == "c-fresh") {
        Arc::new((1..=o.tokens).map(|i| m.es256(i)).collect::<Vec<_>>())
    } else {
        es_repeat.clone()
    };
    eprintln!(
        "tokens minted in {:.1} s ({} fresh ES256)",
        minted.elapsed().as_secs_f64(),
        fresh.len()
    );
    let master = Arc::new(vec![std::fs::read_to_string(m.dir.join("master.token"))
        .unwrap()
        .trim()
        .to_string()]);
    let _ = master;
    let redis =
        (o.state == "redis").then(|| common::redis_server(&dir.path().join("redis"), o.pin));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut reports = Vec::new();
    if o.generator == "oha" && !o.smoke && o.upstream_delay.is_zero() {
        // The generator's own ceiling, in the same run: the static upstream directly (plain
        // HTTP), and a TLS endpoint that answers at once, pinned where the proxies run.
        // The static upstream speaks HTTP/1.1 only: no direct row over HTTP/2.
        let direct = (!o.http2).then(|| {
            run_oha(
                &o,
                &m,
                format!("http://127.0.0.1:{upstream}/"),
                Work::Passthrough,
                "",
                0,
                None,
            )
        });
        let tls = start_tls_return(&o, &m);
        let pid = tls.child.id();
        let tls_return = run_oha(
            &o,
            &m,
            format!("https://localhost:{}/", tls.port),
            Work::Passthrough,
            "",
            pid,
            None,
        );
        // The harness's own generator (reqwest), which scenarios b, c, d and a-dpop still use
        // (each request differs): its ceiling against the same endpoint.
        let reqwest_ceiling = (!o.http2).then(|| {
            rt.block_on(run_load(
                &o,
                &m,
                tls.port,
                Work::Passthrough,
                es_repeat.clone(),
                pid,
                "ceiling-reqwest",
                "none",
            ))
        });
        drop(tls);
        // The floor speaks HTTP/1.1 only.
        let floor = (!o.http2).then(|| {
            let floor = start_tls_floor(&o, &m);
            let pid = floor.child.id();
            run_oha(
                &o,
                &m,
                format!("https://localhost:{}/", floor.port),
                Work::Passthrough,
                "",
                pid,
                None,
            )
        });
        let rows = direct
            .map(|d| ("ceiling-direct", d))
            .into_iter()
            .chain([("ceiling-tls-return", tls_return)])
            .chain(floor.map(|f| ("floor-tls-minimal", f)))
            .chain(reqwest_ceiling.map(|r| ("ceiling-tls-return-reqwest", r)));
        for (name, mut r) in rows {
            r.scenario = name.into();
            r.proxy = "none".into();
            eprintln!(
                "{:<18} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  oha cpu {:.1} s in {:.1} s  statuses {:?}  errors {}",
                r.scenario, r.rps, r.p50_ms, r.p99_ms, r.generator_cpu_s, r.seconds, r.statuses, r.errors
            );
            reports.push(r);
        }
    }
    for scenario in &o.scenarios {
        for proxy in &o.proxies {
            let (work, tokens, embedded) = match scenario.as_str() {
                "a-es256" => (Work::Registration, es_repeat.clone(), false),
                // An opaque token, bound to client1's certificate by the introspection answer.
                "a-opaque" => (Work::Registration, opaque_repeat.clone(), false),
                "a-rs256" => (Work::Registration, rs_repeat.clone(), false),
                // Proofs name the proxy's port: minted once it is known, below.
                "a-dpop" => (Work::RegistrationDpop, es_repeat.clone(), false),
                "b" => (Work::Registration, fresh.clone(), false),
                "c" => (Work::RegisterEmbedded, es_repeat.clone(), true),
                // A fresh initial access token per registration (with --single-use, each is
                // used once).
                "c-fresh" => (Work::RegisterEmbedded, fresh.clone(), true),
                "d" => (Work::Sessions, es_repeat.clone(), true),
                "e" => (Work::Passthrough, es_repeat.clone(), false),
                other => panic!(
                    "unknown scenario {other} (a-es256, a-rs256, a-opaque, a-dpop, b, c, c-fresh, d, e)"
                ),
            };
            if proxy != "bindgate"
                && !matches!(scenario.as_str(), "a-es256" | "a-rs256" | "b" | "e")
            {
                continue;
            }
            let p = match proxy.as_str() {
                "bindgate" => start_bindgate(
                    &o,
                    &m,
                    upstream,
                    embedded,
                    redis.as_ref().map(|r| r.port),
                    introspection,
                ),
                "haproxy" => start_haproxy(&o, &m, upstream),
                "envoy" => start_envoy(&o, &m, upstream),
                other => panic!("unknown proxy {other} (bindgate, haproxy, envoy, both, all)"),
            };
            let pid = p.child.id();
            let (tokens, o) = if work == Work::RegistrationDpop {
                // One proof per request, never reused: the run stops when they are spent.
                let n = if o.smoke {
                    2_000
                } else {
                    o.tokens.max(100_000)
                };
                let minted = Instant::now();
                let pairs = m.dpop_pairs(p.port, n);
                eprintln!(
                    "{n} DPoP proofs minted in {:.1} s",
                    minted.elapsed().as_secs_f64()
                );
                // The warm-up takes one proof per connection.
                let bounded = o.bounded_to(n);
                (Arc::new(pairs), bounded)
            } else if scenario == "c-fresh" {
                // Each token registers once: the run stops when they are spent.
                let bounded = o.bounded_to(tokens.len());
                (tokens, bounded)
            } else {
                (tokens, o.clone())
            };
            if matches!(scenario.as_str(), "a-es256" | "a-rs256" | "a-opaque") {
                enforces_binding(&m, p.port, &tokens[0], proxy);
            }
            let repeated = matches!(scenario.as_str(), "a-es256" | "a-rs256" | "a-opaque" | "e");
            let mut report = if o.generator == "oha" && repeated && !o.smoke {
                let path = if work == Work::Passthrough {
                    "/passthrough/api"
                } else {
                    "/clients"
                };
                run_oha(
                    &o,
                    &m,
                    format!("https://localhost:{}{path}", p.port),
                    work,
                    &tokens[0],
                    pid,
                    Some(upstream),
                )
            } else {
                rt.block_on(run_load(&o, &m, p.port, work, tokens, pid, scenario, proxy))
            };
            report.scenario = scenario.clone();
            report.proxy = proxy.clone();
            let _ = p.admin;
            drop(p);
            eprintln!(
                "{:<8} {:<9} {:>9.0} req/s  p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  rss {:>5.1} MiB  cpu {:>5.1} µs/req  statuses {:?}  errors {}",
                report.scenario, report.proxy, report.rps, report.p50_ms, report.p90_ms, report.p99_ms, report.max_ms,
                report.proxy_peak_rss_mib, report.proxy_cpu_us_per_request, report.statuses, report.errors
            );
            if let Some(mib) = report.proxy_steady_rss_mib {
                eprintln!(
                    "{:<18} RSS over the cell's second half (connections open, handshakes done): at most {mib:.1} MiB",
                    ""
                );
            }
            if let Some(us) = report.proxy_steady_cpu_us_per_request {
                eprintln!(
                    "{:<18} CPU per request over the cell's steady part (half to nine tenths of it, handshakes done): {us:.1} µs",
                    ""
                );
            }
            if let Some(c) = report.proxy_cpu_split {
                eprintln!(
                    "{:<18} CPU 1 per request: user {:.1} µs, system {:.1} µs, softirq {:.1} µs, idle {:.1} µs; CPU 0 woken by {:.2} call IPIs",
                    "", c.user_us, c.system_us, c.softirq_us, c.idle_us, c.cpu0_call_ipis
                );
            }
            if o.smoke {
                assert_eq!(report.errors, 0, "{scenario} on {proxy}: transport errors");
                assert!(
                    report.requests > 0,
                    "{scenario} on {proxy}: no request completed"
                );
                assert!(
                    report.statuses.keys().all(|s| s.starts_with('2')),
                    "{scenario} on {proxy}: non-2xx answers {:?}",
                    report.statuses
                );
            }
            reports.push(report);
        }
    }
    println!("\n| scenario | proxy | req/s | p50 ms | p90 ms | p99 ms | max ms | proxy RSS MiB | proxy CPU µs/req | steady CPU µs/req | statuses | errors | generator (CPU s) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &reports {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {} | {:?} | {} | {} ({:.1}) |",
            r.scenario,
            r.proxy,
            r.rps,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms,
            r.proxy_peak_rss_mib,
            r.proxy_cpu_us_per_request,
            r.proxy_steady_cpu_us_per_request
                .map_or_else(|| "-".to_string(), |us| format!("{us:.1}")),
            r.statuses,
            r.errors,
            r.generator,
            r.generator_cpu_s
        );
    }
    let rps = |s: &str, p: &str| {
        reports
            .iter()
            .find(|r| r.scenario == s && r.proxy == p)
            .map(|r| r.rps)
    };
    let mut ratios = serde_json::Map::new();
    for s in ["a-es256", "a-rs256", "b", "e"] {
        for peer in ["haproxy", "envoy"] {
            if let (Some(b), Some(h)) = (rps(s, "bindgate"), rps(s, peer)) {
                println!("{s}: bindgate / {peer} = {:.2}", b / h);
                ratios.insert(format!("{s}_bindgate_over_{peer}"), json!(b / h));
            }
        }
    }
    if let (Some(d), Some(a)) = (rps("a-dpop", "bindgate"), rps("a-es256", "bindgate")) {
        println!("a-dpop / a-es256 (bindgate) = {:.2}", d / a);
        ratios.insert("a_dpop_over_a_es256".into(), json!(d / a));
    }
    if let (Some(a), Some(e)) = (rps("a-es256", "bindgate"), rps("e", "bindgate")) {
        println!("a-es256 / bindgate passthrough (e) = {:.2}", a / e);
        ratios.insert("a_es256_over_passthrough".into(), json!(a / e));
    }
    if let Some(path) = &o.json {
        let out = json!({"options": {"connections": o.connections, "duration_s": o.duration.as_secs_f64(), "threads": o.threads, "pinned": o.pin},
                         "machine": machine, "results": reports, "ratios": ratios});
        std::fs::write(path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
        println!("JSON written to {}", path.display());
    }
}

/// Raises this process's soft limit on open descriptors to its hard limit, for itself and the
/// processes it starts (oha, the proxies, which inherit it): with `connections` clients the
/// generator, the proxy (both sides) and the upstream each hold about that many. Stops with
/// what to do when even the hard limit is too low.
fn descriptors_for(connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given; setrlimit reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return;
            }
        }
    }
    let needed = connections as u64 * 2 + 512;
    assert!(
        limit.rlim_cur >= needed,
        "{connections} connections need about {needed} open descriptors in one process (the proxy's client and upstream sides); the hard limit is {}: raise it (`ulimit -Hn {needed}` as root, or LimitNOFILE=)",
        limit.rlim_max
    );
}
