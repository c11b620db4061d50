//! `bindgate dev-token`: development initial access tokens, signed ES256 with the development
//! key whose public JWKS (`jwks.json`, written by `dev-certs`) the shipped `proxy.yaml` trusts.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::bn::BigNumContext;
use openssl::ec::EcKey;
use openssl::ecdsa::EcdsaSig;
use openssl::pkey::{PKey, Private};
use serde_json::{json, Value};

/// Why a development command could not make what it was asked for.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{step}: {source}")]
    Crypto {
        step: &'static str,
        source: openssl::error::ErrorStack,
    },
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        action: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a file name", .0.display())]
    NotAFileName(std::path::PathBuf),
    #[error("{}: {reason}", path.display())]
    Config {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl DevError {
    /// A file operation that failed, naming the file.
    pub fn file(
        action: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| DevError::File {
            action,
            path,
            source,
        }
    }
}

/// What `dev-token` and `dev-proof` take from a configuration file. Only the file's own text
/// is read (parsed, not validated): no file it names is opened — no master token, TLS key or
/// Redis password — so a developer needs none of the production secrets, and a file whose
/// secrets are elsewhere still serves.
#[derive(Debug, Default)]
pub struct DevSettings {
    pub issuer: Option<String>,
    /// Where the development keys are: the folder of `jwks.file`, resolved as `run` resolves
    /// it (against the configuration file's folder). `signing.key` and `dpop.key` live there.
    pub keys: Option<std::path::PathBuf>,
    pub scope: Option<String>,
    pub endpoint_uri: Option<String>,
}

impl DevSettings {
    pub fn read(config: &std::path::Path) -> Result<DevSettings, DevError> {
        let text = std::fs::read_to_string(config).map_err(DevError::file("read", config))?;
        let (file, problems) = crate::config::parse(&text);
        let Some(file) = file else {
            let reason = problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(DevError::Config {
                path: config.to_path_buf(),
                reason,
            });
        };
        let keys = file
            .jwks
            .as_ref()
            .and_then(|j| j.file.as_deref())
            .map(|f| crate::config::resolve_against(config, f))
            .and_then(|f| f.parent().map(std::path::Path::to_path_buf));
        let registration = file.registration.as_ref();
        // As validation defaults it: the issuer and the registration path.
        let endpoint_uri = registration
            .and_then(|r| r.endpoint_uri.clone())
            .or_else(|| {
                let path = registration
                    .and_then(|r| r.path.as_deref())
                    .unwrap_or("/clients");
                let issuer = file.issuer.as_deref()?;
                Some(format!("{}{path}", issuer.trim_end_matches('/')))
            });
        Ok(DevSettings {
            issuer: file.issuer.clone(),
            keys,
            scope: registration.and_then(|r| r.scope.clone()),
            endpoint_uri,
        })
    }

    /// A development key's path: `given` (from the command line, as given), else `name`
    /// beside the configured `jwks.file`.
    pub fn key_path(
        &self,
        given: Option<&std::path::Path>,
        name: &str,
    ) -> Option<std::path::PathBuf> {
        given
            .map(std::path::Path::to_path_buf)
            .or_else(|| self.keys.as_ref().map(|k| k.join(name)))
    }
}

/// Maps an OpenSSL failure to the step that failed.
pub(crate) fn err(step: &'static str) -> impl Fn(openssl::error::ErrorStack) -> DevError {
    move |source| DevError::Crypto { step, source }
}

/// A random token of 256 bits, base64url.
pub fn random_token() -> Result<String, DevError> {
    let mut bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut bytes).map_err(err("random"))?;
    Ok(b64(&bytes))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn coordinates(key: &EcKey<impl openssl::pkey::HasPublic>) -> Result<(Vec<u8>, Vec<u8>), DevError> {
    let mut ctx = BigNumContext::new().map_err(err("EC"))?;
    let mut x = openssl::bn::BigNum::new().map_err(err("EC"))?;
    let mut y = openssl::bn::BigNum::new().map_err(err("EC"))?;
    key.public_key()
        .affine_coordinates(key.group(), &mut x, &mut y, &mut ctx)
        .map_err(err("EC"))?;
    Ok((
        x.to_vec_padded(32).map_err(err("EC"))?,
        y.to_vec_padded(32).map_err(err("EC"))?,
    ))
}

/// The public JWK of a P-256 key, with its RFC 7638 thumbprint as `kid`.
pub fn public_jwk(key: &PKey<Private>) -> Result<Value, DevError> {
    let ec = key
        .ec_key()
        .map_err(err("the development key must be EC P-256"))?;
    let (x, y) = coordinates(&ec)?;
    let (x, y) = (b64(&x), b64(&y));
    // RFC 7638 §3.2: required members only, in lexicographic order, no whitespace.
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let kid = b64(&openssl::sha::sha256(canonical.as_bytes()));
    Ok(
        json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "use": "sig", "alg": "ES256"}),
    )
}

/// A compact JWS, ES256, over `claims`.
pub fn sign_es256(key: &PKey<Private>, kid: &str, claims: &Value) -> Result<String, DevError> {
    sign_es256_with(
        key,
        &json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
        claims,
    )
}

/// A development DPoP proof (RFC 9449 §4.2): `typ` dpop+jwt, the public key in `jwk`, for
/// `htm` and `htu`, bound to `token` (`ath`) when given, with the server's `nonce` when given.
pub fn dpop_proof(
    key: &PKey<Private>,
    htm: &str,
    htu: &str,
    token: Option<&str>,
    nonce: Option<&str>,
) -> Result<String, DevError> {
    let mut jwk = public_jwk(key)?;
    if let Some(o) = jwk.as_object_mut() {
        for member in ["kid", "use", "alg"] {
            o.remove(member);
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut claims = json!({
        "jti": random_token()?,
        "htm": htm,
        "htu": htu,
        "iat": now,
    });
    if let Some(t) = token {
        claims["ath"] = json!(b64(&openssl::sha::sha256(t.as_bytes())));
    }
    if let Some(n) = nonce {
        claims["nonce"] = json!(n);
    }
    sign_es256_with(
        key,
        &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}),
        &claims,
    )
}

/// A new P-256 key in PEM (PKCS#8).
pub fn new_key_pem() -> Result<Vec<u8>, DevError> {
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
        .map_err(err("EC"))?;
    let ec = EcKey::generate(&group).map_err(err("EC"))?;
    PKey::from_ec_key(ec)
        .and_then(|k| k.private_key_to_pem_pkcs8())
        .map_err(err("EC"))
}

fn sign_es256_with(
    key: &PKey<Private>,
    header: &Value,
    claims: &Value,
) -> Result<String, DevError> {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let ec = key
        .ec_key()
        .map_err(err("the development key must be EC P-256"))?;
    let sig = EcdsaSig::sign(&openssl::sha::sha256(input.as_bytes()), &ec).map_err(err("sign"))?;
    let mut raw = sig.r().to_vec_padded(32).map_err(err("sign"))?;
    raw.extend(sig.s().to_vec_padded(32).map_err(err("sign"))?);
    Ok(format!("{input}.{}", b64(&raw)))
}

pub fn load_key(pem: &[u8]) -> Result<PKey<Private>, DevError> {
    PKey::private_key_from_pem(pem).map_err(err("not a PEM private key"))
}
