//! The core the daemon's servers share: the refresh engine, the cached
//! store, the settings, what is wrong, and the one policy for what an
//! upstream answer says about an account. The socket API, the forwarder,
//! the scheduler and the watcher sit above it; `daemon` only wires them.

pub mod affinity;
pub mod cachekeep;
pub mod config;
pub mod config_edit;
pub mod due;
pub mod dumps;
pub mod journal;
pub mod metrics;
pub mod notify;
pub mod pace;
pub mod quota;
pub mod refresh;
pub mod routing;
pub mod scheduler;
pub mod served;
pub mod shield;
pub mod store;
pub mod usage;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::base::paths::Paths;
use crate::engine::config::Config;
use crate::engine::due::recently_refreshed;
use crate::engine::metrics::Metrics;
use crate::engine::quota::{Quota, Source};
use crate::engine::refresh::{Asker, LOGIN_HINT, RefreshError, Refresher};
use crate::engine::store::{Account, State, StoreError};
use crate::follow::leader::Leader;
use crate::wire::proto::{ForwarderAddress, Health, Problem, ProblemCode};

/// Quota from headers is written at most this often per account, unless
/// it changed.
const QUOTA_WRITE_INTERVAL: Duration = Duration::from_secs(5);

/// A refresh started because an upstream rejected an access token.
pub type PendingRefresh = Pin<Box<dyn Future<Output = Result<Account, RefreshError>> + Send>>;

/// What an upstream answer means for the account that got it.
pub struct Observed {
    /// Whether the next try should go to another account.
    pub skip: bool,
    /// The refresh started for a rejected access token: awaiting it is
    /// optional, it runs either way.
    pub refresh: Option<PendingRefresh>,
    /// The write of the quota learned, when one was due; awaiting it is
    /// optional too.
    pub saved: Option<tokio::task::JoinHandle<()>>,
}

/// State shared by the daemon's tasks.
pub struct Engine {
    pub paths: Paths,
    home_real: PathBuf,
    pub config: Config,
    pub refresher: Refresher,
    /// Why auth.json cannot be used, while it cannot.
    auth_problem: Mutex<Option<(ProblemCode, String)>>,
    /// Signalled when the account store changed on disk; every task that
    /// cares holds a receiver of its own.
    pub store_changed: tokio::sync::watch::Sender<()>,
    /// Where the forwarder listens, when it runs.
    pub forwarder: Option<SocketAddr>,
    /// Per account: when quota was last written, and what.
    quota_written: Mutex<HashMap<String, (Instant, Quota)>>,
    /// The leader this daemon follows, if any: quota seen here is reported
    /// to it.
    pub leader: Option<Leader>,
    /// Why the leader cannot be reached, while it cannot.
    leader_problem: Mutex<Option<String>>,
    /// Quota reports to the leader under way; past the limit a report is
    /// skipped (the next one carries newer numbers), so that a leader that
    /// hangs cannot pile them up.
    reports: Arc<tokio::sync::Semaphore>,
    /// Token usage of the answers the forwarder relayed.
    pub usage: usage::Usage,
    /// The counters `/metrics` exposes (shared with the refresher).
    pub metrics: Metrics,
    /// Which account each active conversation stays on.
    pub affinity: affinity::Affinity,
    /// The conversations kept warm.
    pub cachekeep: cachekeep::Keeper,
    /// Dumps of the requests sent to the backend.
    pub dumps: dumps::Dumper,
}

/// Quota reports to the leader that may be under way at once.
const REPORTS_IN_FLIGHT: usize = 4;

impl Engine {
    pub fn new(
        paths: Paths,
        config: Config,
        refresher: Refresher,
        forwarder: Option<SocketAddr>,
    ) -> Engine {
        let home_real = paths
            .home
            .canonicalize()
            .unwrap_or_else(|_| paths.home.clone());
        let paths_usage = paths.usage();
        let metrics = refresher.metrics().clone();
        Engine {
            paths,
            home_real,
            refresher,
            auth_problem: Mutex::new(None),
            store_changed: tokio::sync::watch::Sender::new(()),
            forwarder,
            quota_written: Mutex::new(HashMap::new()),
            leader: None,
            leader_problem: Mutex::new(None),
            reports: Arc::new(tokio::sync::Semaphore::new(REPORTS_IN_FLIGHT)),
            usage: usage::Usage::open(paths_usage),
            metrics,
            affinity: affinity::Affinity::default(),
            cachekeep: cachekeep::Keeper::new(config.cachekeep),
            dumps: dumps::Dumper::new(config.dumps.clone()),
            config,
        }
    }

