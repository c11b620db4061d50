//! Where requests go: `upstreams`, `registration`, `session_store`, `routes`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::checks::*;
use super::Problems;
use crate::config::file::*;
use crate::config::*;

pub(super) fn upstreams(
    p: &mut Problems,
    file: &FileConfig,
    source: &Path,
) -> BTreeMap<String, Upstream> {
    let path_of = |written: &str| resolve_against(source, written);
    // upstreams
    let mut upstreams = BTreeMap::new();
    for (name, u) in &file.upstreams {
        let key = format!("upstreams.{name}");
        if name == "embedded" {
            p.push(
                &key,
                "`embedded` is reserved for the embedded state service",
            );
        }
        let endpoints = match &u.address {
            AddressFile::One(a) => vec![a.clone()],
            AddressFile::Many(list) => list.clone(),
        };
        if endpoints.is_empty() || endpoints.len() > 64 {
            p.push(
                format!("{key}.address"),
                "give one host:port, or a list of 1 to 64",
            );
        }
        let mut resolved = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            let at = match &u.address {
                AddressFile::One(_) => format!("{key}.address"),
                AddressFile::Many(_) => format!("{key}.address[{i}]"),
            };
            resolved.extend(resolve_all(p, &at, e));
        }
        let mut seen = std::collections::HashSet::new();
        resolved.retain(|a| seen.insert(*a));
        let address = resolved.first().copied();
        let health_check = u.health_check.as_ref().map(|h| {
            let at = format!("{key}.health_check");
            let plain = h.path.starts_with('/')
                && h.path.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
            if !plain {
                p.push(
                    format!("{at}.path"),
                    format!("`{}` must be a plain path starting with /", h.path),
                );
            }
            HealthCheck {
                path: h.path.clone(),
                interval: p.positive_duration(
                    &format!("{at}.interval"),
                    h.interval.as_ref(),
                    Duration::from_secs(5),
                ),
                timeout: p.positive_duration(
                    &format!("{at}.timeout"),
                    h.timeout.as_ref(),
                    Duration::from_secs(1),
                ),
            }
        });
        // Absent: `Client-Cert` (RFC 9440). "": the certificate is not passed on (the client's
        // own Client-Cert and Client-Cert-Chain are removed all the same).
        let given = u.client_cert_header.as_deref().unwrap_or("Client-Cert");
        let client_cert_header =
            Some(given)
                .filter(|h| !h.is_empty())
                .and_then(|h| match http::HeaderName::from_bytes(h.as_bytes()) {
                    Ok(n) if crate::headers::is_reserved(n.as_str()) => {
                        p.push(
                            format!("{key}.client_cert_header"),
                            format!(
                                "`{h}` is a header bindgate or HTTP already gives a meaning to"
                            ),
                        );
                        None
                    }
                    Ok(n) => Some(n),
                    Err(_) => {
                        p.push(
                            format!("{key}.client_cert_header"),
                            format!("`{h}` is not a valid header name"),
                        );
                        None
                    }
                });
        let ca =
            u.ca.as_deref()
                .and_then(|ca| certificates(p, &format!("{key}.ca"), &path_of(ca)));
        let tls = u.tls.unwrap_or(false);
        let sni = u.sni.clone().unwrap_or_default();
        if !tls && !sni.is_empty() {
            p.push(format!("{key}.sni"), "has no effect without tls: true");
        }
        let upstream = Upstream {
            name: name.clone(),
            address_text: endpoints.join(", "),
            address: address.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            endpoints,
            resolved,
            resolve_interval: p.positive_duration(
                &format!("{key}.resolve_interval"),
                u.resolve_interval.as_ref(),
                Duration::from_secs(10),
            ),
            health_check,
            ejection_time: p.duration(
                &format!("{key}.ejection_time"),
                u.ejection_time.as_ref(),
                Duration::from_secs(10),
            ),
            tls,
            sni,
            client_cert_header,
            forwarded_headers: u.forwarded_headers.unwrap_or(true),
            ca,
            connect_timeout: p.duration(
                &format!("{key}.connect_timeout"),
                u.connect_timeout.as_ref(),
                Duration::from_secs(5),
            ),
            read_timeout: p.duration(
                &format!("{key}.read_timeout"),
                u.read_timeout.as_ref(),
                Duration::from_secs(60),
            ),
            forward_underscore_headers: u.forward_underscore_headers.unwrap_or(false),
            keepalive_pool: match u.keepalive_pool {
                None => u.max_connections.unwrap_or(1024).clamp(1, 65_536),
                Some(n) if n <= 65_536 => n,
                Some(n) => {
                    p.push(
                        format!("{key}.keepalive_pool"),
                        format!("{n}: must be between 0 and 65536"),
                    );
                    1024
                }
            },
            max_connections: match u.max_connections {
                None => 1024,
                Some(n) if (1..=65_536).contains(&n) => n,
                Some(n) => {
                    p.push(
                        format!("{key}.max_connections"),
                        format!("{n}: must be between 1 and 65536"),
                    );
                    1024
                }
            },
        };
        upstreams.insert(name.clone(), upstream);
    }

    upstreams
}

