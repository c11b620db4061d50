//! DPoP proofs (RFC 9449 §4.3): one `DPoP` header holding one compact JWS of type `dpop+jwt`,
//! signed by the public key in its own header, for this method and URI, fresh, never seen
//! before, bound to the access token it travels with (`ath`) — and the RFC 7638 thumbprint of
//! that key, which a DPoP-bound token names in `cnf.jkt`.

use crate::config::Problem;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{HeaderMap, Method};
use moka::sync::Cache;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use super::cache::now_secs;
use super::denial::Denial;
use super::jwk::{parse_jwk, Curve, KeyMaterial, VerifyKey};
use super::jws::{split, verify_signature};
use super::replay::{Recorded, ReplayRecord};
use crate::config::{Dpop, JwsAlgorithm};
use crate::metrics::Metrics;
use crate::target::split_uri;

/// Longest `jti` taken (RFC 9449 leaves it open; 256 characters hold any sane identifier).
const MAX_JTI: usize = 256;

/// Private and symmetric JWK members: a proof's key must have none of them (RFC 9449 §4.3).
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// What a valid proof establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidProof {
    /// SHA-256 of the RFC 7638 thumbprint input of the proof's key: `cnf.jkt`, decoded.
    pub jkt: [u8; 32],
    /// SHA-256(jkt ‖ jti): what the replay caches record.
    pub replay_key: [u8; 32],
}

/// The request a proof must be for.
pub struct ProofRequest<'a> {
    pub method: &'a Method,
    /// The normalised path the request was routed on.
    pub path: &'a str,
    /// The access token the proof travels with (its `ath`), when there is one.
    pub access_token: Option<&'a str>,
    pub now: f64,
}

/// The proof checker of one configuration: rules, replay cache, nonce key.
pub struct ProofChecker {
    origins: Vec<String>,
    max_age: f64,
    leeway: f64,
    algorithms: Vec<JwsAlgorithm>,
    require_nonce: bool,
    /// `algs="..."` of the challenges.
    pub algs: Arc<str>,
    /// SHA-256(jkt ‖ jti) of every proof accepted within `max_age` + leeway; shared with the
    /// checker a reload replaces, and kept while DPoP is off.
    seen: Arc<ReplayRecord>,
    /// Whether the record is shared by every instance (Redis): else a proof issued before
    /// this record began is refused (it may have been used on a process whose record is gone).
    shared_record: bool,
    /// Proof keys already parsed and checked, by their exact `jwk` text: a client signs its
    /// proofs with one key, so a proof costs its signature, not a key parse (`check_key`).
    keys: Cache<Box<str>, Arc<ProofKey>>,
    /// Signs and checks server nonces; replaced by the key every instance shares once Redis
    /// gives it (at start, or when Redis answers again).
    nonce_key: arc_swap::ArcSwap<ring::hmac::Key>,
    /// Whether `nonce_key` is the shared one.
    nonce_key_shared: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
    /// How long a proof is acceptable: `max_age` + leeway (the replay window).
    window: Duration,
    /// `replay_cache_entries`.
    capacity: u64,
}

/// A proof key and its RFC 7638 thumbprint.
struct ProofKey {
    key: VerifyKey,
    jkt: [u8; 32],
}

/// A refusal and its metric label.
type Refusal = (&'static str, Denial);

#[derive(Deserialize)]
struct ProofHeader<'a> {
    #[serde(borrow)]
    typ: Option<Cow<'a, str>>,
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow)]
    jwk: Option<&'a RawValue>,
    crit: Option<serde::de::IgnoredAny>,
    b64: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ProofClaims<'a> {
    #[serde(borrow)]
    jti: Option<&'a RawValue>,
    #[serde(borrow)]
    htm: Option<&'a RawValue>,
    #[serde(borrow)]
    htu: Option<&'a RawValue>,
    #[serde(borrow)]
    iat: Option<&'a RawValue>,
    #[serde(borrow)]
    ath: Option<&'a RawValue>,
    #[serde(borrow)]
    nonce: Option<&'a RawValue>,
}

fn invalid(why: &str, algs: &Arc<str>) -> Denial {
    Denial::InvalidDpopProof {
        why: why.to_string(),
        algs: algs.clone(),
    }
}

fn string<'a>(raw: Option<&'a RawValue>) -> Option<Cow<'a, str>> {
    let raw = raw?;
    if !raw.get().starts_with('"') {
        return None;
    }
    serde_json::from_str::<Cow<'a, str>>(raw.get()).ok()
}

