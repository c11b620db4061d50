//! Helpers shared by the load and session benchmarks.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "../../tests/it/harness/http1.rs"]
mod http1;

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` different free TCP ports on loopback: all are held until the last is chosen, so the
/// OS cannot hand out one twice (two calls of [`free_port`] can get the same port).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("a bound port").port())
}

/// Resident memory of a process, in KiB (0 when it cannot be read).
/// Waits (at most 60 s) until bindgate's admin listener on `admin` says ready; the panic
/// carries bindgate's log.
pub fn wait_ready(admin: u16, log: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !reqwest::blocking::get(format!("http://127.0.0.1:{admin}/readyz"))
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "bindgate not ready within 60 s: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A small static upstream: every request gets `200 ok`, keep-alive.
pub fn static_upstream() -> u16 {
    json_upstream(r#"{"ok":true}"#.to_string())
}

/// A static upstream that answers each request `delay` after it has arrived: a provider
/// whose answers take that long.
pub fn slow_upstream(delay: std::time::Duration) -> u16 {
    upstream_with(r#"{"ok":true}"#.to_string(), delay)
}

/// The requests each upstream started by [`json_upstream`] has answered, by its port.
fn answer_counters(
) -> &'static std::sync::Mutex<std::collections::HashMap<u16, std::sync::Arc<AtomicU64>>> {
    static COUNTERS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<u16, std::sync::Arc<AtomicU64>>>,
    > = std::sync::OnceLock::new();
    COUNTERS.get_or_init(Default::default)
}

/// How many requests the upstream on `port` (started by [`json_upstream`] in this process) has
/// answered so far; `None` for any other port.
pub fn answered(port: u16) -> Option<u64> {
    let counters = answer_counters().lock().ok()?;
    Some(counters.get(&port)?.load(Ordering::Relaxed))
}

/// An upstream that answers every request with `200` and `body` (JSON), keep-alive: a
/// static upstream, or an introspection endpoint that says one thing of every token. It counts
/// what it answers ([`answered`]).
#[allow(dead_code)]
pub fn json_upstream(body: String) -> u16 {
    upstream_with(body, std::time::Duration::ZERO)
}

fn upstream_with(body: String, delay: std::time::Duration) -> u16 {
    let answer: std::sync::Arc<[u8]> = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(AtomicU64::new(0));
    answer_counters()
        .lock()
        .unwrap()
        .insert(port, count.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (answer, count) = (answer.clone(), count.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    answer_counted(tcp, &answer, Some(&count), delay).await;
                });
            }
        });
    });
    port
}

/// A process the benchmark started: killed and reaped when dropped.
pub struct Running {
    pub child: std::process::Child,
    pub port: u16,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Answers every HTTP/1.1 request on `stream` with `200 {"ok":true}` (keep-alive), reading and
/// discarding each request's body by its Content-Length, until the peer closes.
pub async fn answer_ok<S>(stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    answer_with(
        stream,
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
    )
    .await
}

/// Answers every HTTP/1.1 request on `stream` with the bytes of `answer`.
pub async fn answer_with<S>(stream: S, answer: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    answer_counted(stream, answer, None, std::time::Duration::ZERO).await
}

/// [`answer_with`], each answer `delay` after its request, adding one to `count` per answer
/// written.
async fn answer_counted<S>(
    mut stream: S,
    answer: &[u8],
    count: Option<&AtomicU64>,
    delay: std::time::Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let Some(len) = http1::message_len(&buf) else {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        while buf.len() < len {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..len);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if stream.write_all(answer).await.is_err() {
            return;
        }
        if let Some(count) = count {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The physical floor of a proxy on this machine: a TLS server (OpenSSL, as Pingora uses) on
/// one current-thread runtime that does nothing but TLS records, loopback TCP and a minimal
/// HTTP/1.1 reading, answering every request at once. Requires client certificates signed by
/// `ca` like the proxies do. Blocks forever.
pub fn tls_floor(port: u16, cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path) {
    use openssl::ssl::{SslAcceptor, SslMethod, SslVerifyMode};
    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    acceptor.set_certificate_chain_file(cert).unwrap();
    acceptor
        .set_private_key_file(key, openssl::ssl::SslFiletype::PEM)
        .unwrap();
    acceptor.set_ca_file(ca).unwrap();
    // As the proxies' `client_auth: optional`: a presented certificate is verified.
    acceptor.set_verify(SslVerifyMode::PEER);
    acceptor.set_alpn_select_callback(|_, client| {
        openssl::ssl::select_next_proto(b"\x08http/1.1", client)
            .ok_or(openssl::ssl::AlpnError::NOACK)
    });
    let acceptor = std::sync::Arc::new(acceptor.build());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(ssl) = openssl::ssl::Ssl::new(acceptor.context()) else {
                    return;
                };
                let Ok(mut tls) = tokio_openssl::SslStream::new(ssl, tcp) else {
                    return;
                };
                if std::pin::Pin::new(&mut tls).accept().await.is_err() {
                    return;
                }
                answer_ok(tls).await;
            });
        }
    });
}

/// A `redis-server` on a free loopback port with every write on disk before it answers
/// (`appendonly yes`, `appendfsync always`: the README's durable setting), in `dir`; stopped when
/// dropped. On CPU 0 with the harness when `pin`.
pub fn redis_server(dir: &std::path::Path, pin: bool) -> Running {
    let port = free_port();
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = if pin {
        let mut c = std::process::Command::new("taskset");
        c.args(["-c", "0", "redis-server"]);
        c
    } else {
        std::process::Command::new("redis-server")
    };
    let child = cmd
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install -y redis-server)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Running { child, port }
}
