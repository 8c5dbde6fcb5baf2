//! The issuer's routes: `/oauth/token` refreshes of tokens the broker owns
//! are answered here from the store, and `/oauth/revoke` of them is never
//! forwarded; everything else passes to the issuer.

use std::collections::HashMap;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use super::answer::{body_error, error_response, json_response};
use super::body::{Body, BoxError, full};
use super::headers::{forwardable, header_str};
use super::relay::relay;
use super::{Forwarder, SMALL_BODY};
use crate::base::secret::Secret;
use crate::engine::due::{FORCE_REFRESH, recently_refreshed};
use crate::engine::refresh::{Asker, RefreshError};
use crate::engine::store::{Account, Kind};
use crate::wire::proto::{ErrorCode, MIN_TTL};

impl Forwarder {
    /// Transparent forwarding to the issuer.
    pub(super) async fn to_issuer(
        &self,
        request: Request<Incoming>,
        url: String,
    ) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let headers = forwardable(parts.headers, &[]);
        match self
            .send(
                parts.method,
                &url,
                headers,
                body.map_err(BoxError::from).boxed(),
            )
            .await
        {
            Ok(response) => relay(response).await,
            Err(answer) => answer,
        }
    }

    /// `POST /oauth/token`: refreshes of a token the broker owns are answered
    /// here; everything else goes to the issuer.
    pub(super) async fn token_endpoint(
        &self,
        request: Request<Incoming>,
        by: &Asker,
    ) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let bytes = match Limited::new(body, SMALL_BODY).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => return body_error(e),
        };
        if let Some(refresh_token) = refresh_grant(&parts.headers, &bytes)
            && let Some(answer) = self.answer_refresh(&refresh_token, by).await
        {
            return answer;
        }
        let url = format!("{}/oauth/token", self.issuer);
        let headers = forwardable(parts.headers, &[]);
        match self.send(parts.method, &url, headers, full(bytes)).await {
            Ok(response) => relay(response).await,
            Err(answer) => answer,
        }
    }

    /// `POST /oauth/revoke`: a revoke of a token the broker manages (a
    /// refresh token, current or retired, its stand-in, or the current
    /// access token; `codex logout` sends one) is answered here and never
    /// reaches the issuer, which would end the broker's own login. Any
    /// other goes to the issuer.
    pub(super) async fn revoke_endpoint(&self, request: Request<Incoming>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let bytes = match Limited::new(body, SMALL_BODY).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => return body_error(e),
        };
        let token = fields(&parts.headers, &bytes).and_then(|mut f| f.remove("token"));
        if let Some(token) = token
            && let Some(id) = self.manages(&token)
        {
            tracing::info!(account = %id, "a client revoked a token the broker manages; not forwarded (codex-broker accounts remove --revoke ends the login)");
            return json_response(StatusCode::OK, &json!({}));
        }
        let url = format!("{}/oauth/revoke", self.issuer);
        let headers = forwardable(parts.headers, &[]);
        match self.send(parts.method, &url, headers, full(bytes)).await {
            Ok(response) => relay(response).await,
            Err(answer) => answer,
        }
    }

    /// The account whose token `token` is, if the broker manages it.
    fn manages(&self, token: &str) -> Option<String> {
        let store = self.shared.refresher.store().ok()?;
        let account = store.accounts.iter().find(|a| {
            a.owns_refresh_token(token)
                || a.has_stand_in(token)
                || a.tokens
                    .as_ref()
                    .is_some_and(|t| t.access_token.expose() == token)
        })?;
        Some(account.id.clone())
    }

    /// The current tokens of the account owning `refresh_token` (current,
    /// retired, or its stand-in), in the issuer's response shape; `None` for
    /// a token the broker does not own. A client that presented a stand-in,
    /// or any client while the store shields auth.json, gets the stand-in
    /// back in place of the refresh token.
    async fn answer_refresh(&self, refresh_token: &str, by: &Asker) -> Option<Response<Body>> {
        let store = self.shared.refresher.store().ok()?;
        let account = store.accounts.iter().find(|a| {
            a.kind == Kind::Chatgpt
                && (a.owns_refresh_token(refresh_token) || a.has_stand_in(refresh_token))
        })?;
        let id = account.id.clone();
        let stand_in = account.has_stand_in(refresh_token);
        let shielded = (stand_in || store.shield)
            .then(|| account.stand_in.clone())
            .flatten();
        let current = stand_in
            || account
                .tokens
                .as_ref()
                .is_some_and(|t| t.refresh_token.expose() == refresh_token);
        let now = self.shared.refresher.now();
        // A client holding the newest tokens asks again: they expire soon or
        // were rejected, so a new access token is due.
        let min_ttl = if current && !recently_refreshed(account, now) {
            FORCE_REFRESH
        } else {
            MIN_TTL.into()
        };
        tracing::info!(account = %id, current, "answered a token refresh for an account the broker owns");
        Some(match self.shared.refresher.fresh(&id, min_ttl, by).await {
            Ok(account) => token_response(&account, shielded.as_ref(), now),
            Err(e @ RefreshError::NeedsLogin { .. }) => json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": {"message": format!("{e}"), "type": "invalid_request_error",
                    "param": null, "code": "refresh_token_invalidated"}}),
            ),
            Err(e) => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::TemporarilyUnavailable,
                &e.to_string(),
            ),
        })
    }
}

/// The string fields of a token-endpoint request body, JSON or form.
fn fields(headers: &HeaderMap, body: &[u8]) -> Option<HashMap<String, String>> {
    let form = header_str(headers, header::CONTENT_TYPE)
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if form {
        return Some(url::form_urlencoded::parse(body).into_owned().collect());
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    Some(
        value
            .as_object()?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect(),
    )
}

/// The refresh token of a `grant_type=refresh_token` request, JSON or form.
fn refresh_grant(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let fields = fields(headers, body)?;
    (fields.get("grant_type")?.as_str() == "refresh_token")
        .then(|| fields.get("refresh_token").cloned())
        .flatten()
}

/// The issuer's answer to a refresh, made from `account`'s tokens, with
/// `stand_in` in place of the refresh token when given.
fn token_response(
    account: &Account,
    stand_in: Option<&Secret<String>>,
    now: i64,
) -> Response<Body> {
    let Some(tokens) = &account.tokens else {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "no tokens",
        );
    };
    let mut body = json!({
        "id_token": tokens.id_token.expose(),
        "access_token": tokens.access_token.expose(),
        "refresh_token": stand_in.unwrap_or(&tokens.refresh_token).expose(),
        "token_type": "Bearer",
        "scope": "openid profile email offline_access",
    });
    if let Some(exp) = account.expires_at {
        body["expires_in"] = json!((exp - now).max(0));
    }
    let mut response = json_response(StatusCode::OK, &body);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
