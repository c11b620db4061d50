//! Why `auth` refused a request, in its own words. The gateway turns a denial into the HTTP
//! answer (`gateway::refusal`): `auth` knows tokens, proofs and records, not status codes.

use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No credentials at all. With DPoP accepted for the resource, the algorithms it takes.
    MissingCredentials { dpop_algs: Option<Arc<str>> },
    /// A malformed Authorization header, a token sent twice, ...
    InvalidRequest(&'static str),
    /// The token failed a check; the description says which.
    InvalidToken(String),
    /// A certificate-bound token without the matching client certificate (RFC 8705 §3).
    CertificateMismatch,
    /// The token lacks `scope`.
    InsufficientScope { scope: String },
    /// The DPoP proof failed a check (RFC 9449 §7.1); `algs` lists the accepted algorithms.
    InvalidDpopProof { why: String, algs: Arc<str> },
    /// The proof needs the server's fresh nonce (RFC 9449 §8).
    UseDpopNonce { nonce: String, algs: Arc<str> },
    /// A token presented with the DPoP scheme failed a check.
    InvalidDpopToken { why: String, algs: Arc<str> },
    /// The registration body asks for more than the credential reaches (Connect2id's
    /// registration policy); `scope`, when one would permit it, names it.
    NotPermitted { why: String, scope: Option<String> },
    /// A registration body the policy cannot judge (not a JSON object, a member of the wrong
    /// type): refused, never forwarded.
    InvalidClientMetadata(String),
    /// RFC 7591 §3.2.2 `invalid_software_statement` (or one missing where required).
    InvalidSoftwareStatement(String),
    /// RFC 7591 §3.2.2 `unapproved_software_statement`: its issuer is not trusted.
    UnapprovedSoftwareStatement(String),
    /// The introspection endpoint did not give a usable answer (timeout, 5xx, not JSON, no
    /// boolean `active`): 503, never a pass; `cause` for the operator's log.
    IntrospectionUnavailable { cause: String },
    /// A record that must hold the request (DPoP replay, shared state) could not: full, handed
    /// over, or its store did not answer (`cause`, for the operator's log).
    RecordUnavailable { cause: Option<String> },
}

impl Denial {
    /// A short, stable label for the metrics `auth` counts (the same as the answer's).
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::MissingCredentials { .. } => "missing_credentials",
            Denial::InvalidRequest(_) => "invalid_request",
            Denial::InvalidToken(_) => "invalid_token",
            Denial::CertificateMismatch => "certificate_mismatch",
            Denial::InsufficientScope { .. } => "insufficient_scope",
            Denial::InvalidDpopProof { .. } => "invalid_dpop_proof",
            Denial::UseDpopNonce { .. } => "use_dpop_nonce",
            Denial::InvalidDpopToken { .. } => "invalid_dpop_token",
            Denial::RecordUnavailable { .. } => "storage_unavailable",
            Denial::NotPermitted { .. } => "registration_not_permitted",
            Denial::InvalidClientMetadata(_) => "invalid_client_metadata",
            Denial::InvalidSoftwareStatement(_) => "invalid_software_statement",
            Denial::IntrospectionUnavailable { .. } => "introspection_unavailable",
            Denial::UnapprovedSoftwareStatement(_) => "unapproved_software_statement",
        }
    }
}
