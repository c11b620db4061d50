//! Validation of an initial access token: compact JWS, allowed algorithm, signature with the
//! provider's key, claims, clock, certificate binding, scope — with the verified-token cache in
//! front of the expensive part.

use std::sync::Arc;
use subtle::ConstantTimeEq;

use super::cache::{now_secs, Entry, VerifiedCache};
use super::claims::{check_time, verify_claims, CertificateBinding, Rules, Verified};
use super::jwks::{KeyStore, Lookup};
use super::jws::{split, typ_accepted, verify_signature, Header};
use crate::certificate::PeerCertificate;
use crate::config::JwsAlgorithm;
use crate::metrics::Metrics;
use crate::rejection::Rejection;

pub struct TokenValidator {
    pub keys: Arc<KeyStore>,
    cache: Option<Arc<VerifiedCache>>,
    rules: Rules,
    algorithms: Vec<JwsAlgorithm>,
    metrics: Arc<Metrics>,
}

/// The result of validating with the keys held now.
pub enum Attempt {
    Valid,
    /// The token names a kid no key has: a refetch may bring it.
    UnknownKey,
}

fn invalid(why: &str) -> Rejection {
    Rejection::InvalidToken(why.to_string())
}

impl TokenValidator {
    pub fn new(
        keys: Arc<KeyStore>,
        cache: Option<Arc<VerifiedCache>>,
        rules: Rules,
        algorithms: Vec<JwsAlgorithm>,
        metrics: Arc<Metrics>,
    ) -> Self {
        TokenValidator {
            keys,
            cache,
            rules,
            algorithms,
            metrics,
        }
    }

    /// Validates `token` (whose SHA-256 is `digest`) for a request on a connection with client
    /// certificate `peer`; refetches the key set once when the token names an unknown key.
    pub async fn validate(
        &self,
        token: &str,
        digest: &[u8; 32],
        peer: Option<&PeerCertificate>,
    ) -> Result<(), Rejection> {
        match self.validate_now(token, digest, peer, now_secs())? {
            Attempt::Valid => Ok(()),
            Attempt::UnknownKey => {
                self.keys.refetch_for_unknown_kid().await;
                match self.validate_now(token, digest, peer, now_secs())? {
                    Attempt::Valid => Ok(()),
                    Attempt::UnknownKey => Err(invalid("Unknown signing key")),
                }
            }
        }
    }

    /// Validation with the keys held now, at time `now` (seconds since the epoch).
    pub fn validate_now(
        &self,
        token: &str,
        digest: &[u8; 32],
        peer: Option<&PeerCertificate>,
        now: f64,
    ) -> Result<Attempt, Rejection> {
        let cached = self.cache.as_ref().and_then(|c| {
            let entry = c.get(digest)?;
            // A hit is only as good as its key: replaced or withdrawn, the token is verified
            // again (and fails against the new key).
            if self.keys.vouches_for(entry.kid.as_deref(), &entry.key) {
                Some(entry)
            } else {
                self.metrics.verified_cache_revoked.inc();
                c.remove(digest);
                None
            }
        });
        let entry = match cached {
            Some(entry) => {
                self.metrics.verified_cache_hit.inc();
                entry
            }
            None => {
                if self.cache.is_some() {
                    self.metrics.verified_cache_miss.inc();
                }
                let epoch = self.cache.as_ref().map(|c| c.epoch()).unwrap_or(0);
                let entry = match self.verify(token)? {
                    Some(e) => Arc::new(e),
                    None => return Ok(Attempt::UnknownKey),
                };
                if let Some(cache) = &self.cache {
                    cache.insert(*digest, entry.clone(), now, epoch);
                }
                entry
            }
        };
        let verified = &entry.verified;
        self.check_per_request(verified, peer, now)?;
        Ok(Attempt::Valid)
    }

    /// What is checked on every request, cached or not: clock, binding, scope.
    fn check_per_request(
        &self,
        v: &Verified,
        peer: Option<&PeerCertificate>,
        now: f64,
    ) -> Result<(), Rejection> {
        check_time(v, now, self.rules.leeway_secs)?;
        if let Some(bound) = &v.x5t_s256 {
            // RFC 8705 §3: the connection's certificate must be the one the token is bound to.
            let matches = match bound {
                CertificateBinding::Thumbprint(t) => {
                    peer.is_some_and(|p| bool::from(p.sha256().ct_eq(t)))
                }
                CertificateBinding::Unmatchable => false,
            };
            if !matches {
                return Err(Rejection::CertificateMismatch);
            }
        }
        if !v.has_scope {
            return Err(Rejection::InsufficientScope {
                scope: self.rules.scope.clone(),
            });
        }
        Ok(())
    }

    /// Signature and time-independent claims, with the key that verified them; `Ok(None)`
    /// when the kid is unknown.
    pub fn verify(&self, token: &str) -> Result<Option<Entry>, Rejection> {
        let jws = split(token).ok_or_else(|| invalid("Malformed JWT"))?;
        let header: Header =
            serde_json::from_slice(&jws.header).map_err(|_| invalid("Malformed JWT header"))?;
        if header.crit.is_some() || header.b64.is_some() {
            return Err(invalid("Unsupported critical JWS header parameter"));
        }
        let alg = JwsAlgorithm::from_name(&header.alg)
            .filter(|a| self.algorithms.contains(a))
            .ok_or_else(|| invalid("The JWS algorithm is not accepted"))?;
        if !typ_accepted(header.typ.as_deref()) {
            return Err(invalid("Unexpected token type (typ)"));
        }
        let key = match self.keys.lookup(header.kid.as_deref(), alg)? {
            Lookup::Found(k) => k,
            Lookup::Unknown => return Ok(None),
        };
        if !verify_signature(alg, &key, jws.signing_input, &jws.signature) {
            return Err(invalid("Invalid token signature"));
        }
        let verified = verify_claims(&jws.payload, &self.rules)?;
        Ok(Some(Entry {
            verified,
            kid: header.kid.map(|k| k.into_owned()),
            key: key.fingerprint,
        }))
    }
}
