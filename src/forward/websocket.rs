//! Codex's WebSocket transport: an upgrade of `GET /codex/responses` is
//! forwarded to the backend with the routed account's credentials (falling
//! back to the next account when the handshake is refused), and the frames
//! are relayed as they arrive ([`ws_relay`](super::ws_relay)). What the backend
//! says on the connection about quota and limits is taken in as from HTTP
//! answers.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::answer::error_response;
use super::body::{Body, Outgoing};
use super::conversation::Conversation;
use super::headers::{CHATGPT_ACCOUNT_ID, forwardable, header_str};
use super::relay::relay;
use super::ws_relay::{Ended, Relay};
use super::{Forwarder, upstream};
use crate::engine::Engine;
use crate::engine::config::WebSockets;
use crate::engine::quota::{Quota, Source};
use crate::engine::refresh::Asker;
use crate::engine::store::Account;
use crate::engine::usage::Answered;
use crate::wire::proto::ErrorCode;
use crate::wire::usage;
use crate::wire::ws_message::Deflate;

/// The forwarded WebSocket connections of one forwarder.
pub(super) struct Sessions {
    open: Arc<Semaphore>,
    max_open: usize,
    idle: Duration,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Sessions {
    /// `None` when WebSocket forwarding is off.
    pub(super) fn new(settings: WebSockets) -> Option<Sessions> {
        settings.enabled.then(|| Sessions {
            open: Arc::new(Semaphore::new(settings.max_open)),
            max_open: settings.max_open,
            idle: Duration::from_secs(settings.idle_timeout.max(1).unsigned_abs()),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
        })
    }

    /// Closes every connection (both sides get a close frame, 1001) and
    /// waits for them, at most `grace`.
    pub(super) async fn shutdown(&self, grace: Duration) {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("WebSocket connections still open after {grace:?}; dropping them");
        }
    }
}

/// The backend path whose upgrade is forwarded, for a forwarder path.
pub(super) fn upstream_path(path: &str) -> Option<&'static str> {
    matches!(path, "/codex/responses" | "/backend-api/codex/responses")
        .then_some("/codex/responses")
}

/// What is wrong with a client's handshake (RFC 6455 4.2.1), if anything.
fn handshake_problem(request: &Request<Incoming>) -> Option<&'static str> {
    let headers = request.headers();
    let key_ok = header_str(headers, "sec-websocket-key").is_some_and(|key| {
        base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .is_ok_and(|k| k.len() == 16)
    });
    let asks_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if request.method() != Method::GET {
        Some("a WebSocket handshake is a GET request")
    } else if request.version() != hyper::Version::HTTP_11 {
        Some("a WebSocket handshake needs HTTP/1.1")
    } else if !asks_upgrade {
        Some("a WebSocket handshake needs `connection: upgrade`")
    } else if header_str(headers, "sec-websocket-version").map(str::trim) != Some("13") {
        Some("only WebSocket version 13 is spoken (sec-websocket-version: 13)")
    } else if !key_ok {
        Some("sec-websocket-key must be 16 bytes in base64")
    } else {
        None
    }
}

/// Parameters of permessage-deflate (RFC 7692 7.1) the relay understands.
const DEFLATE_PARAMS: [&str; 4] = [
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
];

/// The client's extension offers the forwarder can pass on: the
/// permessage-deflate offers with parameters it understands. Any other
/// extension would change frames in ways the relay cannot read.
fn deflate_offers(headers: &HeaderMap) -> Option<HeaderValue> {
    let offers: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|offer| {
            let mut parts = offer.split(';').map(str::trim);
            parts.next() == Some("permessage-deflate")
                && parts.all(|p| {
                    let name = p.split_once('=').map_or(p, |(n, _)| n).trim();
                    DEFLATE_PARAMS.contains(&name)
                })
        })
        .take(8)
        .collect();
    if offers.is_empty() {
        return None;
    }
    HeaderValue::from_str(&offers.join(", ")).ok()
}

