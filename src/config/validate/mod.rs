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
    let telemetry = telemetry(&mut p, &file);

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
        telemetry,
    })
}

/// `telemetry`: where spans go, which share of traces, whether a client's trace is taken.
fn telemetry(p: &mut Problems, file: &FileConfig) -> Option<crate::telemetry::Settings> {
    let t = file.telemetry.as_ref()?;
    let Some(o) = &t.otlp else {
        p.push(
            "telemetry.otlp",
            "is missing (telemetry needs an OTLP endpoint)",
        );
        return None;
    };
    let endpoint = match url::Url::parse(&o.endpoint) {
        Ok(mut u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            if !u.path().ends_with('/') {
                let path = format!("{}/", u.path());
                u.set_path(&path);
            }
            if u.query().is_some() || !u.username().is_empty() || u.password().is_some() {
                p.push(
                    "telemetry.otlp.endpoint",
                    "takes no query or credentials (spans go to <endpoint>/v1/traces)",
                );
            }
            Some(u)
        }
        _ => {
            p.push(
                "telemetry.otlp.endpoint",
                format!("`{}` is not an http(s) URL", o.endpoint),
            );
            None
        }
    };
    let sample_ratio = o.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        p.push("telemetry.otlp.sample_ratio", "must be between 0 and 1");
    }
    let service_name = o.service_name.clone().unwrap_or_else(|| "bindgate".into());
    if service_name.trim().is_empty() {
        p.push("telemetry.otlp.service_name", "is empty");
    }
    let queue = o.queue.unwrap_or(2048);
    if queue == 0 || queue > 1_000_000 {
        p.push(
            "telemetry.otlp.queue",
            "must be between 1 and 1000000 spans",
        );
    }
    let timeout = p.positive_duration(
        "telemetry.otlp.timeout",
        o.timeout.as_ref(),
        std::time::Duration::from_secs(5),
    );
    Some(crate::telemetry::Settings {
        endpoint: endpoint?,
        sample_ratio,
        service_name,
        trust_incoming_trace: t.trust_incoming_trace.unwrap_or(false),
        queue,
        timeout,
    })
}
