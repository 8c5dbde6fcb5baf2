//! Browser login: authorization code with PKCE, received on a local
//! callback server.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::pkce::{Pkce, random_token};
use super::{CLIENT_ID, SCOPE};
use crate::base::secret::Secret;

pub const DEFAULT_PORT: u16 = 1455;
pub const CALLBACK_PATH: &str = "/auth/callback";

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error(
        "port {0} on 127.0.0.1 is in use (is another login running?); pass --port N to use another"
    )]
    PortInUse(u16),
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Listen { port: u16, source: std::io::Error },
    #[error("no answer from the browser within {0} seconds; run the login again")]
    TimedOut(u64),
    #[error("the sign-in failed: {0}")]
    Denied(String),
}

/// A login waiting for its callback.
pub struct PendingLogin {
    listener: TcpListener,
    pub redirect_uri: String,
    pub url: String,
    pub pkce: Pkce,
    state: String,
}

impl PendingLogin {
    /// Binds the callback server on 127.0.0.1:`port` (0 picks a free port)
    /// and builds the authorize URL for `issuer`.
    pub async fn start(issuer: &str, port: u16) -> Result<PendingLogin, BrowserError> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                BrowserError::PortInUse(port)
            } else {
                BrowserError::Listen { port, source: e }
            }
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| BrowserError::Listen { port, source: e })?
            .port();
        let redirect_uri = format!("http://localhost:{bound}{CALLBACK_PATH}");
        let pkce = Pkce::new();
        let state = random_token(32);
        let mut url =
            url::Url::parse(&format!("{issuer}/oauth/authorize")).expect("issuer is a URL");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", CLIENT_ID)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", SCOPE)
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("id_token_add_organizations", "true")
            .append_pair("codex_cli_simplified_flow", "true")
            .append_pair("state", &state);
        Ok(PendingLogin {
            listener,
            redirect_uri,
            url: url.into(),
            pkce,
            state,
        })
    }

    /// Serves the callback until the browser brings a code with the right
    /// state, or `timeout` passes.
    pub async fn code(self, timeout: Duration) -> Result<Secret<String>, BrowserError> {
        let (tx, rx) = oneshot::channel::<Result<Secret<String>, String>>();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let state = Arc::new(self.state);
        let listener = self.listener;
        let serve = async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (tx, state) = (tx.clone(), state.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| callback(req, state.clone(), tx.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        };
        tokio::select! {
            result = rx => match result {
                Ok(Ok(code)) => Ok(code),
                Ok(Err(reason)) => Err(BrowserError::Denied(reason)),
                Err(_) => Err(BrowserError::Denied("the callback server stopped".into())),
            },
            () = serve => unreachable!("the accept loop never ends"),
            () = tokio::time::sleep(timeout) => Err(BrowserError::TimedOut(timeout.as_secs())),
        }
    }
}

type Reply = Arc<Mutex<Option<oneshot::Sender<Result<Secret<String>, String>>>>>;

async fn callback(
    req: Request<Incoming>,
    state: Arc<String>,
    reply: Reply,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != CALLBACK_PATH {
        return Ok(page(
            StatusCode::NOT_FOUND,
            "Not found",
            "This is codex-broker's login callback.",
        ));
    }
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let get = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let outcome = if get("state").as_deref() != Some(state.as_str()) {
        Err("the callback's state does not match this login (a stale or forged link)".to_owned())
    } else if let Some(error) = get("error") {
        Err(match get("error_description") {
            Some(description) => format!("{error}: {description}"),
            None => error,
        })
    } else if let Some(code) = get("code").filter(|c| !c.is_empty()) {
        Ok(Secret::new(code))
    } else {
        Err("the callback carried no code".to_owned())
    };
    let response = match &outcome {
        Ok(_) => page(
            StatusCode::OK,
            "Signed in",
            "codex-broker has your login. You can close this tab and return to the terminal.",
        ),
        Err(reason) => page(StatusCode::BAD_REQUEST, "Sign-in failed", reason),
    };
    if let Some(tx) = reply.lock().expect("reply lock").take() {
        let _ = tx.send(outcome);
    }
    Ok(response)
}

fn page(status: StatusCode, title: &str, text: &str) -> Response<Full<Bytes>> {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>codex-broker: {t}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:32em;margin:4em auto;}}</style>\
         </head><body><h1>{t}</h1><p>{x}</p></body></html>",
        t = escape(title),
        x = escape(text)
    );
    Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(html)))
        .expect("a static response builds")
}
