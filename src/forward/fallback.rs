//! Backend requests with the routed account's credentials, falling back
//! to the next account on 401, 403 or 429 while nothing reached the client.

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, Response};
use serde_json::Value;

use super::answer::{body_error, unavailable};
use super::body::{Body, Outgoing, full};
use super::headers::{CHATGPT_ACCOUNT_ID, declared_length, forwardable, header_str};
use super::relay::{buffer, relay};
use super::{Forwarder, RETRY_BUFFER, upstream};
use crate::engine::Engine;
use crate::engine::quota::Source;
use crate::engine::refresh::Asker;
use crate::engine::routing::{self, Pick, Picked};
use crate::wire::proto::MIN_TTL;

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
    pub(super) async fn with_fallback(
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
            if !Engine::refuses_the_account(status.as_u16()) {
                let response_headers = response.headers();
                self.shared.observe(
                    &account,
                    status.as_u16(),
                    |n| header_str(response_headers, n),
                    None,
                    Source::Headers,
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
                Source::Headers,
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
}
