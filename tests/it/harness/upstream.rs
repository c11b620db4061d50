//! A recording HTTP/1.1 upstream (plain or TLS) that keeps every request it receives.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What the upstream answers: status and JSON body (`None`: the default echo), and how long it
/// waits before answering.
type Reply = Arc<Mutex<(Option<(u16, String)>, Duration)>>;

pub struct Upstream {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    reply: Reply,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Upstream {
    pub fn start() -> Upstream {
        Self::launch(None)
    }

    /// A TLS upstream with the given certificate chain and key (PEM files).
    pub fn start_tls(cert: &Path, key: &Path) -> Upstream {
        use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("acceptor");
        b.set_certificate_chain_file(cert).expect("cert");
        b.set_private_key_file(key, SslFiletype::PEM).expect("key");
        Self::launch(Some(b.build()))
    }

    fn launch(tls: Option<openssl::ssl::SslAcceptor>) -> Upstream {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let recorded = requests.clone();
        let reply: Reply = Arc::new(Mutex::new((None, Duration::ZERO)));
        let answer = reply.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                let tls = tls.map(Arc::new);
                loop {
                    tokio::select! {
                        _ = &mut rx => return,
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let recorded = recorded.clone();
                            let answer = answer.clone();
                            let tls = tls.clone();
                            tokio::spawn(async move {
                                match tls {
                                    None => serve(tcp, recorded, answer).await,
                                    Some(acceptor) => {
                                        let Ok(ssl) = openssl::ssl::Ssl::new(acceptor.context()) else { return };
                                        let Ok(mut stream) = tokio_openssl::SslStream::new(ssl, tcp) else { return };
                                        if std::pin::Pin::new(&mut stream).accept().await.is_ok() {
                                            serve(stream, recorded, answer).await;
                                        }
                                    }
                                }
                            });
                        }
                    }
                }
            });
        });
        Upstream {
            addr,
            requests,
            reply,
            stop: Some(tx),
        }
    }

    /// From now on, answer every request with `status` and `body` (JSON).
    pub fn set_reply(&self, status: u16, body: &str) {
        self.reply.lock().expect("lock").0 = Some((status, body.to_string()));
    }

    /// From now on, wait `delay` before answering each request.
    pub fn set_delay(&self, delay: Duration) {
        self.reply.lock().expect("lock").1 = delay;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }

    /// Forgets the requests recorded so far.
    #[allow(dead_code)]
    pub fn clear(&self) {
        self.requests.lock().expect("lock").clear();
    }

    /// Waits (bounded) until at least `n` requests arrived.
    pub fn wait_for(&self, n: usize) -> Vec<Recorded> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.requests();
            if r.len() >= n || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    answer: Reply,
) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some(end) = read_until_headers(&mut io, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_string();
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let body = if let Some(len) = find("content-length").and_then(|l| l.parse::<usize>().ok()) {
            while buf.len() < len {
                if !fill(&mut io, &mut buf).await {
                    return;
                }
            }
            buf.drain(..len).collect()
        } else if find("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            match read_chunked(&mut io, &mut buf).await {
                Some(b) => b,
                None => return,
            }
        } else {
            Vec::new()
        };
        recorded.lock().expect("lock").push(Recorded {
            method,
            target: target.clone(),
            headers,
            body,
        });
        let (configured, delay) = answer.lock().expect("lock").clone();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let (status, reply) = configured.unwrap_or_else(|| {
            (
                200,
                serde_json::json!({"upstream": "ok", "target": target}).to_string(),
            )
        });
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-upstream: recorder\r\n\r\n{reply}",
            reply.len()
        );
        if io.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn fill<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match io.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

async fn read_until_headers<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(pos);
        }
        if !fill(io, buf).await {
            return None;
        }
    }
}

async fn read_chunked<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            if !fill(io, buf).await {
                return None;
            }
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        while buf.len() < size + 2 {
            if !fill(io, buf).await {
                return None;
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
        if size == 0 {
            return Some(body);
        }
    }
}
