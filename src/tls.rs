//! Downstream TLS: the listener's settings and the capture of the client certificate.

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::ssl::{SslFiletype, SslVerifyMode};
use pingora::tls::x509::X509Name;
use std::any::Any;
use std::sync::Arc;

use crate::certificate::PeerCertificate;
use crate::config::{ClientAuth, ListenTls};

struct CaptureClientCertificate;

#[async_trait]
impl TlsAccept for CaptureClientCertificate {
    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        // On a resumed session OpenSSL restores the peer certificate from the session.
        let der = ssl.peer_certificate()?.to_der().ok()?;
        Some(Arc::new(PeerCertificate::from_der(&der)))
    }
}

/// The client certificate of the connection a request arrived on, if it presented one.
pub fn peer_certificate(digest: Option<&pingora::protocols::Digest>) -> Option<PeerCertificate> {
    digest?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<PeerCertificate>()
        .cloned()
}

/// The listener's TLS settings: HTTP/2 and HTTP/1.1 by ALPN, client certificates as configured.
pub fn settings(tls: &ListenTls) -> Result<TlsSettings, String> {
    let mut settings = TlsSettings::with_callbacks(Box::new(CaptureClientCertificate))
        .map_err(|e| format!("TLS: {e}"))?;
    settings
        .set_certificate_chain_file(&tls.cert)
        .map_err(|e| format!("listen.tls.cert: {}: {e}", tls.cert.display()))?;
    settings
        .set_private_key_file(&tls.key, SslFiletype::PEM)
        .map_err(|e| format!("listen.tls.key: {}: {e}", tls.key.display()))?;
    settings
        .check_private_key()
        .map_err(|e| format!("listen.tls.key: does not match the certificate: {e}"))?;
    settings.enable_h2();
    // Without a session id context a client's resumed handshake fails once it has sent a
    // certificate ("session id context uninitialized").
    settings
        .set_session_id_context(b"bindgate")
        .map_err(|e| format!("TLS session id context: {e}"))?;

    let mut mode = match tls.client_auth {
        ClientAuth::None => SslVerifyMode::NONE,
        ClientAuth::Optional => SslVerifyMode::PEER,
        ClientAuth::Required => SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
    };
    if tls.client_auth == ClientAuth::None {
        mode = SslVerifyMode::NONE;
        settings.set_verify(mode);
        return Ok(settings);
    }
    match &tls.client_ca {
        Some(ca) => {
            settings.set_verify(mode);
            settings
                .set_ca_file(ca)
                .map_err(|e| format!("listen.tls.client_ca: {}: {e}", ca.display()))?;
            let names = X509Name::load_client_ca_file(ca)
                .map_err(|e| format!("listen.tls.client_ca: {}: {e}", ca.display()))?;
            settings.set_client_ca_list(names);
        }
        // RFC 8705 §2.2: self-signed certificates are accepted as they are; the binding of the
        // token to the certificate's thumbprint is what ties the client to it.
        None => settings.set_verify_callback(mode, |_, _| true),
    }
    Ok(settings)
}
