//! A fake OAuth issuer and Codex backend on 127.0.0.1:0 that records every
//! request. Refresh tokens rotate and are single-use, as the real issuer's.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::{TestAccount, now};

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Debug, Clone)]
struct Issued {
    account: TestAccount,
    generation: u64,
}

/// How `/oauth/token` answers refresh requests.
#[derive(Debug, Clone, Default)]
pub enum Refresh {
    /// Rotate the refresh token and answer at once.
    #[default]
    Rotate,
    /// Answer with this status and JSON body; nothing rotates.
    Fail(u16, Value),
    /// Rotate (the old token is spent from then on), then answer only after
    /// this long: a client that dies meanwhile never learns the new tokens.
    RotateThenDelay(Duration),
    /// Close the connection without an answer; nothing rotates.
    Drop,
    /// Rotate (the old token is spent from then on), then close the
    /// connection without an answer: the rotation is lost on the way.
    RotateThenDrop,
    /// Hang this long, then answer 503; nothing rotates.
    Hang(Duration),
}

impl Refresh {
    /// A failure in the issuer's real body shape.
    pub fn error(status: u16, code: &str) -> Refresh {
        Refresh::Fail(
            status,
            json!({"error": {"message": format!("fake issuer says {code}"),
                "type": "invalid_request_error", "param": null, "code": code}}),
        )
    }
}

/// A sign-in in progress at the fake issuer.
#[derive(Debug, Clone)]
struct Grant {
    account: TestAccount,
    /// The PKCE challenge the code is bound to.
    challenge: String,
    redirect_uri: String,
}

#[derive(Debug, Default)]
struct State {
    refresh: Refresh,
    /// The account the next sign-in (browser or device) logs into.
    login_account: Option<TestAccount>,
    /// Authorization codes not yet exchanged.
    codes: HashMap<String, Grant>,
    /// Device polls answered "pending" before the approval.
    device_pending_polls: usize,
    device_polls: usize,
    requests: Vec<Recorded>,
    /// Refresh tokens that may still be spent, and what they belong to.
    live: HashMap<String, Issued>,
    /// Refresh tokens already spent.
    spent: HashSet<String>,
    /// Refresh requests that presented a spent token.
    reused: Vec<String>,
    token_lifetime: i64,
    /// Accounts whose inference requests get 429 usage_limit_reached.
    limited: HashSet<String>,
    /// Per limited account: the `resets_at` its 429 body names, when not
    /// an hour from now.
    limited_until: HashMap<String, i64>,
    /// Error answers of inference are compressed with this coding when the
    /// client accepts it.
    compress_errors: Option<&'static str>,
    /// Compress them even for a client that asked for identity.
    compress_unasked: bool,
    /// Accounts, and access tokens, whose inference requests get 401 (a
    /// revoked access token).
    rejected: HashSet<String>,
    /// The status every inference request gets instead of an answer (a
    /// failure the fallback loop passes on), while set.
    inference_error: Option<u16>,
    /// Per account: the 5-hour used percent sent in quota headers.
    quota: HashMap<String, f64>,
    /// While set, SSE answers hold after their first event until notified.
    hold: Option<Arc<tokio::sync::Notify>>,
    /// SSE answers carry no output item, only their start and usage.
    without_output: bool,
    /// Requests with function tools get a call of the first one.
    call_tools: bool,
    /// SSE answers stream their text as deltas before the whole item.
    text_deltas: bool,
    /// Accounts whose next `response.create` on an open WebSocket gets an
    /// `error` event with 429 usage_limit_reached.
    limited_in_stream: HashSet<String>,
    /// Answer WebSocket upgrades with 426, as a backend without the
    /// transport would.
    no_websocket: bool,
    /// What WebSocket clients sent and how their connections closed.
    websocket: Vec<WsSeen>,
    /// Agree to permessage-deflate when offered, and answer with
    /// compressed frames.
    deflate: bool,
    /// Connections accepted so far, and those closed since.
    connections: usize,
    closed: usize,
}

/// One message a WebSocket client sent the fake (`close <code> <reason>`
/// for a close, `ping`, `binary <len>`), with the account of its
/// connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsSeen {
    pub account: String,
    pub message: String,
}

