//! When the broker needs a person: the states worth telling (read from
//! the engine in one place, [`conditions`]) and the notices they give,
//! once when a state begins, again after `repeat` while it lasts, and
//! `recovered` when it ends. A state that flaps gives no second notice
//! within `repeat`. No notice carries a token: only ids, emails, times and
//! the engine's own messages, which never hold one.

use std::collections::HashMap;

use serde::Serialize;

use super::Engine;
use super::routing;
use super::store::{State, Store};

/// A state worth telling, as the engine stands now.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// `needs_login`, `refresh_interrupted`, `quota_low`,
    /// `quota_exhausted`, `rotation_unsaved`, `leader_unreachable`.
    pub event: &'static str,
    pub account_id: Option<String>,
    pub email: Option<String>,
    pub message: String,
    pub resets_at: Option<i64>,
    pub expires_at: Option<i64>,
}

/// One notice, as every channel gets it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    pub event: String,
    pub account_id: Option<String>,
    pub email: Option<String>,
    pub message: String,
    /// Unix seconds.
    pub at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl Notice {
    fn of(condition: &Condition, at: i64) -> Notice {
        Notice {
            event: condition.event.to_owned(),
            account_id: condition.account_id.clone(),
            email: condition.email.clone(),
            message: condition.message.clone(),
            at,
            resets_at: condition.resets_at,
            expires_at: condition.expires_at,
        }
    }

    /// The notice `notify test` sends.
    pub fn test(at: i64) -> Notice {
        Notice {
            event: "test".into(),
            account_id: None,
            email: None,
            message: "codex-broker: this is a test notification".into(),
            at,
            resets_at: None,
            expires_at: None,
        }
    }

    /// Whether the notice needs the person soon (a desktop shows it so).
    pub fn critical(&self) -> bool {
        matches!(
            self.event.as_str(),
            "needs_login" | "refresh_interrupted" | "quota_exhausted"
        )
    }
}

/// The states worth telling in `engine` at `now`; an account passing
/// `quota_percent` of a window is `quota_low`.
pub fn conditions(engine: &Engine, quota_percent: f64, now: i64) -> Vec<Condition> {
    let mut found = Vec::new();
    if let Ok(store) = engine.refresher.store() {
        accounts(&store, quota_percent, now, &mut found);
    }
    for message in engine.refresher.unsaved() {
        found.push(plain("rotation_unsaved", message));
    }
    if let Some(message) = engine.leader_problem() {
        found.push(plain("leader_unreachable", message));
    }
    found
}

fn plain(event: &'static str, message: String) -> Condition {
    Condition {
        event,
        account_id: None,
        email: None,
        message,
        resets_at: None,
        expires_at: None,
    }
}

/// What the accounts of `store` tell: their states, their quota, and
/// whether every one that could serve has used its quota.
fn accounts(store: &Store, quota_percent: f64, now: i64, found: &mut Vec<Condition>) {
    let (mut any_serves, mut resets) = (false, Vec::new());
    for account in &store.accounts {
        let of = |event, message: String| Condition {
            event,
            account_id: Some(account.id.clone()),
            email: account.email.clone(),
            message,
            resets_at: None,
            expires_at: None,
        };
        let reason = account.state_reason.as_deref().unwrap_or("no reason given");
        match account.state {
            State::NeedsLogin => found.push(of(
                "needs_login",
                format!(
                    "account {} needs a new login ({reason}): run codex-broker login",
                    account.name()
                ),
            )),
            State::RefreshInterrupted => {
                let mut condition = of(
                    "refresh_interrupted",
                    format!(
                        "account {}: a refresh's answer was lost ({reason}); log in again before its access token expires",
                        account.name()
                    ),
                );
                condition.expires_at = account.expires_at;
                found.push(condition);
            }
            _ => {}
        }
        let standing = account.quota.as_ref().map(|q| q.standing(now));
        for (window, standing) in standing.into_iter().flatten() {
            if let Some(s) = standing.filter(|s| s.used_percent >= quota_percent) {
                let mut condition = of(
                    "quota_low",
                    format!(
                        "account {} has used {:.0}% of its {window} window",
                        account.name(),
                        s.used_percent
                    ),
                );
                condition.resets_at = Some(s.resets_by);
                found.push(condition);
            }
        }
        match routing::blocked(store, account, now).map(|b| b.lifts_at()) {
            None => any_serves = true,
            Some(Some(resets_at)) => resets.push(resets_at),
            Some(None) => {}
        }
    }
    if !any_serves && let Some(first) = resets.iter().copied().min() {
        let mut condition = plain("quota_exhausted", "every account has used its quota".into());
        condition.resets_at = Some(first);
        found.push(condition);
    }
}

