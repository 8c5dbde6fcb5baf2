//! The forwarder: HTTP on a loopback address. `/oauth` traffic goes to the
//! issuer (refreshes of tokens the broker owns are answered here), Codex
//! traffic goes to the ChatGPT backend with the routed account's
//! credentials, falling back to the next account on 401/403/429.

mod body;
mod frames;
mod responses;
mod upstream;
mod warm;
mod websocket;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::peer;
use crate::proto::{ErrorBody, ErrorCode, MIN_TTL};
use crate::quota::Quota;
use crate::refresh::{Asker, FORCE_REFRESH, RefreshError, recently_refreshed};
use crate::routing::{self, Pick, Picked, Unavailable};
use crate::secret::Secret;
use crate::server::{self, Connections, Limits};
use crate::store::{Account, Kind};
pub use body::{Body, BoxError};
use body::{Chain, Outgoing, full};
pub(crate) use responses::{assemble, rewrite};

/// The forwarder's address unless `--listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1456";
/// Request bodies up to this size are kept for a retry on another account.
pub const RETRY_BUFFER: usize = 32 * 1024 * 1024;
/// Bodies the forwarder reads whole to look into (token requests, errors).
const SMALL_BODY: usize = 1024 * 1024;
/// How long an answer's first bytes are awaited before its head is passed on.
const FIRST_BYTES_WINDOW: Duration = Duration::from_secs(2);

/// Headers that describe one connection, not the message (RFC 9110 7.6.1),
/// and `expect`, which the forwarder answers itself.
const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    header::EXPECT,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether a browser request comes from another site.
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// The account a ChatGPT backend request is for.
const CHATGPT_ACCOUNT_ID: HeaderName = HeaderName::from_static("chatgpt-account-id");

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
        let this = self.clone();
        async move {
            let engine = &this.shared;
            let has_accounts = || {
                engine
                    .refresher
                    .store()
                    .is_ok_and(|s| !s.accounts.is_empty())
            };
            let changed = engine.store_changed.subscribe();
            this.client.warm().keep(has_accounts, changed, stop).await;
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
        if !client_allowed(&stream, client) {
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
    let _ = warm.await;
}

/// Whether the TCP client at `client` runs as the daemon's user or root,
/// where the system can tell (Linux); elsewhere every local client is.
fn client_allowed(stream: &TcpStream, client: SocketAddr) -> bool {
    let local = match stream.local_addr() {
        Ok(local) => local,
        Err(e) => {
            tracing::warn!("cannot tell the forwarder's own address: {e}");
            return false;
        }
    };
    match peer::tcp_peer_uid(local, client) {
        Ok(None) => true,
        Ok(Some(uid)) if peer::allowed(uid) => true,
        Ok(Some(uid)) => {
            tracing::warn!(uid, "refused a forwarder connection from another user");
            false
        }
        Err(e) => {
            tracing::warn!("cannot tell who connected to the forwarder from {client}: {e}");
            false
        }
    }
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

/// A JSON error answer: `{"error":{"code","message"}}`.
pub fn error_response(status: StatusCode, code: ErrorCode, message: &str) -> Response<Body> {
    let body = serde_json::to_value(ErrorBody::new(code, message)).expect("JSON serializes");
    json_response(status, &body)
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(
            serde_json::to_vec(value).expect("JSON always serializes"),
        ))
        .expect("a response built from valid parts")
}

fn unavailable(e: &Unavailable) -> Response<Body> {
    match e {
        Unavailable::QuotaExhausted {
            resets_at,
            quota,
            now,
        } => usage_limit_reached(e, *resets_at, quota.as_deref(), *now),
        _ => error_response(StatusCode::SERVICE_UNAVAILABLE, e.code(), &e.to_string()),
    }
}

/// What the backend answers when an account's quota is used up, for the
/// earliest reset among the accounts: clients (Codex, OpenCode, SDKs) know
/// to wait for it, where a 503 would make them retry at once or ask for a
/// login that fixes nothing.
fn usage_limit_reached(
    e: &Unavailable,
    resets_at: i64,
    quota: Option<&Quota>,
    now: i64,
) -> Response<Body> {
    let retry_after = e.retry_after().unwrap_or_default();
    let body = json!({"error": {
        "type": "usage_limit_reached",
        "code": "usage_limit_reached",
        "message": e.to_string(),
        "resets_at": resets_at,
        "resets_in_seconds": retry_after,
    }});
    let mut response = json_response(StatusCode::TOO_MANY_REQUESTS, &body);
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    for (name, value) in quota.map(|q| q.headers(now)).unwrap_or_default() {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.insert(name, value);
        }
    }
    response
}

