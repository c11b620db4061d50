//! Compact JWS (RFC 7515 §7.1): splitting, decoding, and signature verification with OpenSSL.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::hash::MessageDigest;
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Verifier};
use serde::Deserialize;
use std::borrow::Cow;

use super::jwk::{Curve, KeyMaterial, VerifyKey};
use crate::config::JwsAlgorithm;

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The three parts of a compact JWS.
pub struct Compact<'a> {
    /// `BASE64URL(header) . BASE64URL(payload)`: what the signature covers.
    pub signing_input: &'a [u8],
    pub header: Vec<u8>,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

/// The protected header members bindgate reads. `jku`, `x5u`, `x5c` and `jwk` are never read:
/// keys come from the configured JWKS only.
#[derive(Deserialize)]
pub struct Header<'a> {
    #[serde(borrow)]
    pub alg: Cow<'a, str>,
    #[serde(borrow)]
    pub kid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub typ: Option<Cow<'a, str>>,
    /// RFC 7515 §4.1.11: extensions the recipient must understand; bindgate understands none.
    pub crit: Option<serde::de::IgnoredAny>,
    /// RFC 7797 unencoded payloads are not JWTs.
    pub b64: Option<serde::de::IgnoredAny>,
}

fn decode(part: &str) -> Option<Vec<u8>> {
    // Strict base64url without padding (RFC 7515 §2).
    URL_SAFE_NO_PAD.decode(part).ok()
}

/// Splits and decodes a compact JWS; `None` when it is not one.
pub fn split(token: &str) -> Option<Compact<'_>> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let mut parts = token.split('.');
    let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || h.is_empty() || p.is_empty() || s.is_empty() {
        return None;
    }
    Some(Compact {
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        header: decode(h)?,
        payload: decode(p)?,
        signature: decode(s)?,
    })
}

fn digest_of(alg: JwsAlgorithm) -> MessageDigest {
    use JwsAlgorithm::*;
    match alg {
        RS256 | PS256 | ES256 => MessageDigest::sha256(),
        RS384 | PS384 | ES384 => MessageDigest::sha384(),
        RS512 | PS512 => MessageDigest::sha512(),
        EdDSA => MessageDigest::null(),
    }
}

/// Verifies `signature` over `input` with `key` for `alg`. The caller has checked that the key
/// accepts the algorithm; a mismatch here is simply a failed verification.
pub fn verify_signature(
    alg: JwsAlgorithm,
    key: &VerifyKey,
    input: &[u8],
    signature: &[u8],
) -> bool {
    use JwsAlgorithm::*;
    match (&key.material, alg) {
        (KeyMaterial::Rsa(pkey), RS256 | RS384 | RS512) => (|| {
            let mut v = Verifier::new(digest_of(alg), pkey)?;
            v.update(input)?;
            v.verify(signature)
        })()
        .unwrap_or(false),
        (KeyMaterial::Rsa(pkey), PS256 | PS384 | PS512) => (|| {
            let md = digest_of(alg);
            let mut v = Verifier::new(md, pkey)?;
            v.set_rsa_padding(Padding::PKCS1_PSS)?;
            // RFC 7518 §3.5: salt as long as the hash, MGF1 with the same hash.
            v.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
            v.set_rsa_mgf1_md(md)?;
            v.update(input)?;
            v.verify(signature)
        })()
        .unwrap_or(false),
        (KeyMaterial::Ec(point, curve), ES256 | ES384) => {
            // RFC 7518 §3.4: R || S, each exactly the curve's length (not DER); ring's FIXED
            // algorithms take exactly that form.
            let algorithm = match (curve, alg) {
                (Curve::P256, ES256) => &ring::signature::ECDSA_P256_SHA256_FIXED,
                (Curve::P384, ES384) => &ring::signature::ECDSA_P384_SHA384_FIXED,
                _ => return false,
            };
            ring::signature::UnparsedPublicKey::new(algorithm, point)
                .verify(input, signature)
                .is_ok()
        }
        (KeyMaterial::Ed25519(pkey), EdDSA) => Verifier::new_without_digest(pkey)
            .and_then(|mut v| v.verify_oneshot(signature, input))
            .unwrap_or(false),
        _ => false,
    }
}

/// RFC 7515 §4.1.9 / RFC 9068 §2.1: `typ` absent, `JWT` or `at+jwt` (media types compare
/// case-insensitively and may carry the `application/` prefix).
pub fn typ_accepted(typ: Option<&str>) -> bool {
    match typ {
        None => true,
        Some(t) => {
            let t = t.strip_prefix("application/").unwrap_or(t);
            t.eq_ignore_ascii_case("jwt") || t.eq_ignore_ascii_case("at+jwt")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_refuses_what_is_not_compact_jws() {
        assert!(split("a.b").is_none());
        assert!(split("a.b.c.d").is_none());
        assert!(split("..").is_none());
        assert!(
            split("e30.e30.").is_none(),
            "empty signature (alg none style)"
        );
        assert!(
            split("e30=.e30.AAAA").is_none(),
            "padding is not base64url JWS"
        );
        assert!(split("e3+0.e30.AAAA").is_none());
        assert!(split(&"a".repeat(MAX_TOKEN_LEN + 1)).is_none());
        let c = split("e30.e30.AAAA").unwrap();
        assert_eq!(c.header, b"{}");
        assert_eq!(c.signing_input, b"e30.e30");
        assert_eq!(c.signature, vec![0, 0, 0]);
    }

    #[test]
    fn typ_values() {
        assert!(typ_accepted(None));
        assert!(typ_accepted(Some("JWT")));
        assert!(typ_accepted(Some("at+jwt")));
        assert!(typ_accepted(Some("application/at+JWT")));
        assert!(!typ_accepted(Some("JOSE")));
        assert!(!typ_accepted(Some("dpop+jwt")));
        assert!(!typ_accepted(Some("")));
    }
}
