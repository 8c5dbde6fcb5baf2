//! Codex's own credential file, `$CODEX_HOME/auth.json`: reading, validating
//! and rewriting it the way Codex does, under Codex's two locks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::base::fsutil::{self, FsError};
use crate::base::json::{self, JsonProblem};
use crate::base::secret::Secret;
use crate::wire::jwt::{self, Claims};

pub const AUTH_FILE: &str = "auth.json";
/// Codex takes this lock first, blocking.
const OUTER_LOCK: &str = "auth.lock";
/// Codex takes this lock second, retrying every ~10 ms for ~5 s.
const INNER_LOCK: &str = "auth.json.lock";
const INNER_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
const INNER_LOCK_INTERVAL: Duration = Duration::from_millis(10);

pub const MODE_CHATGPT: &str = "chatgpt";
pub const MODE_API_KEY: &str = "apikey";

/// Why auth.json cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: JsonProblem },
}

/// The file as Codex writes it. Fields this version does not know are kept
/// in `extra` and written back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthDotJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_mode: Option<String>,
    #[serde(rename = "OPENAI_API_KEY", default)]
    pub openai_api_key: Option<Secret<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh: Option<String>,
    #[serde(flatten)]
    pub extra: Secret<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenData {
    pub id_token: Secret<String>,
    pub access_token: Secret<String>,
    pub refresh_token: Secret<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(flatten)]
    pub extra: Secret<Map<String, Value>>,
}

/// What auth.json holds, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    ChatGpt {
        account_id: String,
        id_claims: Claims,
        /// Expiry of the access token, when it is a JWT with `exp`.
        expires_at: Option<i64>,
        last_refresh: Option<OffsetDateTime>,
    },
    ApiKey {
        id: String,
    },
}

impl Credential {
    pub fn account_id(&self) -> &str {
        match self {
            Credential::ChatGpt { account_id, .. } => account_id,
            Credential::ApiKey { id } => id,
        }
    }
}

impl AuthDotJson {
    /// Parses and validates the bytes of an auth.json, naming the field at
    /// fault the way Codex would reject it.
    pub fn parse(bytes: &[u8]) -> Result<AuthDotJson, JsonProblem> {
        let auth: AuthDotJson = json::parse(bytes)?;
        auth.credential()?;
        Ok(auth)
    }

    /// The account this file authenticates, after validation.
    pub fn credential(&self) -> Result<Credential, JsonProblem> {
        let api_key_mode = match self.auth_mode.as_deref() {
            Some(MODE_API_KEY) => true,
            Some(MODE_CHATGPT) => false,
            Some(other) => {
                return Err(JsonProblem::field(
                    "auth_mode",
                    format!("unsupported mode `{other}` (expected `chatgpt` or `apikey`)"),
                ));
            }
            // Without a mode Codex assumes ChatGPT unless an API key is set.
            None => self.tokens.is_none() && self.openai_api_key.is_some(),
        };
        if api_key_mode {
            let key = self
                .openai_api_key
                .as_ref()
                .filter(|k| !k.expose().trim().is_empty())
                .ok_or_else(|| JsonProblem::field("OPENAI_API_KEY", "missing for API-key mode"))?;
            return Ok(Credential::ApiKey {
                id: api_key_account_id(key.expose()),
            });
        }
        let tokens = self.tokens.as_ref().ok_or_else(|| {
            JsonProblem::field("tokens", "missing: the file holds no ChatGPT tokens")
        })?;
        let id_claims = jwt::decode(tokens.id_token.expose())
            .map_err(|e| JsonProblem::field("tokens.id_token", e.to_string()))?;
        for (field, value) in [
            ("tokens.access_token", &tokens.access_token),
            ("tokens.refresh_token", &tokens.refresh_token),
        ] {
            if value.expose().trim().is_empty() {
                return Err(JsonProblem::field(field, "empty"));
            }
        }
        let account_id = tokens
            .account_id
            .clone()
            .or_else(|| id_claims.account_id.clone())
            .ok_or_else(|| {
                JsonProblem::field(
                    "tokens.account_id",
                    "missing, and the id_token names no chatgpt_account_id",
                )
            })?;
        let last_refresh = self
            .last_refresh
            .as_deref()
            .map(|s| {
                OffsetDateTime::parse(s, &Rfc3339)
                    .map_err(|_| JsonProblem::field("last_refresh", "not an RFC 3339 timestamp"))
            })
            .transpose()?;
        let expires_at = jwt::decode(tokens.access_token.expose())
            .ok()
            .and_then(|c| c.exp);
        Ok(Credential::ChatGpt {
            account_id,
            id_claims,
            expires_at,
            last_refresh,
        })
    }