/// `headers` without hop-by-hop headers (and those the `connection` header
/// names), without `host`, and with `drop` removed. One pass over the names
/// present: a map with nothing to remove is passed on as it is.
fn forwardable(mut headers: HeaderMap, drop: &[HeaderName]) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let unwanted: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            HOP_BY_HOP.contains(name)
                || **name == header::HOST
                || drop.contains(name)
                || named.contains(name)
        })
        .cloned()
        .collect();
    for name in unwanted {
        headers.remove(name);
    }
    headers
}

/// `base` + `path` + `?query`.
fn upstream_url(base: &str, path: &str, query: Option<&str>) -> String {
    let mut url = String::with_capacity(base.len() + path.len() + 1 + query.map_or(0, str::len));
    url.push_str(base);
    url.push_str(path);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// The `host` of a request addressed to something other than a loopback
/// name: a web page that rebinds its DNS name to 127.0.0.1 must not reach
/// the accounts through a browser.
fn foreign_host(headers: &HeaderMap) -> Option<String> {
    let host = header_str(headers, header::HOST)?;
    (!loopback_authority(host)).then(|| host.to_owned())
}

/// Whether `authority` (`name[:port]`, `[v6][:port]`) names this machine:
/// `localhost` or a loopback address.
fn loopback_authority(authority: &str) -> bool {
    let name = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `origin` is a loopback origin (`http://127.0.0.1:1456`,
/// `http://localhost`, `http://[::1]:8080`): a page served from this
/// machine. `null` and anything else are foreign.
fn loopback_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.contains(['/', '@', '?', '#'])
        && loopback_authority(rest)
}

/// A path segment that is `.` or `..`, spelled plainly or percent-encoded,
/// or a backslash or encoded slash that some servers read as a separator:
/// such a path could reach another upstream path than the route it names.
fn escapes_its_route(path: &str) -> bool {
    let separator =
        |code: &[u8]| code.eq_ignore_ascii_case(b"%5c") || code.eq_ignore_ascii_case(b"%2f");
    path.contains('\\')
        || path.as_bytes().windows(3).any(separator)
        || path.split('/').any(is_dot_segment)
}

/// `.` or `..`, each dot spelled plainly or as `%2e`.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() && dots <= 2 {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [a, b, c, tail @ ..] if [*a, *b, *c].eq_ignore_ascii_case(b"%2e") => tail,
            _ => return false,
        };
        dots += 1;
    }
    rest.is_empty() && (1..=2).contains(&dots)
}

