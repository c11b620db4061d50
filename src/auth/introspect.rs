//! OAuth 2.0 token introspection (RFC 7662) for opaque access tokens. The provider's answer is
//! cached (by the token's SHA-256, bounded, one call for concurrent misses); what it says is
//! checked on every request exactly as a JWT's claims are (`claims::verify_claims` reads it,
//! `Authoriser` checks time, audience, binding and scope per request, never in the cache).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cache::{now_secs, Entry};
use super::claims::verify_claims;
use super::denial::Denial;
use crate::config::{Introspection, IntrospectionAuth, JwsAlgorithm, Problem};
use crate::metrics::Metrics;

/// An answer larger than this is not an introspection answer.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A provider's `exp` can be absent (RFC 7662 §2.2: optional); the token is then as good as the
/// provider says, for at most `max_ttl` of caching.
const NO_EXPIRY: f64 = 4_102_444_800.0; // 2100-01-01

/// What the provider said of a token.
#[derive(Debug)]
enum Answer {
    /// Active, its claims read as a JWT's would be (refusals at the per-request checks).
    Active(Arc<Entry>),
    /// Inactive, or an active answer whose members have the wrong types (refused as a JWT with
    /// such claims is): `why` is the 401's description.
    Refused(String),
}

/// Why the provider gave no usable answer (503, never cached).
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("introspection: {0}")]
    Transport(String),
    #[error("introspection: HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("introspection: the answer is too large")]
    TooLarge,
    #[error("introspection: the answer is not a JSON object")]
    NotJson,
    #[error("introspection: the answer has no boolean `active`")]
    NoActive,
    #[error("introspection: the client assertion cannot be made")]
    Assertion,
}

struct Cached {
    answer: Answer,
    ttl: Duration,
}

struct TtlOf;

impl moka::Expiry<[u8; 32], Arc<Cached>> for TtlOf {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Cached>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub struct Introspector {
    client: reqwest::Client,
    endpoint: String,
    auth: IntrospectionAuth,
    /// `issuer`, when configured: an answer's `iss`, when present, must be it.
    issuer: Option<String>,
    max_ttl: Duration,
    negative_ttl: Duration,
    cache: moka::future::Cache<[u8; 32], Arc<Cached>>,
    metrics: Arc<Metrics>,
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// RFC 6749 §2.3.1: client id and secret are form-encoded before they are joined.
fn basic(client_id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(client_id), enc(secret)))
    )
}

impl Introspector {
    /// The introspector of `config` and the settings it was made from: `previous`'s (with its
    /// cache) when they are the same.
    pub fn of(
        config: &crate::config::Config,
        previous: Option<(&str, &Option<Arc<Introspector>>)>,
        metrics: &Arc<Metrics>,
    ) -> Result<(Option<Arc<Introspector>>, String), Problem> {
        let settings = settings_of(config);
        let introspector = match (
            previous.filter(|(s, _)| *s == settings),
            &config.introspection,
        ) {
            (Some((_, kept)), _) => kept.clone(),
            (None, Some(i)) => Some(Arc::new(Introspector::new(
                i,
                config.issuer.clone(),
                metrics.clone(),
            )?)),
            (None, None) => None,
        };
        Ok((introspector, settings))
    }

    pub fn new(
        config: &Introspection,
        issuer: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Problem> {
        let mut b = reqwest::Client::builder()
            .use_native_tls()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // RFC 7662 answers come from the endpoint itself: a redirect is not followed.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bindgate/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca {
            for cert in reqwest::Certificate::from_pem_bundle(ca.pem())
                .map_err(|e| Problem::new("introspection.ca", format!("{e}")))?
            {
                b = b.add_root_certificate(cert);
            }
        }
        if let IntrospectionAuth::TlsClientAuth { identity, .. } = &config.auth {
            let pem = identity.expose().as_bytes();
            let (cert, key) = split_identity(pem);
            b =
                b.identity(reqwest::Identity::from_pkcs8_pem(cert, key).map_err(|e| {
                    Problem::new("introspection.auth.tls_client_auth", format!("{e}"))
                })?);
        }
        let client = b
            .build()
            .map_err(|e| Problem::new("introspection", format!("HTTP client: {e}")))?;
        Ok(Introspector {
            client,
            endpoint: config.endpoint.clone(),
            auth: config.auth.clone(),
            issuer,
            max_ttl: config.max_ttl,
            negative_ttl: config.negative_ttl,
            cache: moka::future::Cache::builder()
                .max_capacity(config.max_entries)
                .expire_after(TtlOf)
                .build(),
            metrics,
        })
    }