/// The extension the upstream agreed to: none, or permessage-deflate.
fn agreed_deflate(headers: &HeaderMap) -> Result<Option<Deflate>, String> {
    let agreed: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    match agreed[..] {
        [] => Ok(None),
        [one] => {
            let mut parts = one.split(';').map(str::trim);
            let mut deflate = Deflate::default();
            if parts.next() != Some("permessage-deflate") {
                return Err(format!("an extension it was not offered: {one}"));
            }
            for param in parts {
                let name = param.split_once('=').map_or(param, |(n, _)| n).trim();
                if !DEFLATE_PARAMS.contains(&name) {
                    return Err(format!("an unknown permessage-deflate parameter: {name}"));
                }
                deflate.server_no_context_takeover |= name == "server_no_context_takeover";
                deflate.client_no_context_takeover |= name == "client_no_context_takeover";
            }
            Ok(Some(deflate))
        }
        _ => Err("more than one extension".into()),
    }
}

impl Forwarder {
    /// Forwards a WebSocket handshake to `url` and, once the upstream
    /// switched protocols, relays the connection on a task of its own.
    pub(super) async fn websocket(
        &self,
        mut request: Request<Incoming>,
        url: String,
        by: &Asker,
    ) -> Response<Body> {
        let (sessions, permit) = match self.admit(&request) {
            Ok(admitted) => admitted,
            Err(refused) => return *refused,
        };
        let client_upgrade = hyper::upgrade::on(&mut request);
        let client = usage::client(header_str(request.headers(), header::USER_AGENT));
        let conversation = Conversation::of(request.headers(), None);
        let headers = handshake_headers(request.into_parts().0.headers);
        let handshake = conversation.is_some().then(|| headers.clone());
        let outgoing = Outgoing::Buffered(Bytes::new());
        let (account, response) = match self
            .with_fallback(
                Method::GET,
                &url,
                headers,
                outgoing,
                conversation.as_ref(),
                by,
            )
            .await
        {
            Ok(answer) => answer,
            Err(answer) => return answer,
        };
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return relay(response).await;
        }
        let (head, deflate, upstream) = match switched(response).await {
            Ok(switched) => switched,
            Err(why) => {
                tracing::warn!("the upstream's WebSocket handshake is unusable: {why}");
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::UpstreamBroken,
                    &format!("the upstream's WebSocket handshake is unusable: {why}"),
                );
            }
        };
        // The handshake's URL is the HTTP one of the same route.
        let requests = conversation
            .as_ref()
            .zip(handshake.as_ref())
            .map(|(c, h)| self.websocket_requests(c, &account.id, &url, h));
        let engine = self.shared.clone();
        let observer_by = by.clone();
        let id = account.id.clone();
        let relay = Relay {
            deflate,
            idle: sessions.idle,
            stop: sessions.stop.clone(),
            observer: Box::new(move |text| {
                let seen = Seen {
                    account: &account,
                    client: &client,
                    conversation: conversation.as_ref(),
                };
                observe_event(&engine, &seen, text, &observer_by);
            }),
            requests,
        };
        sessions.tracker.spawn(async move {
            let _permit = permit;
            let client = match client_upgrade.await {
                Ok(client) => TokioIo::new(client),
                Err(e) => {
                    tracing::debug!("the client left before its WebSocket upgrade: {e}");
                    return;
                }
            };
            tracing::debug!(account = %id, "WebSocket connection open");
            match relay.run(client, upstream).await {
                ended @ (Ended::Protocol(_) | Ended::Broken(_)) => {
                    tracing::info!(account = %id, "WebSocket connection ended: {ended}");
                }
                ended => tracing::debug!(account = %id, "WebSocket connection ended: {ended}"),
            }
        });
        let mut answer = Response::new(super::body::full(Bytes::new()));
        *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *answer.headers_mut() = head;
        answer
    }

    /// The sessions and a place among them for a handshake, or why not.
    fn admit(
        &self,
        request: &Request<Incoming>,
    ) -> Result<(&Sessions, OwnedSemaphorePermit), Box<Response<Body>>> {
        let Some(sessions) = &self.websockets else {
            return Err(Box::new(error_response(
                StatusCode::UPGRADE_REQUIRED,
                ErrorCode::WebsocketUnsupported,
                "WebSocket forwarding is off (serve --no-websocket, or websocket = false); use \
                 HTTP (SSE)",
            )));
        };
        if let Some(problem) = handshake_problem(request) {
            return Err(Box::new(error_response(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                problem,
            )));
        }
        let Ok(permit) = sessions.open.clone().try_acquire_owned() else {
            tracing::warn!(
                max = sessions.max_open,
                "refused a WebSocket connection: the limit is reached"
            );
            return Err(Box::new(error_response(
                StatusCode::UPGRADE_REQUIRED,
                ErrorCode::WebsocketUnsupported,
                &format!(
                    "{} WebSocket connections are open, the most allowed (max_websockets); use \
                     HTTP (SSE)",
                    sessions.max_open
                ),
            )));
        };
        Ok((sessions, permit))
    }
}

