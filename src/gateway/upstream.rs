//! Upstream peers and what travels to them: the peer and its place limit, the authorised
//! target, the forwarding headers (RFC 7239 `Forwarded`, `X-Forwarded-*`), the identity
//! headers bindgate writes after stripping what a client sent under the same names.

use crate::config::Problem;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use std::sync::Arc;

use super::balance::Balancer;
use crate::certificate::PeerCertificate;
use crate::config::Upstream;
use crate::headers;
use crate::rejection::Rejection;
use crate::target::RequestTarget;

/// An upstream with its connection settings made once.
pub struct UpstreamTarget {
    pub config: Upstream,
    pub(super) peer: HttpPeer,
    /// Several endpoints: the peer is chosen per request (`peer` is its template).
    pub(super) balancer: Option<Arc<Balancer>>,
    /// One permit per request in flight to this upstream (`max_connections`).
    slots: Arc<tokio::sync::Semaphore>,
    /// `bindgate_upstream_response_duration_seconds{upstream}`, resolved once.
    pub(super) answered: prometheus::Histogram,
    /// `bindgate_upstream_connect_failures_total{upstream}`, resolved once.
    pub(super) connect_failed: prometheus::IntCounter,
}

impl UpstreamTarget {
    pub fn new(
        config: &Upstream,
        metrics: &crate::metrics::Metrics,
        kept: Option<Arc<Balancer>>,
    ) -> Result<Self, Problem> {
        let mut peer = HttpPeer::new(config.address, config.tls, config.sni.clone());
        peer.options.connection_timeout = Some(config.connect_timeout);
        peer.options.total_connection_timeout = Some(config.connect_timeout);
        peer.options.read_timeout = Some(config.read_timeout);
        peer.options.write_timeout = Some(config.read_timeout);
        peer.options.idle_timeout = Some(std::time::Duration::from_secs(60));
        if config.tls {
            peer.options.verify_cert = true;
            // Without an SNI name there is no name to check the certificate against.
            peer.options.verify_hostname = !config.sni.is_empty();
            if let Some(ca) = &config.ca {
                peer.options.ca = Some(Arc::new(ca.certificates().into()));
            }
        }
        let balancer = match kept {
            Some(b) => Some(b),
            None if config.balanced() => Some(Arc::new(Balancer::new(config, peer.clone())?)),
            None => None,
        };
        Ok(UpstreamTarget {
            config: config.clone(),
            peer,
            balancer,
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
            answered: metrics
                .ops
                .upstream_response_duration
                .with_label_values(&[&config.name]),
            connect_failed: metrics
                .ops
                .upstream_connect_failures
                .with_label_values(&[&config.name]),
        })
    }

    /// The peer this request goes to: the one endpoint, or the balancer's choice.
    pub(super) fn peer_for_request(&self) -> Option<HttpPeer> {
        match &self.balancer {
            None => Some(self.peer.clone()),
            Some(b) => b.peer(),
        }
    }

    /// Takes a place among the upstream's `max_connections`, waiting at most its connect
    /// timeout.
    pub(super) async fn slot(
        &self,
    ) -> std::result::Result<tokio::sync::OwnedSemaphorePermit, Rejection> {
        // A free place is taken at once; only a full upstream makes a request wait.
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        match pingora::prelude::timeout(
            self.config.connect_timeout,
            self.slots.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Rejection::UpstreamBusy),
        }
    }
}

/// What the head that goes upstream is made from.
pub(super) struct Outgoing<'a> {
    pub upstream: &'a Upstream,
    /// The authorised target.
    pub target: &'a RequestTarget,
    pub served_host: &'a str,
    /// The length of a body read whole.
    pub body_buffered: Option<u64>,
    pub method_bound: bool,
    pub peer_certificate: Option<&'a PeerCertificate>,
    pub client: Option<std::net::IpAddr>,
    pub upgrade: bool,
    /// Every header some route sets from claims (removed first) and this request's.
    pub claim_header_names: &'a [http::HeaderName],
    pub claim_headers: &'a [(http::HeaderName, http::HeaderValue)],
}

