//! Every way bindgate refuses a request, and the one place that turns a refusal into an HTTP
//! answer (status, RFC 6750 `WWW-Authenticate`, JSON body).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use std::sync::Arc;

/// RFC 8705 / Connect2id wording for a bound token without the matching certificate.
pub const CERTIFICATE_MISMATCH_DESCRIPTION: &str =
    "Missing / invalid client X.509 certificate for x5t#S256 bound access token";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No route matches the path.
    NoRoute,
    /// The path cannot be routed safely (dot segments that climb above the root, NUL, ...).
    BadPath(&'static str),
    /// The request body exceeds `server.max_body`.
    BodyTooLarge { limit: u64 },
    /// The upstream refused, timed out or broke the connection.
    UpstreamUnavailable,
    /// The request body did not arrive whole within `server.body_timeout`.
    BodyTimeout,
    /// `upstreams.<name>.max_connections` requests were in flight for the connect timeout.
    UpstreamBusy,
    /// The embedded target does not serve this yet.
    NotImplemented(&'static str),
    /// RFC 6750 §3.1: the request carried no credentials at all. With DPoP enabled for the
    /// resource, a second challenge names the accepted proof algorithms (RFC 9449 §7.1).
    MissingCredentials { dpop_algs: Option<Arc<str>> },
    /// RFC 6750 §3.1 `invalid_request`: malformed Authorization header, token sent twice, ...
    InvalidRequest(&'static str),
    /// RFC 6750 §3.1 `invalid_token`: the description says which check failed.
    InvalidToken(String),
    /// RFC 8705 §3: a certificate-bound token without the matching client certificate.
    CertificateMismatch,
    /// RFC 6750 §3.1 `insufficient_scope`.
    InsufficientScope { scope: String },
    /// 403 `insufficient_scope` for a registration that asks for more than its credential
    /// reaches (narrowed scope, privileged metadata); `scope` names the one that would do.
    RegistrationNotPermitted { why: String, scope: Option<String> },
    /// RFC 7591 §3.2.2 `invalid_software_statement` / `unapproved_software_statement`.
    SoftwareStatement { unapproved: bool, why: String },
    /// RFC 7591 §3.2.2 `invalid_client_metadata`: the description names the field.
    InvalidClientMetadata(String),
    /// RFC 7591 §3.2.2 `invalid_redirect_uri`.
    InvalidRedirectUri(String),
    /// A request body or parameter of the embedded service that is not what the API takes.
    InvalidInput(String),
    /// The embedded service has no such resource.
    NotFound(&'static str),
    /// The resource exists but does not take this method; `allow` is its `Allow` header.
    MethodNotAllowed { allow: &'static str },
    /// A store or record failed (I/O) or is full: retry later. `cause`, when there is one, is
    /// logged where the answer is written (never sent to the client).
    StorageUnavailable { cause: Option<Arc<str>> },
    /// The token could not be introspected (the provider did not answer usably): retry later.
    /// `cause` is logged where the answer is written.
    IntrospectionUnavailable { cause: Arc<str> },
    /// RFC 9449 §7.1 `invalid_dpop_proof`; `algs` lists the accepted proof algorithms.
    InvalidDpopProof { why: String, algs: Arc<str> },
    /// RFC 9449 §8: the proof needs a fresh server nonce, sent in `DPoP-Nonce`.
    UseDpopNonce { nonce: String, algs: Arc<str> },
    /// RFC 9449 §7.1 `invalid_token` for a token presented with the DPoP scheme.
    InvalidDpopToken { why: String, algs: Arc<str> },
}

impl Rejection {
    pub fn status(&self) -> u16 {
        match self {
            Rejection::NoRoute => 404,
            Rejection::BadPath(_) => 400,
            Rejection::BodyTooLarge { .. } => 413,
            Rejection::UpstreamUnavailable => 502,
            Rejection::BodyTimeout => 408,
            Rejection::UpstreamBusy => 503,
            Rejection::NotImplemented(_) => 501,
            Rejection::MissingCredentials { .. } => 401,
            Rejection::InvalidRequest(_) => 400,
            Rejection::InvalidToken(_) => 401,
            Rejection::CertificateMismatch => 401,
            Rejection::InsufficientScope { .. } | Rejection::RegistrationNotPermitted { .. } => 403,
            Rejection::InvalidClientMetadata(_)
            | Rejection::InvalidRedirectUri(_)
            | Rejection::InvalidInput(_)
            | Rejection::SoftwareStatement { .. } => 400,
            Rejection::NotFound(_) => 404,
            Rejection::MethodNotAllowed { .. } => 405,
            Rejection::StorageUnavailable { .. } | Rejection::IntrospectionUnavailable { .. } => {
                503
            }
            Rejection::InvalidDpopProof { .. }
            | Rejection::UseDpopNonce { .. }
            | Rejection::InvalidDpopToken { .. } => 401,
        }
    }

    /// The `error` member of the JSON body (and of the challenge, for token failures).
    pub fn error_code(&self) -> &'static str {
        match self {
            Rejection::NoRoute => "not_found",
            Rejection::BadPath(_) => "invalid_request",
            Rejection::BodyTooLarge { .. } => "request_too_large",
            Rejection::UpstreamUnavailable => "bad_gateway",
            Rejection::BodyTimeout => "request_timeout",
            Rejection::UpstreamBusy => "temporarily_unavailable",
            Rejection::NotImplemented(_) => "not_implemented",
            Rejection::MissingCredentials { .. } => "unauthorized",
            Rejection::InvalidRequest(_) => "invalid_request",
            Rejection::InvalidToken(_) | Rejection::CertificateMismatch => "invalid_token",
            Rejection::InsufficientScope { .. } | Rejection::RegistrationNotPermitted { .. } => {
                "insufficient_scope"
            }
            Rejection::InvalidClientMetadata(_) => "invalid_client_metadata",
            Rejection::SoftwareStatement {
                unapproved: false, ..
            } => "invalid_software_statement",
            Rejection::SoftwareStatement {
                unapproved: true, ..
            } => "unapproved_software_statement",
            Rejection::InvalidRedirectUri(_) => "invalid_redirect_uri",
            Rejection::InvalidInput(_) => "invalid_request",
            Rejection::NotFound(_) => "not_found",
            Rejection::MethodNotAllowed { .. } => "method_not_allowed",
            Rejection::StorageUnavailable { .. } | Rejection::IntrospectionUnavailable { .. } => {
                "temporarily_unavailable"
            }
            Rejection::InvalidDpopProof { .. } => "invalid_dpop_proof",
            Rejection::UseDpopNonce { .. } => "use_dpop_nonce",
            Rejection::InvalidDpopToken { .. } => "invalid_token",
        }
    }

    pub fn description(&self) -> String {
        match self {
            Rejection::NoRoute => "No route for this path".into(),
            Rejection::BadPath(why) => format!("Invalid request path: {why}"),
            Rejection::BodyTooLarge { limit } => {
                format!("The request body exceeds the limit of {limit} bytes")
            }
            Rejection::UpstreamUnavailable => "The upstream server is unavailable".into(),
            Rejection::BodyTimeout => "The request body did not arrive in time".into(),
            Rejection::UpstreamBusy => "The upstream server is busy".into(),
            Rejection::NotImplemented(what) => format!("Not implemented: {what}"),
            Rejection::MissingCredentials { .. } => "Missing access token".into(),
            Rejection::InvalidRequest(why) => (*why).to_string(),
            Rejection::InvalidToken(why) => why.clone(),
            Rejection::CertificateMismatch => CERTIFICATE_MISMATCH_DESCRIPTION.into(),
            Rejection::InsufficientScope { scope } => {
                format!("The access token lacks the required scope {scope}")
            }
            Rejection::RegistrationNotPermitted { why, .. }
            | Rejection::SoftwareStatement { why, .. } => why.clone(),
            Rejection::InvalidClientMetadata(why)
            | Rejection::InvalidRedirectUri(why)
            | Rejection::InvalidInput(why) => why.clone(),
            Rejection::NotFound(what) => format!("{what} not found"),
            Rejection::MethodNotAllowed { .. } => "Method not allowed on this resource".into(),
            Rejection::StorageUnavailable { .. } => "The store is temporarily unavailable".into(),
            Rejection::IntrospectionUnavailable { .. } => {
                "The access token could not be introspected: try again".into()
            }
            Rejection::InvalidDpopProof { why, .. } | Rejection::InvalidDpopToken { why, .. } => {
                why.clone()
            }
            Rejection::UseDpopNonce { .. } => "Resource server requires nonce in DPoP proof".into(),
        }
    }

    /// A short, stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::NoRoute => "no_route",
            Rejection::BadPath(_) => "bad_path",
            Rejection::BodyTooLarge { .. } => "body_too_large",
            Rejection::UpstreamUnavailable => "upstream_unavailable",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::UpstreamBusy => "upstream_busy",
            Rejection::NotImplemented(_) => "not_implemented",
            Rejection::MissingCredentials { .. } => "missing_credentials",
            Rejection::InvalidRequest(_) => "invalid_request",
            Rejection::InvalidToken(_) => "invalid_token",
            Rejection::CertificateMismatch => "certificate_mismatch",
            Rejection::InsufficientScope { .. } => "insufficient_scope",
            Rejection::RegistrationNotPermitted { .. } => "registration_not_permitted",
            Rejection::SoftwareStatement {
                unapproved: false, ..
            } => "invalid_software_statement",
            Rejection::SoftwareStatement {
                unapproved: true, ..
            } => "unapproved_software_statement",
            Rejection::InvalidClientMetadata(_) => "invalid_client_metadata",
            Rejection::InvalidRedirectUri(_) => "invalid_redirect_uri",
            Rejection::InvalidInput(_) => "invalid_input",
            Rejection::NotFound(_) => "not_found",
            Rejection::MethodNotAllowed { .. } => "method_not_allowed",
            Rejection::StorageUnavailable { .. } => "storage_unavailable",
            Rejection::IntrospectionUnavailable { .. } => "introspection_unavailable",
            Rejection::InvalidDpopProof { .. } => "invalid_dpop_proof",
            Rejection::UseDpopNonce { .. } => "use_dpop_nonce",
            Rejection::InvalidDpopToken { .. } => "invalid_dpop_token",
        }
    }

    /// RFC 6750 §3 challenge, for the answers that carry one.
    pub fn www_authenticate(&self) -> Option<String> {
        let quoted = |s: &str| s.replace(['"', '\\'], "'");
        match self {
            Rejection::MissingCredentials { .. } => Some("Bearer".into()),
            Rejection::InvalidRequest(_)
            | Rejection::InvalidToken(_)
            | Rejection::CertificateMismatch => Some(format!(
                "Bearer error=\"{}\", error_description=\"{}\"",
                self.error_code(),
                quoted(&self.description())
            )),
            Rejection::InsufficientScope { scope } => Some(format!(
                "Bearer error=\"insufficient_scope\", error_description=\"{}\", scope=\"{}\"",
                quoted(&self.description()),
                quoted(scope)
            )),
            Rejection::RegistrationNotPermitted { scope, .. } => Some(match scope {
                Some(scope) => format!(
                    "Bearer error=\"insufficient_scope\", error_description=\"{}\", scope=\"{}\"",
                    quoted(&self.description()),
                    quoted(scope)
                ),
                None => format!(
                    "Bearer error=\"insufficient_scope\", error_description=\"{}\"",
                    quoted(&self.description())
                ),
            }),
            Rejection::InvalidDpopProof { algs, .. }
            | Rejection::UseDpopNonce { algs, .. }
            | Rejection::InvalidDpopToken { algs, .. } => Some(format!(
                "DPoP error=\"{}\", error_description=\"{}\", algs=\"{}\"",
                self.error_code(),
                quoted(&self.description()),
                quoted(algs)
            )),
            _ => None,
        }
    }

    /// A second challenge, after the first: `DPoP algs="..."` for a request without
    /// credentials where DPoP is accepted (RFC 9449 §7.1).
    pub fn second_challenge(&self) -> Option<String> {
        match self {
            Rejection::MissingCredentials {
                dpop_algs: Some(algs),
            } => Some(format!("DPoP algs=\"{algs}\"")),
            _ => None,
        }
    }

    /// Whether the connection must close after the answer: the request body may be unread.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Rejection::BodyTooLarge { .. } | Rejection::BodyTimeout
        )
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        self.body_for(None)
    }

    /// The body, naming the request it answers when its id is known.
    pub fn body_for(&self, request_id: Option<&str>) -> Bytes {
        let mut body = serde_json::json!({
            "error": self.error_code(),
            "error_description": self.description(),
        });
        if let Some(id) = request_id.filter(|id| !id.is_empty()) {
            body["request_id"] = serde_json::Value::from(id);
        }
        Bytes::from(body.to_string())
    }

    /// The complete answer: header and body.
    pub fn response(&self) -> (ResponseHeader, Bytes) {
        self.response_for(None)
    }

    /// The complete answer, its body naming the request it answers.
    pub fn response_for(&self, request_id: Option<&str>) -> (ResponseHeader, Bytes) {
        let body = self.body_for(request_id);
        let mut header = json_header(self.status(), body.len());
        if let Some(challenge) = self.www_authenticate() {
            // Cannot fail: the challenge is built from ASCII without control characters.
            let _ = header.insert_header("www-authenticate", challenge);
        }
        if let Some(challenge) = self.second_challenge() {
            let _ = header.append_header("www-authenticate", challenge);
        }
        if let Rejection::UseDpopNonce { nonce, .. } = self {
            let _ = header.insert_header("dpop-nonce", nonce.as_str());
        }
        if let Rejection::StorageUnavailable { .. }
        | Rejection::UpstreamBusy
        | Rejection::IntrospectionUnavailable { .. } = self
        {
            // RFC 9110 §10.2.3: when to try again (the state probe runs every second).
            let _ = header.insert_header("retry-after", "1");
        }
        if let Rejection::MethodNotAllowed { allow } = self {
            let _ = header.insert_header("allow", *allow);
        }
        if self.closes_connection() {
            let _ = header.insert_header("connection", "close");
        }
        (header, body)
    }
}

