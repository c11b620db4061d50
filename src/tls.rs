//! Downstream TLS: the listener's settings, the certificate, key and client CA served (swapped
//! atomically on reload or when their files change), and the capture of the client
//! certificate.

mod key_share;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use openssl::stack::Stack;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::SslVerifyMode;
use pingora::tls::x509::store::{X509Store, X509StoreBuilder};
use pingora::tls::x509::{X509Name, X509};
use std::any::Any;
use std::sync::Arc;

use crate::certificate::PeerCertificate;
use crate::config::{ClientAuth, ListenTls, Problem};

/// What the listener presents and asks for, read from the files once per load.
pub struct Material {
    /// Leaf first, then the chain.
    chain: Vec<X509>,
    key: PKey<Private>,
    client_auth: ClientAuth,
    /// None: self-signed client certificates are accepted as they are (RFC 8705 §2.2).
    client_ca: Option<Vec<X509>>,
    /// The served certificate's `notAfter`, seconds since the epoch.
    pub not_after: i64,
    /// Its `notBefore`.
    not_before: i64,
    /// The TLS session id context of handshakes under this material: a digest of the served
    /// chain, `client_auth` and the client CA set. A session (TLS 1.2 id or ticket, TLS 1.3
    /// ticket) made under other material carries another context and is never resumed
    /// (OpenSSL compares them), so a resumed session's certificate was verified under the
    /// rules and CAs in force now.
    session_context: [u8; 32],
    /// `listen.tls.groups`, set on each handshake as its ClientHello arrives.
    groups: Option<std::ffi::CString>,
    /// What the files were when read: a watcher reloads when this changes.
    pub stamp: Vec<FileStamp>,
}

pub use crate::config::files::FileStamp;

/// Why changed certificate files cannot be served (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    pub problem: Problem,
    /// Certificate and key both read, but not a pair: most likely one half of a rotation that
    /// renames the key and the certificate one after the other.
    pub half_rotated: bool,
}

impl From<Problem> for Unusable {
    fn from(problem: Problem) -> Self {
        Unusable {
            problem,
            half_rotated: false,
        }
    }
}

/// The stamps of the files `tls` names, as they are now.
pub fn stamps(tls: &ListenTls) -> Vec<FileStamp> {
    std::iter::once(&tls.cert)
        .chain(std::iter::once(&tls.key))
        .chain(tls.client_ca.iter().map(|ca| &ca.path))
        .map(|p| FileStamp::of(p))
        .collect()
}

impl Material {
    /// The material the configuration read (certificate, key and client CA, checked when
    /// it was validated).
    pub fn new(tls: &ListenTls) -> Result<Material, Problem> {
        let chain = tls.identity.chain().to_vec();
        let client_ca = match (&tls.client_ca, tls.client_auth) {
            (_, ClientAuth::None) | (None, _) => None,
            (Some(ca), _) => Some(ca.certificates().to_vec()),
        };
        let not_after = not_after_unix(&chain[0]);
        let not_before = asn1_unix(chain[0].not_before());
        let session_context = session_context(&chain, tls.client_auth, client_ca.as_deref())?;
        let stamp = tls
            .identity
            .stamps()
            .iter()
            .chain(tls.client_ca.iter().map(|ca| ca.stamp()))
            .cloned()
            .collect();
        Ok(Material {
            chain,
            key: tls.identity.key().clone(),
            client_auth: tls.client_auth,
            client_ca,
            not_after,
            not_before,
            session_context,
            groups: tls.groups.clone(),
            stamp,
        })
    }

    /// Reads certificate, key and client CA again (their files changed) and checks them as
    /// validation does.
    pub fn reread(tls: &ListenTls) -> Result<Material, Unusable> {
        use crate::config::files::{CertificateFile, FileError, TlsIdentity};
        let identity =
            TlsIdentity::read(&tls.cert, &tls.key).map_err(|e| match (e.cert, e.key) {
                (Some(e), _) => Unusable::from(Problem::new("listen.tls.cert", e.to_string())),
                (None, Some(e)) => Unusable {
                    half_rotated: matches!(e, FileError::KeyMismatch(_)),
                    problem: Problem::new("listen.tls.key", e.to_string()),
                },
                (None, None) => Unusable::from(Problem::new("listen.tls", "cannot be read")),
            })?;
        let client_ca = match &tls.client_ca {
            Some(ca) => Some(
                CertificateFile::read(&ca.path)
                    .map_err(|e| Problem::new("listen.tls.client_ca", e.to_string()))?,
            ),
            None => None,
        };
        Ok(Material::new(&ListenTls {
            identity,
            client_ca,
            ..tls.clone()
        })?)
    }

    fn store(&self) -> Option<(X509Store, Stack<X509Name>)> {
        let certs = self.client_ca.as_ref()?;
        let mut store = X509StoreBuilder::new().ok()?;
        let mut names = Stack::new().ok()?;
        for c in certs {
            store.add_cert(c.clone()).ok()?;
            names.push(c.subject_name().to_owned().ok()?).ok()?;
        }
        Some((store.build(), names))
    }

