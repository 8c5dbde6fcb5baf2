//! The refresh engine: one refresh per rotation, across threads and
//! processes.
//!
//! A refresh of account A happens only while holding `<home>/locks/A.lock`
//! (and, in this process, A's async gate). Under that lock the engine
//! re-reads the store and Codex's auth.json: if another process or Codex
//! already rotated the tokens, it uses theirs and sends nothing. Rotated
//! tokens are saved to the store before the lock is released and before
//! anyone is handed them.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

use crate::codex_auth::CodexHome;
use crate::config::Config;
use crate::fsutil::{self, FsError};
use crate::jwt;
use crate::oauth::{OAuthClient, OAuthError, TokenResponse};
use crate::paths::Paths;
use crate::publish::{adopt_from_snapshot, republish};
use crate::store::{Account, Kind, State, Store, StoreError, StoreFile};

/// Codex refreshes a token without `exp` once `last_refresh` is this old.
pub const CODEX_STALE_AFTER: i64 = 8 * 86_400;
/// First retry delay after a transient failure, seconds; doubles each time.
const BACKOFF_BASE: i64 = 15;
/// Longest retry delay, seconds.
const BACKOFF_MAX: i64 = 600;

/// A token a server rejected is refreshed at once, unless it is this new
/// (seconds): then the rejection is not about its age.
pub const RECENT_REFRESH: i64 = 60;
/// A `min_ttl` that no token meets: [`Refresher::fresh`] refreshes.
pub const FORCE_REFRESH: i64 = i64::MAX / 4;

/// Whether `account` was refreshed less than [`RECENT_REFRESH`] ago.
pub fn recently_refreshed(account: &Account, now: i64) -> bool {
    account
        .last_refresh
        .is_some_and(|t| now - t.unix_timestamp() < RECENT_REFRESH)
}

/// The wall clock, in unix seconds; injectable so tests control time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| OffsetDateTime::now_utc().unix_timestamp())
}

/// The command that brings a dead account back.
pub const LOGIN_HINT: &str = "run: codex-broker login";

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("account {id} needs a new login ({reason}); {LOGIN_HINT}")]
    NeedsLogin { id: String, reason: String },
    #[error(
        "account {id}: the access token has expired and refreshing it fails ({reason}); \
         the next try is due at unix time {retry_at}"
    )]
    Backoff {
        id: String,
        reason: String,
        retry_at: i64,
    },
    #[error("no account {0} in the store")]
    Unknown(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// What an account needs before its token can be handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assessment {
    /// Valid for longer than asked.
    Fresh,
    /// Due for a refresh now.
    Refresh,
    /// Due, but refreshing failed recently: wait until then.
    Wait {
        until: i64,
    },
    NeedsLogin,
}

/// Decides whether `account` must be refreshed to stay valid for `min_ttl`
/// more seconds at `now`, and to stay clear of Codex's 8-day rule.
pub fn assess(account: &Account, now: i64, min_ttl: i64) -> Assessment {
    if account.kind == Kind::ApiKey {
        return Assessment::Fresh;
    }
    if account.state == State::NeedsLogin {
        return Assessment::NeedsLogin;
    }
    // Codex refreshes on its own once `last_refresh` is 8 days old.
    let young = |t: OffsetDateTime| now - t.unix_timestamp() + min_ttl < CODEX_STALE_AFTER;
    let fresh = match account.expires_at {
        Some(exp) => exp - now > min_ttl && account.last_refresh.is_none_or(young),
        None => account.last_refresh.is_some_and(young),
    };
    match account.backoff_until {
        _ if fresh => Assessment::Fresh,
        Some(until) if until > now => Assessment::Wait { until },
        _ => Assessment::Refresh,
    }
}

/// Seconds to wait after the `failures`-th transient failure in a row:
/// exponential from 15 s to 10 min, with "equal jitter" (half fixed, half
/// random; `jitter` is uniform in 0..1).
pub fn backoff_delay(failures: u32, jitter: f64) -> i64 {
    let exponent = failures.saturating_sub(1).min(16);
    let full = (BACKOFF_BASE << exponent).min(BACKOFF_MAX);
    (full as f64 * (0.5 + 0.5 * jitter.clamp(0.0, 1.0))).round() as i64
}

fn jitter() -> f64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the system has a random source");
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether the token of `account` is still usable at `now`.
fn still_valid(account: &Account, now: i64) -> bool {
    account.expires_at.is_some_and(|exp| exp > now)
}

/// The refresh engine for one broker home.
pub struct Refresher {
    store: StoreFile,
    codex: CodexHome,
    oauth: OAuthClient,
    locks: PathBuf,
    clock: Clock,
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    cache: Mutex<Option<(FileStamp, Arc<Store>)>>,
}

/// Identifies one version of a file: every save is a rename of a new file,
/// so a changed store has a new inode and change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }
}

impl Refresher {
    pub fn new(paths: &Paths, config: &Config) -> Self {
        Self::with_parts(paths, OAuthClient::new(&config.issuer), system_clock())
    }

