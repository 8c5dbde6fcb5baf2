//! `codex-broker log level [LEVEL]`

use clap::Subcommand;
use serde_json::json;

use crate::base::paths::Paths;
use crate::socket::client::{self, Answer};

/// Show or change the running daemon's log level
///
/// The daemon logs to stderr (journald under systemd) and, with `log_file`
/// in config.toml or `serve --log-file`, to that file too, rotated at
/// `log_rotate_bytes` (5 MiB) with `log_rotate_max_files` (3) older files
/// kept. `log level debug` changes the level at once, until the daemon
/// restarts; any filter such as `codex_broker=debug,hyper=info` works.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Show the level, or set it: error, warn, info, debug, trace
    Level { level: Option<String> },
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let Action::Level { level } = args.action;
    let body = level.as_ref().map(|level| json!({ "level": level }));
    let answer = client::blocking(paths, "/v1/log-level", body)?;
    match answer {
        Answer::Ok(value) => {
            let now = value["level"].as_str().unwrap_or("unknown");
            let text = match level {
                Some(_) => format!("Log level set to {now}.\n"),
                None => format!("{now}\n"),
            };
            Ok(super::print(&text)?)
        }
        Answer::NoDaemon => anyhow::bail!(
            "no daemon runs for {}: start it with `codex-broker serve` (its level is then set \
             with -v or CODEX_BROKER_LOG)",
            paths.home.display()
        ),
        Answer::Error { message, .. } => anyhow::bail!("the daemon: {message}"),
    }
}
