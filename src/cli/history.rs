//! `codex-broker history [ACCOUNT] [--json]`

use serde::Serialize;

use crate::base::display::{self, Table};
use crate::base::paths::Paths;
use crate::engine::journal::{Entry, Interrupted};

/// Show the refresh journal: who spent which refresh token, and when
///
/// Every refresh (the moment its request was sent, and what the issuer
/// answered), every adoption of tokens from auth.json, every login, import
/// and removal, oldest first, with who caused it (the scheduler, a socket
/// or forwarder client by its User-Agent, a command) and the fingerprints
/// of the refresh tokens involved (the first 12 hex digits of their
/// SHA-256; the tokens themselves are never written). A refresh whose
/// process died before its answer was recorded is marked as interrupted.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this account (id, label or unique id prefix; a removed account by its id)
    #[arg(value_name = "ACCOUNT")]
    pub account: Option<String>,

    /// Print {entries: [{time, account, event, by, pid, flight, spent, new, code, reason}], interrupted: [...]}
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct History {
    entries: Vec<Entry>,
    interrupted: Vec<Interrupted>,
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let journal = paths.journal();
    let mut entries = journal.entries()?;
    let mut interrupted = journal.interrupted(display::now())?;
    if let Some(query) = &args.account {
        let id = match paths.store().load()?.find(query) {
            Ok(account) => account.id.clone(),
            Err(_) if entries.iter().any(|e| e.account == *query) => query.clone(),
            Err(e) => return Err(e.into()),
        };
        entries.retain(|e| e.account == id);
        interrupted.retain(|i| i.account == id);
    }
    if args.json {
        return Ok(super::print_json(&History {
            entries,
            interrupted,
        })?);
    }
    if entries.is_empty() {
        return Ok(super::print("The refresh journal is empty.\n")?);
    }
    let mut table = Table::new(&["TIME", "ACCOUNT", "WHAT", "BY"]);
    for e in &entries {
        let open = e
            .flight
            .as_ref()
            .is_some_and(|f| interrupted.iter().any(|i| &i.flight == f));
        let mut what = e.describe();
        if open {
            what.push_str(" [interrupted: no answer recorded]");
        }
        table.row(vec![
            short_time(&e.time),
            e.account.clone(),
            what,
            format!("{} (pid {})", e.by, e.pid),
        ]);
    }
    let mut text = table.render();
    for i in &interrupted {
        text.push_str(&format!("! {}\n", i.message()));
    }
    Ok(super::print(&text)?)
}

/// `2026-12-02 07:45:12Z` from an RFC 3339 timestamp.
fn short_time(rfc3339: &str) -> String {
    let (date, rest) = rfc3339.split_once('T').unwrap_or((rfc3339, ""));
    let clock: String = rest.chars().take(8).collect();
    if clock.is_empty() {
        date.to_owned()
    } else {
        format!("{date} {clock}Z")
    }
}
