//! Which account serves next: routing order, killswitch and exhaustion.

use std::sync::Arc;

use crate::engine::due::{Assessment, assess, servable};
use crate::engine::quota::Standing;
use crate::engine::refresh::{Asker, LOGIN_HINT, RefreshError, Refresher};
use crate::engine::store::{Account, Kind, LookupError, Role, Routing, State, Store};
use crate::wire::proto::ErrorCode;
use crate::wire::proto::MIN_TTL;

/// Why an account may not serve.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    NeedsLogin,
    /// A quota window is used up until `resets_at` (the latest it resets,
    /// where the upstream named no time: [`Standing::resets_by`]).
    UsedUp {
        window: &'static str,
        resets_at: i64,
    },
    /// Over the killswitch's limit, until the window resets.
    Killswitch {
        resets_at: i64,
    },
}

impl Block {
    /// When waiting makes the account usable again; `None` for a block
    /// that waiting does not lift.
    pub fn lifts_at(&self) -> Option<i64> {
        match self {
            Block::NeedsLogin => None,
            Block::UsedUp { resets_at, .. } | Block::Killswitch { resets_at } => Some(*resets_at),
        }
    }
}

impl std::fmt::Display for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Block::NeedsLogin => f.write_str("needs a new login"),
            Block::UsedUp { window, resets_at } => {
                write!(
                    f,
                    "its {window} quota is used up until unix time {resets_at}"
                )
            }
            Block::Killswitch { .. } => f.write_str("blocked by the killswitch"),
        }
    }
}

/// Why `account` may not serve at `now`, if it may not.
pub fn blocked(store: &Store, account: &Account, now: i64) -> Option<Block> {
    if account.state == State::NeedsLogin {
        return Some(Block::NeedsLogin);
    }
    let standing = account.quota.as_ref().map(|q| q.standing(now));
    let [(_, five_hour), (_, weekly)] = standing.unwrap_or_default();
    for (window, standing) in standing.into_iter().flatten() {
        if let Some(s) = standing
            && s.used_percent >= 100.0
        {
            return Some(Block::UsedUp {
                window,
                resets_at: s.resets_by,
            });
        }
    }
    if store.killswitch.enabled
        && let Some(limits) = store.killswitch.limits.get(&account.id)
    {
        let over = |window: Option<Standing>, limit: f64| {
            window.and_then(|s| (s.used_percent > limit).then_some(s.resets_by))
        };
        if let Some(resets_at) =
            over(five_hour, limits.five_hour).or_else(|| over(weekly, limits.weekly))
        {
            return Some(Block::Killswitch { resets_at });
        }
    }
    None
}

/// The accounts that may serve, best first: the main account first with
/// `main-first`, last with `fallback-first`; otherwise store order.
pub fn candidates(store: &Store, now: i64) -> Vec<&Account> {
    let main_rank = match store.routing {
        Routing::MainFirst => 0,
        Routing::FallbackFirst => 2,
    };
    let mut usable: Vec<&Account> = store
        .accounts
        .iter()
        .filter(|a| blocked(store, a, now).is_none())
        .collect();
    usable.sort_by_key(|a| if a.role == Role::Main { main_rank } else { 1 });
    usable
}

/// Why no account could hand out a token.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("no accounts yet; {LOGIN_HINT}, or import Codex's login with: codex-broker import")]
    NoAccounts,
    #[error("no usable account ({0}); {LOGIN_HINT}")]
    AllBlocked(String),
    #[error("no usable account: {0}")]
    AllFailed(RefreshError),
    /// Every account that could serve has used its quota: waiting fixes
    /// it, not a login.
    #[error("every account has used its quota; the first resets at {} ({})", crate::base::display::timestamp(*.resets_at), crate::base::display::relative(*.resets_at, *.now))]
    QuotaExhausted {
        /// The earliest reset among the accounts.
        resets_at: i64,
        /// The last known quota of the account that resets first.
        quota: Option<Box<crate::engine::quota::Quota>>,
        /// Its plan, as the backend or its login named it.
        plan: Option<String>,
        now: i64,
    },
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Refresh(#[from] RefreshError),
}

impl Unavailable {
    /// Whether a login (or waiting for a quota reset) is what it takes.
    pub fn needs_login(&self) -> bool {
        matches!(
            self,
            Unavailable::NoAccounts
                | Unavailable::AllBlocked(_)
                | Unavailable::AllFailed(_)
                | Unavailable::Refresh(RefreshError::NeedsLogin { .. })
        )
    }

    /// Seconds until waiting helps: until the first quota reset.
    pub fn retry_after(&self) -> Option<i64> {
        match self {
            Unavailable::QuotaExhausted { resets_at, now, .. } => Some((resets_at - now).max(0)),
            _ => None,
        }
    }

