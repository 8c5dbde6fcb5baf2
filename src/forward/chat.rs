//! The answers of `/v1/chat/completions`: the backend's stream told as
//! chat chunks as its events arrive (and metered on the way), and errors
//! in the OpenAI error shape with the status and `retry-after` they came
//! with.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use hyper::Response;
use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};
use hyper::header::{self, HeaderValue};

use super::SMALL_BODY;
use super::answer::json_response;
use super::body::{Body, BoxError};
use super::metered::Meter;
use super::relay::buffer;
use super::upstream;
use crate::wire::chat::{ChatRequest, error};
use crate::wire::chat_stream::ChatStream;
use crate::wire::sse_scan::SseScan;

/// The broker's own refusal (no account can serve, every one used up, a
/// backend error the fallback loop passed on) in the OpenAI error shape.
pub(super) async fn refusal(answer: Response<Body>) -> Response<Body> {
    let (head, mut body) = answer.into_parts();
    let mut bytes = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            bytes.extend_from_slice(data);
        }
        if bytes.len() > SMALL_BODY {
            break;
        }
    }
    in_openai_shape(head, &bytes)
}

/// A backend answer that is not a success, in the OpenAI error shape; the
/// request counts as failed.
pub(super) async fn failed(response: upstream::Answer, meter: Option<Meter>) -> Response<Body> {
    drop(meter);
    let (head, bytes) = buffer(response).await;
    in_openai_shape(head, &bytes)
}

fn in_openai_shape(head: hyper::http::response::Parts, bytes: &[u8]) -> Response<Body> {
    let mut answer = json_response(head.status, &error(head.status.as_u16(), bytes));
    if let Some(wait) = head.headers.get(header::RETRY_AFTER) {
        answer
            .headers_mut()
            .insert(header::RETRY_AFTER, wait.clone());
    }
    answer
}

/// The relayed backend stream (a 200) as a chat chunk stream.
pub(super) fn stream(
    relayed: Response<Body>,
    meter: Option<Meter>,
    chat: &ChatRequest,
) -> Response<Body> {
    let (mut head, inner) = relayed.into_parts();
    head.headers.remove(header::CONTENT_LENGTH);
    head.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    let created = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = Chunks {
        inner,
        scan: SseScan::every(),
        chat: ChatStream::new(&chat.model, created, chat.include_usage),
        meter,
        ended: false,
    };
    Response::from_parts(head, body.boxed())
}

/// A backend stream read as it passes and told as chat chunks.
struct Chunks {
    inner: Body,
    scan: SseScan,
    chat: ChatStream,
    meter: Option<Meter>,
    ended: bool,
}

impl HttpBody for Chunks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            let mut out = Vec::new();
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Some(data) = frame.data_ref() else {
                        continue;
                    };
                    let (chat, meter) = (&mut this.chat, &mut this.meter);
                    this.scan.feed(data, |event| {
                        if let Some(meter) = meter.as_mut() {
                            meter.event(event);
                        }
                        chat.event(event, &mut out);
                    });
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
