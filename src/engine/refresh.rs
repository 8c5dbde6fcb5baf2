//! The refresh engine: one refresh per rotation, across threads and
//! processes, and never lost once sent.
//!
//! A refresh of account A happens only while holding `<home>/locks/A.lock`
//! (and, in this process, A's async gate). Under that lock the engine
//! re-reads the store and Codex's auth.json: if another process or Codex
//! already rotated the tokens, it uses theirs and sends nothing. Rotated
//! tokens are saved to the store before the lock is released and before
//! anyone is handed them.
//!
//! Every refresh runs as a task of the engine's own, tracked by its
//! [`TaskTracker`]: whoever asked (a socket client, a forwarder client,
//! the scheduler, a command) only awaits its result, so a client that hangs
//! up, a timeout or a signal drops the wait and never the refresh. A
//! refresh not yet sent when the engine stops is abandoned; one already
//! sent is finished and saved. A rotation the store cannot take (a full or
//! read-only disk) is published to auth.json, served from memory and saved
//! again until the store takes it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::base::fsutil::{self, FsError};
use crate::base::paths::Paths;
use crate::base::secret::{Secret, redact};
use crate::codex::auth::{CodexHome, format_timestamp};
use crate::codex::publish::{adopt_from_snapshot, republish};
use crate::engine::config::Config;
use crate::engine::due::{
    Assessment, FORCE_REFRESH, LOST_RETRY_BEFORE, RECENT_REFRESH, assess, backoff_delay, jitter,
    servable, still_valid,
};
use crate::engine::journal::{Entry, Event, Journal, new_flight};
use crate::engine::metrics::{Metrics, RefreshResult};
use crate::engine::served::{Served, ServedError};
use crate::engine::store::{Account, State, Store, StoreError, StoreFile};
use crate::follow::leader::Leader;
use crate::oauth::{OAuthClient, OAuthError, TokenResponse};
use crate::wire::jwt;