/// `embedded` (or absent) or the name of an upstream.
fn target_of(p: &mut Problems, file: &FileConfig, key: &str, given: Option<&String>) -> Target {
    match given.map(String::as_str) {
        None | Some("embedded") => Target::Embedded,
        Some(name) => {
            if !file.upstreams.contains_key(name) {
                p.push(
                    key,
                    format!("`{name}` is neither `embedded` nor the name of an upstream"),
                );
            }
            Target::Upstream(name.to_string())
        }
    }
}

pub(super) fn registration(
    p: &mut Problems,
    file: &FileConfig,
    source: &Path,
    issuer: Option<&String>,
) -> Registration {
    // registration
    let reg = file.registration.as_ref();
    let reg_path = endpoint_path(
        p,
        "registration.path",
        reg.and_then(|r| r.path.as_deref()).unwrap_or("/clients"),
    );
    let endpoint_uri = reg.and_then(|r| r.endpoint_uri.clone()).or_else(|| {
        issuer
            .as_ref()
            .map(|i| format!("{}{}", i.trim_end_matches('/'), reg_path))
    });
    if let Some(uri) = reg.and_then(|r| r.endpoint_uri.as_ref()) {
        if !is_http_uri(uri) {
            p.push(
                "registration.endpoint_uri",
                format!("`{uri}` is not an http(s) URI"),
            );
        }
    }
    let reg_target = target_of(
        p,
        file,
        "registration.target",
        reg.and_then(|r| r.target.as_ref()),
    );
    let master_tokens = secrets(
        p,
        "registration.master_tokens",
        reg.map(|r| &r.master_tokens[..]),
        source,
    );
    let scope = reg
        .and_then(|r| r.scope.clone())
        .unwrap_or_else(|| "client-reg".into());
    if scope.is_empty() || scope.contains(' ') || scope.contains('"') || scope.contains('\\') {
        p.push(
            "registration.scope",
            "must be one scope token (no spaces or quotes)",
        );
    }
    Registration {
        path: reg_path,
        endpoint_uri,
        target: reg_target,
        master_tokens,
        scope,
        require_initial_access_token_audience: reg
            .and_then(|r| r.require_initial_access_token_audience)
            .unwrap_or(true),
        require_certificate_binding: reg
            .and_then(|r| r.require_certificate_binding)
            .unwrap_or(false),
        require_proof_of_possession: reg
            .and_then(|r| r.require_proof_of_possession)
            .unwrap_or(false),
        single_use: reg.and_then(|r| r.single_use).unwrap_or(false),
        grant_scopes: reg.and_then(|r| r.grant_scopes).unwrap_or(false),
        privileged_metadata: reg
            .and_then(|r| r.privileged_metadata.clone())
            .unwrap_or_else(|| {
                vec![
                    "preferred_client_id".to_string(),
                    "preferred_client_secret".to_string(),
                ]
            }),
        open: reg.and_then(|r| r.open.as_ref()).map(|o| {
            for (i, g) in o.grant_types.iter().enumerate() {
                if crate::grants::Grant::of_grant_type(g).is_none() {
                    p.push(
                        format!("registration.open.grant_types[{i}]"),
                        format!("`{g}` is not a grant type open registration can allow"),
                    );
                }
            }
            if o.grant_types.is_empty() {
                p.push(
                    "registration.open.grant_types",
                    "is empty: omit `open` to refuse registration without a token",
                );
            }
            o.grant_types.clone()
        }),
        rotate_registration_access_token: reg
            .and_then(|r| r.rotate_registration_access_token)
            .unwrap_or(false),
        software_statement: reg
            .and_then(|r| r.software_statement.as_ref())
            .map(|s| software_statement(p, s, source)),
    }
}

