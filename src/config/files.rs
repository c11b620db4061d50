//! The files a configuration names (certificates, keys, CA bundles), read once when it is
//! validated. The runtime takes them from the configuration and reads nothing again; only the
//! certificate watcher (`listen.tls.watch`) reads the listener's files anew when they change.

use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// Why a named file cannot be used. The texts are the configuration's problem reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("{} holds no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("{} holds no PEM private key", .0.display())]
    NoPrivateKey(PathBuf),
    #[error("does not belong to the certificate in {}", .0.display())]
    KeyMismatch(PathBuf),
}

/// A file's identity and modification time: an atomic rename changes the inode, an edit the
/// time or size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStamp {
    inode: u64,
    modified: Option<SystemTime>,
    len: u64,
}

impl FileStamp {
    /// The file as it is now (a missing file stamps as zero).
    pub fn of(path: &Path) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(m) => FileStamp {
                inode: m.ino(),
                modified: m.modified().ok(),
                len: m.len(),
            },
            Err(_) => FileStamp {
                inode: 0,
                modified: None,
                len: 0,
            },
        }
    }
}

/// Reads `path`, with the stamp taken before reading (a change during the read shows as a
/// change afterwards, so a watcher reads again).
fn read(path: &Path) -> Result<(Vec<u8>, FileStamp), FileError> {
    let stamp = FileStamp::of(path);
    std::fs::read(path)
        .map(|bytes| (bytes, stamp))
        .map_err(|e| FileError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// A PEM file of one or more certificates (a CA bundle, a chain).
#[derive(Clone)]
pub struct CertificateFile {
    pub path: PathBuf,
    pem: Arc<[u8]>,
    certs: Arc<[X509]>,
    stamp: FileStamp,
}

impl CertificateFile {
    pub fn read(path: &Path) -> Result<CertificateFile, FileError> {
        let (pem, stamp) = read(path)?;
        let certs = X509::stack_from_pem(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| FileError::NoCertificate(path.to_path_buf()))?;
        Ok(CertificateFile {
            path: path.to_path_buf(),
            pem: pem.into(),
            certs: certs.into(),
            stamp,
        })
    }

    /// The file as read (for clients that take PEM: reqwest, redis).
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }

    /// At least one.
    pub fn certificates(&self) -> &[X509] {
        &self.certs
    }

    pub fn stamp(&self) -> &FileStamp {
        &self.stamp
    }
}

impl std::fmt::Debug for CertificateFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} certificates)",
            self.path.display(),
            self.certs.len()
        )
    }
}

/// A certificate chain and the private key of its leaf, checked to belong together.
#[derive(Clone)]
pub struct TlsIdentity {
    chain: Arc<[X509]>,
    key: PKey<Private>,
    stamps: [FileStamp; 2],
}

/// What went wrong with the certificate and with the key, each on its own (both are reported).
pub struct IdentityErrors {
    pub cert: Option<FileError>,
    pub key: Option<FileError>,
}

impl TlsIdentity {
    pub fn read(cert: &Path, key: &Path) -> Result<TlsIdentity, IdentityErrors> {
        let chain = CertificateFile::read(cert);
        let private = read(key).and_then(|(pem, stamp)| {
            PKey::private_key_from_pem(&pem)
                .map(|k| (k, stamp))
                .map_err(|_| FileError::NoPrivateKey(key.to_path_buf()))
        });
        match (chain, private) {
            (Ok(chain), Ok((private, key_stamp))) => {
                let matches = chain.certs[0]
                    .public_key()
                    .map(|pk| pk.public_eq(&private))
                    .unwrap_or(false);
                if !matches {
                    return Err(IdentityErrors {
                        cert: None,
                        key: Some(FileError::KeyMismatch(cert.to_path_buf())),
                    });
                }
                Ok(TlsIdentity {
                    chain: chain.certs,
                    key: private,
                    stamps: [chain.stamp, key_stamp],
                })
            }
            (chain, private) => Err(IdentityErrors {
                cert: chain.err(),
                key: private.err(),
            }),
        }
    }

    /// Leaf first.
    pub fn chain(&self) -> &[X509] {
        &self.chain
    }

    pub fn key(&self) -> &PKey<Private> {
        &self.key
    }

    /// The certificate's and the key's files as read.
    pub fn stamps(&self) -> &[FileStamp; 2] {
        &self.stamps
    }
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsIdentity({} certificates)", self.chain.len())
    }
}
