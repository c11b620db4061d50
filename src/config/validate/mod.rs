//! File structs → runtime `Config`, with every problem collected.

use std::path::Path;
use std::time::Duration;

mod checks;
mod introspection;
mod sections;
mod tokens;
mod upstreams;

use super::file::*;
use super::units::parse_duration;
use super::*;

pub(super) struct Problems(Vec<Problem>);

impl Problems {
    pub(super) fn push(&mut self, key: impl Into<String>, reason: impl std::fmt::Display) {
        self.0.push(Problem {
            key: key.into(),
            reason: reason.to_string(),
        });
    }

    /// A deadline: more than 0 (a zero deadline would refuse everything) and at most a day.
    pub(super) fn positive_duration(
        &mut self,
        key: &str,
        given: Option<&String>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(key, given, default);
        if d.is_zero() || d > Duration::from_secs(86_400) {
            self.push(key, "must be more than 0 and at most 24h");
            return default;
        }
        d
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        given: Option<&String>,
        default: Duration,
    ) -> Duration {
        match given.map(|t| parse_duration(t)) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.push(key, e);
                default
            }
        }
    }
}

pub fn validate(file: FileConfig, source: &Path) -> Result<Config, Vec<Problem>> {
    let mut p = Problems(Vec::new());
    let (listen_address, tls) = sections::listen(&mut p, &file, source);
    let admin = sections::admin(&mut p, &file, listen_address);
    let issuer = sections::issuer(&mut p, &file);
    let jwks = tokens::jwks(&mut p, &file, source, issuer.as_ref());
    let tokens = tokens::tokens(&mut p, &file);
    let upstreams = upstreams::upstreams(&mut p, &file, source);
    let registration = upstreams::registration(&mut p, &file, source, issuer.as_ref());
    let session_store = upstreams::session_store(&mut p, &file, source, &registration);
    // Access tokens are verified with the JWKS, or by introspection.
    let routes = upstreams::routes(
        &mut p,
        &file,
        jwks.is_some() || file.introspection.is_some(),
    );
    let dpop = tokens::dpop(&mut p, &file);
    let introspection = introspection::introspection(&mut p, &file, source);
    let log_format = match file.log.as_ref().and_then(|l| l.format.as_deref()) {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            p.push("log.format", format!("`{other}` is not one of text, json"));
            LogFormat::Text
        }
    };
    let state = sections::state(&mut p, &file, source);
    let server = sections::server(&mut p, &file, source);

    // A None pushed a problem above.
    let (Some(address), Some(tls), true) = (listen_address, tls, p.0.is_empty()) else {
        return Err(p.0);
    };
    Ok(Config {
        source: source.to_path_buf(),
        listen: Listen { address, tls },
        admin,
        issuer,
        jwks,
        tokens,
        registration,
        session_store,
        upstreams,
        routes,
        state,
        server,
        dpop,
        introspection,
        log_format,
    })
}
