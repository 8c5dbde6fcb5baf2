//! `codex-broker routing [main-first|fallback-first]`

use clap::ValueEnum;

use crate::base::paths::Paths;
use crate::engine::store::{Routing, StoreError};

/// Show or set the order in which accounts serve requests
///
/// main-first: the main account serves; fallbacks take over when it is rate
/// limited, blocked by the killswitch or needs a login. fallback-first: the
/// fallback accounts are spent first, keeping the main account for last.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The new mode; without it the current mode is shown
    #[arg(value_enum)]
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    MainFirst,
    FallbackFirst,
}

impl From<Mode> for Routing {
    fn from(mode: Mode) -> Routing {
        match mode {
            Mode::MainFirst => Routing::MainFirst,
            Mode::FallbackFirst => Routing::FallbackFirst,
        }
    }
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let text = match args.mode {
        None => format!("{}\n", paths.store().load()?.routing),
        Some(mode) => {
            let routing = Routing::from(mode);
            paths.store().update(|store| {
                store.routing = routing;
                Ok::<_, StoreError>(())
            })?;
            format!("Routing set to {routing}.\n")
        }
    };
    Ok(super::print(&text)?)
}
