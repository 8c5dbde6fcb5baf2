//! Keep-warm on the wire: a conversation's latest inference request is
//! kept after it succeeds, and a timer per conversation (a
//! [`DelayQueue`]) sends it again as a shadow when the conversation idles.
//! A shadow goes to the account that served the conversation, and only
//! while that account can serve with the token it has (it never refreshes
//! and never moves); it asks for `store: false`, is read until its first
//! output event (or its end), then dropped; nothing reaches a client.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::time::{DelayQueue, delay_queue};

use super::body::full;
use super::conversation::Conversation;
use super::headers::header_str;
use super::metered::Meter;
use super::{Forwarder, RETRY_BUFFER};
use crate::engine::cachekeep::{MAX_BODY, Next, Shadow};
use crate::engine::quota::Source;
use crate::engine::refresh::Asker;
use crate::engine::routing;
use crate::engine::store::{Account, Kind};
use crate::wire::encoding::decode;
use crate::wire::proto::MIN_TTL;
use crate::wire::sse_scan::SseScan;
use crate::wire::usage::{Tokens, completed_event};
use crate::wire::ws_message::Observer;

/// The client shadows are counted as in usage.
pub const CLIENT: &str = "cachekeep";
/// The longest a shadow may take, answer included.
const SHADOW_TIMEOUT: Duration = Duration::from_secs(120);
/// The inference route, whose requests are kept.
const INFERENCE_SUFFIX: &str = "/codex/responses";

impl Forwarder {
    /// Keeps the latest request of `conversation`, which `account` has
    /// just served, for its shadows.
    pub(super) fn remember(
        &self,
        conversation: &Conversation,
        account: &str,
        (method, url): (&Method, &str),
        headers: &HeaderMap,
        body: Option<&Bytes>,
    ) {
        let keeper = &self.shared.cachekeep;
        let Some(body) = body else { return };
        let inference = method == Method::POST && url.ends_with(INFERENCE_SUFFIX);
        if !inference || body.len() > MAX_BODY || !keeper.keeps(conversation.subagent) {
            return;
        }
        let shadow = Shadow {
            url: url.to_owned(),
            headers: headers.clone(),
            body: body.clone(),
        };
        let now = self.shared.refresher.now();
        keeper.record(
            &conversation.key,
            account,
            conversation.subagent,
            shadow,
            now,
        );
    }

    /// The observer of the client's messages on a WebSocket connection of
    /// `conversation` on `account`: each `response.create` is a real
    /// request; a whole one (chained onto no earlier answer) becomes the
    /// conversation's shadow, sent over HTTP to `url`.
    pub(super) fn websocket_requests(
        &self,
        conversation: &Conversation,
        account: &str,
        url: &str,
        handshake: &HeaderMap,
    ) -> (usize, Observer) {
        let engine = self.shared.clone();
        let conversation = conversation.clone();
        let account: Box<str> = account.into();
        let url = url.to_owned();
        let headers = shadow_headers(handshake);
        let observer = move |text: &[u8]| {
            let keeper = &engine.cachekeep;
            if !keeper.keeps(conversation.subagent) {
                return;
            }
            let now = engine.refresher.now();
            let key = &conversation.key;
            match websocket_request(text) {
                Some(WsRequest::Whole(body)) => {
                    let shadow = Shadow {
                        url: url.clone(),
                        headers: headers.clone(),
                        body,
                    };
                    keeper.record(key, &account, conversation.subagent, shadow, now);
                }
                Some(WsRequest::Chained) => keeper.touch(key, now),
                None => {}
            }
        };
        (MAX_BODY, Box::new(observer))
    }

