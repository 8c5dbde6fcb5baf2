//! The socket API: HTTP/1.1 with JSON bodies over the daemon's Unix socket,
//! for proxies and scripts on the same machine and user.

pub mod client;
mod switches;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::base::peer;
use crate::base::server::{self, Connections, Limits};
use crate::engine::Engine;
use crate::engine::quota::Source;
use crate::engine::refresh::{Asker, RefreshError};
use crate::engine::routing::{self, Pick, Unavailable};
use crate::engine::store::{Account, StoreError};
use crate::wire::proto::{ErrorBody, ErrorCode, MIN_TTL, TokenAnswer};
use crate::wire::view::AccountList;

/// Requests with a larger body get 413.
pub const MAX_BODY: usize = 64 * 1024;
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path}: {message}")]
    Unsafe { path: PathBuf, message: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The socket file; removed when this is dropped, if it is still the one
/// this process created.
pub struct SocketFile {
    path: PathBuf,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Binds the socket at `path`: its directory is created 0700, or must be
/// owned by this user and writable by nobody else; a stale socket left by a
/// dead daemon is replaced; the socket is made 0600.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), SocketError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    prepare_dir(dir)?;
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::Unsafe {
                    path: path.to_owned(),
                    message: "another daemon is listening on this socket".into(),
                });
            }
            fs::remove_file(path).map_err(io_error("cannot remove the stale socket", path))?;
        }
        Ok(_) => {
            return Err(SocketError::Unsafe {
                path: path.to_owned(),
                message: "exists and is not a socket; move it away".into(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("cannot inspect", path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_error("cannot listen on", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(io_error("cannot restrict permissions of", path))?;
    let ino = fs::symlink_metadata(path)
        .map_err(io_error("cannot inspect", path))?
        .ino();
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            ino,
        },
    ))
}

/// Creates the socket directory 0700, or checks that an existing one is
/// owned by this user and writable by nobody else.
pub fn prepare_dir(dir: &Path) -> Result<(), SocketError> {
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_error("cannot create directory", dir));
        }
        Err(e) => return Err(io_error("cannot inspect", dir)(e)),
    };
    let unsafe_dir = |message: String| SocketError::Unsafe {
        path: dir.to_owned(),
        message,
    };
    if !meta.is_dir() {
        return Err(unsafe_dir("is not a directory".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_dir(format!(
            "the socket directory belongs to uid {}, not to you (uid {me}); choose another with --socket",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "the socket directory is writable by others (mode {:o}); run: chmod 700 {}",
            meta.mode() & 0o777,
            dir.display()
        )));
    }
    Ok(())
}

/// Serves the API on `listener` until `shutdown` is cancelled, then lets
/// in-flight requests finish within the grace period.
pub async fn serve(
    listener: UnixListener,
    shared: Arc<Engine>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let connections = Connections::new(limits, "socket");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("socket accept failed: {e}");
                    continue;
                }
            },
        };
        match peer::unix_peer_uid(&stream) {
            Ok(uid) if peer::allowed(uid) => {}
            Ok(uid) => {
                tracing::warn!(uid, "refused a socket connection from another user");
                tokio::spawn(server::refuse(
                    stream,
                    "only the user running the daemon (or root) may use this socket",
                ));
                continue;
            }
            Err(e) => {
                tracing::warn!("cannot tell who connected to the socket: {e}");
                continue;
            }
        }
        let shared = shared.clone();
        let service = service_fn(move |request| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(handle(&shared, request, limits).await) }
        });
        connections.serve(stream, service, permit);
    }
    connections.shutdown().await;
}

/// An API error: HTTP status, stable code and a sentence.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    /// Seconds until waiting may help.
    retry_after: Option<i64>,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message)
    }

    fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
    }
}

