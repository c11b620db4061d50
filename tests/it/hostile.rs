//! A hostile client against the real binary (issue 14): connection deadlines, descriptors
//! running out, slow bodies, upstream connection limits, TLS resumption across a reload.

use crate::harness::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The passthrough configuration with the connection deadlines set short, and `extra_server`
/// and `extra_upstream` lines added to `server:` and to the upstream.
fn deadline_config(upstream: std::net::SocketAddr, extra_upstream: &str) -> String {
    passthrough_config(upstream)
        .replace(
            "    client_cert_header: Client-Cert\n",
            &format!("    client_cert_header: Client-Cert\n{extra_upstream}"),
        )
        .replace(
            "  max_body: 1KiB\n",
            "  max_body: 128KiB\n  idle_timeout: 2s\n  header_timeout: 2s\n  body_timeout: 2s\n",
        )
}

fn connector(alpn: Option<&[u8]>) -> openssl::ssl::SslConnector {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    if let Some(alpn) = alpn {
        b.set_alpn_protos(alpn).unwrap();
    }
    b.build()
}

/// A TLS connection to bindgate (no certificate), reads bounded by `read_timeout`.
fn tls(
    port: u16,
    alpn: Option<&[u8]>,
    read_timeout: Duration,
) -> openssl::ssl::SslStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(read_timeout)).unwrap();
    connector(alpn)
        .configure()
        .unwrap()
        .verify_hostname(false)
        .connect("localhost", tcp)
        .expect("TLS handshake")
}

