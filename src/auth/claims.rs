//! The claims of an access token (an initial access token, or a token on a protected route):
//! parsed defensively (any JSON type may arrive in any claim) into a [`Verified`] that holds no
//! policy — so one verified-token cache serves every policy — and checked against a
//! [`Policy`] on every request.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

use super::denial::Denial;

/// What one kind of request requires of its token, from the configuration: the registration
/// endpoint's, or a protected route's.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Accepted audiences (one is enough).
    pub audiences: Vec<String>,
    pub check_audience: bool,
    /// Every one of these scopes.
    pub scopes: Vec<String>,
    /// `cnf.x5t#S256` required.
    pub require_certificate_binding: bool,
    /// `cnf.x5t#S256` or `cnf.jkt` required.
    pub require_proof_of_possession: bool,
}

/// The outcome of the signature and claim checks that depend on neither the clock, nor the
/// connection, nor the policy: kept in the verified-token cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub exp: f64,
    pub nbf: Option<f64>,
    pub iat: Option<f64>,
    pub audiences: Vec<String>,
    /// From `scp` (array or space-separated string) and `scope` (space-separated string).
    pub scopes: Vec<String>,
    /// The certificate the token is bound to (RFC 8705 §3.1), when it is bound.
    pub x5t_s256: Option<Confirmation>,
    /// The DPoP key the token is bound to (RFC 9449 §6.1), when it is bound.
    pub jkt: Option<Confirmation>,
    /// The token's identifier (RFC 7519 §4.1.7), when it has a string one: the single-use
    /// ledger's key.
    pub jti: Option<String>,
    /// `sub` and `client_id` when they are strings: the access log names them.
    pub sub: Option<String>,
    pub client_id: Option<String>,
    /// The claims as verified (JSON), for the claims a route passes on as headers.
    pub raw: std::sync::Arc<[u8]>,
}

/// A `cnf` member naming a SHA-256 thumbprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// base64url of a SHA-256: matches the certificate (or key) with that thumbprint.
    Sha256([u8; 32]),
    /// Any other string (hex, padded, the wrong length): a bound token that nothing matches,
    /// answered like every other mismatch.
    Unmatchable,
}

impl Confirmation {
    /// Whether `presented` is the thumbprint confirmed, in constant time.
    pub fn matches(&self, presented: &[u8; 32]) -> bool {
        match self {
            Confirmation::Sha256(t) => {
                bool::from(subtle::ConstantTimeEq::ct_eq(&t[..], &presented[..]))
            }
            Confirmation::Unmatchable => false,
        }
    }
}

/// Every claim is taken as raw JSON text borrowed from the payload, so that a wrong type is a
/// clear `invalid_token` (not a deserialisation failure) and nothing is allocated for claims
/// that are never read. A claim that appears twice is refused by serde (ambiguous token).
#[derive(Deserialize)]
struct RawClaims<'a> {
    #[serde(borrow)]
    iss: Option<&'a RawValue>,
    #[serde(borrow)]
    exp: Option<&'a RawValue>,
    #[serde(borrow)]
    nbf: Option<&'a RawValue>,
    #[serde(borrow)]
    iat: Option<&'a RawValue>,
    #[serde(borrow)]
    aud: Option<&'a RawValue>,
    #[serde(borrow)]
    scp: Option<&'a RawValue>,
    #[serde(borrow)]
    scope: Option<&'a RawValue>,
    /// `null` is kept (as the raw `null`): a `cnf` written as null is malformed, never absent.
    #[serde(borrow, default, deserialize_with = "present")]
    cnf: Option<&'a RawValue>,
    #[serde(borrow)]
    jti: Option<&'a RawValue>,
    #[serde(borrow)]
    sub: Option<&'a RawValue>,
    #[serde(borrow)]
    client_id: Option<&'a RawValue>,
}

/// A member that is present, whatever its value — `null` included, which serde's `Option`
/// would read as absent.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue as Deserialize>::deserialize(d).map(Some)
}