    /// The Prometheus text exposition: the counters, and the accounts as
    /// the store holds them now.
    pub fn metrics_text(&self) -> Result<String, RefreshError> {
        let store = self.refresher.store()?;
        Ok(self.metrics.encode(&store.accounts, self.refresher.now()))
    }

    /// This engine as a follower of `leader`.
    pub fn following(mut self, leader: Leader) -> Engine {
        self.leader = Some(leader);
        self
    }

    /// Records why the leader cannot be reached (`None`: it can). Returns
    /// whether that changed.
    /// Why the leader cannot be reached, while it cannot.
    pub fn leader_problem(&self) -> Option<String> {
        self.leader_problem.lock().expect("leader lock").clone()
    }

    pub fn set_leader_problem(&self, problem: Option<String>) -> bool {
        let mut current = self.leader_problem.lock().expect("leader lock");
        let changed = *current != problem;
        *current = problem;
        changed
    }

    /// Whether `home` names the broker home this daemon serves.
    pub fn serves_home(&self, home: &Path) -> bool {
        home == self.paths.home || home.canonicalize().is_ok_and(|h| h == self.home_real)
    }

    /// Records what is wrong with auth.json (`None`: nothing). Returns
    /// whether that changed.
    pub fn set_auth_problem(&self, problem: Option<(ProblemCode, String)>) -> bool {
        let mut current = self.auth_problem.lock().expect("problem lock");
        let changed = *current != problem;
        *current = problem;
        changed
    }

    /// The `/v1/health` answer.
    pub fn health(&self) -> Health {
        let problem = |code, message: String| Problem { code, message };
        let mut problems = Vec::new();
        if let Some((code, message)) = self.auth_problem.lock().expect("problem lock").clone() {
            problems.push(problem(code, message));
        }
        if let Some(message) = self.paths.codex().keyring_problem() {
            problems.push(problem(ProblemCode::CodexKeyring, message));
        }
        if let Some(message) = self.leader_problem.lock().expect("leader lock").clone() {
            problems.push(problem(ProblemCode::LeaderUnreachable, message));
        }
        for message in self.refresher.unsaved() {
            problems.push(problem(ProblemCode::RotationUnsaved, message));
        }
        let store = self.refresher.store();
        // An account in `refresh_interrupted` says it in its own words.
        let said = |account: &str| {
            store.as_ref().is_ok_and(|s| {
                s.get(account)
                    .is_some_and(|a| a.state == State::RefreshInterrupted)
            })
        };
        match self.refresher.journal().interrupted(self.refresher.now()) {
            Ok(interrupted) => problems.extend(
                interrupted
                    .iter()
                    .filter(|i| !said(&i.account))
                    .map(|i| problem(ProblemCode::RefreshInterrupted, i.message())),
            ),
            Err(e) => tracing::debug!("cannot read the journal: {e}"),
        }
        let (accounts, published) = match store {
            Ok(store) => {
                problems.extend(store.accounts.iter().filter_map(account_problem));
                (store.accounts.len(), store.published.clone())
            }
            Err(e) => {
                problems.push(problem(ProblemCode::StoreInvalid, e.to_string()));
                (0, None)
            }
        };
        Health {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            home: self.paths.home.clone(),
            codex_home: self.paths.codex_home.clone(),
            accounts,
            published,
            forwarder: self.forwarder.map(|a| ForwarderAddress {
                address: a.to_string(),
                port: a.port(),
            }),
            follows: self.leader.as_ref().map(|l| l.socket().to_owned()),
            pinned_conversations: self.affinity.count(self.refresher.now()),
            problems,
        }
    }

    /// Whether an upstream status refuses the account the request carried
    /// (401, 403, 429): the next try goes to another account.
    pub fn refuses_the_account(status: u16) -> bool {
        matches!(status, 401 | 403 | 429)
    }

