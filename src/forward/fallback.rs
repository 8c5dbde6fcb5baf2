//! Backend requests with the routed account's credentials, falling back
//! to the next account on 401, 403 or 429 while nothing reached the client.

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;

use super::answer::{body_error, unavailable};
use super::body::{Body, Outgoing, full};
use super::conversation::Conversation;
use super::headers::{CHATGPT_ACCOUNT_ID, declared_length, forwardable, header_str};
use super::metered::{Meter, metered};
use super::relay::{buffer, relay};
use super::{Forwarder, RETRY_BUFFER, named, trace, upstream};
use crate::engine::Engine;
use crate::engine::affinity::Served;
use crate::engine::quota::Source;
use crate::engine::refresh::{Asker, RefreshError};
use crate::engine::routing::{self, Pick, Picked};
use crate::engine::store::Account;
use crate::wire::proto::MIN_TTL;
use crate::wire::usage;

/// The Codex backend's inference route (through either prefix), whose
/// answers are counted.
const INFERENCE: [&str; 2] = ["/codex/responses", "/backend-api/codex/responses"];

impl Forwarder {
    pub(super) async fn to_backend(
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
        // An inference answer is read for its usage: it comes uncompressed.
        let inference = self.shared.config.usage
            && parts.method == Method::POST
            && INFERENCE.contains(&parts.uri.path());
        let client = usage::client(header_str(&parts.headers, header::USER_AGENT));
        let conversation = Conversation::of_request(&parts.headers, outgoing.buffered());
        let mut headers = forwardable(parts.headers, &[header::AUTHORIZATION, CHATGPT_ACCOUNT_ID]);
        if inference {
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        match self
            .with_fallback(
                parts.method,
                &url,
                headers,
                outgoing,
                conversation.as_ref(),
                by,
            )
            .await
        {
            Ok((account, response)) if inference => {
                let meter = Meter::new(self.shared.clone(), &account.id, client);
                metered(relay(response).await, Some(meter))
            }
            Ok((_, response)) => relay(response).await,
            Err(answer) => answer,
        }
    }

    /// The retry loop: returns the first answer that is not a 401/403/429
    /// (with the account that got it), or the last such answer when no
    /// account is left. What each answer says about its account is the
    /// engine's to judge ([`Engine::observe`]). A 401 for a token the
    /// backend no longer takes refreshes that account (once, shared with
    /// every request that got the same 401) and replays the request on it
    /// with the new token; only when that fails does the next account try.
    pub(super) async fn with_fallback(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        mut outgoing: Outgoing,
        conversation: Option<&Conversation>,
        by: &Asker,
    ) -> Result<(Picked, upstream::Answer), Response<Body>> {
        let pinned = conversation.and_then(|c| self.pinned(c));
        let mut tried: Vec<String> = Vec::new();
        let mut replayed: Vec<String> = Vec::new();
        let mut again: Option<Picked> = None;
        let mut last: Option<Response<Body>> = None;
        let mut fell_from: Option<String> = None;
        loop {
            let account = match again.take() {
                Some(account) => account,
                // A request for one named account has no other to try.
                None if last.is_some() && named::account().is_some() => {
                    return Err(last.expect("just checked"));
                }
                None => match self.route(&tried, pinned.as_deref(), by).await {
                    Ok(a) => a,
                    // Used up, every one: the broker's own answer, with the
                    // first reset and `retry-after`, not the last 429.
                    Err(e @ routing::Unavailable::QuotaExhausted { .. }) => {
                        return Err(unavailable(&e));
                    }
                    Err(e) => return Err(last.unwrap_or_else(|| unavailable(&e))),
                },
            };
            let Some(body) = outgoing.attempt() else {
                return Err(last.expect("a streamed body is spent only by an attempt"));
            };
            if let Some(from) = fell_from.take() {
                self.shared.metrics.fell_back(&from);
            }
            trace::routed(&account.id);
            let mut sent = headers.clone();
            self.bearers.set_credentials(&mut sent, &account);
            let kept = outgoing.buffered();
            let response = self
                .send_dumped(method.clone(), url, sent, body, kept, &account.id)
                .await?;
            let status = response.status().as_u16();
            if !Engine::refuses_the_account(status) {
                let response_headers = response.headers();
                self.shared.observe(
                    &account,
                    status,
                    |n| header_str(response_headers, n),
                    None,
                    Source::Headers,
                    by,
                );
                if let Some(conversation) = conversation
                    && (response.status().is_success()
                        || response.status() == StatusCode::SWITCHING_PROTOCOLS)
                {
                    self.served(conversation, &account.id);
                    let kept = outgoing.buffered();
                    self.remember(conversation, &account.id, (&method, url), &headers, kept);
                }
                return Ok((account, response));
            }
            // Read the (small) error body to learn from it and to pass it on.
            let (head, bytes) = buffer(response).await;
            let body = serde_json::from_slice::<Value>(&bytes).ok();
            let observed = self.shared.observe(
                &account,
                status,
                |n| header_str(&head.headers, n),
                body.as_ref(),
                Source::Headers,
                by,
            );
            last = Some(Response::from_parts(head, full(bytes)));
            if !outgoing.replayable() {
                return Err(last.expect("just set"));
            }
            if let Some(refresh) = observed.refresh
                && !replayed.contains(&account.id)
            {
                replayed.push(account.id.clone());
                again = renewed(&account, refresh.await);
                if again.is_some() {
                    tracing::info!(account = %account.id, "backend rejected a live token: replaying with the new one");
                    continue;
                }
            }
            tracing::info!(account = %account.id, status, "backend refused the account; trying the next one");
            if observed.skip {
                tried.push(account.id.clone());
                fell_from = Some(account.id.clone());
            }
        }
    }

    /// The next account to try, none of `tried`: `pinned` first when it
    /// may serve.
    async fn route(
        &self,
        tried: &[String],
        pinned: Option<&str>,
        by: &Asker,
    ) -> Result<Picked, routing::Unavailable> {
        let exclude: Vec<&str> = tried.iter().map(String::as_str).collect();
        let named = named::account();
        let pick = Pick {
            query: named.as_deref(),
            exclude: &exclude,
            chatgpt_only: true,
            prefer: pinned,
            ..Pick::default()
        };
        routing::fresh_account(&self.shared.refresher, pick, MIN_TTL.into(), by).await
    }
}

impl Forwarder {
    /// The account `conversation` is pinned to, while it is active.
    fn pinned(&self, conversation: &Conversation) -> Option<Box<str>> {
        let now = self.shared.refresher.now();
        self.shared.affinity.pinned(&conversation.key, now)
    }

    /// Pins `conversation` to `account`, which served it; a move is logged.
    fn served(&self, conversation: &Conversation, account: &str) {
        let now = self.shared.refresher.now();
        if self.shared.affinity.served(&conversation.key, account, now) == Served::Moved {
            tracing::info!(
                account,
                "a conversation moved to another account, where it stays"
            );
        }
    }
}

/// The account to replay on after `refreshed`: the same one when the refresh
/// gave it another access token than the one `rejected` carried.
fn renewed(rejected: &Account, refreshed: Result<Account, RefreshError>) -> Option<Picked> {
    let token = |a: &Account| a.tokens.as_ref().map(|t| t.access_token.clone());
    match refreshed {
        Ok(account) if token(&account) != token(rejected) => Some(account.into()),
        Ok(_) => None,
        Err(e) => {
            tracing::info!(account = %rejected.id, "the rejected token could not be replaced: {e}");
            None
        }
    }
}
