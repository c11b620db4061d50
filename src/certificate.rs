//! The client certificate of a connection, captured once at the end of the TLS handshake.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// A client certificate: its DER, its RFC 8705 `x5t#S256` and its RFC 9440 header form.
/// Cloning shares the data; every request on a connection (HTTP/2 streams included) reads the
/// same capture.
#[derive(Clone, Debug)]
pub struct PeerCertificate(Arc<Captured>);

#[derive(Debug)]
struct Captured {
    sha256: [u8; 32],
    thumbprint: String,
    /// Built once per connection: every forwarded request shares its bytes (no copy, no
    /// re-validation of ~1 KB per request).
    header_value: http::HeaderValue,
}

impl PeerCertificate {
    pub fn from_der(der: &[u8]) -> Self {
        let sha256: [u8; 32] = Sha256::digest(der).into();
        // RFC 9440 §2.2: a structured-field byte sequence, `:` base64 `:`.
        let mut value = String::with_capacity(der.len().div_ceil(3) * 4 + 2);
        value.push(':');
        STANDARD.encode_string(der, &mut value);
        value.push(':');
        PeerCertificate(Arc::new(Captured {
            sha256,
            thumbprint: URL_SAFE_NO_PAD.encode(sha256),
            header_value: sf_binary(value.into_bytes()),
        }))
    }

    /// SHA-256 of the certificate's DER.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.0.sha256
    }

    /// `x5t#S256` (RFC 8705 §3.1): base64url without padding of the SHA-256 of the DER.
    pub fn thumbprint(&self) -> &str {
        &self.0.thumbprint
    }

    /// The value of an RFC 9440 `Client-Cert` header (cloning it shares its bytes).
    pub fn header_value(&self) -> &http::HeaderValue {
        &self.0.header_value
    }
}

/// `:` base64 `:` is visible ASCII whatever the certificate holds, so the header value is
/// always valid; the check `HeaderValue` makes is done here, once per connection. (The
/// fallback, an empty byte sequence, cannot be reached.)
fn sf_binary(value: Vec<u8>) -> http::HeaderValue {
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
        .unwrap_or_else(|_| http::HeaderValue::from_static("::"))
}

/// `x5t#S256` of the first certificate in a PEM file.
pub fn thumbprint_of_pem(pem: &[u8]) -> Result<String, NotACertificate> {
    let der = openssl::x509::X509::from_pem(pem)
        .and_then(|cert| cert.to_der())
        .map_err(NotACertificate)?;
    Ok(PeerCertificate::from_der(&der).thumbprint().to_string())
}

/// The file holds no PEM certificate OpenSSL can read.
#[derive(Debug, thiserror::Error)]
#[error("not a PEM certificate: {0}")]
pub struct NotACertificate(openssl::error::ErrorStack);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_is_base64url_of_sha256() {
        let peer = PeerCertificate::from_der(b"not really DER");
        assert_eq!(peer.thumbprint().len(), 43);
        assert!(!peer.thumbprint().contains(['+', '/', '=']));
        assert_eq!(
            URL_SAFE_NO_PAD.decode(peer.thumbprint()).unwrap(),
            Sha256::digest(b"not really DER").to_vec()
        );
        assert_eq!(peer.header_value(), ":bm90IHJlYWxseSBERVI=:");
    }
}
