//! The one reading of a request target. bindgate routes, authorises and forwards the normalised
//! path made here from the raw target bytes — never Pingora's parsed `uri.path()`, which turns
//! targets such as `clients` or `x:/clients` into `/` while the raw bytes still travel upstream.
//!
//! - origin-form (`/path?query`) is taken as it is; absolute-form (`https://host/path?query`,
//!   RFC 9112 §3.2.2) is reduced to its path, and its authority replaces `Host`; every other
//!   form (`*`, `host:443`, `clients`, `x:/clients`, `?q`) is refused.
//! - The path is normalised once: percent-encoded unreserved characters decoded (RFC 3986
//!   §6.2.2.2), other escapes upper-cased (§6.2.2.1), dot segments removed (§5.2.4), repeated
//!   slashes merged.
//! - Spellings that origin servers read in ways RFC 3986 does not are refused rather than
//!   guessed at: `;` path parameters (servlet containers strip them before mapping), encoded
//!   `;`, `/` and `\`, a raw `\`, bytes outside ASCII, controls, NUL.

use crate::rejection::Rejection;

/// A request target that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTarget {
    /// The normalised path: what is routed, authorised and forwarded.
    pub path: String,
    /// The query as received (without `?`); forwarded unchanged, never logged.
    pub query: Option<String>,
    /// The authority of an absolute-form target (RFC 9112 §3.2.2: it replaces `Host`).
    pub authority: Option<String>,
}

impl RequestTarget {
    /// The target to forward: the normalised path and the query as received.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

fn bad(why: &'static str) -> Rejection {
    Rejection::BadPath(why)
}

/// Reads the raw request target (`RequestHeader::raw_path`, the bytes as received).
pub fn parse(raw: &[u8]) -> Result<RequestTarget, Rejection> {
    let (authority, rest) = if raw.first() == Some(&b'/') {
        (None, raw)
    } else {
        let (authority, rest) = absolute_form(raw)?;
        (Some(authority), rest)
    };
    let (path, query) = match rest.iter().position(|&b| b == b'?') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let path = if path.is_empty() { b"/" as &[u8] } else { path };
    let query = match query {
        None => None,
        Some(q) => {
            if q.iter().any(|&b| !is_query_byte(b)) {
                return Err(bad(
                    "the query holds characters that must be percent-encoded",
                ));
            }
            // Checked above: ASCII only.
            Some(String::from_utf8_lossy(q).into_owned())
        }
    };
    Ok(RequestTarget {
        path: normalise(path)?,
        query,
        authority,
    })
}

/// `http://authority/path?query` or `https://...`: the authority and what follows it.
fn absolute_form(raw: &[u8]) -> Result<(String, &[u8]), Rejection> {
    let colon = raw.iter().position(|&b| b == b':').ok_or(bad(
        "the request target must be origin-form or absolute-form",
    ))?;
    let scheme = &raw[..colon];
    if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
        return Err(bad(
            "the request target must be origin-form or an http(s) absolute-form URI",
        ));
    }
    let after = raw[colon + 1..]
        .strip_prefix(b"//")
        .ok_or(bad("an absolute-form request target needs an authority"))?;
    let end = after
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after.len());
    let authority = &after[..end];
    if !valid_authority(authority) {
        return Err(bad("the request target's authority is malformed"));
    }
    Ok((
        String::from_utf8_lossy(authority).into_owned(),
        &after[end..],
    ))
}

/// host[:port] as it may appear in `Host` or an absolute-form target: reg-name, IPv4 or an
/// IP literal in brackets. No userinfo (RFC 9110 §4.2.4).
pub fn valid_authority(a: &[u8]) -> bool {
    !a.is_empty()
        && a.len() <= 255
        && a.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'[' | b']')
        })
}

/// RFC 3986 §3.4 query characters (pchar / "/" / "?"), with `%` escapes taken as they come.
fn is_query_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
                | b'['
                | b']'
                | b'|'
                | b'^'
                | b'`'
                | b'{'
                | b'}'
                | b'"'
                | b'<'
                | b'>'
        )
}

/// The canonical form of a request path (see the module comment). `/x/` keeps its trailing
/// slash: `/clients/` is not `/clients`.
pub fn normalise(path: &[u8]) -> Result<String, Rejection> {
    if path.first() != Some(&b'/') {
        return Err(bad("it must start with /"));
    }
    let decoded = decode_unreserved(path)?;
    let mut segments: Vec<&str> = Vec::new();
    let trailing_slash =
        decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(bad("it climbs above the root"));
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (trailing_slash && !segments.is_empty()) {
        out.push('/');
    }
    Ok(out)
}