    /// The stable error code the socket API answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Unavailable::NoAccounts
            | Unavailable::AllFailed(_)
            | Unavailable::Refresh(RefreshError::NeedsLogin { .. }) => ErrorCode::NeedsLogin,
            Unavailable::AllBlocked(_) => ErrorCode::NoUsableAccount,
            Unavailable::QuotaExhausted { .. } => ErrorCode::QuotaExhausted,
            Unavailable::Lookup(_) => ErrorCode::UnknownAccount,
            Unavailable::Refresh(RefreshError::Backoff { .. }) => ErrorCode::RefreshFailed,
            Unavailable::Refresh(RefreshError::Stopped(_)) => ErrorCode::Stopping,
            Unavailable::Refresh(_) => ErrorCode::Internal,
        }
    }
}

/// Which accounts may answer a request for a token.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pick<'a> {
    /// Only this account (id, label or unique prefix).
    pub query: Option<&'a str>,
    /// Never these accounts.
    pub exclude: &'a [&'a str],
    /// Only ChatGPT accounts (the backend takes no API key).
    pub chatgpt_only: bool,
    /// This account first, whatever the routing order, when it may serve
    /// (a conversation's pinned account).
    pub prefer: Option<&'a str>,
    /// The asker comes from outside (the socket API): a `min_ttl` no token
    /// of the account can meet forces at most one refresh a minute; within
    /// that minute the current token is served.
    pub throttle_forced: bool,
}

/// `min_ttl` as it applies to `account` for `pick` at `now`: from the
/// socket API, a `min_ttl` that forces a refresh of a token still good for
/// the default [`MIN_TTL`] does so at most once a minute per account.
fn effective_min_ttl(
    refresher: &Refresher,
    pick: &Pick<'_>,
    account: &Account,
    min_ttl: i64,
    now: i64,
) -> i64 {
    match account.expires_at {
        Some(exp)
            if pick.throttle_forced
                && exp - now > i64::from(MIN_TTL)
                && assess(account, now, min_ttl) == Assessment::Refresh
                && !refresher.allow_forced(&account.id, now) =>
        {
            min_ttl.min(exp - now - 1)
        }
        _ => min_ttl,
    }
}

/// An account routing picked: in the store snapshot it was read from (not
/// copied), or as a refresh left it.
#[derive(Clone)]
pub enum Picked {
    Stored { store: Arc<Store>, index: usize },
    Refreshed(Arc<Account>),
}

impl std::ops::Deref for Picked {
    type Target = Account;

    fn deref(&self) -> &Account {
        match self {
            Picked::Stored { store, index } => &store.accounts[*index],
            Picked::Refreshed(account) => account,
        }
    }
}

impl From<Account> for Picked {
    fn from(account: Account) -> Picked {
        Picked::Refreshed(Arc::new(account))
    }
}

