//! A client of the daemon's socket API, used by `status` and `token` and by
//! programs built on this library.

use std::io;
use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

use crate::base::paths::Paths;
use crate::wire::proto::{ErrorBody, ErrorCode};

/// The header naming the broker home a client works on; a daemon serving
/// another home answers `wrong_home`.
pub const HOME_HEADER: &str = "x-codex-broker-home";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the daemon at {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("the daemon at {path} did not answer: {source}")]
    Http { path: String, source: hyper::Error },
    #[error("the daemon at {path} did not answer within {seconds} s")]
    Timeout { path: String, seconds: u64 },
    #[error("the daemon at {path} answered with something that is not JSON")]
    NotJson { path: String },
    #[error("the daemon at {path} answered with more than {limit} bytes")]
    TooLarge { path: String, limit: usize },
    #[error(
        "the socket {path} is served by uid {uid}, not by you (or root): refusing to talk to it"
    )]
    Untrusted { path: String, uid: u32 },
}

/// The largest answer read from a daemon.
const MAX_ANSWER: usize = 8 * 1024 * 1024;

/// One keep-alive HTTP/1.1 connection to the daemon.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    path: String,
}

impl Connection {
    pub async fn open(socket: &Path) -> Result<Connection, ClientError> {
        let path = socket.display().to_string();
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.clone(),
                source,
            })?;
        // A socket another user serves (planted in a shared directory, say)
        // would be handed credentials and trusted for tokens.
        let uid =
            crate::base::peer::unix_peer_uid(&stream).map_err(|source| ClientError::Connect {
                path: path.clone(),
                source,
            })?;
        if !crate::base::peer::allowed(uid) {
            return Err(ClientError::Untrusted { path, uid });
        }
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ClientError::Http {
                path: path.clone(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("daemon connection ended: {e}");
            }
        });
        Ok(Connection { sender, path })
    }

    /// Sends one request and returns the status and the raw body.
    pub async fn send(
        &mut self,
        method: Method,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), ClientError> {
        let http = |source| ClientError::Http {
            path: self.path.clone(),
            source,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(target)
            .header("host", "localhost");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("a request built from valid parts");
        self.sender.ready().await.map_err(http)?;
        let response = self.sender.send_request(request).await.map_err(http)?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => http(*e),
                Err(_) => ClientError::TooLarge {
                    path: self.path.clone(),
                    limit: MAX_ANSWER,
                },
            })?;
        Ok((status, body.to_bytes()))
    }
}

/// What the daemon said.
#[derive(Debug)]
pub enum Answer {
    /// No daemon listens for this broker home.
    NoDaemon,
    Ok(Value),
    Error {
        status: u16,
        code: ErrorCode,
        message: String,
    },
}

/// How long a command waits for the daemon's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// `GET target` from the daemon serving `paths.home`, if one runs.
pub async fn get(paths: &Paths, target: &str) -> Result<Answer, ClientError> {
    ask(paths, Method::GET, target, None).await
}

/// `POST target` with the JSON `body` to the daemon serving `paths.home`,
/// if one runs.
pub async fn post(paths: &Paths, target: &str, body: &Value) -> Result<Answer, ClientError> {
    let body = serde_json::to_vec(body).expect("JSON always serializes");
    ask(paths, Method::POST, target, Some(body)).await
}

/// The health of the daemon serving `paths.home`; `None` when none runs.
pub fn health(paths: &Paths) -> anyhow::Result<Option<crate::wire::proto::Health>> {
    match blocking(paths, "/v1/health", None)? {
        Answer::Ok(value) => Ok(Some(serde_json::from_value(value)?)),
        Answer::NoDaemon => Ok(None),
        Answer::Error { message, .. } => anyhow::bail!("the daemon: {message}"),
    }
}

/// `GET target`, or `POST target` with `body`, to the daemon serving
/// `paths.home`; blocking, for commands.
pub fn blocking(paths: &Paths, target: &str, body: Option<Value>) -> anyhow::Result<Answer> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = runtime.block_on(async {
        match body {
            Some(body) => post(paths, target, &body).await,
            None => get(paths, target).await,
        }
    })?;
    Ok(answer)
}

async fn ask(
    paths: &Paths,
    method: Method,
    target: &str,
    body: Option<Vec<u8>>,
) -> Result<Answer, ClientError> {
    tokio::time::timeout(ANSWER_TIMEOUT, ask_now(paths, method, target, body))
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Timeout {
                path: paths.socket.display().to_string(),
                seconds: ANSWER_TIMEOUT.as_secs(),
            })
        })
}

async fn ask_now(
    paths: &Paths,
    method: Method,
    target: &str,
    body: Option<Vec<u8>>,
) -> Result<Answer, ClientError> {
    let mut connection = match Connection::open(&paths.socket).await {
        Ok(c) => c,
        Err(ClientError::Connect { source, .. })
            if matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(Answer::NoDaemon);
        }
        Err(e) => return Err(e),
    };
    let home = paths.home.to_string_lossy();
    let (status, body) = connection
        .send(method, target, &[(HOME_HEADER, &home)], body)
        .await?;
    let value: Value = serde_json::from_slice(&body).map_err(|_| ClientError::NotJson {
        path: connection.path.clone(),
    })?;
    if (200..300).contains(&status) {
        return Ok(Answer::Ok(value));
    }
    let error = serde_json::from_value::<ErrorBody>(value)
        .map(|b| b.error)
        .unwrap_or_else(|_| {
            ErrorBody::new(
                ErrorCode::Unknown,
                format!("the daemon answered HTTP {status}"),
            )
            .error
        });
    if error.code == ErrorCode::WrongHome {
        tracing::debug!("the daemon at {} serves another home", connection.path);
        return Ok(Answer::NoDaemon);
    }
    Ok(Answer::Error {
        status,
        code: error.code,
        message: error.message,
    })
}

/// `value` percent-encoded for a query string.
pub fn encode_query_value(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
