//! Request bodies: read whole before anything acts on them (≤ `server.max_body`, within
//! `server.body_timeout`), the RFC 6750 §2.2 check that a form body holds no second token, and
//! the lingering read after an early answer.

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::ErrorType;

use crate::rejection::Rejection;
use crate::routing::Operation;

/// How long an unread request body is read and discarded after an early answer.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// The limits of a request body, from `server`: read by the read, the buffer and the linger.
#[derive(Clone, Copy)]
pub(super) struct BodyLimits {
    pub max_body: u64,
    /// The whole request body must arrive within this.
    pub body_timeout: std::time::Duration,
    /// How much of an unread request body is read and discarded after an early answer.
    pub linger_bytes: u64,
}

impl BodyLimits {
    /// After an answer written before the request body was read: reads and discards what is
    /// left of it, at most `linger_bytes` and [`LINGER_TIME`] (lingering close, as nginx and
    /// HAProxy do). An HTTP/1.1 client then reads the answer instead of a connection reset; an
    /// HTTP/2 stream ends when the client's does, with no `RST_STREAM` that some clients (curl
    /// 7.88) report as an error and lose the answer over. Past the bound, HTTP/1.1 closes the
    /// connection and HTTP/2 resets the stream with `NO_ERROR` (RFC 9113 §8.1).
    pub async fn linger(&self, session: &mut Session) {
        if session.is_body_done() {
            return;
        }
        let expects_continue = session
            .req_header()
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            // The client waits for a 100 that will not come and sends no body (RFC 9110
            // §10.1.1): nothing to drain, and the connection cannot be reused.
            session.set_keepalive(None);
            return;
        }
        let limit = self.linger_bytes;
        let drained = tokio::time::timeout(LINGER_TIME, async {
            let mut read = 0u64;
            loop {
                match session.read_request_body().await {
                    Ok(Some(chunk)) => {
                        read += chunk.len() as u64;
                        if read > limit {
                            return false;
                        }
                    }
                    Ok(None) => return true,
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        if !drained {
            session.set_keepalive(None);
        }
    }

    /// Reads the whole request body within `body_timeout`, refusing it past `max_body`. With
    /// `keep`, the bytes are returned (the embedded service); without, only their number
    /// (the forwarder's buffer keeps them).
    pub async fn read(
        &self,
        session: &mut Session,
        keep: bool,
    ) -> std::result::Result<(Bytes, u64), Rejection> {
        if session.is_body_done() {
            return Ok((Bytes::new(), 0));
        }
        // RFC 9110 §10.1.1: a client waiting for 100 Continue sends its body once told to.
        // (HTTP/2 clients do not wait for it.)
        let expects_continue = session
            .req_header()
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue && !session.is_http2() {
            if let Ok(h) = pingora::http::ResponseHeader::build(100, Some(0)) {
                if session
                    .as_mut()
                    .write_response_header(Box::new(h))
                    .await
                    .is_err()
                {
                    return Err(Rejection::InvalidRequest(
                        "The request body could not be read",
                    ));
                }
            }
        }
        let max_body = self.max_body;
        let deadline = std::time::Instant::now() + self.body_timeout;
        let http2 = session.is_http2();
        let per_read = session.as_mut().get_read_timeout();
        let read = async {
            let mut body = bytes::BytesMut::new();
            let mut len = 0u64;
            let mut first = true;
            loop {
                if !http2 {
                    // HTTP/1.1: each read's own timeout (Pingora's timer, there anyway) is cut to
                    // what is left of the body's: one deadline, no second timer. (The first
                    // read has all of it: no clock read for a body that comes at once.)
                    let left = if first {
                        self.body_timeout
                    } else {
                        deadline.saturating_duration_since(std::time::Instant::now())
                    };
                    if left.is_zero() {
                        return Err(Rejection::BodyTimeout);
                    }
                    let cut = per_read.map_or(left, |t| t.min(left));
                    session.as_mut().set_read_timeout(Some(cut));
                }
                first = false;
                match session.read_request_body().await {
                    Ok(Some(chunk)) => {
                        len += chunk.len() as u64;
                        if len > max_body {
                            return Err(Rejection::BodyTooLarge { limit: max_body });
                        }
                        if keep {
                            body.extend_from_slice(&chunk);
                        }
                        if session.is_body_done() {
                            return Ok((body.freeze(), len));
                        }
                    }
                    Ok(None) => return Ok((body.freeze(), len)),
                    Err(e)
                        if *e.etype() == ErrorType::ReadTimedout
                            || std::time::Instant::now() >= deadline =>
                    {
                        return Err(Rejection::BodyTimeout)
                    }
                    Err(_) => {
                        return Err(Rejection::InvalidRequest(
                            "The request body could not be read",
                        ))
                    }
                }
            }
        };
        let read = if http2 {
            // HTTP/2 reads have no timeout of their own: Pingora's timer, created only if the
            // body is not there at once.
            pingora::prelude::timeout(self.body_timeout, read)
                .await
                .unwrap_or(Err(Rejection::BodyTimeout))
        } else {
            read.await
        };
        if !http2 {
            session.as_mut().set_read_timeout(per_read);
        }
        read
    }

    /// Reads the whole body of a request bound for an upstream (≤ `max_body`, within
    /// `body_timeout`) before any upstream connection is taken: a body that never completes
    /// never reaches, nor holds, the upstream.
    pub async fn buffer(
        &self,
        session: &mut Session,
        operation: &Operation,
    ) -> std::result::Result<Option<u64>, Rejection> {
        // An upgrade (allowed on its route) has no body before its 101: what follows is the
        // tunnel, which Pingora carries once the upstream has switched.
        if session.is_body_done() || session.is_upgrade_req() {
            return Ok(None);
        }
        session
            .as_mut()
            .enable_retry_buffering_up_to(usize::try_from(self.max_body).unwrap_or(usize::MAX));
        let (_, len) = self.read(session, false).await?;
        if needs_body_token_check(session.req_header(), operation) {
            let body = session.as_ref().get_retry_buffer().unwrap_or_default();
            no_body_token(session.req_header(), &body)?;
        }
        Ok(Some(len))
    }
}

/// Whether the request's body is a form that could carry an access token and its operation
/// takes one: then the token must not be in the body too.
pub(super) fn needs_body_token_check(req: &RequestHeader, operation: &Operation) -> bool {
    let takes_token = operation.credential() != crate::routing::Credential::None;
    takes_token && form_kind(req).is_some()
}

/// `Some(true)` for `application/x-www-form-urlencoded`, `Some(false)` for
/// `multipart/form-data`, else None.
fn form_kind(req: &RequestHeader) -> Option<bool> {
    let mut types = req.headers.get_all(http::header::CONTENT_TYPE).iter();
    let first = types.next()?.to_str().ok()?;
    let media = first.split(';').next().unwrap_or_default().trim();
    if media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Some(true)
    } else if media.eq_ignore_ascii_case("multipart/form-data") {
        Some(false)
    } else {
        None
    }
}

/// RFC 6750 §2.2: an access token in a form body, next to the one in the header, is an invalid
/// request (the server behind could take either).
pub(super) fn no_body_token(
    req: &RequestHeader,
    body: &[u8],
) -> std::result::Result<(), Rejection> {
    let found = match form_kind(req) {
        Some(true) => crate::auth::bearer::form_has_access_token(body),
        // A multipart part named access_token, in any case or quoting.
        Some(false) => {
            let lower = body.to_ascii_lowercase();
            lower
                .windows(b"name=\"access_token".len())
                .any(|w| w == b"name=\"access_token")
                || lower
                    .windows(b"name=access_token".len())
                    .any(|w| w == b"name=access_token")
        }
        None => false,
    };
    if found {
        Err(Rejection::InvalidRequest(
            "The access token was sent more than once",
        ))
    } else {
        Ok(())
    }
}
