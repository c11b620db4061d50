//! Keys, certificates, tokens and proofs of the load harness, made before any timing.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::pkey::PKey;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) const ISSUER: &str = "https://idp.example.com";
pub(crate) const ENDPOINT: &str = "https://idp.example.com/clients";
pub(crate) fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// Keys, certificates and tokens, made before any timing.
pub(crate) struct Material {
    pub(crate) dir: PathBuf,
    pub(crate) es_key: PKey<openssl::pkey::Private>,
    pub(crate) es_kid: String,
    pub(crate) rs_key: jsonwebtoken::EncodingKey,
    pub(crate) x5t: String,
    pub(crate) dpop_key: PKey<openssl::pkey::Private>,
}

pub(crate) fn material(dir: &Path) -> Material {
    let ok = Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .arg("dev-certs")
        .arg(dir)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "dev-certs");
    let es_key =
        bindgate::devtoken::load_key(&std::fs::read(dir.join("signing.key")).unwrap()).unwrap();
    let es_jwk = bindgate::devtoken::public_jwk(&es_key).unwrap();
    let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
    let rs_jwk = json!({"kty": "RSA", "kid": "rs1", "use": "sig", "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())});
    std::fs::write(
        dir.join("bench-jwks.json"),
        json!({"keys": [es_jwk, rs_jwk]}).to_string(),
    )
    .unwrap();
    // HAProxy's jwt_verify takes PEM public keys, not certificates.
    std::fs::write(
        dir.join("es256.pub.pem"),
        es_key.public_key_to_pem().unwrap(),
    )
    .unwrap();
    let rs_pkey = PKey::from_rsa(rsa.clone()).unwrap();
    std::fs::write(
        dir.join("rs256.pub.pem"),
        rs_pkey.public_key_to_pem().unwrap(),
    )
    .unwrap();
    // HAProxy wants certificate and key in one file.
    let mut pem = std::fs::read(dir.join("server.crt")).unwrap();
    pem.extend(std::fs::read(dir.join("server.key")).unwrap());
    std::fs::write(dir.join("server.pem"), pem).unwrap();
    let x5t =
        bindgate::certificate::thumbprint_of_pem(&std::fs::read(dir.join("client1.crt")).unwrap())
            .unwrap();
    Material {
        dir: dir.to_path_buf(),
        es_kid: es_jwk["kid"].as_str().unwrap().to_string(),
        es_key,
        rs_key: jsonwebtoken::EncodingKey::from_rsa_pem(&rsa.private_key_to_pem().unwrap())
            .unwrap(),
        x5t,
        dpop_key: bindgate::devtoken::load_key(&bindgate::devtoken::new_key_pem().unwrap())
            .unwrap(),
    }
}

impl Material {
    pub(crate) fn claims(&self, jti: usize) -> serde_json::Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // Connect2id's `scp` array for bindgate, the RFC 9068 `scope` string for HAProxy
        // (its JSON queries cannot read arrays).
        json!({"iss": ISSUER, "aud": ENDPOINT, "sub": "load", "scp": ["client-reg"], "scope": "client-reg",
               "iat": now, "exp": now + 3600, "jti": jti.to_string(), "cnf": {"x5t#S256": self.x5t}})
    }

    pub(crate) fn es256(&self, jti: usize) -> String {
        bindgate::devtoken::sign_es256(&self.es_key, &self.es_kid, &self.claims(jti)).unwrap()
    }

    /// "TOKEN PROOF" pairs: one ES256 token bound to the DPoP key (cnf.jkt), repeated, and `n`
    /// fresh proofs for `POST https://localhost:{port}/clients`.
    pub(crate) fn dpop_pairs(&self, port: u16, n: usize) -> Vec<String> {
        let jwk = bindgate::devtoken::public_jwk(&self.dpop_key).unwrap();
        let mut claims = self.claims(0);
        claims["cnf"] = json!({"jkt": jwk["kid"]});
        let token = bindgate::devtoken::sign_es256(&self.es_key, &self.es_kid, &claims).unwrap();
        let htu = format!("https://localhost:{port}/clients");
        (0..n)
            .map(|_| {
                let proof = bindgate::devtoken::dpop_proof(
                    &self.dpop_key,
                    "POST",
                    &htu,
                    Some(&token),
                    None,
                )
                .unwrap();
                format!("{token} {proof}")
            })
            .collect()
    }

    pub(crate) fn rs256(&self, jti: usize) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some("rs1".into());
        jsonwebtoken::encode(&h, &self.claims(jti), &self.rs_key).unwrap()
    }
}