    /// Runs the conversations' timers until `stop`: each due conversation
    /// gets a shadow, and its timer runs again.
    pub(super) fn keep_caches_warm(
        self: &Arc<Self>,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + use<> {
        let forwarder = self.clone();
        async move {
            let keeper = &forwarder.shared.cachekeep;
            let mut timers = Timers::default();
            let mut shadows = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = keeper.wake.notified() => {
                        for (key, secs) in keeper.take_pending() {
                            timers.start(key, secs);
                        }
                    }
                    Some(key) = timers.fired() => {
                        let now = forwarder.shared.refresher.now();
                        let wait = match keeper.next(&key, now) {
                            Next::Stop => continue,
                            Next::Wait(secs) => secs,
                            Next::Warm { account, shadow } => {
                                shadows.spawn(forwarder.clone().warm(key.clone(), account, shadow));
                                keeper.settings().interval
                            }
                        };
                        timers.start(key, wait);
                    }
                    Some(_) = shadows.join_next() => {}
                }
            }
            shadows.shutdown().await;
        }
    }

    /// One warm of conversation `key`, recorded when it took place.
    async fn warm(self: Arc<Self>, key: Box<str>, account: Box<str>, shadow: Arc<Shadow>) {
        if let Some(tokens) = self.shadow(&account, &shadow).await {
            self.shared.cachekeep.warmed(&key, tokens);
        }
    }

    /// Sends `shadow` on `account`: the tokens the backend reported (if it
    /// did before the first output), or `None` when no warm took place.
    async fn shadow(&self, account: &str, shadow: &Shadow) -> Option<Option<Tokens>> {
        let store = self.shared.refresher.store().ok()?;
        let now = self.shared.refresher.now();
        let account = store.get(account)?;
        if !may_warm(&store, account, now) {
            tracing::debug!(account = %account.id, "no shadow: the account cannot serve now");
            return None;
        }
        let (body, model) = shadow_body(shadow)?;
        let mut headers = shadow.headers.clone();
        for name in [header::CONTENT_ENCODING, header::CONTENT_LENGTH] {
            headers.remove(name);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        self.bearers.set_credentials(&mut headers, account);
        let sent = async {
            let answer = self
                .send_dumped(
                    Method::POST,
                    &shadow.url,
                    headers,
                    full(body.clone()),
                    Some(&body),
                    &account.id,
                )
                .await
                .ok()?;
            self.answered_shadow(account, answer, model.as_deref())
                .await
        };
        tokio::time::timeout(SHADOW_TIMEOUT, sent).await.ok()?
    }

    /// Reads a shadow's answer until its first output event or its end;
    /// what it says about the account is learned (never a refresh).
    async fn answered_shadow(
        &self,
        account: &Account,
        answer: super::upstream::Answer,
        model: Option<&str>,
    ) -> Option<Option<Tokens>> {
        let status = answer.status();
        let meter = self
            .shared
            .config
            .usage
            .then(|| Meter::new(self.shared.clone(), &account.id, CLIENT.into()));
        if status != StatusCode::OK {
            tracing::info!(account = %account.id, %status, "a shadow request was refused");
            return None;
        }
        let (head, body) = answer.into_parts();
        let by = Asker::daemon("keep-warm");
        self.shared.observe(
            account,
            status.as_u16(),
            |n| header_str(&head.headers, n),
            None,
            Source::Headers,
            &by,
        );
        let completed = until_output(body).await;
        if let Some(mut meter) = meter {
            let (tokens, named) = completed.clone().unwrap_or_default();
            meter.completed(tokens, named.as_deref().or(model));
        }
        Some(completed.map(|(tokens, _)| tokens))
    }
}

/// A client's message on a WebSocket connection, as keep-warm sees it.
#[derive(Debug, PartialEq)]
enum WsRequest {
    /// A request that stands alone: its body for HTTP.
    Whole(Bytes),
    /// A request chained onto an earlier answer of the connection, or a
    /// warm-up: the conversation is active, its shadow stays.
    Chained,
}

