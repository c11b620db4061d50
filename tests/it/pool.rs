//! Upstream connection reuse that follows the load (issue 20 of the brief: no cliff past 128
//! requests in flight): the keep-alive pool holds what `max_connections` lets open, and
//! `bindgate_upstream_connections_total` says what happened to each connection.

use crate::harness::*;
use std::time::Duration;

const IN_FLIGHT: usize = 160;

/// `IN_FLIGHT` requests at once, each on its own client connection, all held by the upstream
/// for a moment so that they are in flight together.
fn wave(bg: &Bindgate, clients: &[reqwest::blocking::Client]) {
    let statuses = all_at_once(clients, &bg.url("/wave"), 1);
    assert_eq!(statuses, vec![200; clients.len()]);
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
    let (pki, _upstream, bg) = with_pool_of(0);
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

/// What a [`RawUpstream`] does with a connection once it has answered on it.
#[derive(Clone, Copy)]
enum AfterAnswer {
    /// Close it when no request has come for this long (nginx's `keepalive_timeout`).
    CloseWhenIdle(Duration),
    /// Write a whole second answer nobody asked for, 100 ms later.
    WriteUnasked,
}

/// An HTTP/1.1 upstream on a plain socket: every request gets `200` with the body `first`,
/// on a connection kept open; then it does `after`. It counts the connections it accepted,
/// and the TCP segments with data each request came in.
struct RawUpstream {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    segments: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
}

impl RawUpstream {
    fn start(after: AfterAnswer) -> RawUpstream {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let segments = std::sync::Arc::default();
        let (count, seen) = (accepted.clone(), std::sync::Arc::clone(&segments));
        std::thread::spawn(move || {
            for conn in listener.incoming().take(64) {
                let Ok(conn) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let seen = std::sync::Arc::clone(&seen);
                std::thread::spawn(move || serve_raw(conn, after, &seen));
            }
        });
        RawUpstream {
            addr,
            accepted,
            segments,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// For each request answered so far, the TCP segments with data it came in.
    fn segments(&self) -> Vec<u32> {
        self.segments.lock().unwrap().clone()
    }
}

/// The segments with data received on `conn` so far (`tcpi_data_segs_in`, Linux 4.6).
fn data_segments_in(conn: &std::net::TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    // SAFETY: `tcp_info` is plain integers; the kernel writes at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_data_segs_in
}

fn serve_raw(
    mut conn: std::net::TcpStream,
    after: AfterAnswer,
    segments: &std::sync::Mutex<Vec<u32>>,
) {
    use std::io::{Read, Write};
    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst";
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    let mut segments_before = 0;
    // At most 20 requests, each read bounded: the thread always ends.
    for _ in 0..20 {
        let idle = match after {
            AfterAnswer::CloseWhenIdle(idle) => idle,
            AfterAnswer::WriteUnasked => Duration::from_secs(10),
        };
        let _ = conn.set_read_timeout(Some(idle));
        // One request: a head and the body its Content-Length announces.
        let request_end = loop {
            if let Some(end) = request_length(&pending) {
                break end;
            }
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        };
        pending.drain(..request_end);
        let now = data_segments_in(&conn);
        segments.lock().unwrap().push(now - segments_before);
        segments_before = now;
        if conn.write_all(ANSWER).is_err() {
            return;
        }
        if let AfterAnswer::WriteUnasked = after {
            std::thread::sleep(Duration::from_millis(100));
            let forged = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged";
            if conn.write_all(forged).is_err() {
                return;
            }
        }
    }
}

/// bindgate in front of an [`Upstream`], keeping at most `size` idle connections to it.
fn with_pool_of(size: usize) -> (Pki, Upstream, Bindgate) {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let yaml = passthrough_config(upstream.addr).replace(
        "    client_cert_header: Client-Cert\n",
        &format!("    client_cert_header: Client-Cert\n    keepalive_pool: {size}\n"),
    );
    let bg = Bindgate::start(&pki, &yaml);
    (pki, upstream, bg)
}

/// The length of the first whole request in `bytes`, if it is all there.
fn request_length(bytes: &[u8]) -> Option<usize> {
    crate::harness::http1::message_len(bytes).filter(|&len| bytes.len() >= len)
}

/// `bindgate_upstream_connections_total{event}`.
fn connections(bg: &Bindgate, event: &str) -> u64 {
    bg.metric(&format!(
        "bindgate_upstream_connections_total{{event=\"{event}\"}}"
    ))
}

/// bindgate's connections to `port` that the other side has closed and bindgate has not
/// (`CLOSE_WAIT`), from the kernel's socket tables.
fn close_wait_towards(port: u16) -> usize {
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state)) = (fields.get(2), fields.get(3)) else {
                continue;
            };
            let remote_port = remote
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if remote_port == Some(port) && *state == "08" {
                n += 1;
            }
        }
    }
    n
}