/// What is refused before any routing: CONNECT and absolute-form targets
/// (the forwarder is no proxy), cross-site requests from a browser (a page
/// must not spend the accounts), and paths with dot segments.
fn refuse_before_routing(request: &Request<Incoming>) -> Option<Response<Body>> {
    if request.method() == Method::CONNECT || request.uri().authority().is_some() {
        return Some(error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "the forwarder is not a proxy: send origin-form requests (GET /path)",
        ));
    }
    let hosts = request.headers().get_all(header::HOST).iter().count();
    let ambiguous = match hosts {
        0 if request.version() == hyper::Version::HTTP_11 => {
            Some("an HTTP/1.1 request needs a Host header")
        }
        0 | 1 => None,
        _ => Some("the request has more than one Host header"),
    };
    if let Some(why) = ambiguous {
        return Some(error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            why,
        ));
    }
    let headers = request.headers();
    let foreign_origin = headers
        .get_all(header::ORIGIN)
        .iter()
        .any(|o| !o.to_str().is_ok_and(loopback_origin));
    let cross_site = headers
        .get_all(SEC_FETCH_SITE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    if foreign_origin || cross_site {
        tracing::warn!("refused a cross-site request (a web page?)");
        return Some(error_response(
            StatusCode::FORBIDDEN,
            ErrorCode::ForbiddenOrigin,
            "the forwarder answers no cross-site request: only local tools, and pages served \
             from a loopback origin, may use it",
        ));
    }
    if escapes_its_route(request.uri().path()) {
        return Some(error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "the path has a dot segment (`.` or `..`, plain or percent-encoded) or a \
             backslash; send the path it means",
        ));
    }
    None
}

