//! `/ui/`: the dashboard, one page served from the binary (its HTML, script
//! and style, nothing from elsewhere), and the JSON it polls. Everything
//! carries a Content-Security-Policy that allows only the page's own
//! origin; the JSON is refused to any other origin, another port of this
//! machine included. The page changes nothing.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::Forwarder;
use super::answer::error_response;
use super::body::{Body, full};
use super::headers::header_str;
use crate::engine::Engine;
use crate::wire::dashboard::{CHART_HOURS, Dashboard};
use crate::wire::proto::ErrorCode;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/app.css");

/// Only the page's own origin, for everything; no framing, no forms.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                      connect-src 'self'; base-uri 'none'; form-action 'none'; \
                      frame-ancestors 'none'";

/// What each page of the dashboard is.
pub(super) fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/ui/" => Some((INDEX, "text/html; charset=utf-8")),
        "/ui/app.js" => Some((SCRIPT, "text/javascript; charset=utf-8")),
        "/ui/app.css" => Some((STYLE, "text/css; charset=utf-8")),
        _ => None,
    }
}

/// The page's size, bytes: its HTML, script and style.
pub fn page_weight() -> usize {
    INDEX.len() + SCRIPT.len() + STYLE.len()
}

impl Forwarder {
    /// `GET /ui`, `GET /ui/...`.
    pub(super) async fn dashboard(&self, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path();
        if path == "/ui" {
            let mut moved = guarded(full(""), "text/plain", StatusCode::PERMANENT_REDIRECT);
            moved
                .headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/ui/"));
            return moved;
        }
        if path == "/ui/state" {
            if let Some(why) = other_origin(request.headers()) {
                tracing::warn!("refused the dashboard's state to another origin");
                return error_response(StatusCode::FORBIDDEN, ErrorCode::ForbiddenOrigin, why);
            }
            return self.state().await;
        }
        match asset(path) {
            Some((text, content_type)) => guarded(full(text), content_type, StatusCode::OK),
            None => error_response(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                &format!("the dashboard has no page {path}; open /ui/"),
            ),
        }
    }

    /// `GET /ui/state`: what the page shows, now.
    async fn state(&self) -> Response<Body> {
        let engine = self.shared.clone();
        let built = tokio::task::spawn_blocking(move || state_json(&engine)).await;
        match built {
            Ok(Ok(json)) => {
                let mut answer = guarded(full(json), "application/json", StatusCode::OK);
                answer
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                answer
            }
            Ok(Err(message)) => error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                &message,
            ),
            Err(e) => error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                &format!("the dashboard's state could not be built: {e}"),
            ),
        }
    }
}

/// The dashboard's JSON, read from the engine (the journal is a file: this
/// runs on the blocking pool).
fn state_json(engine: &Arc<Engine>) -> Result<Vec<u8>, String> {
    let now = engine.refresher.now();
    let store = engine
        .refresher
        .store()
        .map_err(|e| format!("cannot read the account store: {e}"))?;
    let journal = engine.refresher.journal().entries().unwrap_or_default();
    let rows = engine.usage.rows(now - 3600 * CHART_HOURS as i64);
    let problems = engine.health().problems;
    let dashboard = Dashboard::new(&store, &rows, &journal, problems, now);
    serde_json::to_vec(&dashboard).map_err(|e| e.to_string())
}

/// Why a request for the state comes from another origin than the page's,
/// if it does: a browser names the requesting page in `Origin` and says
/// how it relates in `Sec-Fetch-Site`; a page on another port of this
/// machine is `same-site`, not `same-origin`.
fn other_origin(headers: &HeaderMap) -> Option<&'static str> {
    const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
    let site = header_str(headers, SEC_FETCH_SITE);
    if site.is_some_and(|s| !matches!(s, "same-origin" | "none")) {
        return Some("the dashboard's state is for the dashboard's own page only");
    }
    let own = header_str(headers, header::HOST).map(|host| format!("http://{host}"));
    let origin = header_str(headers, header::ORIGIN);
    match (origin, own) {
        (None, _) => None,
        (Some(origin), Some(own)) if origin == own => None,
        _ => Some("the dashboard's state is for pages of the forwarder's own origin only"),
    }
}

/// An answer with the dashboard's headers: its policy, no sniffing, no
/// referrer, readable by its own origin only.
fn guarded(body: Body, content_type: &'static str, status: StatusCode) -> Response<Body> {
    let mut answer = Response::new(body);
    *answer.status_mut() = status;
    let headers = answer.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn only_the_pages_own_origin_and_tools_may_read_the_state() {
        let host = ("host", "127.0.0.1:1456");
        for allowed in [
            headers(&[host]),
            headers(&[host, ("sec-fetch-site", "same-origin")]),
            headers(&[host, ("sec-fetch-site", "none")]),
            headers(&[host, ("origin", "http://127.0.0.1:1456")]),
        ] {
            assert_eq!(other_origin(&allowed), None, "{allowed:?}");
        }
        for refused in [
            headers(&[host, ("sec-fetch-site", "same-site")]),
            headers(&[host, ("sec-fetch-site", "cross-site")]),
            headers(&[host, ("origin", "http://127.0.0.1:3000")]),
            headers(&[host, ("origin", "http://localhost:1456")]),
            headers(&[host, ("origin", "null")]),
            headers(&[("origin", "http://127.0.0.1:1456")]),
        ] {
            assert!(other_origin(&refused).is_some(), "{refused:?}");
        }
    }

    #[test]
    fn the_page_names_only_its_own_script_and_style() {
        assert!(INDEX.contains("src=\"app.js\""));
        assert!(INDEX.contains("href=\"app.css\""));
        // The one URL is the SVG namespace, a name that is never fetched.
        let script = SCRIPT.replace("\"http://www.w3.org/2000/svg\"", "");
        for page in [INDEX, &script, STYLE] {
            assert!(!page.contains("http:") && !page.contains("https:"));
            assert!(!page.contains("url(") && !page.contains("@import"));
        }
    }
}
