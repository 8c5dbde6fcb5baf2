//! Bodies on their way through the forwarder: buffered (so a request can be
//! sent again to another account) or streamed.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What the forwarder answers with.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The most room reserved ahead for a body of a declared length.
const RESERVE_CAP: usize = 1024 * 1024;

/// A request body: in memory, or (past the buffering cap) streamed once.
pub enum Outgoing {
    Buffered(Bytes),
    Streaming(Option<Chain>),
}

impl Outgoing {
    /// Reads `body` into memory up to `cap` bytes; a larger body (declared
    /// or found while reading) is streamed instead.
    pub async fn read(
        body: Incoming,
        declared: Option<u64>,
        cap: usize,
    ) -> Result<Outgoing, hyper::Error> {
        if declared.is_some_and(|n| n > cap as u64) {
            return Ok(Outgoing::Streaming(Some(Chain::new(Bytes::new(), body))));
        }
        let mut body = body;
        // Room for the declared length, up to a bound (a length is a claim,
        // not bytes); past it the buffer grows as bytes come.
        let room = declared.map_or(0, |n| usize::try_from(n).unwrap_or(0).min(RESERVE_CAP));
        let mut buffered = Vec::with_capacity(room);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                buffered.extend_from_slice(&data);
                if buffered.len() > cap {
                    return Ok(Outgoing::Streaming(Some(Chain::new(buffered.into(), body))));
                }
            }
        }
        // A body kept after its request (a shadow of keep-warm) holds no
        // spare room.
        if buffered.capacity() > buffered.len() {
            buffered.shrink_to_fit();
        }
        Ok(Outgoing::Buffered(buffered.into()))
    }

    /// The body for one more attempt; `None` once a streamed body is spent.
    pub fn attempt(&mut self) -> Option<Body> {
        match self {
            Outgoing::Buffered(bytes) => Some(full(bytes.clone())),
            Outgoing::Streaming(chain) => chain
                .take()
                .map(|chain| chain.map_err(BoxError::from).boxed()),
        }
    }

    /// The whole body, when it is in memory.
    pub fn buffered(&self) -> Option<&Bytes> {
        match self {
            Outgoing::Buffered(bytes) => Some(bytes),
            Outgoing::Streaming(_) => None,
        }
    }

    /// Whether a failed attempt can be repeated with the same body.
    pub fn replayable(&self) -> bool {
        matches!(self, Outgoing::Buffered(_))
    }
}

/// Bytes already read, then the rest of the body they came from.
pub struct Chain<B = Incoming> {
    prefix: Option<Bytes>,
    rest: B,
}

impl<B> Chain<B> {
    pub fn new(prefix: Bytes, rest: B) -> Chain<B> {
        Chain {
            prefix: (!prefix.is_empty()).then_some(prefix),
            rest,
        }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for Chain<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        // The upper bound first: `set_lower` asserts lower <= upper.
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(extra));
        }
        hint.set_lower(rest.lower().saturating_add(extra));
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_before_an_exact_rest_keeps_the_hint_exact() {
        let chain = Chain::new(
            Bytes::from_static(b"abc"),
            Full::new(Bytes::from_static(b"de")),
        );
        assert_eq!(chain.size_hint().exact(), Some(5));
        let chain = Chain::new(Bytes::new(), Full::new(Bytes::new()));
        assert_eq!(chain.size_hint().exact(), Some(0));
        assert!(chain.is_end_stream());
    }
}
