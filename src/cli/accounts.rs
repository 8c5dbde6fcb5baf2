//! `codex-broker accounts [--json]` and `accounts switch|remove|label`

use anyhow::Context;
use clap::Subcommand;

use crate::base::display::{self, Table};
use crate::base::paths::Paths;
use crate::codex::publish::publish;
use crate::engine::config::Config;
use crate::engine::journal::{Entry, Event};
use crate::engine::refresh::Refresher;
use crate::engine::store::{Account, Role, State, Store};
use crate::oauth::OAuthClient;
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
    /// The login itself lives on at the issuer until it is revoked: --revoke
    /// ends it there first (what `codex logout` does not do through the
    /// broker), and keeps the account when the issuer cannot be told.
    Remove {
        /// Account id, label or unique id prefix
        id: String,
        /// Revoke the account's refresh token at the issuer before removing it
        #[arg(long)]
        revoke: bool,
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
        Some(Action::Remove { id, revoke: false }) => {
            remove(paths, &id, "").and_then(print_removed)
        }
        Some(Action::Remove { id, revoke: true }) => revoke_and_remove(paths, &id),
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

/// What `accounts remove` did: the account removed, the new main account.
type Removed = (Account, Option<String>);

fn print_removed((removed, new_main): Removed) -> anyhow::Result<()> {
    let mut text = format!(
        "Removed {} and its credentials from the store.\n",
        removed.name()
    );
    if let Some(main) = new_main.filter(|_| removed.role == Role::Main) {
        text.push_str(&format!("{main} is now the main account.\n"));
    }
    Ok(super::print(&text)?)
}

/// Revokes the account's refresh token at the issuer, then removes it,
/// holding the account as a refresh does throughout: no refresh of this
/// home spends (and rotates) the token between the two.
fn revoke_and_remove(paths: &Paths, query: &str) -> anyhow::Result<()> {
    let config = Config::load(&paths.home)?;
    let account = paths.store().load()?.find(query)?.clone();
    let Some(refresh_token) = account.tokens.as_ref().map(|t| t.refresh_token.clone()) else {
        return Err(super::Exit::usage(format!(
            "{} holds no refresh token to revoke (an API key is revoked where it was \
             made); remove it without --revoke",
            account.name()
        )));
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let refresher = Refresher::new(paths, &config);
    let removed = runtime.block_on(async {
        let _held = refresher.hold(&account.id).await?;
        // The token as it is now, under the hold: a refresh may have
        // rotated it since the first read.
        let current = paths.store().load()?;
        let refresh_token = current
            .get(&account.id)
            .and_then(|a| a.tokens.as_ref())
            .map_or(refresh_token, |t| t.refresh_token.clone());
        OAuthClient::new(&config.issuer)
            .revoke(&refresh_token)
            .await
            .with_context(|| {
                format!(
                    "cannot revoke the login of {} at {}; the account is kept (try again, or \
                     remove it without --revoke)",
                    account.name(),
                    config.issuer
                )
            })?;
        remove(paths, &account.id, " --revoke")
    })?;
    print_removed(removed)?;
    Ok(super::print(
        "Its login is revoked at the issuer: its tokens no longer work anywhere.\n",
    )?)
}

fn remove(paths: &Paths, query: &str, flags: &str) -> anyhow::Result<Removed> {
    paths.store().update(|store| {
        let id = store.find(query)?.id.clone();
        let removed = store.remove(&id).expect("found above");
        let by = format!("command `accounts remove{flags}`");
        let mut entry = Entry::new(&id, Event::Removed, &by);
        if let Some(t) = &removed.tokens {
            entry = entry.spent(t.refresh_token.expose());
        }
        paths.journal().record(&entry);
        let new_main = store.main_account().map(|a| a.name().to_owned());
        Ok::<_, anyhow::Error>((removed, new_main))
    })
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
