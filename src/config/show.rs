//! The effective configuration as JSON, for the admin listener's `GET /config`: every key with
//! the value bindgate runs with (defaults applied, paths resolved), and no secret.
//!
//! Written field by field on purpose: a new field appears here only when someone decides how
//! it is shown, so a secret added to [`Config`] later is not published by default. Secrets
//! show as `"<redacted>"` (or how many there are); URLs lose their user, password and query.

use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

use super::*;

const REDACTED: &str = "<redacted>";

pub fn effective(c: &Config) -> Value {
    json!({
        "source": path(&c.source),
        "listen": {
            "address": c.listen.address.to_string(),
            "tls": {
                "cert": path(&c.listen.tls.cert),
                "key": path(&c.listen.tls.key),
                "client_auth": format!("{:?}", c.listen.tls.client_auth).to_lowercase(),
                "client_ca": c.listen.tls.client_ca.as_ref().map(|f| path(&f.path)),
                "watch": c.listen.tls.watch,
                "groups": c.listen.tls.groups.as_ref().map(|g| g.to_string_lossy().into_owned()),
            },
        },
        "admin": c.admin.as_ref().map(|a| json!({"address": a.address.to_string()})),
        "issuer": c.issuer,
        "jwks": c.jwks.as_ref().map(jwks),
        "tokens": {
            "algorithms": algorithms(&c.tokens.algorithms),
            "leeway": duration(c.tokens.leeway),
            "verified_cache_entries": c.tokens.verified_cache_entries,
            "format": format!("{:?}", c.tokens.format).to_lowercase(),
        },
        "introspection": c.introspection.as_ref().map(introspection),
        "registration": registration(&c.registration),
        "session_store": {
            "path": c.session_store.path,
            "target": c.session_store.target.label(),
            "api_tokens": secrets(&c.session_store.api_tokens),
        },
        "upstreams": c.upstreams.values().map(|u| (u.name.clone(), upstream(u))).collect::<serde_json::Map<_, _>>(),
        "routes": c.routes.iter().map(route).collect::<Vec<_>>(),
        "state": state(&c.state),
        "server": {
            "threads": c.server.threads,
            "grace_period": duration(c.server.grace_period),
            "max_body": c.server.max_body,
            "pid_file": c.server.pid_file.as_deref().map(path),
            "upgrade_sock": path(&c.server.upgrade_sock),
            "idle_timeout": duration(c.server.idle_timeout),
            "header_timeout": duration(c.server.header_timeout),
            "body_timeout": duration(c.server.body_timeout),
            "active_requests": c.server.active_requests,
            "active_hold": duration(c.server.active_hold),
            "trust_request_id": c.server.trust_request_id,
        },
        "dpop": c.dpop.as_ref().map(|d| json!({
            "origins": d.origins,
            "max_age": duration(d.max_age),
            "replay_cache_entries": d.replay_cache_entries,
            "require_nonce": d.require_nonce,
            "algorithms": algorithms(&d.algorithms),
        })),
        "log": {"format": format!("{:?}", c.log_format).to_lowercase()},
        "telemetry": c.telemetry.as_ref().map(|t| json!({
            "otlp": {
                "endpoint": url(t.endpoint.as_str()),
                "sample_ratio": t.sample_ratio,
                "service_name": t.service_name,
                "queue": t.queue,
                "timeout": duration(t.timeout),
            },
            "trust_incoming_trace": t.trust_incoming_trace,
        })),
    })
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// As the file writes it (`5s`, `90s`, `250ms`).
fn duration(d: Duration) -> String {
    units::format_duration(d)
}

fn algorithms(algs: &[JwsAlgorithm]) -> Vec<&'static str> {
    algs.iter().map(|a| a.name()).collect()
}

/// How many secrets, never what they are.
fn secrets(set: &SecretSet) -> Value {
    if set.is_empty() {
        json!([])
    } else {
        json!(format!("<{} redacted>", set.len()))
    }
}

/// A URL without its user, password and query (either may carry a credential).
pub fn url(u: &str) -> String {
    let shown = redacted_url(u);
    match shown.split_once('?') {
        Some((base, _)) => format!("{base}?{REDACTED}"),
        None => shown,
    }
}

fn jwks(j: &Jwks) -> Value {
    let source = match &j.source {
        JwksSource::Uri(u) => json!({"uri": url(u)}),
        JwksSource::File(p) => json!({"file": path(p)}),
    };
    json!({
        "source": source,
        "refresh_interval": duration(j.refresh_interval),
        "min_refetch_interval": duration(j.min_refetch_interval),
        "max_stale": duration(j.max_stale),
        "ca": j.ca.as_ref().map(|f| path(&f.path)),
        "fetch_timeout": duration(j.fetch_timeout),
    })
}

