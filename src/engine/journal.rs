//! The refresh journal, `<home>/journal.jsonl`: one JSON object a line,
//! appended and fsynced, recording every refresh (before its request is
//! sent and after its answer), every adoption of tokens from auth.json,
//! every login, import and removal. It answers "who spent my refresh
//! token?". Refresh tokens appear only as short SHA-256 fingerprints.
//!
//! The file is bounded: past [`ROTATE_AT`] bytes it becomes
//! `journal.jsonl.1` (replacing the older one) and a new file starts.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::base::fsutil::{self, FsError};
use crate::codex::auth::format_timestamp;

pub const JOURNAL_FILE: &str = "journal.jsonl";
const JOURNAL_LOCK: &str = "journal.lock";
/// The journal moves aside once it is this large.
pub const ROTATE_AT: u64 = 512 * 1024;
/// Lines longer than this are not the journal's and are skipped on reading.
const MAX_LINE: usize = 16 * 1024;
/// A refresh still without an outcome this long after it started cannot be
/// running any more: the issuer call times out well before.
const IN_FLIGHT_AT_MOST: i64 = 300;
/// How many hex digits of a token's SHA-256 the journal shows.
const FINGERPRINT_DIGITS: usize = 12;

/// A token's short fingerprint: the first hex digits of its SHA-256.
pub fn short_fingerprint(token: &str) -> String {
    let mut print = crate::engine::store::fingerprint(token);
    print.truncate(FINGERPRINT_DIGITS);
    print
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A refresh request is about to be sent, spending `spent`.
    InFlight,
    /// The issuer rotated `spent` into `new`.
    Rotated,
    /// The issuer rejected `spent` (`code`): the account needs a login.
    Rejected,
    /// The refresh failed for a passing reason; `spent` is still good.
    Transient,
    /// The refresh was sent and its answer lost (`reason`): the issuer may
    /// have rotated `spent`, which then needs a login.
    RefreshInterrupted,
    /// New tokens found in auth.json were taken into the store.
    Adopted,
    /// A login added or renewed the account.
    Login,
    /// `import` added or updated the account.
    Import,
    /// `accounts remove` deleted the account.
    Removed,
    /// A notice (`code`: its event, `reason`: its message) went out.
    Notified,
}

impl Event {
    fn describe(self) -> &'static str {
        match self {
            Event::InFlight => "refresh sent",
            Event::Rotated => "rotated",
            Event::Rejected => "rejected",
            Event::Transient => "refresh failed",
            Event::RefreshInterrupted => "refresh interrupted (its answer was lost)",
            Event::Adopted => "adopted from auth.json",
            Event::Login => "login",
            Event::Import => "import",
            Event::Removed => "removed",
            Event::Notified => "notified",
        }
    }

    /// Whether this event settles what an interrupted refresh left open.
    fn settles(self) -> bool {
        !matches!(
            self,
            Event::InFlight | Event::Transient | Event::RefreshInterrupted | Event::Notified
        )
    }
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// RFC 3339, UTC.
    pub time: String,
    pub account: String,
    pub event: Event,
    /// Who caused it: `scheduler`, `socket client (UA)`, `forwarder client
    /// (UA)`, `command token`, `auth.json`, ...
    pub by: String,
    pub pid: u32,
    /// The refresh this record belongs to (`in_flight` and its outcome).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flight: Option<String>,
    /// Fingerprint of the refresh token spent or replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent: Option<String>,
    /// Fingerprint of the refresh token that took its place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
    /// The issuer's error code, for `rejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Why, in words, for `transient` and a few others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The interrupted refreshes (flight ids) whose consequence this
    /// record shows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_interrupted: Vec<String>,
}

impl Entry {
    /// A record of `event` for `account`, now, by this process.
    pub fn new(account: &str, event: Event, by: &str) -> Entry {
        Entry {
            time: format_timestamp(OffsetDateTime::now_utc()),
            account: account.to_owned(),
            event,
            by: by.to_owned(),
            pid: std::process::id(),
            flight: None,
            spent: None,
            new: None,
            code: None,
            reason: None,
            after_interrupted: Vec::new(),
        }
    }

    pub fn spent(mut self, token: &str) -> Entry {
        self.spent = Some(short_fingerprint(token));
        self
    }

    /// With the fingerprints of the refresh token replaced and of the one
    /// that took its place, where there are such.
    pub fn replacing(mut self, old: Option<&str>, new: Option<&str>) -> Entry {
        self.spent = old.map(short_fingerprint);
        self.new = new.map(short_fingerprint);
        self
    }

