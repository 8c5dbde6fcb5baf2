//! `codex-broker dashboard [--no-browser]`

use crate::base::paths::Paths;
use crate::socket::client;

/// Open the live dashboard of the running daemon
///
/// Prints the dashboard's URL (`/ui/` on the forwarder) and opens it in a
/// browser: `$BROWSER` when set, else the desktop's opener. The page shows
/// each account with its quota and pace, the last 24 hours of usage, the
/// refresh journal and what needs attention; it updates by itself and
/// changes nothing.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only print the URL
    #[arg(long)]
    pub no_browser: bool,
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let url = dashboard_url(paths)?;
    super::print(&format!("{url}\n"))?;
    if !args.no_browser && !crate::base::open::open_url(&url) {
        eprintln!("codex-broker: could not start a browser; open the URL above");
    }
    Ok(())
}

/// The URL of the dashboard of the daemon serving `paths.home`.
fn dashboard_url(paths: &Paths) -> anyhow::Result<String> {
    let Some(health) = client::health(paths)? else {
        anyhow::bail!(
            "no daemon serves {}: start it with `codex-broker serve` (or `codex-broker service \
             install`); the dashboard is one of its pages",
            paths.home.display()
        );
    };
    let Some(forwarder) = health.forwarder else {
        anyhow::bail!(
            "the daemon runs without its forwarder (--no-forward), where the dashboard lives"
        );
    };
    Ok(format!("http://{}/ui/", forwarder.address))
}