/// The wall clock; injectable so tests control time.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(OffsetDateTime::now_utc)
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
    #[error("the refresh of account {0} was not sent: codex-broker is stopping")]
    Stopped(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// First delay before saving an unsaved rotation again; doubles up to
/// [`SAVE_RETRY_MAX`].
const SAVE_RETRY_BASE: Duration = Duration::from_millis(250);
const SAVE_RETRY_MAX: Duration = Duration::from_secs(5);
/// Once the engine stops, saving an unsaved rotation is tried this long.
const SAVE_AFTER_STOP: Duration = Duration::from_secs(10);

/// What a caller of the engine needs of an account's token.
enum Need {
    /// Valid for more than this many seconds.
    Ttl(i64),
    /// Anything but this access token, which a server rejected.
    Replace(Secret<String>),
}

impl Need {
    /// The `min_ttl` this need asks of `account` as it is now.
    fn min_ttl(&self, account: &Account) -> i64 {
        match self {
            Need::Ttl(min_ttl) => *min_ttl,
            Need::Replace(rejected) => {
                let current = account.tokens.as_ref().map(|t| &t.access_token);
                if current == Some(rejected) {
                    FORCE_REFRESH
                } else {
                    0
                }
            }
        }
    }
}

/// Who asked for a refresh, as the journal names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asker(String);

impl Asker {
    pub fn scheduler() -> Asker {
        Asker("scheduler".into())
    }

    /// A `codex-broker` command, such as `token`.
    pub fn command(name: &str) -> Asker {
        Asker(format!("command `{name}`"))
    }

    /// A client of the socket API, named by its User-Agent.
    pub fn socket_client(user_agent: Option<&str>) -> Asker {
        Asker(with_agent("socket client", user_agent))
    }

    /// A client of the forwarder, named by its User-Agent.
    pub fn forwarder_client(user_agent: Option<&str>) -> Asker {
        Asker(with_agent("forwarder client", user_agent))
    }

    /// The daemon itself, for `why`.
    pub fn daemon(why: &str) -> Asker {
        Asker(format!("daemon ({why})"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `what (agent)`, with the agent cut to printable ASCII and 80 characters:
/// it comes from outside.
fn with_agent(what: &str, user_agent: Option<&str>) -> String {
    let agent: String = user_agent
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(80)
        .collect();
    let agent = agent.trim();
    if agent.is_empty() {
        what.to_owned()
    } else {
        format!("{what} ({agent})")
    }
}

/// A rotation the store could not take yet.
#[derive(Clone)]
struct Unsaved {
    spent: Secret<String>,
    rotated: Account,
    flight: String,
    by: Asker,
    error: String,
    since: OffsetDateTime,
}

/// The refresh engine for one broker home. Clones share one engine.
#[derive(Clone)]
pub struct Refresher {
    inner: Arc<Inner>,
}

struct Inner {
    store: StoreFile,
    codex: CodexHome,
    journal: Journal,
    source: Source,
    locks: PathBuf,
    clock: Clock,
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    served: Served,
    unsaved: Mutex<HashMap<String, Unsaved>>,
    /// Per account: when an asker from outside last forced a refresh.
    forced: Mutex<HashMap<String, i64>>,
    tasks: TaskTracker,
    stop: CancellationToken,
    metrics: Metrics,
}

/// Where new tokens come from: the issuer, or (for a follower, which
/// holds no refresh token) the leader broker.
enum Source {
    Issuer(OAuthClient),
    Leader(Leader),
}

/// An account held against refreshes ([`Refresher::hold`]).
pub struct Held {
    _in_process: OwnedMutexGuard<()>,
    _across_processes: fsutil::FileLock,
}

impl Source {
    /// Who answers a refresh, for messages.
    fn name(&self) -> &'static str {
        match self {
            Source::Issuer(_) => "the issuer",
            Source::Leader(_) => "the leader",
        }
    }
}

impl Refresher {
    /// The engine of the broker home `paths`: it refreshes at the issuer,
    /// or asks the leader when the home belongs to a follower.
    pub fn new(paths: &Paths, config: &Config) -> Self {
        let follows = paths.store().load().ok().and_then(|s| s.follows);
        let source = match follows {
            Some(socket) => Source::Leader(Leader::new(socket)),
            None => Source::Issuer(OAuthClient::new(&config.issuer)),
        };
        Self::with_source(paths, source, system_clock())
    }

    pub fn with_parts(paths: &Paths, oauth: OAuthClient, clock: Clock) -> Self {
        Self::with_source(paths, Source::Issuer(oauth), clock)
    }

    fn with_source(paths: &Paths, source: Source, clock: Clock) -> Self {
        Refresher {
            inner: Arc::new(Inner {
                store: paths.store(),
                codex: paths.codex(),
                journal: paths.journal(),
                source,
                locks: paths.home.join("locks"),
                clock,
                gates: Mutex::new(HashMap::new()),
                served: Served::new(paths.store()),
                unsaved: Mutex::new(HashMap::new()),
                forced: Mutex::new(HashMap::new()),
                tasks: TaskTracker::new(),
                stop: CancellationToken::new(),
                metrics: Metrics::default(),
            }),
        }
    }

    /// The current wall-clock time, unix seconds.
    pub fn now(&self) -> i64 {
        (self.inner.clock)().unix_timestamp()
    }

    /// The counters this engine and the servers above it keep.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn journal(&self) -> &Journal {
        &self.inner.journal
    }

    /// The store as it is on disk now, with any rotation and quota the disk
    /// could not take yet in place ([`Served`]).
    pub fn store(&self) -> Result<Arc<Store>, RefreshError> {
        let on_disk = self.store_on_disk()?;
        let unsaved = self.inner.unsaved.lock().expect("unsaved lock");
        if unsaved.is_empty() {
            return Ok(on_disk);
        }
        let mut store = (*on_disk).clone();
        for (id, u) in unsaved.iter() {
            if let Some(a) = store.get_mut(id) {
                a.take_rotation(u.spent.expose(), &u.rotated);
            }
        }
        Ok(Arc::new(store))
    }

    fn store_on_disk(&self) -> Result<Arc<Store>, RefreshError> {
        self.inner.served.load().map_err(|e| match e {
            ServedError::Store(e) => e.into(),
            ServedError::Fs(e) => e.into(),
        })
    }

    /// The store as served: where an observed quota is applied before the
    /// disk takes it.
    pub fn served(&self) -> &Served {
        &self.inner.served
    }

    /// What is wrong with rotations the store has not taken yet, one
    /// sentence each.
    pub fn unsaved(&self) -> Vec<String> {
        let unsaved = self.inner.unsaved.lock().expect("unsaved lock");
        let mut problems: Vec<String> = unsaved
            .iter()
            .map(|(id, u)| {
                format!(
                    "account {id}: the refresh at {} rotated its tokens, but they cannot be \
                     saved to {} ({}); they are published to auth.json, served from memory \
                     and saved as soon as the disk takes them",
                    crate::codex::auth::format_timestamp(u.since),
                    self.inner.store.path().display(),
                    u.error
                )
            })
            .collect();
        problems.sort();
        problems
    }

    fn gate(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.inner.gates.lock().expect("gate map lock");
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
        self.inner.locks.join(format!("{safe}.lock"))
    }

    fn load(&self, id: &str) -> Result<Account, RefreshError> {
        self.store()?
            .get(id)
            .cloned()
            .ok_or_else(|| RefreshError::Unknown(id.to_owned()))
    }

    /// Returns account `id` with a token valid for more than `min_ttl`
    /// seconds, refreshing it first when needed. While refreshing fails for
    /// a transient reason, the old token is returned as long as it is
    /// valid, from memory, without a lock or a file read.
    ///
    /// The refresh runs as the engine's task: dropping this future drops
    /// only the wait for it.
    pub async fn fresh(&self, id: &str, min_ttl: i64, by: &Asker) -> Result<Account, RefreshError> {
        let account = self.load(id)?;
        if servable(&account, self.now(), min_ttl) {
            return Ok(account);
        }
        self.spawn_fresh(id, min_ttl, by).await
    }

    /// Starts making `id` fresh for `min_ttl` as the engine's own task.
    /// The returned future awaits its result; dropping it does not cancel
    /// the task.
    pub fn spawn_fresh(
        &self,
        id: &str,
        min_ttl: i64,
        by: &Asker,
    ) -> impl Future<Output = Result<Account, RefreshError>> + Send + 'static {
        self.spawn_need(id, Need::Ttl(min_ttl), by)
    }

    /// Starts replacing the access token `rejected`, which a server no
    /// longer takes, as the engine's own task. Many callers with the same
    /// rejected token cause one refresh: once the account holds another
    /// token, that one is the answer.
    pub fn spawn_replace(
        &self,
        id: &str,
        rejected: &Secret<String>,
        by: &Asker,
    ) -> impl Future<Output = Result<Account, RefreshError>> + Send + 'static {
        self.spawn_need(id, Need::Replace(rejected.clone()), by)
    }

    fn spawn_need(
        &self,
        id: &str,
        need: Need,
        by: &Asker,
    ) -> impl Future<Output = Result<Account, RefreshError>> + Send + 'static {
        let (engine, id, by) = (self.clone(), id.to_owned(), by.clone());
        let task = self.inner.tasks.spawn({
            let id = id.clone();
            async move { engine.fresh_locked(&id, &need, &by).await }
        });
        async move {
            match task.await {
                Ok(result) => result,
                // The runtime is going away: the task was never sent.
                Err(_) => Err(RefreshError::Stopped(id)),
            }
        }
    }

    /// Stops the engine: refreshes not yet sent are abandoned, those sent
    /// are finished and saved (a rotation the store cannot take is tried a
    /// little longer). Returns what could not be saved, one sentence each.
    pub async fn drain(&self) -> Vec<String> {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.unsaved()
    }

    /// Whether an asker from outside may force a refresh of `id` now: once
    /// per [`RECENT_REFRESH`] seconds. Records the permission it gives.
    pub fn allow_forced(&self, id: &str, now: i64) -> bool {
        let mut forced = self.inner.forced.lock().expect("forced lock");
        if forced.get(id).is_some_and(|at| now - at < RECENT_REFRESH) {
            return false;
        }
        forced.insert(id.to_owned(), now);
        true
    }

    /// Whether a refresh task of the engine is running.
    pub fn busy(&self) -> bool {
        !self.inner.tasks.is_empty()
    }

    async fn fresh_locked(
        &self,
        id: &str,
        need: &Need,
        by: &Asker,
    ) -> Result<Account, RefreshError> {
        let stopped = || RefreshError::Stopped(id.to_owned());
        let _in_process = self.in_process(id).await?;
        let account = self.load(id)?;
        match assess(&account, self.now(), need.min_ttl(&account)) {
            Assessment::Fresh => return Ok(account),
            Assessment::NeedsLogin => return Err(needs_login(&account)),
            Assessment::Refresh | Assessment::Wait { .. } => {}
        }
        let _across_processes = self.across_processes(id).await?;
        let owned = id.to_owned();
        let account = self
            .blocking(move |engine| engine.reload_adopting_codex(&owned))
            .await?;
        let now = self.now();
        let min_ttl = need.min_ttl(&account);
        match assess(&account, now, min_ttl) {
            Assessment::Fresh => Ok(account),
            Assessment::NeedsLogin => Err(needs_login(&account)),
            Assessment::Wait { until } => serve_while_valid(account, now, until),
            Assessment::Refresh if self.inner.stop.is_cancelled() => Err(stopped()),
            Assessment::Refresh => self.refresh_locked(account, now, min_ttl, by).await,
        }
    }

    /// Runs `work` on the blocking pool: the store, auth.json and the
    /// journal are files (any of them may be slow, or not regular), and a
    /// refresh holds its account's locks while it reads and writes them,
    /// which must not stall a runtime worker.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Refresher) -> T + Send + 'static,
    ) -> T {
        let engine = self.clone();
        tokio::task::spawn_blocking(move || work(&engine))
            .await
            .expect("the file work of a refresh does not panic")
    }

    /// Account `id`'s gate: one refresh of it at a time in this process.
    async fn in_process(&self, id: &str) -> Result<OwnedMutexGuard<()>, RefreshError> {
        tokio::select! {
            guard = self.gate(id).lock_owned() => Ok(guard),
            _ = self.inner.stop.cancelled() => Err(RefreshError::Stopped(id.to_owned())),
        }
    }

    /// Account `id`'s lock file: one refresh of it at a time across the
    /// processes sharing this home.
    async fn across_processes(&self, id: &str) -> Result<fsutil::FileLock, RefreshError> {
        fsutil::ensure_private_dir(&self.inner.locks)?;
        let lock_path = self.lock_path(id);
        let lock = tokio::task::spawn_blocking(move || fsutil::lock_exclusive(&lock_path));
        tokio::select! {
            lock = lock => Ok(lock.expect("the lock task does not panic")?),
            _ = self.inner.stop.cancelled() => Err(RefreshError::Stopped(id.to_owned())),
        }
    }

    /// Holds account `id` as a refresh does (its gate, then its lock file):
    /// while the answer lives, nothing in this home spends its refresh token.
    pub async fn hold(&self, id: &str) -> Result<Held, RefreshError> {
        Ok(Held {
            _in_process: self.in_process(id).await?,
            _across_processes: self.across_processes(id).await?,
        })
    }

    /// Re-reads the store, first taking in tokens Codex wrote to auth.json
    /// for this account if they come after the store's.
    fn reload_adopting_codex(&self, id: &str) -> Result<Account, RefreshError> {
        let snapshot = match self.inner.codex.read() {
            Ok(snapshot) => snapshot,
            // A FIFO, a folder, an unreadable file: the store alone decides.
            Err(e) => {
                tracing::warn!(account = id, "{e}; refreshing from the store alone");
                return self.load(id);
            }
        };
        if snapshot.account_id().as_deref() == Some(id) {
            self.inner.store.update(|store| {
                if adopt_from_snapshot(store, &snapshot, &self.inner.journal).is_some() {
                    tracing::info!(account = id, "adopted the tokens Codex wrote to auth.json");
                }
                Ok::<_, StoreError>(())
            })?;
        }
        self.load(id)
    }

    async fn refresh_locked(
        &self,
        account: Account,
        now: i64,
        min_ttl: i64,
        by: &Asker,
    ) -> Result<Account, RefreshError> {
        let id = account.id.clone();
        let Some(spent) = account.tokens.as_ref().map(|t| t.refresh_token.clone()) else {
            return Err(RefreshError::Unknown(id));
        };
        let flight = new_flight();
        let entry = {
            let (id, by, spent, flight) = (id.clone(), by.clone(), spent.clone(), flight.clone());
            move |event| {
                let mut e = Entry::new(&id, event, by.as_str()).spent(spent.expose());
                e.flight = Some(flight.clone());
                e
            }
        };
        let in_flight = entry(Event::InFlight);
        let after_interrupted = self
            .blocking(move |engine| {
                let journal = &engine.inner.journal;
                let after: Vec<String> = journal
                    .interrupted(now)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|i| i.account == in_flight.account)
                    .map(|i| i.flight)
                    .collect();
                journal.record(&in_flight);
                after
            })
            .await;
        tracing::info!(account = %id, by = by.as_str(), "refreshing the access token");
        let answer = self.ask(&account, &spent, min_ttl).await;
        let failure = match answer {
            Ok(response) => {
                self.inner.metrics.refreshed(&id, RefreshResult::Rotated);
                let rotated = rotate(&account, response, (self.inner.clock)());
                let by = by.clone();
                return self
                    .blocking(move |engine| {
                        engine.save_rotation(spent, rotated, flight, by, after_interrupted)
                    })
                    .await;
            }
            Err(e) => without_secrets(e, &account),
        };
        let (event, result, code, reason) = failure_outcome(&failure);
        self.inner.metrics.refreshed(&id, result);
        let mut e = entry(event);
        (e.code, e.reason) = (code, reason);
        e.after_interrupted = after_interrupted;
        self.blocking(move |engine| {
            engine.inner.journal.record(&e);
            engine.settle_failure(&account, failure, now)
        })
        .await
    }

    /// What a refresh that did not rotate leaves: a rejected token needs a
    /// login; a passing failure backs off; a lost answer waits until the
    /// token is about to expire. The current token is served while valid.
    fn settle_failure(
        &self,
        account: &Account,
        failure: OAuthError,
        now: i64,
    ) -> Result<Account, RefreshError> {
        let id = &account.id;
        let account = match failure {
            OAuthError::Permanent { code, message, .. } => {
                tracing::warn!(account = %id, %code, "refresh token rejected; the account needs a new login");
                let account = self.mark_needs_login(account, &code, &message)?;
                return Err(needs_login(&account));
            }
            OAuthError::Transient(reason) => self.back_off(id, &reason, now)?,
            OAuthError::Lost(reason) => match account.expires_at {
                Some(exp) if exp - LOST_RETRY_BEFORE > now => {
                    self.wait_after_lost(id, &reason, now, exp)?
                }
                _ => self.back_off(id, &format!("the answer was lost: {reason}"), now)?,
            },
        };
        let until = account.backoff_until.unwrap_or(now);
        serve_while_valid(account, now, until)
    }

    /// Sends the refresh: to the issuer, or to the leader for a follower
    /// (whose answer must carry a newer access token than `account` has).
    async fn ask(
        &self,
        account: &Account,
        spent: &Secret<String>,
        min_ttl: i64,
    ) -> Result<TokenResponse, OAuthError> {
        match &self.inner.source {
            Source::Issuer(oauth) => oauth.refresh(spent).await,
            Source::Leader(leader) => {
                let current = account.tokens.as_ref().map(|t| t.access_token.expose());
                let answer = leader.refresh(&account.id, min_ttl).await?;
                if answer.access_token.as_ref().map(Secret::expose) == current {
                    return Err(OAuthError::Transient(
                        "the leader has no newer token for this account yet".into(),
                    ));
                }
                Ok(answer)
            }
        }
    }

    /// Marks an account whose refresh token was rejected as needing a login,
    /// with the reason (its own secrets redacted).
    fn mark_needs_login(
        &self,
        account: &Account,
        code: &str,
        message: &str,
    ) -> Result<Account, RefreshError> {
        let own = account_secrets(account);
        let reason = redact(
            &format!(
                "{} rejected its refresh token: {code}: {message}",
                self.inner.source.name()
            ),
            &own.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let id = &account.id;
        self.inner.store.update(|store| {
            let a = store
                .get_mut(id)
                .ok_or_else(|| RefreshError::Unknown(id.clone()))?;
            a.state = State::NeedsLogin;
            a.state_reason = Some(format!("{reason}; {LOGIN_HINT}"));
            a.backoff_until = None;
            Ok::<_, RefreshError>(a.clone())
        })
    }

    /// Puts an account whose refresh failed for now into backoff, longer
    /// with each failure in a row.
    fn back_off(&self, id: &str, reason: &str, now: i64) -> Result<Account, RefreshError> {
        let account = self.inner.store.update(|store| {
            let a = store
                .get_mut(id)
                .ok_or_else(|| RefreshError::Unknown(id.to_owned()))?;
            a.refresh_failures = a.refresh_failures.saturating_add(1);
            let delay = backoff_delay(a.refresh_failures, jitter());
            a.state = State::RefreshBackoff;
            a.state_reason = Some(reason.to_owned());
            a.backoff_until = Some(now + delay);
            Ok::<_, RefreshError>(a.clone())
        })?;
        tracing::warn!(
            account = %id,
            failures = account.refresh_failures,
            retry_in = account.backoff_until.unwrap_or(now) - now,
            "refresh failed: {reason}"
        );
        Ok(account)
    }

    /// Marks an account whose refresh answer was lost as
    /// `refresh_interrupted`: nothing is sent until its token (valid until
    /// `exp`) is about to expire, when a second try can lose nothing more.
    fn wait_after_lost(
        &self,
        id: &str,
        reason: &str,
        now: i64,
        exp: i64,
    ) -> Result<Account, RefreshError> {
        let retry_at = exp - LOST_RETRY_BEFORE;
        let at = |t: i64| {
            OffsetDateTime::from_unix_timestamp(t).map_or_else(|_| t.to_string(), format_timestamp)
        };
        let said = format!(
            "a refresh was sent at {} and its answer was lost ({reason}); the current access \
             token is served until it expires at {}, and the refresh is tried once more at {}; \
             if that one needs a login, log in again before {} ({LOGIN_HINT})",
            at(now),
            at(exp),
            at(retry_at),
            at(exp),
        );
        let account = self.inner.store.update(|store| {
            let a = store
                .get_mut(id)
                .ok_or_else(|| RefreshError::Unknown(id.to_owned()))?;
            a.state = State::RefreshInterrupted;
            a.state_reason = Some(said.clone());
            a.backoff_until = Some(retry_at);
            Ok::<_, RefreshError>(a.clone())
        })?;
        tracing::warn!(account = %id, retry_at, "refresh answer lost: {reason}; serving the current token");
        Ok(account)
    }

    /// Saves a rotation to the store, records it in the journal and
    /// republishes auth.json if it holds this account. When the store
    /// cannot take it, the rotation is kept in memory, published, served,
    /// and saved again in the background until the store takes it.
    fn save_rotation(
        &self,
        spent: Secret<String>,
        rotated: Account,
        flight: String,
        by: Asker,
        after_interrupted: Vec<String>,
    ) -> Result<Account, RefreshError> {
        let id = rotated.id.clone();
        let unsaved = Unsaved {
            spent,
            rotated,
            flight,
            by,
            error: String::new(),
            since: (self.inner.clock)(),
        };
        match self.try_save(&unsaved, &after_interrupted) {
            Ok(account) => Ok(account),
            Err(e) => {
                tracing::error!(
                    account = %id,
                    "refreshed, but the new tokens cannot be saved: {e}; keeping them in memory \
                     and retrying"
                );
                let account = unsaved.rotated.clone();
                self.inner.unsaved.lock().expect("unsaved lock").insert(
                    id.clone(),
                    Unsaved {
                        error: e.to_string(),
                        ..unsaved
                    },
                );
                self.publish_unsaved(&id);
                let engine = self.clone();
                self.inner
                    .tasks
                    .spawn(async move { engine.keep_saving(&id, after_interrupted).await });
                Ok(account)
            }
        }
    }

    /// One try at saving `u`; on success the journal records the rotation
    /// and auth.json is updated if it holds the account.
    fn try_save(&self, u: &Unsaved, after_interrupted: &[String]) -> Result<Account, RefreshError> {
        let id = &u.rotated.id;
        let account = self.inner.store.update(|store| {
            let a = store
                .get_mut(id)
                .ok_or_else(|| RefreshError::Unknown(id.clone()))?;
            a.take_rotation(u.spent.expose(), &u.rotated);
            Ok::<_, RefreshError>(a.clone())
        })?;
        let new = u.rotated.tokens.as_ref().map(|t| t.refresh_token.expose());
        let mut entry = Entry::new(id, Event::Rotated, u.by.as_str())
            .replacing(Some(u.spent.expose()), new.map(String::as_str));
        entry.flight = Some(u.flight.clone());
        entry.after_interrupted = after_interrupted.to_vec();
        self.inner.journal.record(&entry);
        let published = self.inner.store.update(|store| {
            republish(&self.inner.codex, store, id, &self.inner.journal)
                .map_err(anyhow::Error::from)
        });
        if let Err(e) = published {
            tracing::warn!(account = %id, "refreshed, but could not update auth.json: {e}");
        }
        Ok(account)
    }

    /// Writes the in-memory rotation of `id` to auth.json when it holds
    /// that account, so that Codex has the live tokens even while the
    /// store cannot be written.
    fn publish_unsaved(&self, id: &str) {
        let published = self.store().map_err(anyhow::Error::from).and_then(|store| {
            let mut store = (*store).clone();
            Ok(republish(
                &self.inner.codex,
                &mut store,
                id,
                &self.inner.journal,
            )?)
        });
        match published {
            Ok(true) => tracing::info!(account = id, "published the unsaved rotation to auth.json"),
            Ok(false) => {}
            Err(e) => tracing::warn!(account = id, "cannot publish the unsaved rotation: {e}"),
        }
    }

    /// Saves the unsaved rotation of `id` until the store takes it; after
    /// the engine stops, for [`SAVE_AFTER_STOP`] more.
    async fn keep_saving(&self, id: &str, after_interrupted: Vec<String>) {
        let mut delay = SAVE_RETRY_BASE;
        let mut deadline = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.inner.stop.cancelled(), if deadline.is_none() => {}
            }
            if self.inner.stop.is_cancelled() && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + SAVE_AFTER_STOP);
            }
            let Some(u) = self
                .inner
                .unsaved
                .lock()
                .expect("unsaved lock")
                .get(id)
                .cloned()
            else {
                return;
            };
            let (engine, after) = (self.clone(), after_interrupted.clone());
            let saved = tokio::task::spawn_blocking(move || {
                engine
                    .try_save(&u, &after)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match saved {
                Ok(_) => {
                    self.inner.unsaved.lock().expect("unsaved lock").remove(id);
                    tracing::info!(account = id, "the rotation is saved to the store at last");
                    return;
                }
                Err(e) => {
                    if let Some(u) = self.inner.unsaved.lock().expect("unsaved lock").get_mut(id) {
                        u.error = e;
                    }
                }
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                tracing::error!(
                    account = id,
                    "stopping with a rotation the store never took; auth.json holds it \
                     if it held the account: run codex-broker import once the disk has room"
                );
                return;
            }
            delay = (delay * 2).min(SAVE_RETRY_MAX);
        }
    }
}

