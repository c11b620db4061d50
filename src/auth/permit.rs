//! What the authoriser lets through: one permit per request, for exactly the operation it was
//! issued for. The embedded registry and session store, and the forwarder, act on a permit,
//! never on an operation alone; permits are made here only (their fields are private to
//! `auth`), so a request that was not authorised cannot reach them — a missing decision does
//! not compile, it is not a default.

use super::cache::Entry;
use super::registration::{Grants, Reach};
use crate::routing::{RegistryOp, SessionRequest};
use std::sync::Arc;

/// A single-use initial access token's entry in the ledger: its key (from `jti`, else the
/// SHA-256 of its signing input), when it expires (`exp` + leeway) and the request that takes
/// it (a random value: only that request gives it back, even after a timeout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ledger {
    pub key: String,
    pub expires: i64,
    pub holder: String,
}

impl Ledger {
    /// The entry of a single-use token: keyed by its `jti`, else by the SHA-256 of its signing
    /// input (header.payload: not of the signature, which a holder can re-encode — ECDSA's
    /// s → n − s — into another valid token; an opaque token is all signing input). It lasts
    /// as long as the token is accepted, `exp` + leeway (at most 30 days for a token whose
    /// provider gave no `exp`).
    pub fn of_token(verified: &super::claims::Verified, token: &str, leeway: f64) -> Ledger {
        use sha2::Digest;
        let key = match &verified.jti {
            Some(jti) => format!("jti:{}", hex::encode(sha2::Sha256::digest(jti.as_bytes()))),
            None => {
                let signed = token.rsplit_once('.').map_or(token, |(input, _)| input);
                format!(
                    "sig:{}",
                    hex::encode(sha2::Sha256::digest(signed.as_bytes()))
                )
            }
        };
        let cap = super::cache::now_secs() + 30.0 * 86_400.0;
        Ledger::new(
            key,
            (verified.exp + leeway)
                .min(cap)
                .ceil()
                .clamp(1.0, i64::MAX as f64) as i64,
        )
    }

    pub fn new(key: String, expires: i64) -> Self {
        let mut bytes = [0u8; 16];
        // A holder only needs to differ from another request's: on an RNG failure the time
        // and a counter do.
        if openssl::rand::rand_bytes(&mut bytes).is_err() {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            bytes[..8].copy_from_slice(&n.to_be_bytes());
            bytes[8..].copy_from_slice(&t.to_be_bytes());
        }
        Ledger {
            key,
            expires,
            holder: hex::encode(bytes),
        }
    }
}

/// Why a registry operation was let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryGrant {
    /// A registration master token.
    MasterToken,
    /// A valid initial access token (RFC 7591 §3) reaching this far (the full registration
    /// scope, or narrowed ones); with `registration.single_use`, its entry in the ledger,
    /// recorded with the registration.
    InitialAccessToken {
        ledger: Option<Ledger>,
        reach: Reach,
    },
    /// No credential, open registration (`registration.open`): clients for these grants.
    Open { grants: Grants },
    /// A bearer token on a client's own URI: the registry checks it as that client's
    /// registration access token (RFC 7592 §3).
    ClientToken { digest: [u8; 32] },
}

/// A registry operation and why it was let through.
#[derive(Debug)]
pub struct RegistryPermit {
    pub(super) op: RegistryOp,
    pub(super) grant: RegistryGrant,
    /// The initial access token as verified, when one was presented (the access log's).
    pub(super) token: Option<Arc<Entry>>,
}

impl RegistryPermit {
    pub fn op(&self) -> &RegistryOp {
        &self.op
    }

    pub fn grant(&self) -> &RegistryGrant {
        &self.grant
    }

    /// The single-use token's ledger entry, when there is one.
    pub fn ledger(&self) -> Option<&Ledger> {
        match &self.grant {
            RegistryGrant::InitialAccessToken { ledger, .. } => ledger.as_ref(),
            _ => None,
        }
    }

    /// What a registration under this permit may register; None for a client's own token
    /// (the embedded registry holds the client to what it was registered for; a provider
    /// upstream judges its own clients).
    pub fn reach(&self) -> Option<Reach> {
        match &self.grant {
            RegistryGrant::MasterToken => Some(Reach::Master),
            RegistryGrant::InitialAccessToken { reach, .. } => Some(reach.clone()),
            RegistryGrant::Open { grants } => Some(Reach::Open(*grants)),
            RegistryGrant::ClientToken { .. } => None,
        }
    }
}

/// A session-store request (read once: operation, `SID`, parameters) with a valid session
/// store API token.
#[derive(Debug)]
pub struct SessionPermit {
    pub(super) request: SessionRequest,
}

impl SessionPermit {
    pub fn request(&self) -> &SessionRequest {
        &self.request
    }

    /// A permit for the embedded store's unit tests (never outside them).
    #[cfg(test)]
    pub(crate) fn for_tests(request: SessionRequest) -> Self {
        SessionPermit { request }
    }
}

/// A `routes` entry: without `token`, or with an access token that satisfied its policy.
#[derive(Debug)]
pub struct RoutePermit {
    pub(super) route: usize,
    pub(super) protected: bool,
    /// Set for the upstream from the verified token's claims (`routes[].token.headers`).
    pub(super) claim_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The access token as verified (the access log's).
    pub(super) token: Option<Arc<Entry>>,
}

impl RoutePermit {
    pub fn route(&self) -> usize {
        self.route
    }

    /// The route's policy was checked with this method: no framework behind may read
    /// another one (method-override headers are dropped).
    pub fn method_bound(&self) -> bool {
        self.protected
    }

    /// The headers the verified token's claims give the upstream.
    pub fn claim_headers(&self) -> &[(http::HeaderName, http::HeaderValue)] {
        &self.claim_headers
    }
}

/// The authoriser's answer for one request.
#[derive(Debug)]
pub enum Permit {
    Registry(RegistryPermit),
    Sessions(SessionPermit),
    Route(RoutePermit),
}

impl Permit {
    /// The verified token the permit was issued on, when there was one (never the token's
    /// text): who it is about and for, for the access log.
    pub fn token(&self) -> Option<&Arc<Entry>> {
        match self {
            Permit::Registry(p) => p.token.as_ref(),
            Permit::Route(p) => p.token.as_ref(),
            Permit::Sessions(_) => None,
        }
    }
}
