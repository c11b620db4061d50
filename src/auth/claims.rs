//! The claims of an initial access token: parsed defensively (any JSON type may arrive in any
//! claim) and checked against the registration endpoint's rules.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

use crate::rejection::Rejection;

/// What the token must satisfy, from the configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    pub issuer: String,
    /// Accepted audiences: the registration endpoint URI and the issuer.
    pub audiences: Vec<String>,
    pub check_audience: bool,
    pub scope: String,
    pub leeway_secs: f64,
    pub require_binding: bool,
}

/// The outcome of the time-independent checks, kept in the verified-token cache. Time and the
/// certificate binding are checked again on every request.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub exp: f64,
    pub nbf: Option<f64>,
    pub iat: Option<f64>,
    pub has_scope: bool,
    /// The certificate the token is bound to (RFC 8705 §3.1), when it is bound.
    pub x5t_s256: Option<CertificateBinding>,
}

/// A `cnf.x5t#S256` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateBinding {
    /// base64url of a SHA-256: matches the certificate with that thumbprint.
    Thumbprint([u8; 32]),
    /// Any other string (hex, padded, the wrong length): a bound token that no certificate
    /// matches, answered like every other mismatch.
    Unmatchable,
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
    #[serde(borrow)]
    cnf: Option<&'a RawValue>,
}

/// The confirmation claim (RFC 7800); other confirmation methods are ignored.
#[derive(Deserialize)]
struct RawCnf<'a> {
    #[serde(rename = "x5t#S256", borrow)]
    x5t_s256: Option<&'a RawValue>,
}