    /// Takes in what an upstream answered for `account`: quota from its
    /// headers (`x-codex-*`) and from a `usage_limit_reached` body, saved
    /// with `source`; a 401 starts a refresh (unless the token is brand
    /// new, when the rejection is not about its age); a 401, 403 or 429
    /// sends the next try to another account.
    pub fn observe<'h>(
        &self,
        account: &Account,
        status: u16,
        header: impl Fn(&str) -> Option<&'h str>,
        body: Option<&Value>,
        source: Source,
        by: &Asker,
    ) -> Observed {
        let now = self.refresher.now();
        let mut quota = Quota::from_headers(header, now).map(|mut q| {
            q.source = source;
            q
        });
        let refused = Engine::refuses_the_account(status);
        let limit = body.filter(|_| refused).and_then(|b| {
            Quota::from_usage_limit(b, quota.as_ref().or(account.quota.as_ref()), now)
        });
        let limited = limit.is_some();
        if limit.is_some() {
            quota = limit;
        }
        let saved = self.record_quota(&account.id, quota, limited);
        let rejected = account.tokens.as_ref().map(|t| &t.access_token);
        let refresh = rejected
            .filter(|_| status == 401 && !recently_refreshed(account, now))
            .map(|rejected| {
                tracing::info!(account = %account.id, "the access token was rejected: refreshing it");
                Box::pin(self.refresher.spawn_replace(&account.id, rejected, by)) as PendingRefresh
            });
        Observed {
            skip: refused,
            refresh,
            saved,
        }
    }

    /// Stores what an upstream said about an account's quota: at once when
    /// `urgent` or when it changed, otherwise at most every few seconds
    /// (and, on a follower, reports it to the leader as often). Routing
    /// sees it before this returns; the write to disk follows, and is
    /// returned when one was due.
    pub fn record_quota(
        &self,
        id: &str,
        quota: Option<Quota>,
        urgent: bool,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let quota = quota?;
        {
            let mut written = self.quota_written.lock().expect("quota lock");
            let due = match written.get(id) {
                None => true,
                Some((at, last)) => {
                    urgent
                        || at.elapsed() >= QUOTA_WRITE_INTERVAL
                        || last.five_hour != quota.five_hour
                        || last.weekly != quota.weekly
                }
            };
            if !due {
                return None;
            }
            written.insert(id.to_owned(), (Instant::now(), quota.clone()));
        }
        if let Some(leader) = self.leader.clone() {
            match self.reports.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (id, headers) = (id.to_owned(), quota.headers(self.refresher.now()));
                    tokio::spawn(async move {
                        if let Err(e) = leader.report_quota(&id, headers).await {
                            tracing::debug!(account = %id, "cannot report quota to the leader: {e}");
                        }
                        drop(permit);
                    });
                }
                Err(_) => {
                    tracing::debug!(account = %id, "quota reports to the leader are busy; skipped one")
                }
            }
        }
        // Routed on at once, whenever the disk takes it.
        self.refresher.served().apply_quota(id, &quota);
        let (store, refresher) = (self.paths.store(), self.refresher.clone());
        let id = id.to_owned();
        Some(tokio::task::spawn_blocking(move || {
            let saved = store.update(|s| {
                if let Some(a) = s.get_mut(&id) {
                    a.quota = Some(quota.clone());
                }
                Ok::<_, StoreError>(())
            });
            match saved {
                Ok(()) => refresher.served().quota_saved(&id, &quota),
                Err(e) => tracing::warn!(account = %id, "cannot save quota: {e}"),
            }
        }))
    }
}

/// What `/v1/health` says of an account that cannot serve as it should.
fn account_problem(a: &Account) -> Option<Problem> {
    let reason = a.state_reason.as_deref().unwrap_or_default();
    match a.state {
        State::NeedsLogin => Some(Problem {
            code: ProblemCode::NeedsLogin,
            message: format!(
                "account {} needs a new login: {}; {LOGIN_HINT}",
                a.name(),
                reason.trim_end_matches(&format!("; {LOGIN_HINT}"))
            ),
        }),
        State::RefreshBackoff => Some(Problem {
            code: ProblemCode::RefreshBackoff,
            message: format!(
                "account {}: refreshing fails ({reason}); retrying",
                a.name()
            ),
        }),
        State::RefreshInterrupted => Some(Problem {
            code: ProblemCode::RefreshInterrupted,
            message: format!("account {}: {reason}", a.name()),
        }),
        State::Ok => None,
    }
}