/// Reads until the peer closes; how long that took, or None if it was still open after `limit`.
fn closed_within(stream: &mut impl Read, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// One read into `into` (a read timeout reads nothing); false once the peer has closed or the
/// connection failed.
fn read_more(stream: &mut impl Read, into: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(0) => false,
        Ok(n) => {
            into.extend_from_slice(&chunk[..n]);
            true
        }
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn read_response(stream: &mut impl Read) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if crate::harness::http1::message_len(&buf).is_some_and(|len| buf.len() >= len) {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn an_idle_http1_connection_is_closed_after_any_answer() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &deadline_config(upstream.addr, ""));

    // TLS done, not a byte sent.
    let mut silent = tls(bg.port, None, Duration::from_millis(200));
    // A keep-alive connection after a credential-less refusal (405 on the admin-free path is
    // not needed: any answer will do) and after a forwarded answer.
    let mut after_answer = tls(bg.port, None, Duration::from_millis(200));
    after_answer
        .write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let first = read_response(&mut after_answer);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    let answered = Instant::now();
    let watch = std::thread::spawn(move || closed_within(&mut silent, Duration::from_secs(6)));
    let took = closed_within(&mut after_answer, Duration::from_secs(6))
        .expect("after an answer: still open 6 s later (idle_timeout 2s)");
    assert!(
        took >= Duration::from_millis(1500),
        "after an answer: closed after {took:?}, before idle_timeout"
    );
    // Idle since before `answered`: closed within the deadline, whenever it began.
    watch
        .join()
        .unwrap()
        .expect("TLS done, no byte: still open 6 s later (idle_timeout 2s)");
    assert!(answered.elapsed() < Duration::from_secs(7));
    assert!(bg.metric("bindgate_connections_closed_total{reason=\"idle_timeout\"}") >= 2);
}

/// A TCP stream whose writes can be held back and sent as one, so that several TLS records
/// reach bindgate in one segment.
#[derive(Debug)]
struct Corked {
    tcp: TcpStream,
    held: Option<Vec<u8>>,
}

impl Read for Corked {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for Corked {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.held {
            Some(held) => {
                held.extend_from_slice(buf);
                Ok(buf.len())
            }
            None => self.tcp.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// Between requests a connection waits for the next one's bytes before it makes the request's
/// state; bytes OpenSSL has already taken off the socket (it reads ahead) are such bytes too.
/// Two requests bindgate answers itself (the embedded session store), in two TLS records sent
/// in one segment: OpenSSL reads both records, hands out the first, and keeps the second
/// while the first is answered. The second is answered at once, not after the idle deadline
/// and not with a closed connection.
#[test]
fn a_second_request_already_read_ahead_by_tls_is_answered_at_once() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let token = pki.token("session-store.token");
    let bg = Bindgate::start(&pki, &session_store_config(upstream.addr, "embedded"));
    let tcp = TcpStream::connect(("127.0.0.1", bg.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut s = connector(None)
        .configure()
        .unwrap()
        .verify_hostname(false)
        .connect("localhost", Corked { tcp, held: None })
        .expect("TLS handshake");
    let lookup = |sid: &str| {
        format!(
            "GET /session-store/rest/v2/sessions HTTP/1.1\r\nHost: localhost\r\n\
             Authorization: Bearer {token}\r\nSID: {sid}\r\n\r\n"
        )
    };
    // A first request on its own, so that the pair meets a reused connection.
    s.write_all(lookup("first").as_bytes()).unwrap();
    let first = read_response(&mut s);
    assert!(first.starts_with("HTTP/1.1 404"), "{first}");

    s.get_mut().held = Some(Vec::new());
    s.write_all(lookup("second").as_bytes()).unwrap();
    s.write_all(lookup("third").as_bytes()).unwrap();
    let records = s.get_mut().held.take().unwrap();
    let sent = Instant::now();
    s.get_mut().tcp.write_all(&records).unwrap();

    let mut buf = Vec::new();
    let mut answered = None;
    while sent.elapsed() < Duration::from_secs(8) {
        let first_len = crate::harness::http1::message_len(&buf);
        let second_len = first_len
            .filter(|&l| buf.len() >= l)
            .and_then(|l| crate::harness::http1::message_len(&buf[l..]).map(|m| l + m));
        if second_len.is_some_and(|l| buf.len() >= l) {
            answered = Some(sent.elapsed());
            break;
        }
        if !read_more(&mut s, &mut buf) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let took = answered.unwrap_or_else(|| panic!("two answers not in within 8 s: {text}"));
    assert!(
        took < Duration::from_secs(4),
        "answered after {took:?}: {text}"
    );
    assert_eq!(text.matches("HTTP/1.1 404").count(), 2, "{text}");
    assert!(
        upstream.requests().is_empty(),
        "forwarded: {}",
        upstream.requests().len()
    );
}

/// SIGTERM closes keep-alive connections waiting for their next request at once (their
/// request state is not made yet, nothing is lost); the process still has its grace period
/// for requests in flight.
#[test]
fn sigterm_closes_a_connection_waiting_between_requests_at_once() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let config = deadline_config(upstream.addr, "")
        .replace("idle_timeout: 2s", "idle_timeout: 30s")
        .replace("grace_period: 1s", "grace_period: 10s");
    let mut bg = Bindgate::start(&pki, &config);
    let mut idle = tls(bg.port, None, Duration::from_millis(100));
    idle.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let first = read_response(&mut idle);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    bg.signal("TERM");
    let took = closed_within(&mut idle, Duration::from_secs(8))
        .expect("a connection between requests still open 8 s after SIGTERM (grace_period 10s)");
    assert!(
        took < Duration::from_secs(3),
        "closed {took:?} after SIGTERM"
    );
    assert!(bg.wait_exit(Duration::from_secs(15)).is_some());
}

/// Bytes that begin no request (here the first byte of a TLS record, never completed) do not
/// restart the idle deadline: it runs from the last answer (idle_timeout 2s; whole seconds, so
/// within 3 s), not from the byte.
#[test]
fn a_byte_that_begins_no_request_does_not_extend_the_idle_deadline() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &deadline_config(upstream.addr, ""));
    let mut s = tls(bg.port, None, Duration::from_millis(100));
    s.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let first = read_response(&mut s);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let answered = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    // An application-data record's type byte, straight on the socket, and nothing more.
    s.get_mut().write_all(&[0x17]).unwrap();
    closed_within(&mut s, Duration::from_secs(6))
        .expect("still open 6 s after the byte (idle_timeout 2s)");
    let took = answered.elapsed();
    assert!(
        took < Duration::from_millis(3300),
        "closed {took:?} after the answer: the byte restarted the idle deadline"
    );
    assert!(bg.metric("bindgate_connections_closed_total{reason=\"idle_timeout\"}") >= 1);
}

/// A client that pipelines (the next request in the same TLS record as the first, here after a
/// body too) gets the first answer and then a closed connection: what followed is never
/// parsed, never forwarded and never counted as the first's body. RFC 9112 §9.3.2 lets a server
/// close so; the client retries the rest on a new connection.
#[test]
fn pipelined_requests_get_the_first_answer_saying_close_and_the_rest_is_never_forwarded() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &deadline_config(upstream.addr, ""));
    let next = "GET /second HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for (first, body) in [
        ("GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n", ""),
        (
            "POST /first HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nhi",
            "hi",
        ),
    ] {
        upstream.clear();
        let mut s = tls(bg.port, None, Duration::from_millis(100));
        s.write_all(format!("{first}{next}").as_bytes()).unwrap();
        let mut buf = Vec::new();
        let start = Instant::now();
        let mut closed = false;
        while start.elapsed() < Duration::from_secs(5) {
            if !read_more(&mut s, &mut buf) {
                closed = true;
                break;
            }
        }
        let text = String::from_utf8_lossy(&buf);
        assert!(closed, "still open 5 s after a pipelined pair: {text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        // The answer before the close says so, rather than promising keep-alive.
        let head = text
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let connection: Vec<&str> = head
            .lines()
            .filter_map(|l| l.strip_prefix("connection:"))
            .map(str::trim)
            .collect();
        assert_eq!(connection, ["close"], "{text}");
        let seen = upstream.requests();
        assert_eq!(
            seen.len(),
            1,
            "forwarded: {:?}",
            seen.iter().map(|r| &r.target).collect::<Vec<_>>()
        );
        assert_eq!(seen[0].target, "/first");
        assert_eq!(seen[0].body, body.as_bytes());
    }
}

#[test]
fn an_idle_http2_connection_gets_goaway_and_is_closed() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &deadline_config(upstream.addr, ""));
    let mut s = tls(bg.port, Some(b"\x02h2"), Duration::from_millis(200));
    assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap(); // empty SETTINGS
    let start = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let mut closed = None;
    while start.elapsed() < Duration::from_secs(8) {
        match s.read(&mut buf) {
            Ok(0) => {
                closed = Some(start.elapsed());
                break;
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = Some(start.elapsed());
                break;
            }
        }
    }
    let took = closed.expect("an idle HTTP/2 connection still open 8 s later (idle_timeout 2s)");
    assert!(took >= Duration::from_millis(1500), "closed after {took:?}");
    // Walk the frames the server sent: a GOAWAY (type 7) among them.
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = usize::from(bytes[at]) << 16
            | usize::from(bytes[at + 1]) << 8
            | usize::from(bytes[at + 2]);
        types.push(bytes[at + 3]);
        at += 9 + len;
    }
    assert!(types.contains(&7), "no GOAWAY before the close: {types:?}");
}

