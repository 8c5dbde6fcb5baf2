//! `codex-broker serve`

use std::time::Duration;

use crate::config::Config;
use crate::daemon::{self, Options};
use crate::paths::Paths;
use crate::socket::Limits;

/// Run the daemon: refresh scheduler, Codex-home watcher and socket API
///
/// Keeps every ChatGPT account fresh ahead of expiry (config `refresh_ahead`,
/// default 30 minutes), adopts what `codex login` writes to auth.json, and
/// serves tokens over the Unix socket (see --socket). One daemon runs per
/// broker home. SIGTERM or SIGINT stop it after in-flight requests finish.
/// With NOTIFY_SOCKET set it tells systemd when it is ready (Type=notify).
/// Logs go to stderr at level info (-v for more, CODEX_BROKER_LOG for a
/// filter).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds a client has to send a request's head, and then its body
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub request_timeout: u32,

    /// Seconds in-flight requests get to finish at shutdown
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub grace: u32,
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let config = Config::load(&paths.home)?;
    let limits = Limits {
        request_timeout: Duration::from_secs(args.request_timeout.max(1).into()),
        grace: Duration::from_secs(args.grace.into()),
    };
    daemon::run(paths.clone(), config, Options { limits })
}
