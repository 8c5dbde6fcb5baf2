//! Header and URL helpers: what passes to the other side, and where to.

use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName};

/// Headers that describe one connection, not the message (RFC 9110 7.6.1),
/// and `expect`, which the forwarder answers itself.
const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    header::EXPECT,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The account a ChatGPT backend request is for.
pub(super) const CHATGPT_ACCOUNT_ID: HeaderName = HeaderName::from_static("chatgpt-account-id");

/// `headers` without hop-by-hop headers (and those the `connection` header
/// names), without `host`, and with `drop` removed. One pass over the names
/// present: a map with nothing to remove is passed on as it is.
pub(super) fn forwardable(mut headers: HeaderMap, drop: &[HeaderName]) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let unwanted: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            HOP_BY_HOP.contains(name)
                || **name == header::HOST
                || drop.contains(name)
                || named.contains(name)
        })
        .cloned()
        .collect();
    for name in unwanted {
        headers.remove(name);
    }
    headers
}

/// `base` + `path` + `?query`.
pub(super) fn upstream_url(base: &str, path: &str, query: Option<&str>) -> String {
    let mut url = String::with_capacity(base.len() + path.len() + 1 + query.map_or(0, str::len));
    url.push_str(base);
    url.push_str(path);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

pub(super) fn is_websocket(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

pub(super) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

pub(super) fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn forwardable_drops_every_value_of_each_unwanted_name_and_keeps_the_rest() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, X-Per-Hop"),
            ("connection", "te"),
            ("x-per-hop", "1"),
            ("x-per-hop", "2"),
            ("te", "trailers"),
            ("host", "127.0.0.1:1456"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("authorization", "Bearer client"),
            ("accept", "text/event-stream"),
            ("x-kept", "a"),
            ("x-kept", "b"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let out = forwardable(headers, &[header::AUTHORIZATION]);
        // Names may come in another order; values of one name keep theirs.
        let mut kept: Vec<(&str, &str)> = out
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        kept.sort_by_key(|(name, _)| *name);
        assert_eq!(
            kept,
            [
                ("accept", "text/event-stream"),
                ("x-kept", "a"),
                ("x-kept", "b")
            ]
        );
        let plain: HeaderMap = [(header::ACCEPT, HeaderValue::from_static("*/*"))]
            .into_iter()
            .collect();
        assert_eq!(forwardable(plain.clone(), &[header::AUTHORIZATION]), plain);
    }

    #[test]
    fn upstream_urls_keep_the_query_as_it_came() {
        let base = "https://chatgpt.com/backend-api";
        assert_eq!(
            upstream_url(base, "/codex/models", Some("client_version=0.169.0&x=%20")),
            "https://chatgpt.com/backend-api/codex/models?client_version=0.169.0&x=%20"
        );
        assert_eq!(
            upstream_url(base, "/codex/responses", None),
            "https://chatgpt.com/backend-api/codex/responses"
        );
        assert_eq!(
            upstream_url(base, "/codex/responses", Some("")),
            "https://chatgpt.com/backend-api/codex/responses?"
        );
    }
}
