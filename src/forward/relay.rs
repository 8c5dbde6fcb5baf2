//! Sending a request upstream and passing its answer back.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Response, StatusCode};

use super::answer::error_response;
use super::body::{Body, BoxError, Chain};
use super::headers::{forwardable, header_str};
use super::{Forwarder, SMALL_BODY, trace, upstream};
use crate::wire::encoding::{decode, is_encoded};
use crate::wire::proto::ErrorCode;

/// The most a buffered answer may expand to when decoded.
const DECODED_CAP: usize = 4 * SMALL_BODY;
/// How long an answer's first bytes are awaited before its head is passed on.
const FIRST_BYTES_WINDOW: Duration = Duration::from_secs(2);

impl Forwarder {
    /// Sends a request upstream; a connection failure becomes 502.
    pub(super) async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Body,
    ) -> Result<upstream::Answer, Response<Body>> {
        let uri: hyper::Uri = url.parse().map_err(|_| {
            error_response(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                "the request target does not make a valid upstream URL",
            )
        })?;
        let authority = uri.authority().cloned();
        let started = Instant::now();
        let answer = self.client.send(method, uri, headers, body).await;
        trace::answered_after(started.elapsed());
        answer.map_err(|e| {
            let host = authority.as_ref().map_or("", |a| a.host());
            tracing::warn!("upstream {host} failed: {e}");
            error_response(
                StatusCode::BAD_GATEWAY,
                ErrorCode::UpstreamUnreachable,
                &format!("cannot reach {host}: {e}"),
            )
        })
    }
}

/// The upstream answer, streamed to the client frame by frame. An interim
/// (1xx) answer to a request that asked for no upgrade is a 502.
pub(super) async fn relay(response: upstream::Answer) -> Response<Body> {
    let status = response.status();
    if status.is_informational() {
        tracing::warn!(
            status = status.as_u16(),
            "the upstream answered with an interim status"
        );
        return error_response(
            StatusCode::BAD_GATEWAY,
            ErrorCode::UpstreamBroken,
            &format!("the upstream answered {status}, which this request did not ask for"),
        );
    }
    let (mut head, mut body) = response.into_parts();
    head.headers = forwardable(head.headers, &[]);
    // The first bytes are awaited (briefly) before the head is passed on,
    // so that an upstream whose body breaks at once is a 502, not an empty
    // answer; past that window, a break can only cut the stream.
    let prefix = match body.first_frame(FIRST_BYTES_WINDOW).await {
        None | Some(None) => Bytes::new(),
        Some(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        Some(Some(Err(e))) => {
            tracing::warn!("the upstream's answer broke before its first byte: {e}");
            return error_response(
                StatusCode::BAD_GATEWAY,
                ErrorCode::UpstreamBroken,
                &format!("the upstream's {status} answer broke before its first byte"),
            );
        }
    };
    Response::from_parts(
        head,
        Chain::new(prefix, body).map_err(BoxError::from).boxed(),
    )
}

/// Reads an upstream answer whole (up to 1 MiB; an error body is small),
/// decoded from its `content-encoding` so the broker can read it (within
/// [`DECODED_CAP`]); a body that does not decode is kept as it came.
pub(super) async fn buffer(response: upstream::Answer) -> (hyper::http::response::Parts, Bytes) {
    let (mut head, body) = response.into_parts();
    head.headers = forwardable(head.headers, &[header::CONTENT_LENGTH]);
    let bytes = Limited::new(body, SMALL_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let encoding = header_str(&head.headers, header::CONTENT_ENCODING);
    if !is_encoded(encoding) {
        return (head, bytes);
    }
    match decode(encoding, &bytes, DECODED_CAP) {
        Ok(plain) => {
            head.headers.remove(header::CONTENT_ENCODING);
            (head, plain.into())
        }
        Err(e) => {
            tracing::debug!("an upstream answer does not decode: {e:?}");
            (head, bytes)
        }
    }
}
