//! JSON Web Keys (RFC 7517/7518/8037) parsed once into OpenSSL public keys.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Public};
use openssl::rsa::Rsa;
use serde::Deserialize;

use crate::config::JwsAlgorithm;

/// RSA keys shorter than this are refused (RFC 7518 §3.3 requires 2048 bits or more).
const MIN_RSA_BITS: u32 = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

/// A verification key, ready to use.
pub enum KeyMaterial {
    Rsa(PKey<Public>),
    /// The uncompressed point `04 || x || y`, checked to be on the curve when parsed.
    Ec(Vec<u8>, Curve),
    Ed25519(PKey<Public>),
}

pub struct VerifyKey {
    pub kid: Option<String>,
    /// The JWK's `alg`, when it names one: a token must then use exactly that algorithm.
    pub alg: Option<JwsAlgorithm>,
    pub material: KeyMaterial,
    /// SHA-256 over the key type, the public key material and `alg`: two keys with the same
    /// fingerprint verify exactly the same tokens. The verified-token cache remembers it.
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.material {
            KeyMaterial::Rsa(_) => "RSA",
            KeyMaterial::Ec(_, Curve::P256) => "EC P-256",
            KeyMaterial::Ec(_, Curve::P384) => "EC P-384",
            KeyMaterial::Ed25519(_) => "Ed25519",
        };
        write!(f, "VerifyKey({:?}, {kind}, alg {:?})", self.kid, self.alg)
    }
}

impl VerifyKey {
    /// Whether this key can verify `alg` (RFC 7518 §3.1, RFC 8037 §3.1).
    pub fn accepts(&self, alg: JwsAlgorithm) -> bool {
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        use JwsAlgorithm::*;
        matches!(
            (&self.material, alg),
            (
                KeyMaterial::Rsa(_),
                RS256 | RS384 | RS512 | PS256 | PS384 | PS512
            ) | (KeyMaterial::Ec(_, Curve::P256), ES256)
                | (KeyMaterial::Ec(_, Curve::P384), ES384)
                | (KeyMaterial::Ed25519(_), EdDSA)
        )
    }
}

#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    /// Present only in private or symmetric keys, which a public key set must not hold.
    d: Option<serde::de::IgnoredAny>,
    k: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

fn b64(field: &'static str, value: &Option<String>) -> Result<Vec<u8>, JwkError> {
    let text = value.as_deref().ok_or(JwkError::Missing(field))?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| JwkError::NotBase64url(field))
}

/// Why one JWK cannot be used for verification.
#[derive(Debug, thiserror::Error)]
pub enum JwkError {
    #[error("not a JWK: {0}")]
    NotAJwk(serde_json::Error),
    #[error("holds private or symmetric key material; publish public keys only")]
    PrivateMaterial,
    #[error("missing `{0}`")]
    Missing(&'static str),
    #[error("`{0}` is not base64url")]
    NotBase64url(&'static str),
    #[error("RSA key of {0} bits is below {MIN_RSA_BITS}")]
    RsaTooShort(i32),
    #[error("unsupported EC curve {0:?}")]
    UnsupportedEcCurve(Option<String>),
    #[error("EC coordinates have the wrong length")]
    CoordinateLength,
    #[error("unsupported OKP curve {0:?}")]
    UnsupportedOkpCurve(Option<String>),
    #[error("unsupported key type {0:?}")]
    UnsupportedKeyType(Option<String>),
    #[error("invalid key: {0}")]
    Invalid(#[from] openssl::error::ErrorStack),
    #[error("`alg` {alg} does not fit the key type {kty:?}")]
    AlgorithmMismatch { alg: &'static str, kty: String },
}

/// Why a key set document cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JwkSetError {
    #[error("not a JWK set: {0}")]
    NotASet(serde_json::Error),
    #[error("no usable signature verification key{}", list_skipped(.0))]
    NoUsableKey(Vec<SkippedKey>),
}

/// An entry of a key set that was left out, and why.
#[derive(Debug)]
pub struct SkippedKey {
    pub index: usize,
    pub problem: JwkError,
}

impl std::fmt::Display for SkippedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "keys[{}]: {}", self.index, self.problem)
    }
}

fn list_skipped(skipped: &[SkippedKey]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let list: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    format!(" ({})", list.join("; "))
}