#[test]
fn a_request_head_must_arrive_within_header_timeout_in_total() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &deadline_config(upstream.addr, ""));
    let mut s = tls(bg.port, None, Duration::from_millis(100));
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    // One header byte every 300 ms: each read is quick, the head never ends.
    let start = Instant::now();
    let mut closed = false;
    let mut buf = [0u8; 256];
    while start.elapsed() < Duration::from_secs(8) {
        if s.write_all(b"x").is_err() {
            closed = true;
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = start.elapsed();
    assert!(
        closed,
        "a trickled head kept the connection 8 s (header_timeout 2s)"
    );
    assert!(took < Duration::from_secs(5), "closed only after {took:?}");
    assert!(upstream.requests().is_empty(), "nothing is forwarded");
    assert!(bg.metric("bindgate_connections_closed_total{reason=\"header_timeout\"}") >= 1);
}

/// A request with `Content-Length: 100` whose body trickles a byte every 300 ms.
fn trickled_post(port: u16) -> (String, Duration) {
    let mut s = tls(port, None, Duration::from_millis(100));
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n",
    )
    .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut writing = true;
    while start.elapsed() < Duration::from_secs(10) {
        // Once the server has closed its side of the writes, only the answer is left to read.
        writing = writing && s.write_all(b"a").is_ok();
        if !read_more(&mut s, &mut got) {
            break;
        }
        if crate::harness::http1::message_len(&got).is_some_and(|len| got.len() >= len) {
            break;
        }
        if writing {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
}

#[test]
fn a_body_that_does_not_arrive_within_body_timeout_is_408_and_never_forwarded() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &deadline_config(upstream.addr, ""));
    let (answer, took) = trickled_post(bg.port);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        upstream.requests().is_empty(),
        "a body that never completed reached the upstream"
    );
    assert!(bg.metric("bindgate_connections_closed_total{reason=\"body_timeout\"}") >= 1);
}

/// An upstream that answers each whole HTTP/1.1 request with 200 and keeps every byte that
/// reaches it, whole message or not: what a forwarded part of a request would show.
struct ByteCountingUpstream {
    addr: std::net::SocketAddr,
    received: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl ByteCountingUpstream {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(10_000) {
                let Ok(mut s) = stream else { continue };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    let slot = {
                        let mut all = seen.lock().unwrap();
                        all.push(Vec::new());
                        all.len() - 1
                    };
                    let mut got = Vec::new();
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        seen.lock().unwrap()[slot] = got.clone();
                        if let Some(len) =
                            crate::harness::http1::message_len(&got).filter(|l| got.len() >= *l)
                        {
                            got.drain(..len);
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                        }
                    }
                });
            }
        });
        ByteCountingUpstream { addr, received }
    }

    /// Every connection's bytes, in the order the connections came.
    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