/// The running fake; it stops when dropped.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    arrived: Arc<Condvar>,
    /// Closes every open connection when sent to.
    hang_up: Arc<tokio::sync::watch::Sender<()>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FakeUpstream {
    pub fn start() -> FakeUpstream {
        let state = Arc::new(Mutex::new(State {
            token_lifetime: 3600,
            ..State::default()
        }));
        let arrived = Arc::new(Condvar::new());
        let hang_up = Arc::new(tokio::sync::watch::Sender::new(()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = (state.clone(), arrived.clone(), hang_up.clone());
        let addr = super::serve_on_loopback(move |listener| async move {
            tokio::select! {
                _ = stopped => {}
                _ = accept_loop(listener, served) => {}
            }
        });
        FakeUpstream {
            addr,
            state,
            arrived,
            hang_up,
            _stop: stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes `account`'s current refresh token valid at this issuer.
    pub fn add_account(&self, account: &TestAccount) {
        self.state.lock().unwrap().live.insert(
            account.refresh_token.clone(),
            Issued {
                account: account.clone(),
                generation: 0,
            },
        );
    }

    /// Lifetime of the access tokens a refresh hands out, in seconds.
    pub fn set_token_lifetime(&self, seconds: i64) {
        self.state.lock().unwrap().token_lifetime = seconds;
    }

    /// The account the next browser or device sign-in logs into, and how
    /// many device polls are answered "pending" first.
    pub fn set_login_account(&self, account: &TestAccount, device_pending_polls: usize) {
        let mut state = self.state.lock().unwrap();
        state.login_account = Some(account.clone());
        state.device_pending_polls = device_pending_polls;
    }

    /// Makes inference for `account_id` answer 429 usage_limit_reached.
    pub fn set_limited(&self, account_id: &str) {
        self.state.lock().unwrap().limited.insert(account_id.into());
    }

    /// Makes inference for `account_id` answer 429 usage_limit_reached with
    /// this `resets_at` in its body (its headers still say an hour).
    pub fn set_limited_until(&self, account_id: &str, resets_at: i64) {
        let mut state = self.state.lock().unwrap();
        state.limited.insert(account_id.into());
        state.limited_until.insert(account_id.into(), resets_at);
    }

    /// Compresses inference error bodies with `coding` whatever the client
    /// accepts, as a backend that ignores `Accept-Encoding` would.
    pub fn compress_errors_unasked(&self, coding: &'static str) {
        let mut state = self.state.lock().unwrap();
        state.compress_errors = Some(coding);
        state.compress_unasked = true;
    }

    /// Makes every inference request answer `status` (a 500, say) while set.
    pub fn fail_inference(&self, status: Option<u16>) {
        self.state.lock().unwrap().inference_error = status;
    }

    /// Compresses inference error bodies with `coding` (`zstd`, `gzip`,
    /// `br`) for clients that accept it, as the real backend does.
    pub fn compress_errors(&self, coding: &'static str) {
        self.state.lock().unwrap().compress_errors = Some(coding);
    }

    /// Makes inference for `account_id` answer 401, as for a revoked token.
    pub fn set_rejected(&self, account_id: &str) {
        self.state
            .lock()
            .unwrap()
            .rejected
            .insert(account_id.into());
    }

    /// Makes inference with this access token answer 401 although its `exp`
    /// is ahead, as the backend does after a plan change or a revocation.
    pub fn reject_token(&self, access_token: &str) {
        self.state
            .lock()
            .unwrap()
            .rejected
            .insert(access_token.into());
    }

    /// Sends quota headers with this 5-hour used percent for `account_id`.
    pub fn set_quota(&self, account_id: &str, five_hour_percent: f64) {
        self.state
            .lock()
            .unwrap()
            .quota
            .insert(account_id.into(), five_hour_percent);
    }

    /// Requests with function tools get, from now on, a call of their
    /// first tool; a request whose input ends with a tool's output, a
    /// message repeating it.
    pub fn call_tools(&self) {
        self.state.lock().unwrap().call_tools = true;
    }

    /// SSE answers from now on stream their text (item added, text
    /// deltas, text done) before the whole item, as the backend does.
    pub fn stream_text(&self) {
        self.state.lock().unwrap().text_deltas = true;
    }

    /// SSE answers from now on carry no output item: created, then
    /// completed with the usage.
    pub fn answer_without_output(&self) {
        self.state.lock().unwrap().without_output = true;
    }

    /// Holds SSE answers after their first event until the returned
    /// `Notify` is notified (once per held answer).
    pub fn hold_streams(&self) -> Arc<tokio::sync::Notify> {
        let hold = Arc::new(tokio::sync::Notify::new());
        self.state.lock().unwrap().hold = Some(hold.clone());
        hold
    }

    /// Makes the next `response.create` of `account_id` on an open
    /// WebSocket get an `error` event: 429 usage_limit_reached.
    pub fn set_limited_in_stream(&self, account_id: &str) {
        self.state
            .lock()
            .unwrap()
            .limited_in_stream
            .insert(account_id.into());
    }

    /// Agrees to permessage-deflate when a client offers it: the connection
    /// then gets, after the client's first frame, a compressed
    /// `codex.rate_limits` event (the account's quota percent) and a
    /// compressed `response.completed`, sharing one window, then a close.
    pub fn speak_deflate(&self) {
        self.state.lock().unwrap().deflate = true;
    }

    /// Answers WebSocket upgrades with 426 (HTTP only).
    pub fn refuse_websockets(&self) {
        self.state.lock().unwrap().no_websocket = true;
    }

    /// What WebSocket clients sent, in order.
    pub fn websocket_seen(&self) -> Vec<WsSeen> {
        self.state.lock().unwrap().websocket.clone()
    }

    /// Blocks until a WebSocket message satisfying `check` arrived, or
    /// `timeout` passes; returns whether it did.
    pub fn wait_for_websocket(&self, timeout: Duration, check: impl Fn(&WsSeen) -> bool) -> bool {
        let state = self.state.lock().unwrap();
        let (_state, result) = self
            .arrived
            .wait_timeout_while(state, timeout, |s| !s.websocket.iter().any(&check))
            .unwrap();
        !result.timed_out()
    }

    pub fn set_refresh(&self, behaviour: Refresh) {
        self.state.lock().unwrap().refresh = behaviour;
    }

    /// Blocks until `n` requests to `path` have arrived, or `timeout` passes;
    /// returns whether they did.
    pub fn wait_for_requests(&self, path: &str, n: usize, timeout: Duration) -> bool {
        let state = self.state.lock().unwrap();
        let (_state, result) = self
            .arrived
            .wait_timeout_while(state, timeout, |s| {
                s.requests.iter().filter(|r| r.path == path).count() < n
            })
            .unwrap();
        !result.timed_out()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// Closes every connection open now, as a server ending idle
    /// keep-alive connections does, and waits until they are closed.
    pub fn hang_up(&self) {
        let accepted = self.state.lock().unwrap().connections;
        self.hang_up.send_replace(());
        assert!(
            super::wait_until(Duration::from_secs(5), || self.state.lock().unwrap().closed
                >= accepted)
            .is_some(),
            "the fake's connections close"
        );
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        let state = self.state.lock().unwrap();
        state.connections - state.closed
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Spends `account`'s refresh token the way Codex would on its own,
    /// returning the rotated refresh token.
    pub fn spend_as_codex(&self, account: &TestAccount) -> String {
        let request = Recorded {
            method: "POST".into(),
            path: "/oauth/token".into(),
            headers: HashMap::new(),
            body: json!({"grant_type": "refresh_token", "refresh_token": account.refresh_token})
                .to_string()
                .into_bytes(),
        };
        self.state.lock().unwrap().requests.push(request.clone());
        let response = token(&request, &self.state);
        assert_eq!(response.status(), StatusCode::OK);
        let state = self.state.lock().unwrap();
        state
            .live
            .values()
            .find(|i| i.account.id == account.id)
            .map(|i| i.account.refresh_token.clone())
            .unwrap()
    }

    /// The refresh token of `account_id` the issuer would take now.
    pub fn live_refresh_token(&self, account_id: &str) -> Option<String> {
        let state = self.state.lock().unwrap();
        state
            .live
            .iter()
            .filter(|(_, i)| i.account.id == account_id)
            .max_by_key(|(_, i)| i.generation)
            .map(|(token, _)| token.clone())
    }

    /// How many refreshes the issuer answered by rotating.
    pub fn rotations(&self) -> usize {
        self.state.lock().unwrap().spent.len()
    }

    /// Refresh tokens that were presented again after being spent.
    pub fn reused_tokens(&self) -> Vec<String> {
        self.state.lock().unwrap().reused.clone()
    }
}

type Shared = (Arc<Mutex<State>>, Arc<Condvar>);

async fn accept_loop(
    listener: tokio::net::TcpListener,
    (state, arrived, hang_up): (
        Arc<Mutex<State>>,
        Arc<Condvar>,
        Arc<tokio::sync::watch::Sender<()>>,
    ),
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Subscribed before the connection is counted: a hang-up after
        // that reaches it.
        let mut hang_up = hang_up.subscribe();
        state.lock().unwrap().connections += 1;
        let state = state.clone();
        let shared = (state.clone(), arrived.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, shared.clone()));
            let connection = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                _ = connection => {}
                _ = hang_up.changed() => {}
            }
            state.lock().unwrap().closed += 1;
        });
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// Why a connection was closed without an answer.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dropped on purpose")
    }
}

impl std::error::Error for Dropped {}

/// Whether the backend refuses the account or the access token `req` carries.
fn is_rejected(state: &State, req: &Recorded) -> bool {
    let header = |name: &str| req.headers.get(name).map(String::as_str).unwrap_or("");
    let bearer = header("authorization").trim_start_matches("Bearer ");
    state.rejected.contains(header("chatgpt-account-id")) || state.rejected.contains(bearer)
}

async fn handle(
    mut req: Request<Incoming>,
    (state, arrived): Shared,
) -> Result<Response<Body>, Dropped> {
    let upgrade = req
        .headers()
        .get("upgrade")
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
        .then(|| hyper::upgrade::on(&mut req));
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let mut headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    headers.insert("x-fake-query".into(), query);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let recorded = Recorded {
        method,
        path,
        headers,
        body,
    };
    state.lock().unwrap().requests.push(recorded.clone());
    arrived.notify_all();
    Ok(match (recorded.method.as_str(), recorded.path.as_str()) {
        ("GET", "/oauth/authorize") => authorize(&recorded, &state),
        ("POST", "/oauth/revoke") => revoke(&recorded, &state),
        ("POST", "/api/accounts/deviceauth/usercode") => json_response(
            StatusCode::OK,
            json!({"device_auth_id": "dev-auth-1", "user_code": "ABCD-1234", "interval": "1"}),
        ),
        ("POST", "/api/accounts/deviceauth/token") => device_token(&state),
        ("POST", "/oauth/token") if is_form(&recorded) => exchange(&recorded, &state),
        ("POST", "/oauth/token") => {
            let behaviour = state.lock().unwrap().refresh.clone();
            match behaviour {
                Refresh::Rotate => token(&recorded, &state),
                Refresh::Fail(status, body) => {
                    json_response(StatusCode::from_u16(status).unwrap(), body)
                }
                Refresh::RotateThenDelay(delay) => {
                    let response = token(&recorded, &state);
                    tokio::time::sleep(delay).await;
                    response
                }
                Refresh::Drop => return Err(Dropped),
                Refresh::RotateThenDrop => {
                    token(&recorded, &state);
                    return Err(Dropped);
                }
                Refresh::Hang(delay) => {
                    tokio::time::sleep(delay).await;
                    oauth_error(StatusCode::SERVICE_UNAVAILABLE, "hung", "gave up")
                }
            }
        }
        ("POST", p) if p.ends_with("/responses") => {
            let account = recorded
                .headers
                .get("chatgpt-account-id")
                .cloned()
                .unwrap_or_default();
            let (limited, hold, quota, without_output, call_tools, text_deltas) = {
                let s = state.lock().unwrap();
                (
                    s.limited.contains(&account),
                    s.hold.clone(),
                    s.quota.get(&account).copied(),
                    s.without_output,
                    s.call_tools,
                    s.text_deltas,
                )
            };
            let rejected = is_rejected(&state.lock().unwrap(), &recorded);
            let failing = state.lock().unwrap().inference_error;
            let mut response = if let Some(status) = failing {
                json_response(
                    StatusCode::from_u16(status).unwrap(),
                    json!({"error": {"type": "server_error", "message": "the model failed"}}),
                )
            } else if rejected {
                rejected_answer(&state.lock().unwrap(), &recorded)
            } else if limited {
                limited_answer(&state.lock().unwrap(), &recorded, &account)
            } else {
                let request = if call_tools {
                    recorded.json()
                } else {
                    Value::Null
                };
                let answer = sse(&request, hold, without_output);
                if text_deltas {
                    with_text_deltas(answer).await
                } else {
                    answer
                }
            };
            if let Some(percent) = quota.or(limited.then_some(100.0)) {
                let h = response.headers_mut();
                h.insert(
                    "x-codex-primary-used-percent",
                    percent.to_string().parse().unwrap(),
                );
                h.insert("x-codex-primary-window-minutes", "300".parse().unwrap());
                h.insert(
                    "x-codex-primary-reset-at",
                    (now() + 3600).to_string().parse().unwrap(),
                );
                h.insert("x-codex-secondary-used-percent", "12".parse().unwrap());
                h.insert("x-codex-secondary-window-minutes", "10080".parse().unwrap());
            }
            response
        }
        ("GET", p) if p.ends_with("/responses") => match upgrade {
            Some(upgrade) => websocket_handshake(&recorded, upgrade, (state, arrived)),
            None => json_response(StatusCode::UPGRADE_REQUIRED, json!({"error": "use SSE"})),
        },
        ("GET", "/backend-api/wham/usage") => json_response(
            StatusCode::OK,
            json!({"plan_type": "plus", "rate_limit": {"allowed": true, "limit_reached": false,
                "primary_window": {"used_percent": 33.0, "limit_window_seconds": 18000,
                    "reset_after_seconds": 1200, "reset_at": now() + 1200},
                "secondary_window": {"used_percent": 5.0, "limit_window_seconds": 604800,
                    "reset_after_seconds": 86400, "reset_at": now() + 86400}},
                "credits": null}),
        ),
        ("GET", "/backend-api/codex/models") => json_response(
            StatusCode::OK,
            json!({"models": [{"slug": "gpt-5.1-codex", "display_name": "gpt-5.1-codex"},
                {"slug": "gpt-5.1", "display_name": "gpt-5.1"}]}),
        ),
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    })
}

fn is_form(req: &Recorded) -> bool {
    req.headers
        .get("content-type")
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"))
}

fn pairs(text: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

fn s256(verifier: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// `GET /oauth/authorize`: checks the request and redirects back with a code.
fn authorize(req: &Recorded, state: &Mutex<State>) -> Response<Body> {
    let query = pairs(req.headers.get("x-fake-query").map_or("", String::as_str));
    let ok = query.get("response_type").map(String::as_str) == Some("code")
        && query.get("client_id").map(String::as_str) == Some("app_EMoamEEZ73f0CkXaXp7hrann")
        && query.get("code_challenge_method").map(String::as_str) == Some("S256")
        && query.contains_key("state")
        && query.contains_key("code_challenge");
    let mut state = state.lock().unwrap();
    let (Some(account), true, Some(redirect)) =
        (state.login_account.clone(), ok, query.get("redirect_uri"))
    else {
        return json_response(StatusCode::BAD_REQUEST, json!({"error": "invalid_request"}));
    };
    let code = format!("code-{}", state.codes.len() + 1);
    state.codes.insert(
        code.clone(),
        Grant {
            account,
            challenge: query["code_challenge"].clone(),
            redirect_uri: redirect.clone(),
        },
    );
    let mut location = url::Url::parse(redirect).unwrap();
    location
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &query["state"]);
    Response::builder()
        .status(StatusCode::FOUND)
        .header("location", location.as_str())
        .body(full(Bytes::new()))
        .unwrap()
}

/// Device polls: pending (403) a few times, then the code and its verifier.
fn device_token(state: &Mutex<State>) -> Response<Body> {
    let mut state = state.lock().unwrap();
    state.device_polls += 1;
    if state.device_polls <= state.device_pending_polls {
        return json_response(
            StatusCode::FORBIDDEN,
            json!({"error": "authorization_pending"}),
        );
    }
    let Some(account) = state.login_account.clone() else {
        return json_response(
            StatusCode::FORBIDDEN,
            json!({"error": "authorization_pending"}),
        );
    };
    let verifier = format!("device-verifier-{}", state.device_polls);
    let code = format!("device-code-{}", state.device_polls);
    let challenge = s256(&verifier);
    let redirect_uri = "/deviceauth/callback".to_owned();
    state.codes.insert(
        code.clone(),
        Grant {
            account,
            challenge: challenge.clone(),
            redirect_uri,
        },
    );
    json_response(
        StatusCode::OK,
        json!({"authorization_code": code, "code_challenge": challenge, "code_verifier": verifier}),
    )
}

/// `POST /oauth/token` with a form: the authorization-code exchange.
fn exchange(req: &Recorded, state: &Mutex<State>) -> Response<Body> {
    let form = pairs(&String::from_utf8_lossy(&req.body));
    let mut state = state.lock().unwrap();
    let grant = form.get("code").and_then(|c| state.codes.remove(c));
    let valid = grant.as_ref().is_some_and(|g| {
        form.get("grant_type").map(String::as_str) == Some("authorization_code")
            && form.get("client_id").map(String::as_str) == Some("app_EMoamEEZ73f0CkXaXp7hrann")
            && form
                .get("code_verifier")
                .is_some_and(|v| s256(v) == g.challenge)
            && form
                .get("redirect_uri")
                .is_some_and(|r| r.ends_with(&g.redirect_uri))
    });
    let Some(grant) = grant.filter(|_| valid) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "bad authorization code",
        );
    };
    let account = grant.account;
    state.live.insert(
        account.refresh_token.clone(),
        Issued {
            account: account.clone(),
            generation: 0,
        },
    );
    json_response(
        StatusCode::OK,
        json!({
            "id_token": account.id_token(),
            "access_token": account.access_token(),
            "refresh_token": account.refresh_token,
        }),
    )
}

