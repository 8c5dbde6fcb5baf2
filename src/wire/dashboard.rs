//! What the dashboard shows, as the JSON its page polls: the accounts with
//! their quota windows and pace, the last 24 hours of usage per account,
//! the last journal events and the current problems with their fixes. It
//! is built from the public account view and never holds a secret.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::engine::journal::Entry;
use crate::engine::pace::Pace;
use crate::engine::quota::{FIVE_HOUR_MINUTES, WEEKLY_MINUTES};
use crate::engine::store::{Account, Store};
use crate::engine::usage::Row;
use crate::wire::proto::{Problem, ProblemCode};
use crate::wire::view::AccountView;

/// Hours the usage chart spans.
pub const CHART_HOURS: usize = 24;
/// Journal events shown, newest first.
pub const JOURNAL_EVENTS: usize = 15;

#[derive(Debug, Serialize)]
pub struct Dashboard<'a> {
    /// Unix seconds, so that the page counts down from the daemon's clock.
    pub now: i64,
    pub version: &'static str,
    pub accounts: Vec<AccountPanel<'a>>,
    pub usage: Chart,
    pub journal: Vec<Event>,
    pub problems: Vec<ProblemView>,
}

#[derive(Debug, Serialize)]
pub struct AccountPanel<'a> {
    #[serde(flatten)]
    pub account: AccountView<'a>,
    /// The label, or the id when it has none.
    pub name: &'a str,
    pub windows: Vec<WindowPanel>,
}

/// One quota window as it stands now.
#[derive(Debug, Serialize)]
pub struct WindowPanel {
    /// `5-hour` or `weekly`.
    pub name: &'static str,
    pub used_percent: f64,
    /// Unix seconds; at the latest, when the backend named no time.
    pub resets_at: i64,
    /// Whether the backend named the reset time.
    pub reset_known: bool,
    pub window_minutes: i64,
    pub pace: Option<Pace>,
}

/// Requests and tokens per hour and account; `hours[i]` starts the hour
/// of every series' `i`-th number.
#[derive(Debug, Serialize)]
pub struct Chart {
    pub hours: Vec<i64>,
    pub series: Vec<Series>,
}

#[derive(Debug, Serialize)]
pub struct Series {
    pub account_id: String,
    pub requests: Vec<u64>,
    /// Input and output tokens.
    pub tokens: Vec<u64>,
}

/// A journal line as the page shows it.
#[derive(Debug, Serialize)]
pub struct Event {
    pub time: String,
    pub account: String,
    pub event: String,
    pub by: String,
}

#[derive(Debug, Serialize)]
pub struct ProblemView {
    #[serde(flatten)]
    pub problem: Problem,
    pub fix: &'static str,
}

impl<'a> Dashboard<'a> {
    pub fn new(
        store: &'a Store,
        usage: &[Row],
        journal: &[Entry],
        problems: Vec<Problem>,
        now: i64,
    ) -> Dashboard<'a> {
        Dashboard {
            now,
            version: env!("CARGO_PKG_VERSION"),
            accounts: store
                .accounts
                .iter()
                .map(|a| AccountPanel {
                    account: AccountView::new(store, a),
                    name: a.name(),
                    windows: windows(a, now),
                })
                .collect(),
            usage: Chart::new(usage, now),
            journal: journal
                .iter()
                .rev()
                .take(JOURNAL_EVENTS)
                .map(|e| Event {
                    time: e.time.clone(),
                    account: e.account.clone(),
                    event: e.describe(),
                    by: e.by.clone(),
                })
                .collect(),
            problems: problems
                .into_iter()
                .map(|problem| ProblemView {
                    fix: fix(problem.code),
                    problem,
                })
                .collect(),
        }
    }
}

fn windows(account: &Account, now: i64) -> Vec<WindowPanel> {
    let Some(quota) = &account.quota else {
        return Vec::new();
    };
    let raw = [quota.five_hour.as_ref(), quota.weekly.as_ref()];
    let usual = [FIVE_HOUR_MINUTES, WEEKLY_MINUTES];
    quota
        .standing(now)
        .into_iter()
        .zip(raw.into_iter().zip(usual))
        .filter_map(|((name, standing), (window, usual))| {
            let standing = standing?;
            let minutes = window.and_then(|w| w.window_minutes).unwrap_or(usual);
            // Without the backend's reset time, where the window started is
            // a guess: no pace is told from it.
            let known = window.and_then(|w| w.resets_at);
            let pace = known.and_then(|at| Pace::of(standing.used_percent, minutes, at, now));
            Some(WindowPanel {
                name,
                used_percent: standing.used_percent,
                resets_at: standing.resets_by,
                reset_known: known.is_some(),
                window_minutes: minutes,
                pace,
            })
        })
        .collect()
}

impl Chart {
    /// The [`CHART_HOURS`] hours up to the one holding `now`.
    fn new(rows: &[Row], now: i64) -> Chart {
        let current = now - now.rem_euclid(3600);
        let first = current - 3600 * (CHART_HOURS as i64 - 1);
        let hours: Vec<i64> = (0..CHART_HOURS as i64).map(|i| first + 3600 * i).collect();
        let mut by_account: BTreeMap<&str, Series> = BTreeMap::new();
        for row in rows {
            let Some(slot) = usize::try_from((row.hour - first) / 3600)
                .ok()
                .filter(|i| row.hour >= first && *i < CHART_HOURS)
            else {
                continue;
            };
            let t = &row.total;
            let series = by_account.entry(&t.account).or_insert_with(|| Series {
                account_id: t.account.clone(),
                requests: vec![0; CHART_HOURS],
                tokens: vec![0; CHART_HOURS],
            });
            series.requests[slot] += t.counts.requests;
            let tokens = t.counts.tokens.input.saturating_add(t.counts.tokens.output);
            series.tokens[slot] = series.tokens[slot].saturating_add(tokens);
        }
        Chart {
            hours,
            series: by_account.into_values().collect(),
        }
    }
}

