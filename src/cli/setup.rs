//! `codex-broker setup codex|opencode [--undo] [--dry-run]`

use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::base::fsutil;
use crate::base::paths::Paths;
use crate::codex::publish::republish;
use crate::forward::DEFAULT_LISTEN;
use crate::setup::{Plan, codex as codex_plan, opencode, pi};
use crate::socket::client;
use crate::wire::proto::Health;

/// Point a client at the broker, in the client's own config file
///
/// codex: sets `openai_base_url` and `chatgpt_base_url` in Codex's
/// config.toml to the forwarder (and `cli_auth_credentials_store = "file"`
/// when it was keyring or auto), keeping every other key, comment and blank
/// line, and publishes auth.json naming the forwarder as the issuer Codex
/// refreshes at, so that no environment variable is needed (Codex 0.166 and
/// later). opencode: adds a provider `codex-broker` (Chat Completions at
/// the forwarder's /v1) to OpenCode's opencode.json and makes it the
/// default model, keeping every other key. pi: points Pi's built-in
/// openai-codex provider at the forwarder's /backend-api (models.json) and
/// gives it a stand-in credential naming no account (auth.json): the
/// forwarder sets the real ones; it becomes Pi's default (settings.json). Each prints what it changed and
/// changes nothing when all is set. --undo restores the file as it was
/// before the first setup (removing it if setup created it).
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
    Opencode,
    Pi,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Codex => "codex",
            Client::Opencode => "opencode",
            Client::Pi => "pi",
        }
    }

    /// The client's files that setup edits.
    fn files(self, paths: &Paths) -> Vec<PathBuf> {
        match self {
            Client::Codex => vec![paths.codex().config_path()],
            Client::Opencode => vec![opencode_config()],
            Client::Pi => {
                let agent = home().join(".pi/agent");
                vec![
                    agent.join("models.json"),
                    agent.join("auth.json"),
                    agent.join("settings.json"),
                ]
            }
        }
    }
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
}

/// OpenCode's global config: `$XDG_CONFIG_HOME/opencode/opencode.json`.
fn opencode_config() -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".config"));
    config.join("opencode/opencode.json")
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let text = if args.undo {
        undo(paths, args.client, args.dry_run)?
    } else {
        setup(paths, args.client, args.dry_run)?
    };
    Ok(super::print(&text)?)
}

/// Where the original of `file` is kept (0600 in the home), and the
/// marker that there was none.
fn backups(paths: &Paths, client: Client, file: &Path) -> (PathBuf, PathBuf) {
    let dir = paths.home.join("setup");
    let file_name = file.file_name().unwrap_or_default().to_string_lossy();
    let name = format!("{}-{file_name}", client.name());
    (dir.join(&name), dir.join(format!("{name}.none")))
}

/// The forwarder's base URL: the running daemon's, else the one it last
/// served, else the default.
fn forwarder_base(paths: &Paths, health: Option<&Health>) -> String {
    if let Some(forwarder) = health.and_then(|h| h.forwarder.as_ref()) {
        return format!("http://{}", forwarder.address);
    }
    let last = paths.store().load().ok().and_then(|s| s.forwarder);
    last.unwrap_or_else(|| format!("http://{DEFAULT_LISTEN}"))
}

/// The models the forwarder lists (the backend's), else Codex's default.
fn models(base: &str, running: bool) -> Vec<String> {
    let listed = running.then(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            let http = crate::oauth::http_client(std::time::Duration::from_secs(10));
            let list: serde_json::Value = http
                .get(format!("{base}/v1/models"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let ids: Vec<String> = list["data"]
                .as_array()?
                .iter()
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .take(64)
                .collect();
            (!ids.is_empty()).then_some(ids)
        })
    });
    listed
        .flatten()
        .unwrap_or_else(|| vec!["gpt-5.1-codex".to_owned()])
}

/// The edits of the client's files, each with what it held.
fn plans(paths: &Paths, client: Client) -> anyhow::Result<(Vec<Edit>, String)> {
    let health = client::health(paths).ok().flatten();
    let base = forwarder_base(paths, health.as_ref());
    let mut edits = Vec::new();
    for (n, path) in client.files(paths).into_iter().enumerate() {
        let old = fsutil::read_optional(&path)?;
        let text = std::str::from_utf8(old.as_deref().unwrap_or_default())
            .map_err(|_| anyhow::anyhow!("{}: not UTF-8", path.display()))?;
        let plan = match (client, n) {
            (Client::Codex, _) => codex_plan::plan(text, &base),
            (Client::Opencode, _) => opencode::plan(text, &base, &models(&base, health.is_some())),
            (Client::Pi, 0) => pi::models(text, &base),
            (Client::Pi, 1) => pi::auth(text),
            (Client::Pi, _) => pi::settings(text),
        };
        let plan = plan.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        edits.push(Edit { path, old, plan });
    }
    Ok((edits, base))
}

