//! RFC 6750 §2.1: the bearer token of a request, or why the request is malformed.

use http::HeaderMap;

use super::denial::Denial;

/// A `b64token` character other than the trailing `=` (RFC 6750 §2.1): `ALPHA / DIGIT / "-" /
/// "." / "_" / "~" / "+" / "/"`. Branch-free, so that the check of a whole token compiles to
/// vector compares (a token is checked on every authorised request).
fn is_b64token_char(b: u8) -> bool {
    let lower = b | 0x20;
    (lower.wrapping_sub(b'a') < 26)
        | (b.wrapping_sub(b'0') < 10)
        | (b == b'-')
        | (b == b'.')
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
        | (b == b'/')
}

/// RFC 6750 §2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &[u8]) -> bool {
    let body = match token.iter().rposition(|&b| b != b'=') {
        Some(last) => &token[..=last],
        None => return false,
    };
    body.iter().fold(true, |ok, &b| ok & is_b64token_char(b))
}

fn query_has_access_token(query: Option<&str>) -> bool {
    query.is_some_and(|q| form_has_access_token(q.as_bytes()))
}

/// Whether a form-encoded text (a query, an `application/x-www-form-urlencoded` body) carries
/// an `access_token` parameter (RFC 6750 §2.2, §2.3), its name read as the servers behind may
/// read it: percent-decoded (`access%5Ftoken`), `+` as a space, `&` or `;` between pairs,
/// `access_token[...]` as PHP reads it.
pub fn form_has_access_token(form: &[u8]) -> bool {
    form.split(|&b| b == b';').any(|part| {
        form_urlencoded::parse(part)
            .any(|(name, _)| name == "access_token" || name.starts_with("access_token["))
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
) -> Result<Option<&'a str>, Denial> {
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
) -> Result<Option<Presented<'a>>, Denial> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Denial::InvalidRequest(
            "The Authorization header was sent more than once",
        ));
    }
    // RFC 6750 §3.1: a token in more than one place is an invalid request; bindgate takes the
    // header only, so a query token is refused rather than silently ignored.
    if query_has_access_token(query) {
        return Err(Denial::InvalidRequest(if first.is_some() {
            "The access token was sent more than once"
        } else {
            "Send the access token in the Authorization header, not the query"
        }));
    }
    let Some(value) = first else {
        return Ok(None);
    };
    // Only bytes are looked at until the token is known to be a b64token (ASCII): one pass
    // over the token, not a UTF-8 check and then a character check.
    let value = value.as_bytes();
    let malformed = || Denial::InvalidRequest("Malformed Authorization header");
    let scheme_of = |s: &[u8]| {
        if s.eq_ignore_ascii_case(b"bearer") {
            Some(Scheme::Bearer)
        } else if s.eq_ignore_ascii_case(b"dpop") {
            Some(Scheme::Dpop)
        } else {
            None
        }
    };
    let visible = |v: &[u8]| v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
    let split = value.iter().position(|&b| b == b' ');
    let (scheme, rest) = match split.map(|i| (scheme_of(&value[..i]), &value[i + 1..])) {
        Some((Some(scheme), rest)) => (scheme, rest),
        // Another scheme: none of ours, if the header is well formed at all.
        Some((None, _)) | None if !visible(value) => return Err(malformed()),
        Some((None, _)) => return Ok(None),
        None if scheme_of(value).is_some() => {
            return Err(Denial::InvalidRequest(
                "Malformed Authorization header: no token",
            ))
        }
        None => return Ok(None),
    };
    let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    let end = rest
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |i| i + 1);
    let token = &rest[start..end];
    if !is_b64token(token) {
        return Err(if visible(value) {
            Denial::InvalidRequest("Malformed Authorization header: not a bearer token")
        } else {
            malformed()
        });
    }
    // A b64token is ASCII: this cannot fail, and costs one word-at-a-time pass.
    let token = std::str::from_utf8(token).map_err(|_| malformed())?;
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

    /// The branch-free character check against the grammar as RFC 6750 writes it.
    #[test]
    fn b64token_characters_are_the_rfc_s() {
        for b in 0..=255u8 {
            let rfc = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
            assert_eq!(is_b64token_char(b), rfc, "byte {b:#04x}");
        }
        assert!(is_b64token(b"a"));
        assert!(is_b64token(b"a.b-c_d~e+f/g=="));
        for bad in [
            &b""[..],
            b"=",
            b"==",
            b"=a",
            b"a=b",
            b"a b",
            b"a\xff",
            b"a,b",
        ] {
            assert!(!is_b64token(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// The parse as first written (a UTF-8 check, then the grammar on the string), as a
    /// reference for the byte-wise one.
    fn reference(value: &[u8]) -> Result<Option<(Scheme, String)>, ()> {
        let value = std::str::from_utf8(value)
            .ok()
            .filter(|v| v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)))
            .ok_or(())?;
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
            None if scheme_of(value).is_some() => return Err(()),
            None => return Ok(None),
        };
        let token = rest.trim_matches(' ');
        let body = token.trim_end_matches('=');
        let ok = !body.is_empty()
            && body.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
            });
        if ok {
            Ok(Some((scheme, token.to_string())))
        } else {
            Err(())
        }
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn byte_wise_parse_is_the_reference(
            scheme in proptest::sample::select(vec!["Bearer", "bearer", "DPoP", "dpop", "Basic", "", "Bearer\t"]),
            spaces in 0usize..3,
            token in proptest::collection::vec(any::<u8>().prop_map(|b| {
                // Mostly token characters, some of everything else.
                const COMMON: &[u8] = b"aZ09-._~+/= ";
                if b < 200 { COMMON[b as usize % COMMON.len()] } else { b }
            }), 0..40),
        ) {
            let mut value = scheme.as_bytes().to_vec();
            value.extend(std::iter::repeat_n(b' ', spaces));
            value.extend(&token);
            let Ok(header) = http::HeaderValue::from_bytes(&value) else { return Ok(()) };
            let mut h = HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, header);
            let got = access_token(&h, None)
                .map(|p| p.map(|p| (p.scheme, p.token.to_string())))
                .map_err(|_| ());
            prop_assert_eq!(got, reference(&value));
        }
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
                    Err(Denial::InvalidRequest(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            bearer_token(&with(&["Bearer a", "Bearer b"]), None),
            Err(Denial::InvalidRequest(_))
        ));
        assert!(matches!(
            bearer_token(&with(&["Bearer a"]), Some("access_token=a")),
            Err(Denial::InvalidRequest(
                "The access token was sent more than once"
            ))
        ));
        assert!(matches!(
            bearer_token(&with(&[]), Some("x=1&access_token=a")),
            Err(Denial::InvalidRequest(_))
        ));
        // Other spellings of the name that servers read as access_token.
        for q in [
            "access%5Ftoken=a",
            "%61ccess_token=a",
            "x=1;access_token=a",
            "access_token[]=a",
            "access_token",
        ] {
            assert!(
                matches!(
                    bearer_token(&with(&["Bearer a"]), Some(q)),
                    Err(Denial::InvalidRequest(_))
                ),
                "{q}"
            );
        }
        for q in ["access_tokens=a", "x=access_token", "my_access_token=a"] {
            assert_eq!(
                bearer_token(&with(&["Bearer a"]), Some(q)),
                Ok(Some("a")),
                "{q}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        );
        assert!(matches!(
            bearer_token(&h, None),
            Err(Denial::InvalidRequest(_))
        ));
    }
}
