//! What the forwarder refuses before it routes a request: clients of
//! another user, requests that are not for this machine (DNS rebinding),
//! cross-site browser requests, proxy-style targets and paths that climb
//! out of their route.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpStream;

use super::answer::error_response;
use super::body::Body;
use super::headers::header_str;
use crate::base::peer;
use crate::wire::proto::ErrorCode;

/// Whether a browser request comes from another site.
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// Whether the TCP client at `client` runs as the daemon's user or root,
/// where the system can tell (Linux); elsewhere every local client is.
pub(super) fn client_allowed(stream: &TcpStream, client: SocketAddr) -> bool {
    let local = match stream.local_addr() {
        Ok(local) => local,
        Err(e) => {
            tracing::warn!("cannot tell the forwarder's own address: {e}");
            return false;
        }
    };
    match peer::tcp_peer_uid(local, client) {
        Ok(None) => true,
        Ok(Some(uid)) if peer::allowed(uid) => true,
        Ok(Some(uid)) => {
            tracing::warn!(uid, "refused a forwarder connection from another user");
            false
        }
        Err(e) => {
            tracing::warn!("cannot tell who connected to the forwarder from {client}: {e}");
            false
        }
    }
}

/// The answer to a request the forwarder will not route, if it is one.
pub(super) fn refuse(request: &Request<Incoming>) -> Option<Response<Body>> {
    if let Some(refused) = refuse_before_routing(request) {
        return Some(refused);
    }
    let host = foreign_host(request.headers())?;
    tracing::warn!(%host, "refused a request for another host name (DNS rebinding?)");
    Some(error_response(
        StatusCode::FORBIDDEN,
        ErrorCode::ForbiddenHost,
        "the forwarder answers only requests addressed to localhost, 127.0.0.1 or [::1]",
    ))
}

/// The `host` of a request addressed to something other than a loopback
/// name: a web page that rebinds its DNS name to 127.0.0.1 must not reach
/// the accounts through a browser.
fn foreign_host(headers: &HeaderMap) -> Option<String> {
    let host = header_str(headers, header::HOST)?;
    (!loopback_authority(host)).then(|| host.to_owned())
}

/// Whether `authority` (`name[:port]`, `[v6][:port]`) names this machine:
/// `localhost` or a loopback address, and nothing else: a host and at
/// most a port of digits (RFC 3986), so `localhost:1456@evil.example` and
/// `[::1]evil.example` are foreign.
fn loopback_authority(authority: &str) -> bool {
    let (name, port) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((name, after)) => match after {
                "" => (name, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (name, Some(port)),
                    None => return false,
                },
            },
            None => return false,
        },
        None => match authority.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (authority, None),
        },
    };
    let port_ok =
        port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok
        && (name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()))
}

/// Whether `origin` is a loopback origin (`http://127.0.0.1:1456`,
/// `http://localhost`, `http://[::1]:8080`): a page served from this
/// machine. `null` and anything else are foreign.
fn loopback_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.contains(['/', '@', '?', '#'])
        && loopback_authority(rest)
}

/// A path segment that is `.` or `..`, spelled plainly or percent-encoded,
/// or a backslash or encoded slash that some servers read as a separator:
/// such a path could reach another upstream path than the route it names.
fn escapes_its_route(path: &str) -> bool {
    let separator =
        |code: &[u8]| code.eq_ignore_ascii_case(b"%5c") || code.eq_ignore_ascii_case(b"%2f");
    path.contains('\\')
        || path.as_bytes().windows(3).any(separator)
        || path.split('/').any(is_dot_segment)
}

/// `.` or `..`, each dot spelled plainly or as `%2e`.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() && dots <= 2 {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [a, b, c, tail @ ..] if [*a, *b, *c].eq_ignore_ascii_case(b"%2e") => tail,
            _ => return false,
        };
        dots += 1;
    }
    rest.is_empty() && (1..=2).contains(&dots)
}

