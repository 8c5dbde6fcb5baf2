//! The forwarder's HTTP/1.1 client for its two upstreams: hyper-util's
//! pooled client over rustls (the system's trust store), through the HTTP
//! proxy the environment names (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`,
//! `NO_PROXY`, as curl and reqwest read them; tunnelled with CONNECT),
//! with a connect timeout and a read timeout on the answer's head and on
//! every body frame.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as Pooled;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::Body;

/// How long connecting to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an upstream may send nothing: before its answer's head, and
/// between two frames of its body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// An upstream's answer; its body fails after [`READ_TIMEOUT`] of silence.
pub type Answer = Response<ReadTimeout<Incoming>>;

/// Why a request got no answer, in words without the URL or a header.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SendError(String);

pub struct Client {
    pooled: Pooled<HttpsConnector<Connector>, Body>,
}

/// Connects straight to an upstream, or through the proxy the environment
/// names for it.
#[derive(Clone)]
pub struct Connector {
    direct: HttpConnector,
    proxies: Arc<Matcher>,
}

type Connecting = Pin<
    Box<
        dyn Future<
                Output = Result<
                    <HttpConnector as tower_service::Service<Uri>>::Response,
                    super::BoxError,
                >,
            > + Send,
    >,
>;

impl tower_service::Service<Uri> for Connector {
    type Response = <HttpConnector as tower_service::Service<Uri>>::Response;
    type Error = super::BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut direct = self.direct.clone();
        match self.proxies.intercept(&dst) {
            None => Box::pin(async move { Ok(direct.call(dst).await?) }),
            Some(proxy) => {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), direct);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Box::pin(async move { Ok(tunnel.call(dst).await?) })
            }
        }
    }
}

impl Client {
    pub fn new() -> Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let tls = <rustls::ClientConfig as rustls_platform_verifier::ConfigVerifierExt>::with_platform_verifier()
            .expect("the system's trust store loads");
        let connector = Connector {
            direct: http,
            proxies: Arc::new(Matcher::from_env()),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let pooled = Pooled::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(https);
        Client { pooled }
    }

    /// Sends one request; the answer's head must come within
    /// [`READ_TIMEOUT`].
    pub async fn send(
        &self,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Body,
    ) -> Result<Answer, SendError> {
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        match tokio::time::timeout(READ_TIMEOUT, self.pooled.request(request)).await {
            Ok(Ok(response)) => Ok(response.map(ReadTimeout::new)),
            Ok(Err(e)) => Err(SendError(describe(&e))),
            Err(_) => Err(SendError(format!(
                "no answer within {} s",
                READ_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// A client error in words: what failed, and the innermost cause.
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let what = if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut source: &dyn std::error::Error = e;
    while let Some(inner) = source.source() {
        source = inner;
    }
    format!("{what}: {source}")
}

/// A body that fails when no frame arrives for [`READ_TIMEOUT`].
pub struct ReadTimeout<B> {
    inner: B,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> ReadTimeout<B> {
    fn new(inner: B) -> Self {
        ReadTimeout { inner, sleep: None }
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.sleep = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(READ_TIMEOUT)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Silent.into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
