//! Which of the forwarder's routes a request takes, decided from its
//! method, path and upgrade alone, and named for the metrics.

use hyper::Method;

/// A forwarder route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A WebSocket upgrade of the Codex responses endpoint.
    Websocket,
    /// A WebSocket upgrade of any other path: refused.
    WebsocketElsewhere,
    /// `POST /oauth/token`.
    Token,
    /// `POST /oauth/revoke`.
    Revoke,
    /// Everything else for the issuer.
    Issuer,
    /// `/codex/*`.
    Codex,
    /// `GET /backend-api/wham/usage`.
    WhamUsage,
    /// The rest of `/backend-api/*`.
    BackendApi,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `GET /v1/models`.
    Models,
    /// `GET /metrics`.
    Metrics,
    /// `GET /ui` and below: the dashboard.
    Dashboard,
    /// None of these.
    Unknown,
}

impl Route {
    pub fn of(method: &Method, path: &str, websocket: bool) -> Route {
        let post = method == Method::POST;
        let get = method == Method::GET;
        if websocket {
            return if super::websocket::upstream_path(path).is_some() {
                Route::Websocket
            } else {
                Route::WebsocketElsewhere
            };
        }
        match path {
            "/oauth/token" if post => Route::Token,
            "/oauth/revoke" if post => Route::Revoke,
            "/codex/device" => Route::Issuer,
            "/backend-api/wham/usage" if get => Route::WhamUsage,
            "/v1/responses" if post => Route::Responses,
            "/v1/chat/completions" if post => Route::ChatCompletions,
            "/v1/models" if get => Route::Models,
            "/metrics" if get => Route::Metrics,
            "/ui" if get => Route::Dashboard,
            _ if get && path.starts_with("/ui/") => Route::Dashboard,
            _ if path.starts_with("/oauth/")
                || path.starts_with("/api/accounts/")
                || path.starts_with("/deviceauth/") =>
            {
                Route::Issuer
            }
            _ if path.starts_with("/codex/") => Route::Codex,
            _ if path.starts_with("/backend-api/") => Route::BackendApi,
            _ => Route::Unknown,
        }
    }

    /// The route's name in `codex_broker_requests_total{route}`.
    pub fn name(self) -> &'static str {
        match self {
            Route::Websocket | Route::WebsocketElsewhere => "websocket",
            Route::Token => "oauth_token",
            Route::Revoke => "oauth_revoke",
            Route::Issuer => "issuer",
            Route::Codex => "codex",
            Route::WhamUsage => "wham_usage",
            Route::BackendApi => "backend_api",
            Route::Responses => "responses",
            Route::ChatCompletions => "chat_completions",
            Route::Models => "models",
            Route::Metrics => "metrics",
            Route::Dashboard => "dashboard",
            Route::Unknown => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_path_takes_its_route() {
        let cases = [
            (Method::POST, "/oauth/token", false, Route::Token),
            (Method::GET, "/oauth/token", false, Route::Issuer),
            (Method::POST, "/oauth/revoke", false, Route::Revoke),
            (Method::GET, "/oauth/authorize", false, Route::Issuer),
            (
                Method::POST,
                "/api/accounts/deviceauth/usercode",
                false,
                Route::Issuer,
            ),
            (Method::GET, "/codex/device", false, Route::Issuer),
            (Method::POST, "/deviceauth/token", false, Route::Issuer),
            (Method::POST, "/codex/responses", false, Route::Codex),
            (Method::GET, "/codex/responses", true, Route::Websocket),
            (
                Method::GET,
                "/codex/models",
                true,
                Route::WebsocketElsewhere,
            ),
            (
                Method::GET,
                "/backend-api/wham/usage",
                false,
                Route::WhamUsage,
            ),
            (
                Method::POST,
                "/backend-api/wham/usage",
                false,
                Route::BackendApi,
            ),
            (
                Method::POST,
                "/backend-api/codex/responses",
                false,
                Route::BackendApi,
            ),
            (Method::POST, "/v1/responses", false, Route::Responses),
            (Method::GET, "/v1/responses", false, Route::Unknown),
            (
                Method::POST,
                "/v1/chat/completions",
                false,
                Route::ChatCompletions,
            ),
            (Method::GET, "/v1/chat/completions", false, Route::Unknown),
            (Method::GET, "/v1/models", false, Route::Models),
            (Method::GET, "/metrics", false, Route::Metrics),
            (Method::POST, "/metrics", false, Route::Unknown),
            (Method::GET, "/ui", false, Route::Dashboard),
            (Method::GET, "/ui/state", false, Route::Dashboard),
            (Method::POST, "/ui/state", false, Route::Unknown),
            (Method::GET, "/uix", false, Route::Unknown),
            (Method::GET, "/", false, Route::Unknown),
        ];
        for (method, path, websocket, route) in cases {
            assert_eq!(
                Route::of(&method, path, websocket),
                route,
                "{method} {path}"
            );
        }
    }
}
