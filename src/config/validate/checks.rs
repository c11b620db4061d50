//! Checks the sections share: addresses, paths, URIs, algorithm lists, secrets, certificate
//! and key files, Redis settings.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use super::Problems;
use crate::config::file::*;
use crate::config::files::{CertificateFile, TlsIdentity};
use crate::config::*;

/// A list of JWS algorithms (default RS256, PS256, ES256, EdDSA): public-key algorithms only.
pub(super) fn algorithm_list(
    p: &mut Problems,
    key: &str,
    given: Option<&Vec<String>>,
) -> Vec<JwsAlgorithm> {
    let Some(names) = given else {
        return vec![
            JwsAlgorithm::RS256,
            JwsAlgorithm::PS256,
            JwsAlgorithm::ES256,
            JwsAlgorithm::EdDSA,
        ];
    };
    let mut algs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match JwsAlgorithm::from_name(name) {
            Some(a) => algs.push(a),
            None if name.eq_ignore_ascii_case("none") || name.starts_with("HS") => p.push(
                format!("{key}[{i}]"),
                format!(
                    "`{name}` is never accepted: tokens and proofs are verified with public keys"
                ),
            ),
            None => p.push(
                format!("{key}[{i}]"),
                format!(
                    "`{name}` is not supported (supported: {})",
                    JwsAlgorithm::ALL.map(|a| a.name()).join(", ")
                ),
            ),
        }
    }
    if names.is_empty() {
        p.push(key, "must list at least one algorithm");
    }
    algs
}

pub(super) fn socket_addr(p: &mut Problems, key: &str, text: &str) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p.push(
                key,
                format!(
                    "`{text}` is not an IP address and port (e.g. 127.0.0.1:8443 or [::1]:8443)"
                ),
            );
            None
        }
    }
}

/// Every address `text` (`host:port`) resolves to (at most 64), or none and a problem.
pub(super) fn resolve_all(p: &mut Problems, key: &str, text: &str) -> Vec<SocketAddr> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return vec![a];
    }
    if !text.contains(':') {
        p.push(key, format!("`{text}` has no port (write host:port)"));
        return Vec::new();
    }
    match text.to_socket_addrs() {
        Ok(all) => {
            let all: Vec<SocketAddr> = all.take(64).collect();
            if all.is_empty() {
                p.push(key, format!("`{text}` does not resolve to an address"));
            }
            all
        }
        Err(_) => {
            p.push(key, format!("`{text}` does not resolve to an address"));
            Vec::new()
        }
    }
}

pub(super) fn endpoint_path(p: &mut Problems, key: &str, given: &str) -> String {
    if !given.starts_with('/') || given.len() < 2 {
        p.push(
            key,
            format!("`{given}` must start with / and name a path other than /"),
        );
    }
    if given.contains(['?', '#', ' ']) {
        p.push(key, format!("`{given}` must be a plain path"));
    }
    given.trim_end_matches('/').to_string()
}

pub(super) fn overlaps(a: &str, b: &str) -> bool {
    let inside =
        |outer: &str, inner: &str| inner == outer || inner.starts_with(&format!("{outer}/"));
    inside(a, b) || inside(b, a)
}

pub(super) fn is_http_uri(s: &str) -> bool {
    (s.starts_with("https://") || s.starts_with("http://"))
        && s.parse::<http::Uri>()
            .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()))
}