    /// A ChatGPT-mode file, in the shape Codex writes.
    pub fn chatgpt(
        tokens: TokenData,
        last_refresh: OffsetDateTime,
        extra: Map<String, Value>,
    ) -> Self {
        AuthDotJson {
            auth_mode: Some(MODE_CHATGPT.into()),
            openai_api_key: None,
            tokens: Some(tokens),
            last_refresh: Some(format_timestamp(last_refresh)),
            extra: Secret::new(extra),
        }
    }

    /// An API-key-mode file, in the shape `codex login --with-api-key` writes.
    pub fn api_key(key: Secret<String>, extra: Map<String, Value>) -> Self {
        AuthDotJson {
            auth_mode: Some(MODE_API_KEY.into()),
            openai_api_key: Some(key),
            tokens: None,
            last_refresh: None,
            extra: Secret::new(extra),
        }
    }

    /// Pretty JSON with two-space indentation, as Codex writes it.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("auth.json always serializes")
    }
}

/// `last_refresh` in Codex's format: RFC 3339, UTC, `Z`.
pub fn format_timestamp(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .expect("UTC timestamps always format")
}

/// The stable id of an API-key account: `apikey-` and a short hash of the key.
pub fn api_key_account_id(key: &str) -> String {
    let digest = Sha256::digest(key.trim().as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("apikey-{hex}")
}

/// What the file held when it was read: the exact bytes (for the later
/// compare-and-swap) and their meaning.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The file's bytes: they hold every token, so they never print.
    raw: Secret<Option<Vec<u8>>>,
    pub state: AuthState,
}

#[derive(Debug, Clone)]
pub enum AuthState {
    Missing,
    Invalid(JsonProblem),
    /// Another uid owns or can write the file or the Codex home: whatever
    /// it holds may have been planted, and nothing is taken from it.
    Untrusted(String),
    Valid(Box<AuthDotJson>),
}

impl Snapshot {
    fn from_raw(raw: Option<Vec<u8>>) -> Snapshot {
        let state = match &raw {
            None => AuthState::Missing,
            Some(bytes) => match AuthDotJson::parse(bytes) {
                Ok(auth) => AuthState::Valid(Box::new(auth)),
                Err(problem) => AuthState::Invalid(problem),
            },
        };
        Snapshot {
            raw: Secret::new(raw),
            state,
        }
    }

    pub fn valid(&self) -> Option<&AuthDotJson> {
        match &self.state {
            AuthState::Valid(auth) => Some(auth),
            _ => None,
        }
    }

    /// The account a valid file authenticates.
    pub fn account_id(&self) -> Option<String> {
        let credential = self.valid()?.credential().ok()?;
        Some(credential.account_id().to_owned())
    }
}

/// The outcome of [`CodexHome::replace`].
#[derive(Debug)]
pub enum Replace {
    Written,
    /// The file changed since the snapshot was taken; nothing was written.
    Changed(Snapshot),
}

/// Where Codex keeps its login (`cli_auth_credentials_store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialsStore {
    File,
    Keyring,
    Auto,
}

/// A Codex home directory (`$CODEX_HOME`, default `~/.codex`).
#[derive(Debug, Clone)]
pub struct CodexHome {
    dir: PathBuf,
}

