//! Which policy and target a request path gets. Paths are normalised before matching, so that
//! `/./clients`, `//clients` or `/%63lients` cannot slip past the registration policy to an
//! upstream that would normalise them itself.

use crate::config::{Config, Target};
use crate::rejection::Rejection;

/// The policy a path falls under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `registration.path`: initial access tokens (RFC 7591) or registration access tokens.
    Registration,
    /// `session_store.path`: the session store API tokens.
    SessionStore,
    /// A `routes` entry: forwarded without authorisation.
    Passthrough,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub policy: Policy,
    /// A label for logs and metrics: `registration`, `session_store` or `route:<prefix>`.
    pub label: String,
    pub target: Target,
}

pub struct Router {
    registration_path: String,
    registration_target: Target,
    session_store_path: String,
    session_store_target: Target,
    routes: Vec<(String, String)>,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        Router {
            registration_path: config.registration.path.clone(),
            registration_target: config.registration.target.clone(),
            session_store_path: config.session_store.path.clone(),
            session_store_target: config.session_store.target.clone(),
            routes: config
                .routes
                .iter()
                .map(|r| (r.prefix.clone(), r.upstream.clone()))
                .collect(),
        }
    }

    /// Routes a normalised path: the registration path, the session-store path, then the
    /// routes in order (first match wins).
    pub fn route(&self, path: &str) -> Result<Decision, Rejection> {
        if under(path, &self.registration_path) {
            return Ok(Decision {
                policy: Policy::Registration,
                label: "registration".into(),
                target: self.registration_target.clone(),
            });
        }
        if under(path, &self.session_store_path) {
            return Ok(Decision {
                policy: Policy::SessionStore,
                label: "session_store".into(),
                target: self.session_store_target.clone(),
            });
        }
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(prefix, upstream)| Decision {
                policy: Policy::Passthrough,
                label: format!("route:{prefix}"),
                target: Target::Upstream(upstream.clone()),
            })
            .ok_or(Rejection::NoRoute)
    }
}

impl Router {
    /// What follows the policy's base path in `path` ("" for the base itself).
    pub fn rest<'p>(&self, policy: Policy, path: &'p str) -> &'p str {
        let base = match policy {
            Policy::Registration => &self.registration_path,
            Policy::SessionStore => &self.session_store_path,
            Policy::Passthrough => return path,
        };
        path.strip_prefix(base.as_str()).unwrap_or(path)
    }
}

/// `path` is `base` or below it (`/clients`, `/clients/abc`; not `/clientsfoo`).
fn under(path: &str, base: &str) -> bool {
    match path.strip_prefix(base) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The canonical form of a request path: percent-encoded unreserved characters decoded
/// (RFC 3986 §6.2.2.2), `.` and `..` segments removed (§5.2.4), repeated slashes merged.
/// Other percent-escapes stay as they are (`%2F` is not a separator).
pub fn normalise(path: &str) -> Result<String, Rejection> {
    if !path.starts_with('/') {
        return Err(Rejection::BadPath("it must start with /"));
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
                    return Err(Rejection::BadPath("it climbs above the root"));
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

fn decode_unreserved(path: &str) -> Result<String, Rejection> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(Rejection::BadPath("malformed percent-encoding"))?;
            if hex == 0 {
                return Err(Rejection::BadPath("it contains NUL"));
            }
            if hex.is_ascii_alphanumeric() || matches!(hex, b'-' | b'.' | b'_' | b'~') {
                out.push(hex as char);
            } else {
                // Keep the escape, upper-cased (RFC 3986 §6.2.2.1).
                out.push('%');
                out.push_str(&format!("{hex:02X}"));
            }
            i += 3;
        } else {
            if b < 0x21 || b == 0x7f {
                return Err(Rejection::BadPath(
                    "it contains control characters or spaces",
                ));
            }
            out.push(b as char);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(normalise("/clients").unwrap(), "/clients");
        assert_eq!(normalise("/").unwrap(), "/");
        assert_eq!(normalise("//clients").unwrap(), "/clients");
        assert_eq!(normalise("/./clients").unwrap(), "/clients");
        assert_eq!(normalise("/x/../clients").unwrap(), "/clients");
        assert_eq!(normalise("/%63lients").unwrap(), "/clients");
        assert_eq!(
            normalise("/%2e%2e/clients").unwrap_err(),
            Rejection::BadPath("it climbs above the root")
        );
        assert_eq!(normalise("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(normalise("/a/").unwrap(), "/a/");
        assert_eq!(normalise("/a/b/..").unwrap(), "/a/");
        assert!(normalise("/a%zz").is_err());
        assert!(normalise("/a%00").is_err());
        assert!(normalise("/a%").is_err());
        assert!(normalise("*").is_err());
    }

    #[test]
    fn under_is_segment_aware() {
        assert!(under("/clients", "/clients"));
        assert!(under("/clients/abc", "/clients"));
        assert!(!under("/clientsfoo", "/clients"));
        assert!(!under("/client", "/clients"));
    }
}
