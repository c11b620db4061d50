//! Claims passed on to the upstream as headers (`routes[].token.headers`): read from the
//! verified token only, after every check passed. A string goes as it is, a number or a boolean
//! as JSON writes it, an array of those joined with spaces; a missing, null or structured
//! claim sets nothing. A value no header can carry (CR, LF, NUL, other controls) refuses the
//! request: it is never cut, escaped or sent.

use http::{HeaderName, HeaderValue};
use serde_json::Value;

use super::claims::Verified;
use super::denial::Denial;

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The headers `wanted` (header, claim) names, from `verified`'s claims.
pub fn of(
    verified: &Verified,
    wanted: &[(HeaderName, String)],
) -> Result<Vec<(HeaderName, HeaderValue)>, Denial> {
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(&verified.raw) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(wanted.len());
    for (header, claim) in wanted {
        let text = match claims.get(claim) {
            None | Some(Value::Null) | Some(Value::Object(_)) => continue,
            Some(Value::Array(items)) => {
                match items.iter().map(scalar).collect::<Option<Vec<_>>>() {
                    Some(parts) => parts.join(" "),
                    None => continue,
                }
            }
            Some(v) => match scalar(v) {
                Some(s) => s,
                None => continue,
            },
        };
        let value = HeaderValue::from_str(&text).map_err(|_| {
            Denial::InvalidToken(format!(
                "The token's {claim} claim cannot be passed on as a header"
            ))
        })?;
        out.push((header.clone(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(claims: &str) -> Verified {
        let mut v =
            crate::auth::claims::verify_claims(br#"{"iss":"i","exp":9999999999}"#, "i").unwrap();
        v.raw = claims.as_bytes().into();
        v
    }

    fn headers(claims: &str) -> Result<Vec<(String, String)>, Denial> {
        let wanted = [
            (HeaderName::from_static("x-sub"), "sub".to_string()),
            (HeaderName::from_static("x-scope"), "scope".to_string()),
            (HeaderName::from_static("x-roles"), "roles".to_string()),
        ];
        of(&verified(claims), &wanted).map(|h| {
            h.into_iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_string()))
                .collect()
        })
    }

    #[test]
    fn claims_become_headers_or_nothing() {
        assert_eq!(
            headers(r#"{"sub":"alice","scope":"a b","roles":["x",2,true]}"#).unwrap(),
            [
                ("x-sub".to_string(), "alice".to_string()),
                ("x-scope".to_string(), "a b".to_string()),
                ("x-roles".to_string(), "x 2 true".to_string()),
            ]
        );
        // Missing, null, objects and nested arrays set nothing.
        assert!(headers(r#"{"sub":null,"roles":{"a":1},"scope":[["x"]]}"#)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_value_no_header_can_carry_refuses_the_request() {
        for claims in [
            r#"{"sub":"alice\r\nX-Admin: true"}"#,
            r#"{"sub":"a\nb"}"#,
            r#"{"sub":"a\u0000b"}"#,
            r#"{"roles":["ok","bad\r"]}"#,
        ] {
            assert!(
                matches!(headers(claims), Err(Denial::InvalidToken(_))),
                "{claims}"
            );
        }
    }
}