fn json_response(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

fn oauth_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}),
    )
}

/// RFC 7009: the refresh token named (JSON, as Codex sends it) can no
/// longer be spent; any token, known or not, is answered 200.
fn revoke(req: &Recorded, state: &Mutex<State>) -> Response<Body> {
    let body = req.json();
    if body["token_type_hint"] == "refresh_token"
        && body["client_id"] != "app_EMoamEEZ73f0CkXaXp7hrann"
    {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_client", "unknown client");
    }
    if let Some(token) = body["token"].as_str() {
        state.lock().unwrap().live.remove(token);
    }
    json_response(StatusCode::OK, json!({}))
}

fn token(req: &Recorded, state: &Mutex<State>) -> Response<Body> {
    let body = req.json();
    if body["grant_type"] != "refresh_token" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "unsupported grant",
        );
    }
    let presented = body["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut state = state.lock().unwrap();
    let Some(issued) = state.live.remove(&presented) else {
        if state.spent.contains(&presented) {
            state.reused.push(presented);
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "refresh_token_reused",
                "Your refresh token has already been used to generate a new access token. Please try signing in again.",
            );
        }
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "refresh_token_invalidated",
            "Your refresh token was invalidated.",
        );
    };
    state.spent.insert(presented);
    let generation = issued.generation + 1;
    let mut account = issued.account;
    account.refresh_token = format!("rt-{}-{generation}", account.id);
    account.expires_at = now() + state.token_lifetime;
    account.refreshed_at = now();
    let access = account.access_token();
    let response = json!({
        "id_token": account.id_token(),
        "access_token": access,
        "refresh_token": account.refresh_token,
        "expires_in": state.token_lifetime,
    });
    state.live.insert(
        account.refresh_token.clone(),
        Issued {
            account,
            generation,
        },
    );
    json_response(StatusCode::OK, response)
}

