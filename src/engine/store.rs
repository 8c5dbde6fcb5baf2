//! The account store: `<home>/accounts.json`, versioned JSON written
//! atomically under an exclusive lock on `<home>/accounts.lock`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::base::fsutil::{self, FsError};
use crate::base::json::{self, JsonProblem};
use crate::base::secret::Secret;
use crate::codex::auth::{AuthDotJson, Credential, TokenData};
use crate::engine::quota::Quota;

pub const STORE_FILE: &str = "accounts.json";
pub const STORE_LOCK: &str = "accounts.lock";
pub const STORE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path}: {problem} (the file was left untouched; fix or move it away)")]
    Invalid { path: PathBuf, problem: JsonProblem },
    #[error(
        "{path}: store version {found} is newer than this codex-broker understands \
         (version {STORE_VERSION}); upgrade codex-broker"
    )]
    Version { path: PathBuf, found: u64 },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// Use the main account; fall back to others when it cannot serve.
    #[default]
    MainFirst,
    /// Spend the fallback accounts first and keep the main account for last.
    FallbackFirst,
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Routing::MainFirst => "main-first",
            Routing::FallbackFirst => "fallback-first",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Chatgpt,
    ApiKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Main,
    Fallback,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    #[default]
    Ok,
    RefreshBackoff,
    /// A refresh was sent and its answer lost: the current access token is
    /// served, and the refresh is tried once more only near its expiry.
    RefreshInterrupted,
    NeedsLogin,
}

macro_rules! snake_display {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let v = serde_json::to_value(self).map_err(|_| fmt::Error)?;
                f.write_str(v.as_str().unwrap_or_default())
            }
        }
    )*};
}
snake_display!(Kind, Role, State);

/// Per-account killswitch thresholds, in percent used.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub five_hour: f64,
    pub weekly: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Killswitch {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub limits: BTreeMap<String, Limits>,
}

/// OAuth tokens of a ChatGPT account, plus the unknown `tokens` fields of
/// the auth.json they came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tokens {
    pub id_token: Secret<String>,
    pub access_token: Secret<String>,
    pub refresh_token: Secret<String>,
    #[serde(default, skip_serializing_if = "is_empty_secret_map")]
    pub codex_extra: Secret<Map<String, Value>>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_empty_secret_map(m: &Secret<Map<String, Value>>) -> bool {
    m.expose().is_empty()
}

/// How many retired refresh tokens an account remembers.
const RETIRED_KEPT: usize = 16;

/// A token's SHA-256, hex: lets the store recognise a token without
/// keeping it.
pub fn fingerprint(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub plan: Option<String>,
    pub kind: Kind,
    pub role: Role,
    #[serde(default)]
    pub state: State,
    #[serde(default)]
    pub state_reason: Option<String>,
    /// While in `refresh_backoff`: no refresh is tried before this, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_until: Option<i64>,
    /// Refresh failures in a row (transient ones; reset by a success).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refresh_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Tokens>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret<String>>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_refresh: Option<OffsetDateTime>,
    /// Access-token expiry, unix seconds.
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub quota: Option<Quota>,
    /// Fingerprints (SHA-256, hex) of the refresh tokens this account had
    /// before, newest last: a client presenting one of them is answered
    /// with the current tokens instead of spending anything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_refresh_tokens: Vec<String>,
    /// Top-level auth.json fields this version does not know, carried with
    /// the account so that publishing it again writes them back.
    #[serde(default, skip_serializing_if = "is_empty_secret_map")]
    pub codex_extra: Secret<Map<String, Value>>,
    /// The stand-in refresh token published in its place while the store
    /// shields auth.json ([`crate::engine::shield`]); kept across refreshes, so
    /// that a tool's copy keeps working through the forwarder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stand_in: Option<Secret<String>>,
    #[serde(flatten)]
    pub extra: Secret<Map<String, Value>>,
}

