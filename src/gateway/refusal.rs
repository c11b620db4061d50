//! The one place where what `auth` and `state` refuse, in their own words, becomes the HTTP
//! answer's [`Rejection`]. Causes the client must not see (storage faults) stay in the
//! rejection for the log line written with the answer (`Live::reject`).

use std::sync::Arc;

use crate::auth::Denial;
use crate::rejection::Rejection;
use crate::state::StateError;

impl From<Denial> for Rejection {
    fn from(d: Denial) -> Self {
        match d {
            Denial::MissingCredentials { dpop_algs } => Rejection::MissingCredentials { dpop_algs },
            Denial::InvalidRequest(why) => Rejection::InvalidRequest(why),
            Denial::InvalidToken(why) => Rejection::InvalidToken(why),
            Denial::CertificateMismatch => Rejection::CertificateMismatch,
            Denial::InsufficientScope { scope } => Rejection::InsufficientScope { scope },
            Denial::InvalidDpopProof { why, algs } => Rejection::InvalidDpopProof { why, algs },
            Denial::UseDpopNonce { nonce, algs } => Rejection::UseDpopNonce { nonce, algs },
            Denial::InvalidDpopToken { why, algs } => Rejection::InvalidDpopToken { why, algs },
            Denial::RecordUnavailable { cause } => Rejection::StorageUnavailable {
                cause: cause.map(Arc::from),
            },
            Denial::IntrospectionUnavailable { cause } => Rejection::IntrospectionUnavailable {
                cause: Arc::from(cause),
            },
            Denial::NotPermitted { why, scope } => {
                Rejection::RegistrationNotPermitted { why, scope }
            }
            Denial::InvalidClientMetadata(why) => Rejection::InvalidClientMetadata(why),
            Denial::InvalidSoftwareStatement(why) => Rejection::SoftwareStatement {
                unapproved: false,
                why,
            },
            Denial::UnapprovedSoftwareStatement(why) => Rejection::SoftwareStatement {
                unapproved: true,
                why,
            },
        }
    }
}

impl From<StateError> for Rejection {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Storage(e) => Rejection::StorageUnavailable {
                cause: Some(Arc::from(e.to_string())),
            },
            StateError::Corrupt(what) => Rejection::StorageUnavailable {
                cause: Some(Arc::from(what)),
            },
            StateError::InvalidToken(why) => Rejection::InvalidToken(why),
            StateError::InvalidClientMetadata(why) => Rejection::InvalidClientMetadata(why),
            StateError::InvalidRedirectUri(why) => Rejection::InvalidRedirectUri(why),
            StateError::InvalidInput(why) => Rejection::InvalidInput(why),
            StateError::NotFound(what) => Rejection::NotFound(what),
            StateError::NotPermitted { why, scope } => {
                Rejection::RegistrationNotPermitted { why, scope }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_keeps_its_label_and_its_challenge() {
        let algs: Arc<str> = Arc::from("ES256");
        let denials = [
            Denial::MissingCredentials { dpop_algs: None },
            Denial::MissingCredentials {
                dpop_algs: Some(algs.clone()),
            },
            Denial::InvalidRequest("Malformed Authorization header"),
            Denial::InvalidToken("Invalid access token".into()),
            Denial::CertificateMismatch,
            Denial::InsufficientScope {
                scope: "client-reg".into(),
            },
            Denial::InvalidDpopProof {
                why: "bad".into(),
                algs: algs.clone(),
            },
            Denial::UseDpopNonce {
                nonce: "n".into(),
                algs: algs.clone(),
            },
            Denial::InvalidDpopToken {
                why: "bad".into(),
                algs,
            },
            Denial::RecordUnavailable { cause: None },
            Denial::NotPermitted {
                why: "x".into(),
                scope: Some("client-reg:grant:code".into()),
            },
            Denial::InvalidClientMetadata("x".into()),
            Denial::InvalidSoftwareStatement("x".into()),
            Denial::IntrospectionUnavailable { cause: "x".into() },
            Denial::UnapprovedSoftwareStatement("x".into()),
        ];
        for d in denials {
            let r = Rejection::from(d.clone());
            // The metric auth counts and the access log's reason name the same thing.
            assert_eq!(r.reason(), d.reason(), "{d:?}");
            let expected = match d {
                Denial::InsufficientScope { .. } | Denial::NotPermitted { .. } => 403,
                Denial::InvalidRequest(_)
                | Denial::InvalidClientMetadata(_)
                | Denial::InvalidSoftwareStatement(_)
                | Denial::UnapprovedSoftwareStatement(_) => 400,
                Denial::RecordUnavailable { .. } | Denial::IntrospectionUnavailable { .. } => 503,
                _ => 401,
            };
            assert_eq!(r.status(), expected, "{d:?}");
        }
    }

    #[test]
    fn a_storage_fault_is_a_503_that_does_not_tell_the_client_why() {
        let r = Rejection::from(StateError::Storage(crate::state::store::StoreError::new(
            "redis at 10.0.0.7:6379: connection refused".into(),
        )));
        assert_eq!(r.status(), 503);
        let (header, body) = r.response();
        assert_eq!(
            header.headers.get("retry-after").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains("10.0.0.7"), "{body}");
        assert!(
            matches!(&r, Rejection::StorageUnavailable { cause: Some(c) } if c.contains("10.0.0.7"))
        );
    }
}