#[test]
fn slow_http2_bodies_never_reach_the_upstream() {
    let pki = Pki::new();
    let upstream = ByteCountingUpstream::start();
    let bg = Bindgate::start(&pki, &deadline_config(upstream.addr, ""));
    let client = bg.client(&pki, None, Http::Alpn);

    /// A body of 1000 bytes that gives one byte, then stalls longer than `body_timeout`.
    struct Stalling(usize);
    impl Read for Stalling {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                self.0 += 1;
                buf[0] = b'a';
                return Ok(1);
            }
            std::thread::sleep(Duration::from_secs(5));
            Err(std::io::Error::other("gave up"))
        }
    }
    let threads: Vec<_> = (0..5)
        .map(|_| {
            let client = client.clone();
            let url = bg.url("/slow-h2");
            std::thread::spawn(move || {
                client
                    .post(url)
                    .header("content-length", "1000")
                    .body(reqwest::blocking::Body::sized(Stalling(0), 1000))
                    .send()
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    for t in threads {
        // An error is the stream reset: also a refusal.
        if let Ok(status) = t.join().unwrap() {
            assert_eq!(status, 408);
        }
    }
    assert!(
        upstream.received().iter().all(Vec::is_empty),
        "slow bodies reached the upstream: {} connections",
        upstream.received().len()
    );
    // A whole body still goes through, with its length.
    let resp = client
        .post(bg.url("/whole"))
        .body(vec![b'z'; 100_000])
        .send()
        .expect("request");
    assert_eq!(resp.status(), 200);
    let got: Vec<Vec<u8>> = upstream
        .received()
        .into_iter()
        .filter(|r| !r.is_empty())
        .collect();
    assert_eq!(got.len(), 1);
    let text = String::from_utf8_lossy(&got[0]);
    assert!(text.starts_with("POST /whole HTTP/1.1\r\n"), "{text:.200}");
    assert!(text.contains("Content-Length: 100000\r\n"), "{text:.400}");
    assert!(got[0].ends_with(&[b'z'; 100_000]));
}

#[test]
fn a_chunked_body_is_read_whole_and_forwarded_with_its_length() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &deadline_config(upstream.addr, ""));
    let mut s = tls(bg.port, None, Duration::from_secs(5));
    s.write_all(
        b"POST /chunks HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .unwrap();
    let answer = read_response(&mut s);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let got = upstream.wait_for(1);
    assert_eq!(got[0].body, b"hello world");
    assert_eq!(got[0].header("content-length"), Some("11"));
    assert_eq!(got[0].header("transfer-encoding"), None);
}

#[test]
fn expect_100_continue_is_answered_by_bindgate_before_the_body() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &deadline_config(upstream.addr, ""));
    let mut s = tls(bg.port, None, Duration::from_secs(5));
    s.write_all(
        b"POST /expect HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).expect("a 100 Continue before the body");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"ping").unwrap();
    let answer = read_response(&mut s);
    assert!(
        answer.contains("200 OK") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    let got = upstream.wait_for(1);
    assert_eq!(got[0].body, b"ping");
    assert_eq!(got[0].header("expect"), None);
}

#[test]
fn requests_beyond_max_connections_wait_then_get_503() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    upstream.set_delay(Duration::from_secs(4));
    let bg = Bindgate::start(
        &pki,
        &deadline_config(
            upstream.addr,
            "    max_connections: 2\n    connect_timeout: 1s\n",
        ),
    );
    let client = bg.client(&pki, None, Http::One);
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let c = client.clone();
            let url = bg.url(&format!("/held/{i}"));
            std::thread::spawn(move || c.get(url).send().map(|r| r.status().as_u16()))
        })
        .collect();
    // Both in flight at the upstream.
    upstream.wait_for(2);
    let start = Instant::now();
    let third = client.get(bg.url("/third")).send().expect("an answer");
    let waited = start.elapsed();
    assert_eq!(third.status(), 503);
    assert_eq!(third.headers()["retry-after"], "1");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "answered after {waited:?} (connect_timeout 1s)"
    );
    for t in slow {
        assert_eq!(t.join().unwrap().expect("the held requests finish"), 200);
    }
    assert_eq!(upstream.requests().len(), 2, "the third never reached it");
    // Places free again: the next request goes through.
    upstream.set_delay(Duration::ZERO);
    assert_eq!(client.get(bg.url("/after")).send().unwrap().status(), 200);
}

