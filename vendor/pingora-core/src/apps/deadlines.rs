// bindgate: counts of connections the server's deadlines and limits ended, read by the
// application for its metrics. Process-wide, monotonic.

use std::sync::atomic::AtomicU64;

/// Connections closed while waiting for a request (HTTP/1.x keep-alive or new, HTTP/2 idle).
pub static IDLE: AtomicU64 = AtomicU64::new(0);
/// Request heads (HTTP/1.x) that did not complete within the header timeout.
pub static HEADER: AtomicU64 = AtomicU64::new(0);
/// TLS handshakes that did not complete within the handshake timeout.
pub static HANDSHAKE: AtomicU64 = AtomicU64::new(0);
/// `accept()` failures for want of a file descriptor (EMFILE, ENFILE).
pub static ACCEPT_FD_LIMIT: AtomicU64 = AtomicU64::new(0);
