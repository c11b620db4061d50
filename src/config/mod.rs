//! `proxy.yaml` → one validated [`Config`].
//!
//! The pipeline: the file is read and parsed as YAML; the YAML is deserialised into the file
//! structs of [`file`] (which refuse unknown keys); [`validate`] turns those into the runtime
//! `Config`. Every step records problems as `key.path: reason` and goes on where it can, so a
//! user sees every mistake of a file at once, not one per run.

pub mod advice;
pub mod file;
pub mod files;
mod load;
pub mod secret;
pub mod show;
pub mod units;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use load::{load, load_str, parse};
pub use secret::{SecretDigest, SecretSet};

/// One problem of a configuration file: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

impl Problem {
    /// `key` (a configuration path, or "" when none applies) cannot be used: `reason`.
    pub fn new(key: impl Into<String>, reason: impl fmt::Display) -> Self {
        Problem {
            key: key.into(),
            reason: reason.to_string(),
        }
    }
}

impl std::error::Error for Problem {}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.key, self.reason)
        }
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {n} problem{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The configuration file; relative paths inside it start from its directory.
    pub source: PathBuf,
    pub listen: Listen,
    pub admin: Option<Admin>,
    pub issuer: Option<String>,
    pub jwks: Option<Jwks>,
    pub tokens: Tokens,
    pub registration: Registration,
    pub session_store: SessionStore,
    pub upstreams: BTreeMap<String, Upstream>,
    pub routes: Vec<Route>,
    pub state: State,
    pub server: Server,
    /// RFC 9449; None: `cnf.jkt` tokens and DPoP proofs are refused.
    pub dpop: Option<Dpop>,
    /// RFC 7662; None: JWT access tokens only.
    pub introspection: Option<Introspection>,
    /// `log.format`.
    pub log_format: LogFormat,
    /// OpenTelemetry traces; None: no trace context, no spans.
    pub telemetry: Option<crate::telemetry::Settings>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (tracing's).
    Text,
    /// One JSON object per line (`logformat`).
    Json,
}

/// DPoP proof checking (RFC 9449).
#[derive(Debug, Clone)]
pub struct Dpop {
    /// `scheme://host[:port]`, normalised: a proof's `htu` is one of these and the path.
    pub origins: Vec<String>,
    pub max_age: Duration,
    pub replay_cache_entries: u64,
    pub require_nonce: bool,
    pub algorithms: Vec<JwsAlgorithm>,
}

/// What a token-protected route requires of the access token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteToken {
    /// Every one of these scopes.
    pub scope: Vec<String>,
    /// One of these audiences; empty: no audience check.
    pub audience: Vec<String>,
    pub require_proof_of_possession: bool,
    /// Headers set for the upstream from the verified token's claims: (header, claim).
    pub headers: Vec<(http::HeaderName, String)>,
}

impl Config {
    /// Every header a route sets from token claims: removed from every forwarded request
    /// first, whatever its route (a client cannot send them in bindgate's name).
    pub fn claim_header_names(&self) -> Vec<http::HeaderName> {
        let mut names: Vec<http::HeaderName> = self
            .routes
            .iter()
            .filter_map(|r| r.token.as_ref())
            .flat_map(|t| t.headers.iter().map(|(h, _)| h.clone()))
            .collect();
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        names
    }
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub address: SocketAddr,
    pub tls: ListenTls,
}

#[derive(Debug, Clone)]
pub struct ListenTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate and key, as read when the configuration was validated.
    pub identity: files::TlsIdentity,
    pub client_auth: ClientAuth,
    pub client_ca: Option<files::CertificateFile>,
    /// Re-read certificate, key and client CA when their files change.
    pub watch: bool,
    /// The key exchange groups offered, in order of preference (OpenSSL's names, joined by
    /// `:`); None: OpenSSL's default.
    pub groups: Option<std::ffi::CString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub address: SocketAddr,
}

