//! Token usage per hour, account, client and model, summed from the answers
//! the forwarder relays and kept for [`KEEP_SECS`] in `<home>/usage.json`
//! (0600, replaced atomically). Requests only touch memory; the daemon
//! saves what changed every few seconds and once more when it stops. No
//! prompt text and no credential is ever part of it: a row is names and
//! numbers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::base::fsutil::{self, FsError};
use crate::wire::usage::Tokens;

/// How long usage is kept: 31 days, so that 30 whole days always are.
pub const KEEP_SECS: i64 = 31 * 86_400;
/// The most rows kept; past it, new clients and models of an hour are
/// summed as `other`.
const MAX_ROWS: usize = 200_000;
/// The largest usage file read.
const MAX_FILE: u64 = 64 * 1024 * 1024;
const VERSION: u32 = 1;
const OTHER: &str = "other";

/// Which row a request counts in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    hour: i64,
    account: String,
    client: String,
    model: String,
}

/// What one row sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    #[serde(flatten)]
    pub tokens: Tokens,
}

/// One hour of one account, client and model, as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// The hour's start, unix seconds.
    pub hour: i64,
    #[serde(flatten)]
    pub total: Total,
}

/// The sums of one account, client and model over a span of hours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Total {
    #[serde(rename = "account_id")]
    pub account: String,
    pub client: String,
    pub model: String,
    #[serde(flatten)]
    pub counts: Counts,
}

/// Orders `totals` by requests, the most first.
pub fn busiest_first(totals: &mut [Total]) {
    totals.sort_by_key(|t| std::cmp::Reverse(t.counts.requests));
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.tokens.add(&other.tokens);
    }
}

#[derive(Serialize, Deserialize)]
struct UsageFile {
    version: u32,
    rows: Vec<Row>,
}

/// One answer, as the forwarder saw it end.
#[derive(Debug, Clone)]
pub struct Answered<'a> {
    pub account: &'a str,
    pub client: &'a str,
    /// The model the response names, where it named one.
    pub model: Option<&'a str>,
    /// The tokens of a completed response; `None` for an answer that did
    /// not complete (an error, a stream cut off).
    pub tokens: Option<Tokens>,
}

/// The usage table, in memory and in its file.
pub struct Usage {
    path: PathBuf,
    rows: Mutex<BTreeMap<Key, Counts>>,
    dirty: AtomicBool,
}

impl Usage {
    /// The table saved at `path`. A file that cannot be read as one is
    /// moved aside (`usage.json.unreadable`), never overwritten, and the
    /// table starts empty.
    pub fn open(path: PathBuf) -> Usage {
        let rows = match read(&path) {
            Ok(rows) => rows,
            Err(why) => {
                let aside = path.with_extension("json.unreadable");
                tracing::warn!(
                    "{}: {why}; moved to {} and counting afresh",
                    path.display(),
                    aside.display()
                );
                let _ = std::fs::rename(&path, &aside);
                BTreeMap::new()
            }
        };
        Usage {
            path,
            rows: Mutex::new(rows),
            dirty: AtomicBool::new(false),
        }
    }

    /// Counts one answer in the hour of `now`.
    pub fn record(&self, answered: &Answered<'_>, now: i64) {
        let mut rows = self.rows.lock().expect("usage lock");
        let mut key = Key {
            hour: now - now.rem_euclid(3600),
            account: answered.account.to_owned(),
            client: answered.client.to_owned(),
            model: answered.model.unwrap_or("unknown").to_owned(),
        };
        if rows.len() >= MAX_ROWS && !rows.contains_key(&key) {
            key.client = OTHER.into();
            key.model = OTHER.into();
        }
        let counts = rows.entry(key).or_default();
        counts.requests = counts.requests.saturating_add(1);
        match &answered.tokens {
            Some(tokens) => counts.tokens.add(tokens),
            None => counts.errors = counts.errors.saturating_add(1),
        }
        self.dirty.store(true, Ordering::Release);
    }

    /// The rows of the hours from `since` on, oldest first.
    pub fn rows(&self, since: i64) -> Vec<Row> {
        let from = since - since.rem_euclid(3600);
        let rows = self.rows.lock().expect("usage lock");
        rows.iter()
            .filter(|(key, _)| key.hour >= from)
            .map(|(key, counts)| Row {
                hour: key.hour,
                total: Total {
                    account: key.account.clone(),
                    client: key.client.clone(),
                    model: key.model.clone(),
                    counts: *counts,
                },
            })
            .collect()
    }

    /// The sums per account, client and model over the hours from `since`
    /// on (rows without an hour), busiest first.
    pub fn totals(&self, since: i64) -> Vec<Total> {
        let mut sums: BTreeMap<(String, String, String), Counts> = BTreeMap::new();
        for Row { total: t, .. } in self.rows(since) {
            let sum = sums.entry((t.account, t.client, t.model)).or_default();
            sum.add(&t.counts);
        }
        let mut totals: Vec<Total> = sums
            .into_iter()
            .map(|((account, client, model), counts)| Total {
                account,
                client,
                model,
                counts,
            })
            .collect();
        busiest_first(&mut totals);
        totals
    }

