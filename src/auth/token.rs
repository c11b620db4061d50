//! Validation of an access token (an initial access token or a protected route's): compact JWS,
//! allowed algorithm, signature with the provider's key and claims — with the verified-token
//! cache in front of that expensive part — then, on every request, the clock, the policy and
//! the certificate binding.

use std::sync::Arc;

use super::cache::{now_secs, Entry, VerifiedCache};
use super::claims::{check_time, verify_claims, Policy, Verified};
use super::denial::Denial;
use super::jwks::{KeyStore, Lookup};
use super::jws::{split, typ_accepted, verify_signature, Header};
use crate::certificate::PeerCertificate;
use crate::config::JwsAlgorithm;
use crate::metrics::Metrics;

pub struct TokenValidator {
    pub keys: Arc<KeyStore>,
    cache: Option<Arc<VerifiedCache>>,
    issuer: String,
    leeway_secs: f64,
    algorithms: Vec<JwsAlgorithm>,
    metrics: Arc<Metrics>,
}

/// What is checked on every request, for a JWT and an introspected token alike: the clock,
/// the policy's audience and binding requirements, the certificate binding.
pub fn check(
    v: &Verified,
    policy: &Policy,
    peer: Option<&PeerCertificate>,
    now: f64,
    leeway_secs: f64,
) -> Result<(), Denial> {
    check_time(v, now, leeway_secs)?;
    policy.check_claims(v)?;
    if let Some(bound) = &v.x5t_s256 {
        // RFC 8705 §3: the connection's certificate must be the one the token is bound to.
        if !peer.is_some_and(|p| bound.matches(p.sha256())) {
            return Err(Denial::CertificateMismatch);
        }
    }
    Ok(())
}

fn invalid(why: &str) -> Denial {
    Denial::InvalidToken(why.to_string())
}

impl TokenValidator {
    pub fn new(
        keys: Arc<KeyStore>,
        cache: Option<Arc<VerifiedCache>>,
        issuer: String,
        leeway: std::time::Duration,
        algorithms: Vec<JwsAlgorithm>,
        metrics: Arc<Metrics>,
    ) -> Self {
        TokenValidator {
            keys,
            cache,
            issuer,
            leeway_secs: leeway.as_secs_f64(),
            algorithms,
            metrics,
        }
    }

    /// The verified token (whose SHA-256 is `digest`), from the cache or verified now;
    /// refetches the key set once when the token names an unknown key.
    pub async fn verified(&self, token: &str, digest: &[u8; 32]) -> Result<Arc<Entry>, Denial> {
        if let Some(entry) = self.verified_now(token, digest)? {
            return Ok(entry);
        }
        crate::telemetry::step("jwks fetch", self.keys.refetch_for_unknown_kid()).await;
        self.verified_now(token, digest)?
            .ok_or_else(|| invalid("Unknown signing key"))
    }

    /// The verified token with the keys held now; None when it names an unknown key.
    pub fn verified_now(
        &self,
        token: &str,
        digest: &[u8; 32],
    ) -> Result<Option<Arc<Entry>>, Denial> {
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
        if let Some(entry) = cached {
            self.metrics.verified_cache_hit.inc();
            return Ok(Some(entry));
        }
        if self.cache.is_some() {
            self.metrics.verified_cache_miss.inc();
        }
        let epoch = self.cache.as_ref().map(|c| c.epoch()).unwrap_or(0);
        let Some(entry) = self.verify(token)? else {
            return Ok(None);
        };
        let entry = Arc::new(entry);
        if let Some(cache) = &self.cache {
            cache.insert(*digest, entry.clone(), now_secs(), epoch);
        }
        Ok(Some(entry))
    }

    /// What is checked on every request before the DPoP binding and the scope, cached or not:
    /// the clock, the policy's audience and binding requirements, the certificate binding.
    pub fn check(
        &self,
        v: &Verified,
        policy: &Policy,
        peer: Option<&PeerCertificate>,
        now: f64,
    ) -> Result<(), Denial> {
        check(v, policy, peer, now, self.leeway_secs)
    }

    /// The leeway, for checks made elsewhere (DPoP proofs).
    pub fn leeway_secs(&self) -> f64 {
        self.leeway_secs
    }

    /// Signature and time-independent claims, with the key that verified them; `Ok(None)`
    /// when the kid is unknown.
    pub fn verify(&self, token: &str) -> Result<Option<Entry>, Denial> {
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
        let verified = verify_claims(&jws.payload, &self.issuer)?;
        Ok(Some(Entry {
            verified,
            kid: header.kid.map(|k| k.into_owned()),
            key: key.fingerprint,
        }))
    }
}
