//! `codex-broker notify test`

use clap::Subcommand;

use crate::base::display;
use crate::base::paths::Paths;
use crate::engine::config::Config;
use crate::engine::notify::Notice;

/// Send notifications when the broker needs you
///
/// The daemon tells when an account needs a new login, a refresh's answer
/// was lost, an account passed `quota_percent` (90) of a window, every
/// account has used its quota, a rotation could not be saved or the leader
/// cannot be reached, and when such a state is over: once when it begins,
/// again after `repeat` (6h) while it lasts. Channels, in config.toml
/// `[notify]`: `desktop` (on where a session bus or macOS is there),
/// `command` (an argv that gets the notice as JSON on stdin and
/// CODEX_BROKER_EVENT), `webhook` (a URL that gets the JSON by POST).
/// `notify test` sends a test notice to each channel.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Send a test notice to each configured channel
    Test,
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let Action::Test = args.action;
    let settings = Config::load(&paths.home)?.notify;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let notice = Notice::test(display::now());
    let sent = runtime.block_on(crate::notify::send(&settings, &notice));
    if sent.is_empty() {
        anyhow::bail!(
            "no channel to notify: set [notify] desktop, command or webhook in {}",
            paths
                .home
                .join(crate::engine::config::CONFIG_FILE)
                .display()
        );
    }
    let mut text = String::new();
    for s in &sent {
        match &s.result {
            Ok(()) => text.push_str(&format!("{}: sent\n", s.channel)),
            Err(why) => text.push_str(&format!("{}: failed: {why}\n", s.channel)),
        }
    }
    super::print(&text)?;
    if sent.iter().any(|s| s.result.is_err()) {
        anyhow::bail!("a channel failed");
    }
    Ok(())
}