impl CodexHome {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CodexHome { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where Codex keeps its login, from `cli_auth_credentials_store` in the
    /// Codex home's config.toml. A config that cannot be read or parsed
    /// counts as the default, `file` (Codex refuses to start with it anyway).
    /// Codex's own settings file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    pub fn credentials_store(&self) -> CredentialsStore {
        let path = self.config_path();
        let text = match crate::base::fsutil::read_optional(&path) {
            Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            Ok(None) => return CredentialsStore::File,
            Err(e) => {
                tracing::debug!("cannot read {}: {e}", path.display());
                return CredentialsStore::File;
            }
        };
        let table: toml::Table = match toml::from_str(&text) {
            Ok(table) => table,
            Err(_) => return CredentialsStore::File,
        };
        match table
            .get("cli_auth_credentials_store")
            .and_then(toml::Value::as_str)
        {
            Some("keyring") => CredentialsStore::Keyring,
            Some("auto") => CredentialsStore::Auto,
            _ => CredentialsStore::File,
        }
    }

    /// Why Codex may not read the auth.json the broker keeps, with the fix;
    /// `None` when Codex uses the file.
    pub fn keyring_problem(&self) -> Option<String> {
        let (value, what) = match self.credentials_store() {
            CredentialsStore::File => return None,
            CredentialsStore::Keyring => ("keyring", "keeps its login in the system keyring"),
            CredentialsStore::Auto => (
                "auto",
                "keeps its login in the system keyring wherever there is one",
            ),
        };
        Some(format!(
            "{config} sets cli_auth_credentials_store = \"{value}\": Codex {what} and does not \
             read {auth}, which codex-broker keeps fresh; set cli_auth_credentials_store = \
             \"file\" in {config}",
            config = self.dir.join("config.toml").display(),
            auth = self.auth_path().display(),
        ))
    }

    pub fn auth_path(&self) -> PathBuf {
        self.dir.join(AUTH_FILE)
    }

    /// Reads auth.json without locks: Codex replaces it by rename, so a read
    /// always sees a whole file. A file or Codex home that another uid owns
    /// or can write is read as [`AuthState::Untrusted`].
    pub fn read(&self) -> Result<Snapshot, FsError> {
        let path = self.auth_path();
        let dir_problem = std::fs::metadata(&self.dir)
            .ok()
            .and_then(|m| fsutil::untrusted(&m))
            .map(|why| format!("the Codex home {}: {why}", self.dir.display()));
        let Some((bytes, meta)) = fsutil::read_with_metadata(&path)? else {
            return Ok(Snapshot::from_raw(None));
        };
        let problem = dir_problem
            .or_else(|| fsutil::untrusted(&meta).map(|why| format!("{}: {why}", path.display())));
        let mut snapshot = Snapshot::from_raw(Some(bytes));
        if let Some(problem) = problem {
            snapshot.state = AuthState::Untrusted(format!(
                "{problem}; nothing is taken from it or written to it until that is fixed"
            ));
        }
        Ok(snapshot)
    }