    pub fn unix_time(&self) -> Option<i64> {
        OffsetDateTime::parse(&self.time, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(OffsetDateTime::unix_timestamp)
    }

    /// One line for people: what happened, who did it, which tokens.
    pub fn describe(&self) -> String {
        let mut text = self.event.describe().to_owned();
        match (&self.spent, &self.new) {
            (Some(old), Some(new)) => text.push_str(&format!(" {old} -> {new}")),
            (Some(old), None) => text.push_str(&format!(" {old}")),
            (None, Some(new)) => text.push_str(&format!(" {new}")),
            (None, None) => {}
        }
        if let Some(code) = &self.code {
            text.push_str(&format!(" ({code})"));
        }
        if let Some(reason) = &self.reason {
            text.push_str(&format!(": {reason}"));
        }
        if !self.after_interrupted.is_empty() {
            text.push_str(" [after an interrupted refresh]");
        }
        text
    }
}

/// A refresh whose request may have been sent but whose outcome is not
/// known: its process died (SIGKILL, power loss) in between, or its answer
/// was lost (`lost` says how).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interrupted {
    pub account: String,
    pub flight: String,
    pub pid: u32,
    pub by: String,
    pub time: String,
    pub spent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<String>,
}

impl Interrupted {
    /// What `status` and `/v1/health` say about it.
    pub fn message(&self) -> String {
        let how = match &self.lost {
            Some(reason) => format!("lost its answer at {} ({reason})", self.time),
            None => format!("was interrupted at {}", self.time),
        };
        format!(
            "a refresh of {} by pid {} ({}) {how}; if the issuer rotated its refresh token, the \
             next refresh needs a login (run: codex-broker login)",
            self.account, self.pid, self.by
        )
    }
}

/// The journal of one broker home.
#[derive(Debug, Clone)]
pub struct Journal {
    home: PathBuf,
}

static FLIGHTS: AtomicU64 = AtomicU64::new(0);

/// A new flight id, unique across processes: pid, a counter, randomness.
pub fn new_flight() -> String {
    let mut random = [0u8; 3];
    let _ = getrandom::fill(&mut random);
    format!(
        "{}-{}-{:02x}{:02x}{:02x}",
        std::process::id(),
        FLIGHTS.fetch_add(1, Ordering::Relaxed) + 1,
        random[0],
        random[1],
        random[2]
    )
}

impl Journal {
    pub fn new(home: impl Into<PathBuf>) -> Journal {
        Journal { home: home.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.home.join(JOURNAL_FILE)
    }

    fn rotated_path(&self) -> PathBuf {
        self.home.join(format!("{JOURNAL_FILE}.1"))
    }

    /// Appends `entry` and fsyncs it. The journal serves people; a failure
    /// to write it is logged by the caller and never stops a refresh.
    pub fn append(&self, entry: &Entry) -> Result<(), FsError> {
        fsutil::ensure_private_dir(&self.home)?;
        let _lock = fsutil::lock_exclusive(&self.home.join(JOURNAL_LOCK))?;
        let path = self.path();
        if fs::metadata(&path).is_ok_and(|m| m.len() >= ROTATE_AT) {
            fs::rename(&path, self.rotated_path())
                .map_err(|e| FsError::new("cannot rotate", &path, e))?;
        }
        let mut line = serde_json::to_vec(entry).expect("an entry always serializes");
        line.push(b'\n');
        // Never blocks on a FIFO (no reader: ENXIO at once) or a device, and
        // writes only to a regular file.
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
            .open(&path)
            .map_err(|e| FsError::new("cannot open", &path, e))?;
        let regular = file.metadata().is_ok_and(|m| m.is_file());
        if !regular {
            return Err(FsError::new(
                "refusing to write",
                &path,
                std::io::Error::other("it is not a regular file (a FIFO, device or socket?)"),
            ));
        }
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(|e| FsError::new("cannot write", &path, e))
    }

    /// Appends `entry`, logging instead of failing.
    pub fn record(&self, entry: &Entry) {
        if let Err(e) = self.append(entry) {
            tracing::warn!("cannot write the refresh journal: {e}");
        }
    }

    /// Every entry, oldest first (the rotated file, then the current one).
    /// Lines that are not entries (a torn last line, a foreign edit) are
    /// skipped.
    pub fn entries(&self) -> Result<Vec<Entry>, FsError> {
        let mut entries = Vec::new();
        for path in [self.rotated_path(), self.path()] {
            let Some(bytes) = read_bounded(&path)? else {
                continue;
            };
            entries.extend(
                bytes
                    .split(|b| *b == b'\n')
                    .filter(|line| !line.is_empty() && line.len() <= MAX_LINE)
                    .filter_map(|line| serde_json::from_slice::<Entry>(line).ok()),
            );
        }
        Ok(entries)
    }

    /// The refreshes that were sent and never answered, as far as the
    /// journal tells, and not yet settled by a later rotation, rejection,
    /// adoption, login, import or removal of their account.
    pub fn interrupted(&self, now: i64) -> Result<Vec<Interrupted>, FsError> {
        Ok(interrupted(&self.entries()?, now))
    }
}

/// The journal files are bounded by rotation; a file far larger is not one
/// the broker wrote, and only its end is read.
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, FsError> {
    use std::io::{Read, Seek, SeekFrom};
    let limit = 4 * ROTATE_AT;
    let Some((mut file, meta)) = fsutil::open_regular(path, nix::libc::O_NOFOLLOW)? else {
        return Ok(None);
    };
    if meta.len() > limit {
        file.seek(SeekFrom::Start(meta.len() - limit))
            .map_err(|e| FsError::new("cannot read", path, e))?;
    }
    let mut bytes = Vec::new();
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| FsError::new("cannot read", path, e))?;
    Ok(Some(bytes))
}