#[test]
fn with_few_descriptors_and_many_idle_connections_a_new_client_is_served() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &deadline_config(upstream.addr, ""));
    let ok = std::process::Command::new("prlimit")
        .args(["--pid", &bg.pid().to_string(), "--nofile=128:128"])
        .status()
        .expect("prlimit")
        .success();
    assert!(ok, "prlimit failed");

    // 60 connections that finish TLS and say nothing, then 90 that do not even start it:
    // together more than the descriptors left.
    let mut held = Vec::new();
    for _ in 0..60 {
        held.push(Box::new(tls(bg.port, None, Duration::from_millis(100))) as Box<dyn Send>);
    }
    for _ in 0..90 {
        held.push(
            Box::new(TcpStream::connect(("127.0.0.1", bg.port)).expect("connect")) as Box<dyn Send>,
        );
    }
    let start = Instant::now();
    let client = bg.client(&pki, None, Http::One);
    let mut served = None;
    while start.elapsed() < Duration::from_secs(15) {
        if let Ok(r) = client.get(bg.url("/newcomer")).send() {
            served = Some(r.status());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = start.elapsed();
    assert_eq!(
        served.map(|s| s.as_u16()),
        Some(200),
        "a new client was not served within 15 s"
    );
    // idle_timeout (2s) + 5 s.
    assert!(took < Duration::from_secs(7), "served after {took:?}");
    assert!(bg.metric("bindgate_connections_refused_total") >= 1);
    assert!(bg.metric("bindgate_connections_closed_total{reason=\"idle_timeout\"}") >= 1);
    drop(held);
}

/// The soft and hard open-descriptor limits of a running process (`/proc/PID/limits`).
fn nofile_of(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (v[0], v[1])
}

/// The hard limit this test process may give a child: its own, at most 4096.
fn child_hard_limit() -> u64 {
    nofile_of(std::process::id()).1.min(4096)
}

/// Started with a soft limit of 256 under a higher hard one, bindgate raises the soft limit to
/// what its configuration needs (the upstream's default max_connections, 1 024, two
/// descriptors each, and 256: 2 304) and no further; a higher soft limit is kept as it is.
#[test]
fn the_open_descriptor_limit_is_raised_to_what_the_configuration_needs() {
    let hard = child_hard_limit();
    assert!(
        hard >= 4096,
        "this test needs a hard limit of 4096, not {hard}"
    );
    let pki = Pki::new();
    let upstream = Upstream::start();
    let config = deadline_config(upstream.addr, "");
    let bg = Bindgate::start_with_nofile(&pki, &config, 256, hard);
    assert_eq!(nofile_of(bg.pid()), (2304, hard));
    let logs = bg.logs();
    assert!(
        logs.contains("open descriptor limit raised from 256 to 2304"),
        "{logs}"
    );
    assert!(!logs.contains("is below the"), "{logs}");
    drop(bg);
    let bg = Bindgate::start_with_nofile(&pki, &config, 3000, hard);
    assert_eq!(nofile_of(bg.pid()), (3000, hard));
    assert!(
        !bg.logs().contains("open descriptor limit"),
        "{}",
        bg.logs()
    );
}

/// A hard limit below what the upstreams' `max_connections` can hold open is said at start,
/// with the way to raise it; bindgate still runs and serves.
#[test]
fn a_hard_descriptor_limit_below_the_upstreams_max_connections_is_warned_about() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let config = deadline_config(upstream.addr, "    max_connections: 1000\n");
    let bg = Bindgate::start_with_nofile(&pki, &config, 512, 512);
    assert_eq!(nofile_of(bg.pid()), (512, 512));
    let logs = bg.logs();
    assert!(
        logs.contains("open descriptor limit 512 is below the 2256"),
        "{logs}"
    );
    assert!(logs.contains("LimitNOFILE="), "{logs}");
    let client = bg.client(&pki, None, Http::One);
    assert_eq!(client.get(bg.url("/x")).send().unwrap().status(), 200);
}

// TLS session resumption across a reload (issue 14 §3).

fn resumption_config(ca: &str, client_auth: &str, upstream: std::net::SocketAddr) -> String {
    passthrough_config(upstream).replace(
        "    client_auth: optional\n",
        &format!("    client_auth: {client_auth}\n    client_ca: {{PKI}}/{ca}\n"),
    )
}

fn session_connector(
    pki: &Pki,
    certificate: bool,
    version: openssl::ssl::SslVersion,
) -> openssl::ssl::SslConnector {
    use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslSessionCacheMode};
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(pki.path("ca.crt")).unwrap();
    if certificate {
        b.set_certificate_file(pki.path("client1.crt"), SslFiletype::PEM)
            .unwrap();
        b.set_private_key_file(pki.path("client1.key"), SslFiletype::PEM)
            .unwrap();
    }
    b.set_min_proto_version(Some(version)).unwrap();
    b.set_max_proto_version(Some(version)).unwrap();
    b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
    b.build()
}

/// One request on a new connection, offering `session`: whether it was resumed, the session
/// to offer next time, the answer (None: the handshake failed).
fn resumed_request(
    connector: &openssl::ssl::SslConnector,
    port: u16,
    session: Option<&openssl::ssl::SslSessionRef>,
) -> (bool, Option<openssl::ssl::SslSession>, Option<String>) {
    let mut ssl = connector
        .configure()
        .unwrap()
        .into_ssl("localhost")
        .unwrap();
    if let Some(s) = session {
        // Safety: the session was made by a connector of the same configuration.
        unsafe { ssl.set_session(s).unwrap() };
    }
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let Ok(mut stream) = ssl.connect(tcp) else {
        return (false, None, None);
    };
    if stream
        .write_all(b"GET /resume HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return (stream.ssl().session_reused(), None, None);
    }
    let answer = read_response(&mut stream);
    let _ = stream.shutdown();
    let reused = stream.ssl().session_reused();
    let next = stream.ssl().session().map(|s| s.to_owned());
    let answer = (!answer.is_empty()).then_some(answer);
    (reused, next, answer)
}

/// The session of a first, served request.
fn first_session(connector: &openssl::ssl::SslConnector, port: u16) -> openssl::ssl::SslSession {
    let (_, session, first) = resumed_request(connector, port, None);
    assert!(first.expect("first answer").starts_with("HTTP/1.1 200"));
    session.expect("a session")
}