fn decode_unreserved(path: &[u8]) -> Result<String, Rejection> {
    let mut out = String::with_capacity(path.len());
    // Every byte the path stands for, escapes decoded: it must be UTF-8 (RFC 3987), so that an
    // overlong or broken sequence (`%C0%AF` for `/`) never reaches a server that decodes it.
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        match b {
            b'%' => {
                let hex = path
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(bad("malformed percent-encoding"))?;
                decoded.push(hex);
                match hex {
                    0 => return Err(bad("it contains NUL")),
                    b'/' | b'\\' => return Err(bad("it contains an encoded / or \\")),
                    b';' => return Err(bad("it contains an encoded ;")),
                    _ => {}
                }
                if hex.is_ascii_alphanumeric() || matches!(hex, b'-' | b'.' | b'_' | b'~') {
                    out.push(hex as char);
                } else {
                    // Keep the escape, upper-cased (RFC 3986 §6.2.2.1).
                    out.push('%');
                    out.push(hex_digit(hex >> 4));
                    out.push(hex_digit(hex & 0xf));
                }
                i += 3;
            }
            b';' => return Err(bad("path parameters (;) are not accepted")),
            b'\\' => return Err(bad("it contains \\")),
            b'#' => return Err(bad("it contains a fragment")),
            _ if !(0x21..0x7f).contains(&b) => {
                return Err(bad(
                    "it contains control characters, spaces or bytes outside ASCII",
                ))
            }
            _ => {
                decoded.push(b);
                out.push(b as char);
                i += 1;
            }
        }
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(bad("its percent-encoded bytes are not UTF-8"));
    }
    Ok(out)
}

fn hex_digit(n: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(n & 0xf)])
}

/// `scheme://authority` normalised (lower-case scheme and host, default port dropped) and the
/// path ("/" when empty).
pub fn split_uri(uri: &str) -> Option<(String, &str)> {
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let default = if scheme == "https" { ":443" } else { ":80" };
    let authority = authority.strip_suffix(default).unwrap_or(&authority);
    let path = if path.is_empty() { "/" } else { path };
    Some((format!("{scheme}://{authority}"), path))
}

/// An origin as written in the configuration, normalised like `htu`'s.
pub fn normalise_origin(origin: &str) -> Option<String> {
    match split_uri(origin) {
        Some((o, "/")) if !origin.ends_with('/') || origin.matches('/').count() == 3 => Some(o),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str) -> Result<String, Rejection> {
        parse(raw.as_bytes()).map(|t| t.path)
    }

    #[test]
    fn normalisation() {
        assert_eq!(path("/clients").unwrap(), "/clients");
        assert_eq!(path("/").unwrap(), "/");
        assert_eq!(path("//clients").unwrap(), "/clients");
        assert_eq!(path("/./clients").unwrap(), "/clients");
        assert_eq!(path("/x/../clients").unwrap(), "/clients");
        assert_eq!(path("/%63lients").unwrap(), "/clients");
        assert_eq!(path("/clients/").unwrap(), "/clients/");
        assert_eq!(path("/clients/.").unwrap(), "/clients/");
        assert_eq!(path("//clients/").unwrap(), "/clients/");
        assert_eq!(path("/a%7e").unwrap(), "/a~");
        assert_eq!(path("/a%c3%a9").unwrap(), "/a%C3%A9");
        assert_eq!(path("/a/b/..").unwrap(), "/a/");
        assert_eq!(
            path("/%2e%2e/clients").unwrap_err(),
            Rejection::BadPath("it climbs above the root")
        );
        for refused in [
            "/a%zz",
            "/a%+1",
            "/a%-1",
            "/a%00",
            "/clients%C0%AF",
            "/a%ff",
            "/a%e9",
            "/a%",
            "/a%2fb",
            "/a%5Cb",
            "/a\\b",
            "/clients;x",
            "/session-store;x/rest/v2/sessions",
            "/clients%3bx",
            "/a b",
            "/a\u{e9}",
            "/a#frag",
        ] {
            assert!(path(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn request_target_forms() {
        // RFC 9112 §3.2.2: absolute-form is reduced to its path, its authority kept.
        let t = parse(b"https://idp.example.com:8443/x/../clients?a=1").unwrap();
        assert_eq!(t.path, "/clients");
        assert_eq!(t.query.as_deref(), Some("a=1"));
        assert_eq!(t.authority.as_deref(), Some("idp.example.com:8443"));
        assert_eq!(parse(b"HTTP://h").unwrap().path, "/");
        assert_eq!(parse(b"http://h?q").unwrap().query.as_deref(), Some("q"));
        assert_eq!(parse(b"/s?all=true&quiet=true").unwrap().path, "/s");
        for refused in [
            &b"clients"[..],
            b"x:/clients",
            b"myproto:/session-store/rest/v2/sessions?all=true",
            b"*",
            b"idp.example.com:443",
            b"?q=1",
            b"",
            b"http:/clients",
            b"http://user@h/clients",
            b"http:///clients",
            b"/a?b c",
            b"/a?\x7f",
        ] {
            assert!(
                parse(refused).is_err(),
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
    }

    #[test]
    fn origins_and_htu_uris_normalise() {
        assert_eq!(
            split_uri("HTTPS://IdP.Example.com:443/a/./b"),
            Some(("https://idp.example.com".into(), "/a/./b"))
        );
        assert_eq!(split_uri("http://h:80"), Some(("http://h".into(), "/")));
        assert_eq!(
            split_uri("https://h:8443/x"),
            Some(("https://h:8443".into(), "/x"))
        );
        assert_eq!(split_uri("ftp://h/x"), None);
        assert_eq!(split_uri("https://u@h/x"), None);
        assert_eq!(split_uri("https:///x"), None);
        assert_eq!(
            normalise_origin("https://IDP.example.com"),
            Some("https://idp.example.com".into())
        );
        assert_eq!(
            normalise_origin("https://idp.example.com/"),
            Some("https://idp.example.com".into())
        );
        assert_eq!(normalise_origin("https://idp.example.com/path"), None);
    }
}
