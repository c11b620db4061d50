//! Property test of the one reading of a request target: paths built from dot segments,
//! repeated and trailing slashes, percent-encodings of every byte, `;` parameters and case
//! changes. Whenever a lenient origin server would map a path to a protected resource,
//! bindgate either applies that resource's policy (the same operation) or refuses the request;
//! and what bindgate forwards is read by such a server as exactly what bindgate authorised.
//!
//! The reference model is written here, independently of `bindgate::target`: two ways a lenient
//! server reads a path —
//! - RFC 3986: `;params` stripped per segment (servlet containers), unreserved characters
//!   decoded (§6.2.2.2), dot segments removed (§5.2.4, `..` at the root stays at the root),
//!   empty segments merged;
//! - decode-everything-first: every escape decoded (`%2F` becomes a separator, `%3B` a `;`,
//!   `\` a `/`), then the same;
//!
//! Each also with a trailing slash ignored (frameworks that match `/clients/` as `/clients`).

use bindgate::config::{Route, Target};
use bindgate::routing::{Operation, Router};
use http::Method;
use proptest::prelude::*;

fn router() -> Router {
    Router::from_parts(
        ("/clients", &Target::Embedded),
        ("/session-store/rest/v2", &Target::Embedded),
        &[Route {
            prefix: "/".into(),
            upstream: "idp".into(),
            token: None,
            upgrade: false,
        }],
    )
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The escape at `bytes[i]`, when it is one.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    if bytes.get(i) != Some(&b'%') {
        return None;
    }
    Some(hex_value(*bytes.get(i + 1)?)? * 16 + hex_value(*bytes.get(i + 2)?)?)
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §6.2.2.1–2: unreserved escapes decoded, other escapes upper-cased.
fn decode_unreserved(seg: &str) -> String {
    let b = seg.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        match escape_at(b, i) {
            Some(v) if unreserved(v) => {
                out.push(v as char);
                i += 3;
            }
            Some(v) => {
                out.push_str(&format!("%{v:02X}"));
                i += 3;
            }
            None => {
                out.push(b[i] as char);
                i += 1;
            }
        }
    }
    out
}

fn decode_all(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match escape_at(b, i) {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How a lenient origin server reads `path` (see the module comment).
fn lenient(path: &str, everything_first: bool) -> String {
    let text = if everything_first {
        decode_all(path).replace('\\', "/")
    } else {
        path.to_string()
    };
    let segments: Vec<String> = text
        .split('/')
        .skip(1)
        .map(|s| {
            let s = s.split(';').next().unwrap_or_default();
            if everything_first {
                s.to_string()
            } else {
                decode_unreserved(s)
            }
        })
        .collect();
    let trailing = matches!(segments.last().map(String::as_str), Some("" | "." | ".."));
    let mut kept: Vec<&str> = Vec::new();
    for s in &segments {
        match s.as_str() {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            s => kept.push(s),
        }
    }
    let mut out: String = kept.iter().map(|s| format!("/{s}")).collect();
    if out.is_empty() || trailing {
        out.push('/');
    }
    out
}

/// The path part of a raw target as a server would take it (after an absolute-form authority,
/// before the query).
fn raw_path(target: &str) -> &str {
    let rest = match target.find("://") {
        Some(i) => {
            let after = &target[i + 3..];
            &after[after.find('/').unwrap_or(after.len())..]
        }
        None => target,
    };
    rest.split('?').next().unwrap_or_default()
}

fn protected(op: &Result<Operation, bindgate::rejection::Rejection>) -> bool {
    matches!(op, Ok(Operation::Registry(_) | Operation::Sessions(_)))
}

/// The policy an operation gets: its kind and credential. A client id is left out: `cli%01ents`
/// and `cli\x01ents` are spellings of one client's URI, which gets one policy.
fn policy(op: &Operation) -> String {
    let kind = match op {
        Operation::Registry(r) => format!("{r:?}")
            .split([' ', '{'])
            .next()
            .unwrap_or_default()
            .to_string(),
        other => format!("{other:?}"),
    };
    format!("{kind} {:?}", op.credential())
}

/// A segment: a name of a protected path, a dot segment, an empty one or a few characters.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["clients", "session-store", "rest", "v2", "sessions"])
            .prop_map(String::from),
        2 => prop::sample::select(vec![".", "..", "", "abc"]).prop_map(String::from),
        1 => "[a-zA-Z0-9._~-]{1,4}",
    ]
}

