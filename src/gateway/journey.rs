//! One request's journey through the hooks, as a stage rather than a bag of options:
//!
//! ```text
//! Received ──read──▶ Read(Reading) ──authorise──▶ permit ─┬─ embedded: answered in request_filter
//!    │                   │                                └─ upstream: Forwarding { reading, forwarding }
//!    └─ refused          └─ refused                                      │
//!                                                         upstream_peer / upstream_request_filter /
//!                                                         response_filter / logging act on it
//! ```
//!
//! The upstream hooks run only after `request_filter` chose an upstream; they take what they
//! need from `RequestCtx::forwarding`, one check, never a default.

use pingora::prelude::*;
use std::sync::Arc;

use super::upstream::UpstreamTarget;
use crate::auth::Ledger;
use crate::routing::Operation;
use crate::target::RequestTarget;

pub(super) enum Stage {
    /// Nothing read yet, or the request could not be read.
    Received,
    /// Read (target, host, operation): refused, or served by the embedded services.
    Read(Reading),
    /// Authorised, bound for an upstream.
    Forwarding {
        reading: Reading,
        forwarding: Forwarding,
    },
}

/// The one reading of a request.
pub(super) struct Reading {
    /// The normalised target: what is routed, authorised and forwarded.
    pub target: RequestTarget,
    /// The host the request addressed (absolute-form authority, `:authority` or `Host`).
    pub served_host: String,
    pub operation: Operation,
}

/// What the upstream hooks act on, set once the permit was issued.
pub(super) struct Forwarding {
    pub upstream: Arc<UpstreamTarget>,
    /// This request's place among the upstream's `max_connections`.
    pub _slot: tokio::sync::OwnedSemaphorePermit,
    /// The length of a request body read whole before the upstream was chosen (Pingora's
    /// retry buffer holds it and sends it).
    pub body_buffered: Option<u64>,
    /// The operation's policy was checked with this method: method-override headers go.
    pub method_bound: bool,
    /// A single-use token taken for a registration forwarded to an upstream: given back at the
    /// end unless the provider answered 2xx.
    pub taken_token: Option<Ledger>,
    /// A quiet delete on an upstream session store: the answer becomes a bodiless 204.
    pub quiet_delete: bool,
    /// Headers from the verified token's claims (a protected route's `token.headers`).
    pub claim_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Connections that failed and were tried again on another endpoint.
    pub connect_retries: usize,
}

impl Stage {
    /// The forwarding decision: the upstream hooks run only after one was made.
    pub(super) fn forwarding(&mut self) -> Result<(&Reading, &mut Forwarding)> {
        match self {
            Stage::Forwarding {
                reading,
                forwarding,
            } => Ok((reading, forwarding)),
            _ => Error::e_explain(ErrorType::InternalError, "no upstream was chosen"),
        }
    }
}