/// An upstream that closes its idle connections (as nginx does after `keepalive_timeout`):
/// the pool lets go of its end within its one-second sweep, so closed connections do not
/// pile up holding descriptors, and the next request opens a new connection instead of
/// failing on the dead one.
#[test]
fn an_idle_connection_the_upstream_closed_is_let_go_and_never_used() {
    let pki = Pki::new();
    let upstream = RawUpstream::start(AfterAnswer::CloseWhenIdle(Duration::from_millis(200)));
    let bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    let client = bg.client(&pki, None, Http::One);
    for round in 1..=3 {
        let answer = client.post(bg.url("/x")).body("{}").send().unwrap();
        assert_eq!(answer.status(), 200, "round {round}");
        assert_eq!(answer.text().unwrap(), "first");
        // The upstream closes the connection after 200 ms idle; the pool's sweep (every
        // second) closes bindgate's end.
        let deadline = std::time::Instant::now() + Duration::from_secs(4);
        std::thread::sleep(Duration::from_millis(300));
        while close_wait_towards(upstream.addr.port()) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: bindgate still holds {} upstream connections the upstream closed",
                close_wait_towards(upstream.addr.port())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(upstream.accepted(), round);
    }
    let metric = |event: &str| connections(&bg, event);
    assert_eq!(metric("opened"), 3);
    assert_eq!(metric("reused"), 0);
    assert_eq!(
        metric("closed"),
        3,
        "each closed by the upstream, then by the pool"
    );
}

/// Bytes an upstream writes on an idle connection (a second answer nobody asked for) are never
/// taken as the answer to the next client's request: that connection is not reused.
#[test]
fn an_answer_sent_unasked_on_an_idle_connection_reaches_no_client() {
    let pki = Pki::new();
    let upstream = RawUpstream::start(AfterAnswer::WriteUnasked);
    let bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    for http in [Http::One, Http::Alpn] {
        let client = bg.client(&pki, None, http);
        for _ in 0..2 {
            let answer = client.post(bg.url("/x")).body("{}").send().unwrap();
            assert_eq!(answer.status(), 200);
            assert_eq!(answer.text().unwrap(), "first");
            // The unasked answer arrives on the idle connection meanwhile.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    assert_eq!(
        upstream.accepted(),
        4,
        "each request had a connection of its own"
    );
    let metric = |event: &str| connections(&bg, event);
    assert_eq!(metric("reused"), 0);
    // Three were let go when the next request looked at them, the last by the sweep.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while metric("closed") < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric("closed"), 4);
}

/// A pool with room for two, four requests in flight: the two connections idle longest are
/// closed as the others are released (counted as `closed`), the two kept serve what follows.
#[test]
fn a_full_pool_closes_the_connections_idle_longest() {
    let (pki, upstream, bg) = with_pool_of(2);
    let clients: Vec<_> = (0..4).map(|_| bg.client(&pki, None, Http::One)).collect();
    upstream.set_delay(Duration::from_millis(300));
    std::thread::scope(|s| {
        for c in &clients {
            let url = bg.url("/wave");
            s.spawn(move || assert_eq!(c.get(url).send().unwrap().status(), 200));
        }
    });
    upstream.set_delay(Duration::ZERO);
    let metric = |event: &str| connections(&bg, event);
    assert_eq!(metric("opened"), 4);
    assert_eq!(metric("closed"), 2);
    for c in &clients[..2] {
        assert_eq!(c.get(bg.url("/after")).send().unwrap().status(), 200);
    }
    assert_eq!(metric("opened"), 4, "both requests found a kept connection");
    assert_eq!(metric("reused"), 2);
}

/// A request with a body leaves for the upstream in one write, its head and body together
/// (vendor change 1), on a new upstream connection and on one taken again from the pool,
/// whose write buffer was given back between the requests (vendor change 12). The head
/// carries the client certificate bindgate forwards, as every mTLS request does.
#[test]
fn a_request_and_its_body_reach_the_upstream_in_one_segment() {
    let pki = Pki::new();
    let upstream = RawUpstream::start(AfterAnswer::CloseWhenIdle(Duration::from_secs(5)));
    let bg = Bindgate::start(&pki, &passthrough_config(upstream.addr));
    let body = format!(r#"{{"pad":"{}"}}"#, "x".repeat(900));
    for http in [Http::One, Http::Alpn] {
        let client = bg.client(&pki, None, http);
        for _ in 0..3 {
            let answer = client.post(bg.url("/x")).body(body.clone()).send().unwrap();
            assert_eq!(answer.status(), 200);
            assert_eq!(answer.text().unwrap(), "first");
        }
    }
    assert_eq!(upstream.accepted(), 1, "one upstream connection, reused");
    assert_eq!(connections(&bg, "reused"), 5);
    assert_eq!(upstream.segments(), vec![1; 6]);
}