    /// Puts this material on one handshake.
    fn apply(&self, ssl: &mut TlsRef) {
        let Some(leaf) = self.chain.first() else {
            return;
        };
        if ssl.set_certificate(leaf).is_err() || ssl.set_private_key(&self.key).is_err() {
            tracing::error!("TLS: the certificate could not be set on a handshake");
            return;
        }
        for c in &self.chain[1..] {
            let _ = ssl.add_chain_cert(c.clone());
        }
        let mode = match self.client_auth {
            ClientAuth::None => {
                ssl.set_verify(SslVerifyMode::NONE);
                return;
            }
            ClientAuth::Optional => SslVerifyMode::PEER,
            ClientAuth::Required => SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        };
        match self.store() {
            Some((store, names)) => {
                if ssl.set_verify_cert_store(store).is_err() {
                    // Fail closed: without the CA store no client certificate verifies.
                    tracing::error!("TLS: the client CA could not be set on a handshake");
                }
                ssl.set_client_ca_list(names);
                ssl.set_verify(mode);
            }
            None => ssl.set_verify_callback(mode, |_, _| true),
        }
    }
}

/// SHA-256 over the served chain, the client-certificate mode and the client CA set (each
/// part length-prefixed, so no two inputs run together).
fn session_context(
    chain: &[X509],
    client_auth: ClientAuth,
    client_ca: Option<&[X509]>,
) -> Result<[u8; 32], Problem> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"bindgate tls session context v1");
    let mut part = |tag: u8, der: &[u8]| {
        h.update([tag]);
        h.update((der.len() as u64).to_be_bytes());
        h.update(der);
    };
    for c in chain {
        part(
            b'S',
            &c.to_der().map_err(|e| Problem::new("listen.tls.cert", e))?,
        );
    }
    let mode: &[u8] = match client_auth {
        ClientAuth::None => b"none",
        ClientAuth::Optional => b"optional",
        ClientAuth::Required => b"required",
    };
    part(b'M', mode);
    for c in client_ca.unwrap_or_default() {
        part(
            b'C',
            &c.to_der()
                .map_err(|e| Problem::new("listen.tls.client_ca", e))?,
        );
    }
    Ok(h.finalize().into())
}

/// Sets the session id context of one handshake (OpenSSL's `SSL_set_session_id_context`; the
/// openssl crate wraps only the context-wide setter).
fn set_session_context(
    ssl: &mut pingora::tls::ssl::SslRef,
    context: &[u8; 32],
) -> Result<(), openssl::error::ErrorStack> {
    use foreign_types::ForeignTypeRef;
    extern "C" {
        fn SSL_set_session_id_context(
            ssl: *mut openssl_sys::SSL,
            sid_ctx: *const std::os::raw::c_uchar,
            sid_ctx_len: std::os::raw::c_uint,
        ) -> std::os::raw::c_int;
    }
    // SAFETY: `ssl` is a live SSL handed to the callback; OpenSSL copies the 32 bytes (at most
    // SSL_MAX_SID_CTX_LENGTH) before returning.
    let ok = unsafe { SSL_set_session_id_context(ssl.as_ptr(), context.as_ptr(), 32) };
    if ok == 1 {
        Ok(())
    } else {
        Err(openssl::error::ErrorStack::get())
    }
}

/// Sets the key exchange groups of one handshake (`SSL_set1_groups_list`; the openssl crate
/// wraps only the context-wide setter).
fn set_groups(
    ssl: &mut pingora::tls::ssl::SslRef,
    groups: &std::ffi::CStr,
) -> Result<(), openssl::error::ErrorStack> {
    use foreign_types::ForeignTypeRef;
    // SAFETY: `ssl` is a live SSL handed to the callback; OpenSSL parses the NUL-terminated
    // list and keeps its own copy.
    let ok = unsafe { openssl_sys::SSL_set1_groups_list(ssl.as_ptr(), groups.as_ptr()) };
    if ok == 1 {
        Ok(())
    } else {
        Err(openssl::error::ErrorStack::get())
    }
}

/// Whether this OpenSSL offers the key exchange group `name` to a TLS server.
pub fn known_group(name: &str) -> bool {
    let Ok(mut ctx) = openssl::ssl::SslContext::builder(openssl::ssl::SslMethod::tls_server())
    else {
        return false;
    };
    let known = ctx.set_groups_list(name).is_ok();
    // A refused name leaves an error on the thread's queue; it is not this caller's.
    let _ = openssl::error::ErrorStack::get();
    known
}

fn not_after_unix(cert: &X509) -> i64 {
    asn1_unix(cert.not_after())
}