fn is_websocket(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A bad request body, or a client that went away mid-body.
fn body_error(e: impl std::fmt::Display) -> Response<Body> {
    error_response(
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidRequest,
        &format!("cannot read the request body: {e}"),
    )
}

impl Forwarder {
    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let target = request.uri().clone();
        let path = target.path();
        let url = |base: &str, path: &str| upstream_url(base, path, target.query());
        if let Some(refused) = refuse_before_routing(&request) {
            return refused;
        }
        if let Some(host) = foreign_host(request.headers()) {
            tracing::warn!(%host, "refused a request for another host name (DNS rebinding?)");
            return error_response(
                StatusCode::FORBIDDEN,
                ErrorCode::ForbiddenHost,
                "the forwarder answers only requests addressed to localhost, 127.0.0.1 or [::1]",
            );
        }
        let method = request.method().clone();
        let by = Asker::forwarder_client(header_str(request.headers(), header::USER_AGENT));
        let response = if is_websocket(&request) {
            match websocket::upstream_path(path) {
                Some(upstream) => {
                    let url = url(&self.chatgpt_base, upstream);
                    self.websocket(request, url, &by).await
                }
                None => error_response(
                    StatusCode::UPGRADE_REQUIRED,
                    ErrorCode::WebsocketUnsupported,
                    &format!(
                        "the forwarder relays WebSocket connections only on /codex/responses, \
                         not {path}; use HTTP"
                    ),
                ),
            }
        } else if method == Method::POST && path == "/oauth/token" {
            self.token_endpoint(request, &by).await
        } else if path.starts_with("/oauth/")
            || path.starts_with("/api/accounts/")
            || path == "/codex/device"
            || path.starts_with("/deviceauth/")
        {
            let url = url(&self.issuer, path);
            self.to_issuer(request, url).await
        } else if path.starts_with("/codex/") {
            let url = url(&self.chatgpt_base, path);
            self.to_backend(request, url, &by).await
        } else if let Some(rest) = path.strip_prefix("/backend-api/") {
            let url = url(&self.chatgpt_base, &path["/backend-api".len()..]);
            if rest == "wham/usage" && method == Method::GET {
                self.usage(request, url, &by).await
            } else {
                self.to_backend(request, url, &by).await
            }
        } else if path == "/v1/responses" && method == Method::POST {
            self.responses(request, &by).await
        } else if path == "/v1/models" && method == Method::GET {
            self.models(&by).await
        } else {
            error_response(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                &format!(
                    "the forwarder has no route for {path}; it serves /oauth/*, /codex/*, \
                     /backend-api/*, /v1/responses and /v1/models"
                ),
            )
        };
        tracing::debug!(%method, %path, status = response.status().as_u16(), "forwarded");
        response
    }

    /// Sends a request upstream; a connection failure becomes 502.
    async fn send(
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
        self.client
            .send(method, uri, headers, body)
            .await
            .map_err(|e| {
                let host = authority.as_ref().map_or("", |a| a.host());
                tracing::warn!("upstream {host} failed: {e}");
                error_response(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::UpstreamUnreachable,
                    &format!("cannot reach {host}: {e}"),
                )
            })
    }

    /// Transparent forwarding to the issuer.
    async fn to_issuer(&self, request: Request<Incoming>, url: String) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let headers = forwardable(parts.headers, &[]);
        match self
            .send(
                parts.method,
                &url,
                headers,
                body.map_err(BoxError::from).boxed(),
            )
            .await
        {
            Ok(response) => relay(response).await,
            Err(answer) => answer,
        }
    }

    /// `POST /oauth/token`: refreshes of a token the broker owns are answered
    /// here; everything else goes to the issuer.
    async fn token_endpoint(&self, request: Request<Incoming>, by: &Asker) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let bytes = match Limited::new(body, SMALL_BODY).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => return body_error(e),
        };
        if let Some(refresh_token) = refresh_grant(&parts.headers, &bytes)
            && let Some(answer) = self.answer_refresh(&refresh_token, by).await
        {
            return answer;
        }
        let url = format!("{}/oauth/token", self.issuer);
        let headers = forwardable(parts.headers, &[]);
        match self.send(parts.method, &url, headers, full(bytes)).await {
            Ok(response) => relay(response).await,
            Err(answer) => answer,
        }
    }

    /// The current tokens of the account owning `refresh_token` (current,
    /// retired, or its stand-in), in the issuer's response shape; `None` for
    /// a token the broker does not own. A client that presented a stand-in,
    /// or any client while the store shields auth.json, gets the stand-in
    /// back in place of the refresh token.
    async fn answer_refresh(&self, refresh_token: &str, by: &Asker) -> Option<Response<Body>> {
        let store = self.shared.refresher.store().ok()?;
        let account = store.accounts.iter().find(|a| {
            a.kind == Kind::Chatgpt
                && (a.owns_refresh_token(refresh_token) || a.has_stand_in(refresh_token))
        })?;
        let id = account.id.clone();
        let stand_in = account.has_stand_in(refresh_token);
        let shielded = (stand_in || store.shield)
            .then(|| account.stand_in.clone())
            .flatten();
        let current = stand_in
            || account
                .tokens
                .as_ref()
                .is_some_and(|t| t.refresh_token.expose() == refresh_token);
        let now = self.shared.refresher.now();
        // A client holding the newest tokens asks again: they expire soon or
        // were rejected, so a new access token is due.
        let min_ttl = if current && !recently_refreshed(account, now) {
            FORCE_REFRESH
        } else {
            MIN_TTL.into()
        };
        tracing::info!(account = %id, current, "answered a token refresh for an account the broker owns");
        Some(match self.shared.refresher.fresh(&id, min_ttl, by).await {
            Ok(account) => token_response(&account, shielded.as_ref(), now),
            Err(e @ RefreshError::NeedsLogin { .. }) => json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": {"message": format!("{e}"), "type": "invalid_request_error",
                    "param": null, "code": "refresh_token_invalidated"}}),
            ),
            Err(e) => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::TemporarilyUnavailable,
                &e.to_string(),
            ),
        })
    }

    /// Forwards to the ChatGPT backend with the routed account's
    /// credentials, trying the next usable account after a 401, 403 or 429
    /// as long as nothing reached the client yet.
    async fn to_backend(
        &self,
        request: Request<Incoming>,
        url: String,
        by: &Asker,
    ) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let declared = declared_length(&parts.headers);
        let outgoing = match Outgoing::read(body, declared, RETRY_BUFFER).await {
            Ok(o) => o,
            Err(e) => return body_error(e),
        };
        let headers = forwardable(parts.headers, &[header::AUTHORIZATION, CHATGPT_ACCOUNT_ID]);
        match self
            .with_fallback(parts.method, &url, headers, outgoing, by)
            .await
        {
            Ok((_, response)) => relay(response).await,
            Err(answer) => answer,
        }
    }

    /// The retry loop: returns the first answer that is not a 401/403/429
    /// (with the account that got it), or the last such answer when no
    /// account is left. What each answer says about its account is the
    /// engine's to judge ([`Engine::observe`]).
    async fn with_fallback(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        mut outgoing: Outgoing,
        by: &Asker,
    ) -> Result<(Picked, upstream::Answer), Response<Body>> {
        let mut tried: Vec<String> = Vec::new();
        let mut last: Option<Response<Body>> = None;
        loop {
            let exclude: Vec<&str> = tried.iter().map(String::as_str).collect();
            let pick = Pick {
                exclude: &exclude,
                chatgpt_only: true,
                ..Pick::default()
            };
            let fresh =
                routing::fresh_account(&self.shared.refresher, pick, MIN_TTL.into(), by).await;
            let account = match fresh {
                Ok(a) => a,
                Err(e) => return Err(last.unwrap_or_else(|| unavailable(&e))),
            };
            let Some(body) = outgoing.attempt() else {
                return Err(last.expect("a streamed body is spent only by an attempt"));
            };
            let mut headers = headers.clone();
            self.bearers.set_credentials(&mut headers, &account);
            let response = self.send(method.clone(), url, headers, body).await?;
            let status = response.status();
            if !matches!(status.as_u16(), 401 | 403 | 429) {
                let response_headers = response.headers();
                self.shared.observe(
                    &account,
                    status.as_u16(),
                    |n| header_str(response_headers, n),
                    None,
                    "headers",
                    by,
                );
                return Ok((account, response));
            }
            // Read the (small) error body to learn from it and to pass it on.
            let (head, bytes) = buffer(response).await;
            let body = serde_json::from_slice::<Value>(&bytes).ok();
            let observed = self.shared.observe(
                &account,
                status.as_u16(),
                |n| header_str(&head.headers, n),
                body.as_ref(),
                "headers",
                by,
            );
            tracing::info!(account = %account.id, status = status.as_u16(), "backend refused the account; trying the next one");
            // A refresh started for a rejected token runs on without us.
            drop(observed.refresh);
            if observed.skip {
                tried.push(account.id.clone());
            }
            last = Some(Response::from_parts(head, full(bytes)));
            if !outgoing.replayable() {
                return Err(last.expect("just set"));
            }
        }
    }

    /// `GET /backend-api/wham/usage`: answered from the backend with fresh
    /// credentials; the quota it reports is stored.
    async fn usage(&self, request: Request<Incoming>, url: String, by: &Asker) -> Response<Body> {
        let (parts, _) = request.into_parts();
        // The answer is read here; it must come uncompressed.
        let headers = forwardable(
            parts.headers,
            &[
                header::AUTHORIZATION,
                CHATGPT_ACCOUNT_ID,
                header::ACCEPT_ENCODING,
            ],
        );
        let outgoing = Outgoing::Buffered(Bytes::new());
        let (account, response) = match self
            .with_fallback(Method::GET, &url, headers, outgoing, by)
            .await
        {
            Ok(r) => r,
            Err(answer) => return answer,
        };
        let (head, bytes) = buffer(response).await;
        if head.status.is_success()
            && let Some(quota) = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|b| Quota::from_usage(&b, self.shared.refresher.now()))
        {
            self.shared.record_quota(&account.id, Some(quota), true);
        }
        Response::from_parts(head, full(bytes))
    }
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `Bearer <access token>` header values, built once per account and
/// token rather than once per request.
#[derive(Default)]
struct Bearers(std::sync::Mutex<HashMap<String, HeaderValue>>);

