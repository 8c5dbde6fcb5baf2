//! The forwarder: HTTP on a loopback address. `/oauth` traffic goes to the
//! issuer (refreshes of tokens the broker owns are answered here), Codex
//! traffic goes to the ChatGPT backend with the routed account's
//! credentials, falling back to the next account on 401/403/429.
mod answer;
mod bearers;
mod body;
mod cachekeep;
mod chat;
mod connector;
mod conversation;
mod dashboard;
mod dump;
mod fallback;
mod guard;
mod headers;
mod issuer;
mod metered;
mod named;
mod relay;
mod responses;
mod route;
mod trace;
mod upstream;
mod usage;
mod warm;
mod websocket;
mod ws_relay;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::base::server::{self, Connections, Limits};
use crate::engine::refresh::Asker;
use crate::engine::{Engine, metrics};
use crate::wire::proto::ErrorCode;
pub use answer::error_response;
use bearers::Bearers;
pub use body::{Body, BoxError};
pub use dashboard::page_weight;
use headers::{header_str, is_websocket, upstream_url};
use responses::Dialect;
use route::Route;

/// The forwarder's address unless `--listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1456";
/// Request bodies up to this size are kept for a retry on another account.
pub const RETRY_BUFFER: usize = 32 * 1024 * 1024;
/// Bodies the forwarder reads whole to look into (token requests, errors).
const SMALL_BODY: usize = 1024 * 1024;

/// The forwarder's state.
pub struct Forwarder {
    shared: Arc<Engine>,
    client: upstream::Client,
    issuer: String,
    chatgpt_base: String,
    /// Forwarded WebSocket connections; `None` when upgrades get 426.
    websockets: Option<websocket::Sessions>,
    bearers: Bearers,
}

impl Forwarder {
    pub fn new(shared: Arc<Engine>) -> Forwarder {
        let config = &shared.config;
        let client = upstream::Client::new([config.issuer.as_str(), config.chatgpt_base.as_str()]);
        Forwarder {
            issuer: shared.config.issuer.clone(),
            chatgpt_base: shared.config.chatgpt_base.clone(),
            websockets: websocket::Sessions::new(shared.config.websocket),
            shared,
            client,
            bearers: Bearers::default(),
        }
    }

    /// Keeps a warm connection to each upstream while the store has an
    /// account, until `stop`.
    fn keep_warm(self: &Arc<Self>, stop: CancellationToken) -> impl Future<Output = ()> + use<> {
        let warm = self.client.warm().clone();
        let engine = self.shared.clone();
        async move {
            let changed = engine.store_changed.subscribe();
            let has_accounts = move || {
                engine
                    .refresher
                    .store()
                    .is_ok_and(|s| !s.accounts.is_empty())
            };
            warm.keep(has_accounts, changed, stop).await;
        }
    }
}

/// Serves the forwarder on `listener` until `shutdown`, then lets requests
/// in flight finish within the grace period, and closes WebSocket
/// connections. A request head must arrive within the request timeout.
pub async fn serve(
    listener: TcpListener,
    forwarder: Arc<Forwarder>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let connections = Connections::new(limits, "forwarder");
    let warm = tokio::spawn(forwarder.keep_warm(shutdown.clone()));
    let caches = tokio::spawn(forwarder.keep_caches_warm(shutdown.clone()));
    loop {
        let (stream, client) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("forwarder accept failed: {e}");
                    continue;
                }
            },
        };
        if !guard::client_allowed(&stream, client) {
            tokio::spawn(server::refuse(
                stream,
                "only the user running the daemon (or root) may use the forwarder",
            ));
            continue;
        }
        let _ = stream.set_nodelay(true);
        let forwarder = forwarder.clone();
        let service = service_fn(move |request| {
            let forwarder = forwarder.clone();
            // Boxed: hyper keeps the room of a connection's service future
            // for the connection's life; this way only a pointer, and the
            // request's state only while it is handled.
            async move { Ok::<_, Infallible>(Box::pin(forwarder.handle(request)).await) }
        });
        connections.serve(stream, service, ());
    }
    let websockets = async {
        if let Some(sessions) = &forwarder.websockets {
            sessions.shutdown(limits.grace).await;
        }
    };
    tokio::join!(connections.shutdown(), websockets);
    let _ = tokio::join!(warm, caches);
}

