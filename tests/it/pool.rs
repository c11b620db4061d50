//! Upstream connection reuse that follows the load (issue 20 of the brief: no cliff past 128
//! requests in flight): the keep-alive pool holds what `max_connections` lets open, and
//! `bindgate_upstream_connections_total` says what happened to each connection.

use crate::harness::*;
use std::time::Duration;

const IN_FLIGHT: usize = 160;

/// `IN_FLIGHT` requests at once, each on its own client connection, all held by the upstream
/// for a moment so that they are in flight together.
fn wave(bg: &Bindgate, clients: &[reqwest::blocking::Client]) {
    std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .map(|c| {
                let url = bg.url("/wave");
                s.spawn(move || c.get(url).send().map(|r| r.status().as_u16()))
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().unwrap(), 200);
        }
    });
}

#[test]
fn upstream_connections_are_kept_for_every_request_in_flight_and_reused() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    // One worker thread: Pingora's stock pool kept 128 per thread.
    let bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    let clients: Vec<_> = (0..IN_FLIGHT)
        .map(|_| bg.client(&pki, None, Http::One))
        .collect();
    upstream.set_delay(Duration::from_millis(400));
    wave(&bg, &clients);
    let opened = bg.metric("bindgate_upstream_connections_total{event=\"opened\"}");
    assert!(
        opened >= IN_FLIGHT as u64 / 2,
        "{opened} upstream connections for {IN_FLIGHT} requests in flight"
    );
    // The same load again: every connection comes from the pool, none is opened.
    wave(&bg, &clients);
    let reused = bg.metric("bindgate_upstream_connections_total{event=\"reused\"}");
    let opened_again = bg.metric("bindgate_upstream_connections_total{event=\"opened\"}");
    assert_eq!(
        opened_again,
        opened,
        "a second wave opened {} more upstream connections (reused {reused})",
        opened_again - opened
    );
    assert!(reused >= IN_FLIGHT as u64, "reused {reused}");
    assert_eq!(
        bg.metric("bindgate_upstream_connections_total{event=\"closed\"}"),
        0
    );
}

#[test]
fn keepalive_pool_zero_keeps_no_upstream_connection() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let yaml = passthrough_config(upstream.addr).replace(
        "    client_cert_header: Client-Cert\n",
        "    client_cert_header: Client-Cert\n    keepalive_pool: 0\n",
    );
    let bg = Bindgate::start(&pki, &yaml);
    let client = bg.client(&pki, None, Http::One);
    for _ in 0..3 {
        assert_eq!(client.get(bg.url("/x")).send().unwrap().status(), 200);
    }
    assert_eq!(
        bg.metric("bindgate_upstream_connections_total{event=\"reused\"}"),
        0
    );
    assert_eq!(
        bg.metric("bindgate_upstream_connections_total{event=\"opened\"}"),
        3
    );
}