    /// Writes `new` if the file still holds what `expected` saw, under Codex's
    /// locks (`auth.lock`, then `auth.json.lock` with a bounded wait). The locks
    /// are held only for the compare and the write.
    pub fn replace(&self, expected: &Snapshot, new: &AuthDotJson) -> Result<Replace, FsError> {
        fsutil::create_dir_if_missing(&self.dir)?;
        let _outer = fsutil::lock_exclusive(&self.dir.join(OUTER_LOCK))?;
        let _inner = fsutil::lock_exclusive_within(
            &self.dir.join(INNER_LOCK),
            INNER_LOCK_TIMEOUT,
            INNER_LOCK_INTERVAL,
        )?;
        let current = fsutil::read_optional(&self.auth_path())?;
        if current != *expected.raw.expose() {
            return Ok(Replace::Changed(Snapshot::from_raw(current)));
        }
        fsutil::write_atomic(&self.auth_path(), &new.to_bytes())?;
        Ok(Replace::Written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::jwt::{chatgpt_claims, encode_unsigned};

    fn token(account: &str, exp: i64) -> String {
        encode_unsigned(&chatgpt_claims(account, "plus", "a@example.com", exp))
    }

    fn chatgpt_file(account: &str) -> String {
        serde_json::json!({
            "auth_mode": "chatgpt",
            "OPENAI_API_KEY": null,
            "tokens": {
                "id_token": token(account, 1_900_000_000),
                "access_token": token(account, 1_900_000_100),
                "refresh_token": "rt-1",
                "account_id": account,
                "future_token_field": {"x": 1}
            },
            "last_refresh": "2026-11-22T14:59:16.513947230Z",
            "agent_identity": {"kept": true}
        })
        .to_string()
    }

    #[test]
    fn parses_and_keeps_unknown_fields() {
        let auth = AuthDotJson::parse(chatgpt_file("acc-1").as_bytes()).unwrap();
        let Credential::ChatGpt {
            account_id,
            expires_at,
            last_refresh,
            id_claims,
        } = auth.credential().unwrap()
        else {
            panic!("expected ChatGPT credentials");
        };
        assert_eq!(account_id, "acc-1");
        assert_eq!(expires_at, Some(1_900_000_100));
        assert_eq!(id_claims.plan.as_deref(), Some("plus"));
        assert_eq!(last_refresh.unwrap().nanosecond(), 513_947_230);
        let round: Value = serde_json::from_slice(&auth.to_bytes()).unwrap();
        assert_eq!(round["agent_identity"]["kept"], true);
        assert_eq!(round["tokens"]["future_token_field"]["x"], 1);
        assert_eq!(round["OPENAI_API_KEY"], Value::Null);
    }

    #[test]
    fn timestamps_keep_codex_format() {
        let t = OffsetDateTime::parse("2026-11-22T14:59:16.513947230Z", &Rfc3339).unwrap();
        assert_eq!(format_timestamp(t), "2026-11-22T14:59:16.51394723Z");
    }

    #[test]
    fn api_key_ids_are_stable_and_short() {
        let a = api_key_account_id("sk-abc");
        assert_eq!(a, api_key_account_id(" sk-abc\n"));
        assert_eq!(a.len(), "apikey-".len() + 12);
        assert_ne!(a, api_key_account_id("sk-abd"));
    }

    #[test]
    fn replace_is_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let home = CodexHome::new(dir.path());
        std::fs::write(home.auth_path(), chatgpt_file("acc-1")).unwrap();
        let snap = home.read().unwrap();
        let new = AuthDotJson::parse(chatgpt_file("acc-2").as_bytes()).unwrap();
        // Someone else rewrites the file after our read.
        std::fs::write(home.auth_path(), chatgpt_file("acc-3")).unwrap();
        match home.replace(&snap, &new).unwrap() {
            Replace::Changed(now) => {
                let Credential::ChatGpt { account_id, .. } =
                    now.valid().unwrap().credential().unwrap()
                else {
                    panic!()
                };
                assert_eq!(account_id, "acc-3");
            }
            Replace::Written => panic!("must not overwrite a changed file"),
        }
        let snap = home.read().unwrap();
        assert!(matches!(
            home.replace(&snap, &new).unwrap(),
            Replace::Written
        ));
        let written = AuthDotJson::parse(&std::fs::read(home.auth_path()).unwrap()).unwrap();
        assert_eq!(written, new);
    }

    #[test]
    fn debug_never_shows_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let home = CodexHome::new(dir.path());
        std::fs::write(home.auth_path(), chatgpt_file("acc-1")).unwrap();
        let snapshot = home.read().unwrap();
        let auth = snapshot.valid().unwrap().clone();
        let tokens = auth.tokens.clone().unwrap();
        let key = AuthDotJson::api_key("sk-secret-key".into(), Map::new());
        let file = chatgpt_file("acc-1");
        let parsed: Value = serde_json::from_str(&file).unwrap();
        let secrets = [
            parsed["tokens"]["id_token"].as_str().unwrap(),
            parsed["tokens"]["access_token"].as_str().unwrap(),
            "rt-1",
            "sk-secret-key",
            file.as_str(),
        ];
        for dbg in [
            format!("{auth:?}"),
            format!("{tokens:?}"),
            format!("{snapshot:?}"),
            format!("{:?}", snapshot.state),
            format!("{key:?}"),
        ] {
            for secret in secrets {
                crate::base::secret::assert_no_secret(&dbg, secret);
            }
            assert!(!dbg.contains("kept"), "{dbg}");
        }
    }
}