/// Rewrites the head that goes upstream: the authorised target, the body's framing when it
/// was read whole, the header policy (untrusted and hop-by-hop names out, identity headers
/// written by bindgate), the forwarding headers.
pub(super) fn prepare_request(
    upstream_request: &mut RequestHeader,
    outgoing: &Outgoing<'_>,
) -> Result<()> {
    let target = outgoing.target;
    let uri = target
        .path_and_query()
        .parse::<http::Uri>()
        .or_err(ErrorType::InternalError, "normalised target is not a URI")?;
    upstream_request.set_uri(uri);
    if let Some(authority) = &target.authority {
        upstream_request.insert_header(http::header::HOST, authority.as_str())?;
    }
    headers::strip_connection_listed(upstream_request, outgoing.upgrade);
    if let Some(len) = outgoing.body_buffered {
        // The body was read whole: it travels with its length, whatever framing it came
        // in (chunked, HTTP/2 frames), and any 100 Continue was bindgate's to send. The
        // common case, a Content-Length that was right, is left as it is.
        let framed = upstream_request
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|given| given == len)
            && !upstream_request
                .headers
                .contains_key(http::header::TRANSFER_ENCODING);
        if !framed {
            upstream_request.remove_header(&http::header::TRANSFER_ENCODING);
            upstream_request.insert_header(http::header::CONTENT_LENGTH, len)?;
        }
        upstream_request.remove_header(&http::header::EXPECT);
    }
    let upstream = outgoing.upstream;
    headers::strip_untrusted(
        upstream_request,
        upstream.client_cert_header.as_ref(),
        outgoing.method_bound,
        upstream.forward_underscore_headers,
    );
    // A client never sends what bindgate sets from a verified token, on any route.
    for name in outgoing.claim_header_names {
        upstream_request.remove_header(name);
    }
    for (name, value) in outgoing.claim_headers {
        upstream_request.insert_header(name.clone(), value.clone())?;
    }
    if upstream.keepalive_pool == 0 {
        // No connection is kept for this upstream: the request says so, and Pingora does not
        // put the connection back in the pool.
        upstream_request.insert_header(http::header::CONNECTION, "close")?;
    }
    if let (Some(name), Some(cert)) = (&upstream.client_cert_header, outgoing.peer_certificate) {
        upstream_request.insert_header(name.clone(), cert.header_value().clone())?;
    }
    if upstream.forwarded_headers {
        let host = outgoing.served_host;
        // The address is written once, for both headers.
        let node = outgoing.client.map(|ip| {
            let mut node = String::with_capacity(39);
            push_ip(&mut node, ip);
            node
        });
        let rfc7239 = forwarded(node.as_deref(), host);
        if let Some(node) = node {
            upstream_request.insert_header("x-forwarded-for", node)?;
        }
        upstream_request.insert_header("x-forwarded-proto", "https")?;
        if !host.is_empty() {
            upstream_request.insert_header("x-forwarded-host", host)?;
        }
        upstream_request.insert_header("forwarded", rfc7239)?;
    }
    Ok(())
}

/// RFC 7239 `Forwarded`: `for` (an IPv6 address quoted in brackets), `proto`, `host` (quoted:
/// `served_host` holds only authority characters, never `"` or `\`).
/// `node` is the peer's address as [`push_ip`] writes it (an IPv6 one, and only it, has `:`).
fn forwarded(node: Option<&str>, host: &str) -> String {
    let mut value = String::with_capacity(64 + host.len());
    value.push_str("for=");
    match node {
        Some(v6) if v6.contains(':') => {
            value.push_str("\"[");
            value.push_str(v6);
            value.push_str("]\"");
        }
        Some(v4) => value.push_str(v4),
        None => value.push_str("unknown"),
    }
    value.push_str(";proto=https");
    if !host.is_empty() {
        value.push_str(";host=\"");
        value.push_str(host);
        value.push('"');
    }
    value
}

/// Appends an address as `Display` writes it; IPv4, the common case, without the formatting
/// machinery (it ran on every forwarded request).
fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn shown(ip: IpAddr) -> String {
        let mut s = String::new();
        push_ip(&mut s, ip);
        s
    }

    proptest! {
        #[test]
        fn addresses_are_written_as_display_writes_them(v4 in any::<u32>(), v6 in any::<u128>()) {
            let v4 = IpAddr::V4(Ipv4Addr::from(v4));
            let v6 = IpAddr::V6(Ipv6Addr::from(v6));
            prop_assert_eq!(shown(v4), v4.to_string());
            prop_assert_eq!(shown(v6), v6.to_string());
        }
    }

    #[test]
    fn address_edges_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(shown(ip), ip.to_string());
        }
    }

    #[test]
    fn forwarded_names_the_node_protocol_and_host() {
        let v4 = shown("192.0.2.60".parse().unwrap());
        let v6 = shown("2001:db8:cafe::17".parse().unwrap());
        assert_eq!(
            forwarded(Some(&v4), "idp.example.com"),
            "for=192.0.2.60;proto=https;host=\"idp.example.com\""
        );
        // RFC 7239 §6: an IPv6 node is bracketed and quoted.
        assert_eq!(
            forwarded(Some(&v6), ""),
            "for=\"[2001:db8:cafe::17]\";proto=https"
        );
        assert_eq!(forwarded(None, ""), "for=unknown;proto=https");
    }
}
