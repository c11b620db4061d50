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
//! need from [`RequestCtx::forwarding`], one check, never a default.

use pingora::prelude::*;
use std::sync::Arc;
use std::time::Instant;

use super::live::Live;
use super::upstream::UpstreamTarget;
use crate::auth::Ledger;
use crate::certificate::PeerCertificate;
use crate::rejection::Rejection;
use crate::routing::Operation;
use crate::target::RequestTarget;

/// What one request learnt on its way through the hooks.
pub struct RequestCtx {
    /// The configuration this request runs on, from its first hook to its log line.
    pub(super) live: Arc<Live>,
    pub(super) started: Instant,
    pub(super) peer_certificate: Option<PeerCertificate>,
    pub(super) stage: Stage,
    /// Why the request was refused (the access log's and the metrics' reason).
    pub(super) rejection: Option<Rejection>,
    /// Body bytes seen going upstream (a body without Content-Length is held to `max_body`).
    pub(super) body_bytes: u64,
}

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
}

impl RequestCtx {
    pub(super) fn new(live: Arc<Live>) -> Self {
        RequestCtx {
            live,
            started: Instant::now(),
            peer_certificate: None,
            stage: Stage::Received,
            rejection: None,
            body_bytes: 0,
        }
    }

    /// The request as read, once it was.
    pub(super) fn reading(&self) -> Option<&Reading> {
        match &self.stage {
            Stage::Received => None,
            Stage::Read(reading) | Stage::Forwarding { reading, .. } => Some(reading),
        }
    }

    /// The forwarding decision: the upstream hooks run only after one was made.
    pub(super) fn forwarding(&mut self) -> Result<(&Reading, &mut Forwarding)> {
        match &mut self.stage {
            Stage::Forwarding {
                reading,
                forwarding,
            } => Ok((reading, forwarding)),
            _ => Error::e_explain(ErrorType::InternalError, "no upstream was chosen"),
        }
    }
}
