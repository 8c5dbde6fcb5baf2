//! Publishing an account to Codex's auth.json: compare-and-swap against what
//! was read, adopting whatever Codex wrote meanwhile instead of losing it.
//! While the store shields auth.json, the refresh token written is the
//! account's stand-in ([`crate::engine::shield`]).

use std::path::PathBuf;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::base::fsutil::FsError;
use crate::base::json::JsonProblem;
use crate::base::secret::Secret;
use crate::codex::auth::{AuthDotJson, AuthState, CodexHome, Replace, Snapshot};
use crate::codex::provenance::{self, DEFAULT_FORWARDER};
use crate::engine::journal::{Entry, Event, Journal};
use crate::engine::store::{Account, Kind, Store, Upsert};

/// How many times a publish re-reads auth.json after losing a race.
const ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path}: {problem}; it was left untouched: fix it or move it away, then try again")]
    InvalidAuth { path: PathBuf, problem: JsonProblem },
    #[error("account {0} is not in the store")]
    Unknown(String),
    #[error("{0}")]
    Untrusted(String),
    #[error("{0} kept changing while it was being written; try again")]
    Busy(PathBuf),
}

/// What [`publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Whether auth.json was written (false: it already held these tokens).
    pub written: bool,
    /// Accounts found in auth.json and saved into the store first.
    pub adopted: Vec<String>,
}

/// Takes the credentials auth.json holds into the store when they belong to
/// an unknown account or come after the store's in the lineage (a token
/// the store retired never does, nor a stand-in, nor anything in a
/// follower's store). Returns the account id when something was adopted;
/// the journal records it.
pub fn adopt_from_snapshot(
    store: &mut Store,
    snapshot: &Snapshot,
    journal: &Journal,
) -> Option<String> {
    // A follower keeps no refresh token: what a login on its machine
    // wrote stays in auth.json alone.
    if store.follows.is_some() {
        return None;
    }
    let auth = snapshot.valid()?;
    let mut account = Account::from_auth(auth).ok()?;
    let id = account.id.clone();
    let original = store
        .get(&id)
        .and_then(|a| a.tokens.as_ref())
        .map(|t| t.codex_extra.expose());
    if let Some(tokens) = account.tokens.as_mut() {
        let mut extra = tokens.codex_extra.expose().clone();
        provenance::keep_original(&mut extra, original);
        tokens.codex_extra = Secret::new(extra);
    }
    let replaced = store
        .get(&id)
        .and_then(|a| a.tokens.as_ref())
        .map(|t| t.refresh_token.expose().clone());
    let new = account
        .tokens
        .as_ref()
        .map(|t| t.refresh_token.expose().clone());
    match store.upsert(account) {
        Upsert::Added | Upsert::Updated => {
            journal.record(
                &Entry::new(&id, Event::Adopted, "auth.json")
                    .replacing(replaced.as_deref(), new.as_deref()),
            );
            Some(id)
        }
        Upsert::Unchanged => None,
    }
}

/// Writes the account `id` of `store` to auth.json. Tokens Codex wrote in the
/// meantime (for any account) are first adopted into `store`, so nothing the
/// file held is lost. An auth.json that cannot be parsed is never replaced.
pub fn publish(
    codex: &CodexHome,
    store: &mut Store,
    id: &str,
    journal: &Journal,
) -> Result<Published, PublishError> {
    let mut adopted = Vec::new();
    for _ in 0..ATTEMPTS {
        let snapshot = codex.read()?;
        match &snapshot.state {
            AuthState::Invalid(problem) => {
                return Err(PublishError::InvalidAuth {
                    path: codex.auth_path(),
                    problem: problem.clone(),
                });
            }
            AuthState::Untrusted(problem) => return Err(PublishError::Untrusted(problem.clone())),
            AuthState::Missing | AuthState::Valid(_) => {}
        }
        if let Some(adopted_id) = adopt_from_snapshot(store, &snapshot, journal)
            && !adopted.contains(&adopted_id)
        {
            adopted.push(adopted_id);
        }
        let shield = store.shield;
        let account = store
            .get_mut(id)
            .ok_or_else(|| PublishError::Unknown(id.to_owned()))?;
        if shield && account.kind == Kind::Chatgpt && account.stand_in.is_none() {
            account.stand_in = Some(crate::engine::shield::mint());
        }
        let account = &*account;
        let current = snapshot.valid();
        let same_account = snapshot.account_id().as_deref() == Some(id);
        let extra = match current {
            Some(auth) if same_account => auth.extra.expose().clone(),
            _ => account.codex_extra.expose().clone(),
        };
        let Some(mut new) = account.to_auth(extra) else {
            return Err(PublishError::Unknown(id.to_owned()));
        };
        if let (true, Some(stand_in), Some(tokens)) =
            (shield, &account.stand_in, new.tokens.as_mut())
        {
            tokens.refresh_token = stand_in.clone();
        }
        // Shielded, or set up by `setup codex`: Codex refreshes at the
        // forwarder.
        if let (true, Some(tokens)) = (shield || store.codex_setup, new.tokens.as_mut()) {
            let mut extra = tokens.extra.expose().clone();
            let forwarder = store.forwarder.as_deref();
            provenance::through_forwarder(&mut extra, forwarder.unwrap_or(DEFAULT_FORWARDER));
            tokens.extra = Secret::new(extra);
        }
        if let Some(auth) = current.filter(|_| same_account) {
            keep_timestamp_spelling(auth, &mut new);
        }
        if same_account && current.is_some_and(|auth| *auth == new) {
            store.published = Some(id.to_owned());
            return Ok(Published {
                written: false,
                adopted,
            });
        }
        match codex.replace(&snapshot, &new)? {
            Replace::Written => {
                store.published = Some(id.to_owned());
                return Ok(Published {
                    written: true,
                    adopted,
                });
            }
            Replace::Changed(_) => continue,
        }
    }
    Err(PublishError::Busy(codex.auth_path()))
}

/// Writes the account `id` to auth.json again after its tokens changed, but
/// only while auth.json holds that account: a deleted file (the user logged
/// out) or another account (the user logged in elsewhere) is respected.
/// Returns whether the file was written.
pub fn republish(
    codex: &CodexHome,
    store: &mut Store,
    id: &str,
    journal: &Journal,
) -> Result<bool, PublishError> {
    if codex.read()?.account_id().as_deref() != Some(id) {
        return Ok(false);
    }
    Ok(publish(codex, store, id, journal)?.written)
}

/// Codex and the broker spell the same instant with different sub-second
/// digits; an unchanged `last_refresh` keeps the file's spelling so that an
/// unchanged account is not rewritten.
fn keep_timestamp_spelling(current: &AuthDotJson, new: &mut AuthDotJson) {
    let instant = |s: &Option<String>| {
        s.as_deref()
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
    };
    if instant(&current.last_refresh).is_some()
        && instant(&current.last_refresh) == instant(&new.last_refresh)
    {
        new.last_refresh.clone_from(&current.last_refresh);
    }
}
