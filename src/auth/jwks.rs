//! The provider's signing keys: loaded from `jwks.uri` or `jwks.file`, cached by `kid` with
//! moka, refreshed in the background, refetched (single-flight, rate-limited) for unknown kids,
//! and kept for up to `max_stale` while the key source fails.

use crate::config::Problem;
use async_trait::async_trait;
use moka::sync::Cache;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::denial::Denial;
use super::jwk::{parse_jwk_set, JwkSetError, ParsedSet, VerifyKey};
use crate::config::{Jwks, JwksSource, JwsAlgorithm};
use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// A JWK set document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// What went wrong on the way, in words an operator acts on: the kind (timed out, connection
/// refused, TLS, ...) and the innermost cause, without the URL (said once, before).
fn transport_cause(e: &reqwest::Error) -> String {
    let mut innermost = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        innermost = s.to_string();
        source = s.source();
    }
    let lower = innermost.to_ascii_lowercase();
    let kind = if e.is_timeout() {
        "timed out"
    } else if lower.contains("refused") {
        "connection refused"
    } else if lower.contains("certificate") || lower.contains("ssl") || lower.contains("tls") {
        "TLS"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the answer could not be read"
    } else {
        "failed"
    };
    format!("{kind}: {innermost}")
}

/// Why a key set could not be fetched (the keys held stay in use).
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("cannot read {}: {source}", path.display())]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("GET {uri}: {problem}")]
    Http { uri: String, problem: HttpProblem },
    #[error("no HTTP client")]
    NoClient,
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    #[error(transparent)]
    Unusable(#[from] JwkSetError),
}

#[derive(Debug, thiserror::Error)]
enum HttpProblem {
    #[error("{}", transport_cause(.0))]
    Transport(reqwest::Error),
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("the key set exceeds {MAX_JWKS_BYTES} bytes")]
    TooLarge,
}

/// What a lookup by `kid` found.
pub enum Lookup {
    Found(Arc<VerifyKey>),
    /// No key has this kid (yet): a refetch may bring it.
    Unknown,
}

#[derive(Default)]
struct Status {
    /// Each kid with the fingerprint of the key `by_kid` holds for it: a verified-token cache
    /// hit is vouched for under the status lock already taken, without a cache lookup.
    published: Vec<(String, [u8; 32])>,
    without_kid: Vec<Arc<VerifyKey>>,
    last_success: Option<Instant>,
    /// The last fetch failed: lookups are served from the last good keys.
    failing: bool,
}

pub struct KeyStore {
    source: JwksSource,
    http: Option<reqwest::Client>,
    config: Jwks,
    by_kid: Cache<String, Arc<VerifyKey>>,
    status: RwLock<Status>,
    last_forced: tokio::sync::Mutex<Option<Instant>>,
    /// The tokens' key set says whether bindgate is ready; a software statement issuer's
    /// does not (None).
    readiness: Option<Arc<Readiness>>,
    on_removed: Box<dyn Fn() + Send + Sync>,
    /// This key set's counters, by its `issuer` label (resolved once).
    /// For logs: whose key set this is.
    label: String,
    fetched_ok: prometheus::IntCounter,
    fetch_failed: prometheus::IntCounter,
    /// When the key set was last installed (`bindgate_jwks_last_success_timestamp_seconds`).
    last_success: prometheus::IntGauge,
    unknown_kid: prometheus::IntCounter,
    stale_use: prometheus::IntCounter,
}

fn invalid(why: &str) -> Denial {
    Denial::InvalidToken(why.to_string())
}

