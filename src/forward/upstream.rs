//! The forwarder's client for its two upstreams: hyper-util's pooled client
//! over the [`connector`](super::connector) (HTTP/2 where the upstream
//! offers it, else HTTP/1.1), with a read timeout on the answer's head and
//! on every body frame.
//!
//! A request goes on the upstream's warm connection ([`Warm`]) when that
//! one is free, else on a pooled one. A WebSocket handshake needs HTTP/1.1
//! and goes on a pooled connection of its own kind.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, Response, Uri};
use hyper_util::client::legacy::Client as Pooled;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Sleep;

use super::body::Body;
use super::connector::{Https, SendError, connector};
use super::warm::{Failed, Warm};

/// How long an upstream may send nothing: before its answer's head, and
/// between two frames of its body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(300);
/// Idle pooled connections kept per upstream.
const POOL_MAX_IDLE: usize = 1024;
/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// An upstream's answer; its body fails after [`READ_TIMEOUT`] of silence.
pub type Answer = Response<ReadTimeout<Incoming>>;

pub struct Client {
    pooled: Pooled<Https, Body>,
    /// HTTP/1.1 only: a protocol upgrade needs it.
    upgrades: Pooled<Https, Body>,
    warm: Arc<Warm>,
}

fn pooled(connector: Https) -> Pooled<Https, Body> {
    Pooled::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

impl Client {
    /// A client for `upstreams` (base URLs), with a warm connection to each
    /// once [`Warm::keep`] runs.
    pub fn new<'a>(upstreams: impl IntoIterator<Item = &'a str>) -> Client {
        let connector = connector(false);
        Client {
            warm: Arc::new(Warm::new(upstreams, connector.clone())),
            pooled: pooled(connector),
            upgrades: pooled(self::connector(true)),
        }
    }

    /// The warm connections, to keep open with [`Warm::keep`].
    pub fn warm(&self) -> &Arc<Warm> {
        &self.warm
    }

    /// Sends one request to the absolute `uri`; the answer's head must come
    /// within [`READ_TIMEOUT`], and then each frame of its body.
    pub async fn send(
        &self,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Body,
    ) -> Result<Answer, SendError> {
        let upgrade = headers.contains_key(header::UPGRADE);
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let answer = async {
            if upgrade {
                return self.pooled_send(&self.upgrades, request).await;
            }
            let mut request = Some(request);
            if let Some(sent) = self.warm.try_send(&mut request) {
                match sent.await {
                    Ok(answer) => return Ok(answer),
                    // The warm connection closed first: a pooled one
                    // carries the request, sent once.
                    Err(Failed::Unsent(back)) => request = Some(*back),
                    Err(Failed::Sent(e)) => return Err(e),
                }
            }
            let request = request.expect("a request not sent stays here");
            self.pooled_send(&self.pooled, request).await
        };
        // One timer per request: it bounds the wait for the head, then the
        // silences of the body.
        let mut silence = Box::pin(tokio::time::sleep(READ_TIMEOUT));
        tokio::select! {
            biased;
            answer = answer => answer.map(|response| response.map(|body| ReadTimeout {
                inner: body,
                silence,
                stale: true,
            })),
            () = &mut silence => Err(SendError(format!(
                "no answer within {} s",
                READ_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn pooled_send(
        &self,
        client: &Pooled<Https, Body>,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        client.request(request).await.map_err(|e| {
            let what = if e.is_connect() {
                "could not connect"
            } else {
                "request failed"
            };
            SendError::new(what, &e)
        })
    }
}

/// A body that fails when no frame arrives for [`READ_TIMEOUT`].
pub struct ReadTimeout<B> {
    inner: B,
    silence: Pin<Box<Sleep>>,
    /// A frame came since the deadline was set: the next wait starts a new
    /// one.
    stale: bool,
}

impl<B> ReadTimeout<B>
where
    B: HttpBody + Unpin,
    B::Error: Into<super::BoxError>,
{
    /// The first frame, or `None` if it does not come within `window`; the
    /// body can go on being read after that.
    pub async fn first_frame(
        &mut self,
        window: Duration,
    ) -> Option<Option<Result<Frame<B::Data>, super::BoxError>>> {
        let mut waited = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
                self.stale = true;
                return Poll::Ready(Some(frame.map(|f| f.map_err(Into::into))));
            }
            if !waited {
                waited = true;
                self.stale = true;
                self.silence
                    .as_mut()
                    .reset(tokio::time::Instant::now() + window);
            }
            self.silence.as_mut().poll(cx).map(|()| None)
        })
        .await
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {} s", READ_TIMEOUT.as_secs())]
pub struct Silent;

impl<B> HttpBody for ReadTimeout<B>
where
    B: HttpBody + Unpin,
    B::Error: Into<super::BoxError>,
{
    type Data = B::Data;
    type Error = super::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.stale = true;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.stale {
            this.stale = false;
            this.silence
                .as_mut()
                .reset(tokio::time::Instant::now() + READ_TIMEOUT);
        }
        match this.silence.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Silent.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use http_body_util::channel::{Channel, Sender};
    use hyper::body::Bytes;

    use super::*;

    fn silent_body() -> (Sender<Bytes>, ReadTimeout<Channel<Bytes>>) {
        let (tx, body) = Channel::<Bytes>::new(4);
        let body = ReadTimeout {
            inner: body,
            silence: Box::pin(tokio::time::sleep(READ_TIMEOUT)),
            stale: true,
        };
        (tx, body)
    }

    async fn after(wait: Duration, tx: &mut Sender<Bytes>, data: &'static [u8]) {
        tokio::time::sleep(wait).await;
        tx.send_data(Bytes::from_static(data)).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn every_frame_restarts_the_silence_and_a_long_one_fails() {
        let (mut tx, mut body) = silent_body();
        let started = tokio::time::Instant::now();
        let feed = async {
            // Three gaps just under the limit: more than the limit in all.
            for _ in 0..3 {
                after(READ_TIMEOUT - Duration::from_secs(1), &mut tx, b"event").await;
            }
            // Then silence, with the sender held open.
            std::future::pending::<()>().await;
        };
        let read = async {
            for _ in 0..3 {
                let frame = body.frame().await.unwrap().unwrap();
                assert_eq!(frame.into_data().unwrap(), "event");
            }
            let err = body.frame().await.unwrap().unwrap_err();
            assert!(err.is::<Silent>(), "{err}");
        };
        tokio::select! {
            () = feed => unreachable!(),
            () = read => {}
        }
        assert_eq!(
            started.elapsed(),
            (READ_TIMEOUT - Duration::from_secs(1)) * 3 + READ_TIMEOUT
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_frame_window_passes_and_the_body_goes_on() {
        let window = Duration::from_secs(2);
        let (mut tx, mut body) = silent_body();
        // In the window: the frame comes.
        tx.send_data(Bytes::from_static(b"first")).await.unwrap();
        let frame = body.first_frame(window).await.unwrap().unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "first");

        let (mut tx, mut body) = silent_body();
        let started = tokio::time::Instant::now();
        assert!(body.first_frame(window).await.is_none());
        assert_eq!(started.elapsed(), window);
        // Past the window the body is read on, with the full read timeout.
        let late = READ_TIMEOUT - Duration::from_secs(1);
        let (_, frame) = tokio::join!(after(late, &mut tx, b"late"), body.frame());
        assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), "late");
        assert_eq!(started.elapsed(), window + late);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_never_answers_is_given_up_after_the_read_timeout() {
        // The kernel accepts the connection; nobody ever reads or answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri: Uri = format!("http://{}/x", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let client = Client::new([]);
        let started = tokio::time::Instant::now();
        let err = client
            .send(
                Method::GET,
                uri,
                HeaderMap::new(),
                super::super::body::full(Bytes::new()),
            )
            .await
            .err()
            .expect("no answer came");
        assert!(err.to_string().contains("no answer within 300 s"), "{err}");
        assert_eq!(started.elapsed(), READ_TIMEOUT);
    }
}