/// Whether a process with this pid runs.
fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

fn interrupted(entries: &[Entry], now: i64) -> Vec<Interrupted> {
    let answered: HashSet<&str> = entries
        .iter()
        .filter(|e| !matches!(e.event, Event::InFlight | Event::RefreshInterrupted))
        .filter_map(|e| e.flight.as_deref())
        .collect();
    let lost: HashMap<&str, &str> = entries
        .iter()
        .filter(|e| e.event == Event::RefreshInterrupted)
        .filter_map(|e| {
            Some((
                e.flight.as_deref()?,
                e.reason.as_deref().unwrap_or("no answer"),
            ))
        })
        .collect();
    // Per account, the index of the last entry that settles it.
    let mut settled: HashMap<&str, usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if e.event.settles() {
            settled.insert(&e.account, i);
        }
    }
    entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.event == Event::InFlight)
        .filter_map(|(i, e)| {
            let flight = e.flight.as_deref()?;
            if answered.contains(flight) || settled.get(e.account.as_str()).is_some_and(|s| *s > i)
            {
                return None;
            }
            let lost = lost.get(flight).map(|r| (*r).to_owned());
            let young = e.unix_time().is_some_and(|t| now - t < IN_FLIGHT_AT_MOST);
            if lost.is_none() && young && alive(e.pid) {
                return None;
            }
            Some(Interrupted {
                account: e.account.clone(),
                flight: flight.to_owned(),
                pid: e.pid,
                by: e.by.clone(),
                time: e.time.clone(),
                spent: e.spent.clone(),
                lost,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flight(account: &str, event: Event, flight: &str, pid: u32) -> Entry {
        let mut e = Entry::new(account, event, "test").spent("rt-0");
        e.flight = Some(flight.into());
        e.pid = pid;
        e
    }

    #[test]
    fn entries_round_trip_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        let entry = Entry::new("acc-1", Event::Rotated, "scheduler")
            .replacing(Some("rt-secret-0"), Some("rt-secret-1"));
        journal.append(&entry).unwrap();
        let text = fs::read_to_string(journal.path()).unwrap();
        assert!(!text.contains("rt-secret"), "{text}");
        assert_eq!(journal.entries().unwrap(), vec![entry]);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(journal.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn the_journal_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        let entry = Entry::new("acc-1", Event::Transient, "scheduler");
        let per_line = serde_json::to_vec(&entry).unwrap().len() as u64 + 1;
        let lines = 2 * ROTATE_AT / per_line + 10;
        for _ in 0..lines {
            journal.append(&entry).unwrap();
        }
        let size = |p: PathBuf| fs::metadata(p).unwrap().len();
        assert!(size(journal.path()) <= ROTATE_AT + per_line);
        assert!(size(journal.rotated_path()) <= ROTATE_AT + per_line);
        assert!(journal.entries().unwrap().len() < lines as usize);
    }

    #[test]
    fn torn_and_foreign_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        journal
            .append(&Entry::new("acc-1", Event::Login, "login"))
            .unwrap();
        let mut file = OpenOptions::new()
            .append(true)
            .open(journal.path())
            .unwrap();
        file.write_all(b"not json\n{\"time\":1}\n{\"time\":\"2026-")
            .unwrap();
        assert_eq!(journal.entries().unwrap().len(), 1);
    }

    #[test]
    fn an_unanswered_refresh_of_a_dead_process_is_interrupted_until_settled() {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        // No pid is this large on Linux.
        let dead = 0x7fff_fff0;
        let mut entries = vec![
            flight("acc-1", Event::InFlight, "f1", dead),
            flight("acc-2", Event::InFlight, "f2", dead),
            flight("acc-2", Event::Rotated, "f2", dead),
            flight("acc-3", Event::InFlight, "f3", std::process::id()),
        ];
        let found = interrupted(&entries, now);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].flight, "f1");
        assert!(found[0].message().contains("interrupted"));
        // Long after, even a live pid cannot still be refreshing.
        assert_eq!(interrupted(&entries, now + 3600).len(), 2);
        // A later rotation of the account settles it.
        entries.push(flight("acc-1", Event::Rotated, "f4", dead));
        assert!(interrupted(&entries, now).is_empty());
    }

    #[test]
    fn a_lost_answer_is_interrupted_even_while_its_process_runs() {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let me = std::process::id();
        let mut lost = flight("acc-1", Event::RefreshInterrupted, "f1", me);
        lost.reason = Some("timed out".into());
        let mut entries = vec![flight("acc-1", Event::InFlight, "f1", me), lost];
        let found = interrupted(&entries, now);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message().contains("lost its answer at"));
        entries.push(flight("acc-1", Event::Rotated, "f2", me));
        assert!(interrupted(&entries, now).is_empty());
    }
}
