//! The shape of `proxy.yaml` as written. Every struct refuses unknown keys; values stay as the
//! user wrote them (strings for durations, sizes, addresses) until `validate` turns them into the
//! runtime `Config` and reports every problem with its key path.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: ListenFile,
    pub admin: Option<AdminFile>,
    pub issuer: Option<String>,
    pub jwks: Option<JwksFile>,
    pub tokens: Option<TokensFile>,
    pub registration: Option<RegistrationFile>,
    pub session_store: Option<SessionStoreFile>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamFile>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    pub state: Option<StateFile>,
    pub server: Option<ServerFile>,
    pub dpop: Option<DpopFile>,
    pub introspection: Option<IntrospectionFile>,
    pub log: Option<LogFile>,
    pub telemetry: Option<TelemetryFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryFile {
    pub otlp: Option<OtlpFile>,
    pub trust_incoming_trace: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpFile {
    pub endpoint: String,
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
    pub queue: Option<usize>,
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// `text` or `json`.
    pub format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionFile {
    pub endpoint: String,
    pub auth: IntrospectionAuthFile,
    pub ca: Option<String>,
    pub timeout: Option<String>,
    pub cache: Option<IntrospectionCacheFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionAuthFile {
    pub client_secret_basic: Option<ClientSecretFile>,
    pub client_secret_post: Option<ClientSecretFile>,
    pub private_key_jwt: Option<PrivateKeyJwtFile>,
    pub tls_client_auth: Option<TlsClientAuthFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSecretFile {
    pub client_id: String,
    pub client_secret: SecretFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateKeyJwtFile {
    pub client_id: String,
    pub key: String,
    pub alg: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsClientAuthFile {
    pub client_id: String,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionCacheFile {
    pub max_entries: Option<u64>,
    pub max_ttl: Option<String>,
    pub negative_ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpopFile {
    #[serde(default)]
    pub origins: Vec<String>,
    pub max_age: Option<String>,
    pub replay_cache_entries: Option<u64>,
    pub require_nonce: Option<bool>,
    pub algorithms: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTokenFile {
    #[serde(default)]
    pub scope: Vec<String>,
    #[serde(default)]
    pub audience: Vec<String>,
    pub require_proof_of_possession: Option<bool>,
    /// Header name → claim: set from the verified token, stripped from the client's request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    pub address: String,
    pub tls: ListenTlsFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTlsFile {
    pub cert: String,
    pub key: String,
    pub client_auth: Option<String>,
    pub client_ca: Option<String>,
    pub watch: Option<bool>,
    pub groups: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksFile {
    pub uri: Option<String>,
    pub file: Option<String>,
    pub refresh_interval: Option<String>,
    pub min_refetch_interval: Option<String>,
    pub max_stale: Option<String>,
    /// Extension: CA bundle to verify an `https` JWKS server with (default: system roots).
    pub ca: Option<String>,
    /// Extension: timeout of one JWKS fetch.
    pub fetch_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    pub algorithms: Option<Vec<String>>,
    pub leeway: Option<String>,
    pub verified_cache_entries: Option<u64>,
    /// `jwt`, `opaque` or `auto`.
    pub format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationFile {
    pub path: Option<String>,
    pub endpoint_uri: Option<String>,
    pub target: Option<String>,
    #[serde(default)]
    pub master_tokens: Vec<SecretFile>,
    pub scope: Option<String>,
    pub require_initial_access_token_audience: Option<bool>,
    pub require_certificate_binding: Option<bool>,
    pub require_proof_of_possession: Option<bool>,
    pub single_use: Option<bool>,
    /// Connect2id's narrowed scopes `client-reg:grant:<name>`.
    pub grant_scopes: Option<bool>,
    /// Metadata only a master token may send.
    pub privileged_metadata: Option<Vec<String>>,
    /// Registration without a token, for these grants.
    pub open: Option<OpenRegistrationFile>,
    /// A new registration access token on every update (embedded registry).
    pub rotate_registration_access_token: Option<bool>,
    /// RFC 7591 §2.3 software statements.
    pub software_statement: Option<SoftwareStatementFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftwareStatementFile {
    pub required: Option<bool>,
    #[serde(default)]
    pub issuers: Vec<StatementIssuerFile>,
    pub algorithms: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementIssuerFile {
    pub iss: String,
    pub jwks: JwksFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenRegistrationFile {
    pub grant_types: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionStoreFile {
    pub path: Option<String>,
    pub target: Option<String>,
    #[serde(default)]
    pub api_tokens: Vec<SecretFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretFile {
    pub value: Option<String>,
    pub sha256: Option<String>,
    pub env: Option<String>,
    pub file: Option<String>,
}

/// `upstreams.<name>.address`: one `host:port`, or a list of them.
#[derive(Debug)]
pub enum AddressFile {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for AddressFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AddressFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("host:port, or a list of host:port")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AddressFile, E> {
                Ok(AddressFile::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AddressFile, A::Error> {
                let mut all = Vec::new();
                while let Some(one) = seq.next_element::<String>()? {
                    all.push(one);
                }
                Ok(AddressFile::Many(all))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `upstreams.<name>.health_check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    /// What each endpoint is asked (`GET`); a 2xx answer is healthy.
    pub path: String,
    /// Default 5s.
    pub interval: Option<String>,
    /// Default 1s.
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// `host:port`, or a list of them; a DNS name is resolved again every `resolve_interval`.
    pub address: AddressFile,
    /// How often a DNS name in `address` is resolved again (default 10s).
    pub resolve_interval: Option<String>,
    /// Active health checks of each endpoint (default: none).
    pub health_check: Option<HealthCheckFile>,
    /// How long an endpoint that refused or timed out a connection is left out (default 10s;
    /// 0s: never).
    pub ejection_time: Option<String>,
    pub tls: Option<bool>,
    pub sni: Option<String>,
    pub client_cert_header: Option<String>,
    /// Set X-Forwarded-For/-Proto/-Host and Forwarded (default true); client-sent ones are
    /// removed either way.
    pub forwarded_headers: Option<bool>,
    /// Extension: CA bundle that signs the upstream's certificate (default: system roots).
    pub ca: Option<String>,
    /// Extension: time allowed to open a connection (default 5s).
    pub connect_timeout: Option<String>,
    /// Extension: time allowed between two reads from the upstream (default 60s).
    pub read_timeout: Option<String>,
    /// Requests in flight to this upstream, each on its own connection (default 1024, as Envoy's
    /// circuit breaker).
    pub max_connections: Option<usize>,
    /// Idle connections kept open for reuse (default: max_connections).
    pub keepalive_pool: Option<usize>,
    /// Forward header names with `_` (default false: dropped, as nginx does).
    pub forward_underscore_headers: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub prefix: String,
    pub upstream: String,
    pub token: Option<RouteTokenFile>,
    pub upgrade: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    pub path: Option<String>,
    pub redis: Option<RedisFile>,
    pub sessions: Option<SessionLimitsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    pub url: Option<String>,
    pub cluster: Option<Vec<String>>,
    pub key_prefix: Option<String>,
    pub password: Option<SecretFile>,
    pub wait_replicas: Option<u32>,
    /// Accept an evicting `maxmemory-policy` (default false: not ready under one).
    pub allow_eviction: Option<bool>,
    pub ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionLimitsFile {
    pub max_life: Option<i64>,
    pub auth_life: Option<i64>,
    pub max_idle: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub threads: Option<usize>,
    pub grace_period: Option<String>,
    /// A size with a unit (`64KiB`), or a plain number of bytes (string or integer).
    #[serde(default, deserialize_with = "size_text")]
    pub max_body: Option<String>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub idle_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub trust_request_id: Option<bool>,
    pub active_requests: Option<usize>,
    pub active_hold: Option<String>,
}

/// A size written as text (`64KiB`, `1024`) or as a YAML integer (`1024`: bytes), as text.
fn size_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    Ok(Option::<Size>::deserialize(d)?.map(|s| match s {
        Size::Bytes(n) => n.to_string(),
        Size::Text(t) => t,
    }))
}
