//! When a token is due: fresh enough for a caller, due for a refresh,
//! waiting out a failed one, or dead; and how long a failing refresh waits.
//! Plain functions of an account and the time, with no I/O.

use time::OffsetDateTime;

use crate::engine::store::{Account, Kind, State};

/// Codex refreshes a token without `exp` once `last_refresh` is this old.
pub const CODEX_STALE_AFTER: i64 = 8 * 86_400;
/// First retry delay after a transient failure, seconds; doubles each time.
const BACKOFF_BASE: i64 = 15;
/// Longest retry delay, seconds.
const BACKOFF_MAX: i64 = 600;
/// After a lost refresh answer, the refresh is tried once more only this
/// long (seconds) before the access token expires.
pub const LOST_RETRY_BEFORE: i64 = 300;

/// A token a server rejected is refreshed at once, unless it is this new
/// (seconds): then the rejection is not about its age.
pub const RECENT_REFRESH: i64 = 60;
/// A `min_ttl` that no token meets: a refresh
/// ([`crate::engine::refresh::Refresher::fresh`]) follows.
pub const FORCE_REFRESH: i64 = i64::MAX / 4;

/// Whether `account` was refreshed less than [`RECENT_REFRESH`] ago.
pub fn recently_refreshed(account: &Account, now: i64) -> bool {
    account
        .last_refresh
        .is_some_and(|t| now - t.unix_timestamp() < RECENT_REFRESH)
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

/// Whether `account` can be handed out at `now` for `min_ttl` from what is
/// in memory: its token is fresh enough, or a refresh is due but waits (a
/// backoff, a lost answer) while the token is still valid. Only the
/// scheduler and an expired wait send anything.
pub fn servable(account: &Account, now: i64, min_ttl: i64) -> bool {
    match assess(account, now, min_ttl) {
        Assessment::Fresh => true,
        Assessment::Wait { .. } => still_valid(account, now),
        Assessment::Refresh | Assessment::NeedsLogin => false,
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

pub fn jitter() -> f64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the system has a random source");
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether the token of `account` is still usable at `now`.
pub fn still_valid(account: &Account, now: i64) -> bool {
    account.expires_at.is_some_and(|exp| exp > now)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Refreshed at the start of 2026-11-22, which is after `now` below.
    fn account(expires_in: Option<i64>, now: i64) -> Account {
        crate::engine::store::test_account(expires_in.map(|s| now + s), 1_795_305_600)
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