impl Account {
    /// The account an auth.json authenticates, ready to be stored.
    pub fn from_auth(auth: &AuthDotJson) -> Result<Account, JsonProblem> {
        let mut account = Account {
            id: String::new(),
            label: None,
            email: None,
            plan: None,
            kind: Kind::Chatgpt,
            role: Role::Fallback,
            state: State::Ok,
            state_reason: None,
            backoff_until: None,
            refresh_failures: 0,
            tokens: None,
            api_key: None,
            last_refresh: None,
            expires_at: None,
            quota: None,
            retired_refresh_tokens: Vec::new(),
            codex_extra: auth.extra.clone(),
            stand_in: None,
            extra: Secret::default(),
        };
        match auth.credential()? {
            Credential::ChatGpt {
                account_id,
                id_claims,
                expires_at,
                last_refresh,
            } => {
                let t = auth
                    .tokens
                    .as_ref()
                    .expect("validated ChatGPT file has tokens");
                if crate::engine::shield::is_stand_in(t.refresh_token.expose()) {
                    return Err(JsonProblem::field(
                        "tokens.refresh_token",
                        "a stand-in codex-broker published in shield mode, not a refresh \
                         token: the account's real login lives in the broker that shields this \
                         file",
                    ));
                }
                account.id = account_id;
                account.email = id_claims.email;
                account.plan = id_claims.plan;
                account.expires_at = expires_at;
                account.last_refresh = last_refresh;
                account.tokens = Some(Tokens {
                    id_token: t.id_token.clone(),
                    access_token: t.access_token.clone(),
                    refresh_token: t.refresh_token.clone(),
                    codex_extra: t.extra.clone(),
                });
            }
            Credential::ApiKey { id } => {
                account.id = id;
                account.kind = Kind::ApiKey;
                account.api_key = auth.openai_api_key.clone();
            }
        }
        Ok(account)
    }

    /// The auth.json that publishes this account. `extra` holds the unknown
    /// top-level fields to write (those of the file being replaced when it
    /// holds the same account, else the account's own).
    pub fn to_auth(&self, extra: Map<String, Value>) -> Option<AuthDotJson> {
        match self.kind {
            Kind::ApiKey => Some(AuthDotJson::api_key(self.api_key.clone()?, extra)),
            Kind::Chatgpt => {
                let t = self.tokens.as_ref()?;
                let tokens = TokenData {
                    id_token: t.id_token.clone(),
                    access_token: t.access_token.clone(),
                    refresh_token: t.refresh_token.clone(),
                    account_id: Some(self.id.clone()),
                    extra: t.codex_extra.clone(),
                };
                let last_refresh = self.last_refresh.unwrap_or_else(OffsetDateTime::now_utc);
                Some(AuthDotJson::chatgpt(tokens, last_refresh, extra))
            }
        }
    }

    /// Clears any refresh problem: the credentials are good again.
    pub fn mark_ok(&mut self) {
        self.state = State::Ok;
        self.state_reason = None;
        self.backoff_until = None;
        self.refresh_failures = 0;
    }

    /// The label if there is one, else the id.
    pub fn name(&self) -> &str {
        self.label.as_deref().unwrap_or(&self.id)
    }

    /// Records the current refresh token as retired when `replacement`
    /// takes its place.
    pub fn retire_refresh_token(&mut self, replacement: &str) {
        let Some(current) = &self.tokens else { return };
        if current.refresh_token.expose() == replacement {
            return;
        }
        let current = current.refresh_token.expose().clone();
        self.retire(&current);
    }

    /// Records `refresh_token` as spent: it is never taken back.
    pub fn retire(&mut self, refresh_token: &str) {
        let print = fingerprint(refresh_token);
        self.retired_refresh_tokens.retain(|p| *p != print);
        self.retired_refresh_tokens.push(print);
        let excess = self
            .retired_refresh_tokens
            .len()
            .saturating_sub(RETIRED_KEPT);
        self.retired_refresh_tokens.drain(..excess);
    }

    /// Takes the credentials of `rotated`, the result of spending
    /// `spent` (this account's refresh token when the refresh was sent).
    /// `spent` is retired whatever the store holds now; the rotation
    /// replaces the store's tokens when they are still the spent ones, or
    /// when it comes after whatever replaced them meanwhile.
    pub fn take_rotation(&mut self, spent: &str, rotated: &Account) -> bool {
        let before = self.clone();
        let current = self
            .tokens
            .as_ref()
            .map(|t| t.refresh_token.expose().clone());
        let rotated_rt = rotated.tokens.as_ref().map(|t| t.refresh_token.expose());
        if current.as_deref() == Some(spent) {
            self.install_credentials(rotated);
            if rotated_rt.map(String::as_str) != Some(spent) {
                self.retire(spent);
            }
            self.last_refresh = rotated.last_refresh;
        } else if current.as_ref() != rotated_rt {
            self.retire(spent);
            self.adopt_credentials(rotated);
        }
        *self != before
    }