/// The account's own credentials, to take out of any text from outside.
fn account_secrets(account: &Account) -> Vec<String> {
    let mut own = Vec::new();
    if let Some(t) = &account.tokens {
        own.extend([
            t.refresh_token.expose().clone(),
            t.access_token.expose().clone(),
            t.id_token.expose().clone(),
        ]);
    }
    own.extend(account.api_key.as_ref().map(|k| k.expose().clone()));
    own
}

/// How a failed refresh is journaled and counted: its event, its result,
/// and the issuer's code or the reason in words.
fn failure_outcome(failure: &OAuthError) -> (Event, RefreshResult, Option<String>, Option<String>) {
    match failure {
        OAuthError::Permanent { code, .. } => (
            Event::Rejected,
            RefreshResult::Rejected,
            Some(code.clone()),
            None,
        ),
        OAuthError::Transient(reason) => (
            Event::Transient,
            RefreshResult::Transient,
            None,
            Some(reason.clone()),
        ),
        OAuthError::Lost(reason) => (
            Event::RefreshInterrupted,
            RefreshResult::Interrupted,
            None,
            Some(reason.clone()),
        ),
    }
}

/// `failure` with the account's own secrets taken out of its words, before
/// they reach the journal, the store or a log.
fn without_secrets(failure: OAuthError, account: &Account) -> OAuthError {
    let own = account_secrets(account);
    let own: Vec<&str> = own.iter().map(String::as_str).collect();
    match failure {
        OAuthError::Transient(reason) => OAuthError::Transient(redact(&reason, &own)),
        OAuthError::Lost(reason) => OAuthError::Lost(redact(&reason, &own)),
        permanent @ OAuthError::Permanent { .. } => permanent,
    }
}

/// `account` after the issuer answered a refresh with `response`: a
/// missing field keeps its old value.
fn rotate(account: &Account, response: TokenResponse, at: OffsetDateTime) -> Account {
    let mut a = account.clone();
    if let Some(t) = &response.refresh_token {
        a.retire_refresh_token(t.expose());
    }
    if let Some(tokens) = a.tokens.as_mut() {
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
    }
    a.last_refresh = Some(at);
    a.mark_ok();
    a
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
