use std::process::ExitCode;

fn main() -> ExitCode {
    codex_broker::cli::main()
}