fn invalid(why: impl Into<String>) -> Rejection {
    Rejection::InvalidToken(why.into())
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

fn numeric_date(name: &str, raw: &RawValue) -> Result<f64, Rejection> {
    let k = kind(raw);
    if !(k == b'-' || k.is_ascii_digit()) {
        return Err(invalid(format!("The {name} claim is not a number")));
    }
    match serde_json::from_str::<f64>(raw.get()) {
        Ok(n) if n.is_finite() => Ok(n),
        _ => Err(invalid(format!("The {name} claim is not a number"))),
    }
}

/// Checks everything that does not depend on the clock or the connection.
pub fn verify_claims(payload: &[u8], rules: &Rules) -> Result<Verified, Rejection> {
    let raw: RawClaims = serde_json::from_slice(payload)
        .map_err(|_| invalid("The token claims are not a JSON object"))?;

    match raw.iss {
        None => return Err(invalid("Missing iss claim")),
        Some(v) => match string(v) {
            Some(iss) if iss == rules.issuer => {}
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

    let audiences: Vec<Cow<str>> = match raw.aud {
        None => Vec::new(),
        Some(v) => match kind(v) {
            b'"' => vec![string(v).ok_or_else(|| invalid("The aud claim is malformed"))?],
            b'[' => strings(v).ok_or_else(|| invalid("The aud claim holds a non-string value"))?,
            _ => return Err(invalid("The aud claim is neither a string nor an array")),
        },
    };
    if rules.check_audience
        && !audiences
            .iter()
            .any(|a| rules.audiences.iter().any(|accepted| accepted == a))
    {
        return Err(invalid("The token audience is not accepted"));
    }

    let has_scope = scope_contains(raw.scp, raw.scope, &rules.scope)?;

    let x5t_s256 = match raw.cnf {
        None => None,
        Some(v) if kind(v) == b'{' => {
            let cnf: RawCnf =
                serde_json::from_str(v.get()).map_err(|_| invalid("The cnf claim is malformed"))?;
            match cnf.x5t_s256 {
                None => None,
                Some(t) => {
                    let t = string(t).ok_or_else(|| invalid("The cnf x5t#S256 is not a string"))?;
                    // DESIGN.md: any string that is not the presented certificate's thumbprint
                    // gets the one mismatch answer, however it is malformed.
                    let digest = URL_SAFE_NO_PAD
                        .decode(t.as_bytes())
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok());
                    Some(match digest {
                        Some(d) => CertificateBinding::Thumbprint(d),
                        None => CertificateBinding::Unmatchable,
                    })
                }
            }
        }
        Some(_) => return Err(invalid("The cnf claim is not a JSON object")),
    };
    if rules.require_binding && x5t_s256.is_none() {
        return Err(invalid(
            "The initial access token must be bound to a client certificate (cnf x5t#S256)",
        ));
    }
    Ok(Verified {
        exp,
        nbf,
        iat,
        has_scope,
        x5t_s256,
    })
}

/// Scope from `scp` (array, or space-separated string as some providers send) or `scope`
/// (space-separated string, RFC 9068 §2.2.3).
fn scope_contains(
    scp: Option<&RawValue>,
    scope: Option<&RawValue>,
    wanted: &str,
) -> Result<bool, Rejection> {
    let mut found = false;
    if let Some(v) = scp {
        match kind(v) {
            b'[' => {
                let items =
                    strings(v).ok_or_else(|| invalid("The scp claim holds a non-string value"))?;
                found |= items.iter().any(|s| s == wanted);
            }
            b'"' => {
                let s = string(v).ok_or_else(|| invalid("The scp claim is malformed"))?;
                found |= s.split(' ').any(|s| s == wanted);
            }
            _ => return Err(invalid("The scp claim is neither an array nor a string")),
        }
    }
    if let Some(v) = scope {
        let s = string(v).ok_or_else(|| invalid("The scope claim is not a string"))?;
        found |= s.split(' ').any(|s| s == wanted);
    }
    Ok(found)
}

/// Checks `exp`, `nbf` and `iat` against `now` (seconds since the epoch) with the leeway.
pub fn check_time(v: &Verified, now: f64, leeway: f64) -> Result<(), Rejection> {
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

    fn rules() -> Rules {
        Rules {
            issuer: "https://idp.example.com".into(),
            audiences: vec![
                "https://idp.example.com/clients".into(),
                "https://idp.example.com".into(),
            ],
            check_audience: true,
            scope: "client-reg".into(),
            leeway_secs: 60.0,
            require_binding: false,
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

    fn err(payload: &[u8]) -> String {
        match verify_claims(payload, &rules()) {
            Err(Rejection::InvalidToken(why)) => why,
            other => panic!("expected invalid_token, got {other:?}"),
        }
    }

    #[test]
    fn a_good_token() {
        let v = verify_claims(&serde_json::to_vec(&good()).unwrap(), &rules()).unwrap();
        assert!(v.has_scope);
        assert_eq!(v.exp, 2e9);
        assert_eq!(v.x5t_s256, None);
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
        // A string that is no thumbprint is a binding no certificate matches (the mismatch
        // answer comes from the per-request check), not a malformed token.
        for t in [
            "!!",
            "AAAA",
            &"ab".repeat(32),
            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
        ] {
            let v = verify_claims(&with("cnf", json!({ "x5t#S256": t })), &rules()).unwrap();
            assert_eq!(v.x5t_s256, Some(CertificateBinding::Unmatchable), "{t}");
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
        assert!(verify_claims(
            &with("aud", json!(["x", "https://idp.example.com"])),
            &rules()
        )
        .is_ok());
        let mut no_aud = good();
        no_aud.as_object_mut().unwrap().remove("aud");
        let payload = serde_json::to_vec(&no_aud).unwrap();
        assert!(err(&payload).contains("audience"));
        let lax = Rules {
            check_audience: false,
            ..rules()
        };
        assert!(verify_claims(&payload, &lax).is_ok());
        assert!(verify_claims(&with("aud", json!("https://other.example.com")), &lax).is_ok());
    }

    #[test]
    fn scope_forms() {
        let has = |key: &str, v: serde_json::Value| {
            let mut c = good();
            c.as_object_mut().unwrap().remove("scp");
            c[key] = v;
            verify_claims(&serde_json::to_vec(&c).unwrap(), &rules())
                .unwrap()
                .has_scope
        };
        assert!(has("scp", json!(["client-reg"])));
        assert!(has("scp", json!("openid client-reg")));
        assert!(has("scope", json!("openid client-reg")));
        assert!(!has("scope", json!("openid client-registration")));
        assert!(!has("scp", json!([])));
        assert!(!has("other", json!("client-reg")));
    }

    #[test]
    fn binding_claim_and_requirement() {
        let t = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let v = verify_claims(&with("cnf", json!({"x5t#S256": t})), &rules()).unwrap();
        assert_eq!(v.x5t_s256, Some(CertificateBinding::Thumbprint([7u8; 32])));
        let strict = Rules {
            require_binding: true,
            ..rules()
        };
        assert!(verify_claims(&serde_json::to_vec(&good()).unwrap(), &strict).is_err());
        assert!(verify_claims(&with("cnf", json!({"jkt": "abc"})), &strict).is_err());
        assert!(verify_claims(&with("cnf", json!({"x5t#S256": t})), &strict).is_ok());
    }

    #[test]
    fn time_with_leeway() {
        let v = Verified {
            exp: 1000.0,
            nbf: Some(500.0),
            iat: Some(400.0),
            has_scope: true,
            x5t_s256: None,
        };
        assert!(check_time(&v, 900.0, 60.0).is_ok());
        assert!(check_time(&v, 1059.0, 60.0).is_ok());
        assert!(check_time(&v, 1060.0, 60.0).is_err());
        assert!(check_time(&v, 441.0, 60.0).is_ok());
        assert!(check_time(&v, 439.0, 60.0).is_err());
        assert!(check_time(&v, 1000.0, 0.0).is_err());
    }
}
