//! `codex-broker serve`

use std::time::Duration;

use crate::base::logging::{self, LogFile};
use crate::base::paths::Paths;
use crate::base::server::Limits;
use crate::daemon::{self, Options};
use crate::engine::config::{Config, DEFAULT_LOG_ROTATE_BYTES, DEFAULT_LOG_ROTATE_MAX_FILES};

/// Run the daemon: refresh scheduler, Codex-home watcher, socket API, forwarder
///
/// Keeps every ChatGPT account fresh ahead of expiry (config `refresh_ahead`,
/// default 30 minutes), adopts what `codex login` writes to auth.json,
/// serves tokens over the Unix socket (see --socket), and forwards Codex
/// traffic on --listen (HTTP, and Codex's WebSocket transport unless
/// --no-websocket) with the routed account's credentials, falling back
/// to the next account on 401/403/429. One daemon runs per
/// broker home. SIGTERM or SIGINT stop it after in-flight requests finish.
/// With NOTIFY_SOCKET set it tells systemd when it is ready (Type=notify).
/// Logs go to stderr at level info (-v for more, CODEX_BROKER_LOG for a
/// filter).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The forwarder's loopback address (port 0: any free port)
    #[arg(
        long,
        value_name = "ADDR",
        env = "CODEX_BROKER_LISTEN",
        hide_env_values = true,
        default_value = crate::forward::DEFAULT_LISTEN
    )]
    pub listen: String,

    /// Run without the forwarder
    #[arg(long)]
    pub no_forward: bool,

    /// Answer WebSocket upgrades with 426, so that clients use HTTP (SSE)
    /// (config: websocket = false)
    #[arg(long)]
    pub no_websocket: bool,

    /// Follow the broker whose socket API SOCKET reaches (forwarded over SSH,
    /// or mounted into a container): keep no refresh token here, take
    /// accounts and access tokens from it, publish them with stand-in
    /// refresh tokens, and report quota to it. Use a broker home of its own
    #[arg(long, value_name = "SOCKET")]
    pub follow: Option<std::path::PathBuf>,

    /// Seconds a client has to send a request's head, and then its body
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub request_timeout: u32,

    /// Seconds in-flight requests get to finish at shutdown
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub grace: u32,

    /// Also log to this file, rotated by size (config `log_file`,
    /// `log_rotate_bytes` 5 MiB, `log_rotate_max_files` 3)
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<std::path::PathBuf>,
}

pub fn run(paths: &Paths, args: Args, verbose: u8) -> anyhow::Result<()> {
    let mut config = Config::load(&paths.home)?;
    if let Some(path) = args.log_file {
        let default = LogFile {
            path: std::path::absolute(&path)?,
            rotate_bytes: DEFAULT_LOG_ROTATE_BYTES,
            max_files: DEFAULT_LOG_ROTATE_MAX_FILES,
        };
        config.log_file = Some(match config.log_file {
            Some(configured) => LogFile {
                path: default.path,
                ..configured
            },
            None => default,
        });
    }
    let writer = config
        .log_file
        .as_ref()
        .map(logging::file_writer)
        .transpose()?;
    let (file, _flushed_at_exit) = writer.unzip();
    logging::init(logging::level_for(verbose, true), file);
    if args.no_websocket {
        config.websocket.enabled = false;
    }
    let limits = Limits {
        request_timeout: Duration::from_secs(args.request_timeout.max(1).into()),
        grace: Duration::from_secs(args.grace.into()),
    };
    let listen = (!args.no_forward).then_some(args.listen);
    let follow = args.follow.map(std::path::absolute).transpose()?;
    daemon::run(
        paths.clone(),
        config,
        Options {
            limits,
            listen,
            follow,
        },
    )
}