/// The confirmation claim (RFC 7800); other confirmation methods are ignored.
#[derive(Deserialize)]
struct RawCnf<'a> {
    #[serde(rename = "x5t#S256", borrow, default, deserialize_with = "present")]
    x5t_s256: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    jkt: Option<&'a RawValue>,
}

/// A `cnf` thumbprint member: any string is a confirmation (matching only its thumbprint).
fn confirmation(name: &str, raw: Option<&RawValue>) -> Result<Option<Confirmation>, Denial> {
    let Some(t) = raw else {
        return Ok(None);
    };
    let t = string(t).ok_or_else(|| invalid(format!("The cnf {name} is not a string")))?;
    // DESIGN.md: any string that is not the presented thumbprint gets the one mismatch
    // answer, however it is malformed.
    let digest = URL_SAFE_NO_PAD
        .decode(t.as_bytes())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok());
    Ok(Some(match digest {
        Some(d) => Confirmation::Sha256(d),
        None => Confirmation::Unmatchable,
    }))
}

fn invalid(why: impl Into<String>) -> Denial {
    Denial::InvalidToken(why.into())
}

/// The JSON type of a raw value, from its first character.
fn kind(raw: &RawValue) -> u8 {
    raw.get().as_bytes().first().copied().unwrap_or(b' ')
}

fn string<'a>(raw: &'a RawValue) -> Option<Cow<'a, str>> {
    if kind(raw) != b'"' {
        return None;
    }
    serde_json::from_str::<Cow<'a, str>>(raw.get()).ok()
}

fn strings<'a>(raw: &'a RawValue) -> Option<Vec<Cow<'a, str>>> {
    if kind(raw) != b'[' {
        return None;
    }
    serde_json::from_str::<Vec<Cow<'a, str>>>(raw.get()).ok()
}

fn numeric_date(name: &str, raw: &RawValue) -> Result<f64, Denial> {
    let k = kind(raw);
    if !(k == b'-' || k.is_ascii_digit()) {
        return Err(invalid(format!("The {name} claim is not a number")));
    }
    match serde_json::from_str::<f64>(raw.get()) {
        Ok(n) if n.is_finite() => Ok(n),
        _ => Err(invalid(format!("The {name} claim is not a number"))),
    }
}

/// Checks everything that depends on neither the clock, the connection nor the policy.
pub fn verify_claims(payload: &[u8], issuer: &str) -> Result<Verified, Denial> {
    let raw: RawClaims = serde_json::from_slice(payload)
        .map_err(|_| invalid("The token claims are not a JSON object"))?;

    match raw.iss {
        None => return Err(invalid("Missing iss claim")),
        Some(v) => match string(v) {
            Some(iss) if iss == issuer => {}
            Some(_) => return Err(invalid("Unexpected token issuer")),
            None => return Err(invalid("The iss claim is not a string")),
        },
    }
    let exp = match raw.exp {
        Some(v) => numeric_date("exp", v)?,
        None => return Err(invalid("Missing exp claim")),
    };
    let nbf = raw.nbf.map(|v| numeric_date("nbf", v)).transpose()?;
    let iat = raw.iat.map(|v| numeric_date("iat", v)).transpose()?;

    let audiences: Vec<String> = match raw.aud {
        None => Vec::new(),
        Some(v) => match kind(v) {
            b'"' => vec![string(v)
                .ok_or_else(|| invalid("The aud claim is malformed"))?
                .into_owned()],
            b'[' => strings(v)
                .ok_or_else(|| invalid("The aud claim holds a non-string value"))?
                .into_iter()
                .map(Cow::into_owned)
                .collect(),
            _ => return Err(invalid("The aud claim is neither a string nor an array")),
        },
    };
    let scopes = scopes(raw.scp, raw.scope)?;
    let (x5t_s256, jkt) = match raw.cnf {
        None => (None, None),
        Some(v) if kind(v) == b'{' => {
            let cnf: RawCnf =
                serde_json::from_str(v.get()).map_err(|_| invalid("The cnf claim is malformed"))?;
            (
                confirmation("x5t#S256", cnf.x5t_s256)?,
                confirmation("jkt", cnf.jkt)?,
            )
        }
        Some(_) => return Err(invalid("The cnf claim is not a JSON object")),
    };
    // Who the token is about and for, for the access log; a value that is not a string is
    // left out (they decide nothing).
    let sub = raw.sub.and_then(string).map(Cow::into_owned);
    let client_id = raw.client_id.and_then(string).map(Cow::into_owned);
    let jti = match raw.jti {
        None => None,
        Some(v) => Some(
            string(v)
                .ok_or_else(|| invalid("The jti claim is not a string"))?
                .into_owned(),
        ),
    };
    Ok(Verified {
        exp,
        nbf,
        iat,
        audiences,
        scopes,
        x5t_s256,
        jkt,
        jti,
        sub,
        client_id,
        raw: payload.into(),
    })
}

