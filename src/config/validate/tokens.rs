//! What tokens are checked with: `jwks`, `tokens`, `dpop`.

use std::path::Path;
use std::time::Duration;

use super::checks::*;
use super::Problems;
use crate::config::file::*;
use crate::config::*;

/// A key set section (`jwks`, or a software statement issuer's) under `key`.
pub(super) fn jwks_of(p: &mut Problems, key: &str, j: &JwksFile, source: &Path) -> Option<Jwks> {
    let path_of = |written: &str| resolve_against(source, written);
    let jwks_source = match (&j.uri, &j.file) {
        (Some(uri), None) => {
            if !is_http_uri(uri) {
                p.push(
                    format!("{key}.uri"),
                    format!("`{uri}` is not an http(s) URI"),
                );
            }
            JwksSource::Uri(uri.clone())
        }
        (None, Some(f)) => {
            let path = path_of(f);
            if !path.is_file() {
                p.push(
                    format!("{key}.file"),
                    format!("{} does not exist", path.display()),
                );
            }
            JwksSource::File(path)
        }
        _ => {
            p.push(key, "give exactly one of uri, file");
            return None;
        }
    };
    let ca =
        j.ca.as_deref()
            .and_then(|ca| certificates(p, &format!("{key}.ca"), &path_of(ca)));
    let jwks = Jwks {
        source: jwks_source,
        refresh_interval: p.duration(
            &format!("{key}.refresh_interval"),
            j.refresh_interval.as_ref(),
            Duration::from_secs(300),
        ),
        min_refetch_interval: p.duration(
            &format!("{key}.min_refetch_interval"),
            j.min_refetch_interval.as_ref(),
            Duration::from_secs(30),
        ),
        max_stale: p.duration(
            &format!("{key}.max_stale"),
            j.max_stale.as_ref(),
            Duration::from_secs(86_400),
        ),
        ca,
        fetch_timeout: p.duration(
            &format!("{key}.fetch_timeout"),
            j.fetch_timeout.as_ref(),
            Duration::from_secs(5),
        ),
    };
    if jwks.refresh_interval.is_zero() {
        p.push(format!("{key}.refresh_interval"), "must be more than 0");
    }
    if jwks.fetch_timeout.is_zero() {
        p.push(format!("{key}.fetch_timeout"), "must be more than 0");
    }
    Some(jwks)
}

pub(super) fn jwks(
    p: &mut Problems,
    file: &FileConfig,
    source: &Path,
    issuer: Option<&String>,
) -> Option<Jwks> {
    let jwks = file
        .jwks
        .as_ref()
        .and_then(|j| jwks_of(p, "jwks", j, source));
    if jwks.is_some() && issuer.is_none() {
        p.push(
            "issuer",
            "required when jwks is set (the JWT iss must equal it)",
        );
    }

    jwks
}

pub(super) fn tokens(p: &mut Problems, file: &FileConfig) -> Tokens {
    // tokens
    let tokens_file = file.tokens.as_ref();
    let algorithms = algorithm_list(
        p,
        "tokens.algorithms",
        tokens_file.and_then(|t| t.algorithms.as_ref()),
    );
    let tokens = Tokens {
        algorithms,
        leeway: p.duration(
            "tokens.leeway",
            tokens_file.and_then(|t| t.leeway.as_ref()),
            Duration::from_secs(60),
        ),
        verified_cache_entries: tokens_file
            .and_then(|t| t.verified_cache_entries)
            .unwrap_or(100_000),
        format: match tokens_file.and_then(|t| t.format.as_deref()) {
            None if file.introspection.is_some() => TokenFormat::Auto,
            None | Some("jwt") => TokenFormat::Jwt,
            Some("opaque") => TokenFormat::Opaque,
            Some("auto") => TokenFormat::Auto,
            Some(other) => {
                p.push(
                    "tokens.format",
                    format!("`{other}` is not one of jwt, opaque, auto"),
                );
                TokenFormat::Jwt
            }
        },
    };
    if tokens.format != TokenFormat::Jwt && file.introspection.is_none() {
        p.push(
            "tokens.format",
            "opaque and auto need an introspection section (where tokens are introspected)",
        );
    }

    tokens
}

pub(super) fn dpop(p: &mut Problems, file: &FileConfig) -> Option<Dpop> {
    // dpop
    let dpop = file.dpop.as_ref().map(|d| {
        let mut origins = Vec::new();
        for (i, o) in d.origins.iter().enumerate() {
            match crate::target::normalise_origin(o) {
                Some(n) => origins.push(n),
                None => p.push(
                    format!("dpop.origins[{i}]"),
                    format!("`{o}` is not scheme://host[:port] (http or https, no path)"),
                ),
            }
        }
        if d.origins.is_empty() {
            p.push(
                "dpop.origins",
                "must list the origins clients address (scheme://host[:port])",
            );
        }
        let max_age = p.duration("dpop.max_age", d.max_age.as_ref(), Duration::from_secs(60));
        if max_age.is_zero() {
            p.push("dpop.max_age", "must be more than 0");
        }
        let replay_cache_entries = d.replay_cache_entries.unwrap_or(100_000);
        if replay_cache_entries == 0 {
            p.push(
                "dpop.replay_cache_entries",
                "must be more than 0: a proof must not be accepted twice",
            );
        }
        Dpop {
            origins,
            max_age,
            replay_cache_entries,
            require_nonce: d.require_nonce.unwrap_or(false),
            algorithms: algorithm_list(p, "dpop.algorithms", d.algorithms.as_ref()),
        }
    });

    dpop
}