/// Accounts whose header values are kept; past that the cache starts over.
const BEARERS_MAX: usize = 64;

impl Bearers {
    /// `authorization` and `chatgpt-account-id` of `account`.
    fn set_credentials(&self, headers: &mut HeaderMap, account: &Account) {
        let token = account
            .tokens
            .as_ref()
            .map(|t| t.access_token.expose().as_str())
            .unwrap_or_default();
        if let Some(value) = self.bearer(&account.id, token) {
            headers.insert(header::AUTHORIZATION, value);
        }
        if let Ok(value) = HeaderValue::from_str(&account.id) {
            headers.insert(CHATGPT_ACCOUNT_ID, value);
        }
    }

    fn bearer(&self, id: &str, token: &str) -> Option<HeaderValue> {
        let mut cache = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(value) = cache.get(id)
            && value.as_bytes().strip_prefix(b"Bearer ") == Some(token.as_bytes())
        {
            return Some(value.clone());
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
        value.set_sensitive(true);
        if cache.len() >= BEARERS_MAX {
            cache.clear();
        }
        cache.insert(id.to_owned(), value.clone());
        Some(value)
    }
}

/// The upstream answer, streamed to the client frame by frame. An interim
/// (1xx) answer to a request that asked for no upgrade is a 502.
async fn relay(response: upstream::Answer) -> Response<Body> {
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

/// Reads an upstream answer whole (up to 1 MiB; an error body is small).
async fn buffer(response: upstream::Answer) -> (hyper::http::response::Parts, Bytes) {
    let (mut head, body) = response.into_parts();
    head.headers = forwardable(head.headers, &[header::CONTENT_LENGTH]);
    let bytes = Limited::new(body, SMALL_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (head, bytes)
}

/// The refresh token of a `grant_type=refresh_token` request, JSON or form.
fn refresh_grant(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let form = header_str(headers, header::CONTENT_TYPE)
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let fields: HashMap<String, String> = if form {
        url::form_urlencoded::parse(body).into_owned().collect()
    } else {
        let value: Value = serde_json::from_slice(body).ok()?;
        value
            .as_object()?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect()
    };
    (fields.get("grant_type")?.as_str() == "refresh_token")
        .then(|| fields.get("refresh_token").cloned())
        .flatten()
}

/// The issuer's answer to a refresh, made from `account`'s tokens, with
/// `stand_in` in place of the refresh token when given.
fn token_response(
    account: &Account,
    stand_in: Option<&Secret<String>>,
    now: i64,
) -> Response<Body> {
    let Some(tokens) = &account.tokens else {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "no tokens",
        );
    };
    let mut body = json!({
        "id_token": tokens.id_token.expose(),
        "access_token": tokens.access_token.expose(),
        "refresh_token": stand_in.unwrap_or(&tokens.refresh_token).expose(),
        "token_type": "Bearer",
        "scope": "openid profile email offline_access",
    });
    if let Some(exp) = account.expires_at {
        body["expires_in"] = json!((exp - now).max(0));
    }
    let mut response = json_response(StatusCode::OK, &body);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values_follow_the_token_and_stay_sensitive() {
        let bearers = Bearers::default();
        let first = bearers.bearer("acc-1", "token-1").unwrap();
        assert_eq!(first.as_bytes(), b"Bearer token-1");
        assert!(first.is_sensitive());
        assert_eq!(bearers.bearer("acc-1", "token-1").unwrap(), first);
        // A rotated token replaces the kept value at once.
        assert_eq!(
            bearers.bearer("acc-1", "token-2").unwrap().as_bytes(),
            b"Bearer token-2"
        );
        assert_eq!(
            bearers.bearer("acc-2", "token-1").unwrap().as_bytes(),
            b"Bearer token-1"
        );
        // A token that cannot be a header value gives none.
        assert!(bearers.bearer("acc-3", "bad\ntoken").is_none());
        // Past the bound the cache starts over, and answers stay right.
        for i in 0..(BEARERS_MAX * 2) {
            let value = bearers
                .bearer(&format!("acc-{i}"), &format!("t-{i}"))
                .unwrap();
            assert_eq!(value.as_bytes(), format!("Bearer t-{i}").as_bytes());
        }
        assert!(bearers.0.lock().unwrap().len() <= BEARERS_MAX);
    }

    #[test]
    fn forwardable_drops_every_value_of_each_unwanted_name_and_keeps_the_rest() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, X-Per-Hop"),
            ("connection", "te"),
            ("x-per-hop", "1"),
            ("x-per-hop", "2"),
            ("te", "trailers"),
            ("host", "127.0.0.1:1456"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("authorization", "Bearer client"),
            ("accept", "text/event-stream"),
            ("x-kept", "a"),
            ("x-kept", "b"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let out = forwardable(headers, &[header::AUTHORIZATION]);
        // Names may come in another order; values of one name keep theirs.
        let mut kept: Vec<(&str, &str)> = out
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        kept.sort_by_key(|(name, _)| *name);
        assert_eq!(
            kept,
            [
                ("accept", "text/event-stream"),
                ("x-kept", "a"),
                ("x-kept", "b")
            ]
        );
        let plain: HeaderMap = [(header::ACCEPT, HeaderValue::from_static("*/*"))]
            .into_iter()
            .collect();
        assert_eq!(forwardable(plain.clone(), &[header::AUTHORIZATION]), plain);
    }

    #[test]
    fn upstream_urls_keep_the_query_as_it_came() {
        let base = "https://chatgpt.com/backend-api";
        assert_eq!(
            upstream_url(base, "/codex/models", Some("client_version=0.169.0&x=%20")),
            "https://chatgpt.com/backend-api/codex/models?client_version=0.169.0&x=%20"
        );
        assert_eq!(
            upstream_url(base, "/codex/responses", None),
            "https://chatgpt.com/backend-api/codex/responses"
        );
        assert_eq!(
            upstream_url(base, "/codex/responses", Some("")),
            "https://chatgpt.com/backend-api/codex/responses?"
        );
    }

    #[test]
    fn dot_segments_and_backslashes_are_caught_in_every_spelling() {
        for bad in [
            "/codex/../../../oauth/token",
            "/backend-api/.%2e/.%2e/elsewhere",
            "/backend-api/%2e%2e/x",
            "/backend-api/%2E%2e/x",
            "/codex/./responses",
            "/codex/..",
            "/codex\\..\\oauth",
            "/codex/%5c..",
            "/backend-api/a%2f..%2fb",
            "/codex/%2E",
            "/codex/.%2E/x",
            "/codex/%2F",
            "/codex/%5C",
        ] {
            assert!(escapes_its_route(bad), "{bad}");
        }
        for ok in [
            "/codex/responses",
            "/backend-api/wham/usage",
            "/a/.hidden/b..c",
            "/",
            "/codex/...",
            "/codex/%2e%2e%2e/x",
            "/codex/.%2",
            "/codex/%%2e",
            "/codex/%2e.a",
        ] {
            assert!(!escapes_its_route(ok), "{ok}");
        }
    }

    #[test]
    fn only_loopback_origins_are_local() {
        for ok in [
            "http://127.0.0.1:1456",
            "http://localhost",
            "https://LOCALHOST:3000",
            "http://[::1]:8080",
        ] {
            assert!(loopback_origin(ok), "{ok}");
        }
        for bad in [
            "https://evil.example",
            "null",
            "http://127.0.0.1.evil.example",
            "http://localhost@evil.example",
            "file://",
            "http://10.0.0.1",
        ] {
            assert!(!loopback_origin(bad), "{bad}");
        }
    }

    #[test]
    fn only_loopback_host_names_are_served() {
        let host = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_str(value).unwrap());
            foreign_host(&h)
        };
        for ok in [
            "127.0.0.1:1456",
            "localhost:1456",
            "LOCALHOST",
            "[::1]:1456",
            "127.0.0.2",
        ] {
            assert_eq!(host(ok), None, "{ok}");
        }
        for bad in [
            "evil.example:1456",
            "10.0.0.1:1456",
            "localhost.evil.example",
            "[::2]:1",
        ] {
            assert_eq!(host(bad).as_deref(), Some(bad));
        }
        assert_eq!(foreign_host(&HeaderMap::new()), None);
    }
}
