//! RFC 6750 §2.1: the bearer token of a request, or why the request is malformed.

use http::HeaderMap;

use crate::rejection::Rejection;

/// RFC 6750 §2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

fn query_has_access_token(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.split('=').next() == Some("access_token"))
    })
}

/// How an access token was presented (RFC 6750 §2.1, RFC 9449 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    Dpop,
}

/// An access token as presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presented<'a> {
    pub scheme: Scheme,
    pub token: &'a str,
}

/// The bearer token of the request: `Ok(None)` when it carries no bearer credentials (no
/// Authorization header, or another scheme), `Err` with `invalid_request` when it is malformed.
pub fn bearer_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&str>,
) -> Result<Option<&'a str>, Rejection> {
    Ok(access_token(headers, query)?
        .filter(|p| p.scheme == Scheme::Bearer)
        .map(|p| p.token))
}

/// The access token of the request with its scheme, `Bearer` or `DPoP`: `Ok(None)` when there
/// is none (no Authorization header, or another scheme), `Err` with `invalid_request` when it
/// is malformed or sent twice.
pub fn access_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&str>,
) -> Result<Option<Presented<'a>>, Rejection> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Rejection::InvalidRequest(
            "The Authorization header was sent more than once",
        ));
    }
    // RFC 6750 §3.1: a token in more than one place is an invalid request; bindgate takes the
    // header only, so a query token is refused rather than silently ignored.
    if query_has_access_token(query) {
        return Err(Rejection::InvalidRequest(if first.is_some() {
            "The access token was sent more than once"
        } else {
            "Send the access token in the Authorization header, not the query"
        }));
    }
    let Some(value) = first else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Rejection::InvalidRequest("Malformed Authorization header"))?;
    let scheme_of = |s: &str| {
        if s.eq_ignore_ascii_case("bearer") {
            Some(Scheme::Bearer)
        } else if s.eq_ignore_ascii_case("dpop") {
            Some(Scheme::Dpop)
        } else {
            None
        }
    };
    let (scheme, rest) = match value.split_once(' ') {
        Some((scheme, rest)) => match scheme_of(scheme) {
            Some(s) => (s, rest),
            None => return Ok(None),
        },
        None if scheme_of(value).is_some() => {
            return Err(Rejection::InvalidRequest(
                "Malformed Authorization header: no token",
            ))
        }
        None => return Ok(None),
    };
    let token = rest.trim_matches(' ');
    if !is_b64token(token) {
        return Err(Rejection::InvalidRequest(
            "Malformed Authorization header: not a bearer token",
        ));
    }
    Ok(Some(Presented { scheme, token }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn parses_bearer() {
        assert_eq!(
            bearer_token(&with(&["Bearer abc.def-_~+/=="]), None),
            Ok(Some("abc.def-_~+/=="))
        );
        assert_eq!(bearer_token(&with(&["bearer abc"]), None), Ok(Some("abc")));
        assert_eq!(
            bearer_token(&with(&["BEARER  abc "]), None),
            Ok(Some("abc"))
        );
        assert_eq!(bearer_token(&with(&[]), None), Ok(None));
        assert_eq!(bearer_token(&with(&["Basic dXNlcjpwYXNz"]), None), Ok(None));
        assert_eq!(bearer_token(&with(&[]), Some("a=1&b=2")), Ok(None));
        // A DPoP-scheme token is no bearer token.
        assert_eq!(bearer_token(&with(&["DPoP abc"]), None), Ok(None));
    }

    #[test]
    fn parses_both_schemes() {
        assert_eq!(
            access_token(&with(&["DPoP abc.def"]), None),
            Ok(Some(Presented {
                scheme: Scheme::Dpop,
                token: "abc.def"
            }))
        );
        assert_eq!(
            access_token(&with(&["dpop  abc "]), None).map(|p| p.map(|p| p.token)),
            Ok(Some("abc"))
        );
        assert_eq!(
            access_token(&with(&["Bearer abc"]), None).map(|p| p.map(|p| p.scheme)),
            Ok(Some(Scheme::Bearer))
        );
        assert!(access_token(&with(&["DPoP"]), None).is_err());
        assert!(access_token(&with(&["DPoP a", "Bearer a"]), None).is_err());
        assert_eq!(access_token(&with(&["Basic x"]), None), Ok(None));
    }

    #[test]
    fn malformed_is_invalid_request() {
        for bad in [
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer a,b",
            "Bearer =abc",
            "Bearer a\"b",
        ] {
            assert!(
                matches!(
                    bearer_token(&with(&[bad]), None),
                    Err(Rejection::InvalidRequest(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            bearer_token(&with(&["Bearer a", "Bearer b"]), None),
            Err(Rejection::InvalidRequest(_))
        ));
        assert!(matches!(
            bearer_token(&with(&["Bearer a"]), Some("access_token=a")),
            Err(Rejection::InvalidRequest(
                "The access token was sent more than once"
            ))
        ));
        assert!(matches!(
            bearer_token(&with(&[]), Some("x=1&access_token=a")),
            Err(Rejection::InvalidRequest(_))
        ));
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        );
        assert!(matches!(
            bearer_token(&h, None),
            Err(Rejection::InvalidRequest(_))
        ));
    }
}