/// Scope from `scp` (array, or space-separated string as some providers send) or `scope`
/// (space-separated string, RFC 9068 §2.2.3).
fn scopes(scp: Option<&RawValue>, scope: Option<&RawValue>) -> Result<Vec<String>, Denial> {
    let mut out = Vec::new();
    if let Some(v) = scp {
        match kind(v) {
            b'[' => {
                let items =
                    strings(v).ok_or_else(|| invalid("The scp claim holds a non-string value"))?;
                out.extend(items.into_iter().map(Cow::into_owned));
            }
            b'"' => {
                let s = string(v).ok_or_else(|| invalid("The scp claim is malformed"))?;
                out.extend(s.split(' ').filter(|s| !s.is_empty()).map(String::from));
            }
            _ => return Err(invalid("The scp claim is neither an array nor a string")),
        }
    }
    if let Some(v) = scope {
        let s = string(v).ok_or_else(|| invalid("The scope claim is not a string"))?;
        out.extend(s.split(' ').filter(|s| !s.is_empty()).map(String::from));
    }
    Ok(out)
}

impl Policy {
    /// The audience and binding requirements (checked before the binding itself).
    pub fn check_claims(&self, v: &Verified) -> Result<(), Denial> {
        if self.check_audience
            && !v
                .audiences
                .iter()
                .any(|a| self.audiences.iter().any(|accepted| accepted == a))
        {
            return Err(invalid("The token audience is not accepted"));
        }
        if self.require_certificate_binding && v.x5t_s256.is_none() {
            return Err(invalid(
                "The initial access token must be bound to a client certificate (cnf x5t#S256)",
            ));
        }
        if self.require_proof_of_possession && v.x5t_s256.is_none() && v.jkt.is_none() {
            return Err(invalid(
                "The token must be bound to a certificate (cnf x5t#S256) or a DPoP key (cnf jkt)",
            ));
        }
        Ok(())
    }

    /// The scope requirement (checked last: RFC 6750 §3.1 answers it with 403).
    pub fn check_scope(&self, v: &Verified) -> Result<(), Denial> {
        if self
            .scopes
            .iter()
            .all(|wanted| v.scopes.iter().any(|s| s == wanted))
        {
            Ok(())
        } else {
            Err(Denial::InsufficientScope {
                scope: self.scopes.join(" "),
            })
        }
    }
}

