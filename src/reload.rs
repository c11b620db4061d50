//! Live configuration: what a running bindgate can take from a new `proxy.yaml` without
//! dropping a request (routes, upstreams, token and key settings, master and API tokens, DPoP,
//! the server certificate, key and client CA), and what needs a binary upgrade instead
//! (listen and admin addresses, thread count, the state engine).
//!
//! A reload builds the whole new configuration first; only when every part of it is good is it
//! swapped in, in one store: requests that started before finish on the old one.

use crate::config::Problem;
use arc_swap::{ArcSwap, ArcSwapOption};
use std::sync::Arc;

use crate::auth::jwks::KeyStore;
use crate::auth::Authoriser;
use crate::config::Config;
use crate::gateway::Live;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::state::{StateService, Store};
use crate::tls::{Material, ServerTls};

/// The running configuration and everything built from it.
pub struct Control {
    config: ArcSwap<Config>,
    pub live: Arc<ArcSwap<Live>>,
    pub tls: Arc<ServerTls>,
    /// The key store the JWKS refresher keeps fresh (replaced when `jwks` changes).
    pub keys: Arc<ArcSwapOption<KeyStore>>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    /// The storage engine: fixed for the life of the process.
    store: Option<Store>,
    /// One reload at a time (SIGHUP, the certificate watcher).
    reloading: tokio::sync::Mutex<()>,
    /// The certificate files the watcher last refused, and why: retried every second, logged
    /// and counted once per change of the files or of the reason.
    refused_certificates: std::sync::Mutex<Option<Refused>>,
    /// Reloads this process has done (SIGHUP), numbering its verdicts.
    reloads_done: std::sync::atomic::AtomicU64,
    /// When the running configuration was loaded (at start or by the last reload taken).
    loaded_at: std::sync::Mutex<std::time::SystemTime>,
    /// The last reload of the file: when, and its verdict (for `GET /config`).
    last_reload: std::sync::Mutex<Option<(std::time::SystemTime, Verdict)>>,
}

/// A reload's verdict: taken, or refused with every problem.
type Verdict = Result<(), Vec<Problem>>;

/// Certificate files the watcher could not serve: which, why, since when, and what was counted.
struct Refused {
    stamps: Vec<crate::tls::FileStamp>,
    why: crate::tls::Unusable,
    since: std::time::Instant,
    counted: &'static str,
}

/// How long a key and a certificate that do not match are taken for a rotation under way
/// (renamed one after the other) before they count as a failed reload.
const PAIR_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a process with `pid_file` writes its reload verdicts.
pub fn verdict_path(pid_file: &std::path::Path) -> std::path::PathBuf {
    let mut name = pid_file.as_os_str().to_owned();
    name.push(".reload");
    std::path::PathBuf::from(name)
}

/// The configuration's parts that need a process of their own to change.
fn fixed_parts(c: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("listen.address", c.listen.address.to_string()),
        (
            "admin.address",
            c.admin
                .as_ref()
                .map(|a| a.address.to_string())
                .unwrap_or_default(),
        ),
        ("server.threads", c.server.threads.to_string()),
        (
            "server.active_requests",
            format!("{} {:?}", c.server.active_requests, c.server.active_hold),
        ),
        ("log.format", format!("{:?}", c.log_format)),
        ("telemetry", format!("{:?}", c.telemetry)),
        (
            "state",
            format!(
                "{:?} {:?}",
                c.state.path,
                c.state
                    .redis
                    .as_ref()
                    .map(|r| (&r.url, &r.cluster, &r.key_prefix))
            ),
        ),
        (
            "server.upgrade_sock",
            c.server.upgrade_sock.display().to_string(),
        ),
    ]
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn embedded(config: &Config) -> bool {
    config.registration.target == crate::config::Target::Embedded
        || config.session_store.target == crate::config::Target::Embedded
}

/// Whether the state service runs: for the embedded targets, and for the single-use ledger of a
/// registration forwarded to an upstream.
fn needs_state(config: &Config) -> bool {
    embedded(config) || config.registration.single_use
}

