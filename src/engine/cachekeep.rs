//! Keep-warm: which conversations are kept warm, and when each is due. A
//! conversation idle for the interval gets a shadow request (its latest
//! real request again, on the account that served it), again and again
//! while its last real request is younger than the cap. Only what a shadow
//! needs is kept: the latest body of at most [`MAX_SESSIONS`]
//! conversations, each at most [`MAX_BODY`] bytes.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::HeaderMap;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::config::CacheKeep;
use crate::wire::usage::Tokens;

/// Conversations kept warm at most; past it the least recently used goes.
pub const MAX_SESSIONS: usize = 64;
/// The largest request body kept for a shadow (as it came, compressed or
/// not); a conversation with a larger one is not kept warm.
pub const MAX_BODY: usize = 1024 * 1024;
/// New conversations waiting for a timer at most.
const MAX_PENDING: usize = 4 * MAX_SESSIONS;

/// A real request, as a shadow repeats it.
#[derive(Debug)]
pub struct Shadow {
    /// The upstream URL.
    pub url: String,
    /// Its headers, without credentials.
    pub headers: HeaderMap,
    /// Its body, as the client sent it (`content-encoding` says how).
    pub body: Bytes,
}

/// A conversation kept warm.
struct Session {
    account: Box<str>,
    subagent: bool,
    last_request_at: i64,
    shadow: Arc<Shadow>,
    warms: u64,
    last_warm_at: Option<i64>,
    last_tokens: Option<Tokens>,
    /// Whether a timer runs for it (or is about to).
    scheduled: bool,
}

/// What a conversation's timer should do now.
#[derive(Debug)]
pub enum Next {
    /// Send this shadow on this account.
    Warm {
        account: Box<str>,
        shadow: Arc<Shadow>,
    },
    /// Fire again in this many seconds.
    Wait(i64),
    /// Stop: the conversation is no longer kept warm.
    Stop,
}

/// One conversation, as `cachekeep status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    pub key: String,
    pub account_id: String,
    pub last_request_at: i64,
    pub warms: u64,
    pub last_warm_at: Option<i64>,
    pub last_cached_input_tokens: Option<u64>,
    pub last_input_tokens: Option<u64>,
}

/// `cachekeep status --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub enabled: bool,
    pub subagents: bool,
    pub interval: i64,
    pub idle_cap: i64,
    pub sessions: Vec<SessionView>,
}

/// The conversations kept warm, and the settings in force.
pub struct Keeper {
    /// The settings but `enabled`, which is [`Keeper::on`].
    settings: CacheKeep,
    /// Read for every request of a conversation: no lock.
    on: AtomicBool,
    sessions: Mutex<LruCache<Box<str>, Session>>,
    /// Conversations that need a timer, for the task that runs them.
    pending: Mutex<Vec<Box<str>>>,
    /// Wakes that task.
    pub wake: Notify,
}

impl Keeper {
    pub fn new(settings: CacheKeep) -> Keeper {
        let capacity = NonZeroUsize::new(MAX_SESSIONS).expect("a positive capacity");
        Keeper {
            on: AtomicBool::new(settings.enabled),
            settings,
            sessions: Mutex::new(LruCache::new(capacity)),
            pending: Mutex::new(Vec::new()),
            wake: Notify::new(),
        }
    }