/// Answers a WebSocket upgrade as the Codex backend does: 429 or 401 for
/// an account that is used up or rejected, 426 when WebSockets are off,
/// else 101, and then serves the connection.
fn websocket_handshake(
    req: &Recorded,
    upgrade: hyper::upgrade::OnUpgrade,
    (state, arrived): Shared,
) -> Response<Body> {
    let account = req
        .headers
        .get("chatgpt-account-id")
        .cloned()
        .unwrap_or_default();
    {
        let s = state.lock().unwrap();
        if s.no_websocket {
            return json_response(StatusCode::UPGRADE_REQUIRED, json!({"error": "use SSE"}));
        }
        if is_rejected(&s, req) {
            return rejected_answer(&s, req);
        }
        if s.limited.contains(&account) {
            let mut response = limited_answer(&s, req, &account);
            response
                .headers_mut()
                .insert("x-codex-primary-used-percent", "100".parse().unwrap());
            return response;
        }
    }
    let key = req
        .headers
        .get("sec-websocket-key")
        .cloned()
        .unwrap_or_default();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let offered_deflate = req
        .headers
        .get("sec-websocket-extensions")
        .is_some_and(|e| e.contains("permessage-deflate"));
    let (deflate, quota) = {
        let s = state.lock().unwrap();
        (s.deflate && offered_deflate, s.quota.get(&account).copied())
    };
    if deflate {
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            serve_deflate(TokioIo::new(upgraded), quota.unwrap_or(0.0)).await;
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", accept)
            .header("sec-websocket-extensions", "permessage-deflate")
            .body(full(Bytes::new()))
            .unwrap();
    }
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        serve_websocket(ws, account, (state, arrived)).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-accept", accept)
        .header("x-codex-turn-state", "turn-state-from-backend")
        .header("x-reasoning-included", "true")
        .body(full(Bytes::new()))
        .unwrap()
}