impl ProofChecker {
    pub fn new(config: &Dpop, leeway: Duration, metrics: Arc<Metrics>) -> Result<Self, Problem> {
        let rng = ring::rand::SystemRandom::new();
        let nonce_key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .map_err(|_| Problem::new("dpop", "no random source for the nonce key"))?;
        let window = config.max_age.saturating_add(leeway);
        Ok(ProofChecker {
            origins: config.origins.clone(),
            max_age: config.max_age.as_secs_f64(),
            leeway: leeway.as_secs_f64(),
            algorithms: config.algorithms.clone(),
            require_nonce: config.require_nonce,
            algs: config
                .algorithms
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(" ")
                .into(),
            seen: Arc::new(ReplayRecord::new(
                config.replay_cache_entries,
                window.as_secs_f64(),
                now_secs(),
            )),
            shared_record: false,
            keys: Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            nonce_key: arc_swap::ArcSwap::from_pointee(nonce_key),
            nonce_key_shared: std::sync::atomic::AtomicBool::new(false),
            metrics,
            window,
            capacity: config.replay_cache_entries,
        })
    }

    /// Signs and checks nonces with `secret` (shared by every instance on one Redis, so that a
    /// nonce one instance gave is good on another).
    pub fn use_nonce_secret(&self, secret: &[u8]) {
        self.nonce_key.store(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            secret,
        )));
        self.nonce_key_shared
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the nonce key is the one every instance shares.
    pub fn has_shared_nonce_key(&self) -> bool {
        self.nonce_key_shared
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes over the replay record and the nonce key of the checker a reload replaces.
    pub fn adopt(&mut self, old: &ProofChecker) {
        self.adopt_record(old.seen.clone());
        self.nonce_key.store(old.nonce_key.load_full());
        self.nonce_key_shared.store(
            old.has_shared_nonce_key(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Takes over `record` (what was recorded stays recorded), with this checker's size and
    /// window.
    pub fn adopt_record(&mut self, record: Arc<ReplayRecord>) {
        let capacity = self.capacity;
        record.configure(capacity, self.window.as_secs_f64());
        self.seen = record;
    }

    /// The replay record, to be kept across a reload that turns DPoP off.
    pub fn record(&self) -> Arc<ReplayRecord> {
        self.seen.clone()
    }

    /// The record is shared by every instance (Redis): proofs from before it began are fine.
    pub fn share_record(&mut self) {
        self.shared_record = true;
    }

    /// How long a proof is acceptable (`max_age` + leeway): a replay cache must remember
    /// a proof this long.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// A refusal of the proof, counted under `reason`.
    pub fn refused(&self, reason: &'static str, why: &str) -> Denial {
        self.metrics
            .dpop_proofs
            .with_label_values(&["refused", reason])
            .inc();
        invalid(why, &self.algs)
    }

    /// The one `DPoP` header of the request: None when there is none.
    pub fn header<'h>(&self, headers: &'h HeaderMap) -> Result<Option<&'h str>, Denial> {
        let mut values = headers.get_all("dpop").iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(self.refused("header", "More than one DPoP header"));
        }
        first
            .to_str()
            .map(|v| Some(v.trim()))
            .map_err(|_| self.refused("header", "The DPoP header is not a compact JWS"))
    }

    /// Checks `proof` (the `DPoP` header) for `req` (RFC 9449 §4.3); counts the outcome.
    pub fn check(&self, proof: &str, req: &ProofRequest) -> Result<ValidProof, Denial> {
        let outcome = self.check_proof(proof, req);
        let (result, reason) = match &outcome {
            Ok(_) => ("accepted", "-"),
            Err((reason, _)) => ("refused", *reason),
        };
        self.metrics
            .dpop_proofs
            .with_label_values(&[result, reason])
            .inc();
        outcome.map_err(|(_, r)| r)
    }

    fn check_proof(&self, proof: &str, req: &ProofRequest) -> Result<ValidProof, Refusal> {
        let bad = |reason: &'static str, why: &str| (reason, invalid(why, &self.algs));
        if proof.bytes().filter(|&b| b == b'.').count() != 2 {
            return Err(bad("malformed", "The DPoP header is not one compact JWS"));
        }
        let jws =
            split(proof).ok_or_else(|| bad("malformed", "The DPoP proof is not a compact JWS"))?;
        let header: ProofHeader = serde_json::from_slice(&jws.header)
            .map_err(|_| bad("malformed", "The DPoP proof header is malformed"))?;
        if header.crit.is_some() || header.b64.is_some() {
            return Err(bad(
                "header",
                "Unsupported critical DPoP proof header parameter",
            ));
        }
        if !header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
        {
            return Err(bad("typ", "The DPoP proof type (typ) must be dpop+jwt"));
        }
        let alg = JwsAlgorithm::from_name(&header.alg)
            .filter(|a| self.algorithms.contains(a))
            .ok_or_else(|| bad("alg", "The DPoP proof algorithm is not accepted"))?;
        let key = self.proof_key(header.jwk).map_err(|r| ("jwk", r))?;
        if !key.key.accepts(alg) {
            return Err(bad(
                "alg",
                "The DPoP proof key does not match its algorithm",
            ));
        }
        if !verify_signature(alg, &key.key, jws.signing_input, &jws.signature) {
            return Err(bad("signature", "Invalid DPoP proof signature"));
        }
        let claims: ProofClaims = serde_json::from_slice(&jws.payload)
            .map_err(|_| bad("malformed", "The DPoP proof claims are not a JSON object"))?;
        let jti = string(claims.jti)
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI)
            .ok_or_else(|| bad("jti", "The DPoP proof has no valid jti"))?;
        let htm = string(claims.htm).ok_or_else(|| bad("htm", "The DPoP proof has no htm"))?;
        if htm != req.method.as_str() {
            return Err(bad(
                "htm",
                "The DPoP proof htm does not match the request method",
            ));
        }
        let htu = string(claims.htu).ok_or_else(|| bad("htu", "The DPoP proof has no htu"))?;
        self.check_htu(&htu, req.path).map_err(|r| ("htu", r))?;
        let iat = claims
            .iat
            .filter(|r| {
                r.get()
                    .as_bytes()
                    .first()
                    .is_some_and(|b| b.is_ascii_digit())
            })
            .and_then(|r| serde_json::from_str::<f64>(r.get()).ok())
            .filter(|n| n.is_finite())
            .ok_or_else(|| bad("iat", "The DPoP proof has no numeric iat"))?;
        if iat < req.now - self.max_age {
            return Err(bad("iat", "The DPoP proof is too old (iat)"));
        }
        if iat > req.now + self.leeway {
            return Err(bad("iat", "The DPoP proof is issued in the future (iat)"));
        }
        if let Some(token) = req.access_token {
            let ath = string(claims.ath)
                .ok_or_else(|| bad("ath", "The DPoP proof has no ath for the access token"))?;
            let expected = URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
            if !bool::from(subtle::ConstantTimeEq::ct_eq(
                ath.as_bytes(),
                expected.as_bytes(),
            )) {
                return Err(bad(
                    "ath",
                    "The DPoP proof ath does not match the access token",
                ));
            }
        }
        if self.require_nonce {
            let fresh = string(claims.nonce).is_some_and(|n| self.nonce_valid(&n, req.now));
            if !fresh {
                return Err((
                    "nonce",
                    Denial::UseDpopNonce {
                        nonce: self.nonce(req.now),
                        algs: self.algs.clone(),
                    },
                ));
            }
        }
        let jkt = key.jkt;
        // RFC 9449 §11.1: a proof is used once. Checked last, so that a refused proof does not
        // burn its jti.
        let mut h = Sha256::new();
        h.update(jkt);
        h.update(jti.as_bytes());
        let replay_key: [u8; 32] = h.finalize().into();
        // A process never accepts a proof it cannot know it has not seen.
        if !self.shared_record && iat < self.seen.began() {
            return Err(bad(
                "before_record",
                "The DPoP proof was issued before this server's replay record began (iat)",
            ));
        }
        match self.seen.record(replay_key, req.now) {
            Recorded::Fresh => {}
            Recorded::Replay => {
                return Err(bad("replay", "The DPoP proof was already used (jti)"));
            }
            Recorded::Full => {
                return Err((
                    "replay_record_full",
                    Denial::RecordUnavailable { cause: None },
                ))
            }
            // Draining after a binary upgrade: the new process holds the record now.
            Recorded::HandedOver => {
                return Err((
                    "replay_record_handed_over",
                    Denial::RecordUnavailable { cause: None },
                ))
            }
        }
        Ok(ValidProof { jkt, replay_key })
    }

    /// The proof's key, parsed once per distinct `jwk` text.
    fn proof_key(&self, jwk: Option<&RawValue>) -> Result<Arc<ProofKey>, Denial> {
        let text = jwk.map(RawValue::get).unwrap_or_default();
        if let Some(k) = self.keys.get(text) {
            return Ok(k);
        }
        let key = proof_key(jwk, &self.algs)?;
        let k = Arc::new(ProofKey {
            jkt: thumbprint(&key),
            key,
        });
        if text.len() <= 4096 {
            self.keys.insert(text.into(), k.clone());
        }
        Ok(k)
    }

    /// `htu` (RFC 9449 §4.3 check 9): an accepted origin and the request's normalised path,
    /// both compared after RFC 3986 §6.2.2–6.2.3 normalisation; no query, no fragment.
    fn check_htu(&self, htu: &str, path: &str) -> Result<(), Denial> {
        let bad = |why: &str| invalid(why, &self.algs);
        if htu.contains(['?', '#']) {
            return Err(bad("The DPoP proof htu must not hold a query or fragment"));
        }
        let (origin, htu_path) =
            split_uri(htu).ok_or_else(|| bad("The DPoP proof htu is not an http(s) URI"))?;
        if !self.origins.contains(&origin) {
            return Err(bad("The DPoP proof htu names another origin"));
        }
        let htu_path = crate::target::normalise(htu_path.as_bytes())
            .map_err(|_| bad("The DPoP proof htu path is malformed"))?;
        if htu_path != path {
            return Err(bad("The DPoP proof htu names another path"));
        }
        Ok(())
    }

    /// A server nonce: its time and an HMAC over it, valid for `max_age`.
    pub fn nonce(&self, now: f64) -> String {
        let t = (now as u64).to_be_bytes();
        let tag = ring::hmac::sign(&self.nonce_key.load(), &t);
        let mut raw = t.to_vec();
        raw.extend_from_slice(&tag.as_ref()[..16]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn nonce_valid(&self, nonce: &str, now: f64) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        if raw.len() != 24 {
            return false;
        }
        let tag = ring::hmac::sign(&self.nonce_key.load(), &raw[..8]);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &tag.as_ref()[..16],
            &raw[8..],
        )) {
            return false;
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&raw[..8]);
        let t = u64::from_be_bytes(t) as f64;
        t >= now - self.max_age && t <= now + self.leeway
    }
}

