//! Opening a URL in the user's browser: `$BROWSER` when it is set (as
//! `gh`, `git web--browse` and Python's `webbrowser` read it), else the
//! desktop's opener (`xdg-open`, or `open` on macOS).

use std::process::{Command, Stdio};

/// Starts a browser on `url`; whether one could be started.
pub fn open_url(url: &str) -> bool {
    let browser = std::env::var("BROWSER").ok();
    // `BROWSER` may list several, separated by colons: the first is tried.
    let chosen = browser
        .as_deref()
        .and_then(|b| b.split(':').map(str::trim).find(|b| !b.is_empty()));
    let opener = chosen.unwrap_or(if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    });
    Command::new(opener)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .is_ok()
}