#[derive(Debug, Clone)]
pub enum JwksSource {
    Uri(String),
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Jwks {
    pub source: JwksSource,
    pub refresh_interval: Duration,
    pub min_refetch_interval: Duration,
    pub max_stale: Duration,
    pub ca: Option<files::CertificateFile>,
    pub fetch_timeout: Duration,
}

/// The JWS algorithms bindgate can verify. `none` and the HMAC family are absent on purpose:
/// an initial access token is verified with the provider's public keys only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwsAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwsAlgorithm {
    pub const ALL: [JwsAlgorithm; 9] = [
        JwsAlgorithm::RS256,
        JwsAlgorithm::RS384,
        JwsAlgorithm::RS512,
        JwsAlgorithm::PS256,
        JwsAlgorithm::PS384,
        JwsAlgorithm::PS512,
        JwsAlgorithm::ES256,
        JwsAlgorithm::ES384,
        JwsAlgorithm::EdDSA,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JwsAlgorithm::RS256 => "RS256",
            JwsAlgorithm::RS384 => "RS384",
            JwsAlgorithm::RS512 => "RS512",
            JwsAlgorithm::PS256 => "PS256",
            JwsAlgorithm::PS384 => "PS384",
            JwsAlgorithm::PS512 => "PS512",
            JwsAlgorithm::ES256 => "ES256",
            JwsAlgorithm::ES384 => "ES384",
            JwsAlgorithm::EdDSA => "EdDSA",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

#[derive(Debug, Clone)]
pub struct Tokens {
    pub algorithms: Vec<JwsAlgorithm>,
    pub leeway: Duration,
    pub verified_cache_entries: u64,
    /// How an access token is validated: as a JWT, by introspection, or by its shape.
    pub format: TokenFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFormat {
    /// JWTs only.
    Jwt,
    /// Every token is introspected (RFC 7662).
    Opaque,
    /// Three base64url segments: a JWT; anything else is introspected.
    Auto,
}

/// RFC 7662 token introspection: where, how bindgate authenticates, and the answer cache.
#[derive(Debug, Clone)]
pub struct Introspection {
    pub endpoint: String,
    pub auth: IntrospectionAuth,
    pub ca: Option<files::CertificateFile>,
    pub timeout: Duration,
    pub max_entries: u64,
    /// An active answer is kept until min(exp, now + max_ttl).
    pub max_ttl: Duration,
    /// An inactive answer is kept this long.
    pub negative_ttl: Duration,
}

/// How bindgate authenticates to the introspection endpoint.
#[derive(Debug, Clone)]
pub enum IntrospectionAuth {
    ClientSecretBasic {
        client_id: String,
        secret: Password,
    },
    ClientSecretPost {
        client_id: String,
        secret: Password,
    },
    /// RFC 7523 client assertion signed with `key` (PEM, PKCS#8).
    PrivateKeyJwt {
        client_id: String,
        key: Password,
        alg: JwsAlgorithm,
    },
    /// RFC 8705 §2: the certificate (PEM, with the PKCS#8 key appended) on the connection.
    TlsClientAuth {
        client_id: String,
        identity: Password,
    },
}

/// Where an approved request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Embedded,
    Upstream(String),
}

impl Target {
    pub fn label(&self) -> &str {
        match self {
            Target::Embedded => "embedded",
            Target::Upstream(name) => name,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Registration {
    pub path: String,
    pub endpoint_uri: Option<String>,
    pub target: Target,
    pub master_tokens: SecretSet,
    pub scope: String,
    pub require_initial_access_token_audience: bool,
    pub require_certificate_binding: bool,
    /// Refuse initial access tokens bound neither by `cnf.x5t#S256` nor by `cnf.jkt`.
    pub require_proof_of_possession: bool,
    /// A JWT initial access token registers one client (Connect2id: "valid for a single
    /// registration only"); master tokens are not affected.
    pub single_use: bool,
    /// Accept Connect2id's narrowed scopes `<scope>:grant:<name>` (clients for that grant).
    pub grant_scopes: bool,
    /// Metadata only a master token may send (default: preferred_client_id,
    /// preferred_client_secret).
    pub privileged_metadata: Vec<String>,
    /// Open registration: `grant_types` values a request without a token may register.
    pub open: Option<Vec<String>>,
    /// Every successful update of an embedded client returns a new registration access token
    /// and retires the old one (Connect2id `op.reg.refreshAccessTokenOnUpdate`).
    pub rotate_registration_access_token: bool,
    /// RFC 7591 §2.3 software statements: who may sign them, with which algorithms.
    pub software_statement: Option<SoftwareStatement>,
}

#[derive(Debug, Clone)]
pub struct SoftwareStatement {
    /// A registration without one (other than a master token's) is refused.
    pub required: bool,
    pub issuers: Vec<StatementIssuer>,
    pub algorithms: Vec<JwsAlgorithm>,
}

/// A directory whose statements are trusted: its `iss` and the keys it signs with.
#[derive(Debug, Clone)]
pub struct StatementIssuer {
    pub iss: String,
    pub jwks: Jwks,
}

#[derive(Debug, Clone)]
pub struct SessionStore {
    pub path: String,
    pub target: Target,
    pub api_tokens: SecretSet,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// As written, for logs (a list joined with `, `).
    pub address_text: String,
    /// The first endpoint's address, as resolved at validation.
    pub address: SocketAddr,
    /// Each `host:port` as written (`address`, one or a list).
    pub endpoints: Vec<String>,
    /// Every address they resolved to at validation.
    pub resolved: Vec<SocketAddr>,
    /// A DNS name among the endpoints is resolved again this often.
    pub resolve_interval: Duration,
    pub health_check: Option<HealthCheck>,
    /// An endpoint a connection failed to is left out this long (zero: never).
    pub ejection_time: Duration,
    pub tls: bool,
    pub sni: String,
    /// RFC 9440 header set from the client's certificate; None: not passed on.
    pub client_cert_header: Option<http::HeaderName>,
    /// Whether bindgate sets X-Forwarded-For/-Proto/-Host and Forwarded.
    pub forwarded_headers: bool,
    pub ca: Option<files::CertificateFile>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Requests in flight to this upstream at once (each holds one connection); more wait up
    /// to `connect_timeout`, then get 503.
    pub max_connections: usize,
    /// Idle connections kept for reuse (all upstreams' together size the keep-alive pool at
    /// start).
    pub keepalive_pool: usize,
    /// Forward header names with `_` (but never one that folds to an identity header).
    pub forward_underscore_headers: bool,
}

/// Active health checks: `GET path` on each endpoint every `interval`; a 2xx answer within
/// `timeout` is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Upstream {
    /// More than one address, a name to resolve again, or health checks: requests are
    /// balanced over its endpoints (else one fixed peer).
    pub fn balanced(&self) -> bool {
        self.resolved.len() > 1
            || self.health_check.is_some()
            || self
                .endpoints
                .iter()
                .any(|e| e.parse::<SocketAddr>().is_err())
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    pub upstream: String,
    /// None: forwarded without a token check.
    pub token: Option<RouteToken>,
    /// Requests with `Upgrade` (WebSocket, h2c) are refused unless this is true.
    pub upgrade: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatePath {
    Memory,
    File(PathBuf),
}

/// Session lifetimes in minutes; -1 is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    pub max_life: i64,
    pub auth_life: i64,
    pub max_idle: i64,
}

#[derive(Debug, Clone)]
pub struct State {
    /// redb's file (or memory); unused when `redis` is set.
    pub path: StatePath,
    /// The shared engine: several instances, one state.
    pub redis: Option<RedisSettings>,
    pub sessions: SessionLimits,
}

/// `state.redis`: one server (`url`) or a cluster (`cluster`, seed URLs).
#[derive(Clone)]
pub struct RedisSettings {
    pub url: String,
    pub cluster: Vec<String>,
    pub key_prefix: String,
    pub password: Option<Password>,
    /// > 0: a write acknowledged to a client first waits for that many replicas (`WAIT`).
    pub wait_replicas: u32,
    /// Ready even under an evicting `maxmemory-policy`.
    pub allow_eviction: bool,
    /// A CA bundle (PEM) that a `rediss://` server's certificate must chain to; None: the
    /// system's roots.
    pub ca: Option<files::CertificateFile>,
}

impl std::fmt::Debug for RedisSettings {
    /// URLs without their user and password (`redis://user:secret@host` is allowed).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redacted_url(&self.url))
            .field(
                "cluster",
                &self
                    .cluster
                    .iter()
                    .map(|u| redacted_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("key_prefix", &self.key_prefix)
            .field("password", &self.password)
            .field("wait_replicas", &self.wait_replicas)
            .field("ca", &self.ca)
            .finish()
    }
}

/// `url` with any `user:password@` replaced by `<redacted>@`.
pub fn redacted_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://<redacted>@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// A secret bindgate must present (not compare): kept as given, never shown by `Debug`.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn new(secret: String) -> Self {
        Password(secret)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct Server {
    pub threads: usize,
    pub grace_period: Duration,
    pub max_body: u64,
    /// Where the running process writes its pid (`bindgate reload` signals it).
    pub pid_file: Option<PathBuf>,
    /// The socket a binary upgrade hands the listening sockets over.
    pub upgrade_sock: PathBuf,
    /// A connection with no request in progress is closed after this long: a TLS handshake
    /// done and no byte, HTTP/1.1 between requests, HTTP/2 without an open stream.
    pub idle_timeout: Duration,
    /// The TLS handshake, and then each request head from its first byte, must complete
    /// within this (a total, not per read).
    pub header_timeout: Duration,
    /// The whole request body must arrive within this; else 408 and nothing is forwarded.
    pub body_timeout: Duration,
    /// Take a client's `X-Request-Id` (else every request gets one of bindgate's own).
    pub trust_request_id: bool,
    /// Places a thread's window of HTTP/1.x requests starts with and shrinks back to (0: no
    /// window); it grows while its thread has time to spare. The next requests wait in order.
    pub active_requests: usize,
    /// A request holding its place longer than this (a slow upstream, a slow client) gives
    /// it up to the next in line and carries on without one.
    pub active_hold: Duration,
}

impl Config {
    /// Resolves a path written in the configuration file against the file's directory.
    pub fn resolve(&self, path: &str) -> PathBuf {
        resolve_against(&self.source, path)
    }
}

pub fn resolve_against(source: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match source.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redis_urls_lose_their_credentials_in_debug_output() {
        use super::{redacted_url, Password, RedisSettings};
        assert_eq!(
            redacted_url("redis://user:s3cret@10.0.0.1:6379/0"),
            "redis://<redacted>@10.0.0.1:6379/0"
        );
        assert_eq!(
            redacted_url("redis://10.0.0.1:6379"),
            "redis://10.0.0.1:6379"
        );
        let s = RedisSettings {
            url: "rediss://:s3cret@h:1".into(),
            cluster: vec!["redis://a:pw2@b:2".into()],
            key_prefix: "p:".into(),
            password: Some(Password::new("pw3".into())),
            wait_replicas: 0,
            allow_eviction: false,
            ca: None,
        };
        let shown = format!("{s:?}");
        for secret in ["s3cret", "pw2", "pw3"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
