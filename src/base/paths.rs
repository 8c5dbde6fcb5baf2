//! Where the broker keeps its files, and how each location is chosen:
//! flag, then environment, then the XDG default.

use std::env;
use std::path::{Path, PathBuf};

use crate::codex::auth::CodexHome;
use crate::engine::journal::Journal;
use crate::engine::store::StoreFile;

pub const APP_DIR: &str = "codex-broker";
pub const SOCKET_FILE: &str = "broker.sock";

#[derive(Debug, thiserror::Error)]
#[error("cannot find the home directory: set HOME or pass --home")]
pub struct NoHomeDir;

/// The resolved locations for one invocation.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The broker home: config and account store.
    pub home: PathBuf,
    /// The Codex home holding auth.json.
    pub codex_home: PathBuf,
    /// The daemon's Unix socket.
    pub socket: PathBuf,
}

/// Locations given explicitly (flags, or the environment variables clap
/// reads for them).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub home: Option<PathBuf>,
    pub codex_home: Option<PathBuf>,
    pub socket: Option<PathBuf>,
}

impl Paths {
    pub fn resolve(overrides: Overrides) -> Result<Paths, NoHomeDir> {
        let user_home = user_home();
        let home = match overrides.home {
            Some(h) => h,
            None => match absolute_env("XDG_CONFIG_HOME") {
                Some(config) => config.join(APP_DIR),
                None => user_home
                    .clone()
                    .ok_or(NoHomeDir)?
                    .join(".config")
                    .join(APP_DIR),
            },
        };
        let codex_home = match overrides.codex_home {
            Some(c) => c,
            None => user_home.ok_or(NoHomeDir)?.join(".codex"),
        };
        let socket = match overrides.socket {
            Some(s) => s,
            None => match absolute_env("XDG_RUNTIME_DIR") {
                Some(run) => run.join(APP_DIR).join(SOCKET_FILE),
                None => home.join("run").join(SOCKET_FILE),
            },
        };
        Ok(Paths {
            home,
            codex_home,
            socket,
        })
    }

    pub fn store(&self) -> StoreFile {
        StoreFile::new(&self.home)
    }

    pub fn journal(&self) -> Journal {
        Journal::new(&self.home)
    }

    /// The token usage file ([`crate::engine::usage`]).
    pub fn usage(&self) -> PathBuf {
        self.home.join("usage.json")
    }

    pub fn codex(&self) -> CodexHome {
        CodexHome::new(&self.codex_home)
    }
}

/// An environment variable holding an absolute path; relative or empty
/// values are ignored, as the XDG spec asks.
fn absolute_env(name: &str) -> Option<PathBuf> {
    env::var_os(name)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

fn user_home() -> Option<PathBuf> {
    absolute_env("HOME").or_else(|| {
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.dir)
            .filter(|d| d.is_absolute() && d != Path::new("/"))
    })
}
