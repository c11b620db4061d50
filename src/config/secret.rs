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

/// Resolves one secret entry. `base` is the directory relative file paths start from.
pub fn resolve(entry: &SecretFile, base: &Path) -> Result<SecretDigest, String> {
    let given = [
        entry.value.is_some(),
        entry.sha256.is_some(),
        entry.env.is_some(),
        entry.file.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        return Err("give exactly one of value, sha256, env, file".into());
    }
    if let Some(value) = &entry.value {
        return non_empty(value.as_bytes()).map(SecretDigest::of);
    }
    if let Some(hex_digest) = &entry.sha256 {
        let bytes =
            hex::decode(hex_digest.trim()).map_err(|_| "sha256: not a hex string".to_string())?;
        let digest: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "sha256: must be 64 hex digits (a SHA-256 digest)".to_string())?;
        return Ok(SecretDigest::from_digest(digest));
    }
    if let Some(var) = &entry.env {
        let value = std::env::var(var).map_err(|_| format!("env: variable {var} is not set"))?;
        return non_empty(value.as_bytes()).map(SecretDigest::of);
    }
    if let Some(file) = &entry.file {
        let path = base.join(file);
        let content = std::fs::read(&path)
            .map_err(|e| format!("file: cannot read {}: {e}", path.display()))?;
        // A trailing newline is what editors and `echo` add; it is not part of the token.
        let trimmed = content.trim_ascii_end();
        return non_empty(trimmed).map(SecretDigest::of);
    }
    unreachable!("exactly one source was checked above")
}

/// Resolves a secret bindgate must present (a password): `value`, `env` or `file`, as given
/// (a trailing newline of a file dropped).
pub fn resolve_plain(entry: &SecretFile, base: &Path) -> Result<String, String> {
    let given = [
        entry.value.is_some(),
        entry.env.is_some(),
        entry.file.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 || entry.sha256.is_some() {
        return Err("give exactly one of value, env, file".into());
    }
    let secret = if let Some(value) = &entry.value {
        value.clone()
    } else if let Some(var) = &entry.env {
        std::env::var(var).map_err(|_| format!("env: variable {var} is not set"))?
    } else {
        let path = base.join(entry.file.as_deref().unwrap_or_default());
        let content = std::fs::read_to_string(&path)
            .map_err(|e| format!("file: cannot read {}: {e}", path.display()))?;
        content.trim_end_matches(['\n', '\r']).to_string()
    };
    non_empty(secret.as_bytes())?;
    Ok(secret)
}

fn non_empty(secret: &[u8]) -> Result<&[u8], String> {
    if secret.is_empty() {
        Err("the secret is empty".into())
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