/// What the message `text` asks, if it is a `response.create`.
fn websocket_request(text: &[u8]) -> Option<WsRequest> {
    let mut body: Map<String, Value> = serde_json::from_slice(text).ok()?;
    if body.shift_remove("type")? != "response.create" {
        return None;
    }
    // Chained onto an earlier answer, or a warm-up that generates nothing
    // (Codex's `generate: false`): not a request to repeat.
    let chained = body
        .get("previous_response_id")
        .is_some_and(|id| !id.is_null());
    if chained || body.get("generate") == Some(&Value::Bool(false)) {
        return Some(WsRequest::Chained);
    }
    let bytes = serde_json::to_vec(&body).ok()?;
    Some(WsRequest::Whole(Bytes::from(bytes)))
}

/// A WebSocket handshake's headers as an HTTP request of the same client
/// carries them.
fn shadow_headers(handshake: &HeaderMap) -> HeaderMap {
    let mut headers = handshake.clone();
    for name in [
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_EXTENSIONS,
    ] {
        headers.remove(name);
    }
    headers.remove("openai-beta");
    headers
}

/// Whether `account` may take a shadow now: it can serve, and its access
/// token stays valid without a refresh.
fn may_warm(store: &crate::engine::store::Store, account: &Account, now: i64) -> bool {
    account.kind == Kind::Chatgpt
        && account.tokens.is_some()
        && account
            .expires_at
            .is_some_and(|exp| exp - now > i64::from(MIN_TTL))
        && routing::blocked(store, account, now).is_none()
}

/// The body of a shadow: the kept body, decoded, with `store: false` and
/// `stream: true`; and the model it names.
fn shadow_body(shadow: &Shadow) -> Option<(Bytes, Option<String>)> {
    let encoding = header_str(&shadow.headers, "content-encoding");
    let plain = decode(encoding, &shadow.body, RETRY_BUFFER).ok()?;
    let mut body: Map<String, Value> = serde_json::from_slice(&plain).ok()?;
    body.insert("store".into(), Value::Bool(false));
    body.insert("stream".into(), Value::Bool(true));
    let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
    let bytes = serde_json::to_vec(&body).ok()?;
    Some((Bytes::from(bytes), model))
}

/// Reads an SSE answer until its first output event or its end: the
/// tokens and model of a `response.completed` met on the way.
async fn until_output<B>(mut body: B) -> Option<(Tokens, Option<String>)>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut scan = SseScan::new("response.");
    let (mut completed, mut done) = (None, false);
    while !done {
        let Some(Ok(frame)) = body.frame().await else {
            break;
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        scan.feed(data, |event| {
            if done {
                return;
            }
            if let Some(found) = completed_event(event) {
                completed = Some(found);
                done = true;
            } else {
                done = ends_the_shadow(event);
            }
        });
    }
    completed
}

/// Whether an event's data is output (the prefix has been read by then)
/// or an end.
fn ends_the_shadow(data: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Event<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    let Ok(event) = serde_json::from_slice::<Event>(data) else {
        return false;
    };
    let kind = event.kind.as_ref();
    [
        "response.output",
        "response.content_part",
        "response.reasoning",
    ]
    .iter()
    .any(|prefix| kind.starts_with(prefix))
        || matches!(
            kind,
            "response.completed" | "response.incomplete" | "response.failed" | "error"
        )
}

/// One timer per conversation.
#[derive(Default)]
struct Timers {
    queue: DelayQueue<Box<str>>,
    running: HashMap<Box<str>, delay_queue::Key>,
}

impl Timers {
    /// Starts the timer of `key` to fire in `secs`, unless one runs.
    fn start(&mut self, key: Box<str>, secs: i64) {
        if let Entry::Vacant(entry) = self.running.entry(key) {
            let delay = Duration::from_secs(u64::try_from(secs).unwrap_or(0));
            let timer = self.queue.insert(entry.key().clone(), delay);
            entry.insert(timer);
        }
    }

