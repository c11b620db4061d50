//! Authorisation of the registration endpoint and the session store: bearer parsing, master
//! and API tokens, initial access tokens (JWT) with RFC 8705 certificate binding.

pub mod bearer;
pub mod cache;
pub mod claims;
pub mod jwk;
pub mod jwks;
pub mod jws;
pub mod token;

use http::HeaderMap;
use std::sync::Arc;

use crate::admin::Readiness;
use crate::certificate::PeerCertificate;
use crate::config::{Config, SecretDigest, SecretSet};
use crate::metrics::Metrics;
use crate::rejection::Rejection;
use crate::routing::{Credential, Operation};
use cache::VerifiedCache;
use jwks::KeyStore;
use token::TokenValidator;

/// Why a request was let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// No authorisation applies (a `routes` entry).
    Open,
    /// A registration master token.
    MasterToken,
    /// A valid initial access token (RFC 7591 §3).
    InitialAccessToken,
    /// A bearer token on a client's own URI: the target checks it as that client's
    /// registration access token (RFC 7592 §3).
    ClientToken { digest: [u8; 32] },
    /// A session store API token.
    SessionStoreToken,
}

/// What the authoriser reads of a request besides its operation.
pub struct Facts<'a> {
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub peer: Option<&'a PeerCertificate>,
}

pub struct Authoriser {
    master_tokens: SecretSet,
    session_tokens: SecretSet,
    validator: Option<TokenValidator>,
    metrics: Arc<Metrics>,
}

impl Authoriser {
    /// Builds the authoriser and, when a JWKS is configured, its key store (returned so that
    /// the server can run its background refresh).
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
    ) -> Result<(Self, Option<Arc<KeyStore>>), String> {
        let mut store = None;
        let validator = match (&config.jwks, &config.issuer) {
            (Some(jwks), Some(issuer)) => {
                let cache = (config.tokens.verified_cache_entries > 0).then(|| {
                    Arc::new(VerifiedCache::new(
                        config.tokens.verified_cache_entries,
                        config.tokens.leeway,
                    ))
                });
                let on_removed: Box<dyn Fn() + Send + Sync> = match &cache {
                    Some(c) => {
                        let c = c.clone();
                        Box::new(move || c.clear())
                    }
                    None => Box::new(|| {}),
                };
                let keys = Arc::new(KeyStore::new(jwks, metrics.clone(), readiness, on_removed)?);
                store = Some(keys.clone());
                let mut audiences = vec![issuer.clone()];
                if let Some(uri) = &config.registration.endpoint_uri {
                    audiences.insert(0, uri.clone());
                }
                let rules = claims::Rules {
                    issuer: issuer.clone(),
                    audiences,
                    check_audience: config.registration.require_initial_access_token_audience,
                    scope: config.registration.scope.clone(),
                    leeway_secs: config.tokens.leeway.as_secs_f64(),
                    require_binding: config.registration.require_certificate_binding,
                };
                Some(TokenValidator::new(
                    keys,
                    cache,
                    rules,
                    config.tokens.algorithms.clone(),
                    metrics.clone(),
                ))
            }
            _ => None,
        };
        Ok((
            Authoriser {
                master_tokens: config.registration.master_tokens.clone(),
                session_tokens: config.session_store.api_tokens.clone(),
                validator,
                metrics,
            },
            store,
        ))
    }

    /// The grant for `op`, or the rejection: what each operation needs is
    /// [`Operation::credential`], in one place.
    pub async fn authorise(&self, op: &Operation, facts: &Facts<'_>) -> Result<Grant, Rejection> {
        let credential = op.credential();
        let label = match credential {
            Credential::None => return Ok(Grant::Open),
            Credential::SessionStoreToken => "session_store",
            _ => "registration",
        };
        let outcome = match credential {
            Credential::None => Ok(Grant::Open),
            Credential::InitialAccessOrMaster => self.initial_access(facts).await,
            Credential::Master => self.master(facts),
            Credential::RegistrationAccessOrMaster => self.registration_access(facts),
            Credential::SessionStoreToken => self.session_store(facts),
        };
        match &outcome {
            Ok(_) => self
                .metrics
                .decisions
                .with_label_values(&[label, "accepted", "-"])
                .inc(),
            Err(r) => self
                .metrics
                .decisions
                .with_label_values(&[label, "rejected", r.reason()])
                .inc(),
        }
        outcome
    }

    /// `POST` on the registration collection: a master token or an initial access token.
    async fn initial_access(&self, facts: &Facts<'_>) -> Result<Grant, Rejection> {
        let token = bearer::bearer_token(facts.headers, facts.query)?
            .ok_or(Rejection::MissingCredentials)?;
        let digest = SecretDigest::of(token.as_bytes());
        if self.master_tokens.contains_digest(&digest) {
            return Ok(Grant::MasterToken);
        }
        let validator = self
            .validator
            .as_ref()
            .ok_or_else(|| Rejection::InvalidToken("Invalid initial access token".into()))?;
        validator
            .validate(token, digest.bytes(), facts.peer)
            .await
            .map(|()| Grant::InitialAccessToken)
    }

    /// Listing every client: a master token only.
    fn master(&self, facts: &Facts<'_>) -> Result<Grant, Rejection> {
        let token = bearer::bearer_token(facts.headers, facts.query)?
            .ok_or(Rejection::MissingCredentials)?;
        if self.master_tokens.contains(token.as_bytes()) {
            Ok(Grant::MasterToken)
        } else {
            Err(Rejection::InvalidToken(
                "Listing clients requires a master token".into(),
            ))
        }
    }

    /// A client's own URI: a master token, or a bearer token that the target checks as that
    /// client's registration access token.
    fn registration_access(&self, facts: &Facts<'_>) -> Result<Grant, Rejection> {
        let token = bearer::bearer_token(facts.headers, facts.query)?
            .ok_or(Rejection::MissingCredentials)?;
        let digest = SecretDigest::of(token.as_bytes());
        if self.master_tokens.contains_digest(&digest) {
            return Ok(Grant::MasterToken);
        }
        Ok(Grant::ClientToken {
            digest: *digest.bytes(),
        })
    }

    fn session_store(&self, facts: &Facts<'_>) -> Result<Grant, Rejection> {
        let token = bearer::bearer_token(facts.headers, facts.query)?
            .ok_or(Rejection::MissingCredentials)?;
        if self.session_tokens.contains(token.as_bytes()) {
            Ok(Grant::SessionStoreToken)
        } else {
            Err(Rejection::InvalidToken(
                "Invalid session store API token".into(),
            ))
        }
    }
}
