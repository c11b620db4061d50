// bindgate: counts of connections the server's deadlines and limits ended, read by the
// application for its metrics. Process-wide, monotonic.

use std::sync::atomic::AtomicU64;

/// Connections closed while waiting for a request (HTTP/1.x keep-alive or new, HTTP/2 idle).
pub static IDLE: AtomicU64 = AtomicU64::new(0);
/// Request heads (HTTP/1.x) that did not complete within the header timeout.
pub static HEADER: AtomicU64 = AtomicU64::new(0);
/// TLS handshakes that did not complete within the handshake timeout.
pub static HANDSHAKE: AtomicU64 = AtomicU64::new(0);
/// TLS handshakes that failed: a TLS protocol failure (no shared version or cipher, a
/// certificate refused, not TLS at all), a client that went away mid-handshake, anything else.
pub static HANDSHAKE_FAILED_TLS: AtomicU64 = AtomicU64::new(0);
pub static HANDSHAKE_FAILED_CLOSED: AtomicU64 = AtomicU64::new(0);
pub static HANDSHAKE_FAILED_OTHER: AtomicU64 = AtomicU64::new(0);
/// When a handshake failure was last logged (seconds since the epoch): one line a second.
static HANDSHAKE_LOGGED: AtomicU64 = AtomicU64::new(0);

/// Counts a failed handshake by its kind; whether a (debug) line may be logged for it: one a
/// second, so that a scan or a flood of bad clients is a counter, not a log storm.
pub fn handshake_failed(e: &crate::Error) -> bool {
    use crate::ErrorType;
    use std::sync::atomic::Ordering::Relaxed;
    // OpenSSL reports a client gone mid-handshake as a TLS error ("unexpected eof").
    let gone = || {
        let said = e.to_string().to_ascii_lowercase();
        said.contains("unexpected eof") || said.contains("connection reset")
    };
    let counter = match e.etype() {
        ErrorType::TLSHandshakeFailure if gone() => &HANDSHAKE_FAILED_CLOSED,
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::TLSWantX509Lookup => {
            &HANDSHAKE_FAILED_TLS
        }
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            &HANDSHAKE_FAILED_CLOSED
        }
        _ => &HANDSHAKE_FAILED_OTHER,
    };
    counter.fetch_add(1, Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let last = HANDSHAKE_LOGGED.load(Relaxed);
    now > last && HANDSHAKE_LOGGED.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
}

/// `accept()` failures for want of a file descriptor (EMFILE, ENFILE).
pub static ACCEPT_FD_LIMIT: AtomicU64 = AtomicU64::new(0);

/// Client connections open now: accepted, and not yet ended.
pub static OPEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The most client connections the listener keeps open: the descriptor limit (`RLIMIT_NOFILE`,
/// read at each accept, so that a raised or lowered limit counts at once) less a reserve — a
/// quarter of it, 64 at least — for upstream connections, files and the process's own.
/// Past it, a new connection is accepted and closed at once (counted in [`ACCEPT_FD_LIMIT`]):
/// the client sees a refusal it can retry instead of a server that has no descriptor left to
/// reach its upstream with.
pub fn connection_cap() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return usize::MAX;
    }
    let soft = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    soft.saturating_sub((soft / 4).max(64))
}

/// Held by a client connection's task: one of [`OPEN`].
pub struct OpenConnection(());

impl OpenConnection {
    /// A place for a new client connection, or None when [`connection_cap`] is reached.
    pub fn take() -> Option<Self> {
        let cap = connection_cap();
        let mut now = OPEN.load(std::sync::atomic::Ordering::Relaxed);
        loop {
            if now >= cap {
                return None;
            }
            match OPEN.compare_exchange_weak(
                now,
                now + 1,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            ) {
                Ok(_) => return Some(OpenConnection(())),
                Err(seen) => now = seen,
            }
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
