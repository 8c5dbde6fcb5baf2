//! The forwarder's HTTP/1.1 client for its two upstreams, over rustls (the
//! system's trust store), through the HTTP proxy the environment names
//! (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, as curl and
//! reqwest read them; tunnelled with CONNECT), with a connect timeout and a
//! read timeout on the answer's head and on every body frame.
//!
//! Each client connection has a [`Lane`]: the upstream connections its
//! requests use are run by the client connection's own task (its
//! [`Driver`]), so a request and its answer pass from one socket to the
//! other without waking another task. When the client hangs up, the lane's
//! idle upstream connections are parked for the next client connection.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::uri::{Authority, Scheme};
use hyper::{Method, Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;

use super::body::Body;
use crate::timer::{Timer, Timers};

/// How long connecting to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an upstream may send nothing: before its answer's head, and
/// between two frames of its body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a parked connection is kept.
const PARK_IDLE: Duration = Duration::from_secs(90);
/// Parked connections kept at most, across upstreams.
const PARK_MAX: usize = 64;

/// An upstream's answer; its body fails after [`READ_TIMEOUT`] of silence.
pub type Answer = Response<ReadTimeout<Incoming>>;

/// Why a request got no answer, in words without the URL or a header.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SendError(String);

pub struct Client {
    connector: HttpsConnector<Connector>,
    parked: Arc<Parked>,
    /// The answers' read timeouts.
    timers: Timers,
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

/// The scheme and authority a connection goes to.
#[derive(Clone, PartialEq, Eq)]
struct Origin {
    scheme: Scheme,
    authority: Authority,
}

impl Origin {
    fn of(uri: &Uri) -> Option<Origin> {
        Some(Origin {
            scheme: uri.scheme()?.clone(),
            authority: uri.authority()?.clone(),
        })
    }

    /// The `host` header: the authority without the scheme's default port.
    fn host(&self) -> HeaderValue {
        let default = match self.scheme.as_str() {
            "https" => 443,
            _ => 80,
        };
        let host = match self.authority.port_u16() {
            Some(port) if port != default => self.authority.as_str(),
            _ => self.authority.host(),
        };
        HeaderValue::from_str(host).expect("an authority is a valid header value")
    }
}

/// An upstream connection: the handle requests are sent on, and the future
/// that runs it.
struct Connection {
    origin: Origin,
    sender: SendRequest<Body>,
    run: Pin<Box<dyn Future<Output = ()> + Send>>,
    idle_since: Instant,
}

/// The upstream connections of one client connection.
#[derive(Clone, Default)]
pub struct Lane {
    state: Arc<Mutex<LaneState>>,
}

#[derive(Default)]
struct LaneState {
    connections: Vec<Connection>,
    /// The driver's task, woken when a connection joins.
    waker: Option<Waker>,
}

/// Runs a lane's connections inside the client connection's task; it never
/// ends, and parks the idle connections when dropped.
pub struct Driver {
    lane: Lane,
    parked: Arc<Parked>,
}

/// Idle connections no client connection uses, oldest first; those idle
/// for [`PARK_IDLE`] are closed.
#[derive(Default)]
struct Parked {
    state: Mutex<ParkedState>,
}

#[derive(Default)]
struct ParkedState {
    connections: Vec<Connection>,
    /// A task closes expired connections while there are any.
    reaping: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Lane {
    /// Sends the request on an idle connection of the lane to `origin`,
    /// if it has one (else the request stays where it is).
    fn send_on_idle(
        &self,
        origin: &Origin,
        request: &mut Option<Request<Body>>,
    ) -> Option<impl Future<Output = Sent> + use<>> {
        let mut state = lock(&self.state);
        let connection = state
            .connections
            .iter_mut()
            .find(|c| c.origin == *origin && c.sender.is_ready())?;
        Some(connection.sender.try_send_request(request.take()?))
    }

    /// Sends `request` on `connection`, which the lane runs from now on.
    fn adopt(
        &self,
        mut connection: Connection,
        request: Request<Body>,
    ) -> impl Future<Output = Sent> + use<> {
        let sent = connection.sender.try_send_request(request);
        let mut state = lock(&self.state);
        state.connections.push(connection);
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        sent
    }
}

type Sent = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>>;

impl Future for Driver {
    type Output = Infallible;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Infallible> {
        let mut state = lock(&self.lane.state);
        state
            .connections
            .retain_mut(|c| c.run.as_mut().poll(cx).is_pending());
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let connections = std::mem::take(&mut lock(&self.lane.state).connections);
        Parked::park(&self.parked, connections);
    }
}

impl Parked {
    /// Keeps the idle ones of `connections` for other client connections
    /// (at most [`PARK_MAX`], the newest); the others close.
    fn park(this: &Arc<Parked>, connections: Vec<Connection>) {
        let now = Instant::now();
        let mut state = lock(&this.state);
        let mut parked = 0;
        for mut connection in connections {
            if connection.sender.is_ready() {
                connection.idle_since = now;
                state.connections.push(connection);
                parked += 1;
            }
        }
        let over = state.connections.len().saturating_sub(PARK_MAX);
        state.connections.drain(..over);
        if parked > 0 {
            tracing::debug!(parked, "kept idle upstream connections for the next client");
        }
        if !state.reaping
            && !state.connections.is_empty()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            state.reaping = true;
            runtime.spawn(Parked::reap(this.clone()));
        }
    }

    /// Closes expired connections until none is left.
    async fn reap(this: Arc<Parked>) {
        loop {
            tokio::time::sleep(PARK_IDLE).await;
            let mut state = lock(&this.state);
            state.expire(Instant::now());
            if state.connections.is_empty() {
                state.reaping = false;
                return;
            }
        }
    }

    /// The newest usable parked connection to `origin`.
    fn take(&self, origin: &Origin) -> Option<Connection> {
        let mut state = lock(&self.state);
        state.expire(Instant::now());
        let at = state
            .connections
            .iter()
            .rposition(|c| c.origin == *origin)?;
        Some(state.connections.remove(at))
    }
}

impl ParkedState {
    /// Closes the connections idle for [`PARK_IDLE`] and those the
    /// upstream closed.
    fn expire(&mut self, now: Instant) {
        self.connections
            .retain(|c| now.duration_since(c.idle_since) < PARK_IDLE && !c.sender.is_closed());
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
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        Client {
            connector,
            parked: Arc::default(),
            timers: Timers::default(),
        }
    }

    /// A lane for a new client connection, and its driver, which the client
    /// connection's task polls beside the connection.
    pub fn lane(&self) -> (Lane, Driver) {
        let lane = Lane::default();
        let driver = Driver {
            lane: lane.clone(),
            parked: self.parked.clone(),
        };
        (lane, driver)
    }

    /// Sends one request on `lane`: on an idle connection it has, else a
    /// parked one, else a new one; the answer's head must come within
    /// [`READ_TIMEOUT`].
    pub async fn send(
        &self,
        lane: &Lane,
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        body: Body,
    ) -> Result<Answer, SendError> {
        let origin = Origin::of(&uri).ok_or_else(|| SendError("not an absolute URL".into()))?;
        headers.insert(header::HOST, origin.host());
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        *request.headers_mut() = headers;
        let answer = async {
            let mut request = Some(request);
            if let Some(sent) = lane.send_on_idle(&origin, &mut request) {
                match unsent(sent.await)? {
                    Ok(answer) => return Ok(answer),
                    Err(back) => request = Some(back),
                }
            }
            let mut request = request.expect("a request not sent is given back");
            while let Some(connection) = self.parked.take(&origin) {
                match unsent(lane.adopt(connection, request).await)? {
                    Ok(answer) => return Ok(answer),
                    Err(back) => request = back,
                }
            }
            let connection = self.connect(&origin).await?;
            match unsent(lane.adopt(connection, request).await)? {
                Ok(answer) => Ok(answer),
                Err(_) => Err(SendError("the new connection closed at once".into())),
            }
        };
        // One timer per request: it bounds the wait for the head, then the
        // silences of the body.
        let mut silence = self.timers.sleep(READ_TIMEOUT);
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

    /// A new connection to `origin`.
    async fn connect(&self, origin: &Origin) -> Result<Connection, SendError> {
        let target = Uri::builder()
            .scheme(origin.scheme.clone())
            .authority(origin.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| SendError(format!("could not connect: {e}")))?;
        let mut connector = self.connector.clone();
        let io = tower_service::Service::call(&mut connector, target)
            .await
            .map_err(|e| SendError(format!("could not connect: {}", innermost(&*e))))?;
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|e| SendError(format!("could not connect: {}", innermost(&e))))?;
        Ok(Connection {
            origin: origin.clone(),
            sender,
            run: Box::pin(async move {
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!("upstream connection ended: {e}");
                }
            }),
            idle_since: Instant::now(),
        })
    }
}

/// A sent request's answer; `Ok(Err(request))` when the connection closed
/// before the request went out, so that another may carry it.
fn unsent(sent: Sent) -> Result<Result<Response<Incoming>, Request<Body>>, SendError> {
    match sent {
        Ok(answer) => Ok(Ok(answer)),
        Err(mut e) => match e.take_message() {
            Some(request) => Ok(Err(request)),
            None => Err(SendError(format!(
                "request failed: {}",
                innermost(&e.into_error())
            ))),
        },
    }
}

/// The innermost cause of an error.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut source = e;
    while let Some(inner) = source.source() {
        source = inner;
    }
    source.to_string()
}

/// A body that fails when no frame arrives for [`READ_TIMEOUT`].
pub struct ReadTimeout<B> {
    inner: B,
    silence: Timer,
    /// A frame came since the deadline was set: the next wait starts a new
    /// one (pushing a registered timer later costs no timer-wheel update).
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
                self.silence.reset(tokio::time::Instant::now() + window);
            }
            Pin::new(&mut self.silence).poll(cx).map(|()| None)
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
                .reset(tokio::time::Instant::now() + READ_TIMEOUT);
        }
        match Pin::new(&mut this.silence).poll(cx) {
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
            silence: Timers::default().sleep(READ_TIMEOUT),
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
        let client = Client::new();
        let (lane, driver) = client.lane();
        let started = tokio::time::Instant::now();
        let sent = client.send(
            &lane,
            Method::GET,
            uri,
            HeaderMap::new(),
            super::super::body::full(Bytes::new()),
        );
        let err = tokio::select! {
            sent = sent => sent.err().expect("no answer came"),
            never = driver => match never {},
        };
        assert!(err.to_string().contains("no answer within 300 s"), "{err}");
        assert_eq!(started.elapsed(), READ_TIMEOUT);
    }
}