/// Binds the forwarder's address; only loopback addresses are accepted,
/// since whoever reaches the forwarder uses the accounts' credentials.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let parsed: SocketAddr = addr.parse().map_err(|_| {
        anyhow::anyhow!("--listen `{addr}` is not an address such as 127.0.0.1:1456")
    })?;
    if !parsed.ip().is_loopback() {
        anyhow::bail!(
            "--listen {addr}: the forwarder serves only loopback addresses (127.0.0.1, ::1): \
             anyone who reaches it uses your accounts"
        );
    }
    TcpListener::bind(parsed)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

impl Forwarder {
    async fn handle(&self, mut request: Request<Incoming>) -> Response<Body> {
        let name = named::split(request.uri()).map(|(name, uri)| {
            *request.uri_mut() = uri;
            name
        });
        named::scoped(name, self.handle_routed(request)).await
    }

    async fn handle_routed(&self, request: Request<Incoming>) -> Response<Body> {
        let method = request.method().clone();
        let route = Route::of(&method, request.uri().path(), is_websocket(&request));
        let metrics = &self.shared.metrics;
        if let Some(refused) = guard::refuse(&request) {
            metrics.answered("", "refused", refused.status().as_u16());
            return refused;
        }
        let (response, trace) = trace::traced(self.dispatch(route, request)).await;
        let status = response.status().as_u16();
        let account = trace.account.as_deref().unwrap_or_default();
        metrics.answered(account, route.name(), status);
        if let Some(waited) = trace.upstream {
            metrics.upstream(route.name(), waited);
        }
        tracing::debug!(%method, route = route.name(), status, "forwarded");
        response
    }

    async fn dispatch(&self, route: Route, request: Request<Incoming>) -> Response<Body> {
        let target = request.uri().clone();
        let path = target.path();
        let url = |base: &str, path: &str| upstream_url(base, path, target.query());
        let by = Asker::forwarder_client(header_str(request.headers(), header::USER_AGENT));
        match route {
            Route::Websocket => {
                let url = url(&self.chatgpt_base, "/codex/responses");
                self.websocket(request, url, &by).await
            }
            Route::WebsocketElsewhere => error_response(
                StatusCode::UPGRADE_REQUIRED,
                ErrorCode::WebsocketUnsupported,
                &format!(
                    "the forwarder relays WebSocket connections only on /codex/responses, \
                     not {path}; use HTTP"
                ),
            ),
            Route::Token => self.token_endpoint(request, &by).await,
            Route::Revoke => self.revoke_endpoint(request).await,
            Route::Issuer => {
                let url = url(&self.issuer, path);
                self.to_issuer(request, url).await
            }
            Route::Codex => {
                let url = url(&self.chatgpt_base, path);
                self.to_backend(request, url, &by).await
            }
            Route::WhamUsage | Route::BackendApi => {
                let url = url(&self.chatgpt_base, &path["/backend-api".len()..]);
                if route == Route::WhamUsage {
                    self.usage(request, url, &by).await
                } else {
                    self.to_backend(request, url, &by).await
                }
            }
            Route::Responses => self.public(request, Dialect::Responses, &by).await,
            Route::ChatCompletions => self.public(request, Dialect::Chat, &by).await,
            Route::Models => self.models(&by).await,
            Route::Metrics => self.metrics(),
            Route::Dashboard => self.dashboard(request).await,
            Route::Unknown => error_response(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                &format!(
                    "the forwarder has no route for {path}; it serves /oauth/*, /codex/*, \
                     /backend-api/*, /v1/responses, /v1/chat/completions, /v1/models, /metrics \
                     and /ui/"
                ),
            ),
        }
    }

    /// `GET /metrics`: the Prometheus text exposition.
    fn metrics(&self) -> Response<Body> {
        let text = match self.shared.metrics_text() {
            Ok(text) => text,
            Err(e) => {
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    &format!("cannot read the account store: {e}"),
                );
            }
        };
        Response::builder()
            .header(header::CONTENT_TYPE, metrics::CONTENT_TYPE)
            .body(body::full(text))
            .expect("a response built from valid parts")
    }
}
