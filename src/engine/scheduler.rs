//! The refresh scheduler: sleeps until the next account is due, refreshes it
//! through the single-flight engine, and wakes early when the store changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::engine::due::CODEX_STALE_AFTER;
use crate::engine::refresh::Asker;
use crate::engine::store::{Account, Kind, State};

/// An account is not tried again sooner than this after an attempt.
const RETRY_FLOOR: i64 = 5;
/// The shortest time between two scheduled refreshes of a short-lived token.
const MIN_INTERVAL: i64 = 60;
/// How long to wait before reading a store that could not be read.
const STORE_RETRY: i64 = 30;

/// How long before expiry `account` is refreshed: `refresh_ahead`, but for
/// a token that lives shorter than that, a minute after it was issued (or
/// at half its life, for one that lives less than two minutes), so that a
/// new token is not due again the moment it arrives. The lifetime is the
/// access token's `exp - iat`; without `iat`, `exp - last_refresh`.
pub fn lead_time(account: &Account, refresh_ahead: i64) -> i64 {
    let issued = account
        .tokens
        .as_ref()
        .and_then(|t| t.iat())
        .or_else(|| account.last_refresh.map(|t| t.unix_timestamp()));
    let lifetime = account
        .expires_at
        .zip(issued)
        .map(|(exp, issued)| exp.saturating_sub(issued))
        .filter(|l| *l > 0);
    match lifetime {
        Some(lifetime) => refresh_ahead.min((lifetime - MIN_INTERVAL).max(lifetime / 2)),
        None => refresh_ahead,
    }
}

/// When `account` is due for a refresh (unix seconds), or `None` when the
/// scheduler leaves it alone (API keys, accounts that need a login). Due
/// `lead_time` before its token expires, and never later than that before
/// Codex's own 8-day rule on `last_refresh` would refresh it.
pub fn due_at(account: &Account, refresh_ahead: i64) -> Option<i64> {
    if account.kind != Kind::Chatgpt || account.state == State::NeedsLogin {
        return None;
    }
    let lead = lead_time(account, refresh_ahead);
    let by_expiry = account.expires_at.map(|exp| exp - lead);
    let by_age = account
        .last_refresh
        .map(|t| t.unix_timestamp() + CODEX_STALE_AFTER - lead);
    let due = match (by_expiry, by_age) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(i64::MIN),
    };
    Some(match account.backoff_until {
        Some(until) if until > due => until,
        _ => due,
    })
}

/// Runs until `shutdown` is cancelled. A refresh in flight is the engine's
/// task: stopping the scheduler only stops waiting for it.
pub async fn run(shared: Arc<Engine>, shutdown: CancellationToken) {
    let refresh_ahead = shared.config.refresh_ahead;
    let by = Asker::scheduler();
    let mut attempted: HashMap<String, i64> = HashMap::new();
    let mut store_changed = shared.store_changed.subscribe();
    loop {
        let now = shared.refresher.now();
        let next = match shared.refresher.store() {
            Err(e) => {
                tracing::warn!("the scheduler cannot read the store: {e}");
                now + STORE_RETRY
            }
            Ok(store) => {
                let mut next = i64::MAX;
                for account in &store.accounts {
                    let Some(due) = due_at(account, refresh_ahead) else {
                        continue;
                    };
                    let floor = attempted
                        .get(&account.id)
                        .map_or(i64::MIN, |t| t + RETRY_FLOOR);
                    let due = due.max(floor);
                    if due > now {
                        next = next.min(due);
                        continue;
                    }
                    if shutdown.is_cancelled() {
                        return;
                    }
                    attempted.insert(account.id.clone(), now);
                    let lead = lead_time(account, refresh_ahead);
                    let fresh = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        fresh = shared.refresher.fresh(&account.id, lead, &by) => fresh,
                    };
                    match fresh {
                        Ok(a) => {
                            tracing::debug!(account = %a.id, expires_at = ?a.expires_at, "account is fresh")
                        }
                        Err(e) => tracing::warn!("scheduled refresh: {e}"),
                    }
                    // Look again at once: the store has changed.
                    next = now;
                }
                attempted.retain(|id, _| store.get(id).is_some());
                next
            }
        };
        if next <= now {
            continue;
        }
        let wait = Duration::from_secs(u64::try_from(next - now).unwrap_or(u64::MAX).min(3600));
        tracing::debug!(seconds = wait.as_secs(), "next scheduled refresh check");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = store_changed.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(expires_at: Option<i64>, refreshed: i64) -> Account {
        crate::engine::store::test_account(expires_at, refreshed)
    }

    #[test]
    fn due_ahead_of_expiry_and_codex_age_rule() {
        let t = 1_795_000_000;
        // A 10-day token: due 30 min before the 8-day mark, not 30 min before expiry.
        let a = account(Some(t + 10 * 86_400), t);
        assert_eq!(due_at(&a, 1800), Some(t + CODEX_STALE_AFTER - 1800));
        // A 1-hour token: 30 min ahead.
        let a = account(Some(t + 3600), t);
        assert_eq!(due_at(&a, 1800), Some(t + 1800));
        // A 20-minute token with a 30-minute lead: a minute after issue.
        let a = account(Some(t + 1200), t);
        assert_eq!(due_at(&a, 1800), Some(t + 60));
        // A 90-second token: at half its life.
        let a = account(Some(t + 90), t);
        assert_eq!(due_at(&a, 1800), Some(t + 45));
        // Backing off: not before the backoff ends.
        let mut a = account(Some(t + 3600), t);
        a.backoff_until = Some(t + 2000);
        assert_eq!(due_at(&a, 1800), Some(t + 2000));
        a.state = State::NeedsLogin;
        assert_eq!(due_at(&a, 1800), None);
    }
}