fn a_session_from_before_a_client_ca_change_is_not_resumed(version: openssl::ssl::SslVersion) {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(
        &pki,
        &resumption_config("ca.crt", "optional", upstream.addr),
    );
    let with_cert = session_connector(&pki, true, version);
    let session = first_session(&with_cert, bg.port);
    // Resumption works while nothing changed, and keeps client1's certificate.
    let (reused, session2, second) = resumed_request(&with_cert, bg.port, Some(&session));
    assert!(reused, "{version:?}: the unchanged listener resumes");
    assert!(second.expect("second answer").starts_with("HTTP/1.1 200"));
    let session = session2.unwrap_or(session);

    // The client CA is replaced by one that did not sign client1.
    bg.reload_with(
        &pki,
        &resumption_config("selfsigned.crt", "optional", upstream.addr),
    );
    let seen = upstream.requests().len();
    let (reused, _, answer) = resumed_request(&with_cert, bg.port, Some(&session));
    assert!(
        !reused,
        "{version:?}: a session from before the CA change was resumed"
    );
    // A full handshake: client1 no longer verifies, and its certificate never reaches the
    // upstream as the client's.
    if answer.is_some() {
        for r in &upstream.requests()[seen..] {
            assert_eq!(r.header("client-cert"), None, "{version:?}");
        }
    }
}

#[test]
fn a_tls12_session_from_before_a_client_ca_change_is_not_resumed() {
    a_session_from_before_a_client_ca_change_is_not_resumed(openssl::ssl::SslVersion::TLS1_2);
}

#[test]
fn a_tls13_session_from_before_a_client_ca_change_is_not_resumed() {
    a_session_from_before_a_client_ca_change_is_not_resumed(openssl::ssl::SslVersion::TLS1_3);
}

fn a_certless_session_does_not_resume_after_optional_becomes_required(
    version: openssl::ssl::SslVersion,
) {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(
        &pki,
        &resumption_config("ca.crt", "optional", upstream.addr),
    );
    let without_cert = session_connector(&pki, false, version);
    let session = first_session(&without_cert, bg.port);

    bg.reload_with(
        &pki,
        &resumption_config("ca.crt", "required", upstream.addr),
    );
    let seen = upstream.requests().len();
    let (reused, _, answer) = resumed_request(&without_cert, bg.port, Some(&session));
    assert!(
        !reused,
        "{version:?}: a cert-less session resumed under client_auth: required"
    );
    assert!(
        answer.is_none() || upstream.requests().len() == seen,
        "{version:?}: a request without a certificate was served under required: {answer:?}"
    );
}

#[test]
fn a_tls12_certless_session_does_not_resume_after_optional_becomes_required() {
    a_certless_session_does_not_resume_after_optional_becomes_required(
        openssl::ssl::SslVersion::TLS1_2,
    );
}

#[test]
fn a_tls13_certless_session_does_not_resume_after_optional_becomes_required() {
    a_certless_session_does_not_resume_after_optional_becomes_required(
        openssl::ssl::SslVersion::TLS1_3,
    );
}

// Headers the upstream may read differently (issue 14 §6).

/// One raw HTTP/1.1 request on a new connection; the answer.
fn raw_request(port: u16, request: &[u8]) -> String {
    let mut s = tls(port, None, Duration::from_secs(5));
    s.write_all(request).unwrap();
    read_response(&mut s)
}

#[test]
fn header_names_with_underscores_are_dropped_unless_the_upstream_keeps_them() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let spoofs = b"GET /u HTTP/1.1\r\nHost: localhost\r\nclient_cert: :c3Bvb2Y=:\r\n\
x_forwarded_for: 203.0.113.9\r\nx_real_ip: 203.0.113.9\r\nx_original_url: /clients\r\n\
x_custom: kept-or-not\r\nConnection: close\r\n\r\n";
    for keep in [false, true] {
        let extra = if keep {
            "    forward_underscore_headers: true\n"
        } else {
            ""
        };
        let bg = Bindgate::start(&pki, &deadline_config(upstream.addr, extra));
        let seen = upstream.requests().len();
        let answer = raw_request(bg.port, spoofs);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let got = upstream.wait_for(seen + 1);
        let r = &got[seen];
        for name in [
            "client_cert",
            "x_forwarded_for",
            "x_real_ip",
            "x_original_url",
        ] {
            assert_eq!(
                r.header(name),
                None,
                "{name} reached the upstream (keep: {keep})"
            );
        }
        assert_eq!(r.header("x-real-ip"), None);
        assert_eq!(r.header("client-cert"), None);
        assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(
            r.header("x_custom").is_some(),
            keep,
            "an ordinary underscore header (keep: {keep})"
        );
    }
}

