//! HTTP/1.1 message framing for the raw sockets of the tests and the benchmarks' static
//! upstream (`benches/common` includes this file).

/// The length of the HTTP/1.1 message at the start of `buf` (its header and its
/// `Content-Length` body), once its header is complete; `None` before that.
pub fn message_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Some(end + 4 + len)
}
