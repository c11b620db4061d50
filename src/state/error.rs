//! Why the embedded service did not do what it was asked, in its own words. The gateway turns
//! an error into the HTTP answer (`gateway::refusal`) and logs the causes of storage failures
//! where it writes that answer.

use super::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store failed (I/O, a lost connection, a timeout).
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// A record could not be encoded or decoded, or no random bytes could be drawn.
    #[error("{0}")]
    Corrupt(&'static str),
    /// The credential does not allow this (a used single-use token, another client's
    /// registration access token, a listing without a master token).
    #[error("{0}")]
    InvalidToken(String),
    /// RFC 7591 §3.2.2 `invalid_client_metadata`: the description names the field.
    #[error("{0}")]
    InvalidClientMetadata(String),
    /// RFC 7591 §3.2.2 `invalid_redirect_uri`.
    #[error("{0}")]
    InvalidRedirectUri(String),
    /// A body or parameter that is not what the API takes.
    #[error("{0}")]
    InvalidInput(String),
    /// The update asks for more than the client was registered for (its narrowed grants, a
    /// scope, privileged metadata): 403.
    #[error("{why}")]
    NotPermitted { why: String, scope: Option<String> },
    /// No such client or session.
    #[error("{0} not found")]
    NotFound(&'static str),
}