/// What was told of one state.
#[derive(Debug, Clone, Copy)]
struct Told {
    /// When its last notice went out.
    at: i64,
    /// Whether it is active now.
    active: bool,
    /// Whether a notice of its beginning went out since it last recovered.
    begun: bool,
}

/// The notices the states give over time.
#[derive(Debug, Default)]
pub struct Tracker {
    told: HashMap<(&'static str, Option<String>), Told>,
}

impl Tracker {
    /// The notices `conditions`, the states at `now`, give: beginnings
    /// (and repeats past `repeat` seconds), then the ends of those that
    /// are gone.
    pub fn observe(&mut self, conditions: &[Condition], repeat: i64, now: i64) -> Vec<Notice> {
        let mut notices = Vec::new();
        for condition in conditions {
            let key = (condition.event, condition.account_id.clone());
            let told = self.told.entry(key).or_insert(Told {
                at: i64::MIN,
                active: false,
                begun: false,
            });
            told.active = true;
            if now.saturating_sub(told.at) >= repeat {
                told.at = now;
                told.begun = true;
                notices.push(Notice::of(condition, now));
            }
        }
        for ((event, account), told) in &mut self.told {
            let present = conditions
                .iter()
                .any(|c| c.event == *event && c.account_id == *account);
            if told.active && !present {
                told.active = false;
                if told.begun {
                    told.begun = false;
                    notices.push(recovered(event, account.clone(), now));
                }
            }
        }
        notices
    }
}

fn recovered(event: &str, account_id: Option<String>, at: i64) -> Notice {
    let whose = account_id
        .as_deref()
        .map_or(String::new(), |a| format!(" (account {a})"));
    Notice {
        event: "recovered".into(),
        account_id,
        email: None,
        message: format!("{event}{whose} is over"),
        at,
        resets_at: None,
        expires_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs_login(account: &str) -> Condition {
        Condition {
            event: "needs_login",
            account_id: Some(account.into()),
            email: Some(format!("{account}@example.com")),
            message: format!("account {account} needs a new login"),
            resets_at: None,
            expires_at: None,
        }
    }

    fn events(notices: &[Notice]) -> Vec<String> {
        notices
            .iter()
            .map(|n| format!("{}:{}", n.event, n.account_id.as_deref().unwrap_or("-")))
            .collect()
    }

    #[test]
    fn a_state_is_told_once_again_after_repeat_and_its_end_once() {
        let mut tracker = Tracker::default();
        let on = [needs_login("a")];
        assert_eq!(events(&tracker.observe(&on, 100, 0)), ["needs_login:a"]);
        assert!(tracker.observe(&on, 100, 5).is_empty(), "once");
        assert!(tracker.observe(&on, 100, 99).is_empty());
        assert_eq!(
            events(&tracker.observe(&on, 100, 100)),
            ["needs_login:a"],
            "repeat"
        );
        assert_eq!(events(&tracker.observe(&[], 100, 110)), ["recovered:a"]);
        assert!(tracker.observe(&[], 100, 120).is_empty());
    }

    #[test]
    fn a_flapping_state_is_not_a_storm() {
        let mut tracker = Tracker::default();
        let on = [needs_login("a")];
        let mut told = Vec::new();
        for t in 0..20 {
            let now = if t % 2 == 0 { &on[..] } else { &[][..] };
            told.extend(events(&tracker.observe(now, 3600, t)));
        }
        assert_eq!(told, ["needs_login:a", "recovered:a"]);
    }

    #[test]
    fn states_of_different_accounts_and_kinds_are_told_apart() {
        let mut tracker = Tracker::default();
        let mut low = needs_login("a");
        low.event = "quota_low";
        let both = [needs_login("a"), needs_login("b"), low];
        let mut told = events(&tracker.observe(&both, 100, 0));
        told.sort();
        assert_eq!(told, ["needs_login:a", "needs_login:b", "quota_low:a"]);
        let notice = &tracker.observe(&both[1..], 100, 1)[0];
        assert_eq!(
            (notice.event.as_str(), notice.account_id.as_deref()),
            ("recovered", Some("a"))
        );
        let json = serde_json::to_value(Notice::of(&both[0], 7)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"event": "needs_login", "account_id": "a",
                "email": "a@example.com", "message": "account a needs a new login", "at": 7})
        );
        assert!(Notice::of(&both[0], 7).critical());
        assert!(!Notice::of(&both[2], 7).critical());
    }
}