/// A permessage-deflate connection, written frame by frame: waits for the
/// client's first bytes, then sends two compressed text messages sharing
/// one window and a close.
async fn serve_deflate<S>(mut io: S, percent: f64)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use flate2::{Compress, Compression, FlushCompress};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut first = [0u8; 1024];
    if !matches!(io.read(&mut first).await, Ok(n) if n > 0) {
        return;
    }
    let events = [
        json!({"type": "codex.rate_limits", "rate_limits": {
            "primary": {"used_percent": percent, "window_minutes": 300, "reset_at": now() + 3600},
            "secondary": null}}),
        json!({"type": "response.completed", "response": {"id": "resp_deflate"}}),
    ];
    let mut compressor = Compress::new(Compression::default(), false);
    let mut frames = Vec::new();
    for event in events {
        let mut payload = Vec::with_capacity(256);
        compressor
            .compress_vec(
                event.to_string().as_bytes(),
                &mut payload,
                FlushCompress::Sync,
            )
            .unwrap();
        payload.truncate(payload.len() - 4);
        assert!(payload.len() < 126, "a one-byte length");
        frames.extend([0x80 | 0x40 | 0x1, payload.len() as u8]);
        frames.extend(payload);
    }
    frames.extend([0x88, 0x02, 0x03, 0xe8]);
    let _ = io.write_all(&frames).await;
    let _ = io.flush().await;
}

