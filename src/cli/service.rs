//! `codex-broker service install|uninstall|print [--systemd|--launchd]`

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::base::fsutil;
use crate::base::paths::Paths;
use crate::daemon::service::{LAUNCHD_LABEL, Manager, SYSTEMD_UNIT, Spec, unit_path};

/// Install, remove or print a user service that runs `serve`
///
/// The service runs `codex-broker serve` with this command's broker home,
/// Codex home and socket, restarts it on failure, and (systemd) sandboxes it
/// so that it can write only those places. systemd user units go to
/// ~/.config/systemd/user/codex-broker.service, launchd agents to
/// ~/Library/LaunchAgents/org.codex-broker.serve.plist.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Write the service file, then enable and start the service
    Install {
        #[command(flatten)]
        manager: Which,
        /// Only write the file; do not enable or start the service
        #[arg(long)]
        no_start: bool,
    },
    /// Stop and disable the service, then remove its file
    Uninstall {
        #[command(flatten)]
        manager: Which,
    },
    /// Print the service file
    Print {
        #[command(flatten)]
        manager: Which,
    },
}

#[derive(Debug, clap::Args)]
pub struct Which {
    /// A systemd user unit (the default on Linux)
    #[arg(long, conflicts_with = "launchd")]
    systemd: bool,
    /// A launchd agent (the default on macOS)
    #[arg(long)]
    launchd: bool,
}

impl Which {
    fn manager(&self) -> Manager {
        match (self.systemd, self.launchd) {
            (true, _) => Manager::Systemd,
            (_, true) => Manager::Launchd,
            _ => Manager::native(),
        }
    }
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let user_home = user_home()?;
    match args.action {
        Action::Print { manager } => {
            let manager = manager.manager();
            super::print(&spec(paths, &user_home, manager)?.render(manager))?;
        }
        Action::Install { manager, no_start } => {
            let manager = manager.manager();
            let path = target(manager, &user_home);
            let text = spec(paths, &user_home, manager)?.render(manager);
            // A sandboxed service can write only directories that exist
            // when it starts.
            fsutil::ensure_private_dir(&paths.home)?;
            fsutil::create_dir_if_missing(&paths.codex_home)?;
            if let Some(socket_dir) = paths.socket.parent() {
                crate::socket::prepare_dir(socket_dir)?;
            }
            let dir = path.parent().expect("a unit path has a directory");
            fsutil::create_dir_if_missing(dir)?;
            fsutil::write_atomic(&path, text.as_bytes())?;
            super::print(&format!("Wrote {}\n", path.display()))?;
            if !no_start {
                start(manager, &path)?;
            }
        }
        Action::Uninstall { manager } => {
            let manager = manager.manager();
            let path = target(manager, &user_home);
            if !path.exists() {
                super::print(&format!(
                    "Not installed: {} does not exist\n",
                    path.display()
                ))?;
                return Ok(());
            }
            stop(manager);
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            if manager == Manager::Systemd {
                let _ = systemctl(&["daemon-reload"]);
            }
            super::print(&format!("Removed {}\n", path.display()))?;
        }
    }
    Ok(())
}

fn user_home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .context("HOME is not set to an absolute path")
}

fn target(manager: Manager, user_home: &Path) -> PathBuf {
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    unit_path(manager, user_home, xdg)
}

fn spec(paths: &Paths, user_home: &Path, manager: Manager) -> anyhow::Result<Spec> {
    let exe = std::env::current_exe().context("cannot tell where this program is")?;
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let log = user_home.join("Library/Logs/codex-broker.log");
    Ok(Spec::for_paths(
        &exe,
        &absolute(&paths.home),
        &absolute(&paths.codex_home),
        &absolute(&paths.socket),
        (manager == Manager::Launchd).then_some(log.as_path()),
    ))
}

/// Runs `systemctl --user ARGS`; `Ok(false)` when systemctl is not there.
fn systemctl(args: &[&str]) -> anyhow::Result<bool> {
    run_tool("systemctl", &[&["--user"], args].concat())
}

fn run_tool(tool: &str, args: &[&str]) -> anyhow::Result<bool> {
    let out = match Command::new(tool).args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot run {tool}")),
    };
    if !out.status.success() {
        anyhow::bail!(
            "`{tool} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(true)
}

fn start(manager: Manager, path: &Path) -> anyhow::Result<()> {
    let started = match manager {
        Manager::Systemd => {
            systemctl(&["daemon-reload"])? && systemctl(&["enable", "--now", SYSTEMD_UNIT])?
        }
        Manager::Launchd => {
            let domain = format!("gui/{}", nix::unistd::getuid());
            // Replace a loaded older definition.
            let _ = run_tool(
                "launchctl",
                &["bootout", &format!("{domain}/{LAUNCHD_LABEL}")],
            );
            run_tool(
                "launchctl",
                &["bootstrap", &domain, &path.to_string_lossy()],
            )?
        }
    };
    let text = match (started, manager) {
        (true, Manager::Systemd) => format!(
            "Enabled and started {SYSTEMD_UNIT}; see its log with: journalctl --user -u {SYSTEMD_UNIT}\n"
        ),
        (true, Manager::Launchd) => format!("Loaded {LAUNCHD_LABEL}\n"),
        (false, Manager::Systemd) => format!(
            "systemctl is not available; start the service with: systemctl --user enable --now {SYSTEMD_UNIT}\n"
        ),
        (false, Manager::Launchd) => format!(
            "launchctl is not available; load the agent with: launchctl bootstrap gui/$(id -u) {}\n",
            path.display()
        ),
    };
    Ok(super::print(&text)?)
}

/// Stops the service; a service that is not loaded is fine.
fn stop(manager: Manager) {
    let stopped = match manager {
        Manager::Systemd => systemctl(&["disable", "--now", SYSTEMD_UNIT]),
        Manager::Launchd => run_tool(
            "launchctl",
            &[
                "bootout",
                &format!("gui/{}/{LAUNCHD_LABEL}", nix::unistd::getuid()),
            ],
        ),
    };
    if let Err(e) = stopped {
        tracing::info!("stopping the service: {e}");
    }
}
