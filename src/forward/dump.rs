//! Request dumps: each attempt sent to the backend, with what came of it,
//! written off the runtime's threads while the answer goes on.

use std::time::Instant;

use hyper::body::Bytes;
use hyper::header::HeaderMap;
use hyper::{Method, Response};
use time::OffsetDateTime;

use super::body::Body;
use super::{Forwarder, upstream};
use crate::engine::dumps::Dump;

impl Forwarder {
    /// Sends one attempt on `account`, like [`Forwarder::send`]; with dumps
    /// on, `kept` (the body, when it is in memory) and the outcome are
    /// dumped.
    pub(super) async fn send_dumped(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Body,
        kept: Option<&Bytes>,
        account: &str,
    ) -> Result<upstream::Answer, Response<Body>> {
        if !self.shared.dumps.enabled() {
            return self.send(method, url, headers, body).await;
        }
        let (started_at, started) = (OffsetDateTime::now_utc(), Instant::now());
        let sent_headers = headers.clone();
        let answer = self.send(method.clone(), url, headers, body).await;
        let dump = Dump {
            method: method.to_string(),
            url: url.to_owned(),
            account_id: account.to_owned(),
            status: answer.as_ref().ok().map(|a| a.status().as_u16()),
            error: answer
                .as_ref()
                .err()
                .map(|refused| format!("no answer: the forwarder answered {}", refused.status())),
            started_at,
            head_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            headers: sent_headers,
            body: kept.cloned(),
        };
        let engine = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = engine.dumps.write(&dump) {
                tracing::warn!("cannot write a request dump: {e}");
            }
        });
        answer
    }
}
