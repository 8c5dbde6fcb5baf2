//! The forwarder's own answers: JSON errors, and the backend's
//! `usage_limit_reached` when every account's quota is used up.

use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::body::{Body, full};
use crate::engine::quota::Quota;
use crate::engine::routing::Unavailable;
use crate::wire::proto::{ErrorBody, ErrorCode};

/// A JSON error answer: `{"error":{"code","message"}}`.
pub fn error_response(status: StatusCode, code: ErrorCode, message: &str) -> Response<Body> {
    let body = serde_json::to_value(ErrorBody::new(code, message)).expect("JSON serializes");
    json_response(status, &body)
}

pub(super) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(
            serde_json::to_vec(value).expect("JSON always serializes"),
        ))
        .expect("a response built from valid parts")
}

pub(super) fn unavailable(e: &Unavailable) -> Response<Body> {
    match e {
        Unavailable::QuotaExhausted {
            resets_at,
            quota,
            plan,
            now,
        } => usage_limit_reached(e, *resets_at, quota.as_deref(), plan.as_deref(), *now),
        // A request named an account the store does not have.
        Unavailable::Lookup(_) => error_response(StatusCode::NOT_FOUND, e.code(), &e.to_string()),
        _ => error_response(StatusCode::SERVICE_UNAVAILABLE, e.code(), &e.to_string()),
    }
}

/// What the backend answers when an account's quota is used up, for the
/// earliest reset among the accounts: clients (Codex, OpenCode, SDKs) know
/// to wait for it, where a 503 would make them retry at once or ask for a
/// login that fixes nothing.
fn usage_limit_reached(
    e: &Unavailable,
    resets_at: i64,
    quota: Option<&Quota>,
    plan: Option<&str>,
    now: i64,
) -> Response<Body> {
    let retry_after = e.retry_after().unwrap_or_default();
    let mut body = json!({"error": {
        "type": "usage_limit_reached",
        "code": "usage_limit_reached",
        "message": e.to_string(),
        "resets_at": resets_at,
        "resets_in_seconds": retry_after,
    }});
    if let Some(plan) = plan {
        body["error"]["plan_type"] = json!(plan);
    }
    let mut response = json_response(StatusCode::TOO_MANY_REQUESTS, &body);
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    for (name, value) in quota.map(|q| q.headers(now)).unwrap_or_default() {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.insert(name, value);
        }
    }
    response
}

/// A bad request body, or a client that went away mid-body.
pub(super) fn body_error(e: impl std::fmt::Display) -> Response<Body> {
    error_response(
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidRequest,
        &format!("cannot read the request body: {e}"),
    )
}
