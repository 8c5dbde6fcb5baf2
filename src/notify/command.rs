//! The command channel: an argv run with the notice as one JSON object on
//! its stdin and `CODEX_BROKER_EVENT` in its environment, as a git hook or
//! Vault Agent's exec would be.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

/// The most of a failing command's stderr kept in the log.
const STDERR_SHOWN: usize = 500;

/// Runs `argv` with `json` on stdin; an error names what went wrong.
pub async fn send(argv: &[String], event: &str, json: &[u8]) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("no command")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("CODEX_BROKER_EVENT", event)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its stdin is not a failure.
        let _ = stdin.write_all(json).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr: String = stderr.trim().chars().take(STDERR_SHOWN).collect();
    Err(format!("{program} exited with {}: {stderr}", out.status))
}
