//! `codex-broker env [--shell sh|fish|json]` and `codex-broker run -- CMD`:
//! the environment a client needs to reach the running daemon, printed or
//! given to one command. Addresses only: never a token.

use std::os::unix::process::CommandExt;

use clap::ValueEnum;
use serde_json::{Map, Value};

use crate::base::paths::Paths;
use crate::socket::client;

/// Print the environment a client needs to use the running daemon
///
/// OPENAI_BASE_URL (the forwarder's /v1, for OpenAI SDKs and tools),
/// CODEX_REFRESH_TOKEN_URL_OVERRIDE (Codex refreshes through the broker),
/// CODEX_BROKER_SOCKET and CODEX_BROKER_FORWARDER; never a token. Use it as
/// `eval "$(codex-broker env)"`, or `codex-broker env --shell fish | source`.
#[derive(Debug, clap::Args)]
pub struct EnvArgs {
    /// The syntax to print
    #[arg(long, value_enum, default_value_t = Shell::Sh)]
    pub shell: Shell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Sh,
    Fish,
    Json,
}

/// Run a command with the environment `env` prints
///
/// CMD gets OPENAI_BASE_URL, CODEX_REFRESH_TOKEN_URL_OVERRIDE,
/// CODEX_BROKER_SOCKET and CODEX_BROKER_FORWARDER of the running daemon,
/// and nothing else changes: `codex-broker run -- codex exec "hello"`. With
/// --account, the forwarder addresses are those of that account
/// (`/accounts/ID/...`): only it serves CMD's requests. The command takes
/// the place of this process, so its signals and its exit status are its
/// own.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Only this account serves CMD (an id, label or id prefix): its
    /// forwarder addresses name it, and no fallback takes over
    #[arg(long, value_name = "ID")]
    pub account: Option<String>,

    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The variables for the daemon serving `paths.home`, in order.
fn variables(paths: &Paths) -> anyhow::Result<Vec<(&'static str, String)>> {
    let Some(health) = client::health(paths)? else {
        anyhow::bail!(
            "no daemon serves {}: start it with `codex-broker serve` (or `codex-broker service \
             install`)",
            paths.home.display()
        );
    };
    let Some(forwarder) = health.forwarder else {
        anyhow::bail!(
            "the daemon runs without its forwarder (--no-forward): clients have nothing to reach"
        );
    };
    let base = format!("http://{}", forwarder.address);
    Ok(vec![
        ("OPENAI_BASE_URL", format!("{base}/v1")),
        (
            "CODEX_REFRESH_TOKEN_URL_OVERRIDE",
            format!("{base}/oauth/token"),
        ),
        ("CODEX_BROKER_SOCKET", paths.socket.display().to_string()),
        ("CODEX_BROKER_FORWARDER", base),
    ])
}

pub fn env(paths: &Paths, args: EnvArgs) -> anyhow::Result<()> {
    let vars = variables(paths)?;
    let text = match args.shell {
        Shell::Sh => vars
            .iter()
            .map(|(k, v)| format!("export {k}={}\n", quoted(v)))
            .collect::<String>(),
        Shell::Fish => vars
            .iter()
            .map(|(k, v)| format!("set -gx {k} {}\n", quoted(v)))
            .collect(),
        Shell::Json => {
            let map: Map<String, Value> = vars
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Value::String(v)))
                .collect();
            return Ok(super::print_json(&Value::Object(map))?);
        }
    };
    Ok(super::print(&text)?)
}

/// The forwarder address `url` for the account `id` alone:
/// `http://HOST:PORT/accounts/ID/...`.
fn named_address(url: &str, id: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    format!("{scheme}://{host}/accounts/{id}{path}")
}

/// `value` in single quotes, as both sh and fish read it.
fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

pub fn run(paths: &Paths, args: RunArgs) -> anyhow::Result<()> {
    let mut vars = variables(paths)?;
    if let Some(query) = &args.account {
        let store = paths.store().load()?;
        let id = store.find(query)?.id.clone();
        for (name, value) in &mut vars {
            if matches!(*name, "OPENAI_BASE_URL" | "CODEX_BROKER_FORWARDER") {
                *value = named_address(value, &id);
            }
        }
    }
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let error = std::process::Command::new(program)
        .args(rest)
        .envs(vars)
        .exec();
    Err(super::Exit {
        code: if error.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        },
        message: format!("cannot run {program}: {error}"),
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_for_the_shell() {
        assert_eq!(
            quoted("http://127.0.0.1:1456/v1"),
            "'http://127.0.0.1:1456/v1'"
        );
        assert_eq!(
            quoted("/tmp/it's/broker.sock"),
            r"'/tmp/it'\''s/broker.sock'"
        );
    }
}
