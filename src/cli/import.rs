//! `codex-broker import [PATH]`

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::base::fsutil::{read_with_metadata, resolve_symlinks, untrusted};
use crate::base::paths::Paths;
use crate::codex::auth::{AuthDotJson, AuthFileError, AuthState, CodexHome};
use crate::codex::publish::{Published, publish};
use crate::engine::journal::{Entry, Event};
use crate::engine::store::{Account, Upsert};

/// Adopt an existing Codex auth.json into the account store
///
/// Reads PATH (by default the Codex home's auth.json), validates it as Codex
/// would, and adds its account to the store, or updates that account when the
/// file's tokens are newer. The first account becomes the main account.
/// Importing the Codex home's own auth.json records it as the published one.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The auth.json to import [default: <codex home>/auth.json]
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let codex = paths.codex();
    let path = args.path.unwrap_or_else(|| codex.auth_path());
    let is_codex_file = same_file(&path, &codex.auth_path());
    let account = read_account(&codex, &path, is_codex_file)?;
    let id = account.id.clone();
    let (outcome, summary, published) = take_in(paths, &codex, account, is_codex_file)?;
    let mut text = match outcome {
        Upsert::Added => format!("Imported account {summary}.\n"),
        Upsert::Updated => format!(
            "Updated account {summary} with the tokens of {}.\n",
            path.display()
        ),
        Upsert::Unchanged => {
            format!(
                "Account {summary} is up to date; the store's tokens are the same or come after \
                 the file's.\n"
            )
        }
    };
    match published {
        Some(p) if p.written => text.push_str(&format!(
            "Published it to {}.\n",
            codex.auth_path().display()
        )),
        Some(_) => text.push_str(&format!(
            "{} holds this account.\n",
            codex.auth_path().display()
        )),
        None => text.push_str(&format!(
            "To publish it to {}, run: codex-broker accounts switch {id}\n",
            codex.auth_path().display()
        )),
    }
    super::print(&text)?;
    Ok(())
}

/// The account of the auth.json at `path`, read only from a file the user
/// alone can write, and validated as Codex would.
fn read_account(codex: &CodexHome, path: &Path, is_codex_file: bool) -> anyhow::Result<Account> {
    let keyring = is_codex_file.then(|| codex.keyring_problem()).flatten();
    let Some((bytes, meta)) = read_with_metadata(path)? else {
        if let Some(problem) = keyring {
            anyhow::bail!(
                "no auth.json at {}: {problem}, then log in with `codex login` again",
                path.display()
            );
        }
        anyhow::bail!(
            "no auth.json at {}: log in with `codex login` first, or pass the path of an auth.json",
            path.display()
        )
    };
    if let Some(problem) = &keyring {
        eprintln!("warning: {problem}");
    }
    if let Some(why) = untrusted(&meta) {
        anyhow::bail!(
            "refusing to import {}: {why}; anyone who can write it could plant an account",
            path.display()
        );
    }
    let invalid = |problem| AuthFileError::Invalid {
        path: path.to_owned(),
        problem,
    };
    let auth = AuthDotJson::parse(&bytes).map_err(invalid)?;
    let account = Account::from_auth(&auth).map_err(invalid)?;
    if is_codex_file && let AuthState::Untrusted(problem) = codex.read()?.state {
        anyhow::bail!("refusing to import {}: {problem}", path.display());
    }
    Ok(account)
}

/// Adds `account` to the store (or updates it with newer tokens), journals
/// the import, and publishes it when the file was Codex's own or Codex has
/// none yet.
fn take_in(
    paths: &Paths,
    codex: &CodexHome,
    account: Account,
    is_codex_file: bool,
) -> anyhow::Result<(Upsert, String, Option<Published>)> {
    let id = account.id.clone();
    let journal = paths.journal();
    let new_rt = account
        .tokens
        .as_ref()
        .map(|t| t.refresh_token.expose().clone());
    let shield = crate::engine::config::Config::load(&paths.home)?.shield;
    paths.store().update(|store| {
        store.shield |= shield;
        let replaced = store
            .get(&id)
            .and_then(|a| a.tokens.as_ref())
            .map(|t| t.refresh_token.expose().clone());
        let outcome = store.upsert(account);
        if outcome != Upsert::Unchanged {
            journal.record(
                &Entry::new(&id, Event::Import, "command `import`")
                    .replacing(replaced.as_deref(), new_rt.as_deref()),
            );
        }
        let publish_now = is_codex_file
            || (store.published.is_none()
                && matches!(codex.read().map(|s| s.state), Ok(AuthState::Missing)));
        let published = if publish_now {
            Some(publish(codex, store, &id, &journal).context("cannot publish to auth.json")?)
        } else {
            None
        };
        let account = store.get(&id).expect("just upserted");
        Ok::<_, anyhow::Error>((outcome, describe(account), published))
    })
}

/// `acc-1 (a@example.com, plus) as main`
fn describe(account: &Account) -> String {
    let details: Vec<&str> = [account.email.as_deref(), account.plan.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let details = if details.is_empty() {
        account.kind.to_string()
    } else {
        details.join(", ")
    };
    format!("{} ({details}) as {}", account.name(), account.role)
}

fn same_file(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| resolve_symlinks(p).ok().and_then(|p| p.canonicalize().ok());
    a == b || matches!((canonical(a), canonical(b)), (Some(x), Some(y)) if x == y)
}
