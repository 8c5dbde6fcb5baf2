//! `codex-broker dump [on|off]`

use serde_json::{Value, json};

use super::OnOff;
use crate::base::paths::Paths;
use crate::engine::config::Config;
use crate::engine::config_edit;
use crate::socket::client::{self, Answer};

/// Dump each request the forwarder sends to the backend, to debug cache misses
///
/// With dumps on, each request sent to the backend leaves
/// `<time>-<n>.body.json` (the body as sent, decoded when compressed) and
/// `<time>-<n>.meta.json` (method, path, account, status, timings, headers
/// with every credential redacted) in `dump_dir` (default `<home>/dumps`,
/// 0700); past `dump_max_files` (default 200) the oldest go. The bodies
/// hold your prompts, code and files: turn dumps off when done. on / off
/// write `dump` in config.toml and tell the running daemon; without an
/// argument, shows whether dumps are on.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    pub mode: Option<OnOff>,
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let turn = args.mode.map(|m| m == OnOff::On);
    if let Some(on) = turn {
        config_edit::set_bool(&paths.home, None, "dump", on)?;
    }
    let answer = client::blocking(paths, "/v1/dump", turn.map(|on| json!({ "enabled": on })))?;
    let (settings, running) = match answer {
        Answer::Ok(value) => (value, true),
        Answer::NoDaemon => {
            let dumps = Config::load(&paths.home)?.dumps;
            let value =
                json!({"enabled": dumps.enabled, "dir": dumps.dir, "max_files": dumps.max_files});
            (value, false)
        }
        Answer::Error { message, .. } => anyhow::bail!("the daemon: {message}"),
    };
    Ok(super::print(&render(&settings, running))?)
}

fn render(settings: &Value, running: bool) -> String {
    let on = settings["enabled"].as_bool().unwrap_or(false);
    let dir = settings["dir"].as_str().unwrap_or_default();
    let max = &settings["max_files"];
    let mut out = format!(
        "Request dumps are {} ({dir}, the newest {max} files kept).\n",
        if on { "on" } else { "off" }
    );
    if on {
        out.push_str(
            "The dumped bodies hold your prompts, code and files: turn dumps off when done.\n",
        );
    }
    if !running {
        out.push_str("The daemon is not running; it reads this when it starts.\n");
    }
    out
}