    /// Copies the credentials and what the tokens say of the account.
    fn install_credentials(&mut self, from: &Account) {
        self.kind = from.kind;
        self.tokens.clone_from(&from.tokens);
        self.api_key.clone_from(&from.api_key);
        self.expires_at = from.expires_at;
        self.codex_extra.clone_from(&from.codex_extra);
        if from.email.is_some() {
            self.email.clone_from(&from.email);
        }
        if from.plan.is_some() {
            self.plan.clone_from(&from.plan);
        }
        self.mark_ok();
    }

    /// Whether `refresh_token` is this account's, current or retired.
    pub fn owns_refresh_token(&self, refresh_token: &str) -> bool {
        self.tokens
            .as_ref()
            .is_some_and(|t| t.refresh_token.expose() == refresh_token)
            || self.retired(refresh_token)
    }

    /// Whether `token` is the stand-in this account is published with.
    pub fn has_stand_in(&self, token: &str) -> bool {
        self.stand_in
            .as_ref()
            .is_some_and(|s| fingerprint(s.expose()) == fingerprint(token))
    }

    /// Whether `refresh_token` is one this account has retired.
    pub fn retired(&self, refresh_token: &str) -> bool {
        self.retired_refresh_tokens
            .contains(&fingerprint(refresh_token))
    }

    /// Whether `other` (the same account, read from a file or a login)
    /// holds credentials that come after this account's own:
    /// - a refresh token this account retired is older, always;
    /// - the same refresh token is newer only with a later-issued access token;
    /// - a refresh token never seen here is either the child of the current
    ///   one (someone else refreshed it) or a new login: newer unless its
    ///   access token was issued before the current one.
    ///
    /// A clock (`last_refresh`) decides only when neither side's access
    /// token says when it was issued.
    pub fn is_superseded_by(&self, other: &Account) -> bool {
        if self.kind == Kind::ApiKey || other.kind == Kind::ApiKey {
            return other.api_key != self.api_key || other.kind != self.kind;
        }
        let (Some(mine), Some(theirs)) = (&self.tokens, &other.tokens) else {
            return other.tokens.is_some();
        };
        if mine == theirs {
            return false;
        }
        let theirs_rt = theirs.refresh_token.expose();
        if self.retired(theirs_rt) {
            return false;
        }
        let same_lineage_step = mine.refresh_token.expose() == theirs_rt;
        match (mine.issued_at(), theirs.issued_at()) {
            (Some(a), Some(b)) if same_lineage_step => b > a,
            (Some(a), Some(b)) => b >= a,
            _ => other.last_refresh > self.last_refresh,
        }
    }

    /// Takes the credentials of `newer` (the same account, read from an
    /// auth.json or a login) when they come after this account's own in
    /// the lineage ([`Account::is_superseded_by`]). Returns whether
    /// anything changed.
    pub fn adopt_credentials(&mut self, newer: &Account) -> bool {
        debug_assert_eq!(self.id, newer.id);
        if !self.is_superseded_by(newer) {
            return false;
        }
        let before = self.clone();
        if let Some(new) = &newer.tokens {
            self.retire_refresh_token(new.refresh_token.expose());
        }
        self.install_credentials(newer);
        // A file may claim a refresh in the future; the store never does.
        let now = OffsetDateTime::now_utc();
        self.last_refresh = newer.last_refresh.map(|t| t.min(now));
        *self != before
    }
}

impl Tokens {
    /// The access token's `iat`, unix seconds.
    pub fn iat(&self) -> Option<i64> {
        crate::wire::jwt::decode(self.access_token.expose())
            .ok()?
            .iat
    }