    /// The token as the provider describes it (cached), or why not: 401 for an inactive or
    /// unreadable-but-answered token, 503 when the provider gave no usable answer (never
    /// cached: the next request asks again).
    pub async fn verified(&self, token: &str, digest: &[u8; 32]) -> Result<Arc<Entry>, Denial> {
        let cached = match self.cache.get(digest).await {
            Some(c) => {
                self.metrics
                    .introspection_cache
                    .with_label_values(&["hit"])
                    .inc();
                c
            }
            None => {
                self.metrics
                    .introspection_cache
                    .with_label_values(&["miss"])
                    .inc();
                // Concurrent misses for one token wait for the one call.
                self.cache
                    .try_get_with(
                        *digest,
                        crate::telemetry::step("introspection", self.call(token)),
                    )
                    .await
                    .map_err(|e| Denial::IntrospectionUnavailable {
                        cause: e.to_string(),
                    })?
            }
        };
        match &cached.answer {
            Answer::Active(entry) => Ok(entry.clone()),
            Answer::Refused(why) => Err(Denial::InvalidToken(why.clone())),
        }
    }

    async fn call(&self, token: &str) -> Result<Arc<Cached>, CallError> {
        let started = Instant::now();
        let result = self.ask(token).await;
        self.metrics
            .introspection_duration
            .observe(started.elapsed().as_secs_f64());
        let label = match &result {
            Ok(c) if matches!(c.answer, Answer::Active(_)) => "active",
            Ok(_) => "inactive",
            Err(_) => "error",
        };
        self.metrics
            .introspection_requests
            .with_label_values(&[label])
            .inc();
        result.map(Arc::new)
    }

    async fn ask(&self, token: &str) -> Result<Cached, CallError> {
        let mut pairs = vec![("token", token), ("token_type_hint", "access_token")];
        let assertion;
        let mut req = self
            .client
            .post(&self.endpoint)
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded");
        match &self.auth {
            IntrospectionAuth::ClientSecretBasic { client_id, secret } => {
                req = req.header("authorization", basic(client_id, secret.expose()));
            }
            IntrospectionAuth::ClientSecretPost { client_id, secret } => {
                pairs.push(("client_id", client_id));
                pairs.push(("client_secret", secret.expose()));
            }
            IntrospectionAuth::PrivateKeyJwt {
                client_id,
                key,
                alg,
            } => {
                assertion = client_assertion(client_id, &self.endpoint, key.expose(), *alg)
                    .ok_or(CallError::Assertion)?;
                pairs.push(("client_id", client_id));
                pairs.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
                pairs.push(("client_assertion", &assertion));
            }
            IntrospectionAuth::TlsClientAuth { client_id, .. } => {
                pairs.push(("client_id", client_id));
            }
        }
        let mut resp = req
            .body(form(&pairs))
            .send()
            .await
            .map_err(|e| CallError::Transport(without_url(&e)))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(CallError::Status(resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|l| l as usize > MAX_ANSWER_BYTES)
        {
            return Err(CallError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| CallError::Transport(without_url(&e)))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ANSWER_BYTES {
                return Err(CallError::TooLarge);
            }
        }
        self.read_answer(&body)
    }

    /// Reads an answer: JSON with a boolean `active`, else an error (503).
    fn read_answer(&self, body: &[u8]) -> Result<Cached, CallError> {
        let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(body) else {
            return Err(CallError::NotJson);
        };
        let active = match answer.get("active") {
            Some(Value::Bool(b)) => *b,
            _ => return Err(CallError::NoActive),
        };
        if !active {
            return Ok(Cached {
                answer: Answer::Refused("The access token is not active".into()),
                ttl: self.negative_ttl,
            });
        }
        Ok(self.active(&mut answer))
    }

    /// An active answer, its members read as a JWT's claims are (wrong types: 401).
    fn active(&self, answer: &mut Map<String, Value>) -> Cached {
        answer.remove("active");
        // RFC 7662 makes iss and exp optional; bindgate's claim reader requires them.
        let expected = match (&self.issuer, answer.get("iss")) {
            (Some(i), _) => i.clone(),
            (None, Some(Value::String(s))) => s.clone(),
            (None, _) => String::new(),
        };
        if !answer.contains_key("iss") {
            answer.insert("iss".into(), Value::String(expected.clone()));
        }
        if !answer.contains_key("exp") {
            answer.insert("exp".into(), Value::from(NO_EXPIRY));
        }
        let payload = serde_json::to_vec(&answer).unwrap_or_default();
        match verify_claims(&payload, &expected) {
            Ok(verified) => {
                let left = (verified.exp - now_secs()).max(0.0);
                let ttl = self.max_ttl.min(Duration::from_secs_f64(left.min(1e9)));
                Cached {
                    answer: Answer::Active(Arc::new(Entry {
                        verified,
                        kid: None,
                        key: [0; 32],
                    })),
                    ttl,
                }
            }
            Err(Denial::InvalidToken(why)) => Cached {
                answer: Answer::Refused(why),
                ttl: self.negative_ttl,
            },
            Err(_) => Cached {
                answer: Answer::Refused("The introspection answer is not usable".into()),
                ttl: self.negative_ttl,
            },
        }
    }
}

/// A transport error without the URL (it can carry credentials in its query).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_redirect() {
        "redirected"
    } else {
        "failed"
    };
    format!("{kind}: {}", e.without_url_ref())
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut s = self.to_string();
        if let Some(u) = self.url() {
            s = s.replace(u.as_str(), "<endpoint>");
        }
        s
    }
}

