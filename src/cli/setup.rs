//! `codex-broker setup codex [--undo] [--dry-run]`

use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::base::fsutil;
use crate::base::paths::Paths;
use crate::codex::publish::republish;
use crate::codex::setup::plan;
use crate::forward::DEFAULT_LISTEN;
use crate::socket::client::{self, Answer};
use crate::wire::proto::Health;

/// Point a client at the broker, in the client's own config file
///
/// codex: sets `openai_base_url` and `chatgpt_base_url` in Codex's
/// config.toml to the forwarder (and `cli_auth_credentials_store = "file"`
/// when it was keyring or auto), keeping every other key, comment and blank
/// line, and publishes auth.json naming the forwarder as the issuer Codex
/// refreshes at, so that no environment variable is needed (Codex 0.166 and
/// later). It prints what it changed and changes nothing when all is set.
/// --undo restores the file as it was before the first setup (removing it
/// if setup created it) and auth.json's own issuer.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    pub client: Client,

    /// Restore what setup changed
    #[arg(long)]
    pub undo: bool,

    /// Print the change and write nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Client {
    Codex,
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let Client::Codex = args.client;
    let text = if args.undo {
        undo_codex(paths, args.dry_run)?
    } else {
        setup_codex(paths, args.dry_run)?
    };
    Ok(super::print(&text)?)
}

/// Where the original config is kept (0600 in the home), and the marker
/// that there was none.
fn backups(paths: &Paths) -> (PathBuf, PathBuf) {
    let dir = paths.home.join("setup");
    (
        dir.join("codex-config.toml"),
        dir.join("codex-config.toml.none"),
    )
}

/// The forwarder's base URL: the running daemon's, else the one it last
/// served, else the default.
fn forwarder_base(paths: &Paths) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if let Ok(Answer::Ok(value)) = runtime.block_on(client::get(paths, "/v1/health"))
        && let Some(forwarder) = serde_json::from_value::<Health>(value)?.forwarder
    {
        return Ok(format!("http://{}", forwarder.address));
    }
    let last = paths.store().load().ok().and_then(|s| s.forwarder);
    Ok(last.unwrap_or_else(|| format!("http://{DEFAULT_LISTEN}")))
}

fn setup_codex(paths: &Paths, dry_run: bool) -> anyhow::Result<String> {
    let codex = paths.codex();
    let config = codex.config_path();
    let old = fsutil::read_optional(&config)?;
    let text = std::str::from_utf8(old.as_deref().unwrap_or_default())
        .map_err(|_| anyhow::anyhow!("{}: not UTF-8", config.display()))?;
    let base = forwarder_base(paths)?;
    let plan = plan(text, &base).map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
    let published = !paths.store().load()?.codex_setup;
    let mut out = String::new();
    if plan.changes.is_empty() && !published {
        return Ok(format!(
            "Codex reaches the broker at {base} already; nothing changed.\n"
        ));
    }
    let verb = if dry_run { "Would change" } else { "Changed" };
    if !plan.changes.is_empty() {
        out.push_str(&format!("{verb} {}:\n", config.display()));
        for change in &plan.changes {
            out.push_str(&format!("  {change}\n"));
        }
    }
    if published {
        out.push_str(&format!(
            "{} {} with {base} as the issuer Codex refreshes at: no environment variable needed.\n",
            if dry_run {
                "Would publish"
            } else {
                "Published"
            },
            codex.auth_path().display()
        ));
    }
    if dry_run {
        return Ok(out);
    }
    keep_original(paths, old.as_deref())?;
    if !plan.changes.is_empty() {
        fsutil::create_dir_if_missing(config.parent().unwrap_or(Path::new(".")))?;
        fsutil::write_atomic(&config, plan.text.as_bytes())?;
    }
    set_up(paths, true)?;
    Ok(out)
}

/// Keeps the config as it was before the first setup.
fn keep_original(paths: &Paths, old: Option<&[u8]>) -> anyhow::Result<()> {
    let (copy, none) = backups(paths);
    if copy.exists() || none.exists() {
        return Ok(());
    }
    fsutil::ensure_private_dir(copy.parent().expect("in the home"))?;
    match old {
        Some(bytes) => fsutil::write_atomic(&copy, bytes)?,
        None => fsutil::write_atomic(&none, b"")?,
    }
    Ok(())
}

/// Records whether setup ran, and publishes auth.json again with the
/// issuer that goes with it.
fn set_up(paths: &Paths, on: bool) -> anyhow::Result<()> {
    let codex = paths.codex();
    let journal = paths.journal();
    paths.store().update(|store| {
        store.codex_setup = on;
        if let Some(id) = store.published.clone() {
            republish(&codex, store, &id, &journal)?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}

fn undo_codex(paths: &Paths, dry_run: bool) -> anyhow::Result<String> {
    let config = paths.codex().config_path();
    let (copy, none) = backups(paths);
    let action = if none.exists() {
        format!("Removed {}, which setup had created.\n", config.display())
    } else if copy.exists() {
        format!("Restored {} as it was before setup.\n", config.display())
    } else {
        return Ok("setup codex was not run for this broker home; nothing to undo.\n".into());
    };
    if dry_run {
        return Ok(action.replacen("Removed", "Would remove", 1).replacen(
            "Restored",
            "Would restore",
            1,
        ));
    }
    if none.exists() {
        match std::fs::remove_file(&config) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(fsutil::FsError::new("cannot remove", &config, e).into());
            }
            _ => {}
        }
        std::fs::remove_file(&none)?;
    } else {
        let original = std::fs::read(&copy)?;
        fsutil::write_atomic(&config, &original)?;
        std::fs::remove_file(&copy)?;
    }
    set_up(paths, false)?;
    Ok(action + "auth.json names its own issuer again.\n")
}
