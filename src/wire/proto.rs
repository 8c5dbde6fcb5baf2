//! The wire types of the socket API (and the error shape the forwarder
//! shares with it), used by the server and its client alike.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::engine::store::{Account, Kind};

/// Tokens handed out over the socket and by the forwarder stay valid at
/// least this long unless the asker says otherwise, seconds.
pub const MIN_TTL: u32 = 300;

/// A stable error code: `{"error":{"code":..,"message":..}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A login (of some account) is what it takes.
    NeedsLogin,
    /// Every account is blocked (quota, killswitch, just failed).
    NoUsableAccount,
    /// Every account that could serve has used its quota; `retry_after`
    /// says when the first resets.
    QuotaExhausted,
    /// Refreshing fails for a passing reason and the token has expired.
    RefreshFailed,
    UnknownAccount,
    /// The daemon is stopping and starts no refresh.
    Stopping,
    NotFound,
    MethodNotAllowed,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    Forbidden,
    /// The daemon serves another broker home.
    WrongHome,
    Internal,
    /// The forwarder: a request for a host name that is not loopback.
    ForbiddenHost,
    /// The forwarder: a cross-site request (a web page's).
    ForbiddenOrigin,
    /// The forwarder: a WebSocket upgrade it does not relay.
    WebsocketUnsupported,
    /// The forwarder: the upstream could not be reached.
    UpstreamUnreachable,
    /// The forwarder: the upstream's answer was broken.
    UpstreamBroken,
    /// The forwarder: a refresh it answers for failed for now.
    TemporarilyUnavailable,
    /// A code this version does not know (from a newer daemon).
    #[serde(other)]
    Unknown,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = serde_json::to_value(self).map_err(|_| fmt::Error)?;
        f.write_str(name.as_str().unwrap_or_default())
    }
}

/// `{"error":{"code","message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds until waiting may help (`quota_exhausted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<i64>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
                retry_after: None,
            },
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an error body always serializes")
    }
}

/// What `/v1/health` lists as wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    AuthJsonInvalid,
    /// auth.json or the Codex home is owned or writable by another uid.
    AuthJsonUntrusted,
    NeedsLogin,
    RefreshBackoff,
    StoreInvalid,
    /// A rotation the store could not take yet (a full or read-only disk).
    RotationUnsaved,
    /// A refresh that was sent and never answered (its process died).
    RefreshInterrupted,
    /// The daemon could not be asked.
    DaemonUnreachable,
    /// Codex's config.toml keeps its login in the system keyring, so Codex
    /// may not read auth.json.
    CodexKeyring,
    /// A follower cannot reach its leader; it serves what it has while it
    /// is valid.
    LeaderUnreachable,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    pub code: ProblemCode,
    pub message: String,
}

/// Where the forwarder listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwarderAddress {
    pub address: String,
    pub port: u16,
}

/// The `/v1/health` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub pid: u32,
    pub home: PathBuf,
    pub codex_home: PathBuf,
    pub accounts: usize,
    pub published: Option<String>,
    pub forwarder: Option<ForwarderAddress>,
    /// The leader's socket, when this daemon follows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows: Option<PathBuf>,
    /// Conversations the forwarder keeps on their account (active in the
    /// last hour).
    #[serde(default)]
    pub pinned_conversations: usize,
    pub problems: Vec<Problem>,
}

/// What `/v1/token` (and `token --json`) answers: the account's credential
/// and the headers a client sends with it, and for a ChatGPT account its
/// id token (what a follower publishes to auth.json). Never a refresh
/// token. Its `Debug` shows no credential.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenAnswer {
    pub account_id: String,
    pub kind: Kind,
    pub access_token: String,
    pub expires_at: Option<i64>,
    pub plan: Option<String>,
    pub email: Option<String>,
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

impl TokenAnswer {
    /// `None` when the account holds no credential (a stored one only when it
    /// needs a login, which is refused before it is served).
    pub fn new(account: &Account) -> Option<TokenAnswer> {
        let token = match account.kind {
            Kind::Chatgpt => account.tokens.as_ref()?.access_token.expose(),
            Kind::ApiKey => account.api_key.as_ref()?.expose(),
        };
        let mut headers = BTreeMap::new();
        headers.insert("authorization".to_owned(), format!("Bearer {token}"));
        if account.kind == Kind::Chatgpt {
            headers.insert("chatgpt-account-id".to_owned(), account.id.clone());
        }
        Some(TokenAnswer {
            account_id: account.id.clone(),
            kind: account.kind,
            access_token: token.clone(),
            expires_at: account.expires_at,
            plan: account.plan.clone(),
            email: account.email.clone(),
            headers,
            id_token: account.tokens.as_ref().map(|t| t.id_token.expose().clone()),
        })
    }
}

impl fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("account_id", &self.account_id)
            .field("kind", &self.kind)
            .field("access_token", &"REDACTED")
            .field("expires_at", &self.expires_at)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_snake_case_both_ways() {
        for code in [
            ErrorCode::NeedsLogin,
            ErrorCode::NoUsableAccount,
            ErrorCode::WebsocketUnsupported,
            ErrorCode::TemporarilyUnavailable,
        ] {
            let text = serde_json::to_value(code).unwrap();
            assert_eq!(text, code.to_string());
            assert_eq!(serde_json::from_value::<ErrorCode>(text).unwrap(), code);
        }
        let newer: ErrorCode = serde_json::from_str("\"from_the_future\"").unwrap();
        assert_eq!(newer, ErrorCode::Unknown);
    }

    #[test]
    fn a_token_answer_shows_no_credential_in_debug() {
        let mut account = crate::engine::store::test_account(Some(1_900_000_000), 1_795_305_600);
        let secret = "eyJ-secret-access-token";
        account.tokens.as_mut().unwrap().access_token = secret.to_owned().into();
        let answer = TokenAnswer::new(&account).unwrap();
        assert_eq!(answer.headers["authorization"], format!("Bearer {secret}"));
        let debug = format!("{answer:?}");
        assert!(!debug.contains("secret"), "{debug}");
        let text = serde_json::to_string(&answer).unwrap();
        assert_eq!(serde_json::from_str::<TokenAnswer>(&text).unwrap(), answer);
    }
}
