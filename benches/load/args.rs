//! The harness's command line (clap), and the options one run takes from it.

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// bindgate's load harness: keep-alive mTLS connections against bindgate and its peers.
#[derive(Parser, Debug)]
#[command(name = "load")]
pub(crate) struct Args {
    /// Scenarios, comma-separated, or `all`: a-es256, a-rs256, a-dpop, b, c, c-fresh, d, e.
    #[arg(long, default_value = "all")]
    pub scenario: String,
    /// Proxies, comma-separated: bindgate, haproxy, envoy; `both` (bindgate and HAProxy) or
    /// `all`.
    #[arg(long, default_value = "bindgate")]
    pub proxy: String,
    /// Connections; a comma-separated list is a sweep, one run (one process) per count
    /// (`--conns 8,128,512,2048`).
    #[arg(long, visible_alias = "conns")]
    pub connections: Option<String>,
    /// Seconds per cell (0.1 to 600).
    #[arg(long)]
    pub duration: Option<f64>,
    /// At most this many requests per cell (0: as many as the duration allows).
    #[arg(long, default_value_t = 0)]
    pub requests: u64,
    /// `server.threads` of every proxy.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Proxies on CPU 1, the harness (generator, upstream) on CPU 0.
    #[arg(long)]
    pub pin: bool,
    /// Fresh tokens minted for scenarios b and c-fresh.
    #[arg(long)]
    pub tokens: Option<usize>,
    /// Also write the results as JSON (a sweep: FILE-<count>.json).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// The generator of repeated requests (a-es256, a-rs256, e).
    #[arg(long, default_value = "reqwest", value_parser = ["reqwest", "oha"])]
    pub generator: String,
    /// HTTP/2 (oha only).
    #[arg(long)]
    pub http2: bool,
    /// A fixed total request rate (oha only): latency compared at equal load.
    #[arg(long)]
    pub rate: Option<u32>,
    /// bindgate's state engine: `memory` (redb in memory) or `redis` (a redis-server the
    /// harness starts, durable).
    #[arg(long, default_value = "memory", value_parser = ["memory", "redis"])]
    pub state: String,
    /// `registration.single_use: true` (scenario c-fresh).
    #[arg(long)]
    pub single_use: bool,
    /// bindgate writes its access log (otherwise warnings only).
    #[arg(long)]
    pub access_log: bool,
    /// bindgate's `listen.tls.groups`, comma-separated (default: OpenSSL's, hybrid
    /// post-quantum first); `X25519` gives it the key exchange HAProxy's OpenSSL 3.0 makes.
    #[arg(long)]
    pub groups: Option<String>,
    /// bindgate's `tokens.verified_cache_entries` (0: every request verifies its token).
    #[arg(long, default_value_t = 100_000)]
    pub verified_cache: u64,
    /// bindgate's `server.active_requests` (0: no window); its default when not given.
    #[arg(long)]
    pub active_requests: Option<usize>,
    /// The static upstream answers each request this many milliseconds after it arrives (a
    /// slow provider); the harness's own ceiling rows are then left out.
    #[arg(long, default_value_t = 0)]
    pub upstream_delay_ms: u64,
    /// bindgate's `server.active_hold` (`20ms`); its default when not given.
    #[arg(long)]
    pub active_hold: Option<String>,
    /// Internal: serve the TLS floor on PORT with the PKI in DIR (the harness starts itself so).
    #[arg(long, num_args = 2, value_names = ["PORT", "DIR"], hide = true)]
    pub tls_floor: Option<Vec<String>>,
    /// Given by `cargo bench`: a timed run. Without it (under `cargo test`), a short smoke.
    #[arg(long, hide = true)]
    pub bench: bool,
}

impl Args {
    /// The command line; under `cargo test` (no `--bench`), the smoke's defaults whatever the
    /// test runner passed (`--nocapture`, filters). The TLS floor is this binary started again
    /// with `--tls-floor`, by a smoke too.
    pub fn read() -> Args {
        if std::env::args().any(|a| a == "--bench" || a == "--tls-floor") {
            Args::parse()
        } else {
            Args::parse_from(["load"])
        }
    }
}

#[derive(Clone)]
pub(crate) struct Options {
    pub scenarios: Vec<String>,
    pub proxies: Vec<String>,
    pub connections: usize,
    pub duration: Duration,
    pub requests: u64,
    pub threads: usize,
    pub pin: bool,
    pub tokens: usize,
    pub json: Option<PathBuf>,
    pub smoke: bool,
    /// `reqwest` (the harness's own client) or `oha`.
    pub generator: String,
    /// HTTP/2 (oha only).
    pub http2: bool,
    /// A fixed total request rate (oha only; `-q`): latency compared at equal load.
    pub rate: Option<u32>,
    /// bindgate's state engine: `memory` (redb in memory, the default) or `redis` (a
    /// `redis-server` the harness starts).
    pub state: String,
    /// `registration.single_use: true` (scenario `c-fresh`).
    pub single_use: bool,
    /// bindgate's `tokens.verified_cache_entries` (0: every request verifies its token).
    pub verified_cache: u64,
    /// bindgate's `server.active_requests` and `server.active_hold`, when given.
    pub active_requests: Option<usize>,
    /// The static upstream's delay per answer (0: at once).
    pub upstream_delay: Duration,
    pub active_hold: Option<String>,
    /// bindgate writes its access log (`BINDGATE_LOG=info`, its default) to a file; without
    /// it, warnings only.
    pub access_log: bool,
    /// bindgate's `listen.tls.groups` (None: OpenSSL's default).
    pub groups: Option<String>,
}

impl Options {
    /// The options of one run (`connections` one count, not a sweep).
    pub fn of(a: &Args, connections: Option<usize>) -> Options {
        let smoke = !a.bench;
        let scenarios = if a.scenario == "all" {
            [
                "a-es256", "a-rs256", "a-opaque", "a-dpop", "b", "c", "d", "e",
            ]
            .map(String::from)
            .to_vec()
        } else {
            a.scenario.split(',').map(String::from).collect()
        };
        let proxies = match a.proxy.as_str() {
            "both" => vec!["bindgate".to_string(), "haproxy".to_string()],
            "all" => ["bindgate", "haproxy", "envoy"].map(String::from).to_vec(),
            list => list.split(',').map(String::from).collect(),
        };
        let duration = a.duration.unwrap_or(if smoke { 0.3 } else { 10.0 });
        Options {
            scenarios,
            proxies,
            connections: connections.unwrap_or(if smoke { 4 } else { 32 }),
            duration: Duration::from_secs_f64(duration.clamp(0.1, 600.0)),
            requests: a.requests,
            threads: a.threads,
            pin: a.pin,
            tokens: a.tokens.unwrap_or(if smoke { 2_000 } else { 150_000 }),
            json: a.json.clone(),
            smoke,
            generator: a.generator.clone(),
            http2: a.http2,
            rate: a.rate.filter(|r| *r > 0),
            state: a.state.clone(),
            single_use: a.single_use,
            access_log: a.access_log,
            groups: a.groups.clone(),
            verified_cache: a.verified_cache,
            active_requests: a.active_requests,
            upstream_delay: Duration::from_millis(a.upstream_delay_ms),
            active_hold: a.active_hold.clone(),
        }
    }

    /// These options for credentials good once: at most `n` requests, less the one per
    /// connection the warm-up takes.
    pub fn bounded_to(&self, n: usize) -> Options {
        let spare = n.saturating_sub(self.connections) as u64;
        Options {
            requests: if self.requests == 0 {
                spare
            } else {
                self.requests.min(spare)
            },
            ..self.clone()
        }
    }
}