    fn sessions(&self) -> MutexGuard<'_, LruCache<Box<str>, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn settings(&self) -> CacheKeep {
        CacheKeep {
            enabled: self.on.load(Ordering::Relaxed),
            ..self.settings
        }
    }

    /// Whether a conversation of this kind is kept warm now.
    pub fn keeps(&self, subagent: bool) -> bool {
        self.settings().keeps(subagent)
    }

    /// Turns keep-warm on or off; off forgets every conversation.
    pub fn set_enabled(&self, enabled: bool) {
        self.on.store(enabled, Ordering::Relaxed);
        if !enabled {
            self.sessions().clear();
        }
        self.wake.notify_one();
    }

    /// Records a real request of conversation `key`, served by `account`
    /// at `now`: the shadow to repeat from now on.
    pub fn record(&self, key: &str, account: &str, subagent: bool, shadow: Shadow, now: i64) {
        if !self.keeps(subagent) || shadow.body.len() > MAX_BODY {
            return;
        }
        let shadow = Arc::new(shadow);
        let mut sessions = self.sessions();
        let session = match sessions.get_mut(key) {
            Some(session) => session,
            None => {
                let fresh = Session {
                    account: account.into(),
                    subagent,
                    last_request_at: now,
                    shadow: shadow.clone(),
                    warms: 0,
                    last_warm_at: None,
                    last_tokens: None,
                    scheduled: false,
                };
                sessions.put(key.into(), fresh);
                sessions.get_mut(key).expect("just put")
            }
        };
        session.account = account.into();
        session.last_request_at = session.last_request_at.max(now);
        session.shadow = shadow;
        if !session.scheduled {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending.len() < MAX_PENDING {
                pending.push(key.into());
                session.scheduled = true;
                self.wake.notify_one();
            }
        }
    }

    /// Records a real request of conversation `key` at `now` that cannot
    /// be repeated alone (it chains onto an earlier answer): the
    /// conversation is active, and its shadow stays the last whole request.
    pub fn touch(&self, key: &str, now: i64) {
        if let Some(session) = self.sessions().get_mut(key) {
            session.last_request_at = session.last_request_at.max(now);
        }
    }

    /// The conversations that need a timer, and how soon it fires.
    pub fn take_pending(&self) -> Vec<(Box<str>, i64)> {
        let interval = self.settings().interval;
        let keys = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        keys.into_iter().map(|key| (key, interval)).collect()
    }

    /// What the timer of conversation `key` should do at `now`. A warm it
    /// starts counts as activity at once, so no second one overlaps it.
    pub fn next(&self, key: &str, now: i64) -> Next {
        let settings = self.settings();
        let mut sessions = self.sessions();
        let Some(session) = sessions.get_mut(key) else {
            return Next::Stop;
        };
        let cap = settings.cap(session.subagent);
        if !settings.keeps(session.subagent) || now.saturating_sub(session.last_request_at) >= cap {
            sessions.pop(key);
            return Next::Stop;
        }
        let last = session
            .last_warm_at
            .unwrap_or(i64::MIN)
            .max(session.last_request_at);
        let due = last.saturating_add(settings.interval);
        if due > now {
            return Next::Wait(due - now);
        }
        session.last_warm_at = Some(now);
        Next::Warm {
            account: session.account.clone(),
            shadow: session.shadow.clone(),
        }
    }

    /// Records a warm of `key` that the backend answered, with the tokens
    /// it reported (when it reported them before the shadow was closed).
    pub fn warmed(&self, key: &str, tokens: Option<Tokens>) {
        if let Some(session) = self.sessions().peek_mut(key) {
            session.warms = session.warms.saturating_add(1);
            if tokens.is_some() {
                session.last_tokens = tokens;
            }
        }
    }

    /// The settings and the conversations kept warm, most recent first.
    pub fn status(&self) -> Status {
        let settings = self.settings();
        let sessions = self
            .sessions()
            .iter()
            .map(|(key, s)| SessionView {
                key: key.to_string(),
                account_id: s.account.to_string(),
                last_request_at: s.last_request_at,
                warms: s.warms,
                last_warm_at: s.last_warm_at,
                last_cached_input_tokens: s.last_tokens.map(|t| t.cached_input),
                last_input_tokens: s.last_tokens.map(|t| t.input),
            })
            .collect();
        Status {
            enabled: settings.enabled,
            subagents: settings.subagents,
            interval: settings.interval,
            idle_cap: settings.idle_cap,
            sessions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shadow(body: &str) -> Shadow {
        Shadow {
            url: "http://127.0.0.1:9/codex/responses".into(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
        }
    }

    fn keeper(interval: i64, idle_cap: i64) -> Keeper {
        Keeper::new(CacheKeep {
            enabled: true,
            interval,
            idle_cap,
            subagents: false,
        })
    }

    fn warms(next: Next) -> Option<String> {
        match next {
            Next::Warm { account, shadow } => Some(format!(
                "{account}:{}",
                String::from_utf8_lossy(&shadow.body)
            )),
            _ => None,
        }
    }

    #[test]
    fn a_conversation_is_warmed_each_interval_until_the_cap() {
        let keeper = keeper(10, 35);
        keeper.record("c1", "a", false, shadow("one"), 0);
        assert_eq!(keeper.take_pending(), [("c1".into(), 10)]);
        assert!(keeper.take_pending().is_empty(), "one timer");
        assert!(matches!(keeper.next("c1", 4), Next::Wait(6)));
        assert_eq!(warms(keeper.next("c1", 10)).as_deref(), Some("a:one"));
        // The warm under way counts: no second one before the interval.
        assert!(matches!(keeper.next("c1", 10), Next::Wait(10)));
        keeper.warmed("c1", None);
        // A real request brings the latest body, and restarts the wait.
        keeper.record("c1", "a", false, shadow("two"), 13);
        keeper.touch("c1", 15);
        keeper.touch("unknown", 15);
        assert!(keeper.take_pending().is_empty(), "its timer still runs");
        assert!(matches!(keeper.next("c1", 20), Next::Wait(5)));
        assert_eq!(warms(keeper.next("c1", 25)).as_deref(), Some("a:two"));
        assert_eq!(warms(keeper.next("c1", 35)).as_deref(), Some("a:two"));
        assert!(matches!(keeper.next("c1", 50), Next::Stop), "15 + 35");
        assert!(keeper.status().sessions.is_empty());
        assert!(matches!(keeper.next("c1", 51), Next::Stop));
    }

    #[test]
    fn tokens_of_the_last_warm_show_in_the_status() {
        let keeper = keeper(10, 100);
        keeper.record("c1", "a", false, shadow("{}"), 0);
        keeper.next("c1", 10);
        let tokens = Tokens {
            input: 1200,
            cached_input: 1024,
            ..Tokens::default()
        };
        keeper.warmed("c1", Some(tokens));
        keeper.warmed("c1", None);
        let status = keeper.status();
        assert!(status.enabled);
        let view = &status.sessions[0];
        assert_eq!(
            (view.warms, view.last_warm_at, view.last_request_at),
            (2, Some(10), 0)
        );
        assert_eq!(view.last_input_tokens, Some(1200));
        assert_eq!(view.last_cached_input_tokens, Some(1024));
        assert_eq!(view.account_id, "a");
    }

    #[test]
    fn off_subagents_and_large_bodies_are_not_kept() {
        let keeper = keeper(10, 100);
        keeper.record("sub", "a", true, shadow("{}"), 0);
        let large = "x".repeat(MAX_BODY + 1);
        keeper.record("large", "a", false, shadow(&large), 0);
        assert!(keeper.status().sessions.is_empty());
        let fits = "x".repeat(MAX_BODY);
        keeper.record("fits", "a", false, shadow(&fits), 0);
        assert_eq!(keeper.status().sessions.len(), 1);
        keeper.set_enabled(false);
        assert!(keeper.status().sessions.is_empty());
        assert!(matches!(keeper.next("fits", 10), Next::Stop));
        keeper.record("c1", "a", false, shadow("{}"), 0);
        assert!(keeper.status().sessions.is_empty());
    }

    #[test]
    fn subagents_when_asked_are_capped_at_half_an_hour() {
        let keeper = Keeper::new(CacheKeep {
            enabled: true,
            interval: 600,
            idle_cap: 3600,
            subagents: true,
        });
        keeper.record("sub", "a", true, shadow("{}"), 0);
        assert!(warms(keeper.next("sub", 1200)).is_some());
        assert!(matches!(keeper.next("sub", 1800), Next::Stop));
    }

    #[test]
    fn memory_is_bounded_to_the_most_recent_conversations() {
        let keeper = keeper(10, 100);
        for n in 0..MAX_SESSIONS + 5 {
            keeper.record(&format!("c{n}"), "a", false, shadow("{}"), 0);
        }
        let status = keeper.status();
        assert_eq!(status.sessions.len(), MAX_SESSIONS);
        assert!(status.sessions.iter().all(|s| s.key != "c0"));
        assert!(matches!(keeper.next("c0", 10), Next::Stop));
    }
}
