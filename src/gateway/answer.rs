//! Answers bindgate writes itself: refusals (RFC 6750 challenges and the contract's errors, with
//! a lingering read of an unread body), embedded replies, streamed session maps.

use bytes::Bytes;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::ErrorType;

use super::body::BodyLimits;
use crate::metrics::Metrics;
use crate::rejection::Rejection;
use crate::state::{Reply, StreamingMap};

/// Answers the request with `rejection` and ends it.
pub(super) async fn refuse(
    session: &mut Session,
    rejection: &Rejection,
    body_limits: BodyLimits,
    metrics: &Metrics,
    request_id: &http::HeaderValue,
) -> Result<()> {
    let (header, body) = rejection.response_for(Some(crate::request_id::text(request_id)));
    if rejection.closes_connection() {
        session.set_keepalive(None);
    }
    let lingers = *rejection != Rejection::BodyTimeout;
    if !lingers {
        metrics
            .connections_closed
            .with_label_values(&["body_timeout"])
            .inc();
    }
    if lingers && session.is_http2() {
        // HTTP/2: what is left of the body is read before the answer (within the linger's
        // bounds). A client that sees an error answer while it still sends (curl) stops and
        // ends its stream short of its Content-Length, which the HTTP/2 layer must reset as
        // malformed (RST_STREAM PROTOCOL_ERROR): the client then reports an error instead of
        // the answer it had.
        body_limits.linger(session).await;
        return write_answer(session, header, body, request_id).await;
    }
    write_answer(session, header, body, request_id).await?;
    if lingers {
        body_limits.linger(session).await;
    }
    Ok(())
}

/// Writes an embedded answer.
pub(super) async fn send_reply(
    session: &mut Session,
    reply: Reply,
    request_id: &http::HeaderValue,
) -> Result<()> {
    match reply {
        Reply::Json {
            status,
            body,
            pragma_no_cache,
        } => {
            let mut header = crate::rejection::json_header(status, body.len());
            if pragma_no_cache {
                header.insert_header("pragma", "no-cache")?;
            }
            write_answer(session, header, Bytes::from(body), request_id).await
        }
        Reply::NoContent => {
            let mut header = pingora::http::ResponseHeader::build(204, Some(3))?;
            header.insert_header("cache-control", "no-store")?;
            header.insert_header(crate::request_id::HEADER, request_id.clone())?;
            session.write_response_header(Box::new(header), true).await
        }
        Reply::Stream(stream) => stream_map(session, stream, request_id).await,
    }
}

/// Streams a session map chunk by chunk: memory stays flat whatever the store holds.
async fn stream_map(
    session: &mut Session,
    mut stream: Box<StreamingMap>,
    request_id: &http::HeaderValue,
) -> Result<()> {
    let mut header = pingora::http::ResponseHeader::build(200, Some(5))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header(crate::request_id::HEADER, request_id.clone())?;
    header.insert_header("cache-control", "no-store")?;
    if session.req_header().method == http::Method::HEAD {
        return session.write_response_header(Box::new(header), true).await;
    }
    if !session.is_http2() {
        header.insert_header("transfer-encoding", "chunked")?;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    loop {
        let piece = stream.next_piece(now).await;
        match piece {
            Ok(Some(bytes)) => {
                session
                    .write_response_body(Some(Bytes::from(bytes)), false)
                    .await?
            }
            Ok(None) => break,
            Err(e) => {
                tracing::error!(target: "bindgate::state", "session map stream cut short: {e}");
                // Headers are out: the only honest signal left is an aborted body.
                return Error::e_explain(ErrorType::InternalError, "delete-all stream failed");
            }
        }
    }
    session.write_response_body(None, true).await
}

/// Writes a complete answer; for `HEAD`, the header alone (RFC 9110 §9.3.2: a body would be a
/// protocol error on HTTP/2).
pub(super) async fn write_answer(
    session: &mut Session,
    mut header: pingora::http::ResponseHeader,
    body: Bytes,
    request_id: &http::HeaderValue,
) -> Result<()> {
    // Empty before the request was read (a malformed request Pingora refused first).
    if !request_id.is_empty() {
        header.insert_header(crate::request_id::HEADER, request_id.clone())?;
    }
    if session.req_header().method == http::Method::HEAD {
        return session.write_response_header(Box::new(header), true).await;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}