    /// Saves the table if it changed since the last save, without the
    /// hours older than [`KEEP_SECS`] before `now`.
    pub fn save(&self, now: i64) -> Result<(), FsError> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let since = now - KEEP_SECS;
        self.rows
            .lock()
            .expect("usage lock")
            .retain(|key, _| key.hour >= since);
        let file = UsageFile {
            version: VERSION,
            rows: self.rows(since),
        };
        let bytes = serde_json::to_vec(&file).expect("usage serializes");
        fsutil::write_atomic(&self.path, &bytes).inspect_err(|_| {
            self.dirty.store(true, Ordering::Release);
        })
    }
}

/// The rows saved at `path` (none when there is no file yet).
fn read(path: &Path) -> Result<BTreeMap<Key, Counts>, String> {
    let Some((mut file, meta)) =
        fsutil::open_regular(path, nix::libc::O_NOFOLLOW).map_err(|e| e.to_string())?
    else {
        return Ok(BTreeMap::new());
    };
    if meta.len() > MAX_FILE {
        return Err(format!("larger than {MAX_FILE} bytes"));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(|e| e.to_string())?;
    let file: UsageFile = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if file.version > VERSION {
        return Err(format!(
            "version {} is newer than this broker's",
            file.version
        ));
    }
    let named = |s: &str| crate::wire::usage::name(s).is_some();
    Ok(file
        .rows
        .into_iter()
        .filter(|r| named(&r.total.account) && named(&r.total.client) && named(&r.total.model))
        .filter(|r| r.hour.rem_euclid(3600) == 0 && crate::wire::jwt::plausible_time(r.hour))
        .take(MAX_ROWS)
        .map(|Row { hour, total: t }| {
            let key = Key {
                hour,
                account: t.account,
                client: t.client,
                model: t.model,
            };
            (key, t.counts)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn answered<'a>(client: &'a str, tokens: Option<Tokens>) -> Answered<'a> {
        Answered {
            account: "acc-1",
            client,
            model: Some("gpt-x"),
            tokens,
        }
    }

    fn tokens(n: u64) -> Tokens {
        Tokens {
            input: n,
            cached_input: n / 2,
            output: n / 4,
            reasoning: n / 8,
        }
    }

    #[test]
    fn answers_sum_per_hour_and_survive_a_save_and_a_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.json");
        let usage = Usage::open(path.clone());
        usage.record(&answered("codex_cli_rs", Some(tokens(800))), NOW);
        usage.record(&answered("codex_cli_rs", Some(tokens(800))), NOW + 1);
        usage.record(&answered("codex_cli_rs", None), NOW + 3600);
        usage.record(
            &answered("opencode", Some(tokens(8))),
            NOW - KEEP_SECS - 3600,
        );
        let rows = usage.rows(NOW - 7200);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].hour, NOW - NOW % 3600);
        assert_eq!(rows[0].total.counts.requests, 2);
        assert_eq!(rows[0].total.counts.tokens, tokens(1600));
        assert_eq!(
            (rows[1].total.counts.requests, rows[1].total.counts.errors),
            (1, 1)
        );
        let totals = usage.totals(NOW - 7200);
        assert_eq!(totals.len(), 1);
        assert_eq!(totals[0].counts.requests, 3);

        // Saved without the hours past keeping; loaded back the same.
        usage.save(NOW + 3600).unwrap();
        let again = Usage::open(path.clone());
        assert_eq!(again.rows(0), usage.rows(0));
        assert!(
            again
                .rows(0)
                .iter()
                .all(|r| r.total.client == "codex_cli_rs")
        );
        // Nothing changed: nothing is written.
        std::fs::remove_file(&path).unwrap();
        again.save(NOW + 3600).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn hostile_rows_are_dropped_and_the_table_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.json");
        let good = serde_json::json!({"hour": NOW - NOW % 3600, "account_id": "acc-1",
            "client": "c", "model": "m", "requests": 1, "errors": 0, "input_tokens": 5,
            "cached_input_tokens": 0, "output_tokens": 1, "reasoning_tokens": 0});
        let mut bad_name = good.clone();
        bad_name["client"] = serde_json::json!("<script>");
        let mut odd_hour = good.clone();
        odd_hour["hour"] = serde_json::json!(NOW + 7);
        let file = serde_json::json!({"version": 1, "rows": [good, bad_name, odd_hour]});
        std::fs::write(&path, file.to_string()).unwrap();
        let usage = Usage::open(path);
        let rows = usage.rows(0);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].total.counts.tokens.input, 5);

        let usage = Usage::open(dir.path().join("other.json"));
        for i in 0..MAX_ROWS + 10 {
            let client = format!("c{i}");
            usage.record(&answered(&client, Some(tokens(1))), NOW);
        }
        let rows = usage.rows(0);
        assert_eq!(rows.len(), MAX_ROWS + 1);
        let other = rows.iter().find(|r| r.total.client == OTHER).unwrap();
        assert_eq!(other.total.counts.requests, 10);
    }
}