    /// When the access token was issued (its `iat`, else its `exp`, which
    /// orders tokens of one issuer just as well), unix seconds.
    pub fn issued_at(&self) -> Option<i64> {
        let claims = crate::wire::jwt::decode(self.access_token.expose()).ok()?;
        claims.iat.or(claims.exp)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Store {
    pub version: u32,
    #[serde(default)]
    pub routing: Routing,
    #[serde(default)]
    pub killswitch: Killswitch,
    /// The account auth.json was last written with (or found to hold).
    #[serde(default)]
    pub published: Option<String>,
    /// Whether auth.json is published with a stand-in refresh token
    /// ([`crate::engine::shield`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shield: bool,
    /// Whether `setup codex` pointed Codex at the forwarder: auth.json then
    /// names the forwarder as its issuer, as in shield mode
    /// ([`crate::codex::provenance`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub codex_setup: bool,
    /// The leader's socket when this home belongs to a follower
    /// ([`crate::follow::leader`]): it holds no refresh token, only stand-ins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows: Option<PathBuf>,
    /// The forwarder the daemon last served (`http://127.0.0.1:1456`): in
    /// shield mode auth.json names it as the issuer Codex refreshes at
    /// ([`crate::codex::provenance`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarder: Option<String>,
    #[serde(default)]
    pub accounts: Vec<Account>,
    #[serde(flatten)]
    pub extra: Secret<Map<String, Value>>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            version: STORE_VERSION,
            routing: Routing::default(),
            killswitch: Killswitch::default(),
            published: None,
            shield: false,
            codex_setup: false,
            follows: None,
            forwarder: None,
            accounts: Vec::new(),
            extra: Secret::default(),
        }
    }
}

/// Why an account query matched no single account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("no account matches `{query}`; known: {known}")]
    NotFound { query: String, known: String },
    #[error("`{query}` matches several accounts: {matches}; give more of the id")]
    Ambiguous { query: String, matches: String },
}

/// The result of [`Store::upsert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    Added,
    Updated,
    /// The store already held these or newer credentials.
    Unchanged,
}