/// An account with a token valid for more than `min_ttl` seconds: the named
/// one, or else the first routed account that can serve, skipping excluded
/// ones and those whose refresh token is dead.
pub async fn fresh_account(
    refresher: &Refresher,
    pick: Pick<'_>,
    min_ttl: i64,
    by: &Asker,
) -> Result<Picked, Unavailable> {
    let store = refresher.store()?;
    let now = refresher.now();
    if let Some(query) = pick.query {
        let account = store.find(query)?;
        let min_ttl = effective_min_ttl(refresher, &pick, account, min_ttl, now);
        return Ok(refresher.fresh(&account.id, min_ttl, by).await?.into());
    }
    let exclude = pick.exclude;
    let mut usable: Vec<&Account> = candidates(&store, now)
        .into_iter()
        .filter(|a| !exclude.contains(&a.id.as_str()))
        .filter(|a| !pick.chatgpt_only || a.kind == Kind::Chatgpt)
        .collect();
    if let Some(at) = pick
        .prefer
        .and_then(|id| usable.iter().position(|a| a.id == id))
    {
        usable[..=at].rotate_right(1);
    }
    // Once per account: a forced refresh it allows counts against the
    // account's allowance.
    let ttls: Vec<i64> = usable
        .iter()
        .map(|a| effective_min_ttl(refresher, &pick, a, min_ttl, now))
        .collect();
    // The common case: the first choice is fresh (or waits for its next
    // refresh with a valid token); no lock, no reload, no copy.
    if let (Some(first), Some(first_ttl)) = (usable.first(), ttls.first())
        && servable(first, now, *first_ttl)
        && let Some(index) = store.accounts.iter().position(|a| std::ptr::eq(a, *first))
    {
        return Ok(Picked::Stored {
            store: store.clone(),
            index,
        });
    }
    let ids: Vec<(String, i64)> = usable.iter().map(|a| a.id.clone()).zip(ttls).collect();
    if ids.is_empty() {
        return Err(why_none_serves(&store, &pick, now));
    }
    let mut last = None;
    for (id, min_ttl) in &ids {
        match refresher.fresh(id, *min_ttl, by).await {
            Ok(account) => return Ok(account.into()),
            Err(e @ RefreshError::NeedsLogin { .. }) => {
                tracing::info!("skipping: {e}");
                last = Some(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Unavailable::AllFailed(
        last.expect("every candidate failed with an error"),
    ))
}

/// Why no account can serve `pick`: there is none, or quota is all that
/// stands in the way (with the earliest reset), or each one's block.
fn why_none_serves(store: &Store, pick: &Pick<'_>, now: i64) -> Unavailable {
    if store.accounts.is_empty() {
        return Unavailable::NoAccounts;
    }
    let blocks: Vec<(&Account, Option<Block>)> = store
        .accounts
        .iter()
        .filter(|a| !pick.chatgpt_only || a.kind == Kind::Chatgpt)
        .map(|a| (a, blocked(store, a, now)))
        .collect();
    // Only quota stands in the way, and it resets: say when.
    let resets: Option<Vec<(i64, &Account)>> = blocks
        .iter()
        .map(|(a, block)| Some((block.as_ref()?.lifts_at()?, *a)))
        .collect();
    if let Some((resets_at, first)) = resets.and_then(|r| r.into_iter().min_by_key(|(at, _)| *at)) {
        return Unavailable::QuotaExhausted {
            resets_at,
            quota: first.quota.clone().map(Box::new),
            plan: first
                .quota
                .as_ref()
                .and_then(|q| q.plan_type.clone())
                .or_else(|| first.plan.clone()),
            now,
        };
    }
    let reasons: Vec<String> = blocks
        .iter()
        .filter_map(|(a, block)| {
            let why = block.as_ref().map(Block::to_string).or_else(|| {
                pick.exclude
                    .contains(&a.id.as_str())
                    .then(|| "just failed".into())
            })?;
            Some(format!("{}: {why}", a.name()))
        })
        .collect();
    Unavailable::AllBlocked(reasons.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::quota::{Quota, Window};
    use crate::engine::store::Limits;

    fn store() -> Store {
        let accounts: Vec<serde_json::Value> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let role = if i == 1 { "main" } else { "fallback" };
                serde_json::json!({"id": id, "kind": "api_key", "api_key": "k", "role": role})
            })
            .collect();
        serde_json::from_value(serde_json::json!({"version": 1, "accounts": accounts})).unwrap()
    }

    fn ids(store: &Store) -> Vec<&str> {
        candidates(store, 1_000)
            .iter()
            .map(|a| a.id.as_str())
            .collect()
    }

    fn quota(five_hour: f64, resets_at: i64) -> Option<Quota> {
        Some(Quota {
            five_hour: Some(Window {
                used_percent: five_hour,
                window_minutes: Some(300),
                resets_at: Some(resets_at),
            }),
            weekly: None,
            source: crate::engine::quota::Source::Headers,
            observed_at: 0,
            plan_type: None,
            extra: Default::default(),
        })
    }

    #[test]
    fn routing_orders_and_skips() {
        let mut s = store();
        assert_eq!(ids(&s), ["b", "a", "c"]);
        s.routing = Routing::FallbackFirst;
        assert_eq!(ids(&s), ["a", "c", "b"]);
        s.accounts[0].state = State::NeedsLogin;
        assert_eq!(ids(&s), ["c", "b"]);
        s.accounts[2].quota = quota(100.0, 2_000);
        assert_eq!(ids(&s), ["b"]);
        s.accounts[2].quota = quota(100.0, 999);
        assert_eq!(ids(&s), ["c", "b"], "a reset window serves again");
    }

    #[test]
    fn killswitch_blocks_above_thresholds_only_when_on() {
        let mut s = store();
        s.accounts[1].quota = quota(85.0, 2_000);
        s.killswitch.limits.insert(
            "b".into(),
            Limits {
                five_hour: 80.0,
                weekly: 100.0,
            },
        );
        assert_eq!(ids(&s), ["b", "a", "c"]);
        s.killswitch.enabled = true;
        assert_eq!(ids(&s), ["a", "c"]);
        assert_eq!(
            blocked(&s, &s.accounts[1], 1_000).unwrap().to_string(),
            "blocked by the killswitch"
        );
    }
}
