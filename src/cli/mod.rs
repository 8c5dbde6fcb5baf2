//! The command line: one module per subcommand, each with its clap `Args`
//! and a `run` function.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

use clap::{CommandFactory, Parser, Subcommand};

use crate::base::paths::{Overrides, Paths};
use crate::engine::refresh::Refresher;

mod accounts;
mod cachekeep;
mod completions;
mod dashboard;
mod doctor;
mod dump;
mod env;
mod history;
mod import;
mod killswitch;
mod log;
mod login;
mod notify;
mod routing;
mod serve;
mod service;
mod setup;
mod shield;
mod status;
mod token;
mod usage;

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: the command failed.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: the command line was wrong.
pub const EXIT_USAGE: u8 = 2;
/// Exit status: no account can serve; a login is needed.
pub const EXIT_NEEDS_LOGIN: u8 = 3;
/// Exit status: every account that could serve has used its quota.
pub const EXIT_QUOTA_EXHAUSTED: u8 = 4;

/// What `accounts` and `status` say on an empty store.
const NO_ACCOUNTS: &str = "No accounts yet. Log in with: codex-broker login (or adopt Codex's login with: codex-broker import)\n";

const AFTER_HELP: &str = "\
Files:
  <home>/accounts.json      the account store (0600, directory 0700)
  <codex home>/auth.json    Codex's credentials, kept fresh by the broker

  <home>/journal.jsonl      the refresh journal (see: codex-broker history)

Exit status:
  0 success, 1 failure, 2 usage error, 3 no usable account (needs login),
  4 every usable account has used its quota, 13 login callback port in use, 129/130/143 stopped by SIGHUP/SIGINT/SIGTERM
  (after any refresh in flight was saved)";

/// Keeps ChatGPT/Codex OAuth credentials fresh for every tool on this machine.
///
/// codex-broker is the one refresh authority for a user's ChatGPT/Codex
/// accounts: it keeps Codex's auth.json and its own multi-account store
/// consistent, under Codex's file locks.
#[derive(Debug, Parser)]
#[command(name = "codex-broker", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Broker home holding the account store [default: $XDG_CONFIG_HOME/codex-broker]
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "CODEX_BROKER_HOME",
        hide_env_values = true
    )]
    pub home: Option<PathBuf>,

    /// Codex home holding auth.json [default: ~/.codex]
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "CODEX_HOME",
        hide_env_values = true
    )]
    pub codex_home: Option<PathBuf>,

    /// The daemon's socket [default: $XDG_RUNTIME_DIR/codex-broker/broker.sock]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "CODEX_BROKER_SOCKET",
        hide_env_values = true
    )]
    pub socket: Option<PathBuf>,

    /// Log more (repeat for even more); logs go to stderr
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Login(login::Args),
    Import(import::Args),
    Accounts(accounts::Args),
    Status(status::Args),
    Token(token::Args),
    Serve(serve::Args),
    Service(service::Args),
    Routing(routing::Args),
    Killswitch(killswitch::Args),
    Shield(shield::Args),
    History(history::Args),
    Usage(usage::Args),
    Cachekeep(cachekeep::Args),
    Dump(dump::Args),
    Log(log::Args),
    Setup(setup::Args),
    Doctor(doctor::Args),
    Env(env::EnvArgs),
    Run(env::RunArgs),
    Notify(notify::Args),
    Dashboard(dashboard::Args),
    Completions(completions::Args),
}

/// A switch a command turns: `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// The clap definition of the whole command line, for completions and
/// man pages.
pub fn command() -> clap::Command {
    Cli::command()
}

/// An error that carries its own exit status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        Exit {
            code: EXIT_USAGE,
            message: message.into(),
        }
        .into()
    }

    pub fn needs_login(message: impl Into<String>) -> anyhow::Error {
        Exit {
            code: EXIT_NEEDS_LOGIN,
            message: message.into(),
        }
        .into()
    }

    pub fn quota_exhausted(message: impl Into<String>) -> anyhow::Error {
        Exit {
            code: EXIT_QUOTA_EXHAUSTED,
            message: message.into(),
        }
        .into()
    }
}

