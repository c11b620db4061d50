//! Authorisation of every operation that needs a credential: bearer and DPoP parsing, master
//! and API tokens, access tokens (JWT: initial access tokens, protected routes) with RFC 8705
//! certificate binding and RFC 9449 DPoP binding.

pub mod bearer;
pub mod cache;
pub mod claim_headers;
pub mod claims;
pub mod denial;
pub mod dpop;
pub mod introspect;
mod judge;
pub mod jwk;
pub mod jwks;
pub mod jws;
pub mod permit;
pub mod registration;
pub mod replay;
pub mod statement;
pub mod token;
mod verify;

use http::{HeaderMap, Method};
use std::sync::Arc;

use crate::certificate::PeerCertificate;
use crate::config::{Config, SecretDigest, SecretSet};
use crate::metrics::{self, Metrics};
use crate::readiness::Readiness;
use crate::routing::{Credential, Operation, RegistryOp, SessionRequest};
use bearer::{Presented, Scheme};
use cache::{now_secs, Entry, VerifiedCache};
use claims::Policy;
pub use denial::Denial;
use dpop::{ProofChecker, ProofRequest, ValidProof};
use jwks::KeyStore;
pub use permit::{Ledger, Permit, RegistryGrant, RegistryPermit, RoutePermit, SessionPermit};
use token::TokenValidator;

/// What the authoriser needs of the state every instance shares (Redis). The state engines
/// provide it; `auth` does not depend on them.
#[async_trait::async_trait]
pub trait SharedRecord: Send + Sync {
    /// Records `key` for `ttl`: true the first time, false when it is recorded already.
    async fn first_use(&self, key: &str, ttl: std::time::Duration) -> Result<bool, SharedError>;
    /// The secret every instance shares under `name` (made by the first that asks). Blocking.
    fn shared_secret(&self, name: &str) -> Result<Vec<u8>, SharedError>;
}

/// The shared state did not answer, or not as it should.
#[derive(Debug)]
pub struct SharedError(pub String);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the authoriser reads of a request besides its operation.
pub struct Facts<'a> {
    pub method: &'a Method,
    /// The normalised path: a DPoP proof's `htu` names it.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub peer: Option<&'a PeerCertificate>,
}

pub struct Authoriser {
    master_tokens: SecretSet,
    session_tokens: SecretSet,
    validator: Option<Arc<TokenValidator>>,
    /// The key store behind `validator`, and what it was built from (issuer, jwks, tokens):
    /// a reload that changes none of them keeps both, with their keys and verified tokens.
    key_store: Option<Arc<KeyStore>>,
    token_settings: String,
    registration: Policy,
    /// What registrations may ask for (privileged metadata, the full scope's name).
    registration_rules: registration::Rules,
    /// `registration.grant_scopes`: narrowed scopes accepted.
    grant_scopes: bool,
    /// `tokens.format`: how a presented token is verified.
    token_format: crate::config::TokenFormat,
    /// RFC 7662 introspection of opaque tokens; kept across a reload that does not change
    /// `introspection` (or `issuer`), with its answer cache.
    introspector: Option<Arc<introspect::Introspector>>,
    introspection_settings: String,
    /// `registration.open`: the grants a registration without a token may ask for.
    open_registration: Option<registration::Grants>,
    /// `registration.software_statement`, with its issuers' keys; kept across a reload that
    /// does not change it (with `statement_settings`).
    statements: Option<Arc<statement::Statements>>,
    statement_settings: String,
    /// By route index; None for a route without `token`.
    routes: Vec<Option<Policy>>,
    /// By route index: the headers set from the token's claims (header, claim).
    route_headers: Vec<Vec<(http::HeaderName, String)>>,
    dpop: Option<ProofChecker>,
    metrics: Arc<Metrics>,
    /// The shared state (Redis): DPoP proofs are recorded there too, so that a proof replayed
    /// to another instance is refused.
    shared: Option<Arc<dyn SharedRecord>>,
    single_use: bool,
    /// The DPoP replay record, kept across reloads (also those that turn DPoP off).
    /// The DPoP replay record: one per process, kept across reloads (also while DPoP is off)
    /// and handed over in a binary upgrade.
    replay_record: Arc<replay::ReplayRecord>,
    /// `tokens.leeway`: a single-use token is accepted, so kept in the ledger, until `exp` +
    /// this.
    leeway: f64,
}

