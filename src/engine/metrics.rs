//! The daemon's Prometheus metrics: counters kept as things happen, and
//! the accounts' state read from the store at each scrape. Every label
//! value is an account id or a name from a fixed set: never an email, a
//! label the user typed, a path a client sent or a secret.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::engine::store::{Account, State};
use crate::wire::usage::Tokens;

/// The `Content-Type` of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every state an account can be in, so that each has a sample, zero or not.
const STATES: [State; 4] = [
    State::Ok,
    State::RefreshBackoff,
    State::RefreshInterrupted,
    State::NeedsLogin,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByAccount {
    account: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByResult {
    account: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByRequest {
    account: String,
    route: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByKind {
    account: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByRoute {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByWindow {
    account: String,
    window: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByState {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByVersion {
    version: &'static str,
}

/// How a refresh ended, as `codex_broker_refreshes_total` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshResult {
    /// The issuer rotated the token.
    Rotated,
    /// The issuer refused it: the account needs a login.
    Rejected,
    /// A passing failure; the token is still good.
    Transient,
    /// The answer was lost.
    Interrupted,
}

impl RefreshResult {
    fn as_str(self) -> &'static str {
        match self {
            RefreshResult::Rotated => "rotated",
            RefreshResult::Rejected => "rejected",
            RefreshResult::Transient => "transient",
            RefreshResult::Interrupted => "interrupted",
        }
    }
}

fn upstream_histogram() -> Histogram {
    // 10 ms to about 80 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// The counters; clones share them.
#[derive(Clone)]
pub struct Metrics {
    refreshes: Family<ByResult, Counter>,
    requests: Family<ByRequest, Counter>,
    fallbacks: Family<ByAccount, Counter>,
    tokens: Family<ByKind, Counter>,
    upstream: Family<ByRoute, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            refreshes: Family::default(),
            requests: Family::default(),
            fallbacks: Family::default(),
            tokens: Family::default(),
            upstream: Family::new_with_constructor(upstream_histogram),
        }
    }
}

impl Metrics {
    /// A refresh of `account` ended with `result`.
    pub fn refreshed(&self, account: &str, result: RefreshResult) {
        let labels = ByResult {
            account: account.to_owned(),
            result: result.as_str(),
        };
        self.refreshes.get_or_create(&labels).inc();
    }

    /// The forwarder answered a request on `route` with `code`, on
    /// `account` (empty when no account served it).
    pub fn answered(&self, account: &str, route: &'static str, code: u16) {
        let labels = ByRequest {
            account: account.to_owned(),
            route,
            code,
        };
        self.requests.get_or_create(&labels).inc();
    }

    /// The upstream's answer head on `route` came after `waited`.
    pub fn upstream(&self, route: &'static str, waited: Duration) {
        self.upstream
            .get_or_create(&ByRoute { route })
            .observe(waited.as_secs_f64());
    }

    /// A request moved from `account`, which refused it, to another.
    pub fn fell_back(&self, account: &str) {
        let labels = ByAccount {
            account: account.to_owned(),
        };
        self.fallbacks.get_or_create(&labels).inc();
    }

    /// An answer on `account` used `tokens`.
    pub fn used(&self, account: &str, tokens: &Tokens) {
        for (kind, n) in [
            ("input", tokens.input),
            ("cached_input", tokens.cached_input),
            ("output", tokens.output),
            ("reasoning", tokens.reasoning),
        ] {
            let labels = ByKind {
                account: account.to_owned(),
                kind,
            };
            self.tokens.get_or_create(&labels).inc_by(n);
        }
    }

    /// The text exposition: the counters, and `accounts` as they stand at
    /// `now` (unix seconds).
    pub fn encode(&self, accounts: &[Account], now: i64) -> String {
        let mut registry = Registry::with_prefix("codex_broker");
        let build = Family::<ByVersion, Gauge>::default();
        build
            .get_or_create(&ByVersion {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running version", build);
        registry.register(
            "accounts",
            "Accounts in the store by state",
            states(accounts),
        );
        let (expiry, used, resets) = standing(accounts, now);
        registry.register_with_unit(
            "token_expires_at",
            "When the account's access token expires, unix time",
            Unit::Seconds,
            expiry,
        );
        registry.register(
            "quota_used_percent",
            "Share of the quota window used, as last seen (0 once it reset)",
            used,
        );
        registry.register_with_unit(
            "quota_resets_at",
            "When the quota window resets, unix time (at the latest)",
            Unit::Seconds,
            resets,
        );
        self.register_counters(&mut registry);
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).expect("writing to a String never fails");
        text
    }

    fn register_counters(&self, registry: &mut Registry) {
        registry.register(
            "refreshes",
            "Refreshes by how they ended: rotated, rejected, transient, interrupted",
            self.refreshes.clone(),
        );
        registry.register(
            "requests",
            "Forwarder answers by account, route and status code",
            self.requests.clone(),
        );
        registry.register(
            "fallbacks",
            "Requests moved from this account to another after it refused them",
            self.fallbacks.clone(),
        );
        registry.register(
            "tokens",
            "Tokens used by forwarded answers, by kind",
            self.tokens.clone(),
        );
        registry.register_with_unit(
            "upstream",
            "Time from sending a request upstream to its answer head",
            Unit::Seconds,
            self.upstream.clone(),
        );
    }
}

fn states(accounts: &[Account]) -> Family<ByState, Gauge> {
    let family = Family::<ByState, Gauge>::default();
    for state in STATES {
        let n = accounts.iter().filter(|a| a.state == state).count();
        let labels = ByState {
            state: state.to_string(),
        };
        family
            .get_or_create(&labels)
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    family
}

type Gauges = Family<ByAccount, Gauge>;
type WindowGauges<V = i64, A = std::sync::atomic::AtomicI64> = Family<ByWindow, Gauge<V, A>>;

/// Each account's token expiry, and its windows' used share and reset.
fn standing(
    accounts: &[Account],
    now: i64,
) -> (
    Gauges,
    WindowGauges<f64, std::sync::atomic::AtomicU64>,
    WindowGauges,
) {
    let (expiry, used, resets) = <(Gauges, WindowGauges<f64, _>, WindowGauges)>::default();
    for a in accounts {
        if let Some(at) = a.expires_at {
            let labels = ByAccount {
                account: a.id.clone(),
            };
            expiry.get_or_create(&labels).set(at);
        }
        let windows = a.quota.as_ref().map(|q| q.standing(now));
        for (window, standing) in windows.into_iter().flatten() {
            let Some(standing) = standing else { continue };
            let labels = ByWindow {
                account: a.id.clone(),
                window: if window == "weekly" { "weekly" } else { "5h" },
            };
            used.get_or_create(&labels).set(standing.used_percent);
            resets.get_or_create(&labels).set(standing.resets_by);
        }
    }
    (expiry, used, resets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::quota::{Quota, Source, Window};
    use crate::engine::store::test_account;

    fn account(id: &str, state: State) -> Account {
        let mut a = test_account(Some(2_000_000_000), 1_999_990_000);
        a.id = id.to_owned();
        a.state = state;
        a.email = Some("person@example.com".into());
        a.label = Some("my secret label".into());
        a
    }

    #[test]
    fn the_store_and_the_counters_are_exposed_under_the_contract_names() {
        let metrics = Metrics::default();
        metrics.refreshed("acc-1", RefreshResult::Rotated);
        metrics.answered("acc-1", "codex", 200);
        metrics.answered("acc-1", "codex", 200);
        metrics.fell_back("acc-2");
        metrics.upstream("codex", Duration::from_millis(30));
        let tokens = Tokens {
            input: 1200,
            cached_input: 1024,
            output: 300,
            reasoning: 128,
        };
        metrics.used("acc-1", &tokens);
        let mut one = account("acc-1", State::Ok);
        one.quota = Some(Quota {
            five_hour: Some(Window {
                used_percent: 42.5,
                window_minutes: Some(300),
                resets_at: Some(2_000_003_600),
            }),
            weekly: None,
            source: Source::Headers,
            observed_at: 2_000_000_000,
            plan_type: None,
            extra: Default::default(),
        });
        let two = account("acc-2", State::NeedsLogin);
        let text = metrics.encode(&[one, two], 2_000_000_100);
        for line in [
            "codex_broker_build_info{version=\"",
            "codex_broker_accounts{state=\"ok\"} 1\n",
            "codex_broker_accounts{state=\"needs_login\"} 1\n",
            "codex_broker_accounts{state=\"refresh_backoff\"} 0\n",
            "codex_broker_token_expires_at_seconds{account=\"acc-1\"} 2000000000\n",
            "codex_broker_quota_used_percent{account=\"acc-1\",window=\"5h\"} 42.5\n",
            "codex_broker_quota_resets_at_seconds{account=\"acc-1\",window=\"5h\"} 2000003600\n",
            "codex_broker_refreshes_total{account=\"acc-1\",result=\"rotated\"} 1\n",
            "codex_broker_requests_total{account=\"acc-1\",route=\"codex\",code=\"200\"} 2\n",
            "codex_broker_fallbacks_total{account=\"acc-2\"} 1\n",
            "codex_broker_tokens_total{account=\"acc-1\",kind=\"cached_input\"} 1024\n",
            "codex_broker_upstream_seconds_bucket{route=\"codex\",le=\"0.04\"} 1\n",
            "# TYPE codex_broker_upstream_seconds histogram\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        for private in ["person@example.com", "my secret label"] {
            assert!(!text.contains(private), "{private} in:\n{text}");
        }
    }

    #[test]
    fn a_window_that_has_reset_reads_zero() {
        let mut a = account("acc-1", State::Ok);
        a.quota = Some(Quota {
            five_hour: None,
            weekly: Some(Window {
                used_percent: 100.0,
                window_minutes: None,
                resets_at: Some(2_000_000_050),
            }),
            source: Source::Headers,
            observed_at: 2_000_000_000,
            plan_type: None,
            extra: Default::default(),
        });
        let text = Metrics::default().encode(&[a], 2_000_000_100);
        assert!(
            text.contains("codex_broker_quota_used_percent{account=\"acc-1\",window=\"weekly\"} 0"),
            "{text}"
        );
    }
}