/// Parses one JWK. Keys for encryption, symmetric keys and private keys are refused.
pub fn parse_jwk(value: &serde_json::Value) -> Result<Option<VerifyKey>, JwkError> {
    let raw: RawJwk = serde_json::from_value(value.clone()).map_err(JwkError::NotAJwk)?;
    if raw.use_.as_deref().is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    if raw.d.is_some() || raw.k.is_some() {
        return Err(JwkError::PrivateMaterial);
    }
    let alg = match raw.alg.as_deref() {
        None => None,
        Some(name) => match JwsAlgorithm::from_name(name) {
            Some(a) => Some(a),
            // A key for an algorithm bindgate never accepts (HS256, RSA-OAEP, ...) is skipped.
            None => return Ok(None),
        },
    };
    let material = match raw.kty.as_deref() {
        Some("RSA") => {
            let n = BigNum::from_slice(&b64("n", &raw.n)?)?;
            let e = BigNum::from_slice(&b64("e", &raw.e)?)?;
            if n.num_bits() < MIN_RSA_BITS as i32 {
                return Err(JwkError::RsaTooShort(n.num_bits()));
            }
            let rsa = Rsa::from_public_components(n, e)?;
            KeyMaterial::Rsa(PKey::from_rsa(rsa)?)
        }
        Some("EC") => {
            let (nid, curve, len) = match raw.crv.as_deref() {
                Some("P-256") => (Nid::X9_62_PRIME256V1, Curve::P256, 32),
                Some("P-384") => (Nid::SECP384R1, Curve::P384, 48),
                other => return Err(JwkError::UnsupportedEcCurve(other.map(str::to_owned))),
            };
            let x = b64("x", &raw.x)?;
            let y = b64("y", &raw.y)?;
            if x.len() != len || y.len() != len {
                return Err(JwkError::CoordinateLength);
            }
            let group = EcGroup::from_curve_name(nid)?;
            let x = BigNum::from_slice(&x)?;
            let y = BigNum::from_slice(&y)?;
            // Checks that the point is on the curve.
            let key = EcKey::from_public_key_affine_coordinates(&group, &x, &y)?;
            key.check_key()?;
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend(x.to_vec_padded(len as i32)?);
            point.extend(y.to_vec_padded(len as i32)?);
            KeyMaterial::Ec(point, curve)
        }
        Some("OKP") => {
            if raw.crv.as_deref() != Some("Ed25519") {
                return Err(JwkError::UnsupportedOkpCurve(raw.crv));
            }
            let x = b64("x", &raw.x)?;
            KeyMaterial::Ed25519(PKey::public_key_from_raw_bytes(&x, Id::ED25519)?)
        }
        Some("oct") => return Ok(None),
        other => return Err(JwkError::UnsupportedKeyType(other.map(str::to_owned))),
    };
    let fingerprint = fingerprint(&material, alg)?;
    let key = VerifyKey {
        kid: raw.kid,
        alg,
        material,
        fingerprint,
    };
    // An `alg` the key type cannot verify (an EC key marked RS256, say) makes a key that
    // verifies nothing: refused, so that the operator hears of it (found by fuzzing).
    if let Some(a) = alg {
        if !key.accepts(a) {
            return Err(JwkError::AlgorithmMismatch {
                alg: a.name(),
                kty: raw.kty.unwrap_or_default(),
            });
        }
    }
    Ok(Some(key))
}

fn fingerprint(
    material: &KeyMaterial,
    alg: Option<JwsAlgorithm>,
) -> Result<[u8; 32], openssl::error::ErrorStack> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    match material {
        KeyMaterial::Rsa(k) => {
            let rsa = k.rsa()?;
            h.update(b"RSA\0");
            h.update(rsa.n().to_vec());
            h.update(b"\0");
            h.update(rsa.e().to_vec());
        }
        KeyMaterial::Ec(point, curve) => {
            h.update(match curve {
                Curve::P256 => b"EC P-256\0",
                Curve::P384 => b"EC P-384\0",
            });
            h.update(point);
        }
        KeyMaterial::Ed25519(k) => {
            h.update(b"OKP Ed25519\0");
            h.update(k.raw_public_key()?);
        }
    }
    h.update(b"\0");
    h.update(alg.map(JwsAlgorithm::name).unwrap_or("-"));
    Ok(h.finalize().into())
}

/// The keys of a JWK set and the problems of the entries that could not be used.
pub struct ParsedSet {
    pub keys: Vec<VerifyKey>,
    pub skipped: Vec<SkippedKey>,
}

/// Parses a JWK set document. A document that is not a JWK set is an error; a set whose keys
/// are all unusable is an error too (it would reject every token).
pub fn parse_jwk_set(body: &[u8]) -> Result<ParsedSet, JwkSetError> {
    let set: RawJwkSet = serde_json::from_slice(body).map_err(JwkSetError::NotASet)?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, value) in set.keys.iter().enumerate() {
        match parse_jwk(value) {
            Ok(Some(k)) => keys.push(k),
            Ok(None) => {}
            Err(problem) => skipped.push(SkippedKey { index: i, problem }),
        }
    }
    if keys.is_empty() {
        return Err(JwkSetError::NoUsableKey(skipped));
    }
    Ok(ParsedSet { keys, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    #[test]
    fn a_key_with_an_alg_its_type_cannot_verify_is_refused() {
        // Found by the jwks fuzz target (FUZZING.md): it parsed, and could verify nothing.
        let ec = |alg: &str| json!({"kty": "EC", "crv": "P-256", "x": X, "y": Y, "alg": alg});
        for alg in ["PS256", "ES384"] {
            let refused = parse_jwk(&ec(alg)).unwrap_err();
            assert!(matches!(refused, JwkError::AlgorithmMismatch { .. }));
            assert!(refused.to_string().contains("does not fit"), "{refused}");
        }
        let key = parse_jwk(&ec("ES256")).unwrap().unwrap();
        assert!(key.accepts(JwsAlgorithm::ES256));
        // Without alg, the key type decides.
        let any = parse_jwk(&json!({"kty": "EC", "crv": "P-256", "x": X, "y": Y}))
            .unwrap()
            .unwrap();
        assert!(any.accepts(JwsAlgorithm::ES256) && !any.accepts(JwsAlgorithm::RS256));
        // The same material under another alg is another fingerprint.
        assert_ne!(key.fingerprint, any.fingerprint);
    }
}