fn asn1_unix(t: &openssl::asn1::Asn1TimeRef) -> i64 {
    let Ok(epoch) = openssl::asn1::Asn1Time::from_unix(0) else {
        return 0;
    };
    epoch
        .diff(t)
        .map(|d| i64::from(d.days) * 86_400 + i64::from(d.secs))
        .unwrap_or(0)
}

impl Material {
    /// Whether the served certificate is valid at `now` (seconds since the epoch): a reload
    /// never swaps in an expired or not-yet-valid one.
    pub fn valid_at(&self, now: i64) -> Result<(), Problem> {
        // The reasons name the certificate's own times (seconds since the epoch), not the
        // distance to now: a retry that fails for the same reason says the same thing.
        if now < self.not_before {
            return Err(Problem::new(
                "listen.tls.cert",
                format!("not valid yet (notBefore {})", self.not_before),
            ));
        }
        if now >= self.not_after {
            return Err(Problem::new(
                "listen.tls.cert",
                format!("expired (notAfter {})", self.not_after),
            ));
        }
        Ok(())
    }
}

/// The material being served; replaced as a whole.
pub struct ServerTls {
    current: ArcSwap<Material>,
}

impl ServerTls {
    pub fn new(material: Material) -> Arc<Self> {
        Arc::new(ServerTls {
            current: ArcSwap::from_pointee(material),
        })
    }

    pub fn current(&self) -> Arc<Material> {
        self.current.load_full()
    }

    /// New handshakes present `material`; established connections keep theirs.
    pub fn replace(&self, material: Material) {
        self.current.store(Arc::new(material));
    }
}

struct Callbacks {
    tls: Arc<ServerTls>,
}

#[async_trait]
impl TlsAccept for Callbacks {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        self.tls.current.load().apply(ssl);
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        key_share::release(ssl);
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

/// The listener's TLS settings: HTTP/2 and HTTP/1.1 by ALPN; certificate, key and client
/// certificates from `tls` at every handshake.
pub fn settings(tls: Arc<ServerTls>) -> Result<TlsSettings, Problem> {
    let mut settings = TlsSettings::with_callbacks(Box::new(Callbacks { tls: tls.clone() }))
        .map_err(|e| Problem::new("listen.tls", e))?;
    settings.enable_h2();
    // An idle connection keeps no TLS read or write buffer (OpenSSL's
    // SSL_MODE_RELEASE_BUFFERS, as nginx sets it): 32 KiB and more per connection between
    // requests, most of the memory of many idle or slow clients.
    settings.set_mode(pingora::tls::ssl::SslMode::RELEASE_BUFFERS);
    // One read per record and the next one's header instead of two (the listener has no
    // buffer of its own under TLS; see serve.rs).
    settings.set_read_ahead(true);
    key_share::release_after_server_hello(&mut settings);
    // Without a session id context a client's resumed handshake fails once it has sent a
    // certificate ("session id context uninitialized").
    settings
        .set_session_id_context(b"bindgate")
        .map_err(|e| Problem::new("listen.tls", format!("session id context: {e}")))?;
    // Each handshake takes the context of the material current when its ClientHello arrives,
    // before OpenSSL looks at the session it offers: a session from before a change of
    // certificate, client_auth or client CA is not resumed, a full handshake runs instead.
    // Failing to set it fails the handshake.
    // The key exchange groups are set there too, before OpenSSL reads the client's key
    // shares, so a reload changes them for the next handshake.
    settings.set_client_hello_callback(move |ssl, _alert| {
        let material = tls.current.load();
        set_session_context(ssl, &material.session_context)?;
        if let Some(groups) = &material.groups {
            set_groups(ssl, groups)?;
        }
        Ok(pingora::tls::ssl::ClientHelloResponse::SUCCESS)
    });
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The listener's files are read once, when the configuration is validated: the material
    /// is made from what was read, and only the watcher's `reread` goes back to the disk.
    #[test]
    fn the_material_comes_from_what_validation_read() {
        let dir = tempfile::tempdir().unwrap();
        crate::devcerts::generate(dir.path()).unwrap();
        let yaml = r#"
listen:
  address: "127.0.0.1:0"
  tls: {cert: server.crt, key: server.key, client_auth: required, client_ca: ca.crt}
routes: []
"#;
        let config = crate::config::load_str(yaml, &dir.path().join("proxy.yaml")).unwrap();
        for f in ["server.crt", "server.key", "ca.crt"] {
            std::fs::remove_file(dir.path().join(f)).unwrap();
        }
        let material = Material::new(&config.listen.tls).unwrap();
        assert_eq!(material.chain.len(), 1);
        assert_eq!(material.client_ca.as_ref().map(Vec::len), Some(1));
        // The stamps are those of the files read: gone files stamp otherwise, so a watcher
        // would look again, and find nothing it can serve.
        assert_ne!(material.stamp, stamps(&config.listen.tls));
        let refused = Material::reread(&config.listen.tls).err().unwrap();
        assert_eq!(refused.problem.key, "listen.tls.cert");
    }
}
