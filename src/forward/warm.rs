//! One warm connection to each upstream while the daemon has an account:
//! dialled ahead of any request (HTTP/2 where the upstream offers it) and
//! dialled again as soon as the upstream closes it, so that the first
//! request after a pause skips the TCP and TLS handshakes. A request takes
//! it when it is free (HTTP/2: while it is open); otherwise the pooled
//! client carries the request.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::body::Body;
use super::connector::{Https, SendError};

/// The first wait before dialling again after a failure; it doubles up to
/// [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// A connection the upstream closed sooner than this after it opened is
/// dialled again only after the retry wait (an upstream that closes every
/// connection at once is not dialled in a loop).
const STEADY: Duration = Duration::from_secs(5);

/// The warm connections, one per distinct upstream origin.
pub struct Warm {
    slots: Vec<Slot>,
    connector: Https,
}

struct Slot {
    /// `scheme://authority/`.
    origin: Uri,
    sender: Mutex<Option<Sender>>,
}

enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

/// A request on its way on a warm connection.
pub type Sent = Pin<Box<dyn Future<Output = Result<Response<Incoming>, Failed>> + Send>>;

/// Why a request on a warm connection got no answer.
pub enum Failed {
    /// The connection closed before the request went out: here it is
    /// again, in absolute form, for another connection.
    Unsent(Box<Request<Body>>),
    Sent(SendError),
}

impl Failed {
    fn of(mut e: TrySendError<Request<Body>>, absolute: Uri, had_host: bool) -> Failed {
        match e.take_message() {
            Some(mut back) => {
                *back.uri_mut() = absolute;
                if !had_host {
                    back.headers_mut().remove(header::HOST);
                }
                Failed::Unsent(Box::new(back))
            }
            None => Failed::Sent(SendError::new("request failed", &e.into_error())),
        }
    }
}

type Driving = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Warm {
    /// Warm connections for the origins of `upstreams` (base URLs; those
    /// that do not parse are left out).
    pub fn new<'a>(upstreams: impl IntoIterator<Item = &'a str>, connector: Https) -> Warm {
        let mut slots: Vec<Slot> = Vec::new();
        for url in upstreams {
            let Some(origin) = origin_of(url) else {
                continue;
            };
            if !slots.iter().any(|s| s.origin == origin) {
                slots.push(Slot {
                    origin,
                    sender: Mutex::new(None),
                });
            }
        }
        Warm { slots, connector }
    }

    /// Sends the request (absolute URI) on the warm connection to its
    /// origin if that one is free, taking it; else leaves it where it is.
    pub fn try_send(&self, request: &mut Option<Request<Body>>) -> Option<Sent> {
        let slot = self.slot_for(request.as_ref()?.uri())?;
        let mut sender = lock(&slot.sender);
        let free = match sender.as_ref() {
            Some(Sender::Http1(h1)) => h1.is_ready(),
            Some(Sender::Http2(h2)) => h2.is_ready(),
            None => false,
        };
        if !free {
            return None;
        }
        let mut request = request.take()?;
        let absolute = request.uri().clone();
        let had_host = request.headers().contains_key(header::HOST);
        let sent = match sender.as_mut()? {
            Sender::Http1(h1) => {
                to_origin_form(&mut request);
                h1.try_send_request(request).boxed()
            }
            Sender::Http2(h2) => {
                let mut h2 = h2.clone();
                drop(sender);
                h2.try_send_request(request).boxed()
            }
        };
        Some(Box::pin(async move {
            sent.await.map_err(|e| Failed::of(e, absolute, had_host))
        }))
    }

    fn slot_for(&self, uri: &Uri) -> Option<&Slot> {
        self.slots
            .iter()
            .find(|s| s.origin.scheme() == uri.scheme() && s.origin.authority() == uri.authority())
    }

    /// Keeps each warm connection open while `has_accounts` says so,
    /// looking again whenever `changed` fires, until `stop`. Each origin's
    /// connection runs on a task of its own, woken only by its own I/O.
    pub async fn keep(
        self: &Arc<Self>,
        has_accounts: impl Fn() -> bool + Send + Sync + Clone + 'static,
        changed: watch::Receiver<()>,
        stop: CancellationToken,
    ) {
        let mut keepers = tokio::task::JoinSet::new();
        for index in 0..self.slots.len() {
            let warm = self.clone();
            let (has_accounts, changed, stop) =
                (has_accounts.clone(), changed.clone(), stop.clone());
            keepers.spawn(async move {
                let slot = &warm.slots[index];
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = warm.keep_one(slot, &has_accounts, changed) => {}
                }
                lock(&slot.sender).take();
            });
        }
        keepers.join_all().await;
    }

    async fn keep_one(
        &self,
        slot: &Slot,
        has_accounts: &(impl Fn() -> bool + Sync),
        mut changed: watch::Receiver<()>,
    ) {
        let mut retry = RETRY_MIN;
        loop {
            until(&mut changed, has_accounts).await;
            let opened = tokio::time::Instant::now();
            let (sender, driving) = match dial(&slot.origin, &self.connector).await {
                Ok(dialled) => dialled,
                Err(e) => {
                    tracing::debug!(origin = %slot.origin, "cannot open a warm connection: {e}");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            };
            tracing::debug!(origin = %slot.origin, http2 = matches!(sender, Sender::Http2(_)), "warm connection open");
            *lock(&slot.sender) = Some(sender);
            tokio::select! {
                () = driving => tracing::debug!(origin = %slot.origin, "the upstream closed the warm connection"),
                () = until(&mut changed, || !has_accounts()) => {}
            }
            lock(&slot.sender).take();
            if opened.elapsed() < STEADY {
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            } else {
                retry = RETRY_MIN;
            }
        }
    }
}