fn usage_limit_body() -> Value {
    usage_limit_until(None)
}

fn usage_limit_until(resets_at: Option<i64>) -> Value {
    json!({"error": {"type": "usage_limit_reached",
        "message": "The usage limit has been reached", "plan_type": "plus",
        "resets_at": resets_at.unwrap_or_else(|| now() + 3600)}})
}

/// An inference error answer, its body compressed as the backend does
/// when it was asked to ([`FakeUpstream::compress_errors`]).
fn error_answer(state: &State, req: &Recorded, status: StatusCode, body: Value) -> Response<Body> {
    let accepted = req
        .headers
        .get("accept-encoding")
        .map_or("", String::as_str);
    let coding = state
        .compress_errors
        .filter(|c| state.compress_unasked || accepted.split(',').any(|a| a.trim() == *c));
    let Some(coding) = coding else {
        return json_response(status, body);
    };
    let plain = body.to_string().into_bytes();
    let packed = match coding {
        "zstd" => zstd::encode_all(&plain[..], 3).unwrap(),
        "gzip" => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, &plain).unwrap();
            gz.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            brotli::BrotliCompress(&mut &plain[..], &mut out, &Default::default()).unwrap();
            out
        }
        other => panic!("no coding {other}"),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-encoding", coding)
        .body(full(packed))
        .unwrap()
}

