//! Usage accounting of relayed answers: an SSE answer is read as its frames
//! pass (nothing is held back or buffered whole), and its request is counted
//! once, with the tokens of its `response.completed` event, or as an error
//! when the answer ends without one.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use hyper::Response;
use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};

use super::body::{Body, BoxError};
use crate::engine::Engine;
use crate::engine::usage::Answered;
use crate::wire::sse_scan::SseScan;
use crate::wire::usage::{Tokens, completed_event};

/// The event that carries a response's usage.
const COMPLETED: &str = "response.completed";

/// One request to count: counted once, as an error if nothing else came.
pub struct Meter {
    engine: Arc<Engine>,
    account: String,
    client: String,
    counted: bool,
}

impl Meter {
    pub fn new(engine: Arc<Engine>, account: &str, client: String) -> Meter {
        Meter {
            engine,
            account: account.to_owned(),
            client,
            counted: false,
        }
    }

    /// Counts the request with the tokens its response used.
    pub fn completed(&mut self, tokens: Tokens, model: Option<&str>) {
        self.count(Some(tokens), model);
    }

    fn count(&mut self, tokens: Option<Tokens>, model: Option<&str>) {
        if self.counted {
            return;
        }
        self.counted = true;
        if let Some(tokens) = &tokens {
            self.engine.metrics.used(&self.account, tokens);
        }
        let answered = Answered {
            account: &self.account,
            client: &self.client,
            model,
            tokens,
        };
        self.engine
            .usage
            .record(&answered, self.engine.refresher.now());
    }

    /// Reads the data of a `response.completed` event: it counts the
    /// request.
    pub fn event(&mut self, data: &[u8]) {
        if !self.counted
            && let Some((tokens, model)) = completed_event(data)
        {
            self.completed(tokens, model.as_deref());
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.count(None, None);
    }
}

/// `response` with its body metered: a successful answer is read as an SSE
/// stream; any other is counted as an error at once. Without a meter
/// (usage is not counted), `response` as it is.
pub fn metered(response: Response<Body>, meter: Option<Meter>) -> Response<Body> {
    let Some(mut meter) = meter else {
        return response;
    };
    if !response.status().is_success() {
        meter.count(None, None);
        return response;
    }
    response.map(|inner| {
        BodyExt::boxed(Metered {
            inner,
            scan: SseScan::new(COMPLETED),
            meter,
        })
    })
}

/// A body read as an SSE stream on its way to the client.
struct Metered {
    inner: Body,
    scan: SseScan,
    meter: Meter,
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let meter = &mut this.meter;
            this.scan.feed(data, |event| meter.event(event));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