impl Store {
    pub fn get(&self, id: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.id == id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Account> {
        self.accounts.iter_mut().find(|a| a.id == id)
    }

    /// Finds one account by exact id, exact label, or a unique id prefix.
    pub fn find(&self, query: &str) -> Result<&Account, LookupError> {
        if let Some(a) = self.get(query) {
            return Ok(a);
        }
        if let Some(a) = self
            .accounts
            .iter()
            .find(|a| a.label.as_deref() == Some(query))
        {
            return Ok(a);
        }
        let matches: Vec<&Account> = if query.is_empty() {
            Vec::new()
        } else {
            self.accounts
                .iter()
                .filter(|a| a.id.starts_with(query))
                .collect()
        };
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(LookupError::NotFound {
                query: query.to_owned(),
                known: if self.accounts.is_empty() {
                    "none".to_owned()
                } else {
                    self.accounts
                        .iter()
                        .map(|a| a.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }),
            many => Err(LookupError::Ambiguous {
                query: query.to_owned(),
                matches: many
                    .iter()
                    .map(|a| a.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    pub fn main_account(&self) -> Option<&Account> {
        self.accounts.iter().find(|a| a.role == Role::Main)
    }

    /// Adds `account`, or updates the account with the same id (keeping its
    /// label, role, quota and state history). The first account becomes main.
    pub fn upsert(&mut self, account: Account) -> Upsert {
        if let Some(existing) = self.get_mut(&account.id) {
            return if existing.adopt_credentials(&account) {
                Upsert::Updated
            } else {
                Upsert::Unchanged
            };
        }
        let mut account = account;
        account.role = if self.main_account().is_none() {
            Role::Main
        } else {
            Role::Fallback
        };
        self.accounts.push(account);
        Upsert::Added
    }

    /// Adds or renews the account of a login the user just made: its tokens
    /// start a new lineage and replace the old ones (which are retired),
    /// unless the store retired them already.
    pub fn upsert_login(&mut self, account: Account) -> Upsert {
        let Some(existing) = self.get_mut(&account.id) else {
            return self.upsert(account);
        };
        let new_rt = account.tokens.as_ref().map(|t| t.refresh_token.expose());
        if new_rt.is_some_and(|t| existing.retired(t)) || existing.tokens == account.tokens {
            return Upsert::Unchanged;
        }
        if let Some(t) = new_rt {
            existing.retire_refresh_token(t);
        }
        existing.install_credentials(&account);
        existing.last_refresh = account.last_refresh;
        Upsert::Updated
    }

    /// Makes `id` the main account; the previous main becomes a fallback.
    pub fn make_main(&mut self, id: &str) {
        for a in &mut self.accounts {
            a.role = if a.id == id {
                Role::Main
            } else {
                Role::Fallback
            };
        }
    }

    /// Deletes the account `id`; when it was main, the first remaining
    /// account takes its place.
    pub fn remove(&mut self, id: &str) -> Option<Account> {
        let index = self.accounts.iter().position(|a| a.id == id)?;
        let removed = self.accounts.remove(index);
        self.killswitch.limits.remove(id);
        if self.published.as_deref() == Some(id) {
            self.published = None;
        }
        if removed.role == Role::Main
            && let Some(first) = self.accounts.first_mut()
        {
            first.role = Role::Main;
        }
        Some(removed)
    }
}

/// The store's files in a broker home.
#[derive(Debug, Clone)]
pub struct StoreFile {
    home: PathBuf,
    /// `home`/accounts.json, joined once: the forwarder checks it on every
    /// request.
    path: PathBuf,
}

impl StoreFile {
    pub fn new(home: impl Into<PathBuf>) -> Self {
        let home = home.into();
        let path = home.join(STORE_FILE);
        StoreFile { home, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock_path(&self) -> PathBuf {
        self.home.join(STORE_LOCK)
    }

    /// Reads the store; a missing file is an empty store. Saves are atomic
    /// renames, so no lock is needed to read a consistent store.
    pub fn load(&self) -> Result<Store, StoreError> {
        let path = self.path();
        match fsutil::read_optional(path)? {
            None => Ok(Store::default()),
            Some(bytes) => parse_store(path, &bytes),
        }
    }

    /// Runs `change` on the current store under the exclusive lock and saves
    /// the result if it differs. Concurrent updates from any process are
    /// serialized, so none is lost.
    pub fn update<R, E>(&self, change: impl FnOnce(&mut Store) -> Result<R, E>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        fsutil::ensure_private_dir(&self.home).map_err(StoreError::from)?;
        let _lock = fsutil::lock_exclusive(&self.lock_path()).map_err(StoreError::from)?;
        let before = self.load()?;
        let mut store = before.clone();
        let result = change(&mut store)?;
        if store != before {
            self.save_locked(&store)?;
        }
        Ok(result)
    }

    fn save_locked(&self, store: &Store) -> Result<(), StoreError> {
        let mut bytes = serde_json::to_vec_pretty(store).expect("the store always serializes");
        bytes.push(b'\n');
        fsutil::write_atomic(self.path(), &bytes)?;
        Ok(())
    }
}

pub fn parse_store(path: &Path, bytes: &[u8]) -> Result<Store, StoreError> {
    let invalid = |problem| StoreError::Invalid {
        path: path.to_owned(),
        problem,
    };
    #[derive(Deserialize)]
    struct Versioned {
        version: u64,
    }
    let v: Versioned = json::parse(bytes).map_err(invalid)?;
    if v.version > u64::from(STORE_VERSION) {
        return Err(StoreError::Version {
            path: path.to_owned(),
            found: v.version,
        });
    }
    let store: Store = json::parse(bytes).map_err(invalid)?;
    let mut seen = std::collections::HashSet::new();
    for (i, a) in store.accounts.iter().enumerate() {
        if !seen.insert(a.id.as_str()) {
            return Err(invalid(JsonProblem::field(
                format!("accounts[{i}].id"),
                format!("duplicate account id `{}`", a.id),
            )));
        }
        // A follower keeps a leader's account that needs a login, or whose
        // tokens it could not take, without tokens.
        let missing = match a.kind {
            Kind::Chatgpt if a.tokens.is_none() && a.state != State::NeedsLogin => Some((
                "tokens",
                "missing for a chatgpt account that does not need a login",
            )),
            Kind::ApiKey if a.api_key.is_none() => {
                Some(("api_key", "missing for an api_key account"))
            }
            _ => None,
        };
        if let Some((field, problem)) = missing {
            return Err(invalid(JsonProblem::field(
                format!("accounts[{i}].{field}"),
                problem.to_owned(),
            )));
        }
        for (field, time) in [
            ("expires_at", a.expires_at),
            ("backoff_until", a.backoff_until),
        ] {
            if let Some(t) = time.filter(|t| !crate::wire::jwt::plausible_time(*t)) {
                return Err(invalid(JsonProblem::field(
                    format!("accounts[{i}].{field}"),
                    format!("{t} is no plausible unix time"),
                )));
            }
        }
    }
    Ok(store)
}

/// A ChatGPT account with placeholder tokens, for unit tests of the
/// modules that decide on expiry and age.
#[cfg(test)]
pub(crate) fn test_account(expires_at: Option<i64>, last_refresh: i64) -> Account {
    serde_json::from_value(serde_json::json!({
        "id": "acc", "kind": "chatgpt", "role": "main",
        "tokens": {"id_token": "a.b.c", "access_token": "a.b.c", "refresh_token": "r"},
        "expires_at": expires_at,
        "last_refresh": crate::codex::auth::format_timestamp(
            OffsetDateTime::from_unix_timestamp(last_refresh).unwrap()),
    }))
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::jwt::{chatgpt_claims, encode_unsigned};

    fn chatgpt_account(id: &str, refreshed: i64) -> Account {
        let t = encode_unsigned(&chatgpt_claims(
            id,
            "plus",
            "a@example.com",
            refreshed + 3600,
        ));
        let auth = AuthDotJson::chatgpt(
            TokenData {
                id_token: t.clone().into(),
                access_token: t.into(),
                refresh_token: format!("rt-{id}-{refreshed}").into(),
                account_id: Some(id.into()),
                extra: Secret::default(),
            },
            OffsetDateTime::from_unix_timestamp(refreshed).unwrap(),
            Map::new(),
        );
        Account::from_auth(&auth).unwrap()
    }

    #[test]
    fn a_stand_in_is_never_read_as_a_refresh_token() {
        let mut account = chatgpt_account("acc-s", 1_795_000_000);
        let stand_in = crate::engine::shield::mint();
        let mut auth = account.to_auth(Map::new()).unwrap();
        auth.tokens.as_mut().unwrap().refresh_token = stand_in.clone();
        let e = Account::from_auth(&auth).unwrap_err().to_string();
        assert!(
            e.contains("tokens.refresh_token") && e.contains("stand-in"),
            "{e}"
        );
        assert!(!e.contains(stand_in.expose().as_str()), "{e}");
        assert!(!account.has_stand_in(stand_in.expose()));
        account.stand_in = Some(stand_in.clone());
        assert!(account.has_stand_in(stand_in.expose()));
        assert!(!account.owns_refresh_token(stand_in.expose()));
        assert!(!account.has_stand_in("rt-acc-s-1795000000"));
    }

    /// `base` with its tokens replaced: refresh token `rt`, access token
    /// issued at `iat` (no `iat` claim when `None`, expiring an hour later
    /// than `exp_from`), and `last_refresh` at `clock`.
    fn with_tokens(
        base: &Account,
        rt: &str,
        iat: Option<i64>,
        exp_from: i64,
        clock: i64,
    ) -> Account {
        let mut claims = chatgpt_claims(&base.id, "plus", "a@example.com", exp_from + 3600);
        if let Some(iat) = iat {
            claims["iat"] = iat.into();
        }
        let mut a = base.clone();
        let t = a.tokens.as_mut().unwrap();
        t.access_token = encode_unsigned(&claims).into();
        t.refresh_token = rt.to_owned().into();
        a.last_refresh = Some(OffsetDateTime::from_unix_timestamp(clock).unwrap());
        a
    }

    #[test]
    fn lineage_decides_which_tokens_are_newer_never_the_clock_alone() {
        let t = 1_795_000_000;
        let mine = with_tokens(&chatgpt_account("acc", t), "rt-1", Some(t), t, t);
        let mut store_account = mine.clone();
        store_account.retire("rt-0");
        // A retired token loses whatever its clocks say.
        let retired = with_tokens(&mine, "rt-0", Some(t + 999), t + 999, t + 999);
        assert!(!store_account.is_superseded_by(&retired));
        // The same token set: nothing to take.
        assert!(!store_account.is_superseded_by(&mine));
        // The same refresh token wins only with a later-issued access token.
        let same_rt = with_tokens(&mine, "rt-1", Some(t), t, t + 5);
        assert!(
            !store_account.is_superseded_by(&same_rt),
            "equal iat, later clock"
        );
        let same_rt = with_tokens(&mine, "rt-1", Some(t + 1), t, t);
        assert!(store_account.is_superseded_by(&same_rt));
        // A token never seen: a child of ours or a new login, unless issued before ours.
        let child = with_tokens(&mine, "rt-2", Some(t), t, t - 100);
        assert!(store_account.is_superseded_by(&child), "same-second child");
        let older = with_tokens(&mine, "rt-x", Some(t - 1), t - 1, t + 86_400);
        assert!(
            !store_account.is_superseded_by(&older),
            "future clock, older token"
        );
        // Without iat, the expiry orders tokens of one issuer.
        let no_iat = with_tokens(&mine, "rt-y", None, t + 60, t);
        assert!(store_account.is_superseded_by(&no_iat));

        // Adopting the child retires our token; a future clock is clamped.
        let mut a = store_account.clone();
        let mut from_future = child.clone();
        from_future.last_refresh = Some(OffsetDateTime::now_utc() + time::Duration::days(30));
        assert!(a.adopt_credentials(&from_future));
        assert!(a.retired("rt-1") && a.retired("rt-0"));
        assert!(a.last_refresh.unwrap() <= OffsetDateTime::now_utc());
        assert!(
            !a.adopt_credentials(&mine),
            "our own old tokens never come back"
        );
    }

    #[test]
    fn a_rotation_is_taken_whatever_the_store_went_through() {
        let t = 1_795_000_000;
        let before = with_tokens(&chatgpt_account("acc", t), "rt-1", Some(t), t, t);
        let rotated = with_tokens(&before, "rt-2", Some(t + 10), t + 10, t + 10);
        // The store still holds the spent token.
        let mut a = before.clone();
        assert!(a.take_rotation("rt-1", &rotated));
        assert_eq!(a.tokens.as_ref().unwrap().refresh_token.expose(), "rt-2");
        assert!(a.retired("rt-1"));
        assert!(!a.take_rotation("rt-1", &rotated), "taken once");
        // A login came in meanwhile, issued after the rotation: it stays,
        // and the spent token is retired all the same.
        let mut a = with_tokens(&before, "rt-login", Some(t + 20), t + 20, t + 20);
        assert!(a.take_rotation("rt-1", &rotated));
        assert_eq!(
            a.tokens.as_ref().unwrap().refresh_token.expose(),
            "rt-login"
        );
        assert!(a.retired("rt-1"));
    }

    #[test]
    fn a_login_replaces_the_tokens_but_never_with_retired_ones() {
        let t = 1_795_000_000;
        let mut s = Store::default();
        s.upsert(with_tokens(
            &chatgpt_account("acc", t),
            "rt-1",
            Some(t),
            t,
            t,
        ));
        // A login whose token was issued before the stored one still wins:
        // the user just signed in.
        let login = with_tokens(
            &chatgpt_account("acc", t),
            "rt-new",
            Some(t - 50),
            t - 50,
            t,
        );
        assert_eq!(s.upsert_login(login.clone()), Upsert::Updated);
        let a = s.get("acc").unwrap();
        assert_eq!(a.tokens.as_ref().unwrap().refresh_token.expose(), "rt-new");
        assert!(a.retired("rt-1"));
        assert_eq!(s.upsert_login(login), Upsert::Unchanged);
        let stale = with_tokens(&chatgpt_account("acc", t), "rt-1", Some(t + 99), t + 99, t);
        assert_eq!(s.upsert_login(stale), Upsert::Unchanged);
    }

    #[test]
    fn first_account_is_main_and_dedup_by_id() {
        let mut s = Store::default();
        assert_eq!(s.upsert(chatgpt_account("acc-1", 1000)), Upsert::Added);
        assert_eq!(s.upsert(chatgpt_account("acc-2", 1000)), Upsert::Added);
        assert_eq!(s.upsert(chatgpt_account("acc-1", 2000)), Upsert::Updated);
        assert_eq!(s.upsert(chatgpt_account("acc-1", 1500)), Upsert::Unchanged);
        assert_eq!(s.accounts.len(), 2);
        assert_eq!(s.get("acc-1").unwrap().role, Role::Main);
        assert_eq!(s.get("acc-2").unwrap().role, Role::Fallback);
        assert_eq!(
            s.get("acc-1")
                .unwrap()
                .tokens
                .as_ref()
                .unwrap()
                .refresh_token
                .expose(),
            "rt-acc-1-2000"
        );
    }

    #[test]
    fn find_by_id_label_and_prefix() {
        let mut s = Store::default();
        s.upsert(chatgpt_account("acc-1", 1));
        s.upsert(chatgpt_account("acc-2", 1));
        s.get_mut("acc-2").unwrap().label = Some("work".into());
        assert_eq!(s.find("acc-1").unwrap().id, "acc-1");
        assert_eq!(s.find("work").unwrap().id, "acc-2");
        assert!(matches!(s.find("acc"), Err(LookupError::Ambiguous { .. })));
        assert!(matches!(s.find("zzz"), Err(LookupError::NotFound { .. })));
        assert!(matches!(s.find(""), Err(LookupError::NotFound { .. })));
    }

    #[test]
    fn removing_main_promotes_another() {
        let mut s = Store::default();
        s.upsert(chatgpt_account("acc-1", 1));
        s.upsert(chatgpt_account("acc-2", 1));
        s.published = Some("acc-1".into());
        s.remove("acc-1").unwrap();
        assert_eq!(s.published, None);
        assert_eq!(s.main_account().unwrap().id, "acc-2");
    }

    #[test]
    fn unknown_fields_survive_a_save() {
        let dir = tempfile::tempdir().unwrap();
        let file = StoreFile::new(dir.path());
        let mut doc = serde_json::to_value(Store::default()).unwrap();
        doc["future_setting"] = serde_json::json!({"on": true});
        let mut acc = serde_json::to_value(chatgpt_account("acc-1", 1)).unwrap();
        acc["future_account_field"] = serde_json::json!(7);
        doc["accounts"] = serde_json::json!([acc]);
        std::fs::write(file.path(), doc.to_string()).unwrap();
        file.update(|s| {
            s.routing = Routing::FallbackFirst;
            Ok::<_, StoreError>(())
        })
        .unwrap();
        let saved: Value = serde_json::from_slice(&std::fs::read(file.path()).unwrap()).unwrap();
        assert_eq!(saved["future_setting"]["on"], true);
        assert_eq!(saved["accounts"][0]["future_account_field"], 7);
        assert_eq!(saved["routing"], "fallback-first");
    }

    #[test]
    fn unreadable_stores_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let file = StoreFile::new(dir.path());
        for bad in [
            &b"{\"version\":1,\"accounts\":["[..],
            b"{\"version\":1,\"routing\":\"sideways\"}",
            b"{\"version\":99}",
            b"",
        ] {
            std::fs::write(file.path(), bad).unwrap();
            let err = file
                .update(|s| {
                    s.routing = Routing::FallbackFirst;
                    Ok::<_, StoreError>(())
                })
                .unwrap_err();
            assert!(err.to_string().contains("accounts.json"), "{err}");
            assert_eq!(std::fs::read(file.path()).unwrap(), bad);
        }
    }

    #[test]
    fn debug_of_store_holds_no_secret() {
        let mut s = Store::default();
        s.upsert(chatgpt_account("acc-1", 1));
        let a = s.get("acc-1").unwrap().clone();
        let t = a.tokens.clone().unwrap();
        for dbg in [format!("{s:?}"), format!("{a:?}"), format!("{t:?}")] {
            for secret in [&t.refresh_token, &t.access_token, &t.id_token] {
                crate::base::secret::assert_no_secret(&dbg, secret.expose());
            }
        }
    }

    #[test]
    fn stored_times_out_of_range_are_named() {
        let mut s = Store::default();
        s.upsert(chatgpt_account("acc-1", 1));
        let path = Path::new("accounts.json");
        let good = serde_json::to_vec(&s).unwrap();
        assert!(parse_store(path, &good).is_ok(), "a valid store is taken");
        for (field, value) in [("expires_at", i64::MIN), ("backoff_until", i64::MAX)] {
            let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
            v["accounts"][0][field] = value.into();
            let err = parse_store(path, &serde_json::to_vec(&v).unwrap()).unwrap_err();
            let said = err.to_string();
            assert!(said.contains(&format!("accounts[0].{field}")), "{said}");
            assert!(said.contains("no plausible unix time"), "{said}");
        }
    }
}