fn software_statement(
    p: &mut Problems,
    s: &SoftwareStatementFile,
    source: &Path,
) -> SoftwareStatement {
    let key = "registration.software_statement";
    if s.issuers.is_empty() {
        p.push(
            format!("{key}.issuers"),
            "list at least one issuer (iss and jwks) whose statements are trusted",
        );
    }
    let mut issuers: Vec<StatementIssuer> = Vec::new();
    for (i, issuer) in s.issuers.iter().enumerate() {
        let at = format!("{key}.issuers[{i}]");
        if issuer.iss.is_empty() {
            p.push(format!("{at}.iss"), "must not be empty");
        } else if issuers.iter().any(|o| o.iss == issuer.iss) {
            p.push(
                format!("{at}.iss"),
                format!("`{}` is listed twice", issuer.iss),
            );
        }
        if let Some(jwks) = super::tokens::jwks_of(p, &format!("{at}.jwks"), &issuer.jwks, source) {
            issuers.push(StatementIssuer {
                iss: issuer.iss.clone(),
                jwks,
            });
        }
    }
    SoftwareStatement {
        required: s.required.unwrap_or(false),
        issuers,
        algorithms: algorithm_list(p, &format!("{key}.algorithms"), s.algorithms.as_ref()),
    }
}

pub(super) fn session_store(
    p: &mut Problems,
    file: &FileConfig,
    source: &Path,
    registration: &Registration,
) -> SessionStore {
    // session_store
    let ss = file.session_store.as_ref();
    let ss_path = endpoint_path(
        p,
        "session_store.path",
        ss.and_then(|s| s.path.as_deref())
            .unwrap_or("/session-store/rest/v2"),
    );
    let session_store = SessionStore {
        target: target_of(
            p,
            file,
            "session_store.target",
            ss.and_then(|s| s.target.as_ref()),
        ),
        api_tokens: secrets(
            p,
            "session_store.api_tokens",
            ss.map(|s| &s.api_tokens[..]),
            source,
        ),
        path: ss_path,
    };
    if overlaps(&registration.path, &session_store.path) {
        p.push(
            "session_store.path",
            format!("overlaps registration.path `{}`", registration.path),
        );
    }

    session_store
}

pub(super) fn routes(p: &mut Problems, file: &FileConfig, jwks: bool) -> Vec<Route> {
    // routes
    let mut routes = Vec::new();
    for (i, r) in file.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        if !r.prefix.starts_with('/') {
            p.push(
                format!("{key}.prefix"),
                format!("`{}` must start with /", r.prefix),
            );
        }
        if !file.upstreams.contains_key(&r.upstream) {
            p.push(
                format!("{key}.upstream"),
                format!("`{}` is not the name of an upstream", r.upstream),
            );
        }
        let token = r.token.as_ref().map(|t| {
            for (j, scope) in t.scope.iter().enumerate() {
                if scope.is_empty() || scope.contains([' ', '"', '\\']) {
                    p.push(
                        format!("{key}.token.scope[{j}]"),
                        "must be one scope token (no spaces or quotes)",
                    );
                }
            }
            if !jwks {
                p.push(
                    format!("{key}.token"),
                    "needs jwks and issuer, or introspection: the route's access tokens are verified with them",
                );
            }
            let mut headers = Vec::new();
            for (name, claim) in &t.headers {
                let at = format!("{key}.token.headers.{name}");
                match http::HeaderName::from_bytes(name.as_bytes()) {
                    Ok(n) if crate::headers::is_reserved(n.as_str()) => p.push(
                        at,
                        "is a header bindgate or HTTP already gives a meaning to",
                    ),
                    Ok(_) if claim.is_empty() => p.push(at, "names no claim"),
                    Ok(n) => headers.push((n, claim.clone())),
                    Err(_) => p.push(at, "is not a valid header name"),
                }
            }
            RouteToken {
                scope: t.scope.clone(),
                audience: t.audience.clone(),
                require_proof_of_possession: t.require_proof_of_possession.unwrap_or(false),
                headers,
            }
        });
        routes.push(Route {
            prefix: r.prefix.clone(),
            upstream: r.upstream.clone(),
            token,
            upgrade: r.upgrade.unwrap_or(false),
        });
    }

    routes
}
