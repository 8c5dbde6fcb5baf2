//! `GET /backend-api/wham/usage`: the backend's answer, whose quota is kept.

use hyper::body::{Bytes, Incoming};
use hyper::header;
use hyper::{Method, Request, Response};
use serde_json::Value;

use super::Forwarder;
use super::body::{Body, Outgoing, full};
use super::headers::{CHATGPT_ACCOUNT_ID, forwardable};
use super::relay::buffer;
use crate::engine::quota::Quota;
use crate::engine::refresh::Asker;

impl Forwarder {
    /// `GET /backend-api/wham/usage`: answered from the backend with fresh
    /// credentials; the quota it reports is stored.
    pub(super) async fn usage(
        &self,
        request: Request<Incoming>,
        url: String,
        by: &Asker,
    ) -> Response<Body> {
        let (parts, _) = request.into_parts();
        // The answer is read here; it must come uncompressed.
        let headers = forwardable(
            parts.headers,
            &[
                header::AUTHORIZATION,
                CHATGPT_ACCOUNT_ID,
                header::ACCEPT_ENCODING,
            ],
        );
        let outgoing = Outgoing::Buffered(Bytes::new());
        let (account, response) = match self
            .with_fallback(Method::GET, &url, headers, outgoing, None, by)
            .await
        {
            Ok(r) => r,
            Err(answer) => return answer,
        };
        let (head, bytes) = buffer(response).await;
        if head.status.is_success()
            && let Some(quota) = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|b| Quota::from_usage(&b, self.shared.refresher.now()))
        {
            self.shared.record_quota(&account.id, Some(quota), true);
        }
        Response::from_parts(head, full(bytes))
    }
}