/// The certificate part and the key part of a `TlsClientAuth` identity (certificates first).
fn split_identity(pem: &[u8]) -> (&[u8], &[u8]) {
    let text = pem;
    let marker = b"-----BEGIN PRIVATE KEY-----";
    match text.windows(marker.len()).position(|w| w == marker) {
        Some(at) => (&text[..at], &text[at..]),
        None => (text, &[]),
    }
}

/// An RFC 7523 client assertion for the endpoint, signed with the client's key; None when
/// the key cannot sign (validation checked it loads).
fn client_assertion(
    client_id: &str,
    endpoint: &str,
    key_pem: &str,
    alg: JwsAlgorithm,
) -> Option<String> {
    let key = openssl::pkey::PKey::private_key_from_pem(key_pem.as_bytes()).ok()?;
    let now = now_secs() as i64;
    let mut jti = [0u8; 16];
    openssl::rand::rand_bytes(&mut jti).ok()?;
    let header = serde_json::json!({"alg": alg.name(), "typ": "JWT"});
    let claims = serde_json::json!({
        "iss": client_id, "sub": client_id, "aud": endpoint,
        "iat": now, "exp": now + 60, "jti": URL_SAFE_NO_PAD.encode(jti),
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = match alg {
        JwsAlgorithm::ES256 => {
            let ec = key.ec_key().ok()?;
            let digest = openssl::sha::sha256(input.as_bytes());
            let sig = openssl::ecdsa::EcdsaSig::sign(&digest, &ec).ok()?;
            let mut raw = sig.r().to_vec_padded(32).ok()?;
            raw.extend(sig.s().to_vec_padded(32).ok()?);
            raw
        }
        _ => {
            let mut signer =
                openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).ok()?;
            signer.update(input.as_bytes()).ok()?;
            signer.sign_to_vec().ok()?
        }
    };
    Some(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// What an introspector is made from, secrets included (as a digest: their `Debug` is
/// redacted): a reload that changes any of it makes a new one, with an empty cache.
pub fn settings_of(config: &crate::config::Config) -> String {
    let secret = config.introspection.as_ref().map(|i| {
        let material = match &i.auth {
            IntrospectionAuth::ClientSecretBasic { secret, .. }
            | IntrospectionAuth::ClientSecretPost { secret, .. } => secret,
            IntrospectionAuth::PrivateKeyJwt { key, .. } => key,
            IntrospectionAuth::TlsClientAuth { identity, .. } => identity,
        };
        hex::encode(openssl::sha::sha256(material.expose().as_bytes()))
    });
    format!("{:?} {:?} {secret:?}", config.introspection, config.issuer)
}

/// Whether `token` has a JWT's shape: three base64url segments (`tokens.format: auto`).
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    };
    ok(parts.next()) && ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn introspector() -> Introspector {
        Introspector::new(
            &Introspection {
                endpoint: "https://idp.example.com/introspect".into(),
                auth: IntrospectionAuth::ClientSecretBasic {
                    client_id: "bindgate".into(),
                    secret: crate::config::Password::new("s3cret".into()),
                },
                ca: None,
                timeout: Duration::from_secs(2),
                max_entries: 10,
                max_ttl: Duration::from_secs(300),
                negative_ttl: Duration::from_secs(5),
            },
            Some("https://idp.example.com".into()),
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    fn refused(c: &Cached) -> Option<&str> {
        match &c.answer {
            Answer::Refused(why) => Some(why),
            Answer::Active(_) => None,
        }
    }

    #[test]
    fn hostile_answers_are_never_a_pass() {
        let i = introspector();
        // No usable answer: an error (503), not a refusal and not a pass.
        for body in [
            &b"not json"[..],
            br#"["active"]"#,
            br#"{"active":"true"}"#,
            br#"{"active":1}"#,
            br#"{}"#,
        ] {
            assert!(
                i.read_answer(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Answered, but with claims of the wrong type: refused like such a JWT.
        for body in [
            &br#"{"active":true,"exp":"2099-01-01"}"#[..],
            br#"{"active":true,"iss":"https://evil.example.com"}"#,
            br#"{"active":true,"scope":["a","b"],"cnf":{"x5t#S256":7}}"#,
        ] {
            let c = i.read_answer(body).unwrap();
            assert!(refused(&c).is_some(), "{}", String::from_utf8_lossy(body));
            assert_eq!(c.ttl, Duration::from_secs(5));
        }
        let c = i
            .read_answer(br#"{"active":false,"scope":"client-reg"}"#)
            .unwrap();
        assert_eq!(refused(&c), Some("The access token is not active"));
    }

    #[test]
    fn an_active_answer_reads_like_jwt_claims_and_is_kept_at_most_until_exp() {
        let i = introspector();
        let exp = now_secs() as i64 + 60;
        let body = format!(
            r#"{{"active":true,"scope":"client-reg openid","aud":"https://idp.example.com/clients","exp":{exp},"jti":"j1","cnf":{{"x5t#S256":"{}","jkt":"{}"}}}}"#,
            URL_SAFE_NO_PAD.encode([1u8; 32]),
            URL_SAFE_NO_PAD.encode([2u8; 32])
        );
        let c = i.read_answer(body.as_bytes()).unwrap();
        let Answer::Active(entry) = &c.answer else {
            panic!("refused: {:?}", c.answer)
        };
        let v = &entry.verified;
        assert_eq!(v.scopes, ["client-reg", "openid"]);
        assert_eq!(v.audiences, ["https://idp.example.com/clients"]);
        assert_eq!(v.jti.as_deref(), Some("j1"));
        // Both bindings, both to be checked per request.
        assert!(v.x5t_s256.is_some() && v.jkt.is_some());
        assert!(c.ttl <= Duration::from_secs(60));
        // Without exp: kept max_ttl at most.
        let c = i.read_answer(br#"{"active":true}"#).unwrap();
        assert_eq!(c.ttl, Duration::from_secs(300));
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("aGVh.cGF5.c2ln"));
        assert!(!looks_like_jwt("2YotnFZFEjr1zCsicMWpAA"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("a+b.c.d"));
    }

    #[test]
    fn basic_credentials_are_form_encoded_first() {
        assert_eq!(
            basic("a:b", "c d"),
            format!("Basic {}", STANDARD.encode("a%3Ab:c+d"))
        );
    }
}
