//! `/v1/responses`, `/v1/chat/completions` and `/v1/models` for clients of
//! the public OpenAI API: requests are mapped to the shape the Codex
//! backend accepts, over one forwarding path, and a non-streaming client
//! gets the SSE stream assembled into one response.

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::answer::{body_error, error_response, json_response};
use super::body::{Body, Outgoing, full};
use super::conversation::Conversation;
use super::headers::{CHATGPT_ACCOUNT_ID, forwardable, header_str};
use super::metered::{Meter, metered};
use super::relay::{buffer, relay};
use super::{Forwarder, RETRY_BUFFER, chat};
use crate::engine::refresh::Asker;
use crate::wire::chat::{
    ChatRequest, completion, error as chat_error, refused, request as chat_request,
};
use crate::wire::encoding::{DecodeError, decode, is_encoded};
use crate::wire::proto::ErrorCode;
use crate::wire::responses::{MAX_ASSEMBLED, assemble, rewrite};
use crate::wire::usage;

/// The Codex version whose model list `/v1/models` asks for.
const CODEX_CLIENT_VERSION: &str = "0.169.0";
/// The most a request body may expand to when decoded.
const MAX_DECODED: usize = 32 * 1024 * 1024;

/// The public OpenAI dialects spoken on top of the Codex backend: each
/// maps its request to the Responses shape and the answer back; reading,
/// decoding, routing, fallback, affinity, quota and usage are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    /// `/v1/responses`.
    Responses,
    /// `/v1/chat/completions`.
    Chat,
}

/// A public request in the Codex shape, and what its answer needs.
struct Mapped {
    body: Value,
    client_stream: bool,
    /// The chat request's own parts, for a chat answer.
    chat: Option<ChatRequest>,
}

impl Forwarder {
    /// `POST /v1/responses` and `POST /v1/chat/completions`.
    pub(super) async fn public(
        &self,
        request: Request<Incoming>,
        dialect: Dialect,
        by: &Asker,
    ) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let json = match read_json(&parts.headers, body).await {
            Ok(json) => json,
            Err(refused) => return refused,
        };
        let mapped = match map_request(json, dialect) {
            Ok(mapped) => mapped,
            Err(refused) => return *refused,
        };
        let client = usage::client(header_str(&parts.headers, header::USER_AGENT));
        let key = mapped.body.get("prompt_cache_key").and_then(Value::as_str);
        let conversation = Conversation::of(&parts.headers, key);
        let headers = codex_headers(parts.headers);
        let url = format!("{}/codex/responses", self.chatgpt_base);
        let bytes = serde_json::to_vec(&mapped.body).expect("JSON");
        let outgoing = Outgoing::Buffered(Bytes::from(bytes));
        let (account, response) = match self
            .with_fallback(
                Method::POST,
                &url,
                headers,
                outgoing,
                conversation.as_ref(),
                by,
            )
            .await
        {
            Ok(answered) => answered,
            Err(answer) => {
                return match mapped.chat {
                    Some(_) => chat::refusal(answer).await,
                    None => answer,
                };
            }
        };
        let meter = self
            .shared
            .config
            .usage
            .then(|| Meter::new(self.shared.clone(), &account.id, client));
        match (mapped.chat, response.status().is_success()) {
            (Some(_), false) => chat::failed(response, meter).await,
            (None, false) => metered(relay(response).await, meter),
            (Some(chat), true) if chat.stream => {
                let relayed = relay(response).await;
                if relayed.status() != StatusCode::OK {
                    return chat::refusal(relayed).await;
                }
                chat::stream(relayed, meter, &chat)
            }
            (None, true) if mapped.client_stream => metered(relay(response).await, meter),
            (chat, true) => self.assembled(response, meter, chat.as_ref()).await,
        }
    }

    /// The answer to a client that asked for no stream: the backend's
    /// stream read whole and folded into one response (or chat
    /// completion).
    async fn assembled(
        &self,
        response: super::upstream::Answer,
        mut meter: Option<Meter>,
        chat: Option<&ChatRequest>,
    ) -> Response<Body> {
        let stream = match collect(response).await {
            Ok(stream) => stream,
            Err(message) => {
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::UpstreamBroken,
                    &message,
                );
            }
        };
        let value = match assemble(&stream) {
            Ok(value) => value,
            Err((status, value)) if chat.is_some() => {
                let body = serde_json::to_vec(&value).expect("JSON always serializes");
                return json_response(status, &chat_error(status.as_u16(), &body));
            }
            Err((status, value)) => return json_response(status, &value),
        };
        let completed = usage::completed_response(&value);
        if let (Some(meter), Some((tokens, model))) = (meter.as_mut(), completed.as_ref()) {
            meter.completed(*tokens, model.as_deref());
        }
        let Some(chat) = chat else {
            return json_response(StatusCode::OK, &value);
        };
        let tokens = completed.as_ref().map(|(tokens, _)| tokens);
        let now = self.shared.refresher.now();
        json_response(
            StatusCode::OK,
            &completion(&value, &chat.model, tokens, now),
        )
    }

    /// `GET /v1/models`: the backend's model list for Codex, in the public
    /// API's list shape.
    pub(super) async fn models(&self, by: &Asker) -> Response<Body> {
        let url = format!(
            "{}/codex/models?client_version={CODEX_CLIENT_VERSION}",
            self.chatgpt_base
        );
        let outgoing = Outgoing::Buffered(Bytes::new());
        let response = match self
            .with_fallback(Method::GET, &url, HeaderMap::new(), outgoing, None, by)
            .await
        {
            Ok((_, response)) => response,
            Err(answer) => return answer,
        };
        let (head, bytes) = buffer(response).await;
        if !head.status.is_success() {
            return Response::from_parts(head, full(bytes));
        }
        let listed: Vec<Value> = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["models"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|m| {
                let id = m["slug"].as_str().or_else(|| m["id"].as_str())?;
                let mut entry = Map::new();
                entry.insert("id".into(), json!(id));
                entry.insert("object".into(), json!("model"));
                entry.insert("created".into(), json!(0));
                entry.insert("owned_by".into(), json!("openai"));
                Some(Value::Object(entry))
            })
            .collect();
        json_response(StatusCode::OK, &json!({"object": "list", "data": listed}))
    }
}

