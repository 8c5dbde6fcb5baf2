//! Talking to the OAuth issuer: the token endpoint (refresh and code
//! exchange), PKCE, and the two login flows.

pub mod browser;
pub mod device;
pub mod pkce;

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::base::secret::{Secret, redact};

/// The OAuth client id of the Codex CLI.
pub const CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";
pub const SCOPE: &str = "openid profile email offline_access";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the token endpoint returned. Every field is optional on refresh:
/// a missing one keeps its old value.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub id_token: Option<Secret<String>>,
    #[serde(default)]
    pub access_token: Option<Secret<String>>,
    #[serde(default)]
    pub refresh_token: Option<Secret<String>>,
}

/// Why a call to the issuer failed, classified as Codex classifies it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// The grant is dead (expired, reused, invalidated, any 401, 400
    /// `invalid_grant`): only a new login helps.
    #[error("the issuer rejected the refresh token ({code}, HTTP {status}): {message}")]
    Permanent {
        status: u16,
        code: String,
        message: String,
    },
    /// The issuer answered with a passing failure (5xx, 408, 429), or the
    /// request never left (no connection): try again later.
    #[error("{0}")]
    Transient(String),
    /// The request was sent and its answer lost (timed out, cut off,
    /// unreadable): the issuer may have rotated the refresh token, and
    /// spending it again may end the login.
    #[error("{0}")]
    Lost(String),
}

impl OAuthError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, OAuthError::Permanent { .. })
    }
}

/// The error code of an issuer response body: `error.code`, else `error`
/// when it is a string, else `code`.
pub fn error_code(body: &Value) -> Option<&str> {
    body.pointer("/error/code")
        .and_then(Value::as_str)
        .or_else(|| body.get("error").and_then(Value::as_str))
        .or_else(|| body.get("code").and_then(Value::as_str))
}

/// The issuer's message, cut to 300 characters, without anything that
/// looks like a token (an issuer may quote the one it refused).
fn error_message(body: &Value) -> String {
    let message: String = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .or_else(|| body.get("error_description").and_then(Value::as_str))
        .or_else(|| body.get("message").and_then(Value::as_str))
        .unwrap_or("no message")
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    redact(&message, &[])
}

/// An error code from outside: short, printable, no token.
fn clean_code(code: &str) -> String {
    // Redacted first: taking out spaces could join a token to a word that
    // hides its shape.
    redact(code, &[])
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

/// Sorts a failed token-endpoint answer into permanent or transient.
pub fn classify(status: u16, body: &[u8]) -> OAuthError {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = clean_code(error_code(&json).unwrap_or(""));
    let permanent = matches!(
        code.as_str(),
        "refresh_token_expired" | "refresh_token_reused" | "refresh_token_invalidated"
    ) || status == 401
        || (status == 400 && code == "invalid_grant");
    if status == 504 {
        // A gateway gave up waiting for the issuer, which may have rotated.
        return OAuthError::Lost(format!(
            "the issuer answered HTTP {status} (gateway timeout)"
        ));
    }
    if permanent {
        OAuthError::Permanent {
            status,
            code: if code.is_empty() {
                "unauthorized".into()
            } else {
                code
            },
            message: error_message(&json),
        }
    } else {
        OAuthError::Transient(format!(
            "the issuer answered HTTP {status}{}",
            if code.is_empty() {
                String::new()
            } else {
                format!(" ({code})")
            }
        ))
    }
}

/// A client for one issuer.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    issuer: String,
    http: reqwest::Client,
}

/// Builds the HTTP client every upstream call uses: rustls, no proxy
/// surprises beyond the standard variables, bounded time.
/// A reqwest client builder using rustls with the ring provider.
pub fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

pub fn http_client(timeout: Duration) -> reqwest::Client {
    client_builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("codex-broker/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client builds")
}

impl OAuthClient {
    pub fn new(issuer: &str) -> Self {
        Self::with_timeout(issuer, DEFAULT_TIMEOUT)
    }

