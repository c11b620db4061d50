//! Secrets (`value`, `sha256`, `env`, `file`) resolved once into SHA-256 digests, so that every
//! comparison is the same constant-time comparison of 32 bytes and no plaintext stays in memory
//! longer than loading takes.

use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use subtle::ConstantTimeEq;

use super::file::SecretFile;

/// The SHA-256 of one configured secret. Its `Debug` never shows the digest.
#[derive(Clone)]
pub struct SecretDigest([u8; 32]);

impl fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretDigest(<redacted>)")
    }
}

impl SecretDigest {
    pub fn of(secret: &[u8]) -> Self {
        SecretDigest(Sha256::digest(secret).into())
    }

    pub fn from_digest(digest: [u8; 32]) -> Self {
        SecretDigest(digest)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// A set of accepted secrets, e.g. the master tokens.
#[derive(Clone, Debug, Default)]
pub struct SecretSet {
    digests: Vec<SecretDigest>,
}

impl SecretSet {
    pub fn new(digests: Vec<SecretDigest>) -> Self {
        SecretSet { digests }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// How many secrets (what `/config` shows of them).
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Whether `presented` is one of the secrets. Every entry is compared, in constant time, so
    /// the answer's timing says nothing about which entry or how many bytes matched.
    pub fn contains(&self, presented: &[u8]) -> bool {
        self.contains_digest(&SecretDigest::of(presented))
    }

    pub fn contains_digest(&self, presented: &SecretDigest) -> bool {
        let mut found = subtle::Choice::from(0u8);
        for digest in &self.digests {
            found |= digest.0.ct_eq(&presented.0);
        }
        found.into()
    }
}

/// A secret entry that does not give a usable secret. Never holds the secret itself.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("give exactly one of {0}")]
    OneOf(&'static str),
    #[error("sha256: not a hex string")]
    NotHex,
    #[error("sha256: must be 64 hex digits (a SHA-256 digest)")]
    NotADigest,
    #[error("env: variable {0} is not set")]
    EnvUnset(String),
    #[error("file: cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the secret is not UTF-8 text")]
    NotUtf8,
    #[error("the secret is empty")]
    Empty,
}

/// Resolves one secret entry. `base` is the directory relative file paths start from.
pub fn resolve(entry: &SecretFile, base: &Path) -> Result<SecretDigest, SecretError> {
    let Some(hex_digest) = &entry.sha256 else {
        return plain(entry, base, "value, sha256, env, file")
            .map(|secret| SecretDigest::of(&secret));
    };
    if entry.value.is_some() || entry.env.is_some() || entry.file.is_some() {
        return Err(SecretError::OneOf("value, sha256, env, file"));
    }
    let bytes = hex::decode(hex_digest.trim()).map_err(|_| SecretError::NotHex)?;
    let digest: [u8; 32] = bytes.try_into().map_err(|_| SecretError::NotADigest)?;
    Ok(SecretDigest::from_digest(digest))
}

/// Resolves a secret bindgate must present (a password): `value`, `env` or `file`, as given
/// (trailing whitespace of a file dropped).
pub fn resolve_plain(entry: &SecretFile, base: &Path) -> Result<String, SecretError> {
    if entry.sha256.is_some() {
        return Err(SecretError::OneOf("value, env, file"));
    }
    let secret = plain(entry, base, "value, env, file")?;
    String::from_utf8(secret).map_err(|_| SecretError::NotUtf8)
}

/// The secret of a `value`, `env` or `file` entry (exactly one given, else `one_of`), not empty.
fn plain(entry: &SecretFile, base: &Path, one_of: &'static str) -> Result<Vec<u8>, SecretError> {
    let secret = match (&entry.value, &entry.env, &entry.file) {
        (Some(value), None, None) => value.as_bytes().to_vec(),
        (None, Some(var), None) => std::env::var(var)
            .map_err(|_| SecretError::EnvUnset(var.clone()))?
            .into_bytes(),
        (None, None, Some(file)) => {
            let path = base.join(file);
            let mut content =
                std::fs::read(&path).map_err(|source| SecretError::Read { path, source })?;
            // A trailing newline is what editors and `echo` add; it is not part of the secret.
            content.truncate(content.trim_ascii_end().len());
            content
        }
        _ => return Err(SecretError::OneOf(one_of)),
    };
    non_empty(&secret)?;
    Ok(secret)
}

fn non_empty(secret: &[u8]) -> Result<&[u8], SecretError> {
    if secret.is_empty() {
        Err(SecretError::Empty)
    } else {
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_matches_only_members() {
        let set = SecretSet::new(vec![SecretDigest::of(b"alpha"), SecretDigest::of(b"beta")]);
        assert!(set.contains(b"alpha"));
        assert!(set.contains(b"beta"));
        assert!(!set.contains(b"alph"));
        assert!(!set.contains(b""));
        assert!(!SecretSet::default().contains(b"alpha"));
    }

    #[test]
    fn debug_hides_the_digest() {
        let shown = format!("{:?}", SecretDigest::of(b"alpha"));
        assert!(!shown.contains("8ed3"), "{shown}");
    }
}