/// The client's request body read (up to [`RETRY_BUFFER`] bytes) and
/// decoded, as JSON; or the answer that refuses it.
async fn read_json(headers: &HeaderMap, body: Incoming) -> Result<Value, Response<Body>> {
    let bytes = match Limited::new(body, RETRY_BUFFER).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                &format!("request bodies are limited to {RETRY_BUFFER} bytes here"),
            ));
        }
        Err(e) => return Err(body_error(e)),
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let plain = decode(encoding, &bytes, MAX_DECODED).map_err(|e| match e {
        DecodeError::TooLarge => error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            &format!("the request body expands to more than {MAX_DECODED} bytes"),
        ),
        DecodeError::Invalid(message) => error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            &format!("the request body: {message}"),
        ),
    })?;
    serde_json::from_slice::<Value>(&plain).map_err(|e| {
        error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            &format!("the request body is not JSON: {e}"),
        )
    })
}

/// A public request mapped to the Codex shape: a chat request to the
/// Responses shape first, then the Responses request fitted to the
/// backend.
fn map_request(json: Value, dialect: Dialect) -> Result<Mapped, Box<Response<Body>>> {
    let invalid = |message: String| {
        Box::new(error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            &message,
        ))
    };
    let (json, chat) = match dialect {
        Dialect::Responses => (json, None),
        Dialect::Chat => {
            let mut chat = chat_request(json).map_err(|refusal| {
                Box::new(json_response(StatusCode::BAD_REQUEST, &refused(&refusal)))
            })?;
            let body = std::mem::take(&mut chat.body);
            (body, Some(chat))
        }
    };
    let (body, client_stream) = rewrite(json).map_err(invalid)?;
    Ok(Mapped {
        body,
        client_stream,
        chat,
    })
}

/// The client's headers as they go to the Codex backend: a JSON body, an
/// SSE answer that comes uncompressed (it may be read here), and none of
/// the public API's own credentials and scopes.
fn codex_headers(client: HeaderMap) -> HeaderMap {
    let mut headers = forwardable(
        client,
        &[
            header::AUTHORIZATION,
            CHATGPT_ACCOUNT_ID,
            header::CONTENT_ENCODING,
            header::CONTENT_LENGTH,
            header::ACCEPT_ENCODING,
            HeaderName::from_static("openai-organization"),
            HeaderName::from_static("openai-project"),
        ],
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    headers
}

/// Reads a whole streamed answer (an SSE stream of a finished response),
/// at most [`MAX_ASSEMBLED`] bytes of it, decoded if the backend
/// compressed it although asked not to.
async fn collect(response: super::upstream::Answer) -> Result<Bytes, String> {
    let encoding = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = match Limited::new(response.into_body(), MAX_ASSEMBLED)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_long()),
        Err(e) => return Err(format!("the backend's stream broke off: {e}")),
    };
    if !is_encoded(encoding.as_deref()) {
        return Ok(bytes);
    }
    match decode(encoding.as_deref(), &bytes, MAX_ASSEMBLED) {
        Ok(plain) => Ok(plain.into()),
        Err(DecodeError::TooLarge) => Err(too_long()),
        Err(DecodeError::Invalid(message)) => Err(format!("the backend's stream: {message}")),
    }
}

fn too_long() -> String {
    format!(
        "the backend's stream grew past {MAX_ASSEMBLED} bytes before the response completed; \
         ask with stream:true for answers this long"
    )
}