/// The proof's public key: a JWK with no private members, of a kind bindgate verifies.
fn proof_key(jwk: Option<&RawValue>, algs: &Arc<str>) -> Result<VerifyKey, Denial> {
    let bad = |why: &str| invalid(why, algs);
    let jwk = jwk.ok_or_else(|| bad("The DPoP proof has no jwk header"))?;
    let value: serde_json::Value =
        serde_json::from_str(jwk.get()).map_err(|_| bad("The DPoP proof jwk is malformed"))?;
    let object = value
        .as_object()
        .ok_or_else(|| bad("The DPoP proof jwk is not a JSON object"))?;
    if PRIVATE_MEMBERS.iter().any(|m| object.contains_key(*m)) {
        return Err(bad("The DPoP proof jwk holds private key material"));
    }
    match parse_jwk(&value) {
        Ok(Some(key)) => Ok(key),
        Ok(None) | Err(_) => Err(bad("The DPoP proof jwk is not a usable public key")),
    }
}

/// RFC 7638 §3: SHA-256 over the required members of the key, in lexicographic order, with no
/// whitespace — made from the validated key, not from the JWK text.
pub fn thumbprint(key: &VerifyKey) -> [u8; 32] {
    let b = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let json = match &key.material {
        KeyMaterial::Rsa(k) => match k.rsa() {
            Ok(rsa) => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                b(&rsa.e().to_vec()),
                b(&rsa.n().to_vec())
            ),
            Err(_) => String::new(),
        },
        KeyMaterial::Ec(point, curve) => {
            let (crv, len) = match curve {
                Curve::P256 => ("P-256", 32),
                Curve::P384 => ("P-384", 48),
            };
            let (x, y) = point[1..].split_at(len.min(point.len().saturating_sub(1)));
            format!(
                r#"{{"crv":"{crv}","kty":"EC","x":"{}","y":"{}"}}"#,
                b(x),
                b(y)
            )
        }
        KeyMaterial::Ed25519(k) => format!(
            r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
            b(&k.raw_public_key().unwrap_or_default())
        ),
    };
    Sha256::digest(json.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk = serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let key = parse_jwk(&jwk).unwrap().unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(thumbprint(&key)),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }
}