#[test]
fn client_cert_header_may_not_be_an_identity_header() {
    let pki = Pki::new();
    for name in [
        "X-Real-IP",
        "X-Original-URL",
        "X-HTTP-Method-Override",
        "DPoP",
    ] {
        let yaml = deadline_config("127.0.0.1:9".parse().unwrap(), "")
            .replace(
                "client_cert_header: Client-Cert",
                &format!("client_cert_header: {name}"),
            )
            .replace("{LISTEN}", "127.0.0.1:1")
            .replace("{ADMIN}", "127.0.0.1:2");
        let (ok, out) = check(&pki, &yaml);
        assert!(!ok, "{name} accepted as client_cert_header");
        assert!(out.contains("upstreams.idp.client_cert_header"), "{out}");
    }
}

#[test]
fn upgrade_is_refused_unless_the_route_allows_it() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let websocket = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let h2c = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n\
Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
    let bg = Bindgate::start(&pki, &deadline_config(upstream.addr, ""));
    for request in [&websocket[..], &h2c[..]] {
        let answer = raw_request(bg.port, request);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("Upgrade is not allowed"), "{answer}");
    }
    // On the registration path too, whatever the routes say.
    let answer = raw_request(
        bg.port,
        b"POST /clients HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        upstream.requests().is_empty(),
        "an upgrade reached the upstream"
    );

    // A route that says upgrade: true forwards it, Upgrade header included.
    let allowed = deadline_config(upstream.addr, "").replace(
        "routes:\n  - prefix: /\n    upstream: idp\n",
        "routes:\n  - prefix: /ws\n    upstream: idp\n    upgrade: true\n  - prefix: /\n    upstream: idp\n",
    );
    let bg = Bindgate::start(&pki, &allowed);
    let _ = raw_request(bg.port, websocket);
    let got = upstream.wait_for(1);
    assert_eq!(got[0].target, "/ws");
    assert_eq!(got[0].header("upgrade"), Some("websocket"));
    let answer = raw_request(bg.port, h2c);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[test]
fn an_http11_request_without_host_is_400() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &deadline_config(upstream.addr, ""));
    let answer = raw_request(
        bg.port,
        b"GET /nohost HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("Missing Host header"), "{answer}");
    // HTTP/1.0 has no Host requirement.
    let answer = raw_request(bg.port, b"GET /old HTTP/1.0\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
        "{answer}"
    );
    let got = upstream.wait_for(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].target, "/old");
}

#[test]
fn control_bytes_and_other_illegal_bytes_in_the_target_are_400_and_never_forwarded() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &deadline_config(upstream.addr, ""));
    for target in [
        &b"/a\x01b"[..],
        b"/a\x7fb",
        b"/a\tb",
        b"/caf\xc3\xa9",
        b"/x?q=\x0b",
    ] {
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(target);
        request.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let answer = raw_request(bg.port, &request);
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{}: {answer}",
            String::from_utf8_lossy(target)
        );
    }
    assert!(
        upstream.requests().is_empty(),
        "forwarded: {:?}",
        upstream
            .requests()
            .iter()
            .map(|r| &r.target)
            .collect::<Vec<_>>()
    );
}

fn session_store_config(upstream: std::net::SocketAddr, target: &str) -> String {
    format!(
        r#"{LISTENERS}session_store:
  target: {target}
  api_tokens: [{{file: "{{PKI}}/session-store.token"}}]
upstreams:
  idp: {{address: "{upstream}"}}
routes:
  - {{prefix: /, upstream: idp}}
state: {{path: ":memory:"}}
"#
    )
}

#[test]
fn session_store_parameters_are_checked_for_every_method_and_target() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let token = pki.token("session-store.token");
    for target in ["embedded", "idp"] {
        let bg = Bindgate::start(&pki, &session_store_config(upstream.addr, target));
        let client = bg.client(&pki, None, Http::One);
        let send = |method: &str, query: &str, sid: Option<&str>| {
            let mut r = client
                .request(
                    method.parse().unwrap(),
                    bg.url(&format!("/session-store/rest/v2/sessions{query}")),
                )
                .bearer_auth(&token);
            if let Some(sid) = sid {
                r = r.header("SID", sid);
            }
            let r = r.send().unwrap();
            (r.status().as_u16(), r.text().unwrap_or_default())
        };
        for (method, query, sid) in [
            ("DELETE", "?all=true&subject=alice", None),
            ("DELETE", "?all=true&quiet=true", Some("abc")),
            ("GET", "?all=true&subject=alice", None),
            ("GET", "?subject=alice&subject=bob", None),
            ("PUT", "?quiet=maybe", Some("abc")),
            ("POST", "?all=true&all=false", None),
        ] {
            let (status, body) = send(method, query, sid);
            assert_eq!(status, 400, "{target}: {method} {query} {sid:?}: {body}");
        }
        assert!(
            upstream.requests().is_empty(),
            "{target}: a refused parameter reached the provider"
        );
    }
}

