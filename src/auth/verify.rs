//! A presented token verified the way `tokens.format` says: as a JWT (signature and claims,
//! cached) or by introspection; and, without DPoP configured, the bearer-only path.

use std::sync::Arc;

use super::bearer::Presented;
use super::cache::{now_secs, Entry};
use super::claims::Policy;
use super::{introspect, token, Authoriser, Denial, Facts};
use crate::config::{SecretDigest, TokenFormat};

impl Authoriser {
    /// The token verified: as a JWT, or by introspection (`tokens.format`); cached either way.
    pub(super) async fn verify_token(
        &self,
        token: &str,
        digest: &SecretDigest,
    ) -> Result<Arc<Entry>, Denial> {
        let opaque = match self.token_format {
            TokenFormat::Jwt => false,
            TokenFormat::Opaque => true,
            TokenFormat::Auto => !introspect::looks_like_jwt(token),
        };
        match (opaque, &self.introspector, &self.validator) {
            (true, Some(i), _) => i.verified(token, digest.bytes()).await,
            // Not even a JWT's shape (an unknown master token, a typo, an opaque token where
            // none is introspected): said as such, not as a malformed JWT. Only a refused
            // token is looked at again: a cache hit costs no scan.
            (false, _, Some(v)) => v.verified(token, digest.bytes()).await.map_err(|d| {
                match d {
                Denial::InvalidToken(_) if !introspect::looks_like_jwt(token) => {
                    Denial::InvalidToken(
                        "The token is not a JWT (nor, on the registration endpoint, a master token)"
                            .into(),
                    )
                }
                d => d,
            }
            }),
            _ => Err(Denial::InvalidToken("Invalid access token".into())),
        }
    }

    /// Without DPoP configured: tokens bound to a DPoP key are refused.
    pub(super) async fn bearer_only(
        &self,
        policy: &Policy,
        presented: Presented<'_>,
        digest: &SecretDigest,
        facts: &Facts<'_>,
    ) -> Result<Arc<Entry>, Denial> {
        let entry = self.verify_token(presented.token, digest).await?;
        token::check(&entry.verified, policy, facts.peer, now_secs(), self.leeway)?;
        if entry.verified.jkt.is_some() {
            return Err(Denial::InvalidToken(
                "DPoP-bound tokens (cnf jkt) are not accepted: DPoP is not enabled".into(),
            ));
        }
        Ok(entry)
    }
}