impl Control {
    /// The first configuration, at start.
    pub fn start(
        config: Config,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
    ) -> Result<Arc<Control>, Problem> {
        // The storage engine: for the embedded targets, and with Redis for the shared replay
        // cache of DPoP proofs too.
        let store = if needs_state(&config) || config.state.redis.is_some() {
            Some(Store::open_state(&config.state)?)
        } else {
            None
        };
        if let Some(redis) = store.as_ref().and_then(Store::redis) {
            redis.time_commands(metrics.ops.redis_command_duration.clone());
            metrics.register_state();
        }
        let material = Material::new(&config.listen.tls)?;
        metrics.certificate_expiry(material.not_after);
        let (live, keys) = build(&config, &metrics, &readiness, store.as_ref(), None)?;
        Ok(Arc::new(Control {
            config: ArcSwap::from_pointee(config),
            live: Arc::new(ArcSwap::from_pointee(live)),
            tls: ServerTls::new(material),
            keys: Arc::new(ArcSwapOption::new(keys)),
            metrics,
            readiness,
            store,
            reloading: tokio::sync::Mutex::new(()),
            refused_certificates: std::sync::Mutex::new(None),
            reloads_done: std::sync::atomic::AtomicU64::new(0),
            loaded_at: std::sync::Mutex::new(std::time::SystemTime::now()),
            last_reload: std::sync::Mutex::new(None),
        }))
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The shared state engine (Redis), if any.
    pub fn shared_store(&self) -> Option<Store> {
        self.store.clone().filter(|s| s.redis().is_some())
    }

    pub fn store(&self) -> Option<Store> {
        self.store.clone()
    }

    /// Reads the configuration file again and swaps it in, or keeps the running one and says
    /// why (every problem, with its key path). Counted in `bindgate_config_reloads_total`.
    pub async fn reload(&self) -> Result<(), Vec<Problem>> {
        let _one = self.reloading.lock().await;
        let outcome = self.try_reload().await;
        match &outcome {
            Ok(()) => {
                self.metrics.reloads_done("ok");
                tracing::info!(target: "bindgate::reload", "configuration reloaded");
            }
            Err(problems) => {
                self.metrics.reload_refused();
                for p in problems {
                    tracing::error!(target: "bindgate::reload", "reload refused: {p}");
                }
                tracing::error!(target: "bindgate::reload", "the running configuration is kept");
            }
        }
        self.write_verdict(&outcome);
        let now = std::time::SystemTime::now();
        if outcome.is_ok() {
            *self.loaded_at.lock().unwrap_or_else(|p| p.into_inner()) = now;
        }
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, outcome.clone()));
        outcome
    }

    /// What `GET /config` answers: the effective configuration (no secret), when it was
    /// loaded, and the last reload's time and verdict.
    pub fn describe(&self) -> serde_json::Value {
        use crate::logformat::rfc3339;
        let loaded_at = *self.loaded_at.lock().unwrap_or_else(|p| p.into_inner());
        let last = self
            .last_reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let last_reload = last.map(|(at, outcome)| match outcome {
            Ok(()) => serde_json::json!({"at": rfc3339(at), "result": "ok"}),
            Err(problems) => serde_json::json!({
                "at": rfc3339(at),
                "result": "refused",
                "problems": problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            }),
        });
        // Each balanced upstream's endpoints as they are now.
        let endpoints: serde_json::Map<String, serde_json::Value> = self
            .live
            .load()
            .balancers()
            .iter()
            .map(|b| {
                let list = b
                    .health()
                    .into_iter()
                    .map(|(a, healthy)| serde_json::json!({"address": a.to_string(), "healthy": healthy}))
                    .collect::<Vec<_>>();
                (b.name().to_string(), serde_json::Value::Array(list))
            })
            .collect();
        serde_json::json!({
            "upstream_endpoints": endpoints,
            "loaded_at": rfc3339(loaded_at),
            "last_reload": last_reload,
            "config": crate::config::show::effective(&self.config()),
        })
    }

    /// Writes this reload's verdict beside the pid file (`server.pid_file` + `.reload`), for
    /// `bindgate reload` to report: `pid P reload N`, then `ok` or `refused` and the problems.
    fn write_verdict(&self, outcome: &Result<(), Vec<Problem>>) {
        let Some(pid_file) = self.config().server.pid_file.clone() else {
            return;
        };
        let n = self
            .reloads_done
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let mut text = format!("pid {} reload {n}\n", std::process::id());
        match outcome {
            Ok(()) => text.push_str("ok\n"),
            Err(problems) => {
                text.push_str("refused\n");
                for p in problems {
                    text.push_str(&p.to_string());
                    text.push('\n');
                }
            }
        }
        let path = verdict_path(&pid_file);
        let tmp = path.with_extension("reload.tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(target: "bindgate::reload", "{}: cannot write the reload verdict: {e}", path.display());
        }
    }

    async fn try_reload(&self) -> Result<(), Vec<Problem>> {
        let old = self.config();
        // Reading, parsing and checking (files, DNS) block: not on a thread that serves.
        let source = old.source.clone();
        let new = tokio::task::spawn_blocking(move || crate::config::load(&source))
            .await
            .map_err(|_| vec![Problem::new("", "the reading task failed")])?
            .map_err(|e| e.problems)?;
        let changed: Vec<Problem> = fixed_parts(&old)
            .into_iter()
            .zip(fixed_parts(&new))
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| {
                Problem::new(
                    a.0,
                    "cannot change while running (needs a restart or `bindgate run --upgrade`)",
                )
            })
            .collect();
        if !changed.is_empty() {
            return Err(changed);
        }
        if needs_state(&new) && self.store.is_none() {
            return Err(vec![Problem::new(
                "registration.target / session_store.target / registration.single_use",
                "the state service was not running; it needs a restart or `bindgate run --upgrade`",
            )]);
        }
        let material = Material::new(&new.listen.tls).map_err(|e| vec![e])?;
        material.valid_at(unix_now()).map_err(|e| vec![e])?;
        let previous = self.live.load_full();
        let (live, keys) = build(
            &new,
            &self.metrics,
            &self.readiness,
            self.store.as_ref(),
            Some(&previous),
        )
        .map_err(|e| vec![e])?;
        // A new key set is fetched before it is served: a reload never answers with no keys.
        let fresh_keys = keys.as_ref().filter(|k| {
            !self
                .keys
                .load_full()
                .is_some_and(|old| Arc::ptr_eq(&old, k))
        });
        if let Some(k) = fresh_keys {
            if !k.refresh(true).await {
                return Err(vec![Problem::new(
                    "jwks",
                    "the new key set could not be loaded (see the key fetch errors)",
                )]);
            }
        }
        self.metrics.certificate_expiry(material.not_after);
        self.tls.replace(material);
        self.keys.store(keys);
        self.live.store(Arc::new(live));
        self.config.store(Arc::new(new));
        Ok(())
    }

    /// Re-reads certificate, key and client CA when their files changed (`listen.tls.watch`).
    /// True when new material is served.
    pub async fn reload_certificates_if_changed(&self) -> bool {
        let config = self.config();
        let now = crate::tls::stamps(&config.listen.tls);
        if now == self.tls.current().stamp {
            return false;
        }
        let _one = self.reloading.lock().await;
        let tls = config.listen.tls.clone();
        let reread = tokio::task::spawn_blocking(move || {
            Material::reread(&tls)
                .and_then(|m| m.valid_at(unix_now()).map(|()| m).map_err(Into::into))
        })
        .await
        .unwrap_or_else(|_| Err(Problem::new("listen.tls", "the reading task failed").into()));
        let mut last = self
            .refused_certificates
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match reread {
            Ok(material) => {
                *last = None;
                drop(last);
                self.metrics.certificate_expiry(material.not_after);
                self.tls.replace(material);
                self.metrics.reloads_done("certificates");
                tracing::info!(target: "bindgate::reload", "server certificate reloaded");
                true
            }
            Err(why) => {
                // Half-written files (a copy, not a rename), an expired or not-yet-valid
                // certificate fail here; the next look (a second later) retries. Each change
                // of the files or of the reason is counted and logged once.
                let seen = last
                    .as_ref()
                    .is_some_and(|r| r.stamps == now && r.why == why);
                if !seen {
                    *last = Some(Refused {
                        stamps: now,
                        why,
                        since: std::time::Instant::now(),
                        counted: "",
                    });
                }
                let Some(r) = last.as_mut() else {
                    return false;
                };
                // A key renamed in before its certificate: waited for, not a failure, unless
                // the certificate does not follow.
                let verdict = if r.why.half_rotated && r.since.elapsed() < PAIR_WAIT {
                    "pending_pair"
                } else {
                    "failed"
                };
                if r.counted != verdict {
                    r.counted = verdict;
                    self.metrics.reloads.with_label_values(&[verdict]).inc();
                    if verdict == "pending_pair" {
                        tracing::info!(target: "bindgate::reload", "certificate files changed: waiting up to {}s for the certificate that matches the new key ({})", PAIR_WAIT.as_secs(), r.why.problem);
                    } else {
                        tracing::warn!(target: "bindgate::reload", "certificate files changed but cannot be used yet: {}", r.why.problem);
                    }
                }
                false
            }
        }
    }
}

/// Everything a request is decided by, from `config`; `previous` hands over what must survive
/// a reload (verified tokens and keys when their settings are the same, DPoP replay records,
/// upstream balancers with their health).
fn build(
    config: &Config,
    metrics: &Arc<Metrics>,
    readiness: &Arc<Readiness>,
    store: Option<&Store>,
    previous: Option<&Live>,
) -> Result<(Live, Option<Arc<KeyStore>>), Problem> {
    let shared = store
        .and_then(Store::redis)
        .map(|r| Arc::new(r.clone()) as Arc<dyn crate::auth::SharedRecord>);
    let (authoriser, keys) = Authoriser::new(
        config,
        metrics.clone(),
        readiness.clone(),
        shared,
        previous.map(Live::authoriser),
    )?;
    let state = match (store, needs_state(config)) {
        (Some(store), true) => Some(StateService::with_store(config, store.clone())),
        _ => None,
    };
    let live = Live::new(config, authoriser, state, metrics.clone(), previous)?;
    Ok((live, keys))
}