/// What a person does about a problem.
pub fn fix(code: ProblemCode) -> &'static str {
    match code {
        ProblemCode::NeedsLogin => "log in again: codex-broker login",
        ProblemCode::RefreshInterrupted => {
            "nothing yet: the token is served while valid; if the issuer refuses it later, log \
             in again with codex-broker login"
        }
        ProblemCode::RefreshBackoff => {
            "nothing: the broker retries by itself; if it lasts, check that this machine \
             reaches auth.openai.com"
        }
        ProblemCode::RotationUnsaved => {
            "free disk space or make the broker home writable: the new tokens live in memory \
             until they are saved"
        }
        ProblemCode::AuthJsonInvalid => {
            "repair or remove ~/.codex/auth.json; the broker writes it again on the next refresh"
        }
        ProblemCode::AuthJsonUntrusted => {
            "make the Codex home and auth.json yours and not writable by others (chown, chmod 600)"
        }
        ProblemCode::StoreInvalid => {
            "restore the account store from its backup, or import the accounts again"
        }
        ProblemCode::CodexKeyring => {
            "set cli_auth_credentials_store = \"file\" in Codex's config.toml"
        }
        ProblemCode::LeaderUnreachable => {
            "check the socket forward to the leader (ssh -R ...) and that the leader's daemon runs"
        }
        ProblemCode::DaemonUnreachable => "start the daemon: codex-broker serve",
        ProblemCode::Unknown => "see codex-broker status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::usage::{Counts, Total};
    use crate::wire::usage::Tokens;

    const NOW: i64 = 2_000_000_000;

    fn row(hour: i64, account: &str, requests: u64) -> Row {
        Row {
            hour,
            total: Total {
                account: account.into(),
                client: "codex_cli_rs".into(),
                model: "m".into(),
                counts: Counts {
                    requests,
                    errors: 0,
                    tokens: Tokens {
                        input: 10 * requests,
                        cached_input: 0,
                        output: requests,
                        reasoning: 0,
                    },
                },
            },
        }
    }

    #[test]
    fn the_chart_spans_the_last_24_hours_per_account() {
        let current = NOW - NOW.rem_euclid(3600);
        let rows = [
            row(current, "acc-1", 2),
            row(current, "acc-1", 3),
            row(current - 3600 * 23, "acc-2", 1),
            row(current - 3600 * 24, "acc-2", 100),
            row(current + 3600, "acc-2", 100),
        ];
        let chart = Chart::new(&rows, NOW);
        assert_eq!(chart.hours.len(), CHART_HOURS);
        assert_eq!(chart.hours[CHART_HOURS - 1], current);
        let ids: Vec<&str> = chart.series.iter().map(|s| s.account_id.as_str()).collect();
        assert_eq!(ids, ["acc-1", "acc-2"]);
        assert_eq!(chart.series[0].requests[CHART_HOURS - 1], 5);
        assert_eq!(chart.series[0].tokens[CHART_HOURS - 1], 55);
        assert_eq!(chart.series[1].requests[0], 1);
        assert_eq!(chart.series[1].requests.iter().sum::<u64>(), 1);
    }

    #[test]
    fn a_window_has_a_pace_only_when_the_backend_named_its_reset() {
        use crate::engine::quota::{Quota, Source, Window};
        let mut account = crate::engine::store::test_account(None, NOW);
        let window = |resets_at| Window {
            used_percent: 12.0,
            window_minutes: None,
            resets_at,
        };
        account.quota = Some(Quota {
            five_hour: Some(window(Some(NOW + 3600))),
            weekly: Some(window(None)),
            source: Source::Headers,
            observed_at: NOW - 60,
            plan_type: None,
            extra: Default::default(),
        });
        let [five_hour, weekly] = <[WindowPanel; 2]>::try_from(windows(&account, NOW)).unwrap();
        assert_eq!((five_hour.name, five_hour.window_minutes), ("5-hour", 300));
        let pace = five_hour.pace.unwrap();
        assert!((pace.elapsed_percent - 80.0).abs() < 1e-9, "{pace:?}");
        assert_eq!(
            (weekly.name, weekly.window_minutes),
            ("weekly", WEEKLY_MINUTES)
        );
        assert_eq!(weekly.resets_at, NOW - 60 + WEEKLY_MINUTES * 60);
        assert!(weekly.pace.is_none() && !weekly.reset_known && five_hour.reset_known);
    }

    #[test]
    fn every_problem_has_a_fix() {
        let codes = [
            ProblemCode::AuthJsonInvalid,
            ProblemCode::AuthJsonUntrusted,
            ProblemCode::NeedsLogin,
            ProblemCode::RefreshBackoff,
            ProblemCode::StoreInvalid,
            ProblemCode::RotationUnsaved,
            ProblemCode::RefreshInterrupted,
            ProblemCode::DaemonUnreachable,
            ProblemCode::CodexKeyring,
            ProblemCode::LeaderUnreachable,
            ProblemCode::Unknown,
        ];
        for code in codes {
            assert!(fix(code).len() > 10, "{code:?}");
        }
    }
}
