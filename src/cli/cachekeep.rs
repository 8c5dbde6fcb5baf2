//! `codex-broker cachekeep [on|off|status] [--json]`

use clap::ValueEnum;
use serde_json::json;

use crate::base::display::{self, Table};
use crate::base::paths::Paths;
use crate::engine::cachekeep::Status;
use crate::engine::config::Config;
use crate::engine::config_edit;
use crate::socket::client::{self, Answer};

/// Keep idle conversations' prompt caches warm with shadow requests
///
/// The backend caches a conversation's prompt prefix for a few minutes, on
/// the account that served it. With keep-warm on, a conversation idle for
/// `interval` (config `[cachekeep]`, default 270 s) gets a shadow request:
/// its latest request again, on the same account, with `store: false`,
/// read until its first output and dropped; it repeats while the
/// conversation's last real request is younger than `idle_cap` (default
/// 1 h). Codex subagents are warmed only with `subagents = true` (for 30
/// min at most). Shadows count as client `cachekeep` in `usage`. on / off
/// write `enabled` in config.toml and tell the running daemon; status
/// shows the conversations kept warm, the warms sent and the last warm's
/// cached and uncached input tokens.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    pub action: Option<Action>,

    /// Print {enabled, subagents, interval, idle_cap, sessions: [{key,
    /// account_id, last_request_at, warms, last_warm_at,
    /// last_cached_input_tokens, last_input_tokens}]}
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    On,
    Off,
    Status,
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let turn = match args.action {
        Some(Action::On) => Some(true),
        Some(Action::Off) => Some(false),
        Some(Action::Status) | None => None,
    };
    if let Some(on) = turn {
        config_edit::set_bool(&paths.home, Some("cachekeep"), "enabled", on)?;
    }
    let (status, running) = status(paths, turn)?;
    if args.json {
        return Ok(super::print_json(&serde_json::to_value(&status)?)?);
    }
    Ok(super::print(&render(&status, running, display::now()))?)
}

/// What the daemon keeps warm (after telling it `turn`), else the config
/// alone; and whether a daemon runs.
fn status(paths: &Paths, turn: Option<bool>) -> anyhow::Result<(Status, bool)> {
    let answer = client::blocking(
        paths,
        "/v1/cachekeep",
        turn.map(|on| json!({ "enabled": on })),
    )?;
    match answer {
        Answer::Ok(value) => Ok((serde_json::from_value(value)?, true)),
        Answer::NoDaemon => {
            let settings = Config::load(&paths.home)?.cachekeep;
            let status = Status {
                enabled: settings.enabled,
                subagents: settings.subagents,
                interval: settings.interval,
                idle_cap: settings.idle_cap,
                sessions: Vec::new(),
            };
            Ok((status, false))
        }
        Answer::Error { message, .. } => anyhow::bail!("the daemon: {message}"),
    }
}

fn render(status: &Status, running: bool, now: i64) -> String {
    let mut out = format!(
        "Keep-warm is {}: a conversation idle for {} gets a shadow request, for up to {} after \
         its last request; subagents {}.\n",
        if status.enabled { "on" } else { "off" },
        display::seconds(status.interval),
        display::seconds(status.idle_cap),
        if status.subagents { "too" } else { "not" },
    );
    if !running {
        out.push_str("The daemon is not running: no conversation is kept warm.\n");
        return out;
    }
    if status.sessions.is_empty() {
        out.push_str("No conversation is kept warm now.\n");
        return out;
    }
    let mut table = Table::new(&[
        "CONVERSATION",
        "ACCOUNT",
        "LAST REQUEST",
        "WARMS",
        "LAST WARM",
        "CACHED / INPUT",
    ]);
    for s in &status.sessions {
        let tokens = match (s.last_cached_input_tokens, s.last_input_tokens) {
            (Some(cached), Some(input)) => {
                format!("{} / {}", display::grouped(cached), display::grouped(input))
            }
            _ => "-".into(),
        };
        table.row(vec![
            s.key.clone(),
            s.account_id.clone(),
            display::relative(s.last_request_at, now),
            s.warms.to_string(),
            s.last_warm_at
                .map_or_else(|| "-".into(), |at| display::relative(at, now)),
            tokens,
        ]);
    }
    out.push_str(&table.render());
    out
}