/// One file setup edits.
struct Edit {
    path: PathBuf,
    old: Option<Vec<u8>>,
    plan: Plan,
}

fn setup(paths: &Paths, client: Client, dry_run: bool) -> anyhow::Result<String> {
    let (edits, base) = plans(paths, client)?;
    let publish = client == Client::Codex && !paths.store().load()?.codex_setup;
    if edits.iter().all(|e| e.plan.changes.is_empty()) && !publish {
        return Ok(format!(
            "{} reaches the broker at {base} already; nothing changed.\n",
            client.name()
        ));
    }
    let mut out = String::new();
    let verb = if dry_run { "Would change" } else { "Changed" };
    for edit in edits.iter().filter(|e| !e.plan.changes.is_empty()) {
        out.push_str(&format!("{verb} {}:\n", edit.path.display()));
        for change in &edit.plan.changes {
            out.push_str(&format!("  {change}\n"));
        }
    }
    if publish {
        out.push_str(&format!(
            "{} {} with {base} as the issuer Codex refreshes at: no environment variable needed.\n",
            if dry_run {
                "Would publish"
            } else {
                "Published"
            },
            paths.codex().auth_path().display()
        ));
    }
    if dry_run {
        return Ok(out);
    }
    for edit in edits.iter().filter(|e| !e.plan.changes.is_empty()) {
        keep_original(paths, client, &edit.path, edit.old.as_deref())?;
        fsutil::create_dir_if_missing(edit.path.parent().unwrap_or(Path::new(".")))?;
        fsutil::write_atomic(&edit.path, edit.plan.text.as_bytes())?;
    }
    if client == Client::Codex {
        codex_set_up(paths, true)?;
        out.push_str(&older_codex_note(&base));
    }
    Ok(out)
}

/// What a Codex on PATH older than the provenance issuer needs besides.
fn older_codex_note(base: &str) -> String {
    let line = std::process::Command::new("codex")
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match line.as_deref().and_then(codex_plan::release) {
        Some(release) if release < codex_plan::PROVENANCE_SINCE => format!(
            "{} refreshes only where CODEX_REFRESH_TOKEN_URL_OVERRIDE says: put \
             export CODEX_REFRESH_TOKEN_URL_OVERRIDE={base}/oauth/token in your shell's \
             profile (or upgrade Codex to 0.166 or later).\n",
            line.unwrap_or_default()
        ),
        _ => String::new(),
    }
}

/// Keeps the config as it was before the first setup.
fn keep_original(
    paths: &Paths,
    client: Client,
    file: &Path,
    old: Option<&[u8]>,
) -> anyhow::Result<()> {
    let (copy, none) = backups(paths, client, file);
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

/// Records whether setup codex ran, and publishes auth.json again with the
/// issuer that goes with it.
fn codex_set_up(paths: &Paths, on: bool) -> anyhow::Result<()> {
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

fn undo(paths: &Paths, client: Client, dry_run: bool) -> anyhow::Result<String> {
    let mut out = String::new();
    for file in client.files(paths) {
        out.push_str(&undo_file(paths, client, &file, dry_run)?);
    }
    if out.is_empty() {
        return Ok(format!(
            "setup {} was not run for this broker home; nothing to undo.\n",
            client.name()
        ));
    }
    if client == Client::Codex && !dry_run {
        codex_set_up(paths, false)?;
        out.push_str("auth.json names its own issuer again.\n");
    }
    Ok(out)
}

/// Puts `file` back as it was before setup: what it says it did.
fn undo_file(paths: &Paths, client: Client, file: &Path, dry_run: bool) -> anyhow::Result<String> {
    let (copy, none) = backups(paths, client, file);
    let (created, kept) = (none.exists(), copy.exists());
    if !created && !kept {
        return Ok(String::new());
    }
    let (verb, what) = match (created, dry_run) {
        (true, false) => ("Removed", "which setup had created"),
        (true, true) => ("Would remove", "which setup had created"),
        (false, false) => ("Restored", "as it was before setup"),
        (false, true) => ("Would restore", "as it was before setup"),
    };
    let said = format!("{verb} {}, {what}.\n", file.display());
    if dry_run {
        return Ok(said);
    }
    if created {
        if let Err(e) = std::fs::remove_file(file)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(fsutil::FsError::new("cannot remove", file, e).into());
        }
        std::fs::remove_file(&none)?;
    } else {
        fsutil::write_atomic(file, &std::fs::read(&copy)?)?;
        std::fs::remove_file(&copy)?;
    }
    Ok(said)
}