impl KeyStore {
    /// `on_removed` runs whenever keys disappear (rotation, staleness), so that tokens verified
    /// with them are forgotten.
    /// `issuer` labels its metrics (the tokens' issuer, or a statement issuer's `iss`).
    pub fn new(
        config: &Jwks,
        issuer: &str,
        metrics: Arc<Metrics>,
        readiness: Option<Arc<Readiness>>,
        on_removed: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Self, Problem> {
        let http = match &config.source {
            JwksSource::File(_) => None,
            JwksSource::Uri(_) => {
                let mut b = reqwest::Client::builder()
                    .use_native_tls()
                    .timeout(config.fetch_timeout)
                    .connect_timeout(config.fetch_timeout)
                    .redirect(reqwest::redirect::Policy::limited(3))
                    .user_agent(concat!("bindgate/", env!("CARGO_PKG_VERSION")));
                if let Some(ca) = &config.ca {
                    for cert in reqwest::Certificate::from_pem_bundle(ca.pem())
                        .map_err(|e| Problem::new("jwks.ca", format!("{e}")))?
                    {
                        b = b.add_root_certificate(cert);
                    }
                }
                Some(
                    b.build()
                        .map_err(|e| Problem::new("jwks", format!("HTTP client: {e}")))?,
                )
            }
        };
        Ok(KeyStore {
            source: config.source.clone(),
            http,
            config: config.clone(),
            by_kid: Cache::builder().max_capacity(1024).build(),
            status: RwLock::new(Status::default()),
            last_forced: tokio::sync::Mutex::new(None),
            label: issuer.to_string(),
            fetched_ok: metrics.jwks_fetches.with_label_values(&[issuer, "ok"]),
            fetch_failed: metrics.jwks_fetches.with_label_values(&[issuer, "failed"]),
            last_success: metrics.ops.jwks_last_success.with_label_values(&[issuer]),
            unknown_kid: metrics.unknown_kid_refetches.with_label_values(&[issuer]),
            stale_use: metrics.stale_key_uses.with_label_values(&[issuer]),
            readiness,
            on_removed,
        })
    }

    async fn fetch(&self, forced: bool) -> Result<ParsedSet, FetchError> {
        let body = match (&self.source, &self.http) {
            (JwksSource::File(path), _) => {
                tokio::fs::read(path)
                    .await
                    .map_err(|source| FetchError::File {
                        path: path.clone(),
                        source,
                    })?
            }
            (JwksSource::Uri(uri), Some(http)) => {
                let failed = |problem| FetchError::Http {
                    uri: uri.clone(),
                    problem,
                };
                let mut req = http
                    .get(uri)
                    .header("accept", "application/jwk-set+json, application/json");
                if forced {
                    req = req.header("cache-control", "no-cache");
                }
                let mut resp = req
                    .send()
                    .await
                    .map_err(|e| failed(HttpProblem::Transport(e)))?;
                if !resp.status().is_success() {
                    return Err(failed(HttpProblem::Status(resp.status())));
                }
                if resp
                    .content_length()
                    .is_some_and(|l| l as usize > MAX_JWKS_BYTES)
                {
                    return Err(failed(HttpProblem::TooLarge));
                }
                let mut body = Vec::new();
                while let Some(chunk) = resp
                    .chunk()
                    .await
                    .map_err(|e| failed(HttpProblem::Transport(e)))?
                {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_JWKS_BYTES {
                        return Err(failed(HttpProblem::TooLarge));
                    }
                }
                body
            }
            (JwksSource::Uri(_), None) => return Err(FetchError::NoClient),
        };
        Ok(parse_jwk_set(&body)?)
    }

    /// Fetches and installs the key set; false when the fetch failed (the old keys stay).
    pub async fn refresh(&self, forced: bool) -> bool {
        let fetched = tokio::time::timeout(self.config.fetch_timeout, self.fetch(forced))
            .await
            .unwrap_or(Err(FetchError::TimedOut(self.config.fetch_timeout)));
        match fetched {
            Ok(set) => {
                self.fetched_ok.inc();
                self.install(set);
                self.last_success.set(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(0),
                );
                true
            }
            Err(e) => {
                self.fetch_failed.inc();
                tracing::warn!(target: "bindgate::jwks", issuer = %self.label, "key set fetch failed: {e}");
                if let Ok(mut s) = self.status.write() {
                    s.failing = true;
                }
                false
            }
        }
    }

    fn install(&self, set: ParsedSet) {
        for problem in &set.skipped {
            tracing::warn!(target: "bindgate::jwks", "key skipped: {problem}");
        }
        let mut published: Vec<(String, [u8; 32])> = Vec::new();
        let mut without_kid = Vec::new();
        // A kid whose key material changed (a leaked key replaced under the same kid) revokes
        // what the old key verified, as a removed kid does.
        let mut replaced = false;
        for key in set.keys {
            match key.kid.clone() {
                Some(kid) => {
                    if self
                        .by_kid
                        .get(&kid)
                        .is_some_and(|old| old.fingerprint != key.fingerprint)
                    {
                        tracing::warn!(target: "bindgate::jwks", kid = %kid, "key replaced under the same kid: tokens it verified are forgotten");
                        replaced = true;
                    }
                    match published.iter_mut().find(|(k, _)| *k == kid) {
                        Some((_, fingerprint)) => {
                            tracing::warn!(target: "bindgate::jwks", "duplicate kid in the key set; the last one is used");
                            *fingerprint = key.fingerprint;
                        }
                        None => published.push((kid.clone(), key.fingerprint)),
                    }
                    self.by_kid.insert(kid, Arc::new(key));
                }
                None => without_kid.push(Arc::new(key)),
            }
        }
        let removed = {
            let Ok(mut s) = self.status.write() else {
                return;
            };
            let gone: Vec<String> = s
                .published
                .iter()
                .filter(|(old, _)| !published.iter().any(|(k, _)| k == old))
                .map(|(kid, _)| kid.clone())
                .collect();
            let removed = replaced
                || !gone.is_empty()
                || s.without_kid.iter().any(|old| {
                    !without_kid
                        .iter()
                        .any(|k: &Arc<VerifyKey>| k.fingerprint == old.fingerprint)
                });
            for kid in &gone {
                self.by_kid.invalidate(kid);
            }
            let first = s.last_success.is_none();
            s.published = published;
            s.without_kid = without_kid;
            s.last_success = Some(Instant::now());
            s.failing = false;
            if first {
                tracing::info!(target: "bindgate::jwks", keys = s.published.len() + s.without_kid.len(), "signing keys loaded");
            }
            removed
        };
        if let Some(r) = &self.readiness {
            r.set_keys_loaded(true);
        }
        if removed {
            (self.on_removed)();
        }
    }

    /// Whether the keys are due for a fetch: never fetched, or last fetched longer than
    /// `refresh_interval` ago (key sets fetched on use: software statement issuers').
    pub fn due(&self) -> bool {
        self.status
            .read()
            .map(|s| {
                s.last_success
                    .is_none_or(|t| t.elapsed() >= self.config.refresh_interval)
            })
            .unwrap_or(true)
    }

    /// Drops every key once the last good set is older than `max_stale`.
    pub fn expire_if_stale(&self) {
        let stale = self
            .status
            .read()
            .map(|s| self.is_stale(&s))
            .unwrap_or(false);
        if stale {
            self.drop_stale_keys();
        }
    }

    fn is_stale(&self, s: &Status) -> bool {
        s.last_success
            .is_some_and(|t| t.elapsed() > self.config.max_stale)
    }

    fn drop_stale_keys(&self) {
        if let Ok(mut s) = self.status.write() {
            if self.is_stale(&s) {
                tracing::error!(target: "bindgate::jwks", "no successful key fetch within max_stale: signing keys dropped, tokens are refused");
                s.published.clear();
                s.without_kid.clear();
                s.last_success = None;
                self.by_kid.invalidate_all();
                if let Some(r) = &self.readiness {
                    r.set_keys_loaded(false);
                }
                (self.on_removed)();
            }
        }
    }

    /// The key for `kid` and `alg` among the keys held now.
    pub fn lookup(&self, kid: Option<&str>, alg: JwsAlgorithm) -> Result<Lookup, Denial> {
        // One read of the status per lookup: staleness, failure and whether keys are loaded.
        let (stale, failing, loaded) = self
            .status
            .read()
            .map(|s| (self.is_stale(&s), s.failing, s.last_success.is_some()))
            .unwrap_or((false, false, false));
        if stale {
            self.drop_stale_keys();
            return Err(invalid("No signing keys are available"));
        }
        if !loaded {
            return Err(invalid("No signing keys are available"));
        }
        if failing {
            self.stale_use.inc();
        }
        match kid {
            Some(kid) => match self.by_kid.get(kid) {
                Some(key) if key.accepts(alg) => Ok(Lookup::Found(key)),
                Some(_) => Err(invalid(
                    "The signing key does not match the token algorithm",
                )),
                None => Ok(Lookup::Unknown),
            },
            None => {
                let mut candidates: Vec<Arc<VerifyKey>> = self
                    .by_kid
                    .iter()
                    .map(|(_, k)| k)
                    .filter(|k| k.accepts(alg))
                    .collect();
                if let Ok(s) = self.status.read() {
                    candidates.extend(s.without_kid.iter().filter(|k| k.accepts(alg)).cloned());
                }
                match candidates.len() {
                    1 => Ok(Lookup::Found(candidates.remove(0))),
                    0 => Err(invalid("No signing key matches the token algorithm")),
                    _ => Err(invalid(
                        "The token has no kid and several keys could have signed it",
                    )),
                }
            }
        }
    }

    /// Whether the key with `fingerprint` (named `kid` in the token) is still published and
    /// usable: a verified-token cache hit is only as good as the key that verified it.
    pub fn vouches_for(&self, kid: Option<&str>, fingerprint: &[u8; 32]) -> bool {
        let Ok(s) = self.status.read() else {
            return false;
        };
        if s.last_success.is_none() || self.is_stale(&s) {
            return false;
        }
        match kid {
            Some(kid) => s
                .published
                .iter()
                .any(|(k, f)| k == kid && f == fingerprint),
            None => {
                s.without_kid.iter().any(|k| k.fingerprint == *fingerprint)
                    || s.published.iter().any(|(_, f)| f == fingerprint)
            }
        }
    }

    /// A refetch for an unknown kid: single-flight (concurrent callers wait for the one fetch)
    /// and at most one per `min_refetch_interval`.
    pub async fn refetch_for_unknown_kid(&self) {
        let mut last = self.last_forced.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.config.min_refetch_interval) {
            return;
        }
        *last = Some(Instant::now());
        self.unknown_kid.inc();
        self.refresh(true).await;
    }
}