/// Checks `exp`, `nbf` and `iat` against `now` (seconds since the epoch) with the leeway.
pub fn check_time(v: &Verified, now: f64, leeway: f64) -> Result<(), Denial> {
    if now >= v.exp + leeway {
        return Err(invalid("The token has expired"));
    }
    if v.nbf.is_some_and(|nbf| now + leeway < nbf) {
        return Err(invalid("The token is not valid yet (nbf)"));
    }
    if v.iat.is_some_and(|iat| now + leeway < iat) {
        return Err(invalid("The token was issued in the future (iat)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ISSUER: &str = "https://idp.example.com";

    fn policy() -> Policy {
        Policy {
            audiences: vec![
                "https://idp.example.com/clients".into(),
                "https://idp.example.com".into(),
            ],
            check_audience: true,
            scopes: vec!["client-reg".into()],
            require_certificate_binding: false,
            require_proof_of_possession: false,
        }
    }

    fn good() -> serde_json::Value {
        json!({
            "iss": "https://idp.example.com",
            "aud": "https://idp.example.com/clients",
            "exp": 2_000_000_000,
            "scp": ["openid", "client-reg"],
        })
    }

    fn with(key: &str, value: serde_json::Value) -> Vec<u8> {
        let mut c = good();
        c[key] = value;
        serde_json::to_vec(&c).unwrap()
    }

    /// The description of the first refusal of verification and policy.
    fn err(payload: &[u8]) -> String {
        match verify_claims(payload, ISSUER).and_then(|v| {
            policy().check_claims(&v)?;
            policy().check_scope(&v)
        }) {
            Err(Denial::InvalidToken(why)) => why,
            Err(Denial::InsufficientScope { .. }) => "insufficient scope".into(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_good_token() {
        let v = verify_claims(&serde_json::to_vec(&good()).unwrap(), ISSUER).unwrap();
        assert!(policy().check_claims(&v).is_ok());
        assert!(policy().check_scope(&v).is_ok());
        assert_eq!(v.exp, 2e9);
        assert_eq!(v.x5t_s256, None);
        assert_eq!(v.jkt, None);
    }

    #[test]
    fn hostile_types_are_invalid_tokens() {
        assert!(err(&with("exp", json!("2000000000"))).contains("exp"));
        assert!(err(&with("exp", json!(null))).contains("exp"));
        assert!(err(&with("exp", json!([1]))).contains("exp"));
        assert!(err(&with("nbf", json!({}))).contains("nbf"));
        assert!(err(&with("iat", json!(true))).contains("iat"));
        assert!(err(&with("aud", json!(42))).contains("aud"));
        assert!(err(&with("aud", json!([42]))).contains("aud"));
        assert!(err(&with("iss", json!(["https://idp.example.com"]))).contains("iss"));
        assert!(err(&with("scp", json!(7))).contains("scp"));
        assert!(err(&with("scp", json!([7]))).contains("scp"));
        assert!(err(&with("scope", json!(["client-reg"]))).contains("scope"));
        assert!(err(&with("cnf", json!("x"))).contains("cnf"));
        assert!(err(&with("cnf", json!({"x5t#S256": 5}))).contains("x5t#S256"));
        assert!(err(&with("cnf", json!({"jkt": ["x"]}))).contains("jkt"));
        // An issuer-signed null is malformed, never "unbound".
        assert!(err(&with("cnf", json!(null))).contains("cnf"));
        assert!(err(&with("cnf", json!({"x5t#S256": null}))).contains("x5t#S256"));
        assert!(err(&with("cnf", json!({"jkt": null}))).contains("jkt"));
        // A string that is no thumbprint is a binding nothing matches (the mismatch answer
        // comes from the per-request check), not a malformed token.
        for t in [
            "!!",
            "AAAA",
            &"ab".repeat(32),
            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
        ] {
            let v =
                verify_claims(&with("cnf", json!({ "x5t#S256": t, "jkt": t })), ISSUER).unwrap();
            assert_eq!(v.x5t_s256, Some(Confirmation::Unmatchable), "{t}");
            assert_eq!(v.jkt, Some(Confirmation::Unmatchable), "{t}");
            assert!(!Confirmation::Unmatchable.matches(&[0; 32]));
        }
        assert!(err(b"[1,2,3]").contains("JSON object"));
        assert!(err(b"not json").contains("JSON object"));
        assert!(err(b"").contains("JSON object"));
        assert!(
            err(br#"{"iss":"https://idp.example.com","exp":1,"exp":2}"#).contains("JSON object")
        );
    }

    #[test]
    fn issuer_expiry_and_audience() {
        assert!(err(&with("iss", json!("https://evil.example.com"))).contains("issuer"));
        let mut no_exp = good();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(err(&serde_json::to_vec(&no_exp).unwrap()).contains("exp"));
        assert!(err(&with("aud", json!("https://other.example.com"))).contains("audience"));
        let v = verify_claims(
            &with("aud", json!(["x", "https://idp.example.com"])),
            ISSUER,
        )
        .unwrap();
        assert!(policy().check_claims(&v).is_ok());
        let mut no_aud = good();
        no_aud.as_object_mut().unwrap().remove("aud");
        let payload = serde_json::to_vec(&no_aud).unwrap();
        assert!(err(&payload).contains("audience"));
        let lax = Policy {
            check_audience: false,
            ..policy()
        };
        let v = verify_claims(&payload, ISSUER).unwrap();
        assert!(lax.check_claims(&v).is_ok());
        let v = verify_claims(&with("aud", json!("https://other.example.com")), ISSUER).unwrap();
        assert!(lax.check_claims(&v).is_ok());
    }

    #[test]
    fn scope_forms() {
        let has = |key: &str, v: serde_json::Value, wanted: &[&str]| {
            let mut c = good();
            c.as_object_mut().unwrap().remove("scp");
            c[key] = v;
            let v = verify_claims(&serde_json::to_vec(&c).unwrap(), ISSUER).unwrap();
            Policy {
                scopes: wanted.iter().map(|s| s.to_string()).collect(),
                ..policy()
            }
            .check_scope(&v)
            .is_ok()
        };
        assert!(has("scp", json!(["client-reg"]), &["client-reg"]));
        assert!(has("scp", json!("openid client-reg"), &["client-reg"]));
        assert!(has("scope", json!("openid client-reg"), &["client-reg"]));
        assert!(!has(
            "scope",
            json!("openid client-registration"),
            &["client-reg"]
        ));
        assert!(!has("scp", json!([]), &["client-reg"]));
        assert!(!has("other", json!("client-reg"), &["client-reg"]));
        // Every listed scope is required.
        assert!(has(
            "scope",
            json!("openid profile"),
            &["openid", "profile"]
        ));
        assert!(!has("scope", json!("openid"), &["openid", "profile"]));
        assert!(has("scope", json!("anything"), &[]));
    }

    #[test]
    fn binding_claims_and_requirements() {
        let t = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let v = verify_claims(&with("cnf", json!({"x5t#S256": t})), ISSUER).unwrap();
        assert_eq!(v.x5t_s256, Some(Confirmation::Sha256([7u8; 32])));
        assert!(v.x5t_s256.unwrap().matches(&[7u8; 32]));
        assert!(!v.x5t_s256.unwrap().matches(&[8u8; 32]));
        let strict = Policy {
            require_certificate_binding: true,
            ..policy()
        };
        let unbound = verify_claims(&serde_json::to_vec(&good()).unwrap(), ISSUER).unwrap();
        let dpop_bound = verify_claims(&with("cnf", json!({"jkt": t})), ISSUER).unwrap();
        assert_eq!(dpop_bound.jkt, Some(Confirmation::Sha256([7u8; 32])));
        assert!(strict.check_claims(&unbound).is_err());
        assert!(strict.check_claims(&dpop_bound).is_err());
        assert!(strict.check_claims(&v).is_ok());
        let pop = Policy {
            require_proof_of_possession: true,
            ..policy()
        };
        assert!(pop.check_claims(&unbound).is_err());
        assert!(pop.check_claims(&dpop_bound).is_ok());
        assert!(pop.check_claims(&v).is_ok());
    }

    #[test]
    fn time_with_leeway() {
        let v = Verified {
            exp: 1000.0,
            nbf: Some(500.0),
            iat: Some(400.0),
            audiences: vec![],
            scopes: vec![],
            x5t_s256: None,
            jkt: None,
            jti: None,
            sub: None,
            client_id: None,
            raw: std::sync::Arc::from(&b"{}"[..]),
        };
        assert!(check_time(&v, 900.0, 60.0).is_ok());
        assert!(check_time(&v, 1059.0, 60.0).is_ok());
        assert!(check_time(&v, 1060.0, 60.0).is_err());
        assert!(check_time(&v, 441.0, 60.0).is_ok());
        assert!(check_time(&v, 439.0, 60.0).is_err());
        assert!(check_time(&v, 1000.0, 0.0).is_err());
    }
}
