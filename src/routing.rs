//! Which account serves next: routing order, killswitch and exhaustion.

use crate::store::{Account, Role, Routing, State, Store};

/// Why `account` may not serve at `now`, if it may not.
pub fn blocked(store: &Store, account: &Account, now: i64) -> Option<String> {
    if account.state == State::NeedsLogin {
        return Some("needs a new login".into());
    }
    let quota = account.quota.as_ref();
    let used = |pick: fn(&crate::quota::Quota) -> Option<&crate::quota::Window>| {
        quota.and_then(pick).map(|w| (w.used_at(now), w.resets_at))
    };
    let five_hour = used(|q| q.five_hour.as_ref());
    let weekly = used(|q| q.weekly.as_ref());
    for (name, window) in [("5-hour", five_hour), ("weekly", weekly)] {
        if let Some((percent, resets_at)) = window
            && percent >= 100.0
        {
            return Some(match resets_at {
                Some(at) => format!("its {name} quota is used up until unix time {at}"),
                None => format!("its {name} quota is used up"),
            });
        }
    }
    if store.killswitch.enabled
        && let Some(limits) = store.killswitch.limits.get(&account.id)
    {
        let over = |window: Option<(f64, Option<i64>)>, limit: f64| {
            window.is_some_and(|(percent, _)| percent > limit)
        };
        if over(five_hour, limits.five_hour) || over(weekly, limits.weekly) {
            return Some("blocked by the killswitch".into());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{Quota, Window};
    use crate::store::Limits;

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
            source: "headers".into(),
            observed_at: 0,
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
            blocked(&s, &s.accounts[1], 1_000).unwrap(),
            "blocked by the killswitch"
        );
    }
}
