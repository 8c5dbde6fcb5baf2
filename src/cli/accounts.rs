//! `codex-broker accounts [--json]` and `accounts switch|remove|label`

use anyhow::Context;
use clap::Subcommand;

use crate::base::display::{self, Table};
use crate::base::paths::Paths;
use crate::codex::publish::publish;
use crate::engine::config::Config;
use crate::engine::journal::{Entry, Event};
use crate::engine::store::{Account, Role, State, Store};
use crate::wire::view::AccountList;

/// List the accounts, or switch, remove or label one
///
/// Without a subcommand, lists every account: label, email, plan, role, state
/// and token expiry; `*` marks the account auth.json holds. Secrets are never
/// printed. ID is an account id, a label, or a unique prefix of an id.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Print the list as JSON: {"accounts":[{id, label, email, plan, kind,
    /// role, state, state_reason, published, expires_at, last_refresh, quota,
    /// killswitch}]}
    #[arg(long)]
    pub json: bool,

    #[command(subcommand)]
    pub action: Option<Action>,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Make an account the main one and publish it to auth.json
    Switch {
        /// Account id, label or unique id prefix
        id: String,
        /// Publish it with a stand-in refresh token (turns shield mode on;
        /// see `codex-broker shield`)
        #[arg(long)]
        shield: bool,
    },
    /// Delete an account and its credentials from the store
    ///
    /// auth.json is left as it is: Codex stays logged in with whatever it holds.
    Remove {
        /// Account id, label or unique id prefix
        id: String,
    },
    /// Give an account a label (an empty NAME removes it)
    Label {
        /// Account id, label or unique id prefix
        id: String,
        /// The new label
        name: String,
    },
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    match args.action {
        None => list(paths, args.json),
        Some(Action::Switch { id, shield }) => switch(paths, &id, shield),
        Some(Action::Remove { id }) => remove(paths, &id),
        Some(Action::Label { id, name }) => label(paths, &id, &name),
    }
}

fn list(paths: &Paths, json: bool) -> anyhow::Result<()> {
    let store = paths.store().load()?;
    if json {
        return Ok(super::print_json(&AccountList::new(&store))?);
    }
    if store.accounts.is_empty() {
        return Ok(super::print(super::NO_ACCOUNTS)?);
    }
    let now = display::now();
    let mut table = Table::new(&[
        "", "ACCOUNT", "LABEL", "EMAIL", "PLAN", "ROLE", "STATE", "TOKEN",
    ]);
    for a in &store.accounts {
        table.row(vec![
            marker(&store, a).into(),
            a.id.clone(),
            a.label.clone().unwrap_or_else(|| "-".into()),
            a.email.clone().unwrap_or_else(|| "-".into()),
            a.plan.clone().unwrap_or_else(|| a.kind.to_string()),
            a.role.to_string(),
            a.state.to_string(),
            token_summary(a, now),
        ]);
    }
    let mut text = table.render();
    if store.published.is_some() {
        text.push_str(&format!(
            "\n* published to {}\n",
            paths.codex().auth_path().display()
        ));
    }
    Ok(super::print(&text)?)
}

fn marker(store: &Store, account: &Account) -> &'static str {
    if store.published.as_deref() == Some(account.id.as_str()) {
        "*"
    } else {
        ""
    }
}

/// `expires in 2h 30m`, `expired 5m ago`, or `API key`.
pub(super) fn token_summary(account: &Account, now: i64) -> String {
    match account.expires_at {
        _ if account.api_key.is_some() => "API key".into(),
        Some(at) if at > now => format!("expires {}", display::relative(at, now)),
        Some(at) => format!("expired {}", display::relative(at, now)),
        None => "expiry unknown".into(),
    }
}

fn switch(paths: &Paths, query: &str, shield: bool) -> anyhow::Result<()> {
    let codex = paths.codex();
    let shield = shield || Config::load(&paths.home)?.shield;
    let (name, state, published) = paths.store().update(|store| {
        let id = store.find(query)?.id.clone();
        store.make_main(&id);
        store.shield |= shield;
        let published = publish(&codex, store, &id, &paths.journal())
            .context("cannot publish the account to auth.json")?;
        let account = store.get(&id).expect("found above");
        Ok::<_, anyhow::Error>((account.name().to_owned(), account.state, published))
    })?;
    let mut text = String::new();
    for adopted in &published.adopted {
        text.push_str(&format!(
            "Saved the tokens auth.json held for {adopted} into the store first.\n"
        ));
    }
    text.push_str(&format!(
        "Switched to {name}: it is the main account{}.\n",
        if published.written {
            format!(" and {} now holds it", codex.auth_path().display())
        } else {
            format!(", and {} already held it", codex.auth_path().display())
        }
    ));
    if state == State::NeedsLogin {
        text.push_str("Warning: this account needs a new login before its tokens work again.\n");
    }
    Ok(super::print(&text)?)
}

fn remove(paths: &Paths, query: &str) -> anyhow::Result<()> {
    let (removed, new_main) = paths.store().update(|store| {
        let id = store.find(query)?.id.clone();
        let removed = store.remove(&id).expect("found above");
        let mut entry = Entry::new(&id, Event::Removed, "command `accounts remove`");
        if let Some(t) = &removed.tokens {
            entry = entry.spent(t.refresh_token.expose());
        }
        paths.journal().record(&entry);
        let new_main = store.main_account().map(|a| a.name().to_owned());
        Ok::<_, anyhow::Error>((removed, new_main))
    })?;
    let mut text = format!(
        "Removed {} and its credentials from the store.\n",
        removed.name()
    );
    if let Some(main) = new_main.filter(|_| removed.role == Role::Main) {
        text.push_str(&format!("{main} is now the main account.\n"));
    }
    Ok(super::print(&text)?)
}

fn label(paths: &Paths, query: &str, name: &str) -> anyhow::Result<()> {
    let name = name.trim().to_owned();
    let id = paths.store().update(|store| {
        let id = store.find(query)?.id.clone();
        if let Some(other) = store
            .accounts
            .iter()
            .find(|a| a.id != id && (a.label.as_deref() == Some(name.as_str()) || a.id == name))
            .filter(|_| !name.is_empty())
        {
            return Err(super::Exit::usage(format!(
                "the label `{name}` would be ambiguous: account {} already answers to it",
                other.id
            )));
        }
        let account = store.get_mut(&id).expect("found above");
        account.label = (!name.is_empty()).then(|| name.clone());
        Ok::<_, anyhow::Error>(id)
    })?;
    let text = if name.is_empty() {
        format!("Removed the label of {id}.\n")
    } else {
        format!("Labelled {id} as {name}.\n")
    };
    Ok(super::print(&text)?)
}
