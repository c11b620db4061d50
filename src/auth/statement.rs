//! RFC 7591 §2.3 software statements: a JWT about the client, signed by a directory the
//! operator trusts (`registration.software_statement.issuers`). Verified (issuer, key,
//! algorithm, `typ`, time), its claims take precedence over the same members of the body.

use serde_json::{Map, Value};
use std::sync::Arc;

use super::cache::now_secs;
use super::jwks::{KeyStore, Lookup};
use super::jws::{split, verify_signature, Header};
use crate::config::{JwsAlgorithm, SoftwareStatement};
use crate::metrics::Metrics;

/// JWT claims of the statement itself, not client metadata: not merged into the body.
const JWT_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// Why a software statement was refused (RFC 7591 §3.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementError {
    /// 400 `invalid_software_statement`: it cannot be verified (or is missing where required).
    Invalid(String),
    /// 400 `unapproved_software_statement`: its issuer is not trusted.
    Unapproved(String),
}

struct Issuer {
    iss: String,
    keys: Arc<KeyStore>,
    /// One fetch at a time when the keys are due (fetched on use, every refresh_interval).
    refreshing: tokio::sync::Mutex<()>,
}

/// The statement checks of a configuration.
pub struct Statements {
    issuers: Vec<Issuer>,
    algorithms: Vec<JwsAlgorithm>,
    leeway: f64,
    pub required: bool,
}

fn invalid(why: &str) -> StatementError {
    StatementError::Invalid(why.to_string())
}

impl Statements {
    /// The statement checks of `config` and the settings they were made from: `previous`'s
    /// when its settings are the same (keys already fetched are kept across a reload).
    pub fn of(
        config: &crate::config::Config,
        previous: Option<(&str, &Option<Arc<Statements>>)>,
        metrics: &Arc<Metrics>,
    ) -> Result<(Option<Arc<Statements>>, String), crate::config::Problem> {
        let settings = format!(
            "{:?}",
            (
                &config.registration.software_statement,
                config.tokens.leeway
            )
        );
        let statements = match (
            previous.filter(|(s, _)| *s == settings),
            &config.registration.software_statement,
        ) {
            (Some((_, kept)), _) => kept.clone(),
            (None, Some(s)) => Some(Arc::new(Statements::new(s, config.tokens.leeway, metrics)?)),
            (None, None) => None,
        };
        Ok((statements, settings))
    }

    pub fn new(
        config: &SoftwareStatement,
        leeway: std::time::Duration,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, crate::config::Problem> {
        let mut issuers = Vec::new();
        for i in &config.issuers {
            issuers.push(Issuer {
                iss: i.iss.clone(),
                keys: Arc::new(KeyStore::new(
                    &i.jwks,
                    &i.iss,
                    metrics.clone(),
                    None,
                    Box::new(|| {}),
                )?),
                refreshing: tokio::sync::Mutex::new(()),
            });
        }
        Ok(Statements {
            issuers,
            algorithms: config.algorithms.clone(),
            leeway: leeway.as_secs_f64(),
            required: config.required,
        })
    }

    /// Verifies `statement`; its claims (client metadata) when it holds.
    pub async fn verify(&self, statement: &str) -> Result<Map<String, Value>, StatementError> {
        let jws = split(statement).ok_or_else(|| invalid("The software statement is not a JWT"))?;
        let header: Header = serde_json::from_slice(&jws.header)
            .map_err(|_| invalid("The software statement header is malformed"))?;
        if header.crit.is_some() || header.b64.is_some() {
            return Err(invalid(
                "The software statement has an unsupported critical header parameter",
            ));
        }
        // `none`, HMAC and anything not listed are not in the list.
        let alg = JwsAlgorithm::from_name(&header.alg)
            .filter(|a| self.algorithms.contains(a))
            .ok_or_else(|| invalid("The software statement algorithm is not accepted"))?;
        if header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
        {
            return Err(invalid("A DPoP proof is not a software statement"));
        }
        let claims: Map<String, Value> = serde_json::from_slice(&jws.payload)
            .map_err(|_| invalid("The software statement claims are not a JSON object"))?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("The software statement has no iss"))?;
        let issuer = self.issuers.iter().find(|i| i.iss == iss).ok_or_else(|| {
            StatementError::Unapproved("The software statement issuer is not trusted".to_string())
        })?;
        let key = issuer.key(header.kid.as_deref(), alg).await?;
        if !verify_signature(alg, &key, jws.signing_input, &jws.signature) {
            return Err(invalid("The software statement signature is invalid"));
        }
        self.check_time(&claims, now_secs())?;
        Ok(claims)
    }

    fn check_time(&self, claims: &Map<String, Value>, now: f64) -> Result<(), StatementError> {
        let date = |name: &str| -> Result<Option<f64>, StatementError> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|d| d.is_finite())
                    .map(Some)
                    .ok_or_else(|| {
                        invalid(&format!("The software statement {name} is not a date"))
                    }),
            }
        };
        if date("exp")?.is_some_and(|exp| now >= exp + self.leeway) {
            return Err(invalid("The software statement has expired"));
        }
        if date("iat")?.is_some_and(|iat| iat > now + self.leeway) {
            return Err(invalid("The software statement is issued in the future"));
        }
        if date("nbf")?.is_some_and(|nbf| now + self.leeway < nbf) {
            return Err(invalid("The software statement is not valid yet"));
        }
        Ok(())
    }
}

impl Issuer {
    /// The key for `kid`: the keys fetched when due, refetched once for an unknown kid (at
    /// most once per min_refetch_interval, as the token keys are).
    async fn key(
        &self,
        kid: Option<&str>,
        alg: JwsAlgorithm,
    ) -> Result<Arc<super::jwk::VerifyKey>, StatementError> {
        if self.keys.due() {
            let _one = self.refreshing.lock().await;
            if self.keys.due() {
                self.keys.refresh(false).await;
            }
        }
        let lookup = |keys: &KeyStore| match keys.lookup(kid, alg) {
            Ok(l) => Ok(l),
            Err(_) => Err(invalid(
                "No key of the issuer verifies the software statement",
            )),
        };
        match lookup(&self.keys)? {
            Lookup::Found(k) => Ok(k),
            Lookup::Unknown => {
                crate::telemetry::step("jwks fetch", self.keys.refetch_for_unknown_kid()).await;
                match lookup(&self.keys)? {
                    Lookup::Found(k) => Ok(k),
                    Lookup::Unknown => Err(invalid(
                        "The software statement names a key its issuer does not publish",
                    )),
                }
            }
        }
    }
}

/// The body's metadata with the statement's claims over it (RFC 7591 §2.3), the statement
/// kept as sent (§3.2.1 returns it).
pub fn merged(body: &Map<String, Value>, claims: &Map<String, Value>) -> Map<String, Value> {
    let mut out = body.clone();
    for (k, v) in claims {
        if !JWT_CLAIMS.contains(&k.as_str()) {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}
