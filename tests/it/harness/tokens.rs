//! Test signing keys of every algorithm, their JWKs, and tokens minted with `jsonwebtoken`
//! (ring) — an implementation independent of bindgate's OpenSSL verifier.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use serde_json::{json, Value};

pub const ISSUER: &str = "https://idp.example.com";
pub const ENDPOINT: &str = "https://idp.example.com/clients";

pub struct Signer {
    pub alg: Algorithm,
    pub kid: String,
    key: EncodingKey,
    pub jwk: Value,
    /// The public key in PEM (SubjectPublicKeyInfo), for key-confusion attacks.
    pub public_pem: Vec<u8>,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Signer {
    pub fn new(alg: Algorithm, kid: &str) -> Signer {
        use Algorithm::*;
        match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
                let rsa = Rsa::generate(2048).unwrap();
                let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig",
                    "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())});
                let pem = rsa.private_key_to_pem().unwrap();
                let public_pem = PKey::from_rsa(rsa.clone())
                    .unwrap()
                    .public_key_to_pem()
                    .unwrap();
                Signer {
                    alg,
                    kid: kid.into(),
                    key: EncodingKey::from_rsa_pem(&pem).unwrap(),
                    jwk,
                    public_pem,
                }
            }
            ES256 | ES384 => {
                let (nid, crv, len) = if alg == ES256 {
                    (Nid::X9_62_PRIME256V1, "P-256", 32)
                } else {
                    (Nid::SECP384R1, "P-384", 48)
                };
                let group = EcGroup::from_curve_name(nid).unwrap();
                let ec = EcKey::generate(&group).unwrap();
                let mut ctx = BigNumContext::new().unwrap();
                let mut x = openssl::bn::BigNum::new().unwrap();
                let mut y = openssl::bn::BigNum::new().unwrap();
                ec.public_key()
                    .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
                    .unwrap();
                let jwk = json!({"kty": "EC", "crv": crv, "kid": kid, "use": "sig",
                    "x": b64(&x.to_vec_padded(len).unwrap()), "y": b64(&y.to_vec_padded(len).unwrap())});
                let pkey = PKey::from_ec_key(ec).unwrap();
                let pem = pkey.private_key_to_pem_pkcs8().unwrap();
                let public_pem = pkey.public_key_to_pem().unwrap();
                Signer {
                    alg,
                    kid: kid.into(),
                    key: EncodingKey::from_ec_pem(&pem).unwrap(),
                    jwk,
                    public_pem,
                }
            }
            EdDSA => {
                let pkey = PKey::generate_ed25519().unwrap();
                let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
                    "x": b64(&pkey.raw_public_key().unwrap())});
                let pem = pkey.private_key_to_pem_pkcs8().unwrap();
                let public_pem = pkey.public_key_to_pem().unwrap();
                Signer {
                    alg,
                    kid: kid.into(),
                    key: EncodingKey::from_ed_pem(&pem).unwrap(),
                    jwk,
                    public_pem,
                }
            }
            other => panic!("no test signer for {other:?}"),
        }
    }

    pub fn header(&self) -> Header {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        h.typ = None;
        h
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with(self.header(), claims)
    }

    pub fn sign_with(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

pub fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Connect2id-style claims: `scp` array, audience the registration endpoint, 10 minutes.
pub fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "sub": "tester",
        "aud": ENDPOINT,
        "scp": ["client-reg"],
        "iat": now(),
        "exp": now() + 600,
        "cid": "000123",
    })
}

/// The same claims bound to the certificate with `x5t` (RFC 8705 §3.1).
pub fn bound(x5t: &str) -> Value {
    let mut c = claims();
    c["cnf"] = json!({"x5t#S256": x5t});
    c
}

/// A token "signed" with HS256 using `secret` (e.g. the provider's public key PEM).
pub fn hs256(kid: &str, secret: &[u8], claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// A token with header `alg: none` and an empty signature.
pub fn unsigned(kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "none", "kid": kid});
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// Replaces the payload of a signed token (the signature no longer matches).
pub fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    )
}

/// A token with a hand-written header and payload, signed by `signer`'s key through
/// jsonwebtoken's raw signing (for hostile claims that serde would not produce).
pub fn raw_signed(signer: &Signer, header: &Value, payload: &str) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &signer.key, signer.alg).unwrap();
    format!("{input}.{sig}")
}