impl Authoriser {
    /// Builds the authoriser and, when a JWKS is configured, its key store (returned so that
    /// the server can run its background refresh).
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
        shared: Option<Arc<dyn SharedRecord>>,
        previous: Option<&Authoriser>,
    ) -> Result<(Self, Option<Arc<KeyStore>>), crate::config::Problem> {
        let mut store = None;
        let token_settings = format!("{:?}", (&config.issuer, &config.jwks, &config.tokens));
        let kept = previous.filter(|p| p.token_settings == token_settings);
        let validator = match (kept, &config.jwks, &config.issuer) {
            (Some(p), _, _) => {
                store = p.key_store.clone();
                p.validator.clone()
            }
            (None, Some(jwks), Some(issuer)) => {
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
                let keys = Arc::new(KeyStore::new(
                    jwks,
                    issuer,
                    metrics.clone(),
                    Some(readiness),
                    on_removed,
                )?);
                store = Some(keys.clone());
                Some(Arc::new(TokenValidator::new(
                    keys,
                    cache,
                    issuer.clone(),
                    config.tokens.leeway,
                    config.tokens.algorithms.clone(),
                    metrics.clone(),
                )))
            }
            _ => None,
        };
        let mut audiences = config.issuer.iter().cloned().collect::<Vec<_>>();
        if let Some(uri) = &config.registration.endpoint_uri {
            audiences.insert(0, uri.clone());
        }
        let registration = Policy {
            audiences,
            check_audience: config.registration.require_initial_access_token_audience,
            scopes: vec![config.registration.scope.clone()],
            require_certificate_binding: config.registration.require_certificate_binding,
            require_proof_of_possession: config.registration.require_proof_of_possession,
        };
        let (introspector, introspection_settings) = introspect::Introspector::of(
            config,
            previous.map(|p| (p.introspection_settings.as_str(), &p.introspector)),
            &metrics,
        )?;
        let (statements, statement_settings) = statement::Statements::of(
            config,
            previous.map(|p| (p.statement_settings.as_str(), &p.statements)),
            &metrics,
        )?;
        let routes = config
            .routes
            .iter()
            .map(|r| {
                r.token.as_ref().map(|t| Policy {
                    audiences: t.audience.clone(),
                    check_audience: !t.audience.is_empty(),
                    scopes: t.scope.clone(),
                    require_certificate_binding: false,
                    require_proof_of_possession: t.require_proof_of_possession,
                })
            })
            .collect();
        let mut dpop = config
            .dpop
            .as_ref()
            .map(|d| ProofChecker::new(d, config.tokens.leeway, metrics.clone()))
            .transpose()?;
        // Across a reload, proofs already seen stay seen and nonces already given stay good;
        // the record is kept while DPoP is off, for when it comes back.
        let kept_record = previous.map(|p| p.replay_record.clone());
        if let (Some(new), Some(old)) = (dpop.as_mut(), previous.and_then(|p| p.dpop.as_ref())) {
            new.adopt(old);
        } else if let (Some(new), Some(record)) = (dpop.as_mut(), kept_record.clone()) {
            new.adopt_record(record);
        }
        if let (Some(checker), true) = (dpop.as_mut(), shared.is_some()) {
            // Every instance records proofs in Redis: the record outlives this process.
            checker.share_record();
        }
        let replay_record = dpop
            .as_ref()
            .map(ProofChecker::record)
            .or(kept_record)
            .unwrap_or_else(|| {
                // DPoP off: an empty record for when it comes on (the defaults size it then).
                Arc::new(replay::ReplayRecord::new(
                    100_000,
                    60.0 + config.tokens.leeway.as_secs_f64(),
                    cache::now_secs(),
                ))
            });
        if previous.is_some_and(|p| p.dpop.is_some()) {
            // Nonces: kept from the checker adopted above.
        } else if let (Some(checker), Some(redis)) = (dpop.as_mut(), shared.as_ref()) {
            // Several instances: one nonce key, so that a nonce from one is good on another.
            match redis.shared_secret("dpop-nonce") {
                Ok(secret) => checker.use_nonce_secret(&secret),
                Err(e) => tracing::warn!(
                    target: "bindgate::state",
                    "DPoP nonces: no shared key from Redis ({e}); this instance's nonces are its own"
                ),
            }
        }
        Ok((
            Authoriser {
                master_tokens: config.registration.master_tokens.clone(),
                session_tokens: config.session_store.api_tokens.clone(),
                validator,
                key_store: store.clone(),
                token_settings,
                registration,
                registration_rules: registration::Rules::of(&config.registration),
                grant_scopes: config.registration.grant_scopes,
                // Validation refused the configuration if a value is not a grant type.
                open_registration: config.registration.open.as_ref().and_then(|open| {
                    registration::Grants::of_grant_types(open.iter().map(String::as_str))
                }),
                statements,
                statement_settings,
                token_format: config.tokens.format,
                introspector,
                introspection_settings,
                routes,
                route_headers: config
                    .routes
                    .iter()
                    .map(|r| {
                        r.token
                            .as_ref()
                            .map(|t| t.headers.clone())
                            .unwrap_or_default()
                    })
                    .collect(),
                dpop,
                metrics,
                shared,
                single_use: config.registration.single_use,
                replay_record,
                leeway: config.tokens.leeway.as_secs_f64(),
            },
            store,
        ))
    }

    /// The DPoP replay record (the same for the whole process).
    pub fn replay_record(&self) -> Arc<replay::ReplayRecord> {
        self.replay_record.clone()
    }

    /// With DPoP on several instances: takes the nonce key every instance shares from Redis if
    /// this instance does not have it yet (it started while Redis was down). Blocking.
    pub fn adopt_shared_nonce_key(&self) {
        let (Some(checker), Some(redis)) = (&self.dpop, self.shared.as_ref()) else {
            return;
        };
        if checker.has_shared_nonce_key() {
            return;
        }
        match redis.shared_secret("dpop-nonce") {
            Ok(secret) => {
                checker.use_nonce_secret(&secret);
                tracing::info!(target: "bindgate::state", "DPoP nonces: the shared key from Redis is in use");
            }
            Err(e) => {
                tracing::debug!(target: "bindgate::state", "DPoP nonces: no shared key yet ({e})")
            }
        }
    }

    /// The permit for `op`, or the rejection: what each operation needs is
    /// [`Operation::credential`], in one place. `session` is the session-store request as read
    /// with the operation.
    pub async fn authorise(
        &self,
        op: &Operation,
        session: Option<SessionRequest>,
        facts: &Facts<'_>,
    ) -> Result<Permit, Denial> {
        let credential = op.credential();
        let policy = match credential {
            Credential::None => None,
            Credential::SessionStoreToken => Some(metrics::Policy::SessionStore),
            Credential::AccessToken { .. } => Some(metrics::Policy::Route),
            _ => Some(metrics::Policy::Registration),
        };
        let registry = |(grant, token)| match op {
            Operation::Registry(op) => Ok(Permit::Registry(RegistryPermit {
                op: op.clone(),
                grant,
                token,
            })),
            _ => Err(no_policy()),
        };
        let outcome = match (credential, op) {
            (Credential::None, Operation::Forward { route }) => {
                return Ok(Permit::Route(RoutePermit {
                    route: *route,
                    protected: false,
                    claim_headers: Vec::new(),
                    token: None,
                }))
            }
            (Credential::InitialAccessOrMaster, _) => {
                self.initial_access(facts).await.and_then(registry)
            }
            (Credential::Master, _) => self.master(facts).map(|g| (g, None)).and_then(registry),
            (Credential::RegistrationAccessOrMaster, _) => self
                .registration_access(facts)
                .map(|g| (g, None))
                .and_then(registry),
            (Credential::SessionStoreToken, Operation::Sessions(_)) => {
                self.session_store(facts).and_then(|()| {
                    let request = session.ok_or_else(no_policy)?;
                    Ok(Permit::Sessions(SessionPermit { request }))
                })
            }
            (Credential::AccessToken { route }, Operation::Protected { .. }) => self
                .route_token(route, facts)
                .await
                .map(|(claim_headers, token)| {
                    Permit::Route(RoutePermit {
                        route,
                        protected: true,
                        claim_headers,
                        token: Some(token),
                    })
                }),
            // The table above pairs every operation with its credential.
            _ => Err(no_policy()),
        };
        // A registration is counted once its body is judged too (`judge_registration`).
        let judged_later = matches!(op, Operation::Registry(RegistryOp::Register));
        if let Some(policy) = policy {
            match &outcome {
                Ok(_) if judged_later => {}
                Ok(_) => self.metrics.accepted(policy),
                Err(r) => self.metrics.rejected(policy, r.reason()),
            }
        }
        outcome
    }

    /// No credentials: RFC 6750's bare challenge, and DPoP's where DPoP is accepted.
    fn missing(&self) -> Denial {
        Denial::MissingCredentials {
            dpop_algs: self.dpop.as_ref().map(|d| d.algs.clone()),
        }
    }

    /// `POST` on the registration collection: a master token or an initial access token (the
    /// full registration scope, or with `grant_scopes` narrowed ones); with `open`, no
    /// credential at all. What the body may ask for is judged once it is read
    /// ([`Authoriser::judge_registration`]).
    async fn initial_access(
        &self,
        facts: &Facts<'_>,
    ) -> Result<(RegistryGrant, Option<Arc<Entry>>), Denial> {
        let Some(presented) = bearer::access_token(facts.headers, facts.query)? else {
            return match self.open_registration {
                Some(grants) => Ok((RegistryGrant::Open { grants }, None)),
                None => Err(self.missing()),
            };
        };
        let digest = SecretDigest::of(presented.token.as_bytes());
        if presented.scheme == Scheme::Bearer && self.master_tokens.contains_digest(&digest) {
            return Ok((RegistryGrant::MasterToken, None));
        }
        let entry = self
            .access_token(&self.registration, presented, &digest, facts)
            .await?;
        let reach = registration::reach_of_scopes(
            &entry.verified.scopes,
            &self.registration_rules.full_scope,
            self.grant_scopes,
        )
        .ok_or_else(|| Denial::InsufficientScope {
            scope: self.registration_rules.full_scope.clone(),
        })?;
        let ledger = self
            .single_use
            .then(|| Ledger::of_token(&entry.verified, presented.token, self.leeway));
        Ok((
            RegistryGrant::InitialAccessToken { ledger, reach },
            Some(entry),
        ))
    }

    /// A protected route: an access token that satisfies the route's policy; the headers its
    /// claims give the upstream.
    async fn route_token(
        &self,
        route: usize,
        facts: &Facts<'_>,
    ) -> Result<(Vec<(http::HeaderName, http::HeaderValue)>, Arc<Entry>), Denial> {
        let Some(Some(policy)) = self.routes.get(route) else {
            // The router names protected routes only: nothing to check means a bug, refused.
            return Err(Denial::InvalidToken(
                "No token policy for this route".into(),
            ));
        };
        let presented =
            bearer::access_token(facts.headers, facts.query)?.ok_or_else(|| self.missing())?;
        let digest = SecretDigest::of(presented.token.as_bytes());
        let entry = self.access_token(policy, presented, &digest, facts).await?;
        policy.check_scope(&entry.verified)?;
        match self.route_headers.get(route) {
            Some(wanted) if !wanted.is_empty() => {
                Ok((claim_headers::of(&entry.verified, wanted)?, entry))
            }
            _ => Ok((Vec::new(), entry)),
        }
    }

    /// A JWT access token against `policy`: signature and claims (cached), clock, audience,
    /// binding by certificate (RFC 8705) and by DPoP key (RFC 9449). The scope is the
    /// caller's to check, last (RFC 6750 §3.1 answers it with 403).
    async fn access_token(
        &self,
        policy: &Policy,
        presented: Presented<'_>,
        digest: &SecretDigest,
        facts: &Facts<'_>,
    ) -> Result<Arc<Entry>, Denial> {
        let dpop_scheme = presented.scheme == Scheme::Dpop;
        let Some(checker) = self.dpop.as_ref() else {
            if dpop_scheme {
                return Err(Denial::InvalidToken(
                    "DPoP is not enabled: present the token with the Bearer scheme".into(),
                ));
            }
            return self.bearer_only(policy, presented, digest, facts).await;
        };
        // RFC 9449 §7.1: a token presented with the DPoP scheme is answered with its scheme.
        let in_scheme = |r: Denial| match r {
            Denial::InvalidToken(why) if dpop_scheme => Denial::InvalidDpopToken {
                why,
                algs: checker.algs.clone(),
            },
            r => r,
        };
        let entry = self
            .verify_token(presented.token, digest)
            .await
            .map_err(in_scheme)?;
        let now = now_secs();
        token::check(&entry.verified, policy, facts.peer, now, self.leeway).map_err(in_scheme)?;
        match (&entry.verified.jkt, presented.scheme) {
            (Some(jkt), Scheme::Dpop) => {
                let proof = crate::telemetry::step(
                    "dpop proof",
                    self.proof(checker, presented.token, facts, now),
                )
                .await?;
                if !jkt.matches(&proof.jkt) {
                    return Err(Denial::InvalidDpopProof {
                        why: "The DPoP proof key is not the key the token is bound to (cnf jkt)"
                            .into(),
                        algs: checker.algs.clone(),
                    });
                }
            }
            // RFC 9449 §7.2: a DPoP-bound token is never accepted as a bearer token.
            (Some(_), Scheme::Bearer) => return Err(Denial::InvalidToken(
                "A DPoP-bound token (cnf jkt) must be presented with the DPoP scheme and a proof"
                    .into(),
            )),
            (None, Scheme::Dpop) => {
                return Err(Denial::InvalidDpopToken {
                    why: "The access token is not DPoP-bound (no cnf jkt)".into(),
                    algs: checker.algs.clone(),
                })
            }
            (None, Scheme::Bearer) => {}
        }
        Ok(entry)
    }

    /// The request's DPoP proof, checked for this request and token; with shared state, also
    /// recorded there (`SET NX` for the replay window), so that another instance refuses it.
    async fn proof(
        &self,
        checker: &ProofChecker,
        token: &str,
        facts: &Facts<'_>,
        now: f64,
    ) -> Result<ValidProof, Denial> {
        let proof = checker
            .header(facts.headers)?
            .ok_or_else(|| checker.refused("missing", "A DPoP proof (DPoP header) is required"))?;
        let valid = checker.check(
            proof,
            &ProofRequest {
                method: facts.method,
                path: facts.path,
                access_token: Some(token),
                now,
            },
        )?;
        if let Some(shared) = &self.shared {
            let key = hex::encode(valid.replay_key);
            match shared.first_use(&key, checker.window()).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(checker.refused("replay", "The DPoP proof was already used (jti)"))
                }
                Err(e) => {
                    return Err(Denial::RecordUnavailable {
                        cause: Some(format!("DPoP replay check: {e}")),
                    })
                }
            }
        }
        Ok(valid)
    }

    /// Listing every client: a master token only.
    fn master(&self, facts: &Facts<'_>) -> Result<RegistryGrant, Denial> {
        let token =
            bearer::bearer_token(facts.headers, facts.query)?.ok_or_else(|| self.missing())?;
        if self.master_tokens.contains(token.as_bytes()) {
            Ok(RegistryGrant::MasterToken)
        } else {
            Err(Denial::InvalidToken(
                "Listing clients requires a master token".into(),
            ))
        }
    }

    /// A client's own URI: a master token, or a bearer token that the target checks as that
    /// client's registration access token.
    fn registration_access(&self, facts: &Facts<'_>) -> Result<RegistryGrant, Denial> {
        let token =
            bearer::bearer_token(facts.headers, facts.query)?.ok_or_else(|| self.missing())?;
        let digest = SecretDigest::of(token.as_bytes());
        if self.master_tokens.contains_digest(&digest) {
            return Ok(RegistryGrant::MasterToken);
        }
        Ok(RegistryGrant::ClientToken {
            digest: *digest.bytes(),
        })
    }

    fn session_store(&self, facts: &Facts<'_>) -> Result<(), Denial> {
        let token = bearer::bearer_token(facts.headers, facts.query)?
            .ok_or(Denial::MissingCredentials { dpop_algs: None })?;
        if self.session_tokens.contains(token.as_bytes()) {
            Ok(())
        } else {
            Err(Denial::InvalidToken(
                "Invalid session store API token".into(),
            ))
        }
    }
}

/// An operation paired with a credential it does not take: a bug, refused.
fn no_policy() -> Denial {
    Denial::InvalidToken("No policy for this operation".into())
}
