//! The leader's socket API as a follower uses it: the accounts it holds,
//! fresh access tokens, refreshes, and quota reports back to it. Every
//! refresh of a follower's account is the leader's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};

use crate::base::secret::{Secret, redact};
use crate::oauth::{OAuthError, TokenResponse};
use crate::socket::client::{ClientError, Connection};
use crate::wire::proto::{ErrorBody, ErrorCode, TokenAnswer};

/// How a follower names itself to the leader (its journal shows it).
const FOLLOWER_AGENT: &str = concat!("codex-broker-follower/", env!("CARGO_PKG_VERSION"));
/// How long one request to the leader may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a follower says to the user who tries to change accounts on it.
pub fn belongs_on_the_leader(socket: &Path) -> String {
    format!(
        "this broker home follows the leader at {}: it keeps no refresh token, so logins, \
         imports and account changes belong on the leader's machine (run the same \
         codex-broker command there)",
        socket.display()
    )
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the leader at {path} answered {status}: {message}")]
    Refused {
        path: String,
        status: u16,
        code: ErrorCode,
        message: String,
    },
    #[error("the leader at {path} answered something this version cannot read: {why}")]
    Unreadable { path: String, why: String },
    #[error("the leader at {0} did not answer in time")]
    Timeout(String),
    /// This follower's own store or auth.json could not take what the
    /// leader said.
    #[error("cannot keep what the leader said: {0}")]
    Local(String),
}

/// The leader's socket API, as a follower uses it.
#[derive(Debug, Clone)]
pub struct Leader {
    socket: PathBuf,
}

impl Leader {
    pub fn new(socket: impl Into<PathBuf>) -> Leader {
        Leader {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub(super) fn path(&self) -> String {
        self.socket.display().to_string()
    }

    /// One request; a JSON answer with a 2xx status, or the leader's error.
    async fn call(
        &self,
        method: Method,
        target: &str,
        body: Option<Value>,
    ) -> Result<Value, LeaderError> {
        let exchange = async {
            let mut connection = Connection::open(&self.socket).await?;
            let body = body.map(|b| b.to_string().into_bytes());
            let agent = [("user-agent", FOLLOWER_AGENT)];
            let (status, bytes) = connection.send(method, target, &agent, body).await?;
            Ok::<_, LeaderError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| LeaderError::Timeout(self.path()))??;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| LeaderError::Unreadable {
                path: self.path(),
                why: e.to_string(),
            });
        }
        let error = serde_json::from_slice::<ErrorBody>(&bytes).ok();
        Err(LeaderError::Refused {
            path: self.path(),
            status,
            code: error.as_ref().map_or(ErrorCode::Unknown, |e| e.error.code),
            message: error
                .map_or_else(|| "no error body".to_owned(), |e| bounded(&e.error.message)),
        })
    }

    /// `GET /v1/token?account=ID&min_ttl=SECS`.
    pub async fn token(&self, id: &str, min_ttl: i64) -> Result<TokenAnswer, LeaderError> {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("account", id)
            .append_pair(
                "min_ttl",
                &min_ttl.clamp(0, i64::from(u32::MAX)).to_string(),
            )
            .finish();
        let value = self
            .call(Method::GET, &format!("/v1/token?{query}"), None)
            .await?;
        serde_json::from_value(value).map_err(|e| LeaderError::Unreadable {
            path: self.path(),
            why: e.to_string(),
        })
    }

    /// The leader's accounts as `GET /v1/accounts` lists them.
    pub async fn accounts(&self) -> Result<Vec<Value>, LeaderError> {
        let value = self.call(Method::GET, "/v1/accounts", None).await?;
        match value.get("accounts").and_then(Value::as_array) {
            Some(accounts) => Ok(accounts.iter().take(1000).cloned().collect()),
            None => Err(LeaderError::Unreadable {
                path: self.path(),
                why: "no `accounts` list".into(),
            }),
        }
    }

    /// Tells the leader the quota an upstream reported for `id` here
    /// (`POST /v1/report` with the `x-codex-*` headers).
    pub async fn report_quota(
        &self,
        id: &str,
        headers: Vec<(String, String)>,
    ) -> Result<(), LeaderError> {
        let headers: serde_json::Map<String, Value> = headers
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        let report = json!({"account_id": id, "status": 200, "headers": headers});
        self.call(Method::POST, "/v1/report", Some(report))
            .await
            .map(|_| ())
    }

    /// The follower's "refresh": the leader's current tokens of `id`, fresh
    /// for at least `min_ttl` (the leader refreshes them if they are not).
    /// An account the leader cannot serve until a login is a permanent
    /// failure here too; a leader out of reach is a passing one.
    pub async fn refresh(&self, id: &str, min_ttl: i64) -> Result<TokenResponse, OAuthError> {
        match self.token(id, min_ttl).await {
            Ok(answer) => Ok(TokenResponse {
                id_token: answer.id_token.map(Secret::new),
                access_token: Some(Secret::new(answer.access_token)),
                refresh_token: None,
            }),
            Err(LeaderError::Refused {
                status,
                code: code @ (ErrorCode::NeedsLogin | ErrorCode::UnknownAccount),
                message,
                ..
            }) => Err(OAuthError::Permanent {
                status,
                code: code.to_string(),
                message: format!("{message} (on the leader)"),
            }),
            Err(e) => Err(OAuthError::Transient(e.to_string())),
        }
    }
}

/// The most of a leader's error message a follower keeps.
const MESSAGE_KEPT: usize = 500;

/// A leader's error message as a follower keeps it: printable, at most
/// [`MESSAGE_KEPT`] characters, and nothing token-shaped.
fn bounded(message: &str) -> String {
    let printable: String = message
        .chars()
        .take(MESSAGE_KEPT * 2)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut kept: String = redact(&printable, &[]).chars().take(MESSAGE_KEPT).collect();
    if message.chars().nth(MESSAGE_KEPT).is_some() {
        kept.push_str(" [...]");
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaders_message_is_bounded_and_redacted() {
        assert_eq!(
            bounded("the account needs a login"),
            "the account needs a login"
        );
        let huge = "x".repeat(7 << 20);
        let kept = bounded(&huge);
        assert!(kept.len() <= MESSAGE_KEPT + 6, "{}", kept.len());
        assert!(kept.ends_with("[...]"));
        let leaked = bounded("refused rt-abcdef-123456\n\u{1b}[2J");
        assert!(!leaked.contains("rt-abcdef"), "{leaked}");
        assert!(!leaked.contains('\u{1b}'), "{leaked}");
    }
}