/// The client's handshake headers as they go upstream: the account's
/// credentials are set by the fallback loop, and only the deflate offers
/// the relay can read pass.
fn handshake_headers(client: HeaderMap) -> HeaderMap {
    let offers = deflate_offers(&client);
    let mut headers = forwardable(
        client,
        &[
            header::AUTHORIZATION,
            CHATGPT_ACCOUNT_ID,
            header::SEC_WEBSOCKET_EXTENSIONS,
        ],
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Some(offers) = offers {
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, offers);
    }
    headers
}

/// The upstream's 101 answer, checked: the head to pass to the client, the
/// deflate it agreed to, and its upgraded connection.
async fn switched(
    response: upstream::Answer,
) -> Result<(HeaderMap, Option<Deflate>, TokioIo<Upgraded>), String> {
    let upgraded_to_websocket = header_str(response.headers(), "upgrade")
        .is_some_and(|u| u.trim().eq_ignore_ascii_case("websocket"));
    if !upgraded_to_websocket {
        return Err("it switched to another protocol than websocket".into());
    }
    let deflate =
        agreed_deflate(response.headers()).map_err(|why| format!("it agreed to {why}"))?;
    let mut head = forwardable(response.headers().clone(), &[header::CONTENT_LENGTH]);
    head.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    head.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let upstream = hyper::upgrade::on(response)
        .await
        .map_err(|e| e.to_string())?;
    Ok((head, deflate, TokioIo::new(upstream)))
}

/// The headers an `error` event carries, as an HTTP answer would.
fn event_headers(event: &Value) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let Some(map) = event.get("headers").and_then(Value::as_object) else {
        return headers;
    };
    for (name, value) in map.iter().take(64) {
        let value = match value {
            Value::String(s) => Cow::Borrowed(s.as_str()),
            Value::Number(n) => Cow::Owned(n.to_string()),
            Value::Bool(b) => Cow::Owned(b.to_string()),
            _ => continue,
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    headers
}

/// Counts one request of `account`: with the tokens of `completed`, the
/// text of its `response.completed` event, or as failed.
fn record_usage(
    engine: &Engine,
    account: &Account,
    client: &str,
    completed: Option<&[u8]>,
    now: i64,
) {
    let completed = completed.and_then(usage::completed_event);
    let answered = Answered {
        account: &account.id,
        client,
        model: completed.as_ref().and_then(|(_, m)| m.as_deref()),
        tokens: completed.as_ref().map(|(t, _)| *t),
    };
    engine.usage.record(&answered, now);
}

/// Whose connection a message of the backend came on.
struct Seen<'a> {
    account: &'a Account,
    client: &'a str,
    conversation: Option<&'a Conversation>,
}