/// Parses the command line, runs the command and maps its outcome to an exit
/// status. A closed stdout (`| head`) ends the program quietly.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    // The daemon sets its logs up itself, once its config (which may name
    // a log file) is read.
    if !matches!(cli.command, Command::Serve(_)) {
        crate::base::logging::init(crate::base::logging::level_for(cli.verbose, false), None);
    }
    match run(cli) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(err) if is_broken_pipe(&err) => ExitCode::from(EXIT_OK),
        Err(err) => {
            let code = err.downcast_ref::<Exit>().map_or(EXIT_FAILURE, |e| e.code);
            let _ = writeln!(io::stderr(), "error: {err:#}");
            ExitCode::from(code)
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let overrides = Overrides {
        home: cli.home,
        codex_home: cli.codex_home,
        socket: cli.socket,
    };
    let paths = || Paths::resolve(overrides.clone());
    let changes_accounts = match &cli.command {
        Command::Login(_) | Command::Import(_) => true,
        Command::Accounts(args) => args.action.is_some(),
        Command::Shield(args) => args.mode.is_some(),
        _ => false,
    };
    if changes_accounts && let Some(leader) = paths()?.store().load()?.follows {
        anyhow::bail!(crate::follow::leader::belongs_on_the_leader(&leader));
    }
    match cli.command {
        Command::Login(args) => login::run(&paths()?, args),
        Command::Import(args) => import::run(&paths()?, args),
        Command::Accounts(args) => accounts::run(&paths()?, args),
        Command::Status(args) => status::run(&paths()?, args),
        Command::Token(args) => token::run(&paths()?, args),
        Command::Serve(args) => serve::run(&paths()?, args, cli.verbose),
        Command::Service(args) => service::run(&paths()?, args),
        Command::Routing(args) => routing::run(&paths()?, args),
        Command::Killswitch(args) => killswitch::run(&paths()?, args),
        Command::Shield(args) => shield::run(&paths()?, args),
        Command::History(args) => history::run(&paths()?, args),
        Command::Usage(args) => usage::run(&paths()?, args),
        Command::Cachekeep(args) => cachekeep::run(&paths()?, args),
        Command::Dump(args) => dump::run(&paths()?, args),
        Command::Log(args) => log::run(&paths()?, args),
        Command::Setup(args) => setup::run(&paths()?, args),
        Command::Doctor(args) => doctor::run(&paths()?, args),
        Command::Env(args) => env::env(&paths()?, args),
        Command::Run(args) => env::run(&paths()?, args),
        Command::Notify(args) => notify::run(&paths()?, args),
        Command::Dashboard(args) => dashboard::run(&paths()?, args),
        Command::Completions(args) => completions::run(args),
    }
}

/// Runs `work`, which may refresh through the engine `engine` holds once
/// it is needed, with SIGINT, SIGTERM and SIGHUP held: a signal stops the
/// work, but a refresh already sent is finished and saved before the
/// command exits with 128 + the signal's number. A rotation the store
/// cannot take is reported (it went to auth.json when that held the
/// account).
fn interruptible<T>(
    engine: &OnceLock<Refresher>,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let outcome = tokio::select! {
            result = work => Ok(result),
            _ = interrupt.recv() => Err(("SIGINT", 130)),
            _ = terminate.recv() => Err(("SIGTERM", 143)),
            _ = hangup.recv() => Err(("SIGHUP", 129)),
        };
        let (busy, lost) = match engine.get() {
            Some(engine) => (engine.busy(), engine.drain().await),
            None => (false, Vec::new()),
        };
        for message in &lost {
            let _ = writeln!(io::stderr(), "error: {message}");
        }
        match outcome {
            Err((name, code)) => Err(Exit {
                code,
                message: if busy {
                    format!("interrupted by {name}, after the refresh in flight was finished")
                } else {
                    format!("interrupted by {name}")
                },
            }
            .into()),
            Ok(Ok(_)) if !lost.is_empty() => Err(anyhow::anyhow!(
                "the refreshed tokens were handed out, but the store could not take them (see \
                 above); once the disk has room, run: codex-broker import"
            )),
            Ok(result) => result,
        }
    });
    // A thread still waiting for another process's file lock has nothing
    // left to do for us: exit without it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    outcome
}

/// Writes `text` to stdout as is.
fn print(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Writes `value` as pretty JSON and a newline to stdout.
fn print_json<T: serde::Serialize>(value: &T) -> io::Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    text.push('\n');
    print(&text)
}