/// What is refused before any routing: CONNECT and absolute-form targets
/// (the forwarder is no proxy), cross-site requests from a browser (a page
/// must not spend the accounts), and paths with dot segments.
fn refuse_before_routing(request: &Request<Incoming>) -> Option<Response<Body>> {
    if request.method() == Method::CONNECT || request.uri().authority().is_some() {
        return Some(error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "the forwarder is not a proxy: send origin-form requests (GET /path)",
        ));
    }
    let hosts = request.headers().get_all(header::HOST).iter().count();
    let ambiguous = match hosts {
        0 if request.version() == hyper::Version::HTTP_11 => {
            Some("an HTTP/1.1 request needs a Host header")
        }
        0 | 1 => None,
        _ => Some("the request has more than one Host header"),
    };
    if let Some(why) = ambiguous {
        return Some(error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            why,
        ));
    }
    let headers = request.headers();
    let foreign_origin = headers
        .get_all(header::ORIGIN)
        .iter()
        .any(|o| !o.to_str().is_ok_and(loopback_origin));
    let cross_site = headers
        .get_all(SEC_FETCH_SITE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    if foreign_origin || cross_site {
        tracing::warn!("refused a cross-site request (a web page?)");
        return Some(error_response(
            StatusCode::FORBIDDEN,
            ErrorCode::ForbiddenOrigin,
            "the forwarder answers no cross-site request: only local tools, and pages served \
             from a loopback origin, may use it",
        ));
    }
    if escapes_its_route(request.uri().path()) {
        return Some(error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "the path has a dot segment (`.` or `..`, plain or percent-encoded) or a \
             backslash; send the path it means",
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn dot_segments_and_backslashes_are_caught_in_every_spelling() {
        for bad in [
            "/codex/../../../oauth/token",
            "/backend-api/.%2e/.%2e/elsewhere",
            "/backend-api/%2e%2e/x",
            "/backend-api/%2E%2e/x",
            "/codex/./responses",
            "/codex/..",
            "/codex\\..\\oauth",
            "/codex/%5c..",
            "/backend-api/a%2f..%2fb",
            "/codex/%2E",
            "/codex/.%2E/x",
            "/codex/%2F",
            "/codex/%5C",
        ] {
            assert!(escapes_its_route(bad), "{bad}");
        }
        for ok in [
            "/codex/responses",
            "/backend-api/wham/usage",
            "/a/.hidden/b..c",
            "/",
            "/codex/...",
            "/codex/%2e%2e%2e/x",
            "/codex/.%2",
            "/codex/%%2e",
            "/codex/%2e.a",
        ] {
            assert!(!escapes_its_route(ok), "{ok}");
        }
    }

    #[test]
    fn only_loopback_origins_are_local() {
        for ok in [
            "http://127.0.0.1:1456",
            "http://localhost",
            "https://LOCALHOST:3000",
            "http://[::1]:8080",
        ] {
            assert!(loopback_origin(ok), "{ok}");
        }
        for bad in [
            "https://evil.example",
            "null",
            "http://127.0.0.1.evil.example",
            "http://localhost@evil.example",
            "file://",
            "http://10.0.0.1",
        ] {
            assert!(!loopback_origin(bad), "{bad}");
        }
    }

    #[test]
    fn only_loopback_host_names_are_served() {
        let host = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_str(value).unwrap());
            foreign_host(&h)
        };
        for ok in [
            "127.0.0.1:1456",
            "localhost:1456",
            "LOCALHOST",
            "[::1]:1456",
            "[::1]",
            "127.0.0.2",
        ] {
            assert_eq!(host(ok), None, "{ok}");
        }
        for bad in [
            "evil.example:1456",
            "10.0.0.1:1456",
            "localhost.evil.example",
            "[::2]:1",
            "localhost:1456@evil.example",
            "[::1]evil.example",
            "[::1]:1456@evil.example",
            "127.0.0.1:14x6",
            "localhost:",
            "[::1",
            "localhost:1456:1",
        ] {
            assert_eq!(host(bad).as_deref(), Some(bad));
        }
        assert_eq!(foreign_host(&HeaderMap::new()), None);
    }
}