    /// The conversation whose timer fires next; `None` at once when no
    /// timer runs.
    async fn fired(&mut self) -> Option<Box<str>> {
        let fired = std::future::poll_fn(|cx| self.queue.poll_expired(cx)).await?;
        let key = fired.into_inner();
        self.running.remove(&key);
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    use super::*;

    fn shadow(headers: &[(&'static str, &'static str)], body: Vec<u8>) -> Shadow {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.insert(*n, HeaderValue::from_static(v));
        }
        Shadow {
            url: "http://127.0.0.1:9/codex/responses".into(),
            headers: map,
            body: Bytes::from(body),
        }
    }

    #[test]
    fn a_shadow_asks_to_store_nothing_and_streams() {
        let plain = br#"{"model":"m","store":true,"stream":false,"input":[1]}"#;
        let zstd = zstd::encode_all(&plain[..], 3).unwrap();
        for kept in [
            shadow(&[], plain.to_vec()),
            shadow(&[("content-encoding", "zstd")], zstd),
        ] {
            let (body, model) = shadow_body(&kept).unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["store"], false);
            assert_eq!(body["stream"], true);
            assert_eq!(body["input"], serde_json::json!([1]));
            assert_eq!(model.as_deref(), Some("m"));
        }
        assert!(shadow_body(&shadow(&[], b"not json".to_vec())).is_none());
        assert!(shadow_body(&shadow(&[], b"[1]".to_vec())).is_none());
    }

    fn stream(events: &[&str]) -> impl hyper::body::Body<Data = Bytes> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = events
            .iter()
            .map(|e| Ok(Frame::data(Bytes::from(format!("data: {e}\n\n")))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[test]
    fn a_whole_websocket_request_becomes_a_body_and_a_chained_one_does_not() {
        let whole = br#"{"type":"response.create","model":"m","input":[1],"store":false}"#;
        let Some(WsRequest::Whole(body)) = websocket_request(whole) else {
            panic!("a whole request");
        };
        assert_eq!(&body[..], br#"{"model":"m","input":[1],"store":false}"#);
        let unchained = br#"{"type":"response.create","previous_response_id":null,"input":[]}"#;
        assert!(matches!(
            websocket_request(unchained),
            Some(WsRequest::Whole(_))
        ));
        let chained = br#"{"type":"response.create","previous_response_id":"resp_1","input":[]}"#;
        assert_eq!(websocket_request(chained), Some(WsRequest::Chained));
        let prewarm = br#"{"type":"response.create","generate":false,"input":[]}"#;
        assert_eq!(websocket_request(prewarm), Some(WsRequest::Chained));
        for other in [
            &br#"{"type":"response.cancel"}"#[..],
            b"{}",
            b"[1]",
            b"nope",
        ] {
            assert_eq!(websocket_request(other), None);
        }
        let mut handshake = HeaderMap::new();
        for (n, v) in [
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-key", "k"),
            ("openai-beta", "responses_websockets=2026-02-06"),
            ("session-id", "s1"),
        ] {
            handshake.insert(n, HeaderValue::from_static(v));
        }
        let headers = shadow_headers(&handshake);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["session-id"], "s1");
    }

    #[tokio::test]
    async fn the_answer_is_read_until_its_first_output_or_its_end() {
        let usage = r#"{"type":"response.completed","response":{"usage":{"input_tokens":900,"input_tokens_details":{"cached_tokens":896}}}}"#;
        let created = r#"{"type":"response.created","response":{}}"#;
        let output = r#"{"type":"response.output_item.added","item":{}}"#;
        let (tokens, _) = until_output(stream(&[created, usage])).await.unwrap();
        assert_eq!((tokens.input, tokens.cached_input), (900, 896));
        // Output first: the shadow stops there, before the usage.
        assert_eq!(until_output(stream(&[created, output, usage])).await, None);
        assert_eq!(until_output(stream(&[created])).await, None);
        assert!(ends_the_shadow(
            br#"{"type":"response.reasoning_summary_text.delta"}"#
        ));
        assert!(!ends_the_shadow(br#"{"type":"response.in_progress"}"#));
        assert!(!ends_the_shadow(b"garbage"));
    }
}