impl From<Unavailable> for ApiError {
    fn from(e: Unavailable) -> ApiError {
        let status = match e.code() {
            ErrorCode::UnknownAccount => StatusCode::NOT_FOUND,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut error = ApiError::new(status, e.code(), e.to_string());
        error.retry_after = e.retry_after();
        error
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::internal(e)
    }
}

impl From<RefreshError> for ApiError {
    fn from(e: RefreshError) -> ApiError {
        ApiError::internal(e)
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, APPLICATION_JSON)
        .body(Full::new(Bytes::from(body)))
        .expect("a response built from valid parts")
}

async fn handle(
    shared: &Engine,
    request: Request<Incoming>,
    limits: Limits,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let result = match (&method, path.as_str()) {
        (&Method::GET, "/v1/metrics") => metrics(shared, &request),
        _ => route(shared, request, limits).await.map(|value| {
            let mut body = serde_json::to_vec(&value).expect("JSON always serializes");
            body.push(b'\n');
            (APPLICATION_JSON, body)
        }),
    };
    match result {
        Ok((content_type, body)) => Response::builder()
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a response built from valid parts"),
        Err(e) => {
            tracing::debug!(%method, %path, code = %e.code, "socket request failed: {}", e.message);
            let mut body = ErrorBody::new(e.code, e.message);
            body.error.retry_after = e.retry_after;
            json_response(e.status, body.to_vec())
        }
    }
}

const APPLICATION_JSON: &str = "application/json";

/// `GET /v1/metrics`: the Prometheus text exposition.
fn metrics(
    shared: &Engine,
    request: &Request<Incoming>,
) -> Result<(&'static str, Vec<u8>), ApiError> {
    serves_home(shared, request)?;
    let text = shared.metrics_text()?;
    Ok((crate::engine::metrics::CONTENT_TYPE, text.into_bytes()))
}

/// Refuses a request meant for another broker home.
fn serves_home(shared: &Engine, request: &Request<Incoming>) -> Result<(), ApiError> {
    if let Some(home) = request.headers().get(client::HOME_HEADER)
        && !shared.serves_home(Path::new(&*String::from_utf8_lossy(home.as_bytes())))
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::WrongHome,
            format!(
                "this daemon serves the broker home {}",
                shared.paths.home.display()
            ),
        ));
    }
    Ok(())
}

async fn route(
    shared: &Engine,
    request: Request<Incoming>,
    limits: Limits,
) -> Result<Value, ApiError> {
    serves_home(shared, &request)?;
    let query = parse_query(request.uri().query());
    let path = request.uri().path().to_owned();
    let by = Asker::socket_client(
        request
            .headers()
            .get(hyper::header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
    );
    match (request.method(), path.as_str()) {
        (&Method::GET, "/v1/health") => {
            serde_json::to_value(shared.health()).map_err(ApiError::internal)
        }
        (&Method::GET, "/v1/token") => {
            let min_ttl = min_ttl(&query)?;
            let pick = Pick {
                query: query.get("account").map(String::as_str),
                throttle_forced: true,
                ..Pick::default()
            };
            let account = routing::fresh_account(&shared.refresher, pick, min_ttl, &by).await?;
            token_json(&account)
        }
        (&Method::POST, "/v1/report") => {
            let min_ttl = min_ttl(&query)?;
            let body = read_body(request, limits).await?;
            report(shared, &body, min_ttl, &by).await
        }
        (&Method::GET, "/v1/accounts") => {
            let store = shared.refresher.store().map_err(ApiError::internal)?;
            serde_json::to_value(AccountList::new(&store)).map_err(ApiError::internal)
        }
        (&Method::GET, "/v1/quota") => {
            let store = shared.refresher.store().map_err(ApiError::internal)?;
            Ok(quota_json(&store.accounts))
        }
        (&Method::GET, "/v1/usage") => {
            let now = shared.refresher.now();
            let since = since(&query, now)?;
            Ok(json!({"since": since, "until": now, "rows": shared.usage.totals(since)}))
        }
        (&Method::GET, "/v1/cachekeep") => switches::cachekeep(shared, None),
        (&Method::POST, "/v1/cachekeep") => {
            let on = switches::enabled(&read_body(request, limits).await?)?;
            switches::cachekeep(shared, Some(on))
        }
        (&Method::GET, "/v1/log-level") => switches::log_level(None),
        (&Method::POST, "/v1/log-level") => {
            switches::log_level(Some(&read_body(request, limits).await?))
        }
        (&Method::GET, "/v1/dump") => Ok(switches::dump(shared, None)),
        (&Method::POST, "/v1/dump") => {
            let on = switches::enabled(&read_body(request, limits).await?)?;
            Ok(switches::dump(shared, Some(on)))
        }
        (
            _,
            "/v1/health" | "/v1/token" | "/v1/report" | "/v1/accounts" | "/v1/quota" | "/v1/usage"
            | "/v1/metrics" | "/v1/cachekeep" | "/v1/dump" | "/v1/log-level",
        ) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
            format!("{} does not accept {}", path, request.method()),
        )),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!(
                "no endpoint {path}; the API has /v1/health, /v1/token, /v1/report, /v1/accounts, \
                 /v1/quota, /v1/usage, /v1/metrics, /v1/cachekeep, /v1/dump and /v1/log-level"
            ),
        )),
    }
}