/// The 429 an account that is used up gets.
fn limited_answer(state: &State, req: &Recorded, account: &str) -> Response<Body> {
    let body = usage_limit_until(state.limited_until.get(account).copied());
    error_answer(state, req, StatusCode::TOO_MANY_REQUESTS, body)
}

/// The 401 a rejected account or token gets.
fn rejected_answer(state: &State, req: &Recorded) -> Response<Body> {
    let body = json!({"error": {"code": "token_revoked", "message": "revoked"}});
    error_answer(state, req, StatusCode::UNAUTHORIZED, body)
}

/// One WebSocket connection: `response.create` is answered with the
/// events of a finished answer (a `codex.rate_limits` event first when the
/// account has quota set); `{"type":"echo"}` texts and binary messages
/// come back as they are; `{"type":"close","code","reason"}` closes with
/// that code.
async fn serve_websocket<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    account: String,
    (state, arrived): Shared,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let record = |message: String| {
        state.lock().unwrap().websocket.push(WsSeen {
            account: account.clone(),
            message,
        });
        arrived.notify_all();
    };
    while let Some(Ok(message)) = ws.next().await {
        let replies: Vec<Message> = match message {
            Message::Text(text) => {
                record(text.to_string());
                let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                match value["type"].as_str() {
                    Some("response.create") => {
                        let (limited, quota) = {
                            let mut s = state.lock().unwrap();
                            (
                                s.limited_in_stream.remove(&account),
                                s.quota.get(&account).copied(),
                            )
                        };
                        if limited {
                            vec![Message::text(
                                json!({"type": "error", "status": 429,
                                    "error": usage_limit_body()["error"],
                                    "headers": {"x-codex-primary-used-percent": "100",
                                        "x-codex-primary-window-minutes": 300}})
                                .to_string(),
                            )]
                        } else {
                            let rate_limits = quota.map(|percent| {
                                json!({"type": "codex.rate_limits", "plan_type": "plus",
                                    "rate_limits": {
                                        "primary": {"used_percent": percent,
                                            "window_minutes": 300, "reset_at": now() + 3600},
                                        "secondary": {"used_percent": 12.0,
                                            "window_minutes": 10080, "reset_at": null}},
                                    "credits": null})
                            });
                            rate_limits
                                .into_iter()
                                .chain(response_events())
                                .map(|e| Message::text(e.to_string()))
                                .collect()
                        }
                    }
                    Some("echo") => vec![Message::Text(text)],
                    Some("close") => vec![Message::Close(Some(CloseFrame {
                        code: (value["code"].as_u64().unwrap_or(1000) as u16).into(),
                        reason: value["reason"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned()
                            .into(),
                    }))],
                    _ => Vec::new(),
                }
            }
            Message::Binary(data) => {
                record(format!("binary {}", data.len()));
                vec![Message::Binary(data)]
            }
            Message::Ping(_) => {
                record("ping".into());
                Vec::new()
            }
            Message::Close(frame) => {
                record(match frame {
                    Some(f) => format!("close {} {}", u16::from(f.code), f.reason),
                    None => "close".into(),
                });
                Vec::new()
            }
            _ => Vec::new(),
        };
        for reply in replies {
            if ws.send(reply).await.is_err() {
                return;
            }
        }
    }
}

