//! Request ids: each request is named once, as it arrives. The client's `X-Request-Id` is
//! taken only when `server.trust_request_id` says so, only when sent once, and only when it is
//! 1–128 characters of `A–Z a–z 0–9 - _ . :` (a UUID fits); otherwise bindgate makes one. The
//! id goes to the upstream, into every answer (header, and error bodies), the access log and
//! the trace.

use std::cell::Cell;

/// `X-Request-Id`, named once.
pub const HEADER: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The id of a request with these headers, as the header value it is sent in (cheap to clone).
pub fn for_request(headers: &http::HeaderMap, trust: bool) -> http::HeaderValue {
    if trust {
        let mut given = headers.get_all(HEADER).iter();
        if let (Some(v), None) = (given.next(), given.next()) {
            let b = v.as_bytes();
            let plain = !b.is_empty()
                && b.len() <= 128
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'));
            if plain {
                return v.clone();
            }
        }
    }
    generate()
}

thread_local! {
    /// A per-thread generator (splitmix64), seeded from the OS's randomness once: ids without
    /// a system call per request.
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = openssl::rand::rand_bytes(&mut b);
    u64::from_le_bytes(b)
}

fn next() -> u64 {
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// 32 lowercase hex digits (128 bits).
fn generate() -> http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (half, word) in [next(), next()].into_iter().enumerate() {
        for i in 0..16 {
            out[half * 16 + i] = HEX[((word >> (60 - 4 * i)) & 0xf) as usize];
        }
    }
    // Hex digits are a valid header value.
    http::HeaderValue::from_bytes(&out).unwrap_or(http::HeaderValue::from_static("-"))
}

/// The id as text (the access log, error bodies).
pub fn text(id: &http::HeaderValue) -> &str {
    id.to_str().unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_id_is_taken_only_when_trusted_single_and_plain() {
        let mut h = http::HeaderMap::new();
        h.insert("x-request-id", "abc-123_4.5:6".parse().unwrap());
        assert_eq!(for_request(&h, true), "abc-123_4.5:6");
        assert_ne!(for_request(&h, false), "abc-123_4.5:6");
        h.append("x-request-id", "second".parse().unwrap());
        assert_ne!(for_request(&h, true), "abc-123_4.5:6");
        let id = generate();
        assert!(text(&id).bytes().all(|b| b.is_ascii_hexdigit()) && id.len() == 32);
        for bad in ["a b", "a\"b", "", &"x".repeat(129), "é"] {
            let mut h = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_bytes(bad.as_bytes()) {
                h.insert("x-request-id", v);
            }
            let id = for_request(&h, true);
            assert_eq!(id.len(), 32, "{bad:?} → {id:?}");
        }
        assert_ne!(generate(), generate());
    }
}