pub fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The start of the span `?since=SECS` asks for, unix seconds: a number
/// below a billion is that many seconds before `now`, a larger one a unix
/// time; without one, the last day.
pub fn since(query: &HashMap<String, String>, now: i64) -> Result<i64, ApiError> {
    const DAY: i64 = 86_400;
    match query.get("since") {
        None => Ok(now - DAY),
        Some(text) => match text.parse::<i64>() {
            Ok(ago @ 0..1_000_000_000) => Ok(now - ago),
            Ok(at) if crate::wire::jwt::plausible_time(at) => Ok(at.min(now)),
            _ => Err(ApiError::bad_request(format!(
                "since must be a number of seconds before now or a unix time, not `{text}`"
            ))),
        },
    }
}

pub fn min_ttl(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    match query.get("min_ttl") {
        None => Ok(MIN_TTL.into()),
        Some(text) => text.parse::<u32>().map(i64::from).map_err(|_| {
            ApiError::bad_request(format!(
                "min_ttl must be a whole number of seconds, not `{text}`"
            ))
        }),
    }
}

async fn read_body(request: Request<Incoming>, limits: Limits) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("request bodies are limited to {MAX_BODY} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let collect = Limited::new(request.into_body(), MAX_BODY).collect();
    match tokio::time::timeout(limits.request_timeout, collect).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} s",
                limits.request_timeout.as_secs_f64()
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad_request(format!(
            "cannot read the request body: {e}"
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

fn token_json(account: &Account) -> Result<Value, ApiError> {
    let view = TokenAnswer::new(account)
        .ok_or_else(|| ApiError::internal(format!("account {} holds no credential", account.id)))?;
    serde_json::to_value(view).map_err(ApiError::internal)
}

fn quota_json(accounts: &[Account]) -> Value {
    let accounts: Vec<Value> = accounts
        .iter()
        .map(|a| {
            let q = a.quota.as_ref();
            json!({
                "account_id": a.id,
                "label": a.label,
                "email": a.email,
                "five_hour": q.and_then(|q| q.five_hour.as_ref()),
                "weekly": q.and_then(|q| q.weekly.as_ref()),
                "source": q.map(|q| q.source.as_str()),
                "observed_at": q.map(|q| q.observed_at),
            })
        })
        .collect();
    json!({ "accounts": accounts })
}

/// What a proxy tells the daemon it saw. Its headers may hold credentials,
/// so it has no `Debug`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    account_id: String,
    status: u16,
    #[serde(default)]
    pub headers: HashMap<String, String>,
    #[serde(default)]
    pub body: Value,
}

/// Reads a `/v1/report` body.
pub fn parse_report(body: &[u8]) -> Result<Report, ApiError> {
    crate::base::json::parse(body)
        .map_err(|problem| ApiError::bad_request(format!("invalid report: {problem}")))
}

async fn report(shared: &Engine, body: &[u8], min_ttl: i64, by: &Asker) -> Result<Value, ApiError> {
    let report = parse_report(body)?;
    let headers: HashMap<String, &str> = report
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    // A body may arrive as the JSON text the proxy saw.
    let upstream_body = match &report.body {
        Value::String(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        other => other.clone(),
    };
    let id = report.account_id.clone();
    let store = shared.refresher.store()?;
    let account = store.get(&id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownAccount,
            format!("no account {id} in the store"),
        )
    })?;
    let observed = shared.observe(
        account,
        report.status,
        |name| headers.get(name).copied(),
        Some(&upstream_body),
        Source::Report,
        by,
    );
    if let Some(saved) = observed.saved {
        let _ = saved.await;
    }
    // A rejected token is refreshed; when that works, the account serves on.
    let mut skip = observed.skip;
    if let Some(refresh) = observed.refresh {
        match refresh.await {
            Ok(_) => skip = false,
            Err(e) => tracing::warn!(account = %id, "refresh after a 401 failed: {e}"),
        }
    }
    let exclude: Vec<&str> = if skip { vec![id.as_str()] } else { Vec::new() };
    let pick = Pick {
        exclude: &exclude,
        throttle_forced: true,
        ..Pick::default()
    };
    let account = routing::fresh_account(&shared.refresher, pick, min_ttl, by).await?;
    token_json(&account)
}