pub(super) fn redis_settings(p: &mut Problems, r: &RedisFile, source: &Path) -> RedisSettings {
    let cluster = r.cluster.clone().unwrap_or_default();
    let url = r.url.clone().unwrap_or_default();
    let redis_url = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
    match (r.url.is_some(), r.cluster.is_some()) {
        (true, true) => p.push("state.redis", "give one of url and cluster, not both"),
        (false, false) => p.push(
            "state.redis",
            "give url (\"redis://host:6379/0\") or cluster (a list of seed URLs)",
        ),
        _ => {}
    }
    if r.url.is_some() && !redis_url(&url) {
        p.push("state.redis.url", "must start with redis:// or rediss://");
    } else if r.url.is_some() && !usable_redis_url(&url) {
        p.push("state.redis.url", UNUSABLE_REDIS_URL);
    }
    if r.cluster.is_some() && cluster.is_empty() {
        p.push("state.redis.cluster", "lists no seed URL");
    }
    for (i, u) in cluster.iter().enumerate() {
        if !redis_url(u) {
            p.push(
                format!("state.redis.cluster[{i}]"),
                "must start with redis:// or rediss://",
            );
        } else if !usable_redis_url(u) {
            p.push(format!("state.redis.cluster[{i}]"), UNUSABLE_REDIS_URL);
        }
    }
    let key_prefix = r.key_prefix.clone().unwrap_or_else(|| "bindgate:".into());
    if key_prefix.chars().any(|c| c.is_control() || c == ' ') {
        p.push(
            "state.redis.key_prefix",
            "must not hold spaces or control characters",
        );
    }
    let base = source.parent().unwrap_or(Path::new("."));
    let password = r.password.as_ref().and_then(|entry| {
        if entry.sha256.is_some() {
            p.push(
                "state.redis.password",
                "bindgate presents this secret: give value, env or file, not sha256",
            );
            return None;
        }
        match secret::resolve_plain(entry, base) {
            Ok(s) => Some(Password::new(s)),
            Err(reason) => {
                p.push("state.redis.password", reason);
                None
            }
        }
    });
    let wait_replicas = r.wait_replicas.unwrap_or(0);
    if wait_replicas > 0 && !cluster.is_empty() {
        p.push(
            "state.redis.wait_replicas",
            "is not supported with cluster yet (WAIT needs the connection that wrote)",
        );
    }
    let ca = match r.ca.as_deref().map(|c| base.join(c)) {
        Some(_) if !url.starts_with("rediss://") => {
            p.push(
                "state.redis.ca",
                "is for a rediss:// url (TLS); with cluster, the system's roots are used",
            );
            None
        }
        Some(ca) => certificates(p, "state.redis.ca", &ca),
        None => None,
    };
    RedisSettings {
        url,
        cluster,
        key_prefix,
        password,
        wait_replicas,
        allow_eviction: r.allow_eviction.unwrap_or(false),
        ca,
    }
}

pub(super) fn secrets(
    p: &mut Problems,
    key: &str,
    entries: Option<&[SecretFile]>,
    source: &Path,
) -> SecretSet {
    let base = source.parent().unwrap_or(Path::new("."));
    let mut digests = Vec::new();
    for (i, entry) in entries.unwrap_or(&[]).iter().enumerate() {
        match secret::resolve(entry, base) {
            Ok(d) => digests.push(d),
            Err(reason) => p.push(format!("{key}[{i}]"), reason),
        }
    }
    SecretSet::new(digests)
}

/// Reads a certificate file once, for the runtime; None (a problem at `key`) when it cannot.
pub(super) fn certificates(p: &mut Problems, key: &str, path: &Path) -> Option<CertificateFile> {
    CertificateFile::read(path)
        .map_err(|e| p.push(key, e.to_string()))
        .ok()
}

/// Reads a certificate and its key once, for the runtime; None (problems at `key.cert` and
/// `key.key`) when they cannot be used together.
pub(super) fn identity(
    p: &mut Problems,
    key: &str,
    cert: &Path,
    private_key: &Path,
) -> Option<TlsIdentity> {
    TlsIdentity::read(cert, private_key)
        .map_err(|e| {
            if let Some(e) = e.cert {
                p.push(format!("{key}.cert"), e.to_string());
            }
            if let Some(e) = e.key {
                p.push(format!("{key}.key"), e.to_string());
            }
        })
        .ok()
}

/// The reason for a URL the Redis client cannot use (the URL itself is not repeated: it may
/// hold a password).
const UNUSABLE_REDIS_URL: &str =
    "is not a Redis URL bindgate can connect with (redis[s]://[user:password@]host[:port][/db])";

/// Whether the Redis client `run` uses parses `url` (so that `check` refuses what `run` would).
pub(super) fn usable_redis_url(url: &str) -> bool {
    use redis::IntoConnectionInfo;
    url.into_connection_info().is_ok()
}