/// Background refresh every `refresh_interval`; after a failure, retries back off from 250 ms up
/// to 30 s (or the refresh interval, if shorter).
pub struct JwksRefresher {
    /// The key store being served; a reload that changes `jwks` replaces it, and the next
    /// round refreshes the new one.
    pub stores: Arc<arc_swap::ArcSwapOption<KeyStore>>,
}

#[async_trait]
impl BackgroundService for JwksRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let Some(store) = self.stores.load_full() else {
                // No JWKS configured (yet): look again later, a reload may add one.
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            };
            let max_backoff = store.config.refresh_interval.min(Duration::from_secs(30));
            let delay = if store.refresh(false).await {
                backoff = Duration::from_millis(250).min(max_backoff);
                store.config.refresh_interval
            } else {
                let d = backoff.min(max_backoff);
                backoff = (backoff * 2).min(max_backoff);
                d
            };
            store.expire_if_stale();
            // Wakes early when a reload brings another key store.
            let deadline = tokio::time::Instant::now() + delay;
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        let now = self.stores.load_full();
                        if !now.is_some_and(|n| Arc::ptr_eq(&n, &store)) {
                            break;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use openssl::bn::{BigNum, BigNumContext};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;

    /// A fresh P-256 public key as a JWK named `kid`.
    fn ec_jwk(kid: &str) -> serde_json::Value {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = EcKey::generate(&group).unwrap();
        let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
        key.public_key()
            .affine_coordinates(&group, &mut x, &mut y, &mut BigNumContext::new().unwrap())
            .unwrap();
        let coord = |n: &BigNum| URL_SAFE_NO_PAD.encode(n.to_vec_padded(32).unwrap());
        serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": coord(&x), "y": coord(&y)})
    }

    fn fingerprint(store: &KeyStore, kid: &str) -> [u8; 32] {
        match store.lookup(Some(kid), JwsAlgorithm::ES256) {
            Ok(Lookup::Found(key)) => key.fingerprint,
            _ => panic!("{kid} is not held"),
        }
    }

    /// A cache hit is vouched for only while the key that verified it is published under the
    /// same kid with the same material.
    #[test]
    fn vouches_only_for_keys_published_now() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let write = |keys: &[&serde_json::Value]| {
            std::fs::write(&path, serde_json::json!({ "keys": keys }).to_string()).unwrap()
        };
        let jwks = Jwks {
            source: JwksSource::File(path.clone()),
            refresh_interval: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(30),
            max_stale: Duration::from_secs(86400),
            ca: None,
            fetch_timeout: Duration::from_secs(5),
        };
        let store = KeyStore::new(
            &jwks,
            "https://idp.example.com",
            Arc::new(Metrics::new()),
            Some(Arc::new(Readiness::new(true))),
            Box::new(|| {}),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (a1, b, a2) = (ec_jwk("a"), ec_jwk("b"), ec_jwk("a"));
        // Nothing loaded yet: nothing is vouched for.
        assert!(!store.vouches_for(Some("a"), &[0; 32]));

        write(&[&a1, &b]);
        assert!(rt.block_on(store.refresh(false)));
        let (fa1, fb) = (fingerprint(&store, "a"), fingerprint(&store, "b"));
        assert!(store.vouches_for(Some("a"), &fa1));
        assert!(store.vouches_for(Some("b"), &fb));
        assert!(!store.vouches_for(Some("a"), &fb), "another kid's key");
        assert!(!store.vouches_for(Some("c"), &fa1), "a kid never published");
        assert!(store.vouches_for(None, &fb), "no kid: any published key");

        // `a` replaced under the same kid, `b` withdrawn.
        write(&[&a2]);
        assert!(rt.block_on(store.refresh(false)));
        let fa2 = fingerprint(&store, "a");
        assert_ne!(fa1, fa2);
        assert!(!store.vouches_for(Some("a"), &fa1), "replaced material");
        assert!(store.vouches_for(Some("a"), &fa2));
        assert!(!store.vouches_for(Some("b"), &fb), "withdrawn kid");
        assert!(!store.vouches_for(None, &fb), "withdrawn key");
    }
}
