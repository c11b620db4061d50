//! `introspection`: RFC 7662 token introspection.

use std::path::Path;
use std::time::Duration;

use super::checks::*;
use super::Problems;
use crate::config::file::*;
use crate::config::*;

pub(super) fn introspection(
    p: &mut Problems,
    file: &FileConfig,
    source: &Path,
) -> Option<Introspection> {
    let i = file.introspection.as_ref()?;
    let base = source.parent().unwrap_or(Path::new("."));
    if !is_http_uri(&i.endpoint) {
        p.push(
            "introspection.endpoint",
            format!("`{}` is not an http(s) URI", i.endpoint),
        );
    }
    let a = &i.auth;
    let given = [
        a.client_secret_basic.is_some(),
        a.client_secret_post.is_some(),
        a.private_key_jwt.is_some(),
        a.tls_client_auth.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        p.push(
            "introspection.auth",
            "give exactly one of client_secret_basic, client_secret_post, private_key_jwt, tls_client_auth",
        );
        return None;
    }
    let secret = |p: &mut Problems, key: &str, c: &ClientSecretFile| {
        match crate::config::secret::resolve_plain(&c.client_secret, base) {
            Ok(s) => Some(Password::new(s)),
            Err(reason) => {
                p.push(format!("{key}.client_secret"), reason);
                None
            }
        }
    };
    let read = |p: &mut Problems, key: String, file: &str| -> Option<Vec<u8>> {
        let path = resolve_against(source, file);
        match std::fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) => {
                p.push(key, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    };
    let auth = if let Some(c) = &a.client_secret_basic {
        IntrospectionAuth::ClientSecretBasic {
            client_id: c.client_id.clone(),
            secret: secret(p, "introspection.auth.client_secret_basic", c)?,
        }
    } else if let Some(c) = &a.client_secret_post {
        IntrospectionAuth::ClientSecretPost {
            client_id: c.client_id.clone(),
            secret: secret(p, "introspection.auth.client_secret_post", c)?,
        }
    } else if let Some(k) = &a.private_key_jwt {
        let key_path = "introspection.auth.private_key_jwt.key";
        let pem = read(p, key_path.into(), &k.key)?;
        let alg = match k.alg.as_deref().unwrap_or("ES256") {
            "ES256" => JwsAlgorithm::ES256,
            "RS256" => JwsAlgorithm::RS256,
            other => {
                p.push(
                    "introspection.auth.private_key_jwt.alg",
                    format!("`{other}` is not one of ES256, RS256"),
                );
                return None;
            }
        };
        if openssl::pkey::PKey::private_key_from_pem(&pem).is_err() {
            p.push(key_path, "holds no PEM private key");
            return None;
        }
        IntrospectionAuth::PrivateKeyJwt {
            client_id: k.client_id.clone(),
            key: Password::new(String::from_utf8_lossy(&pem).into_owned()),
            alg,
        }
    } else if let Some(t) = &a.tls_client_auth {
        let key = "introspection.auth.tls_client_auth";
        let cert = read(p, format!("{key}.cert"), &t.cert)?;
        let private = read(p, format!("{key}.key"), &t.key)?;
        if reqwest::Identity::from_pkcs8_pem(&cert, &private).is_err() {
            p.push(
                key,
                "cert and key are not a PEM certificate and its PKCS#8 private key",
            );
            return None;
        }
        let mut identity = cert;
        identity.push(b'\n');
        identity.extend(private);
        IntrospectionAuth::TlsClientAuth {
            client_id: t.client_id.clone(),
            identity: Password::new(String::from_utf8_lossy(&identity).into_owned()),
        }
    } else {
        return None;
    };
    let ca =
        i.ca.as_deref()
            .and_then(|ca| certificates(p, "introspection.ca", &resolve_against(source, ca)));
    let cache = i.cache.as_ref();
    let timeout = p.positive_duration(
        "introspection.timeout",
        i.timeout.as_ref(),
        Duration::from_secs(2),
    );
    Some(Introspection {
        endpoint: i.endpoint.clone(),
        auth,
        ca,
        timeout,
        max_entries: cache.and_then(|c| c.max_entries).unwrap_or(100_000),
        max_ttl: p.duration(
            "introspection.cache.max_ttl",
            cache.and_then(|c| c.max_ttl.as_ref()),
            Duration::from_secs(300),
        ),
        negative_ttl: p.duration(
            "introspection.cache.negative_ttl",
            cache.and_then(|c| c.negative_ttl.as_ref()),
            Duration::from_secs(5),
        ),
    })
}
