//! Conversation affinity: the backend caches a conversation's prompt
//! prefix on the account that served it, so each conversation stays on the
//! account that served its first request while that account can serve and
//! the conversation is active. The pins live in a bounded LRU: the
//! conversation used longest ago is forgotten first.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

/// Conversations pinned at most; past it the least recently used goes.
pub const MAX_PINNED: usize = 16_384;
/// A conversation idle this long (seconds) is no longer pinned.
pub const IDLE: i64 = 3600;
/// Conversation keys longer than this are not pinned (a key is a client's
/// header or body field: it is bounded before it is kept).
pub const MAX_KEY: usize = 256;

/// The pinned conversations.
pub struct Affinity {
    pins: Mutex<LruCache<Box<str>, Pin>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pin {
    account: Box<str>,
    /// Unix seconds of the conversation's last request.
    seen: i64,
}

/// What serving a conversation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Its first request (or the first after it idled out).
    Pinned,
    /// It stayed on its account.
    Stayed,
    /// Its account could not serve: it moved, and stays on the new one.
    Moved,
}

impl Default for Affinity {
    fn default() -> Affinity {
        Affinity::with_capacity(MAX_PINNED)
    }
}

impl Affinity {
    pub fn with_capacity(capacity: usize) -> Affinity {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Affinity {
            pins: Mutex::new(LruCache::new(capacity)),
        }
    }

    fn pins(&self) -> std::sync::MutexGuard<'_, LruCache<Box<str>, Pin>> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The account conversation `key` is pinned to at `now`, unless it
    /// idled out (then it is forgotten).
    pub fn pinned(&self, key: &str, now: i64) -> Option<Box<str>> {
        let mut pins = self.pins();
        let pin = pins.get(key)?;
        if now.saturating_sub(pin.seen) >= IDLE {
            pins.pop(key);
            return None;
        }
        Some(pin.account.clone())
    }

    /// Records that `account` served conversation `key` at `now`.
    pub fn served(&self, key: &str, account: &str, now: i64) -> Served {
        if key.len() > MAX_KEY {
            return Served::Pinned;
        }
        let mut pins = self.pins();
        if let Some(pin) = pins.get_mut(key) {
            let live = now.saturating_sub(pin.seen) < IDLE;
            pin.seen = pin.seen.max(now);
            if &*pin.account == account {
                return if live { Served::Stayed } else { Served::Pinned };
            }
            pin.account = account.into();
            return if live { Served::Moved } else { Served::Pinned };
        }
        pins.put(
            key.into(),
            Pin {
                account: account.into(),
                seen: now,
            },
        );
        Served::Pinned
    }

    /// Conversations pinned and active at `now`.
    pub fn count(&self, now: i64) -> usize {
        self.pins()
            .iter()
            .filter(|(_, pin)| now.saturating_sub(pin.seen) < IDLE)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_stays_moves_once_and_idles_out() {
        let affinity = Affinity::default();
        assert_eq!(affinity.pinned("c1", 0), None);
        assert_eq!(affinity.served("c1", "a", 0), Served::Pinned);
        assert_eq!(affinity.served("c1", "a", 10), Served::Stayed);
        assert_eq!(affinity.pinned("c1", 20).as_deref(), Some("a"));
        assert_eq!(affinity.served("c1", "b", 30), Served::Moved);
        assert_eq!(affinity.pinned("c1", 40).as_deref(), Some("b"));
        assert_eq!(affinity.count(40), 1);
        // Idle for the whole hour: forgotten, and counted no more.
        assert_eq!(affinity.count(30 + IDLE), 0);
        assert_eq!(affinity.pinned("c1", 30 + IDLE - 1).as_deref(), Some("b"));
        assert_eq!(affinity.pinned("c1", 30 + IDLE), None);
        assert_eq!(affinity.served("c1", "a", 31 + IDLE), Served::Pinned);
    }

    #[test]
    fn an_idle_conversation_served_elsewhere_is_pinned_anew_not_moved() {
        let affinity = Affinity::default();
        affinity.served("c1", "a", 0);
        assert_eq!(affinity.served("c1", "b", IDLE), Served::Pinned);
        assert_eq!(affinity.pinned("c1", IDLE).as_deref(), Some("b"));
    }

    #[test]
    fn a_clock_that_steps_back_keeps_the_latest_use() {
        let affinity = Affinity::default();
        affinity.served("c1", "a", 1_000);
        affinity.served("c1", "a", 10);
        assert_eq!(
            affinity.pinned("c1", 1_000 + IDLE - 1).as_deref(),
            Some("a")
        );
    }

    #[test]
    fn memory_is_bounded_the_least_recent_goes_and_long_keys_are_not_kept() {
        let affinity = Affinity::with_capacity(3);
        for key in ["c1", "c2", "c3"] {
            affinity.served(key, "a", 0);
        }
        // c1 was used last: c2 goes when c4 comes.
        assert!(affinity.pinned("c1", 1).is_some());
        affinity.served("c4", "a", 2);
        assert_eq!(affinity.count(2), 3);
        assert!(affinity.pinned("c2", 2).is_none());
        assert!(affinity.pinned("c1", 2).is_some());
        let long = "k".repeat(MAX_KEY + 1);
        affinity.served(&long, "a", 3);
        assert!(affinity.pinned(&long, 3).is_none());
        assert_eq!(affinity.count(3), 3);
    }
}