    pub fn with_timeout(issuer: &str, timeout: Duration) -> Self {
        OAuthClient {
            issuer: issuer.trim_end_matches('/').to_owned(),
            http: http_client(timeout),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn token_url(&self) -> String {
        format!("{}/oauth/token", self.issuer)
    }

    /// Spends `refresh_token` for new tokens (JSON body, as Codex sends it).
    pub async fn refresh(
        &self,
        refresh_token: &Secret<String>,
    ) -> Result<TokenResponse, OAuthError> {
        let body = serde_json::json!({
            "client_id": CLIENT_ID,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token.expose(),
        });
        let request = self.http.post(self.token_url()).json(&body);
        self.token_call(request).await
    }

    /// Revokes `refresh_token` at the issuer (RFC 7009, with the JSON body
    /// Codex's logout sends), which ends the login it belongs to.
    pub async fn revoke(&self, refresh_token: &Secret<String>) -> Result<(), OAuthError> {
        let body = serde_json::json!({
            "token": refresh_token.expose(),
            "token_type_hint": "refresh_token",
            "client_id": CLIENT_ID,
        });
        let url = format!("{}/oauth/revoke", self.issuer);
        let response = self
            .http
            .post(url)
            .json(&body)
            .send()
            .await
            .map_err(|e| OAuthError::Transient(describe_transport_error(&e)))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| OAuthError::Transient(describe_transport_error(&e)))?;
        Err(classify(status, &body))
    }

    /// Exchanges an authorization code (form body, as Codex sends it).
    pub async fn exchange_code(
        &self,
        code: &Secret<String>,
        redirect_uri: &str,
        verifier: &Secret<String>,
    ) -> Result<TokenResponse, OAuthError> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.expose().as_str()),
            ("redirect_uri", redirect_uri),
            ("client_id", CLIENT_ID),
            ("code_verifier", verifier.expose().as_str()),
        ];
        let request = self.http.post(self.token_url()).form(&form);
        self.token_call(request).await
    }

    async fn token_call(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<TokenResponse, OAuthError> {
        let response = request.send().await.map_err(|e| {
            let reason = describe_transport_error(&e);
            if e.is_connect() {
                OAuthError::Transient(reason)
            } else {
                OAuthError::Lost(reason)
            }
        })?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| OAuthError::Lost(describe_transport_error(&e)))?;
        if !(200..300).contains(&status) {
            return Err(classify(status, &body));
        }
        serde_json::from_slice(&body).map_err(|_| {
            OAuthError::Lost(format!(
                "the issuer answered HTTP {status} with a body that is not a token response"
            ))
        })
    }
}

/// A transport failure in words, without the URL's query (which may hold
/// a code) or any header.
pub fn describe_transport_error(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else {
        "request failed"
    };
    match e.url() {
        Some(url) => format!(
            "{what}: {}://{}{}",
            url.scheme(),
            url.authority(),
            url.path()
        ),
        None => what.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_codex() {
        let reused = br#"{"error":{"message":"Your refresh token has already been used","type":"invalid_request_error","param":null,"code":"refresh_token_reused"}}"#;
        assert!(
            matches!(classify(401, reused), OAuthError::Permanent { ref code, .. } if code == "refresh_token_reused")
        );
        assert!(classify(400, br#"{"error":"invalid_grant"}"#).is_permanent());
        assert!(classify(400, br#"{"code":"refresh_token_expired"}"#).is_permanent());
        assert!(classify(401, b"").is_permanent());
        assert!(!classify(400, br#"{"error":"invalid_request"}"#).is_permanent());
        assert!(!classify(500, b"oops").is_permanent());
        assert!(matches!(classify(504, b""), OAuthError::Lost(_)));
        assert!(!classify(429, br#"{"error":{"code":"rate_limited"}}"#).is_permanent());
        let echoed =
            br#"{"error":{"message":"token rt-acc-1-5 was reused","code":"refresh_token_reused"}}"#;
        let err = classify(401, echoed).to_string();
        assert!(!err.contains("rt-acc-1-5"), "{err}");
        assert!(err.contains("[REDACTED]"), "{err}");
        let hidden = br#"{"error":{"code":"x rt-acc-1-5","message":"m"}}"#;
        let err = classify(503, hidden).to_string();
        assert!(
            !err.contains("rt-acc-1-5") && !err.contains("acc-1-5"),
            "{err}"
        );
        assert!(err.contains("[REDACTED]"), "{err}");
    }
}