    pub fn with_parts(paths: &Paths, oauth: OAuthClient, clock: Clock) -> Self {
        Refresher {
            store: paths.store(),
            codex: paths.codex(),
            oauth,
            locks: paths.home.join("locks"),
            clock,
            gates: Mutex::new(HashMap::new()),
            cache: Mutex::new(None),
        }
    }

    /// The current wall-clock time, unix seconds.
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// The store as it is on disk now. Parsed once per version of the file:
    /// a `stat` tells whether the cached copy is still current.
    pub fn store(&self) -> Result<Arc<Store>, RefreshError> {
        let path = self.store.path();
        let stamp = match std::fs::metadata(&path) {
            Ok(meta) => Some(FileStamp::of(&meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(FsError::new("cannot inspect", &path, e).into()),
        };
        let mut cache = self.cache.lock().expect("store cache lock");
        if let (Some(stamp), Some((cached, store))) = (stamp, cache.as_ref())
            && stamp == *cached
        {
            return Ok(store.clone());
        }
        let store = Arc::new(self.store.load()?);
        // Stamp taken before the read: a save racing with it only makes the
        // next call read again.
        *cache = stamp.map(|s| (s, store.clone()));
        Ok(store)
    }

    fn gate(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.gates.lock().expect("gate map lock");
        gates.entry(id.to_owned()).or_default().clone()
    }

    fn lock_path(&self, id: &str) -> PathBuf {
        let safe: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.locks.join(format!("{safe}.lock"))
    }

    fn load(&self, id: &str) -> Result<Account, RefreshError> {
        self.store()?
            .get(id)
            .cloned()
            .ok_or_else(|| RefreshError::Unknown(id.to_owned()))
    }

    /// Returns account `id` with a token valid for more than `min_ttl`
    /// seconds, refreshing it first when needed. While refreshing fails for
    /// a transient reason, the old token is returned as long as it is valid.
    pub async fn fresh(&self, id: &str, min_ttl: i64) -> Result<Account, RefreshError> {
        let account = self.load(id)?;
        if assess(&account, (self.clock)(), min_ttl) == Assessment::Fresh {
            return Ok(account);
        }
        let gate = self.gate(id);
        let _in_process = gate.lock().await;
        let account = self.load(id)?;
        match assess(&account, (self.clock)(), min_ttl) {
            Assessment::Fresh => return Ok(account),
            Assessment::NeedsLogin => return Err(needs_login(&account)),
            Assessment::Refresh | Assessment::Wait { .. } => {}
        }
        fsutil::ensure_private_dir(&self.locks)?;
        let lock_path = self.lock_path(id);
        let _across_processes =
            tokio::task::spawn_blocking(move || fsutil::lock_exclusive(&lock_path))
                .await
                .expect("the lock task does not panic")?;
        let account = self.reload_adopting_codex(id)?;
        let now = (self.clock)();
        match assess(&account, now, min_ttl) {
            Assessment::Fresh => Ok(account),
            Assessment::NeedsLogin => Err(needs_login(&account)),
            Assessment::Wait { until } => serve_while_valid(account, now, until),
            Assessment::Refresh => self.refresh_locked(account, now).await,
        }
    }

    /// Re-reads the store, first taking in tokens Codex wrote to auth.json
    /// for this account if they are newer than the store's.
    fn reload_adopting_codex(&self, id: &str) -> Result<Account, RefreshError> {
        let snapshot = self.codex.read()?;
        if snapshot.account_id().as_deref() == Some(id) {
            self.store.update(|store| {
                if adopt_from_snapshot(store, &snapshot).is_some() {
                    tracing::info!(account = id, "adopted the tokens Codex wrote to auth.json");
                }
                Ok::<_, StoreError>(())
            })?;
        }
        self.load(id)
    }

    async fn refresh_locked(&self, account: Account, now: i64) -> Result<Account, RefreshError> {
        let id = account.id.clone();
        let Some(tokens) = account.tokens.as_ref() else {
            return Err(RefreshError::Unknown(id));
        };
        tracing::info!(account = %id, "refreshing the access token");
        match self.oauth.refresh(&tokens.refresh_token).await {
            Ok(response) => self.save_rotation(&id, response),
            Err(OAuthError::Permanent { code, message, .. }) => {
                let reason = format!("the issuer rejected its refresh token: {code}: {message}");
                tracing::warn!(account = %id, %code, "refresh token rejected; the account needs a new login");
                let account = self.store.update(|store| {
                    let a = store
                        .get_mut(&id)
                        .ok_or_else(|| RefreshError::Unknown(id.clone()))?;
                    a.state = State::NeedsLogin;
                    a.state_reason = Some(format!("{reason}; {LOGIN_HINT}"));
                    a.backoff_until = None;
                    Ok::<_, RefreshError>(a.clone())
                })?;
                Err(needs_login(&account))
            }
            Err(OAuthError::Transient(reason)) => {
                let account = self.store.update(|store| {
                    let a = store
                        .get_mut(&id)
                        .ok_or_else(|| RefreshError::Unknown(id.clone()))?;
                    a.refresh_failures = a.refresh_failures.saturating_add(1);
                    let delay = backoff_delay(a.refresh_failures, jitter());
                    a.state = State::RefreshBackoff;
                    a.state_reason = Some(reason.clone());
                    a.backoff_until = Some(now + delay);
                    Ok::<_, RefreshError>(a.clone())
                })?;
                tracing::warn!(
                    account = %id,
                    failures = account.refresh_failures,
                    retry_in = account.backoff_until.unwrap_or(now) - now,
                    "refresh failed: {reason}"
                );
                let until = account.backoff_until.unwrap_or(now);
                serve_while_valid(account, now, until)
            }
        }
    }

    /// Saves rotated tokens, then republishes them to auth.json if it holds
    /// this account. A failure to publish does not lose the tokens: they are
    /// already in the store.
    fn save_rotation(&self, id: &str, response: TokenResponse) -> Result<Account, RefreshError> {
        let refreshed_at = OffsetDateTime::from_unix_timestamp((self.clock)())
            .unwrap_or_else(|_| OffsetDateTime::now_utc());
        let account = self.store.update(|store| {
            let a = store
                .get_mut(id)
                .ok_or_else(|| RefreshError::Unknown(id.to_owned()))?;
            if let Some(t) = &response.refresh_token {
                a.retire_refresh_token(t.expose());
            }
            let tokens = a
                .tokens
                .as_mut()
                .ok_or_else(|| RefreshError::Unknown(id.to_owned()))?;
            if let Some(t) = response.id_token {
                tokens.id_token = t;
            }
            if let Some(t) = response.access_token {
                tokens.access_token = t;
            }
            if let Some(t) = response.refresh_token {
                tokens.refresh_token = t;
            }
            a.expires_at = jwt::decode(tokens.access_token.expose())
                .ok()
                .and_then(|c| c.exp);
            if let Ok(claims) = jwt::decode(tokens.id_token.expose()) {
                a.email = claims.email.or(a.email.take());
                a.plan = claims.plan.or(a.plan.take());
            }
            a.last_refresh = Some(refreshed_at);
            a.mark_ok();
            Ok::<_, RefreshError>(a.clone())
        })?;
        let published = self
            .store
            .update(|store| republish(&self.codex, store, id).map_err(anyhow::Error::from));
        if let Err(e) = published {
            tracing::warn!(
                account = id,
                "refreshed, but could not update auth.json: {e}"
            );
        }
        Ok(account)
    }
}

fn needs_login(account: &Account) -> RefreshError {
    RefreshError::NeedsLogin {
        id: account.id.clone(),
        reason: account
            .state_reason
            .clone()
            .unwrap_or_else(|| "its refresh token no longer works".into())
            .trim_end_matches(&format!("; {LOGIN_HINT}"))
            .to_owned(),
    }
}

fn serve_while_valid(account: Account, now: i64, until: i64) -> Result<Account, RefreshError> {
    if still_valid(&account, now) {
        return Ok(account);
    }
    Err(RefreshError::Backoff {
        id: account.id.clone(),
        reason: account.state_reason.clone().unwrap_or_default(),
        retry_at: until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Refreshed at the start of 2026-11-22, which is after `now` below.
    fn account(expires_in: Option<i64>, now: i64) -> Account {
        crate::store::test_account(expires_in.map(|s| now + s), 1_795_305_600)
    }

    #[test]
    fn assessment() {
        let now = 1_795_000_000;
        assert_eq!(
            assess(&account(Some(3600), now), now, 300),
            Assessment::Fresh
        );
        assert_eq!(
            assess(&account(Some(200), now), now, 300),
            Assessment::Refresh
        );
        assert_eq!(assess(&account(Some(-5), now), now, 0), Assessment::Refresh);
        let mut a = account(Some(200), now);
        a.backoff_until = Some(now + 30);
        assert_eq!(assess(&a, now, 300), Assessment::Wait { until: now + 30 });
        assert_eq!(assess(&a, now + 31, 300), Assessment::Refresh);
        a.state = State::NeedsLogin;
        assert_eq!(assess(&a, now, 300), Assessment::NeedsLogin);
        // No exp: Codex's 8-day rule on last_refresh.
        let a = account(None, now);
        let refreshed = a.last_refresh.unwrap().unix_timestamp();
        assert_eq!(assess(&a, refreshed + 86_400, 300), Assessment::Fresh);
        assert_eq!(
            assess(&a, refreshed + CODEX_STALE_AFTER, 0),
            Assessment::Refresh
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        assert_eq!(backoff_delay(1, 0.0), 8);
        assert_eq!(backoff_delay(1, 1.0), 15);
        assert_eq!(backoff_delay(2, 1.0), 30);
        assert_eq!(backoff_delay(3, 0.5), 45);
        assert_eq!(backoff_delay(20, 1.0), BACKOFF_MAX);
        assert_eq!(backoff_delay(u32::MAX, 0.0), BACKOFF_MAX / 2);
        let j = jitter();
        assert!((0.0..1.0).contains(&j));
    }
}