/// Returns once `holds` is true, looking again at each change.
async fn until(changed: &mut watch::Receiver<()>, holds: impl Fn() -> bool) {
    while !holds() {
        if changed.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A new connection to `origin`, and the future that runs it.
async fn dial(origin: &Uri, connector: &Https) -> Result<(Sender, Driving), SendError> {
    let mut connector = connector.clone();
    let io = tower_service::Service::call(&mut connector, origin.clone())
        .await
        .map_err(|e| SendError::new("could not connect", &*e))?;
    let handshake = |e: hyper::Error| SendError::new("could not connect", &e);
    if io.connected().is_negotiated_h2() {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(handshake)?;
        let driving = Box::pin(async move {
            if let Err(e) = connection.await {
                tracing::debug!("warm connection ended: {e}");
            }
        });
        Ok((Sender::Http2(sender), driving))
    } else {
        let (sender, connection) = http1::handshake(io).await.map_err(handshake)?;
        let driving = Box::pin(async move {
            if let Err(e) = connection.await {
                tracing::debug!("warm connection ended: {e}");
            }
        });
        Ok((Sender::Http1(sender), driving))
    }
}

/// `scheme://authority/` of a base URL.
fn origin_of(url: &str) -> Option<Uri> {
    let uri: Uri = url.parse().ok()?;
    Uri::builder()
        .scheme(uri.scheme()?.clone())
        .authority(uri.authority()?.clone())
        .path_and_query("/")
        .build()
        .ok()
}

/// An HTTP/1.1 request line names the path alone; the authority goes in
/// `host` (without the scheme's default port).
fn to_origin_form(request: &mut Request<Body>) {
    let uri = request.uri().clone();
    if let Some(authority) = uri.authority() {
        let default = if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let host = match authority.port_u16() {
            Some(port) if port != default => authority.as_str(),
            _ => authority.host(),
        };
        if let Ok(host) = HeaderValue::from_str(host) {
            request.headers_mut().entry(header::HOST).or_insert(host);
        }
    }
    *request.uri_mut() = uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slot_per_origin_and_bad_urls_left_out() {
        let connector = super::super::connector::connector(false);
        let warm = Warm::new(
            [
                "https://chatgpt.com/backend-api",
                "https://auth.openai.com",
                "https://chatgpt.com/other",
                "not a url",
                "http://127.0.0.1:9/x",
            ],
            connector,
        );
        let origins: Vec<String> = warm.slots.iter().map(|s| s.origin.to_string()).collect();
        assert_eq!(
            origins,
            [
                "https://chatgpt.com/",
                "https://auth.openai.com/",
                "http://127.0.0.1:9/"
            ]
        );
        let uri: Uri = "https://chatgpt.com/backend-api/codex/responses"
            .parse()
            .unwrap();
        assert!(warm.slot_for(&uri).is_some());
        let other: Uri = "https://chatgpt.com:8443/x".parse().unwrap();
        assert!(warm.slot_for(&other).is_none());
    }

    #[test]
    fn origin_form_keeps_the_query_and_names_the_host() {
        let mut request = Request::new(super::super::body::full(""));
        *request.uri_mut() = "http://127.0.0.1:8080/codex/models?client_version=1"
            .parse()
            .unwrap();
        to_origin_form(&mut request);
        assert_eq!(request.uri(), "/codex/models?client_version=1");
        assert_eq!(request.headers()[header::HOST], "127.0.0.1:8080");
        let mut request = Request::new(super::super::body::full(""));
        *request.uri_mut() = "https://chatgpt.com:443/x".parse().unwrap();
        to_origin_form(&mut request);
        assert_eq!(request.headers()[header::HOST], "chatgpt.com");
    }

    #[tokio::test]
    async fn a_request_with_no_free_warm_connection_is_given_back() {
        let warm = Warm::new(
            ["http://127.0.0.1:9"],
            super::super::connector::connector(false),
        );
        let mut request = Request::new(super::super::body::full(""));
        *request.uri_mut() = "http://127.0.0.1:9/x".parse().unwrap();
        let mut request = Some(request);
        assert!(warm.try_send(&mut request).is_none());
        assert!(request.is_some(), "the request stays with the caller");
    }
}