/// A response header for a JSON body of `len` bytes that no cache may keep.
pub fn json_header(status: u16, len: usize) -> ResponseHeader {
    let mut header = match ResponseHeader::build(status, Some(4)) {
        Ok(h) => h,
        Err(_) => ResponseHeader::build(500, Some(4)).expect("500 is a valid status"),
    };
    let _ = header.insert_header("content-type", "application/json");
    let _ = header.insert_header("content-length", len.to_string());
    let _ = header.insert_header("cache-control", "no-store");
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(r: &Rejection) -> Option<String> {
        r.www_authenticate()
    }

    #[test]
    fn each_variant_has_its_status_and_code() {
        let table: Vec<(Rejection, u16, &str)> = vec![
            (Rejection::NoRoute, 404, "not_found"),
            (Rejection::BadPath("x"), 400, "invalid_request"),
            (
                Rejection::BodyTooLarge { limit: 10 },
                413,
                "request_too_large",
            ),
            (Rejection::UpstreamUnavailable, 502, "bad_gateway"),
            (Rejection::BodyTimeout, 408, "request_timeout"),
            (Rejection::UpstreamBusy, 503, "temporarily_unavailable"),
            (Rejection::NotImplemented("x"), 501, "not_implemented"),
            (
                Rejection::MissingCredentials { dpop_algs: None },
                401,
                "unauthorized",
            ),
            (
                Rejection::InvalidDpopProof {
                    why: "x".into(),
                    algs: "ES256".into(),
                },
                401,
                "invalid_dpop_proof",
            ),
            (
                Rejection::UseDpopNonce {
                    nonce: "n".into(),
                    algs: "ES256".into(),
                },
                401,
                "use_dpop_nonce",
            ),
            (
                Rejection::InvalidDpopToken {
                    why: "x".into(),
                    algs: "ES256".into(),
                },
                401,
                "invalid_token",
            ),
            (Rejection::InvalidRequest("x"), 400, "invalid_request"),
            (Rejection::InvalidToken("x".into()), 401, "invalid_token"),
            (Rejection::CertificateMismatch, 401, "invalid_token"),
            (
                Rejection::InsufficientScope {
                    scope: "client-reg".into(),
                },
                403,
                "insufficient_scope",
            ),
            (
                Rejection::InvalidClientMetadata("x".into()),
                400,
                "invalid_client_metadata",
            ),
            (
                Rejection::InvalidRedirectUri("x".into()),
                400,
                "invalid_redirect_uri",
            ),
            (Rejection::InvalidInput("x".into()), 400, "invalid_request"),
            (Rejection::NotFound("Session"), 404, "not_found"),
            (
                Rejection::MethodNotAllowed { allow: "GET" },
                405,
                "method_not_allowed",
            ),
            (
                Rejection::StorageUnavailable { cause: None },
                503,
                "temporarily_unavailable",
            ),
        ];
        for (r, status, code) in table {
            assert_eq!(r.status(), status, "{r:?}");
            assert_eq!(r.error_code(), code, "{r:?}");
            let body: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
            assert_eq!(body["error"], code);
            assert!(body["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()));
        }
    }

    #[test]
    fn rfc6750_challenges() {
        assert_eq!(
            challenge(&Rejection::MissingCredentials { dpop_algs: None }).as_deref(),
            Some("Bearer")
        );
        assert_eq!(
            challenge(&Rejection::CertificateMismatch).as_deref(),
            Some("Bearer error=\"invalid_token\", error_description=\"Missing / invalid client X.509 certificate for x5t#S256 bound access token\"")
        );
        assert_eq!(
            challenge(&Rejection::InsufficientScope { scope: "client-reg".into() }).as_deref(),
            Some("Bearer error=\"insufficient_scope\", error_description=\"The access token lacks the required scope client-reg\", scope=\"client-reg\"")
        );
        assert!(challenge(&Rejection::InvalidRequest("Token sent twice"))
            .unwrap()
            .starts_with("Bearer error=\"invalid_request\""));
        assert_eq!(challenge(&Rejection::NoRoute), None);
        // A description can never break out of its quoted string.
        let c = challenge(&Rejection::InvalidToken("a\"b\\c".into())).unwrap();
        assert!(c.ends_with("error_description=\"a'b'c\""), "{c}");
    }

    #[test]
    fn rfc9449_challenges() {
        let algs: Arc<str> = "ES256 RS256".into();
        let missing = Rejection::MissingCredentials {
            dpop_algs: Some(algs.clone()),
        };
        // The bare Bearer challenge stays as it is; DPoP's comes second.
        assert_eq!(challenge(&missing).as_deref(), Some("Bearer"));
        assert_eq!(
            missing.second_challenge().as_deref(),
            Some("DPoP algs=\"ES256 RS256\"")
        );
        let (header, _) = missing.response();
        let lines: Vec<_> = header.headers.get_all("www-authenticate").iter().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            challenge(&Rejection::InvalidDpopProof {
                why: "Invalid DPoP proof signature".into(),
                algs: algs.clone()
            })
            .as_deref(),
            Some("DPoP error=\"invalid_dpop_proof\", error_description=\"Invalid DPoP proof signature\", algs=\"ES256 RS256\"")
        );
        let nonce = Rejection::UseDpopNonce {
            nonce: "abc".into(),
            algs,
        };
        assert!(challenge(&nonce)
            .unwrap()
            .starts_with("DPoP error=\"use_dpop_nonce\""));
        assert_eq!(nonce.response().0.headers["dpop-nonce"], "abc");
    }
}