/// A segment's spelling: each character raw, escaped (either hex case) or case-flipped; an
/// escape of any byte inserted; a `;` parameter appended.
fn spelling() -> impl Strategy<Value = String> {
    (
        segment(),
        prop::collection::vec(0u8..8, 0..12),
        prop::option::of((any::<u8>(), any::<bool>())),
        prop::option::of(prop::sample::select(vec![
            ";",
            ";x",
            ";jsessionid=1",
            ";a=b/",
        ])),
    )
        .prop_map(|(seg, choices, inserted, param)| {
            let mut out = String::new();
            for (i, c) in seg.chars().enumerate() {
                match choices.get(i).copied().unwrap_or(0) {
                    1 => out.push_str(&format!("%{:02x}", c as u8)),
                    2 => out.push_str(&format!("%{:02X}", c as u8)),
                    3 if c.is_ascii_alphabetic() => out.push(if c.is_ascii_lowercase() {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }),
                    _ => out.push(c),
                }
            }
            if let Some((byte, upper)) = inserted {
                let pos = out.len() / 2;
                let pos = (0..=pos)
                    .rev()
                    .find(|&p| out.is_char_boundary(p))
                    .unwrap_or(0);
                let escape = if upper {
                    format!("%{byte:02X}")
                } else {
                    format!("%{byte:02x}")
                };
                out.insert_str(pos, &escape);
            }
            if let Some(p) = param {
                out.push_str(p);
            }
            out
        })
}

/// A whole target: optional absolute-form prefix, segments joined by one or two slashes,
/// optional trailing slash, optional query.
fn request_target() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["", "", "", "http://idp.example.com", "HTTPS://h:8443"]),
        prop::collection::vec((spelling(), any::<bool>()), 1..6),
        any::<bool>(),
        prop::sample::select(vec!["", "?all=true", "?x=%2F..%3B"]),
    )
        .prop_map(|(prefix, segments, trailing, query)| {
            let mut t = prefix.to_string();
            for (seg, double) in segments {
                t.push_str(if double { "//" } else { "/" });
                t.push_str(&seg);
            }
            if trailing {
                t.push('/');
            }
            t.push_str(query);
            t
        })
}

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn a_protected_resource_gets_its_policy_or_a_refusal(
        target in request_target(),
        method in method(),
    ) {
        let router = router();
        let ours = bindgate::target::parse(target.as_bytes())
            .and_then(|t| router.route(&method, &t.path).map(|op| (t, op)));
        for (everything_first, drop_trailing) in [(false, false), (false, true), (true, false), (true, true)] {
            let mut theirs = lenient(raw_path(&target), everything_first);
            if drop_trailing && theirs.len() > 1 {
                theirs = theirs.trim_end_matches('/').to_string();
            }
            let expected = router.route(&method, &theirs);
            if protected(&expected) {
                if let (Ok((_, op)), Ok(theirs_op)) = (&ours, &expected) {
                    prop_assert_eq!(
                        policy(op),
                        policy(theirs_op),
                        "{} {} is {} to a lenient server",
                        method,
                        target,
                        theirs
                    );
                }
            }
        }
        if let Ok((t, _)) = &ours {
            // What is forwarded reads the same to the RFC 3986 server: nothing left to reinterpret.
            prop_assert_eq!(&lenient(&t.path, false), &t.path, "{}", target);
        }
    }
}

#[test]
fn the_reference_model_reads_the_reported_bypasses_as_protected() {
    // The model must see what the attacks relied on, or the property proves nothing.
    for (raw, everything_first, seen) in [
        ("/clients/", false, "/clients/"),
        ("/x/../clients", false, "/clients"),
        ("/clients;x", false, "/clients"),
        (
            "/session-store;x/rest/v2/sessions",
            false,
            "/session-store/rest/v2/sessions",
        ),
        ("/%63lients", false, "/clients"),
        ("/clients%2fabc", true, "/clients/abc"),
        ("/clients%3bx", true, "/clients"),
        ("/a/%2e%2E/clients", false, "/clients"),
    ] {
        assert_eq!(lenient(raw, everything_first), seen, "{raw}");
    }
    assert_eq!(raw_path("http://h/clients?x"), "/clients");
    assert!(protected(&router().route(&Method::POST, "/clients")));
    assert!(!protected(&router().route(&Method::POST, "/clients/")));
}
