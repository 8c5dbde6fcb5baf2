//! `codex-broker completions SHELL`

use clap_complete::Shell;

/// Print shell completions
///
/// For example: codex-broker completions bash > ~/.local/share/bash-completion/completions/codex-broker
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut buffer = Vec::new();
    clap_complete::generate(
        args.shell,
        &mut super::command(),
        "codex-broker",
        &mut buffer,
    );
    Ok(super::print(&String::from_utf8_lossy(&buffer))?)
}