/// The model the fake's answers name.
pub const FAKE_MODEL: &str = "gpt-fake-codex";

/// The events of a finished answer: created, one assistant message,
/// completed (with the usage every answer reports: 1200 input tokens, 1024
/// of them cached, 300 output, 128 of them reasoning).
fn response_events() -> Vec<Value> {
    vec![
        json!({"type": "response.created", "response": {"id": "resp_fake"}}),
        json!({"type": "response.output_item.done", "item": {
            "type": "message", "role": "assistant", "id": "msg_fake",
            "content": [{"type": "output_text", "text": "hello from the fake backend"}]
        }}),
        json!({"type": "response.completed", "response": {"id": "resp_fake",
            "model": FAKE_MODEL, "usage": {
            "input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024},
            "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 128},
            "total_tokens": 1500
        }}}),
    ]
}

/// The events of an answer to `request`: with function tools and no tool
/// output yet in its input, a call of the first tool (streamed: added,
/// two argument deltas, done); with a tool's output last, a message that
/// repeats it; else [`response_events`].
fn answer_events(request: &Value) -> Vec<Value> {
    let mut events = response_events();
    let input = request["input"].as_array().cloned().unwrap_or_default();
    let last = input.last().cloned().unwrap_or_default();
    if last["type"] == "function_call_output" {
        events[1]["item"]["content"][0]["text"] = json!(format!(
            "the tool said: {}",
            last["output"].as_str().unwrap_or_default()
        ));
        return events;
    }
    let Some(tool) = request["tools"].as_array().and_then(|t| t.first()).cloned() else {
        return events;
    };
    let name = tool["name"].clone();
    let call = json!({"type": "function_call", "id": "fc_fake", "call_id": "call_fake",
        "name": name, "arguments": "{\"city\":\"Paris\"}"});
    let mut added = call.clone();
    added["arguments"] = json!("");
    let delta = |d: &str| {
        json!({"type": "response.function_call_arguments.delta",
        "output_index": 0, "item_id": "fc_fake", "delta": d})
    };
    events.splice(
        1..2,
        [
            json!({"type": "response.output_item.added", "output_index": 0, "item": added}),
            delta("{\"city\":"),
            delta("\"Paris\"}"),
            json!({"type": "response.output_item.done", "output_index": 0, "item": call}),
        ],
    );
    events
}

/// The SSE events of a finished answer to `request`.
fn sse_events(request: &Value, without_output: bool) -> Vec<String> {
    answer_events(request)
        .iter()
        .filter(|e| !without_output || !e["type"].as_str().unwrap().starts_with("response.output"))
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect()
}

/// `answer` (a whole SSE answer) with each message's text streamed first:
/// item added, the text in two deltas, text done, then the item.
async fn with_text_deltas(answer: Response<Body>) -> Response<Body> {
    let (head, body) = answer.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let mut out = String::new();
    for event in text.split_terminator("\n\n") {
        let data = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or_default();
        let value: Value = serde_json::from_str(data).unwrap_or_default();
        if value["type"] == "response.output_item.done" && value["item"]["type"] == "message" {
            let text = value["item"]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let (a, b) = text.split_at(text.len() / 2);
            let mut added = value["item"].clone();
            added["content"] = json!([]);
            let item_id = value["item"]["id"].clone();
            for e in [
                json!({"type": "response.output_item.added", "output_index": 0, "item": added}),
                json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "item_id": item_id, "delta": a}),
                json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "item_id": item_id, "delta": b}),
                json!({"type": "response.output_text.done", "output_index": 0, "content_index": 0, "item_id": item_id, "text": text}),
            ] {
                out.push_str(&format!(
                    "event: {}\ndata: {e}\n\n",
                    e["type"].as_str().unwrap()
                ));
            }
        }
        out.push_str(event);
        out.push_str("\n\n");
    }
    Response::from_parts(head, full(out))
}

/// An SSE answer; with `hold`, the first event is sent at once and the
/// rest only after `hold` is notified.
fn sse(
    request: &Value,
    hold: Option<Arc<tokio::sync::Notify>>,
    without_output: bool,
) -> Response<Body> {
    let events = sse_events(request, without_output);
    let body = match hold {
        None => full(events.concat()),
        Some(hold) => {
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(4);
            tokio::spawn(async move {
                let _ = tx.send_data(Bytes::from(events[0].clone())).await;
                hold.notified().await;
                for e in &events[1..] {
                    let _ = tx.send_data(Bytes::from(e.clone())).await;
                }
            });
            body.boxed()
        }
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("x-codex-turn-state", "turn-state-from-backend")
        .body(body)
        .unwrap()
}