fn introspection(i: &Introspection) -> Value {
    let auth = match &i.auth {
        IntrospectionAuth::ClientSecretBasic { client_id, .. } => {
            json!({"method": "client_secret_basic", "client_id": client_id, "secret": REDACTED})
        }
        IntrospectionAuth::ClientSecretPost { client_id, .. } => {
            json!({"method": "client_secret_post", "client_id": client_id, "secret": REDACTED})
        }
        IntrospectionAuth::PrivateKeyJwt { client_id, alg, .. } => json!({
            "method": "private_key_jwt", "client_id": client_id, "key": REDACTED, "alg": alg.name(),
        }),
        IntrospectionAuth::TlsClientAuth { client_id, .. } => {
            json!({"method": "tls_client_auth", "client_id": client_id, "identity": REDACTED})
        }
    };
    json!({
        "endpoint": url(&i.endpoint),
        "auth": auth,
        "ca": i.ca.as_ref().map(|f| path(&f.path)),
        "timeout": duration(i.timeout),
        "max_entries": i.max_entries,
        "max_ttl": duration(i.max_ttl),
        "negative_ttl": duration(i.negative_ttl),
    })
}

fn registration(r: &Registration) -> Value {
    json!({
        "path": r.path,
        "endpoint_uri": r.endpoint_uri,
        "target": r.target.label(),
        "master_tokens": secrets(&r.master_tokens),
        "scope": r.scope,
        "require_initial_access_token_audience": r.require_initial_access_token_audience,
        "require_certificate_binding": r.require_certificate_binding,
        "require_proof_of_possession": r.require_proof_of_possession,
        "single_use": r.single_use,
        "grant_scopes": r.grant_scopes,
        "privileged_metadata": r.privileged_metadata,
        "open": r.open.as_ref().map(|g| json!({"grant_types": g})),
        "rotate_registration_access_token": r.rotate_registration_access_token,
        "software_statement": r.software_statement.as_ref().map(|s| json!({
            "required": s.required,
            "issuers": s.issuers.iter().map(|i| json!({"iss": i.iss, "jwks": jwks(&i.jwks)})).collect::<Vec<_>>(),
            "algorithms": algorithms(&s.algorithms),
        })),
    })
}

fn upstream(u: &Upstream) -> Value {
    json!({
        "address": u.endpoints,
        "resolved": u.resolved.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "resolve_interval": duration(u.resolve_interval),
        "health_check": u.health_check.as_ref().map(|h| json!({
            "path": h.path,
            "interval": duration(h.interval),
            "timeout": duration(h.timeout),
        })),
        "ejection_time": duration(u.ejection_time),
        "tls": u.tls,
        "sni": u.sni,
        "client_cert_header": u.client_cert_header.as_ref().map(|h| h.as_str()),
        "forwarded_headers": u.forwarded_headers,
        "ca": u.ca.as_ref().map(|f| path(&f.path)),
        "connect_timeout": duration(u.connect_timeout),
        "read_timeout": duration(u.read_timeout),
        "max_connections": u.max_connections,
        "keepalive_pool": u.keepalive_pool,
        "forward_underscore_headers": u.forward_underscore_headers,
    })
}

fn route(r: &Route) -> Value {
    json!({
        "prefix": r.prefix,
        "upstream": r.upstream,
        "token": r.token.as_ref().map(|t| json!({
            "scope": t.scope,
            "audience": t.audience,
            "require_proof_of_possession": t.require_proof_of_possession,
            "headers": t.headers.iter().map(|(h, claim)| (h.as_str().to_string(), json!(claim))).collect::<serde_json::Map<_, _>>(),
        })),
        "upgrade": r.upgrade,
    })
}

fn state(s: &State) -> Value {
    let file = match &s.path {
        StatePath::Memory => ":memory:".to_string(),
        StatePath::File(p) => path(p),
    };
    json!({
        "path": file,
        "redis": s.redis.as_ref().map(|r| json!({
            "url": url(&r.url),
            "cluster": r.cluster.iter().map(|u| url(u)).collect::<Vec<_>>(),
            "key_prefix": r.key_prefix,
            "password": r.password.as_ref().map(|_| REDACTED),
            "wait_replicas": r.wait_replicas,
            "allow_eviction": r.allow_eviction,
            "ca": r.ca.as_ref().map(|f| path(&f.path)),
        })),
        "sessions": {
            "max_life": s.sessions.max_life,
            "auth_life": s.sessions.auth_life,
            "max_idle": s.sessions.max_idle,
        },
    })
}
