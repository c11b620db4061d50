//! The request headers an upstream may trust for who the client is, where it came from, what it
//! asked for or how the message is framed: one list, for what the forwarder strips and for what
//! the configuration may not reuse (`client_cert_header`).

use pingora::http::RequestHeader;

/// Headers an upstream may trust for the client's address, scheme or host: removed from every
/// forwarded request; bindgate sets its own X-Forwarded-For/-Proto/-Host and Forwarded.
pub const FORWARDING: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
];

/// Headers some frameworks (Symfony, Zend, IIS rewrite) take as the request path instead of the
/// target: a client's would route around what bindgate authorised, on any route.
pub const PATH_OVERRIDE: &[&str] = &["x-original-url", "x-rewrite-url"];

/// Headers some frameworks take as the request method: removed on the operations bindgate
/// authorises by method (registration, session store).
pub const METHOD_OVERRIDE: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// RFC 9440 §3: a client's own certificate headers.
pub const CLIENT_CERT: &[&str] = &["client-cert", "client-cert-chain"];

/// Hop-by-hop headers removed whatever `Connection` lists (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &["keep-alive", "proxy-connection", "proxy-authorization"];

/// Headers HTTP itself, or bindgate's policies, give a meaning to.
const PROTOCOL: &[&str] = &[
    "host",
    "authorization",
    "dpop",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "expect",
    "cookie",
    "sid",
];

/// Whether an upstream could take the header `name` (lowercase) for the client's identity,
/// address, path or method.
pub fn is_identity_or_override(name: &str) -> bool {
    FORWARDING.contains(&name)
        || PATH_OVERRIDE.contains(&name)
        || METHOD_OVERRIDE.contains(&name)
        || CLIENT_CERT.contains(&name)
}

/// Whether `name` (lowercase) may not be an upstream's `client_cert_header`: every header of
/// the lists above but `Client-Cert` itself (RFC 9440's name, the default), and the hop-by-hop
/// ones.
pub fn is_reserved(name: &str) -> bool {
    name != "client-cert"
        && (is_identity_or_override(name) || PROTOCOL.contains(&name) || HOP_BY_HOP.contains(&name))
}

/// A header name with `_` read as `-`, as CGI, WSGI, PHP and Rack read it (`HTTP_X_REAL_IP`).
fn folded(name: &str) -> String {
    name.replace('_', "-")
}

/// Removes, in one pass over the request's header names (no lookup per name bindgate knows),
/// every header that must not reach an upstream: the fixed hop-by-hop ones (RFC 9110
/// §7.6.1; `TE` unless it is only `trailers`), the client certificate headers (RFC 9440 §3:
/// whatever the client sent under these names, or under the configured one, is not to be
/// trusted), the forwarding and path-override headers, with `method_bound` the
/// method-override headers, and names with `_` — all of them, or with `keep_underscores`
/// those that fold to one of the headers above.
pub fn strip_untrusted(
    req: &mut RequestHeader,
    cert_header: Option<&http::HeaderName>,
    method_bound: bool,
    keep_underscores: bool,
) {
    let untrusted = |n: &str| {
        HOP_BY_HOP.contains(&n)
            || CLIENT_CERT.contains(&n)
            || cert_header.is_some_and(|c| c.as_str() == n)
            || FORWARDING.contains(&n)
            || PATH_OVERRIDE.contains(&n)
            || (method_bound && METHOD_OVERRIDE.contains(&n))
    };
    let cert_first = cert_header.and_then(|c| c.as_str().as_bytes().first().copied());
    let doomed: Vec<http::HeaderName> = req
        .headers
        .iter()
        .filter(|(name, value)| {
            let n = name.as_str();
            // Every name above starts with one of these letters (checked in the tests), or
            // with the configured certificate header's; most of a request's headers (host,
            // accept, user-agent, authorization) do not.
            let first = n.as_bytes().first().copied();
            let may_match = matches!(first, Some(b'c' | b'f' | b'k' | b'p' | b't' | b'x'))
                || (first.is_some() && first == cert_first);
            let underscore = n.as_bytes().contains(&b'_');
            if !may_match && !underscore {
                return false;
            }
            if underscore {
                if !keep_underscores {
                    return true;
                }
                let f = folded(n);
                return untrusted(&f) || is_identity_or_override(&f);
            }
            untrusted(n)
                || (n == "te"
                    && value
                        .to_str()
                        .map(|t| t.trim() != "trailers")
                        .unwrap_or(true))
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in doomed {
        while req.remove_header(&name).is_some() {}
    }
}

/// Removes the headers `Connection` names as hop-by-hop (RFC 9110 §7.6.1), but `Upgrade` on
/// an upgrade request; the fixed ones go in [`strip_untrusted`].
pub fn strip_connection_listed(req: &mut RequestHeader, upgrade: bool) {
    let listed: Vec<String> = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for name in listed {
        if upgrade && name == "upgrade" {
            continue;
        }
        if name != "close" && name != "keep-alive" {
            req.remove_header(name.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(names: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for n in names {
            r.append_header(n.to_string(), "v").unwrap();
        }
        r
    }

    fn left(r: &RequestHeader) -> Vec<String> {
        r.headers.keys().map(|k| k.as_str().to_string()).collect()
    }

    #[test]
    fn underscore_names_are_dropped_unless_kept_and_never_when_they_fold_to_an_identity() {
        let names = [
            "client_cert",
            "x_forwarded_for",
            "x_real_ip",
            "x_original_url",
            "x_http_method_override",
            "x_custom_thing",
            "x-custom-thing",
        ];
        let mut r = request(&names);
        strip_untrusted(&mut r, None, true, false);
        assert_eq!(left(&r), ["x-custom-thing"]);

        let mut r = request(&names);
        let cert = http::HeaderName::from_static("x-ssl-cert");
        r.append_header("x_ssl_cert", "v").unwrap();
        strip_untrusted(&mut r, Some(&cert), true, true);
        assert_eq!(left(&r), ["x_custom_thing", "x-custom-thing"]);
    }

    #[test]
    fn every_stripped_name_starts_with_a_letter_the_fast_path_looks_at() {
        for n in FORWARDING
            .iter()
            .chain(PATH_OVERRIDE)
            .chain(METHOD_OVERRIDE)
            .chain(CLIENT_CERT)
            .chain(HOP_BY_HOP)
            .chain(&["te"])
        {
            assert!(
                matches!(n.as_bytes()[0], b'c' | b'f' | b'k' | b'p' | b't' | b'x'),
                "{n}"
            );
        }
    }

    #[test]
    fn reserved_names_are_the_stripped_ones_and_the_protocol_ones() {
        for n in FORWARDING
            .iter()
            .chain(PATH_OVERRIDE)
            .chain(METHOD_OVERRIDE)
        {
            assert!(is_reserved(n), "{n}");
        }
        for n in [
            "x-real-ip",
            "client-cert-chain",
            "host",
            "authorization",
            "dpop",
        ] {
            assert!(is_reserved(n), "{n}");
        }
        assert!(!is_reserved("client-cert"));
        assert!(!is_reserved("x-ssl-client-cert"));
    }
}