/// Takes in one text message of the backend: a `codex.rate_limits` event
/// updates the account's quota, a `response.completed` counts a request
/// and its tokens, an `error` event counts a failed one and is judged as
/// an HTTP answer with its status, headers and body would be (a limit
/// reached marks the account used up, so that the client's next
/// connection lands on another account).
fn observe_event(engine: &Engine, seen: &Seen<'_>, text: &[u8], by: &Asker) {
    let Seen {
        account, client, ..
    } = *seen;
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<Cow<'a, str>>,
    }
    // Only the type is read of every event; the two that matter are parsed.
    let Ok(Kind { kind: Some(kind) }) = serde_json::from_slice::<Kind>(text) else {
        return;
    };
    let counted = engine.config.usage;
    let now = engine.refresher.now();
    if kind == "response.completed" {
        // A turn on the connection: its conversation is active.
        if let Some(conversation) = seen.conversation {
            engine.affinity.served(&conversation.key, &account.id, now);
        }
        if counted {
            record_usage(engine, account, client, Some(text), now);
        }
        return;
    }
    if !matches!(&*kind, "codex.rate_limits" | "error") {
        return;
    }
    let Ok(event) = serde_json::from_slice::<Value>(text) else {
        return;
    };
    if kind == "error" && counted {
        record_usage(engine, account, client, None, now);
    }
    if kind == "codex.rate_limits" {
        engine.record_quota(
            &account.id,
            Quota::from_rate_limits_event(&event, now),
            false,
        );
        return;
    }
    let usage_limit =
        event.pointer("/error/type").and_then(Value::as_str) == Some("usage_limit_reached");
    let status = event
        .get("status")
        .or_else(|| event.get("status_code"))
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| (400..600).contains(s))
        .or(usage_limit.then_some(429));
    let Some(status) = status else { return };
    let headers = event_headers(&event);
    let observed = engine.observe(
        account,
        status,
        |n| header_str(&headers, n),
        Some(&event),
        Source::Headers,
        by,
    );
    if observed.skip {
        tracing::info!(account = %account.id, status, "the backend refused the account on an open WebSocket connection");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_deflate_offers_it_can_read_are_passed_on() {
        let offered = headers(&[(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits, x-webkit-deflate-frame, \
             permessage-deflate; mystery=1",
        )]);
        assert_eq!(
            deflate_offers(&offered).unwrap(),
            "permessage-deflate; client_max_window_bits"
        );
        let none = headers(&[("sec-websocket-extensions", "x-custom")]);
        assert_eq!(deflate_offers(&none), None);
        assert_eq!(deflate_offers(&HeaderMap::new()), None);
    }

    #[test]
    fn the_upstreams_agreement_is_read_or_refused() {
        let agreed = |v: &str| agreed_deflate(&headers(&[("sec-websocket-extensions", v)]));
        assert_eq!(agreed_deflate(&HeaderMap::new()), Ok(None));
        assert_eq!(
            agreed("permessage-deflate; server_no_context_takeover; client_max_window_bits=15"),
            Ok(Some(Deflate {
                server_no_context_takeover: true,
                client_no_context_takeover: false,
            }))
        );
        assert_eq!(
            agreed("permessage-deflate; client_no_context_takeover"),
            Ok(Some(Deflate {
                server_no_context_takeover: false,
                client_no_context_takeover: true,
            }))
        );
        assert_eq!(agreed("permessage-deflate"), Ok(Some(Deflate::default())));
        assert!(agreed("x-webkit-deflate-frame").is_err());
        assert!(agreed("permessage-deflate; unknown").is_err());
        assert!(agreed("permessage-deflate, permessage-deflate").is_err());
    }

    #[test]
    fn error_event_headers_become_header_values() {
        let event = serde_json::json!({"type": "error", "headers": {
            "X-Codex-Primary-Used-Percent": 100.0, "x-codex-primary-reset-at": "1795363200",
            "x-flag": true, "nested": {"no": 1}, "bad name": "x"}});
        let h = event_headers(&event);
        assert_eq!(h["x-codex-primary-used-percent"], "100.0");
        assert_eq!(h["x-codex-primary-reset-at"], "1795363200");
        assert_eq!(h["x-flag"], "true");
        assert_eq!(h.len(), 3);
    }
}