#[test]
fn an_allowed_upgrade_becomes_a_tunnel_both_ways() {
    // An upstream that switches protocols and then echoes what it gets.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let _ = s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        );
        let mut buf = [0u8; 64];
        if let Ok(n) = s.read(&mut buf) {
            let _ = s.write_all(&buf[..n]);
        }
    });
    let pki = Pki::new();
    let allowed = deadline_config(addr, "").replace(
        "routes:\n  - prefix: /\n    upstream: idp\n",
        "routes:\n  - prefix: /ws\n    upstream: idp\n    upgrade: true\n  - prefix: /\n    upstream: idp\n",
    );
    let bg = Bindgate::start(&pki, &allowed);
    let mut s = tls(bg.port, None, Duration::from_secs(5));
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).expect("the switch");
        assert!(n > 0, "closed before the switch");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(b"ping-through-the-tunnel").unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < b"ping-through-the-tunnel".len() {
        let n = s.read(&mut buf).expect("the echo");
        assert!(n > 0, "the tunnel closed");
        echoed.extend_from_slice(&buf[..n]);
    }
    assert_eq!(echoed, b"ping-through-the-tunnel");
}

/// The passthrough configuration with a window of one request at a time
/// (`server.active_requests: 1`) whose place is given up after `active_hold: 100ms` on a busy
/// thread.
fn one_request_window(upstream: std::net::SocketAddr) -> String {
    deadline_config(upstream, "").replace(
        "  max_body: 128KiB\n",
        "  max_body: 128KiB\n  active_requests: 1\n  active_hold: 100ms\n",
    )
}

#[test]
fn a_slow_upstream_does_not_hold_the_window_of_requests() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &one_request_window(upstream.addr));
    upstream.set_delay(Duration::from_millis(600));
    let clients: Vec<_> = (0..6).map(|_| bg.client(&pki, None, Http::One)).collect();
    let start = Instant::now();
    assert_eq!(all_at_once(&clients, &bg.url("/slow"), 1), vec![200; 6]);
    let took = start.elapsed();
    // One place, six requests of 600 ms: one after the other they would take 3.6 s. The
    // thread idles while they wait on the upstream, so the window grows until it is open.
    assert!(
        took < Duration::from_millis(1_500),
        "six requests to a 600 ms upstream took {took:?} through a window of one"
    );
    assert_eq!(upstream.requests().len(), 6);
    assert!(bg.metric("bindgate_request_window_total{event=\"grew\"}") >= 1);
    assert!(bg.metric("bindgate_request_window_places") >= 4);
}

#[test]
fn a_stalled_request_head_does_not_hold_the_window_of_requests() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &one_request_window(upstream.addr));
    // Takes the only place, then sends nothing more (header_timeout is 2 s).
    let mut stalled = tls(bg.port, None, Duration::from_millis(100));
    stalled
        .write_all(b"GET /stalled HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let client = bg.client(&pki, None, Http::One);
    let start = Instant::now();
    let status = client.get(bg.url("/next")).send().unwrap().status();
    let took = start.elapsed();
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_millis(1_500),
        "a request waited {took:?} behind a stalled head (active_hold 100ms, header_timeout 2s)"
    );
    let forwarded = upstream.requests();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].target, "/next");
}

#[test]
fn many_clients_through_a_window_of_one_are_all_served() {
    // Many clients through a window of one place, upstream answering at once: every request
    // is answered, none waits past the window's 1 s bound, and nothing is refused.
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &one_request_window(upstream.addr));
    let clients: Vec<_> = (0..24).map(|_| bg.client(&pki, None, Http::One)).collect();
    assert_eq!(all_at_once(&clients, &bg.url("/many"), 10), vec![200; 240]);
    assert_eq!(upstream.requests().len(), 240);
    assert_eq!(
        bg.metric("bindgate_request_window_total{event=\"overran\"}"),
        0
    );
}

#[test]
fn http2_streams_are_not_in_the_window_of_requests() {
    // Four streams on one HTTP/2 connection to a 500 ms upstream, through a window of one
    // place: none waits for a place (the window covers HTTP/1.x requests only).
    let pki = Pki::new();
    let upstream = Upstream::start();
    let bg = Bindgate::start(&pki, &one_request_window(upstream.addr));
    upstream.set_delay(Duration::from_millis(500));
    let client = bg.client(&pki, None, Http::Alpn);
    let version = client.get(bg.url("/warm")).send().unwrap().version();
    assert_eq!(version, reqwest::Version::HTTP_2);
    let start = Instant::now();
    let clients = vec![client; 4];
    assert_eq!(all_at_once(&clients, &bg.url("/h2"), 1), vec![200; 4]);
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(1_500),
        "four streams took {took:?}"
    );
    for event in ["waited", "grew", "reopened", "shrank", "expired", "overran"] {
        assert_eq!(
            bg.metric(&format!(
                "bindgate_request_window_total{{event=\"{event}\"}}"
            )),
            0,
            "{event}"
        );
    }
}
